#!/bin/sh
# dsinfer-mkmodel: options, determinism, multi-shard output in the Hugging Face
# layout (safetensors headers, index, config.json), argument and config errors.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
MK="$top_builddir/tools/dsinfer-mkmodel"
PY="${PYTHON3:-python3}"
[ -x "$MK" ] || { echo "FAIL: $MK not built"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test_mkmodel.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

# ---- --help / --version
if "$MK" --help >"$tmp/help" 2>&1; then
    for f in --out --preset --config --set --seed --mtp --shard-size --scale-fmt \
             --tokenizer --no-tokenizer --quiet --help --version; do
        grep -q -e "$f" "$tmp/help" || fail "--help does not mention $f"
    done
    ok "--help"
else
    fail "--help exited non-zero"
fi
v=$("$MK" --version 2>&1) || fail "--version exited non-zero"
case "$v" in
"dsinfer-mkmodel (dsinfer) "*) ok "--version: $v" ;;
*) fail "--version printed '$v'" ;;
esac

# ---- a small V3.2 model, several shards
cat >"$tmp/small.json" <<'EOF'
{
  "hidden_size": 128, "vocab_size": 300, "num_hidden_layers": 2, "first_k_dense_replace": 1,
  "num_attention_heads": 2, "q_lora_rank": 128, "kv_lora_rank": 128,
  "qk_nope_head_dim": 32, "qk_rope_head_dim": 64, "v_head_dim": 32,
  "intermediate_size": 256, "moe_intermediate_size": 64,
  "n_routed_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
  "n_shared_experts": 1, "index_n_heads": 2, "index_head_dim": 128, "index_topk": 8,
  "max_position_embeddings": 256
}
EOF
gen() { # dir seed [extra args]
    d=$1 s=$2
    shift 2
    "$MK" --out "$d" --config "$tmp/small.json" --seed "$s" --shard-size 48K --no-tokenizer -q "$@"
}
gen "$tmp/a" 5 || fail "generating model a"
gen "$tmp/b" 5 || fail "generating model b"
gen "$tmp/c" 6 || fail "generating model c"
nshards=$(ls "$tmp/a" | grep -c '^model-.*\.safetensors$')
[ "$nshards" -ge 2 ] && ok "$nshards shards" || fail "expected >= 2 shards, got $nshards"
[ -z "$(ls "$tmp/a" | grep '\.tmp$')" ] || fail "leftover .tmp files"
(cd "$tmp/a" && ls) >"$tmp/la"
(cd "$tmp/b" && ls) >"$tmp/lb"
cmp -s "$tmp/la" "$tmp/lb" || fail "same seed, different file lists"
same=1
for f in $(cat "$tmp/la"); do
    cmp -s "$tmp/a/$f" "$tmp/b/$f" || { same=0; fail "same seed, $f differs"; }
done
[ $same = 1 ] && ok "same seed gives byte-identical files"
differ=0
for f in "$tmp"/a/model-*.safetensors; do
    cmp -s "$f" "$tmp/c/${f##*/}" || differ=1
done
[ $differ = 1 ] && ok "different seed gives different shards" || fail "seed 5 and 6 give identical shards"

# ---- structure: index, headers, shapes, dtypes, offsets, config.json
cat >"$tmp/check.py" <<'EOF'
import json, math, os, struct, sys
d, mode = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(d, "config.json")))
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
wm = idx["weight_map"]
seen, total = {}, 0
shards = sorted(set(wm.values()))
m = len(shards)
for k, fn in enumerate(shards, 1):
    assert fn == "model-%05d-of-%05d.safetensors" % (k, m), fn
    raw = open(os.path.join(d, fn), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and 8 + n <= len(raw), fn
    h = json.loads(raw[8:8 + n])
    assert h.pop("__metadata__") == {"format": "pt"}, fn
    off = 0
    for name, t in h.items():
        a, b = t["data_offsets"]
        size = {"BF16": 2, "F32": 4, "F8_E4M3": 1}[t["dtype"]] * math.prod(t["shape"])
        assert a == off and b - a == size, (fn, name)
        off = b
        assert wm.get(name) == fn, (name, fn)
        seen[name] = (t["dtype"], t["shape"])
    assert off == len(raw) - 8 - n, fn
    total += off
assert set(seen) == set(wm), set(wm) ^ set(seen)
assert total == idx["metadata"]["total_size"]
H, V = cfg["hidden_size"], cfg["vocab_size"]
v32 = cfg["model_type"] == "deepseek_v32"
assert cfg["architectures"] == ["DeepseekV32ForCausalLM" if v32 else "DeepseekV3ForCausalLM"]
q = cfg["quantization_config"]
assert q["quant_method"] == "fp8" and q["fmt"] == "e4m3" and q["weight_block_size"] == [128, 128]
assert q["activation_scheme"] == "dynamic"
assert seen["model.embed_tokens.weight"] == ("BF16", [V, H])
assert seen["lm_head.weight"] == ("BF16", [V, H])
assert seen["model.norm.weight"] == ("BF16", [H])
nh, ql, kvl = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
L = cfg["num_hidden_layers"] + cfg["num_nextn_predict_layers"]
f8 = {}
for l in range(L):
    p = "model.layers.%d." % l
    f8[p + "self_attn.q_a_proj"] = [ql, H]
    f8[p + "self_attn.q_b_proj"] = [nh * (nope + rope), ql]
    f8[p + "self_attn.kv_a_proj_with_mqa"] = [kvl + rope, H]
    f8[p + "self_attn.kv_b_proj"] = [nh * (nope + vd), kvl]
    f8[p + "self_attn.o_proj"] = [H, nh * vd]
    if v32:
        f8[p + "self_attn.indexer.wq_b"] = [cfg["index_n_heads"] * cfg["index_head_dim"], ql]
        f8[p + "self_attn.indexer.wk"] = [cfg["index_head_dim"], H]
        assert seen[p + "self_attn.indexer.weights_proj.weight"] == ("BF16", [cfg["index_n_heads"], H])
        assert seen[p + "self_attn.indexer.k_norm.bias"] == ("BF16", [cfg["index_head_dim"]])
    else:
        assert not any(".indexer." in k for k in seen)
    for nm in ("input_layernorm", "post_attention_layernorm"):
        assert seen[p + nm + ".weight"] == ("BF16", [H])
    if l < cfg["first_k_dense_replace"]:
        I = cfg["intermediate_size"]
        f8.update({p + "mlp.gate_proj": [I, H], p + "mlp.up_proj": [I, H], p + "mlp.down_proj": [H, I]})
    else:
        E, mi = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
        assert seen[p + "mlp.gate.weight"] == ("BF16", [E, H])
        assert seen[p + "mlp.gate.e_score_correction_bias"] == ("F32", [E])
        for e in range(E):
            x = p + "mlp.experts.%d." % e
            f8.update({x + "gate_proj": [mi, H], x + "up_proj": [mi, H], x + "down_proj": [H, mi]})
        si = cfg["n_shared_experts"] * mi
        x = p + "mlp.shared_experts."
        f8.update({x + "gate_proj": [si, H], x + "up_proj": [si, H], x + "down_proj": [H, si]})
for k, (o, i) in f8.items():
    assert seen[k + ".weight"] == ("F8_E4M3", [o, i]), k
    assert seen[k + ".weight_scale_inv"] == ("F32", [-(-o // 128), -(-i // 128)]), k
n_f8 = sum(1 for t in seen.values() if t[0] == "F8_E4M3")
assert n_f8 == len(f8), (n_f8, len(f8))
if cfg["num_nextn_predict_layers"]:
    p = "model.layers.%d." % cfg["num_hidden_layers"]
    assert seen[p + "eh_proj.weight"] == ("BF16", [H, 2 * H])
    for nm in ("embed_tokens", "shared_head.head"):
        assert seen[p + nm + ".weight"] == ("BF16", [V, H])
    for nm in ("enorm", "hnorm", "shared_head.norm"):
        assert seen[p + nm + ".weight"] == ("BF16", [H])
# decode one FP8 weight: codes finite and well spread, scales powers of two that vary
fn = wm["model.layers.0.self_attn.kv_b_proj.weight"]
raw = open(os.path.join(d, fn), "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
def data(name):
    a, b = h[name]["data_offsets"]
    return raw[8 + n + a:8 + n + b]
codes = data("model.layers.0.self_attn.kv_b_proj.weight")
def e4m3(c):
    e, mm = (c >> 3) & 15, c & 7
    v = mm * 2.0 ** -9 if e == 0 else (1 + mm / 8) * 2.0 ** (e - 7)
    return -v if c & 128 else v
assert all(c & 127 != 127 for c in codes), "NaN code"
mx = max(abs(e4m3(c)) for c in codes)
assert 160 <= mx <= 448, mx
sc = data("model.layers.0.self_attn.kv_b_proj.weight_scale_inv")
sc = struct.unpack("<%df" % (len(sc) // 4), sc)
assert all(s > 0 and math.frexp(s)[0] == 0.5 for s in sc), sc
if len(sc) >= 4:
    assert len(set(sc)) > 1, sc
print("checked %d tensors in %d shards (%s)" % (len(seen), m, mode))
EOF
if "$PY" -c 'import json' 2>/dev/null; then
    "$PY" "$tmp/check.py" "$tmp/a" v32 && ok "layout of model a" || fail "layout of model a"
else
    echo "skip: no python3, layout not checked"
fi

# ---- DeepSeek-V3 with an MTP layer, one shard, ue8m0
gen "$tmp/v3" 5 --set model_type=deepseek_v3 --mtp --scale-fmt ue8m0 --shard-size 1G \
    || fail "generating a deepseek_v3 model"
if "$PY" -c 'import json' 2>/dev/null; then
    "$PY" "$tmp/check.py" "$tmp/v3" v3+mtp && ok "layout of the V3 + MTP model" || fail "layout of the V3 + MTP model"
    "$PY" -c '
import json, sys
c = json.load(open(sys.argv[1]))
assert c["quantization_config"]["scale_fmt"] == "ue8m0"
assert c["num_nextn_predict_layers"] == 1
assert not any(k.startswith("index_") for k in c)
' "$tmp/v3/config.json" && ok "V3 config.json" || fail "V3 config.json"
fi

# ---- overwriting an earlier output with fewer shards removes the stale ones
gen "$tmp/a" 5 --shard-size 1G || fail "regenerating model a in one shard"
n=$(ls "$tmp/a" | grep -c '\.safetensors$')
[ "$n" = 1 ] && ok "stale shards removed" || fail "expected 1 shard after regeneration, found $n"

# ---- errors
expect() { # code description args...
    want=$1 what=$2
    shift 2
    "$MK" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" != "$want" ]; then
        fail "$what: exit $rc, expected $want"
    elif [ ! -s "$tmp/err" ]; then
        fail "$what: no message"
    else
        ok "$what: exit $rc: $(head -n 1 "$tmp/err")"
    fi
}
expect 1 "unknown flag" --out "$tmp/x" --frobnicate
expect 1 "unknown preset" --out "$tmp/x" --preset nope
expect 1 "missing --out" --preset tiny
expect 1 "bad --shard-size" --out "$tmp/x" --shard-size 12Q
expect 1 "malformed --set" --out "$tmp/x" --set n_group
expect 2 "n_group not dividing the experts" --out "$tmp/x" --config "$tmp/small.json" --set n_group=3 --no-tokenizer
expect 2 "unknown model_type" --out "$tmp/x" --config "$tmp/small.json" --set model_type=llama --no-tokenizer
expect 2 "negative size" --out "$tmp/x" --config "$tmp/small.json" --set hidden_size=-4 --no-tokenizer
# values the loader refuses are refused before anything is written
for kv in rope_theta=-1 scoring_func=relu rope_scaling.factor=abc norm_topk_prob=7 routed_scaling_factor=0; do
    expect 2 "--set $kv" --out "$tmp/x-$kv" --config "$tmp/small.json" --set "$kv" --no-tokenizer
    [ ! -e "$tmp/x-$kv/config.json" ] && ok "--set $kv: nothing written" || fail "--set $kv wrote a checkpoint"
done
echo '[1, 2]' >"$tmp/notobj.json"
expect 2 "--config not an object" --out "$tmp/x" --config "$tmp/notobj.json"
expect 3 "missing --config file" --out "$tmp/x" --config "$tmp/nonexistent.json"
[ ! -e "$tmp/x" ] || fail "a failed run created its output directory"
mkdir "$tmp/user" && echo precious >"$tmp/user/notes.txt"
expect 1 "non-empty directory without config.json" --out "$tmp/user" --config "$tmp/small.json" --no-tokenizer
[ "$(ls "$tmp/user")" = notes.txt ] || fail "files were written into a foreign directory"

if [ $fails -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "all dsinfer-mkmodel tests passed"
exit 0
