#!/bin/sh
# Command-line behaviour of dsinfer, dsinfer-eval and dsinfer-inspect: --help,
# --version, man pages (lint-clean, every --help flag documented), generation
# on the embedded default model, determinism of seeded sampling, and clear
# errors with the documented exit codes on bad input; and the conventions every
# tool shares (-q/-v/-h/-V, exit 1 usage, 2 bad model, 3 unreadable files).
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools"
CASE="$top_srcdir/tests/data/tiny-dsa"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# expect CODE PATTERN CMD...: exit code CODE and stderr matching PATTERN
expect() {
    code=$1 pat=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" = "$code" ] && grep -q -- "$pat" "$T/err"; then ok "$* -> $rc"; else
        bad "$* -> $rc (wanted $code, /$pat/): $(head -c 300 "$T/err")"; fi
}

for tool in dsinfer dsinfer-eval dsinfer-inspect dsinfer-mkmodel dsinfer-bench; do
    "$B/$tool" --help >"$T/help" 2>&1 && grep -qi usage "$T/help" && ok "$tool --help" || bad "$tool --help"
    "$B/$tool" --version | grep -q "^$tool (dsinfer) [0-9]" && ok "$tool --version" || bad "$tool --version"
    man="$top_srcdir/man/$tool.1"
    if [ -f "$man" ]; then
        if command -v mandoc >/dev/null 2>&1; then
            mandoc -Tlint -W warning "$man" >"$T/lint" 2>&1 && ok "$tool.1 lint" || bad "$tool.1 lint: $(cat "$T/lint")"
        fi
        # every long option of --help appears in the man page (man escapes '-' as '\-')
        sed 's/\\-/-/g' "$man" >"$T/man.txt"
        for flag in $(grep -o -- '--[a-z][a-z0-9-]*' "$T/help" | sort -u); do
            grep -q -- "$flag" "$T/man.txt" || bad "$tool: $flag is in --help but not in $tool.1"
        done
    else
        bad "$tool has no man page"
    fi
done

# the overview page
if command -v mandoc >/dev/null 2>&1; then
    mandoc -Tlint -W warning "$top_srcdir/man/dsinfer.7" >"$T/lint" 2>&1 && ok "dsinfer.7 lint" || bad "dsinfer.7 lint: $(cat "$T/lint")"
fi

# generation on the embedded default model (built by make)
if [ -f "$top_builddir/models/tiny/config.json" ]; then
    out1=$("$B/dsinfer" -q --prompt-ids 0,33310,3 -n 6 --ignore-eos) && [ "$(echo "$out1" | wc -w)" = 6 ] &&
        ok "dsinfer greedy on the default model: $out1" || bad "dsinfer default model: $out1"
fi
g1=$("$B/dsinfer" -q -m "$CASE/model" -p "0 831 89" -n 8 --ignore-eos --temperature 0.9 --seed 11)
g2=$("$B/dsinfer" -q -m "$CASE/model" -p "0 831 89" -n 8 --ignore-eos --temperature 0.9 --seed 11)
g3=$("$B/dsinfer" -q -m "$CASE/model" -p "0 831 89" -n 8 --ignore-eos --temperature 0.9 --seed 12)
[ -n "$g1" ] && [ "$g1" = "$g2" ] && ok "same seed, same tokens" || bad "seeded sampling not reproducible: '$g1' vs '$g2'"
[ "$g1" != "$g3" ] && ok "different seed, different tokens" || bad "seed has no effect: '$g1'"
# greedy decoding reproduces the reference's own greedy continuation (fp32 KV,
# exact f32 products: the CLI's default bf16 prefill rounds activations)
want=$(python3 -c "import json;t=json.load(open('$CASE/tokens.json'));print(' '.join(map(str,t['greedy_fp32'][:8])))")
prompt=$(python3 -c "import json;print(','.join(map(str,json.load(open('$CASE/tokens.json'))['prompt'])))")
got=$("$B/dsinfer" -q -m "$CASE/model" -p "$prompt" -n 8 --ignore-eos --kv-cache f32 --precision f32)
[ "$got" = "$want" ] && ok "greedy continuation equals the reference's ($got)" || bad "greedy: got '$got', want '$want'"
got=$("$B/dsinfer" -q -m "$CASE/model" -p "$prompt" -n 8 --ignore-eos --kv-cache f32 --precision bf16)
[ "$(echo "$got" | wc -w)" = 8 ] && ok "--precision bf16 generates ($got)" || bad "--precision bf16: '$got'"
"$B/dsinfer" -q -m "$CASE/model" -p "$prompt" -n 1 --precision f16 >/dev/null 2>"$T/err"
[ $? = 1 ] && grep -q "expected f32 or bf16" "$T/err" && ok "--precision f16 is a usage error" || bad "--precision f16: $(cat "$T/err")"

# the benchmark prints one JSON object with positive speeds; --compare runs a command
"$B/dsinfer-bench" -m "$CASE/model" -p 8 -n 4 -d 8 -b 3 --membw-mb 16 --layer-times \
    --compare "echo '{\"pp_tps\": 2.0, \"tg_tps\": 4.0}'" >"$T/bench.json" &&
python3 - "$T/bench.json" <<'PY' && ok "dsinfer-bench JSON" || bad "dsinfer-bench JSON: $(cat "$T/bench.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["prefill_tps"] > 0 and d["decode_tps"] > 0 and d["membw_GBps"] > 0, d
assert d["batch"] == 3 and d["batch_decode_tps"] > 0, d
# KV bytes per position and layer at kv_lora 512, rope 64, index 128: 512 e4m3 + 4 f32 scales
# + 64 f32 rope + 128 e4m3 index key + 1 f32 scale
assert d["kv_cache"] == "fp8" and d["kv_bytes_per_token_layer"] == 512 + 16 + 256 + 128 + 4, d
assert d["precision"] == "bf16" and isinstance(d["bf16_native"], bool), d
assert abs(d["batch_gain"] - d["batch_decode_tps"] / d["decode_tps"]) < 1e-4 * d["batch_gain"], d
# tiny-dsa: all 14852272 bytes, less the 2 x 3146496 expert bytes of which a token uses 4/16,
# less the 1024 x 512 BF16 embedding of which it reads one row
assert d["active_bytes_per_token"] == 14852272 - 2 * 3146496 * 12 // 16 - 1024 * 512 * 2 + 512 * 2, d
# a batched step of 3 reads each chosen expert once: 4 to 12 of the 16 in each of the 2 MoE
# layers; its bytes are the dense ones (the token's, less its 8 experts of 196656 bytes) and those
e, per = d["batch_experts_per_step"], 2 * 3146496 // 32
assert 8 <= e <= 24, d
step = d["active_bytes_per_token"] - 8 * per + e * per
assert abs(d["batch_bytes_per_step"] - step) <= 1, (d, step)
assert abs(d["batch_gain_bound"] - 3 * d["active_bytes_per_token"] / step) < 1e-4, d
assert abs(d["batch_achieved_GBps"] - d["batch_decode_tps"] / 3 * step / 1e9) < 1e-4 * d["batch_achieved_GBps"], d
assert abs(d["batch_roofline_pct"] - 100 * d["batch_achieved_GBps"] / d["membw_GBps"]) < 1e-3 * d["batch_roofline_pct"], d
assert abs(d["compare"]["decode_ratio"] - d["decode_tps"] / 4.0) < 1e-4 * d["decode_tps"], d["compare"]
assert abs(d["compare"]["prefill_ratio"] - d["prefill_tps"] / 2.0) < 1e-4 * d["prefill_tps"], d["compare"]
# --layer-times: the 3 blocks and the head, whose bytes add up to the token's
L = d["layers"]
assert [l["layer"] for l in L] == [0, 1, 2, "head"], L
assert sum(l["bytes"] for l in L) == d["active_bytes_per_token"], L
assert all(l["ms"] > 0 and l["GBps"] > 0 and l["roofline_ratio"] > 0 for l in L), L
assert L[3]["bytes"] == 1024 * 512 * 2 + 512 * 2 + 512 * 2, L   # BF16 head, norm, one embedding row
PY
"$B/dsinfer-bench" -m "$CASE/model" -p 4 -n 2 --membw-mb 0 --kv-cache fp8-compact |
    python3 -c "import json, sys; d = json.load(sys.stdin); assert d['kv_cache'] == 'fp8-compact' and d['kv_bytes_per_token_layer'] == 788, d" &&
    ok "fp8-compact KV: 788 bytes per position and layer (bf16 rope key)" || bad "fp8-compact KV bytes"
# inspect --json prints its report even when the path is not UTF-8
mkdir "$T/$(printf 'd\351')" && "$B/dsinfer-inspect" --json "$T/$(printf 'd\351')" >"$T/nonutf.json" 2>/dev/null
rc=$?
[ "$rc" = 3 ] && python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['valid'] is False and 'd?' in d['model'], d" "$T/nonutf.json" &&
    ok "inspect --json, a path that is not UTF-8" || bad "inspect --json non-UTF-8 path -> $rc: $(cat "$T/nonutf.json")"
# a report that cannot be written (stdout on a full device) is an I/O error
if [ -w /dev/full ]; then
    for cmd in "dsinfer-inspect $CASE/model" "dsinfer-inspect --json $CASE/model" \
        "dsinfer-bench -m $CASE/model -p 2 -n 1 -r 1 --membw-mb 0" "dsinfer-tokenize --text hi" "dsinfer-eval --help"; do
        # shellcheck disable=SC2086
        "$B"/$cmd >/dev/full 2>"$T/full.err"
        rc=$?
        [ "$rc" = 3 ] && grep -q "standard output" "$T/full.err" && ok "$cmd >/dev/full -> 3" ||
            bad "$cmd >/dev/full -> $rc: $(cat "$T/full.err")"
    done
fi
# OMP_NUM_THREADS: a sane value is the team, an absurd one (more than 8 a
# CPU) is replaced by one thread a CPU instead of crashing every tool
ncpu=$(getconf _NPROCESSORS_ONLN)
for omp in 3 100000; do
    want=$omp
    [ "$omp" -gt $((8 * ncpu)) ] && want=$ncpu
    OMP_NUM_THREADS=$omp "$B/dsinfer-bench" -m "$CASE/model" -p 2 -n 1 -r 1 --membw-mb 0 >"$T/omp.json" 2>"$T/omp.err" &&
        python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['threads'] == $want, d['threads']" "$T/omp.json" &&
        ok "OMP_NUM_THREADS=$omp: $want threads" || bad "OMP_NUM_THREADS=$omp: $(cat "$T/omp.err")"
done
OMP_NUM_THREADS=100000 "$B/dsinfer-quantize" -m "$CASE/model" -o "$T/omp-q8" --type q8_0 -q >/dev/null 2>"$T/omp.err" &&
    ok "OMP_NUM_THREADS=100000 dsinfer-quantize" || bad "OMP_NUM_THREADS=100000 dsinfer-quantize: $(cat "$T/omp.err")"
rm -rf "$T/omp-q8"
# --depth-fill synthetic reaches the depth without prefill (filled caches, decode from there);
# the JSON says which fill was used
"$B/dsinfer-bench" -m "$CASE/model" -p 0 -n 2 -d 300 --depth-fill synthetic --membw-mb 0 -b 2 >"$T/synth.json" &&
python3 - "$T/synth.json" <<'PY' && ok "dsinfer-bench --depth-fill synthetic" || bad "--depth-fill synthetic: $(cat "$T/synth.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["depth"] == 300 and d["depth_fill"] == "synthetic" and d["gen"] == 2, d
assert d["decode_tps"] > 0 and d["batch_decode_tps"] > 0, d
PY
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['depth_fill'] == 'prefill', d" "$T/bench.json" &&
    ok "dsinfer-bench reports depth_fill prefill by default" || bad "depth_fill default: $(cat "$T/bench.json")"
expect 1 "depth-fill" "$B/dsinfer-bench" -m "$CASE/model" -p 0 -n 1 --depth-fill random
expect 1 "fp8-compact" "$B/dsinfer" -m "$CASE/model" -p 1 --kv-cache fp9
expect 1 "expected auto, all or a size" "$B/dsinfer" -m "$CASE/model" -p 1 --mem-budget autoo
expect 1 "expected a size" "$B/dsinfer" -m "$CASE/model" -p 1 --mem-budget 12Q
# a KV cache that cannot be locked (RLIMIT_MEMLOCK 0, no CAP_IPC_LOCK) warns, naming the
# ulimit that would allow it, and generation goes on unchanged
want_ids=$("$B/dsinfer" -q -m "$CASE/model" -p "0 831" -n 3 --ignore-eos)
if ldd "$B/dsinfer" 2>/dev/null | grep -q libasan; then
    nolock() { return 77; }    # AddressSanitizer turns mlock into a no-op that succeeds
elif [ "$(id -u)" = 0 ] && command -v capsh >/dev/null 2>&1; then
    nolock() { capsh --drop=cap_ipc_lock -- -c 'ulimit -l 0 && exec "$0" "$@"' "$@"; }
elif [ "$(id -u)" != 0 ]; then
    nolock() { (ulimit -l 0 && exec "$@"); }
else
    nolock() { return 77; }
fi
got_ids=$(nolock "$B/dsinfer" -m "$CASE/model" -p "0 831" -n 3 --ignore-eos 2>"$T/lock.err")
case $? in
77) echo "SKIP unlockable KV cache (root without capsh, or a sanitizer build)" ;;
*) grep -q "KV cache is not locked in RAM.*ulimit -l [0-9]" "$T/lock.err" && [ "$got_ids" = "$want_ids" ] &&
       ok "unlockable KV cache: warning and the same tokens" || bad "unlockable KV cache: '$got_ids' vs '$want_ids': $(cat "$T/lock.err")" ;;
esac
expect 1 "model" "$B/dsinfer-bench" -p 4

# errors
expect 1 "prompt-ids" "$B/dsinfer" -m "$CASE/model"
expect 1 "unrecognized option\|invalid option" "$B/dsinfer" --bogus
expect 1 "temperature" "$B/dsinfer" -m "$CASE/model" -p 0 --temperature -1
expect 1 "expected a non-negative integer" "$B/dsinfer" -m "$CASE/model" -p 0 --seed " -1"
expect 1 "a budget of 0 bytes" "$B/dsinfer" -m "$CASE/model" -p 0 --mem-budget 0
expect 1 "a budget of 0 bytes" "$B/dsinfer" -m "$CASE/model" -p 0 --mem-budget 0.4
expect 2 "outside the vocabulary" "$B/dsinfer" -m "$CASE/model" -p "0 5000"
# a chat message or system prompt that is not UTF-8 is refused, not dropped
expect 2 "chat: the text is not valid UTF-8" "$B/dsinfer" -m "$CASE/model" --chat "$(printf 'caf\351')" -n 1
expect 2 "system: the text is not valid UTF-8" "$B/dsinfer" -m "$CASE/model" --system "$(printf '\377')" --chat hi -n 1
expect 4 "context full" "$B/dsinfer" -m "$CASE/model" -p "0 1 2 3 4" -c 3
expect 3 "config.json" "$B/dsinfer-inspect" "$T/nonexistent"
expect 1 "required" "$B/dsinfer-eval" --model "$CASE/model"
echo '{"prompt": [0, 1, -3]}' >"$T/badtok.json"
expect 2 "not a non-negative integer" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$T/badtok.json" -o "$T/x"
echo '{"prompt": [0, 1' >"$T/trunc.json"
expect 2 "trunc.json" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$T/trunc.json" -o "$T/x"
expect 1 "kv-cache" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$CASE/tokens.json" -o "$T/x" --kv-cache bf17
# dsinfer-eval's outputs: never an input, each other, or the checkpoint; a
# failed run (here an unwritable dump path, then a bad model) replaces none
cp "$CASE/tokens.json" "$T/tok-in.json"
cp -r "$CASE/model" "$T/cut-eval" && chmod -R u+w "$T/cut-eval"
head -c 5000000 "$CASE/model/model-00002-of-00002.safetensors" >"$T/cut-eval/model-00002-of-00002.safetensors"
expect 1 "is an input of this run" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$T/tok-in.json" -o "$T/tok-in.json"
cmp -s "$T/tok-in.json" "$CASE/tokens.json" && ok "eval: --tokens left as it was" || bad "eval overwrote --tokens"
expect 1 "name the same file" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$T/tok-in.json" -o "$T/l.f32" --dump-topk "$T/./l.f32"
cp -r "$CASE/model" "$T/ckpt" && chmod -R u+w "$T/ckpt"
expect 1 "would overwrite a file of the checkpoint" "$B/dsinfer-eval" -m "$T/ckpt" --tokens "$T/tok-in.json" -o "$T/ckpt/config.json"
cmp -s "$T/ckpt/config.json" "$CASE/model/config.json" && ok "eval: config.json left as it was" || bad "eval overwrote config.json"
echo precious >"$T/keep.f32"
expect 3 "cannot create" "$B/dsinfer-eval" -m "$CASE/model" --tokens "$T/tok-in.json" -o "$T/keep.f32" --dump-topk "$T/no-dir/x"
expect 2 "model-00002-of-00002.safetensors" "$B/dsinfer-eval" -m "$T/cut-eval" --tokens "$T/tok-in.json" -o "$T/keep.f32"
[ "$(cat "$T/keep.f32")" = precious ] && [ -z "$(ls "$T" | grep 'keep.f32.tmp')" ] &&
    ok "eval: a failed run leaves --out as it was and no temporaries" || bad "eval: --out replaced or temporaries left: $(ls "$T")"

# a damaged checkpoint: truncated shard, corrupt header, missing tensor, wrong shape
"$B/dsinfer-inspect" "$CASE/model" >"$T/inspect" && grep -q "validation: *OK" "$T/inspect" &&
    grep -q "tensors: *280" "$T/inspect" && ok "inspect tiny-dsa" || bad "inspect tiny-dsa: $(cat "$T/inspect")"
"$B/dsinfer-inspect" --json "$CASE/model" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['valid'] and d['expert_bytes_per_layer'][1] == 3146496" &&
    ok "inspect --json" || bad "inspect --json"
cp -r "$CASE/model" "$T/cut" && chmod -R u+w "$T/cut"
head -c 5000000 "$CASE/model/model-00002-of-00002.safetensors" >"$T/cut/model-00002-of-00002.safetensors"
expect 2 "model-00002-of-00002.safetensors" "$B/dsinfer-inspect" "$T/cut"
expect 2 "model-00002-of-00002.safetensors" "$B/dsinfer-eval" -m "$T/cut" --tokens "$CASE/tokens.json" -o "$T/x"
cp "$CASE/model/model-00002-of-00002.safetensors" "$T/cut/"
printf 'XXXXXXXX' | dd of="$T/cut/model-00001-of-00002.safetensors" bs=1 seek=0 conv=notrunc 2>/dev/null
expect 2 "model-00001-of-00002.safetensors" "$B/dsinfer-inspect" "$T/cut"
cp "$CASE/model/model-00001-of-00002.safetensors" "$T/cut/"
sed 's/"num_attention_heads": 4/"num_attention_heads": 8/' "$CASE/model/config.json" >"$T/cut/config.json"
expect 2 "q_b_proj.weight' has shape \[768, 256\], but config.json implies \[1536, 256\]" "$B/dsinfer-inspect" "$T/cut"
# nan_copy SRC DST TENSOR: a copy of checkpoint SRC whose TENSOR's first
# element is NaN
nan_copy() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, os, shutil, struct, sys
src, dst, name = sys.argv[1:4]
shutil.copytree(src, dst)
for f in sorted(os.listdir(dst)):
    if f.endswith(".safetensors"):
        p = os.path.join(dst, f)
        os.chmod(p, 0o644)
        with open(p, "r+b") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            t = json.loads(fh.read(n)).get(name)
            if t:
                fh.seek(8 + n + t["data_offsets"][0])
                fh.write({"BF16": b"\xc0\x7f", "F32": b"\x00\x00\xc0\x7f", "F16": b"\x00\x7e"}[t["dtype"]])
PY
}
# a norm holding NaN is refused at load (it would make every logit NaN)
nan_copy "$CASE/model" "$T/odd-nan" model.norm.weight
expect 2 "model.norm.weight' holds nan at index 0" "$B/dsinfer" -m "$T/odd-nan" -p 0 -n 1
# a NaN in token 0's embedding row (matrices are not scanned at load): NaN
# logits are an error, not token 0 every step; in the engine, an error record
nan_copy "$CASE/model" "$T/odd-emb" model.embed_tokens.weight
expect 4 "logits of step 0 are NaN" "$B/dsinfer" -m "$T/odd-emb" -p 0 -n 2
if [ -f "$top_builddir/models/tiny/tokenizer.json" ]; then   # text prompts need the full vocabulary
    nan_copy "$top_builddir/models/tiny" "$T/odd-emb2" lm_head.weight   # token 0's logit NaN everywhere
    echo '{"id": "n1", "prompt": "hi"}' >"$T/nan.jsonl"
    "$B/dsinfer-batch" -m "$T/odd-emb2" -i "$T/nan.jsonl" -o "$T/nan.out" -n 2 -q 2>"$T/nan.err"
    grep -q '"generation_error"' "$T/nan.out" && ok "dsinfer-batch: NaN logits give an error record" ||
        bad "dsinfer-batch NaN logits: $(cat "$T/nan.out" "$T/nan.err")"
    rm -rf "$T/odd-emb2"
fi
# a FIFO where a checkpoint file belongs is refused, not waited on; an empty
# config or index is named as empty
cp -r "$CASE/model" "$T/odd" && chmod -R u+w "$T/odd"
for f in config.json model-00001-of-00002.safetensors tokenizer.json; do
    [ -f "$T/odd/$f" ] || continue
    mv "$T/odd/$f" "$T/odd/$f.keep" && mkfifo "$T/odd/$f"
    expect 3 "$f: not a regular file" timeout 60 "$B/dsinfer" -m "$T/odd" --prompt hi -n 1
    rm "$T/odd/$f" && mv "$T/odd/$f.keep" "$T/odd/$f"
done
if [ -f "$top_builddir/models/tiny/tokenizer.json" ]; then   # the embedded model's own tokenizer
    mkdir "$T/odd-tok" && for f in "$top_builddir"/models/tiny/*; do ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$T/odd-tok/"; done
    rm "$T/odd-tok/tokenizer.json" && mkfifo "$T/odd-tok/tokenizer.json"
    expect 3 "tokenizer.json: not a regular file" timeout 60 "$B/dsinfer" -m "$T/odd-tok" --prompt hi -n 1
fi
for f in config.json model.safetensors.index.json; do
    mv "$T/odd/$f" "$T/odd/$f.keep" && : >"$T/odd/$f"
    expect 2 "$f: the file is empty" "$B/dsinfer-inspect" "$T/odd"
    mv "$T/odd/$f.keep" "$T/odd/$f"
done
sed 's/"model_type": "deepseek_v32"/"model_type": "llama"/' "$CASE/model/config.json" >"$T/cut/config.json"
expect 2 "model_type" "$B/dsinfer-inspect" "$T/cut"

# ---- the same conventions in every tool -------------------------------------
# -q/-v/-h/-V everywhere; an unknown option is a usage error (1); a model
# directory that does not exist is an I/O error (3) and a malformed one a bad
# model (2), whichever tool loads it.
mkdir -p "$T/badmodel"
for f in "$CASE"/model/*; do ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$T/badmodel/"; done
rm "$T/badmodel/config.json"
head -c 40 "$CASE/model/config.json" >"$T/badmodel/config.json"
echo '{"prompt": [0, 1]}' >"$T/tok.json"
echo '{"id": "a", "prompt": "x"}' >"$T/in.jsonl"
for tool in dsinfer dsinfer-eval dsinfer-inspect dsinfer-mkmodel dsinfer-bench dsinfer-tokenize \
            dsinfer-serve dsinfer-batch dsinfer-quantize; do
    "$B/$tool" --help >"$T/help" 2>&1
    for f in "-q, --quiet" "-v, --verbose" "-h, --help" "-V, --version"; do
        grep -q -- "$f" "$T/help" || bad "$tool --help has no '$f'"
    done
    "$B/$tool" -V | grep -q "^$tool (dsinfer) [0-9]" || bad "$tool -V"
    expect 1 "no-such-option" "$B/$tool" --no-such-option
done
for spec in "dsinfer --prompt-ids 1" "dsinfer-eval --tokens $T/tok.json -o $T/o.bin" "dsinfer-inspect" \
            "dsinfer-bench -p 2 -n 2" "dsinfer-serve --port 1" "dsinfer-batch -i $T/in.jsonl -o $T/out.jsonl" \
            "dsinfer-quantize -o $T/q --type q8_0"; do
    tool=${spec%% *} args=${spec#"$tool"}
    # shellcheck disable=SC2086
    expect 3 "nonexistent" "$B/$tool" -m "$T/nonexistent" $args
    # shellcheck disable=SC2086
    expect 2 "config.json" "$B/$tool" -m "$T/badmodel" $args
done
expect 3 "nonexistent" "$B/dsinfer-tokenize" -m "$T/nonexistent" --text hi
# options that would be ignored are refused; a missing --batch-json file
# fails before the tokenizer loads
expect 1 "bench encodes" "$B/dsinfer-tokenize" --bench 3 --decode 1,2,3
expect 1 "bench encodes" "$B/dsinfer-tokenize" --bench 3 --render-chat "$T/x.json"
expect 1 "go with --render-chat" "$B/dsinfer-tokenize" --thinking --text hi
expect 3 "cannot open" "$B/dsinfer-tokenize" --batch-json "$T/nonexistent.json"
# -v describes the model and the kernels; -q leaves stderr empty
"$B/dsinfer" -v -m "$CASE/model" -p "0 831" -n 2 >/dev/null 2>"$T/verbose"
grep -q "loaded .*layers" "$T/verbose" && grep -q "kernels: " "$T/verbose" && grep -q "expert cache" "$T/verbose" &&
    ok "dsinfer -v describes the model" || bad "dsinfer -v: $(cat "$T/verbose")"
"$B/dsinfer" -q -m "$CASE/model" -p "0 831" -n 2 >/dev/null 2>"$T/quiet"
[ ! -s "$T/quiet" ] && ok "dsinfer -q is silent" || bad "dsinfer -q printed: $(cat "$T/quiet")"
"$B/dsinfer-tokenize" -v -m "$top_srcdir/data" --text hi >/dev/null 2>"$T/verbose" &&
    grep -q "loaded the tokenizer" "$T/verbose" && ok "dsinfer-tokenize -v" || bad "dsinfer-tokenize -v: $(cat "$T/verbose")"

echo "$fails failed"
[ "$fails" = 0 ]
