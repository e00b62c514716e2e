#!/bin/sh
# The batch acceptance test: a 200-document job on the embedded tiny model,
# sampled (temperature 0.8, fixed seed), is SIGKILLed at random points several
# times and resumed each time with the same arguments.  The final output must
# hold exactly 200 complete lines with unique ids and be identical (as a set
# of lines) to an uninterrupted run: nothing lost, nothing repeated, no torn
# line, and the per-document result independent of where the kills fell.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools/dsinfer-batch"
MODEL="$top_builddir/models/tiny"
T=$(mktemp -d)
bgpid=
trap '[ -n "$bgpid" ] && kill -9 "$bgpid" 2>/dev/null; rm -rf "$T"' EXIT
N=200
KILLS=5

if [ ! -f "$MODEL/config.json" ]; then
    echo "SKIP: $MODEL not built"
    exit 77
fi

i=1
while [ "$i" -le "$N" ]; do
    echo "{\"id\": \"doc-$i\", \"prompt\": \"Document $i: the river rose $((i * 7 % 13)) metres on day $i.\"}"
    i=$((i + 1))
done >"$T/in.jsonl"
ARGS="-m $MODEL --threads 1 -i $T/in.jsonl --parallel 8 -n 12 --temperature 0.8 --seed 11 -q"

# shellcheck disable=SC2086
if ! timeout 600 "$B" $ARGS -o "$T/ref.jsonl"; then
    echo "FAIL: the uninterrupted reference run failed"
    exit 1
fi

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# Kill points are random (logged so a failure can be replayed by hand): the
# first kill falls 0.1-1 s after start (model load or the first step); the
# others once a random 1-45 more records exist plus 0-0.3 s, so they land
# mid-step and mid-write alike.
k=1
while [ "$k" -le "$KILLS" ]; do
    before=$(lines "$T/out.jsonl")
    if [ "$k" = 1 ]; then
        target=$before delay=$(python3 -c "import random; print(round(random.uniform(0.1, 1.0), 2))")
    else
        target=$(python3 -c "import random; print($before + random.randint(1, 45))")
        delay=$(python3 -c "import random; print(round(random.uniform(0, 0.3), 2))")
    fi
    # shellcheck disable=SC2086
    "$B" $ARGS -o "$T/out.jsonl" 2>>"$T/err" &
    bgpid=$!
    w=0
    while [ "$w" -lt 3000 ] && [ "$(lines "$T/out.jsonl")" -lt "$target" ] && kill -0 "$bgpid" 2>/dev/null; do
        sleep 0.02
        w=$((w + 1))
    done
    sleep "$delay"
    kill -9 "$bgpid" 2>/dev/null
    wait "$bgpid" 2>/dev/null
    bgpid=
    echo "kill $k at >= $target records + ${delay}s: $before -> $(lines "$T/out.jsonl") lines"
    k=$((k + 1))
done
# shellcheck disable=SC2086
if ! timeout 600 "$B" $ARGS -o "$T/out.jsonl" 2>>"$T/err"; then
    echo "FAIL: the final resumed run failed: $(tail -n 5 "$T/err")"
    exit 1
fi

python3 - "$T/ref.jsonl" "$T/out.jsonl" "$N" <<'EOF'
import json, sys
ref_path, out_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = open(out_path, "rb").read()
fails = []
if not raw.endswith(b"\n"):
    fails.append("the output does not end with a complete line")
out = raw.decode("utf-8").splitlines()
ref = open(ref_path, encoding="utf-8").read().splitlines()
ids = [json.loads(l)["id"] for l in out]
if len(out) != n:
    fails.append("%d lines, want %d" % (len(out), n))
if len(set(ids)) != len(ids):
    fails.append("duplicate ids: %s" % sorted(i for i in set(ids) if ids.count(i) > 1)[:5])
if set(ids) != {"doc-%d" % i for i in range(1, n + 1)}:
    fails.append("the ids are not doc-1..doc-%d" % n)
errs = [l for l in out if '"error"' in l]
if errs:
    fails.append("%d error records, e.g. %s" % (len(errs), errs[0][:200]))
if sorted(out) != sorted(ref):
    diff = sorted(set(out) ^ set(ref))
    fails.append("%d lines differ from the uninterrupted run, e.g. %s" % (len(diff), diff[0][:200]))
for f in fails:
    print("FAIL:", f)
if not fails:
    print("PASS: %d lines, unique ids, identical to the uninterrupted run" % n)
sys.exit(1 if fails else 0)
EOF
