#!/bin/sh
# dsinfer-batch --json-schema on the embedded tiny model (random weights, so
# unconstrained output is garbage): with sampling at temperature > 0 and
# greedy, every answer parses as JSON and matches its schema (checked by
# tests/json_schema_check.py); a line's response_format (json_schema,
# json_object) constrains that line; max_tokens cuts an answer short with
# finish_reason "length"; bad schemas are refused before any work (exit 2,
# naming the keyword) and per-line ones become error records.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools/dsinfer-batch"
MODEL="$top_builddir/models/tiny"
CHECK="python3 $top_srcdir/tests/json_schema_check.py"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
run() { timeout 300 "$B" -m "$MODEL" --threads 2 -q "$@"; }
expect() {
    code=$1 pat=$2
    shift 2
    timeout 300 "$B" "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" = "$code" ] && grep -q -- "$pat" "$T/err"; then ok "$* -> $rc"; else
        bad "$* -> $rc (wanted $code, /$pat/): $(head -c 300 "$T/err")"; fi
}

if [ ! -f "$MODEL/config.json" ]; then
    echo "SKIP: $MODEL not built"
    exit 77
fi

cat >"$T/schema.json" <<'JSON'
{"type": "object", "title": "person",
 "properties": {
   "name": {"type": "string", "maxLength": 10},
   "age": {"type": "integer"},
   "color": {"enum": ["red", "green", "blue"]},
   "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
   "address": {"type": "object", "properties": {"zip": {"type": ["string", "null"], "maxLength": 5},
                                                "main": {"type": "boolean"}}, "required": ["main"]},
   "ok": {"type": "boolean"}},
 "required": ["name", "color", "ok"]}
JSON
echo '{"type": "array", "items": {"enum": [1, 12, "x", null]}, "minItems": 1, "maxItems": 4}' >"$T/list.json"

# ---- bad schemas: refused before any work ---------------------------------------
echo '{"id": "a", "prompt": "hi"}' >"$T/one.jsonl"
echo '{"type": "string", "pattern": "^a+$"}' >"$T/pattern.json"
expect 2 '"pattern"' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/pattern.json"
[ ! -e "$T/bad.jsonl" ] && ok "no output file after a bad schema" || bad "a bad schema created the output"
echo '{"properties": {"a": {"$ref": "#/x"}}}' >"$T/ref.json"
expect 2 '\$ref' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/ref.json"
expect 2 '/properties/a' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/ref.json"
echo '{"type": ' >"$T/broken.json"
expect 2 'not JSON' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/broken.json"
expect 3 'cannot read' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/missing.json"
expect 1 'thinking' -m "$MODEL" -i "$T/one.jsonl" -o "$T/bad.jsonl" --json-schema "$T/schema.json" --thinking

# ---- sampled and greedy runs: every answer matches ---------------------------------
{
    for i in 1 2 3 4 5 6; do echo "{\"id\": \"p$i\", \"prompt\": \"Describe person $i as JSON\"}"; done
    echo '{"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Who?"}], "temperature": 1.5, "top_k": 50}}'
    echo '{"custom_id": "c2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "{\"name\": ", "top_p": 0.9}}'
    echo '{"custom_id": "l1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "A list"}], "response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array", "items": {"enum": [1, 12, "x", null]}, "minItems": 1, "maxItems": 4}}}}}'
    echo '{"id": "cut", "prompt": "Describe someone", "max_tokens": 3}'
    echo '{"id": "badrf", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "number", "minimum": 1}}}}'
    echo '{"id": "think", "prompt": "x", "thinking": true}'
} >"$T/in.jsonl"
for mode in sampled greedy; do
    out="$T/$mode.jsonl"
    if [ "$mode" = sampled ]; then temp=0.9; else temp=0; fi
    run -i "$T/in.jsonl" -o "$out" --json-schema "$T/schema.json" --temperature "$temp" -n 120 -j 3
    rc=$?
    [ "$rc" = 0 ] && ok "$mode run" || bad "$mode run exited $rc"
    grep -v '"badrf"\|"think"' "$out" >"$T/good.jsonl"
    [ "$(wc -l <"$T/good.jsonl")" = 10 ] && ok "$mode: 10 answers" || bad "$mode: $(wc -l <"$T/good.jsonl") answers, wanted 10"
    if $CHECK "$T/good.jsonl" "$T/schema.json" l1="$T/list.json" cut=length >"$T/check" 2>&1; then
        ok "$mode: every answer is JSON matching its schema ($(cat "$T/check"))"
    else
        bad "$mode: $(cat "$T/check")"
    fi
    grep '"badrf"' "$out" | grep -q '"invalid_request".*minimum' && ok "$mode: bad response_format -> error record" ||
        bad "$mode: bad response_format: $(grep '"badrf"' "$out")"
    grep '"think"' "$out" | grep -q '"invalid_request".*thinking' && ok "$mode: schema + thinking -> error record" ||
        bad "$mode: schema + thinking: $(grep '"think"' "$out")"
done

# ---- json_object per line, no --json-schema -----------------------------------------
{
    echo '{"custom_id": "o1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}, "temperature": 0.7, "max_tokens": 60}}'
    echo '{"id": "free", "prompt": "x", "max_tokens": 5}'
} >"$T/obj.jsonl"
run -i "$T/obj.jsonl" -o "$T/obj.out" && ok "json_object run" || bad "json_object run"
python3 - "$T/obj.out" <<'PY' && ok "json_object: an object (or a cut one), the free line unconstrained" || bad "json_object check"
import json, sys
recs = {str(r.get("custom_id", r.get("id"))): r for r in map(json.loads, open(sys.argv[1]))}
ch = recs["o1"]["response"]["body"]["choices"][0]
text = ch["message"]["content"]
assert text.startswith("{"), text
if ch["finish_reason"] == "stop":
    assert isinstance(json.loads(text), dict), text
else:
    assert ch["finish_reason"] == "length", ch
assert recs["free"]["finish_reason"] == "length", recs["free"]
PY

[ "$fails" = 0 ] || { echo "$fails failures"; exit 1; }
echo "all passed"
