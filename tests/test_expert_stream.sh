#!/bin/sh
# Expert streaming: with a memory budget smaller than the routed experts, slabs
# are read from the checkpoint through the expert cache (io_uring and pread
# backends) and the logits must be bit-identical to the all-resident run;
# the cache reports its traffic; a budget below two slabs is refused; the auto
# budget streams only when memory is short.
set -eu
: "${top_srcdir:=.}" "${top_builddir:=.}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
C="$top_srcdir/tests/data/tiny-dsa"
EV="$top_builddir/tools/dsinfer-eval"
"$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/resident.f32" --kv-cache f32
for io in uring pread auto; do
    for budget in 400K 1M 3M; do
        "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/s.f32" --kv-cache f32 --mem-budget $budget --io $io --chunk 13
        "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/r.f32" --kv-cache f32 --chunk 13
        cmp "$T/s.f32" "$T/r.f32" || { echo "FAIL: --io $io --mem-budget $budget changes the logits"; exit 1; }
        echo "PASS --io $io --mem-budget $budget: logits identical to the resident run"
    done
done
"$top_builddir/tools/dsinfer-bench" -m "$C/model" -p 16 -n 8 --membw-mb 0 --mem-budget 1M --io pread >"$T/b.json"
python3 - "$T/b.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["expert_cache"]
# tiny-dsa slab: gate, up, down of 128 x 512 FP8 = 3 x 64 KiB; 1 MiB holds 5
assert e["streaming"] and e["io"] == "pread" and e["slots"] == 5 and e["slab_bytes"] == 196608, e
assert e["misses"] > 0 and e["bytes_read"] >= e["misses"] * 196608, e
assert 0.0 <= e["prediction_accuracy"] <= 1.0 and e["prefetched"] > 0, e
# the decode test's disk traffic against the disk's own sequential bandwidth
assert e["decode_bytes_read_per_token"] > 0 and e["disk_GBps"] > 0, e
assert e["disk_probe"] in ("O_DIRECT", "buffered"), e
assert abs(e["disk_bound_tps"] - e["disk_GBps"] * 1e9 / e["decode_bytes_read_per_token"]) < 1e-3 * e["disk_bound_tps"], e
print("PASS expert cache stats:", e)
PY
if "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/x" --mem-budget 100K 2>"$T/err"; then
    echo "FAIL: a budget below two slabs was accepted"; exit 1
fi
grep -q "too small" "$T/err" && echo "PASS tiny budget refused: $(cat "$T/err")"
# The auto budget: with little available memory (DSINFER_MEM_AVAILABLE
# stands in for MemAvailable / the cgroup limit) experts stream, with the
# same logits; with plenty, or with --mem-budget all, they stay resident.
DSINFER_MEM_AVAILABLE=12000000 "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/auto.f32" --kv-cache f32 --chunk 13
cmp "$T/auto.f32" "$T/r.f32" || { echo "FAIL: the auto budget changes the logits"; exit 1; }
streaming() {
    "$top_builddir/tools/dsinfer-bench" -m "$C/model" -p 4 -n 2 --membw-mb 0 "$@" |
        python3 -c "import json, sys; print(json.load(sys.stdin)['expert_cache']['streaming'])"
}
[ "$(DSINFER_MEM_AVAILABLE=12000000 streaming)" = True ] || { echo "FAIL: auto budget with 12 MB free does not stream"; exit 1; }
[ "$(DSINFER_MEM_AVAILABLE=12000000 streaming --mem-budget all)" = False ] || { echo "FAIL: --mem-budget all streams"; exit 1; }
[ "$(DSINFER_MEM_AVAILABLE=100000000000 streaming --mem-budget auto)" = False ] || { echo "FAIL: auto budget streams with plenty of memory"; exit 1; }
echo "PASS auto budget: streams when memory is short (same logits), resident otherwise or with --mem-budget all"
# while experts stream, the dense matrices are copied out of the mapped files (7495680 bytes
# in tiny-dsa: everything but the routed experts, the embedding and the norms)
copied() {
    "$top_builddir/tools/dsinfer-bench" -m "$C/model" -p 4 -n 2 --membw-mb 0 "$@" |
        python3 -c "import json, sys; print(json.load(sys.stdin)['expert_cache']['dense_copied_bytes'])"
}
[ "$(copied --mem-budget 1M)" = 7495680 ] && [ "$(copied --mem-budget all)" = 0 ] ||
    { echo "FAIL: dense copy: $(copied --mem-budget 1M) bytes streamed, $(copied --mem-budget all) resident"; exit 1; }
echo "PASS streaming: the dense matrices are copied into RAM; resident: the whole checkpoint is"
# Expert-parallel execution by NUMA node (threads take their node's experts
# first) on a synthetic two-node topology: the same logits, resident and streamed.
for budget in all 1M; do
    HWLOC_SYNTHETIC="pack:2 numa:1 core:1 pu:1" "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/numa.f32" \
        --kv-cache f32 --chunk 13 --threads 2 --mem-budget $budget
    cmp "$T/numa.f32" "$T/r.f32" || { echo "FAIL: two NUMA nodes (--mem-budget $budget) change the logits"; exit 1; }
done
echo "PASS two synthetic NUMA nodes: logits identical, resident and streamed"
# --numa replicate: a copy of the dense weights per node, the same logits.
HWLOC_SYNTHETIC="pack:2 numa:1 core:1 pu:1" "$EV" -m "$C/model" --tokens "$C/tokens.json" -o "$T/numa.f32" \
    --kv-cache f32 --chunk 13 --threads 2 --numa replicate
cmp "$T/numa.f32" "$T/r.f32" || { echo "FAIL: --numa replicate changes the logits"; exit 1; }
copies=$(HWLOC_SYNTHETIC="pack:2 numa:1 core:1 pu:1" "$top_builddir/tools/dsinfer-bench" -m "$C/model" -p 4 -n 2 \
    --membw-mb 0 -t 2 --numa replicate | python3 -c "import json, sys; n = json.load(sys.stdin)['numa']; print(n['nodes'], n['dense_copies'], n['copy_bytes'] > 0)")
[ "$copies" = "2 2 True" ] || { echo "FAIL: --numa replicate on two nodes reports '$copies'"; exit 1; }
"$top_builddir/tools/dsinfer-bench" -m "$C/model" --numa sideways >/dev/null 2>"$T/numa.err" && { echo "FAIL: --numa sideways accepted"; exit 1; }
grep -q "expected on, off or replicate" "$T/numa.err" || { echo "FAIL: --numa sideways: $(cat "$T/numa.err")"; exit 1; }
echo "PASS --numa replicate: two copies of the dense weights on two synthetic nodes, logits identical"
