#!/bin/sh
# test_tokenize_golden.sh — dsinfer-tokenize against the 318 golden
# tokenizations of tests/data/tokenizer/golden.json (ids and decoded text,
# via tests/tokenize_golden.py), and the DeepSeek-V3.2 README test vector
# with data/tokenizer-v32.json (encode and decode).
set -u
: "${top_srcdir:=.}"
: "${top_builddir:=.}"
tool="$top_builddir/tools/dsinfer-tokenize"
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found: skipping"
    exit 77
fi
python3 "$top_srcdir/tests/tokenize_golden.py" --tokenize "$tool" \
    --tokenizer "$top_srcdir/data/tokenizer.json" "$top_srcdir/tests/data/tokenizer/golden.json" || exit 1

text='<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>'
want='0 128803 33310 128804 128799 19923 3 342 1030 22651 4374 1465 16 1 128803 19 13 19 127252 128804 128798'
got=$("$tool" --tokenizer "$top_srcdir/data/tokenizer-v32.json" --ids-only --text "$text") || exit 1
if [ "$got" != "$want" ]; then
    echo "V3.2 vector: got '$got'"
    exit 1
fi
back=$("$tool" --tokenizer "$top_srcdir/data/tokenizer-v32.json" --decode "$want") || exit 1
if [ "$back" != "$text" ]; then
    echo "V3.2 vector decode: got '$back'"
    exit 1
fi
echo "V3.2 test vector: ok"

# --bench: one JSON object; the 21-token vector encoded 3 times
"$tool" --tokenizer "$top_srcdir/data/tokenizer-v32.json" --text "$text" --bench 3 >bench.out || exit 1
python3 - bench.out "$text" <<'PY' || exit 1
import json, sys
d = json.load(open(sys.argv[1]))
assert d["tokens"] == 21 and d["repeat"] == 3 and d["MBps"] > 0 and d["first_MBps"] > 0, d
assert d["bytes"] == len(sys.argv[2].encode("utf-8")), d
print("--bench:", d)
PY
rm -f bench.out
