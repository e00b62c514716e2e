#!/usr/bin/env python3
"""Checks on dsinfer-batch output files for tests/test_batch_tool.sh.

Each subcommand exits 0 when its check holds and prints why not otherwise.
Records are keyed as dsinfer-batch keys them: "custom_id", else "id"."""
import collections
import json
import sys


def key(rec):
    v = rec.get("custom_id", rec.get("id"))
    return str(v)


def load(path):
    """Records of a JSONL output; every line must be complete and parse."""
    data = open(path, "rb").read()
    assert data == b"" or data.endswith(b"\n"), "%s: last line is not terminated" % path
    recs = []
    for i, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            recs.append(json.loads(line.decode("utf-8")))
        except ValueError as e:
            raise AssertionError("%s line %d is not JSON: %s: %r" % (path, i, e, line[:80]))
    return recs


def by_key(recs, allow_dups=False):
    out = {}
    for r in recs:
        k = key(r)
        if not allow_dups:
            assert k not in out, "id %s has two records" % k
        out.setdefault(k, []).append(r)
    return out


def code(rec):
    err = rec.get("error")
    return err["code"] if err else None


def check_usage(u, max_completion):
    assert u["prompt_tokens"] > 0 and 1 <= u["completion_tokens"] <= max_completion, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u


def check_openai_chat(rec, model=None):
    assert rec["id"].startswith("batch_req_") and rec["error"] is None, rec
    assert rec["response"]["status_code"] == 200, rec
    body = rec["response"]["body"]
    assert body["object"] == "chat.completion", body
    ch = body["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str), ch
    assert ch["finish_reason"] in ("stop", "length", "tool_calls"), ch
    if model:
        assert body["model"] == model, body
    check_usage(body["usage"], 8)
    return body


def check_plain(rec):
    assert isinstance(rec["content"], str) and rec["finish_reason"] in ("stop", "length"), rec
    check_usage(rec["usage"], 8)


def cmd_mixed(path):
    """The mixed input of test_batch_tool.sh: every record as expected."""
    recs = load(path)
    assert len(recs) == 15, "%d records, want 15 (one per non-blank line)" % len(recs)
    m = by_key(recs, allow_dups=True)
    want_errors = {"line-8": "invalid_json", "missing": "invalid_request", "nobody": "invalid_request",
                   "line-12": "invalid_utf8", "long": "context_length_exceeded"}
    for k, c in want_errors.items():
        assert k in m and len(m[k]) == 1, "no single record for %s" % k
        r = m[k][0]
        assert code(r) == c and r["error"]["message"], r
    assert m["nobody"][0]["custom_id"] == "nobody" and m["nobody"][0]["response"] is None, m["nobody"]
    # the duplicate: one result and one duplicate_id record
    assert sorted(map(str, map(code, m["doc-1"]))) == ["None", "duplicate_id"], m["doc-1"]
    assert len(m["chat-1"]) == 1 and len(m["chat-2"]) == 1
    check_openai_chat(m["chat-1"][0])
    assert m["chat-1"][0]["response"]["body"]["usage"]["completion_tokens"] <= 4
    check_openai_chat(m["chat-2"][0], model="m-x")
    c = m["cmpl-1"][0]["response"]["body"]
    assert c["object"] == "text_completion" and isinstance(c["choices"][0]["text"], str), c
    assert c["usage"]["completion_tokens"] == 3 and c["choices"][0]["finish_reason"] == "length", c
    for k in ("doc-1", "doc-2", "msg-1", "think-1", "line-15", "42"):
        r = [x for x in m[k] if code(x) is None]
        assert len(r) == 1, "no result for %s" % k
        check_plain(r[0])
    assert m["42"][0]["id"] == 42, "integer ids are echoed as integers"
    assert isinstance(m["think-1"][0]["reasoning_content"], str), m["think-1"]
    assert m["doc-2"][0]["reasoning_content"] is None, m["doc-2"]
    # the template (about 20 tokens) went around doc-1's 7-token text
    doc1 = [x for x in m["doc-1"] if code(x) is None][0]
    assert doc1["usage"]["prompt_tokens"] >= 20, doc1["usage"]
    assert m["msg-1"][0]["usage"]["prompt_tokens"] < 20, m["msg-1"][0]["usage"]


def strip_volatile(rec):
    rec = json.loads(json.dumps(rec))
    body = (rec.get("response") or {}).get("body")
    if body:
        body.pop("created", None)
    return rec


def cmd_same(a, b):
    """Two runs of the same input: the same records, id by id."""
    ra, rb = load(a), load(b)
    ka = {key(r) + "#" + str(code(r)): strip_volatile(r) for r in ra}
    kb = {key(r) + "#" + str(code(r)): strip_volatile(r) for r in rb}
    assert len(ka) == len(ra) and ka.keys() == kb.keys(), (sorted(ka), sorted(kb))
    for k in ka:
        assert ka[k] == kb[k], "record %s differs:\n%s\n%s" % (k, ka[k], kb[k])


def cmd_resume(out, before, n):
    """After kill -9, a torn line and a re-run: one record per id, the
    records written before the kill unchanged, at the start."""
    recs = load(out)
    m = by_key(recs)
    assert len(m) == int(n), "%d ids, want %s" % (len(m), n)
    assert all(code(r) is None for r in recs), "error records after resume"
    old = open(before, "rb").read()
    cut = old[:old.rfind(b"\n") + 1]     # a line being written at the kill is not "written"
    assert len(cut) > 0, "nothing was written before the kill"
    assert open(out, "rb").read().startswith(cut), "records written before the kill changed"


def cmd_shard(full, s0, s1):
    """Two shards cover the ids of the full run exactly once."""
    kf = collections.Counter(key(r) + "#" + str(code(r)) for r in load(full))
    k0 = collections.Counter(key(r) + "#" + str(code(r)) for r in load(s0))
    k1 = collections.Counter(key(r) + "#" + str(code(r)) for r in load(s1))
    assert k0 and k1, "a shard is empty (%d, %d records)" % (len(k0), len(k1))
    assert not (set(k0) & set(k1)), "ids in both shards: %s" % (set(k0) & set(k1))
    assert k0 + k1 == kf, "shards do not add up to the full run"


def cmd_complete(out, lo, hi):
    """Complete, distinct records, between lo and hi of them."""
    recs = load(out)
    by_key(recs)
    assert int(lo) <= len(recs) <= int(hi), "%d records, want %s..%s" % (len(recs), lo, hi)
    print(len(recs))


def cmd_progress_json(err):
    """--progress=json: the JSON lines on stderr parse, with progress and summary events."""
    events = []
    for line in open(err, encoding="utf-8"):
        if line.startswith("{"):
            events.append(json.loads(line))
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and kinds[-1] == "summary", kinds
    s = events[-1]
    assert s["status"] == "complete" and s["ok"] + s["errors"] == s["total"] and s["completion_tokens"] > 0, s
    p = [e for e in events if e["event"] == "progress"][-1]
    assert p["done"] == p["total"], p


def cmd_mkstop(inp, out, new_input):
    """The plain lines of inp again, each stopping at a piece of its text in out."""
    text = {key(r): r.get("content") for r in load(out) if code(r) is None}
    n = 0
    with open(new_input, "w", encoding="utf-8") as f:
        for line in open(inp, encoding="utf-8"):
            req = json.loads(line)
            t = text.get(str(req["id"])) or ""
            if len(t) >= 6 and "\ufffd" not in t[:6]:
                req["stop"] = [t[3:5]]
                f.write(json.dumps(req) + "\n")
                n += 1
    assert n > 0, "no result long enough to cut"


def cmd_stopped(full, cut):
    """The stopped run's text is the full text up to the stop string."""
    f = {key(r): r for r in load(full)}
    for r in load(cut):
        want = f[key(r)]["content"]
        assert r["finish_reason"] == "stop" and r["content"] == want[:want.find(want[3:5])], (r, want)
        assert r["usage"]["completion_tokens"] <= f[key(r)]["usage"]["completion_tokens"]


if __name__ == "__main__":
    cmd = globals()["cmd_" + sys.argv[1].replace("-", "_")]
    try:
        cmd(*sys.argv[2:])
    except AssertionError as e:
        print("check %s failed: %s" % (sys.argv[1], e))
        sys.exit(1)
