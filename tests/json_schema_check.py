#!/usr/bin/env python3
"""Checks dsinfer-batch output under --json-schema for tests/test_json_schema_tool.sh.

usage: json_schema_check.py OUTPUT DEFAULT_SCHEMA [ID=SCHEMA ...]

Every record must be a success; its answer (chat content or completion
text) must parse as JSON and match the schema of its id (DEFAULT_SCHEMA
unless named), checked by the small validator below (the subset dsinfer
supports), with finish_reason "stop".  An ID=length entry expects a cut
answer instead (finish_reason "length").  Exits 0 when all hold."""
import json
import sys


def valid(s, v):
    if s is True or s == {}:
        return True
    for kw in ("anyOf", "oneOf"):
        if kw in s:
            n = sum(valid(a, v) for a in s[kw])
            return n == 1 if kw == "oneOf" else n >= 1
    t = s.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(type_ok(x, v) for x in types):
            return False
    if "enum" in s and not any(same(v, e) for e in s["enum"]):
        return False
    if "const" in s and not same(v, s["const"]):
        return False
    if isinstance(v, dict):
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        if any(r not in v for r in s.get("required", [])):
            return False
        for k, x in v.items():
            if k in props:
                if not valid(props[k], x):
                    return False
            elif extra is False or (isinstance(extra, dict) and not valid(extra, x)):
                return False
    if isinstance(v, list):
        if len(v) < s.get("minItems", 0) or len(v) > s.get("maxItems", len(v)):
            return False
        if "items" in s and not all(valid(s["items"], x) for x in v):
            return False
    if isinstance(v, str):
        if len(v) < s.get("minLength", 0) or len(v) > s.get("maxLength", len(v)):
            return False
    return True


def same(a, b):
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def type_ok(t, v):
    return {
        "object": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "string": lambda: isinstance(v, str),
        "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda: isinstance(v, bool),
        "null": lambda: v is None,
    }[t]()


def answer(rec):
    """(text, finish_reason) of a plain or Batch API record."""
    if "response" in rec:
        assert rec["error"] is None, rec
        ch = rec["response"]["body"]["choices"][0]
        text = ch["message"]["content"] if "message" in ch else ch["text"]
        return text, ch["finish_reason"]
    assert "error" not in rec or not rec["error"], rec
    return rec["content"], rec["finish_reason"]


def main():
    out, default = sys.argv[1], json.load(open(sys.argv[2]))
    per_id = {}
    for a in sys.argv[3:]:
        k, p = a.split("=", 1)
        per_id[k] = p if p == "length" else json.load(open(p))
    n = 0
    for line in open(out, encoding="utf-8"):
        rec = json.loads(line)
        key = str(rec.get("custom_id", rec.get("id")))
        text, why = answer(rec)
        schema = per_id.get(key, default)
        if schema == "length":
            assert why == "length", (key, why, text)
            try:
                json.loads(text)
                raise AssertionError("%s: a cut answer parses: %r" % (key, text))
            except ValueError:
                pass
        else:
            assert why == "stop", (key, why, text)
            v = json.loads(text)
            assert valid(schema, v), (key, text, schema)
        n += 1
    print("%d records checked" % n)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL:", e)
        sys.exit(1)
