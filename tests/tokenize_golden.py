#!/usr/bin/env python3
"""tokenize_golden.py — compares dsinfer-tokenize with golden tokenizations.

usage: tokenize_golden.py --tokenize TOOL --tokenizer tokenizer.json golden.json

golden.json is a list of {"text", "ids", "decoded"} objects (Hugging Face
tokenizers output, no special tokens added).  The tool runs once with
--batch-json FILE --json and must return, per string, the same ids and
the same decoded text.  Prints one line per failure (the first ten) and a
final 'N passed, N failed'; exits 1 on any failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run_tool(tool, tokenizer, texts):
    fd, path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(texts, f, ensure_ascii=False)
        proc = subprocess.run([tool, "--tokenizer", tokenizer, "--batch-json", path, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        sys.exit("tool failed (exit %d): %s" % (proc.returncode,
                                                proc.stderr.decode("utf-8", "replace")[-400:]))
    return json.loads(proc.stdout.decode("utf-8"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("golden")
    args = ap.parse_args()
    with open(args.golden, encoding="utf-8") as f:
        cases = json.load(f)
    results = run_tool(args.tokenize, args.tokenizer, [c["text"] for c in cases])
    if len(results) != len(cases):
        sys.exit("tool returned %d results for %d strings" % (len(results), len(cases)))
    bad = 0
    for i, (case, got) in enumerate(zip(cases, results)):
        problems = []
        if got["ids"] != case["ids"]:
            problems.append("ids %s... != %s..." % (got["ids"][:10], case["ids"][:10]))
        if got["decoded"] != case["decoded"]:
            problems.append("decoded %r != %r" % (got["decoded"][:40], case["decoded"][:40]))
        if problems:
            bad += 1
            if bad <= 10:
                print("case %d %r: %s" % (i, case["text"][:40], "; ".join(problems)))
    print("%d passed, %d failed" % (len(cases) - bad, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
