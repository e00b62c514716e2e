/* dsinfer-mkmodel — writes a seeded random DeepSeek V3 / V3.2 checkpoint in
 * the official Hugging Face layout (config.json, model.safetensors.index.json,
 * model-0000K-of-0000M.safetensors with FP8 e4m3 block-scaled weights).
 *
 * Every tensor is generated from its own random stream, seeded by --seed and
 * the tensor's name, so the bytes of a tensor do not depend on sharding, on
 * --mtp or on the other tensors, and the same seed gives byte-identical
 * files.  Tensors are streamed to disk in 1 MiB chunks: memory stays small
 * whatever the model size. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <jansson.h>
#include "common.h"
#include "config.h"
#include "dtype.h"
#include "st_writer.h"

#ifndef DS_DATADIR
#define DS_DATADIR "/usr/local/share/dsinfer"
#endif
#ifndef DS_SRCDIR
#define DS_SRCDIR "."
#endif

const char *tool_name = "dsinfer-mkmodel";

#define V32_VOCAB 129280
#define DEFAULT_SHARD_SIZE (4ull << 30)
#define CHUNK (1u << 20)

/* ---- presets ---------------------------------------------------------- */

/* All official config.json keys, with the "tiny" values. */
static const char PRESET_TINY[] =
    "{"
    "\"architectures\":[\"DeepseekV32ForCausalLM\"],"
    "\"model_type\":\"deepseek_v32\","
    "\"attention_bias\":false,"
    "\"attention_dropout\":0.0,"
    "\"bos_token_id\":0,"
    "\"eos_token_id\":1,"
    "\"ep_size\":1,"
    "\"first_k_dense_replace\":1,"
    "\"hidden_act\":\"silu\","
    "\"hidden_size\":256,"
    "\"index_head_dim\":128,"
    "\"index_n_heads\":4,"
    "\"index_topk\":64,"
    "\"initializer_range\":0.02,"
    "\"intermediate_size\":512,"
    "\"kv_lora_rank\":256,"
    "\"max_position_embeddings\":8192,"
    "\"moe_intermediate_size\":128,"
    "\"moe_layer_freq\":1,"
    "\"n_group\":4,"
    "\"n_routed_experts\":16,"
    "\"n_shared_experts\":1,"
    "\"norm_topk_prob\":true,"
    "\"num_attention_heads\":4,"
    "\"num_experts_per_tok\":4,"
    "\"num_hidden_layers\":4,"
    "\"num_key_value_heads\":4,"
    "\"num_nextn_predict_layers\":0,"
    "\"q_lora_rank\":256,"
    "\"qk_nope_head_dim\":64,"
    "\"qk_rope_head_dim\":64,"
    "\"rms_norm_eps\":1e-06,"
    "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40.0,\"mscale\":1.0,"
    "\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},"
    "\"rope_theta\":10000.0,"
    "\"routed_scaling_factor\":2.5,"
    "\"scoring_func\":\"sigmoid\","
    "\"tie_word_embeddings\":false,"
    "\"topk_group\":2,"
    "\"topk_method\":\"noaux_tc\","
    "\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.44.2\","
    "\"use_cache\":true,"
    "\"v_head_dim\":64,"
    "\"vocab_size\":129280"
    "}";

/* The benchmark shape of shared/peer/make_mid_gguf.py (MID_CONFIG), ~1.7 B params. */
static const char PRESET_MID[] =
    "{"
    "\"hidden_size\":2048,\"num_hidden_layers\":8,\"first_k_dense_replace\":1,"
    "\"num_attention_heads\":16,\"num_key_value_heads\":16,\"q_lora_rank\":768,"
    "\"kv_lora_rank\":512,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":128,"
    "\"n_routed_experts\":64,\"num_experts_per_tok\":8,\"n_shared_experts\":1,\"n_group\":8,"
    "\"topk_group\":4,\"moe_intermediate_size\":512,\"intermediate_size\":5632,"
    "\"index_n_heads\":16,\"index_head_dim\":128,\"index_topk\":2048,\"vocab_size\":32000,"
    "\"max_position_embeddings\":163840"
    "}";

/* Real DeepSeek-V3.2 layer shapes, 2 layers (one dense, one MoE). */
static const char PRESET_SLICE[] =
    "{"
    "\"hidden_size\":7168,\"num_hidden_layers\":2,\"first_k_dense_replace\":1,"
    "\"num_attention_heads\":128,\"num_key_value_heads\":128,\"q_lora_rank\":1536,"
    "\"kv_lora_rank\":512,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":128,"
    "\"n_routed_experts\":256,\"num_experts_per_tok\":8,\"n_shared_experts\":1,\"n_group\":8,"
    "\"topk_group\":4,\"moe_intermediate_size\":2048,\"intermediate_size\":18432,"
    "\"index_n_heads\":64,\"index_head_dim\":128,\"index_topk\":2048,\"vocab_size\":129280,"
    "\"max_position_embeddings\":163840"
    "}";

/* ---- small helpers ---------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: dsinfer-mkmodel --out DIR [OPTION]...\n"
        "Write a seeded random DeepSeek V3/V3.2 checkpoint (FP8 e4m3, 128x128 block scales)\n"
        "in the official Hugging Face layout into DIR.\n"
        "\n"
        "  -o, --out DIR          output directory (created if missing; a non-empty directory\n"
        "                         without config.json is never written into)\n"
        "  -p, --preset NAME      tiny (default; V3.2 structure, full 129280 vocabulary, hidden 256,\n"
        "                         4 layers), mid (~1.7 B params benchmark shape, vocabulary 32000)\n"
        "                         or slice (real V3.2 layer shapes, 2 layers, ~15 GiB)\n"
        "  -c, --config FILE      JSON object of config.json keys overriding the preset\n"
        "  -s, --set KEY=VALUE    override one key (VALUE parsed as JSON, else taken as a string;\n"
        "                         KEY.SUB sets a key of a nested object, e.g. rope_scaling.factor=4);\n"
        "                         may be repeated\n"
        "      --seed N           random seed (default 1); same seed, same bytes\n"
        "      --mtp              add one multi-token-prediction layer (num_nextn_predict_layers=1)\n"
        "      --shard-size BYTES maximum data bytes per shard (suffixes K, M, G, T = KiB..TiB;\n"
        "                         default 4G); a larger tensor gets a shard of its own\n"
        "      --scale-fmt FMT    ue8m0 or none: write quantization_config.scale_fmt \"ue8m0\"\n"
        "                         (default: as in --config, else none)\n"
        "      --tokenizer FILE   copy FILE to DIR/tokenizer.json (and a tokenizer_config.json\n"
        "                         beside it, if any)\n"
        "      --no-tokenizer     write no tokenizer files\n"
        "  -q, --quiet            print nothing but errors\n"
        "  -v, --verbose          also each shard written, with its tensors and bytes\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Without --tokenizer, the V3.2 tokenizer (tokenizer-v32.json from $DSINFER_DATADIR,\n"
        DS_DATADIR " or the source tree's data/) is copied when vocab_size is 129280.\n"
        "Exit status: 0 ok, 1 usage error, 2 invalid configuration, 3 I/O error, 4 out of memory.\n");
}

static void die_oom(void) { tool_die(EXIT_RUNTIME, "out of memory"); }

static char *xstrdup(const char *s)
{
    char *r = strdup(s);
    if (!r)
        die_oom();
    return r;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        die_oom();
    memcpy(p, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void human(double v, const char *unit, int base1024, char *buf, size_t len)
{
    static const char *pre[] = {"", "K", "M", "G", "T", "P"};
    double div = base1024 ? 1024.0 : 1000.0;
    int i = 0;
    while (v >= div && i < 5) {
        v /= div;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%.0f %s", v, unit);
    else
        snprintf(buf, len, "%.2f %s%s%s", v, pre[i], base1024 ? "i" : "", unit);
}

static uint64_t parse_size(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-')
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a positive byte count)", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a positive byte count)", opt, s);
    int sh = 0;
    switch (*end) {
    case 'k': case 'K': sh = 10; end++; break;
    case 'm': case 'M': sh = 20; end++; break;
    case 'g': case 'G': sh = 30; end++; break;
    case 't': case 'T': sh = 40; end++; break;
    default: break;
    }
    if (sh && (!strcmp(end, "iB") || !strcmp(end, "B")))
        end += strlen(end);
    else if (!sh && !strcmp(end, "B"))
        end++;
    if (*end || v == 0 || (sh && v > (UINT64_MAX >> sh)))
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a positive byte count such as "
                 "1000000, 64K, 512M or 4G)", opt, s);
    return (uint64_t)v << sh;
}

/* ---- random numbers ----------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* splitmix64 */
typedef struct { uint64_t s; } rng_t;

static inline uint64_t rng_next(rng_t *r)
{
    r->s += 0x9E3779B97F4A7C15ull;
    return mix64(r->s);
}

static rng_t rng_for(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    rng_t r = {mix64(seed + 0x9E3779B97F4A7C15ull) ^ mix64(h)};
    return r;
}

/* Approximately standard normal: Irwin-Hall sum of four 16-bit uniforms
 * (integer arithmetic, so identical on every platform), bounded by +-3.46. */
#define IH_MEAN 131070
#define IH_RANGE (2 * IH_MEAN + 1)
static double ih_inv_std(void) { return 1.0 / sqrt((65536.0 * 65536.0 - 1.0) / 3.0); }

static inline int32_t ih_sum(rng_t *r)
{
    uint64_t u = rng_next(r);
    return (int32_t)((u & 0xffff) + ((u >> 16) & 0xffff) + ((u >> 32) & 0xffff) + (u >> 48)) - IH_MEAN;
}

/* ---- configuration ------------------------------------------------------ */

typedef struct mk_config {
    int v32;
    int64_t vocab, hidden, inter, moe_inter, layers, first_dense, moe_freq, heads;
    int64_t experts, shared, per_tok, n_group, topk_group;
    int64_t q_lora, kv_lora, nope, rope, vdim;
    int64_t idx_heads, idx_dim, idx_topk;
    int64_t mtp;
    int tie;
} mk_config;

static json_t *load_json_object_text(const char *text)
{
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o)
        tool_die(EXIT_RUNTIME, "internal error: bad preset JSON: %s", je.text);
    return o;
}

static json_t *make_preset(const char *name)
{
    const char *over = NULL;
    if (!strcmp(name, "tiny"))
        over = NULL;
    else if (!strcmp(name, "mid"))
        over = PRESET_MID;
    else if (!strcmp(name, "slice"))
        over = PRESET_SLICE;
    else
        tool_die(EXIT_USAGE, "unknown preset '%s' (expected tiny, mid or slice)", name);
    json_t *cfg = load_json_object_text(PRESET_TINY);
    if (over) {
        json_t *o = load_json_object_text(over);
        json_object_update(cfg, o);
        json_decref(o);
    }
    return cfg;
}

/* --set KEY=VALUE, KEY may be "outer.inner" for a nested object. */
static void apply_set(json_t *cfg, json_t *user_keys, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        tool_die(EXIT_USAGE, "--set expects KEY=VALUE, got '%s'", arg);
    char *key = xstrdup(arg);
    key[eq - arg] = 0;
    const char *text = eq + 1;
    json_error_t je;
    json_t *val = json_loads(text, JSON_DECODE_ANY, &je);
    if (!val)
        val = json_string(text);
    if (!val)
        tool_die(EXIT_USAGE, "--set %s: value is not valid UTF-8", key);
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = 0;
        const char *sub = dot + 1;
        if (!*key || !*sub || strchr(sub, '.'))
            tool_die(EXIT_USAGE, "--set: bad key '%s' (use KEY or KEY.SUBKEY)", arg);
        json_t *outer = json_object_get(cfg, key);
        json_t *copy = json_is_object(outer) ? json_deep_copy(outer) : outer ? NULL : json_object();
        if (!copy)
            tool_die(EXIT_USAGE, "--set %s.%s: '%s' is not a JSON object", key, sub, key);
        json_object_set_new(copy, sub, val);
        json_object_set_new(cfg, key, copy);
    } else {
        json_object_set_new(cfg, key, val);
    }
    json_object_set_new(user_keys, key, json_true());
    free(key);
}

static int64_t cfg_int(json_t *cfg, const char *key, int64_t lo, int64_t hi)
{
    json_t *v = json_object_get(cfg, key);
    int64_t x;
    if (!v)
        tool_die(EXIT_INPUT, "config: missing key '%s'", key);
    if (json_is_integer(v))
        x = json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
             fabs(json_real_value(v)) < 9e15) {
        x = (int64_t)json_real_value(v);
        json_object_set_new(cfg, key, json_integer(x)); /* write 1000, not 1000.0 */
    } else
        tool_die(EXIT_INPUT, "config: '%s' must be an integer", key);
    if (x < lo || x > hi)
        tool_die(EXIT_INPUT, "config: '%s' is %lld, expected a value in [%lld, %lld]", key,
                 (long long)x, (long long)lo, (long long)hi);
    return x;
}

/* Copy of v with every object's keys sorted (json_dumps keeps insertion order). */
static json_t *sorted_copy(json_t *v)
{
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
            json_array_append_new(a, sorted_copy(e));
        return a;
    }
    if (!json_is_object(v))
        return json_incref(v);
    size_t n = json_object_size(v), i = 0;
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    if (!keys)
        die_oom();
    const char *k;
    json_t *e;
    json_object_foreach(v, k, e)
        keys[i++] = k;
    for (size_t a = 1; a < n; a++) { /* insertion sort: configs are small */
        const char *t = keys[a];
        size_t b = a;
        while (b > 0 && strcmp(keys[b - 1], t) > 0) {
            keys[b] = keys[b - 1];
            b--;
        }
        keys[b] = t;
    }
    json_t *o = json_object();
    for (i = 0; i < n; i++)
        json_object_set_new(o, keys[i], sorted_copy(json_object_get(v, keys[i])));
    free(keys);
    return o;
}

/* Final config.json object: architectures, model_type, then the rest sorted. */
static json_t *finalize_config(json_t *cfg, json_t *user_keys, const char *scale_fmt_opt, int mtp_flag,
                               mk_config *mc)
{
    if (mtp_flag)
        json_object_set_new(cfg, "num_nextn_predict_layers", json_integer(1));

    json_t *mt = json_object_get(cfg, "model_type");
    if (!json_is_string(mt))
        tool_die(EXIT_INPUT, "config: 'model_type' must be a string");
    const char *model_type = json_string_value(mt);
    if (!strcmp(model_type, "deepseek_v32"))
        mc->v32 = 1;
    else if (!strcmp(model_type, "deepseek_v3"))
        mc->v32 = 0;
    else
        tool_die(EXIT_INPUT, "config: model_type '%s' is not supported (expected deepseek_v3 or "
                 "deepseek_v32)", model_type);
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(mc->v32 ? "DeepseekV32ForCausalLM" : "DeepseekV3ForCausalLM"));
    json_object_set_new(cfg, "architectures", arch);
    if (!mc->v32) {
        json_object_del(cfg, "index_n_heads");
        json_object_del(cfg, "index_head_dim");
        json_object_del(cfg, "index_topk");
    }

    /* quantization_config: always FP8 e4m3 with 128x128 blocks. */
    int ue8m0 = 0;
    json_t *q = json_object_get(cfg, "quantization_config");
    if (q && !json_is_null(q)) {
        if (!json_is_object(q))
            tool_die(EXIT_INPUT, "config: 'quantization_config' must be an object");
        json_t *v;
        if ((v = json_object_get(q, "quant_method")) && !(json_is_string(v) && !strcmp(json_string_value(v), "fp8")))
            tool_die(EXIT_INPUT, "config: quantization_config.quant_method must be \"fp8\"");
        if ((v = json_object_get(q, "fmt")) && !(json_is_string(v) && !strcmp(json_string_value(v), "e4m3")))
            tool_die(EXIT_INPUT, "config: quantization_config.fmt must be \"e4m3\"");
        if ((v = json_object_get(q, "weight_block_size"))) {
            if (!json_is_array(v) || json_array_size(v) != 2 ||
                !json_is_integer(json_array_get(v, 0)) || !json_is_integer(json_array_get(v, 1)) ||
                json_integer_value(json_array_get(v, 0)) != 128 || json_integer_value(json_array_get(v, 1)) != 128)
                tool_die(EXIT_INPUT, "config: quantization_config.weight_block_size must be [128, 128]");
        }
        if ((v = json_object_get(q, "scale_fmt")) && !json_is_null(v)) {
            if (json_is_string(v) && !strcmp(json_string_value(v), "ue8m0"))
                ue8m0 = 1;
            else
                tool_die(EXIT_INPUT, "config: quantization_config.scale_fmt must be \"ue8m0\" or absent");
        }
    }
    if (scale_fmt_opt)
        ue8m0 = !strcmp(scale_fmt_opt, "ue8m0");
    json_t *qc = json_object();
    json_object_set_new(qc, "activation_scheme", json_string("dynamic"));
    json_object_set_new(qc, "fmt", json_string("e4m3"));
    json_object_set_new(qc, "quant_method", json_string("fp8"));
    if (ue8m0)
        json_object_set_new(qc, "scale_fmt", json_string("ue8m0"));
    json_t *bs = json_array();
    json_array_append_new(bs, json_integer(128));
    json_array_append_new(bs, json_integer(128));
    json_object_set_new(qc, "weight_block_size", bs);
    json_object_set_new(cfg, "quantization_config", qc);

    /* Sizes and their relations. */
    const int64_t BIG = 1 << 24, HUGE_DIM = (int64_t)1 << 31;
    mc->vocab = cfg_int(cfg, "vocab_size", 1, HUGE_DIM - 1);
    mc->hidden = cfg_int(cfg, "hidden_size", 1, HUGE_DIM - 1);
    mc->layers = cfg_int(cfg, "num_hidden_layers", 1, 100000);
    mc->first_dense = cfg_int(cfg, "first_k_dense_replace", 0, mc->layers);
    mc->moe_freq = cfg_int(cfg, "moe_layer_freq", 1, 100000);
    mc->heads = cfg_int(cfg, "num_attention_heads", 1, BIG);
    if (!json_object_get(user_keys, "num_key_value_heads"))
        json_object_set_new(cfg, "num_key_value_heads", json_integer(mc->heads));
    json_t *ql = json_object_get(cfg, "q_lora_rank");
    if (!ql || json_is_null(ql))
        tool_die(EXIT_INPUT, "config: q_lora_rank is null or missing (uncompressed queries, as in "
                 "DeepSeek-V2-Lite, are not supported)");
    mc->q_lora = cfg_int(cfg, "q_lora_rank", 1, BIG);
    mc->kv_lora = cfg_int(cfg, "kv_lora_rank", 1, BIG);
    mc->nope = cfg_int(cfg, "qk_nope_head_dim", 1, BIG);
    mc->rope = cfg_int(cfg, "qk_rope_head_dim", 2, BIG);
    if (mc->rope % 2)
        tool_die(EXIT_INPUT, "config: qk_rope_head_dim (%lld) must be even", (long long)mc->rope);
    mc->vdim = cfg_int(cfg, "v_head_dim", 1, BIG);
    mc->mtp = cfg_int(cfg, "num_nextn_predict_layers", 0, 16);
    json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        tool_die(EXIT_INPUT, "config: 'tie_word_embeddings' must be true or false");
    mc->tie = tie && json_is_true(tie);

    int have_dense = mc->first_dense > 0, have_moe = 0;
    for (int64_t l = 0; l < mc->layers + mc->mtp; l++) {
        if (l >= mc->first_dense && l % mc->moe_freq == 0)
            have_moe = 1;
        else
            have_dense = 1;
    }
    if (have_dense)
        mc->inter = cfg_int(cfg, "intermediate_size", 1, HUGE_DIM - 1);
    if (have_moe) {
        mc->experts = cfg_int(cfg, "n_routed_experts", 1, BIG);
        mc->moe_inter = cfg_int(cfg, "moe_intermediate_size", 1, HUGE_DIM - 1);
        mc->shared = cfg_int(cfg, "n_shared_experts", 0, BIG);
        mc->n_group = cfg_int(cfg, "n_group", 1, mc->experts);
        if (mc->experts % mc->n_group)
            tool_die(EXIT_INPUT, "config: n_routed_experts (%lld) is not divisible by n_group (%lld)",
                     (long long)mc->experts, (long long)mc->n_group);
        mc->topk_group = cfg_int(cfg, "topk_group", 1, mc->n_group);
        int64_t avail = mc->topk_group * (mc->experts / mc->n_group);
        mc->per_tok = cfg_int(cfg, "num_experts_per_tok", 1, mc->experts);
        if (mc->per_tok > avail)
            tool_die(EXIT_INPUT, "config: num_experts_per_tok (%lld) exceeds the %lld experts of the "
                     "topk_group (%lld) selected groups", (long long)mc->per_tok, (long long)avail,
                     (long long)mc->topk_group);
        if (mc->shared && mc->shared * mc->moe_inter >= HUGE_DIM)
            tool_die(EXIT_INPUT, "config: n_shared_experts * moe_intermediate_size is too large");
    }
    if (mc->v32) {
        mc->idx_heads = cfg_int(cfg, "index_n_heads", 1, BIG);
        mc->idx_dim = cfg_int(cfg, "index_head_dim", 1, BIG);
        mc->idx_topk = cfg_int(cfg, "index_topk", 1, HUGE_DIM - 1);
        if (mc->idx_dim < mc->rope)
            tool_die(EXIT_INPUT, "config: index_head_dim (%lld) is smaller than qk_rope_head_dim (%lld)",
                     (long long)mc->idx_dim, (long long)mc->rope);
    }
    if (mc->heads * (mc->nope + mc->rope) >= HUGE_DIM || mc->heads * (mc->nope + mc->vdim) >= HUGE_DIM ||
        (mc->v32 && mc->idx_heads * mc->idx_dim >= HUGE_DIM))
        tool_die(EXIT_INPUT, "config: attention projections are too large");

    json_t *out = json_object();
    json_object_set(out, "architectures", json_object_get(cfg, "architectures"));
    json_object_set(out, "model_type", json_object_get(cfg, "model_type"));
    json_object_del(cfg, "architectures");
    json_object_del(cfg, "model_type");
    json_t *rest = sorted_copy(cfg);
    json_object_update(out, rest);
    json_decref(rest);
    return out;
}

/* ---- tensor plan ---------------------------------------------------------- */

enum init_kind { INIT_NORM, INIT_SMALL, INIT_NORMAL, INIT_F8, INIT_F8_SCALE };

typedef struct tensor {
    char *name;
    ds_dtype dt;
    int ndim;
    int64_t shape[2];
    enum init_kind kind;
    double std;        /* NORMAL / F8 / F8_SCALE: target std of the real values */
    int unit;          /* tensors of one unit (weight + scale) share a shard */
    int shard;
    uint64_t bytes;
} tensor;

typedef struct plan {
    tensor *t;
    size_t n, cap;
    int units;
} plan;

static tensor *plan_push(plan *p, const char *name, ds_dtype dt, int ndim, int64_t d0, int64_t d1,
                         enum init_kind kind, double std)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 256;
        p->t = realloc(p->t, p->cap * sizeof *p->t);
        if (!p->t)
            die_oom();
    }
    tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->dt = dt;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->kind = kind;
    t->std = std;
    t->unit = p->units;
    t->bytes = st_tensor_bytes(dt, ndim, t->shape);
    return t;
}

static void add_plain(plan *p, const char *name, ds_dtype dt, int ndim, int64_t d0, int64_t d1,
                      enum init_kind kind, double std)
{
    plan_push(p, name, dt, ndim, d0, d1, kind, std);
    p->units++;
}

/* FP8 weight [out, in] with std 1/sqrt(in * extra) and its scale companion. */
static void add_f8(plan *p, const char *prefix, int64_t out, int64_t in, double extra)
{
    char name[512];
    double std = 1.0 / sqrt((double)in * extra);
    snprintf(name, sizeof name, "%s.weight", prefix);
    plan_push(p, name, DS_DT_F8_E4M3, 2, out, in, INIT_F8, std);
    snprintf(name, sizeof name, "%s.weight_scale_inv", prefix);
    plan_push(p, name, DS_DT_F32, 2, (out + 127) / 128, (in + 127) / 128, INIT_F8_SCALE, std);
    p->units++;
}

static void add_layer(plan *p, const mk_config *c, int64_t l)
{
    char pre[256], name[512];
    const double res = 2.0 * (double)c->layers; /* residual-branch outputs are scaled down */
    const int64_t H = c->hidden;
    int is_mtp = l >= c->layers;
    snprintf(pre, sizeof pre, "model.layers.%lld.", (long long)l);
#define NM(s) (snprintf(name, sizeof name, "%s%s", pre, s), name)
    if (is_mtp) {
        add_plain(p, NM("embed_tokens.weight"), DS_DT_BF16, 2, c->vocab, H, INIT_NORMAL, 1.0);
        add_plain(p, NM("enorm.weight"), DS_DT_BF16, 1, H, 0, INIT_NORM, 0);
        add_plain(p, NM("hnorm.weight"), DS_DT_BF16, 1, H, 0, INIT_NORM, 0);
        add_plain(p, NM("eh_proj.weight"), DS_DT_BF16, 2, H, 2 * H, INIT_NORMAL, 1.0 / sqrt(2.0 * (double)H));
    }
    add_plain(p, NM("input_layernorm.weight"), DS_DT_BF16, 1, H, 0, INIT_NORM, 0);
    add_f8(p, NM("self_attn.q_a_proj"), c->q_lora, H, 1);
    add_plain(p, NM("self_attn.q_a_layernorm.weight"), DS_DT_BF16, 1, c->q_lora, 0, INIT_NORM, 0);
    add_f8(p, NM("self_attn.q_b_proj"), c->heads * (c->nope + c->rope), c->q_lora, 1);
    add_f8(p, NM("self_attn.kv_a_proj_with_mqa"), c->kv_lora + c->rope, H, 1);
    add_plain(p, NM("self_attn.kv_a_layernorm.weight"), DS_DT_BF16, 1, c->kv_lora, 0, INIT_NORM, 0);
    add_f8(p, NM("self_attn.kv_b_proj"), c->heads * (c->nope + c->vdim), c->kv_lora, 1);
    add_f8(p, NM("self_attn.o_proj"), H, c->heads * c->vdim, res);
    if (c->v32) {
        add_f8(p, NM("self_attn.indexer.wq_b"), c->idx_heads * c->idx_dim, c->q_lora, 1);
        add_f8(p, NM("self_attn.indexer.wk"), c->idx_dim, H, 1);
        add_plain(p, NM("self_attn.indexer.k_norm.weight"), DS_DT_BF16, 1, c->idx_dim, 0, INIT_NORM, 0);
        add_plain(p, NM("self_attn.indexer.k_norm.bias"), DS_DT_BF16, 1, c->idx_dim, 0, INIT_SMALL, 0);
        add_plain(p, NM("self_attn.indexer.weights_proj.weight"), DS_DT_BF16, 2, c->idx_heads, H,
                  INIT_NORMAL, 1.0 / sqrt((double)H));
    }
    add_plain(p, NM("post_attention_layernorm.weight"), DS_DT_BF16, 1, H, 0, INIT_NORM, 0);
    if (l >= c->first_dense && l % c->moe_freq == 0) {
        add_plain(p, NM("mlp.gate.weight"), DS_DT_BF16, 2, c->experts, H, INIT_NORMAL, 1.0 / sqrt((double)H));
        add_plain(p, NM("mlp.gate.e_score_correction_bias"), DS_DT_F32, 1, c->experts, 0, INIT_SMALL, 0);
        for (int64_t e = 0; e < c->experts; e++) {
            char ep[320];
            snprintf(ep, sizeof ep, "%smlp.experts.%lld.gate_proj", pre, (long long)e);
            add_f8(p, ep, c->moe_inter, H, 1);
            snprintf(ep, sizeof ep, "%smlp.experts.%lld.up_proj", pre, (long long)e);
            add_f8(p, ep, c->moe_inter, H, 1);
            snprintf(ep, sizeof ep, "%smlp.experts.%lld.down_proj", pre, (long long)e);
            add_f8(p, ep, H, c->moe_inter, res);
        }
        if (c->shared > 0) {
            int64_t si = c->shared * c->moe_inter;
            add_f8(p, NM("mlp.shared_experts.gate_proj"), si, H, 1);
            add_f8(p, NM("mlp.shared_experts.up_proj"), si, H, 1);
            add_f8(p, NM("mlp.shared_experts.down_proj"), H, si, res);
        }
    } else {
        add_f8(p, NM("mlp.gate_proj"), c->inter, H, 1);
        add_f8(p, NM("mlp.up_proj"), c->inter, H, 1);
        add_f8(p, NM("mlp.down_proj"), H, c->inter, res);
    }
    if (is_mtp) {
        add_plain(p, NM("shared_head.norm.weight"), DS_DT_BF16, 1, H, 0, INIT_NORM, 0);
        add_plain(p, NM("shared_head.head.weight"), DS_DT_BF16, 2, c->vocab, H, INIT_NORMAL,
                  1.0 / sqrt((double)H));
    }
#undef NM
}

static void build_plan(plan *p, const mk_config *c)
{
    add_plain(p, "model.embed_tokens.weight", DS_DT_BF16, 2, c->vocab, c->hidden, INIT_NORMAL, 1.0);
    for (int64_t l = 0; l < c->layers; l++)
        add_layer(p, c, l);
    add_plain(p, "model.norm.weight", DS_DT_BF16, 1, c->hidden, 0, INIT_NORM, 0);
    if (!c->tie)
        add_plain(p, "lm_head.weight", DS_DT_BF16, 2, c->vocab, c->hidden, INIT_NORMAL,
                  1.0 / sqrt((double)c->hidden));
    /* MTP layers last, so that the main model's shards do not depend on --mtp. */
    for (int64_t l = c->layers; l < c->layers + c->mtp; l++)
        add_layer(p, c, l);
}

/* Greedy sharding by units (a weight stays with its scale). Returns the shard count. */
static int assign_shards(plan *p, uint64_t shard_size)
{
    int shard = 0;
    uint64_t cur = 0;
    for (size_t i = 0; i < p->n;) {
        size_t j = i;
        uint64_t ub = 0;
        while (j < p->n && p->t[j].unit == p->t[i].unit)
            ub += p->t[j++].bytes;
        if (cur > 0 && cur + ub > shard_size) {
            shard++;
            cur = 0;
        }
        for (size_t k = i; k < j; k++)
            p->t[k].shard = shard;
        cur += ub;
        i = j;
    }
    return p->n ? shard + 1 : 0;
}

/* ---- value generation ------------------------------------------------------- */

/* Per-tensor FP8 parameters: e4m3 code = z * code_mul (z ~ N(0,1) bounded by
 * 3.46), block scale = 2^(exp2 + k) with k in {-1, 0, 1} drawn per block.
 * Codes reach |z|*code_mul <= 3.46 * 129 = 446 (< 448, no clamping) and at
 * least 3.46 * 64.5 = 223; the real weights' overall RMS is std. */
static void f8_params(double std, int *exp2, double *code_mul)
{
    double sig = std / sqrt(1.75); /* mean of 4^k over k in {-1,0,1} is 1.75 */
    double x = sig / 129.0;
    int e;
    double m = frexp(x, &e); /* x = m * 2^e, m in [0.5, 1) */
    int c = (m == 0.5) ? e - 1 : e; /* ceil(log2 x) */
    *exp2 = c;
    *code_mul = sig / ldexp(1.0, c);
}

typedef struct gen_ctx {
    uint64_t seed;
    unsigned char *buf;
    st_writer *w;
    const char *shard_path;
    /* progress */
    int progress;
    uint64_t done, total, next_report;
    int shard, shards;
    /* e4m3 code of each Irwin-Hall sum for one multiplier */
    uint8_t *lut;
    float lut_mul;
    int lut_valid;
} gen_ctx;

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    p[0] = (unsigned char)u;
    p[1] = (unsigned char)(u >> 8);
    p[2] = (unsigned char)(u >> 16);
    p[3] = (unsigned char)(u >> 24);
}

static void emit(gen_ctx *g, size_t n)
{
    if (st_writer_write(g->w, g->buf, n)) {
        const char *msg = st_writer_error(g->w);
        char copy[800];
        snprintf(copy, sizeof copy, "%s", msg);
        st_writer_abort(g->w);
        tool_die(EXIT_IO, "%s", copy);
    }
    g->done += n;
    if (g->progress && g->done >= g->next_report) {
        fprintf(stderr, "\r%s: shard %d/%d, %5.1f%%", tool_name, g->shard + 1, g->shards,
                100.0 * (double)g->done / (double)(g->total ? g->total : 1));
        g->next_report = g->done + (64u << 20);
    }
}

static void gen_tensor(gen_ctx *g, const tensor *t)
{
    rng_t r = rng_for(g->seed, t->name);
    const double inv = ih_inv_std();
    uint64_t n = (uint64_t)t->shape[0] * (uint64_t)(t->ndim == 2 ? t->shape[1] : 1);
    size_t esz = ds_dtype_size(t->dt);
    size_t per = CHUNK / esz;
    switch (t->kind) {
    case INIT_F8: {
        int e2;
        double cm;
        f8_params(t->std, &e2, &cm);
        const float mul = (float)(cm * inv);
        /* Large tensors: tabulate code(sum) once (same function, same bytes). */
        if (n >= 2 * (uint64_t)IH_RANGE && (!g->lut_valid || g->lut_mul != mul)) {
            for (int32_t v = 0; v < IH_RANGE; v++)
                g->lut[v] = ds_f32_to_e4m3((float)(v - IH_MEAN) * mul);
            g->lut_valid = 1;
            g->lut_mul = mul;
        }
        int use_lut = g->lut_valid && g->lut_mul == mul;
        for (uint64_t i = 0; i < n;) {
            size_t m = (n - i < per) ? (size_t)(n - i) : per;
            if (use_lut) {
                for (size_t k = 0; k < m; k++)
                    g->buf[k] = g->lut[ih_sum(&r) + IH_MEAN];
            } else {
                for (size_t k = 0; k < m; k++)
                    g->buf[k] = ds_f32_to_e4m3((float)ih_sum(&r) * mul);
            }
            emit(g, m);
            i += m;
        }
        break;
    }
    case INIT_F8_SCALE: {
        int e2;
        double cm;
        f8_params(t->std, &e2, &cm);
        for (uint64_t i = 0; i < n;) {
            size_t m = (n - i < per) ? (size_t)(n - i) : per;
            for (size_t k = 0; k < m; k++) {
                int kk = (int)((rng_next(&r) >> 32) % 3) - 1;
                put_f32(g->buf + 4 * k, ldexpf(1.0f, e2 + kk));
            }
            emit(g, m * 4);
            i += m;
        }
        break;
    }
    default: {
        double mean = t->kind == INIT_NORM ? 1.0 : 0.0;
        double sd = t->kind == INIT_NORM ? 0.1 : t->kind == INIT_SMALL ? 0.01 : t->std;
        const float fm = (float)mean, fs = (float)(sd * inv);
        for (uint64_t i = 0; i < n;) {
            size_t m = (n - i < per) ? (size_t)(n - i) : per;
            for (size_t k = 0; k < m; k++) {
                float v = fm + (float)ih_sum(&r) * fs;
                if (t->dt == DS_DT_BF16)
                    put_u16(g->buf + 2 * k, ds_f32_to_bf16(v));
                else
                    put_f32(g->buf + 4 * k, v);
            }
            emit(g, m * esz);
            i += m;
        }
        break;
    }
    }
}

/* ---- output directory ------------------------------------------------------- */

/* model-DDDDD-of-DDDDD.safetensors */
static int is_shard_name(const char *s)
{
    static const char pat[] = "model-#####-of-#####.safetensors";
    if (strlen(s) != sizeof pat - 1)
        return 0;
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == '#' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != pat[i])
            return 0;
    }
    return 1;
}

/* Names this tool writes (with or without ".tmp"). */
static int is_our_name(const char *s)
{
    char buf[256];
    size_t l = strlen(s);
    if (l >= sizeof buf)
        return 0;
    memcpy(buf, s, l + 1);
    if (l > 4 && !strcmp(buf + l - 4, ".tmp"))
        buf[l - 4] = 0;
    return !strcmp(buf, "config.json") || !strcmp(buf, "model.safetensors.index.json") ||
           !strcmp(buf, "tokenizer.json") || !strcmp(buf, "tokenizer_config.json") || is_shard_name(buf);
}

static void mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST)
            tool_die(EXIT_IO, "cannot create directory %s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0777) && errno != EEXIST)
        tool_die(EXIT_IO, "cannot create directory %s: %s", p, strerror(errno));
    free(p);
}

/* Creates DIR or checks that writing into it destroys nothing foreign.
 * Returns the bytes of our files already there (they will be replaced). */
static uint64_t prepare_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st)) {
        if (errno != ENOENT)
            tool_die(EXIT_IO, "%s: %s", dir, strerror(errno));
        mkdir_p(dir);
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        tool_die(EXIT_USAGE, "--out %s: not a directory", dir);
    DIR *d = opendir(dir);
    if (!d)
        tool_die(EXIT_IO, "cannot read directory %s: %s", dir, strerror(errno));
    char *cfgp = path_join(dir, "config.json");
    int has_config = file_exists(cfgp);
    free(cfgp);
    uint64_t ours = 0;
    const char *foreign = NULL;
    char foreign_buf[256];
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (is_our_name(de->d_name)) {
            char *fp = path_join(dir, de->d_name);
            if (stat(fp, &st) == 0 && S_ISREG(st.st_mode))
                ours += (uint64_t)st.st_size;
            free(fp);
        } else if (!foreign) {
            snprintf(foreign_buf, sizeof foreign_buf, "%s", de->d_name);
            foreign = foreign_buf;
        }
    }
    closedir(d);
    if (foreign && !has_config)
        tool_die(EXIT_USAGE, "--out %s: directory is not empty (it holds '%s') and has no config.json; "
                 "refusing to write into it", dir, foreign);
    return ours;
}

/* Removes shards of an earlier run that the new output does not have, and
 * leftover .tmp files of ours. */
static void remove_stale(const char *dir, int shards)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *s = de->d_name;
        size_t l = strlen(s);
        int stale = 0;
        if (l > 4 && !strcmp(s + l - 4, ".tmp") && is_our_name(s)) {
            stale = 1;
        } else if (is_shard_name(s)) {
            int k = atoi(s + 6), m = atoi(s + 15);
            stale = !(m == shards && k >= 1 && k <= shards);
        }
        if (stale) {
            char *fp = path_join(dir, s);
            if (unlink(fp) && errno != ENOENT)
                fprintf(stderr, "%s: warning: cannot remove stale %s: %s\n", tool_name, fp, strerror(errno));
            free(fp);
        }
    }
    closedir(d);
}

static const char *first_existing(char **cands, int n)
{
    for (int i = 0; i < n; i++)
        if (cands[i] && file_exists(cands[i]))
            return cands[i];
    return NULL;
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *out = NULL, *preset = NULL, *config_file = NULL, *scale_fmt = NULL, *tokenizer = NULL;
    uint64_t seed = 1, shard_size = DEFAULT_SHARD_SIZE;
    int mtp = 0, no_tok = 0, quiet = 0;
    const char **sets = NULL;
    int nsets = 0;

    enum { O_SEED = 256, O_MTP, O_SHARD, O_SCALE, O_TOK, O_NOTOK };
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},
        {"preset", required_argument, 0, 'p'},
        {"config", required_argument, 0, 'c'},
        {"set", required_argument, 0, 's'},
        {"seed", required_argument, 0, O_SEED},
        {"mtp", no_argument, 0, O_MTP},
        {"shard-size", required_argument, 0, O_SHARD},
        {"scale-fmt", required_argument, 0, O_SCALE},
        {"tokenizer", required_argument, 0, O_TOK},
        {"no-tokenizer", no_argument, 0, O_NOTOK},
        {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    sets = calloc((size_t)argc + 1, sizeof *sets);
    if (!sets)
        die_oom();
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":o:p:c:s:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'p': preset = optarg; break;
        case 'c': config_file = optarg; break;
        case 's': sets[nsets++] = optarg; break;
        case O_SEED: seed = tool_parse_u64("--seed", optarg); break;
        case O_MTP: mtp = 1; break;
        case O_SHARD: shard_size = parse_size("--shard-size", optarg); break;
        case O_SCALE:
            if (strcmp(optarg, "ue8m0") && strcmp(optarg, "none"))
                tool_die(EXIT_USAGE, "invalid value for --scale-fmt: '%s' (expected ue8m0 or none)", optarg);
            scale_fmt = optarg;
            break;
        case O_TOK: tokenizer = optarg; break;
        case O_NOTOK: no_tok = 1; break;
        case 'q': quiet = 1, tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h':
            usage(stdout);
            free(sets);
            return EXIT_OK;
        case 'V': tool_print_version(); break;
        case ':':
            tool_die(EXIT_USAGE, "option '%s' needs an argument (see --help)", argv[optind - 1]);
        default:
            if (optopt)
                tool_die(EXIT_USAGE, "unknown option '-%c' (see --help)", optopt);
            tool_die(EXIT_USAGE, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!out)
        tool_die(EXIT_USAGE, "--out DIR is required (see --help)");
    if (!*out)
        tool_die(EXIT_USAGE, "--out: empty directory name");
    if (tokenizer && no_tok)
        tool_die(EXIT_USAGE, "--tokenizer and --no-tokenizer exclude each other");

    /* Configuration: preset, then --config, then --set, then --mtp. */
    json_t *u = NULL;
    if (config_file) {
        size_t len;
        char *text = tool_read_file(config_file, &len);
        if (!text)
            tool_die(EXIT_IO, "cannot read %s: %s", config_file, strerror(errno));
        json_error_t je;
        u = json_loadb(text, len, 0, &je);
        free(text);
        if (!u)
            tool_die(EXIT_INPUT, "%s:%d:%d: invalid JSON: %s", config_file, je.line, je.column, je.text);
        if (!json_is_object(u)) {
            json_decref(u);
            tool_die(EXIT_INPUT, "%s: expected a JSON object of config.json keys", config_file);
        }
    }
    json_t *cfg = make_preset(preset ? preset : "tiny");
    json_t *user_keys = json_object();
    if (u) {
        json_object_update(cfg, u);
        json_object_update(user_keys, u);
        json_decref(u);
    }
    for (int i = 0; i < nsets; i++)
        apply_set(cfg, user_keys, sets[i]);
    mk_config mc;
    memset(&mc, 0, sizeof mc);
    json_t *final = finalize_config(cfg, user_keys, scale_fmt, mtp, &mc);
    json_decref(cfg);
    json_decref(user_keys);
    char *cfg_text = json_dumps(final, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(final);
    if (!cfg_text)
        die_oom();
    /* the runtime's own rules, before any shard is written: a --set the
     * loader would refuse (a negative rope_theta, an unknown scoring_func)
     * is refused here (exit 2), not written as a checkpoint nothing loads */
    ds_config check;
    ds_error cerr;
    if (ds_config_parse(cfg_text, strlen(cfg_text), "the config", &check, &cerr) != DS_OK)
        tool_die(EXIT_INPUT, "%s", cerr.msg);

    /* Tokenizer sources. */
    char *tok_cands[3] = {0}, *tcfg_cands[4] = {0};
    const char *tok_src = NULL, *tcfg_src = NULL;
    const char *envdir = getenv("DSINFER_DATADIR");
    if (envdir && *envdir) {
        tok_cands[0] = path_join(envdir, "tokenizer-v32.json");
        tcfg_cands[1] = path_join(envdir, "tokenizer_config.json");
    }
    tok_cands[1] = xstrdup(DS_DATADIR "/tokenizer-v32.json");
    tok_cands[2] = xstrdup(DS_SRCDIR "/data/tokenizer-v32.json");
    tcfg_cands[2] = xstrdup(DS_DATADIR "/tokenizer_config.json");
    tcfg_cands[3] = xstrdup(DS_SRCDIR "/data/tokenizer_config.json");
    int want_tok = !no_tok && (tokenizer || mc.vocab == V32_VOCAB);
    if (want_tok) {
        if (tokenizer) {
            if (!file_exists(tokenizer))
                tool_die(EXIT_IO, "--tokenizer %s: no such file", tokenizer);
            tok_src = tokenizer;
            const char *slash = strrchr(tokenizer, '/');
            if (slash) {
                char *d = xstrdup(tokenizer);
                d[slash - tokenizer] = 0;
                tcfg_cands[0] = path_join(*d ? d : "/", "tokenizer_config.json");
                free(d);
            } else {
                tcfg_cands[0] = xstrdup("tokenizer_config.json");
            }
        } else {
            tok_src = first_existing(tok_cands, 3);
            if (!tok_src)
                fprintf(stderr, "%s: warning: no tokenizer-v32.json found ($DSINFER_DATADIR, %s, %s/data); "
                        "writing no tokenizer (use --tokenizer FILE or --no-tokenizer)\n",
                        tool_name, DS_DATADIR, DS_SRCDIR);
        }
        if (tok_src)
            tcfg_src = first_existing(tcfg_cands, 4);
    }

    /* Tensor plan and shards. */
    plan p = {0};
    build_plan(&p, &mc);
    int nshards = assign_shards(&p, shard_size);
    if (nshards > 99999)
        tool_die(EXIT_USAGE, "--shard-size %llu gives %d shards (at most 99999)",
                 (unsigned long long)shard_size, nshards);
    uint64_t total = 0, params = 0;
    for (size_t i = 0; i < p.n; i++) {
        total += p.t[i].bytes;
        if (p.t[i].kind != INIT_F8_SCALE)
            params += (uint64_t)p.t[i].shape[0] * (uint64_t)(p.t[i].ndim == 2 ? p.t[i].shape[1] : 1);
    }

    uint64_t existing = prepare_dir(out);
    struct statvfs vfs;
    if (statvfs(out, &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
        uint64_t need = total + (uint64_t)nshards * 65536;
        if (need > avail + existing) {
            char a[64], b[64];
            human((double)need, "B", 1, a, sizeof a);
            human((double)avail, "B", 1, b, sizeof b);
            tool_die(EXIT_IO, "%s: not enough disk space: the checkpoint needs %s, %s available", out, a, b);
        }
    }

    /* Shards. */
    gen_ctx g;
    memset(&g, 0, sizeof g);
    g.seed = seed;
    g.buf = malloc(CHUNK);
    g.lut = malloc(IH_RANGE);
    if (!g.buf || !g.lut)
        die_oom();
    g.progress = !quiet && isatty(2);
    g.total = total;
    g.shards = nshards;
    g.next_report = 0;
    st_index *ix = st_index_new();
    if (!ix)
        die_oom();
    uint64_t file_bytes = 0;
    size_t ti = 0;
    for (int s = 0; s < nshards; s++) {
        char sname[64];
        snprintf(sname, sizeof sname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        char *spath = path_join(out, sname);
        st_writer *w = st_writer_new(spath);
        if (!w)
            die_oom();
        size_t first = ti;
        for (; ti < p.n && p.t[ti].shard == s; ti++) {
            if (st_writer_add(w, p.t[ti].name, p.t[ti].dt, p.t[ti].ndim, p.t[ti].shape))
                tool_die(EXIT_RUNTIME, "%s", st_writer_error(w));
            if (st_index_add(ix, p.t[ti].name, sname))
                tool_die(EXIT_RUNTIME, "duplicate tensor %s", p.t[ti].name);
        }
        if (st_writer_begin(w)) {
            char msg[800];
            snprintf(msg, sizeof msg, "%s", st_writer_error(w));
            st_writer_abort(w);
            tool_die(EXIT_IO, "%s", msg);
        }
        g.w = w;
        g.shard = s;
        for (size_t k = first; k < ti; k++)
            gen_tensor(&g, &p.t[k]);
        if (st_writer_finish(w)) {
            char msg[800];
            snprintf(msg, sizeof msg, "%s", st_writer_error(w));
            st_writer_abort(w);
            tool_die(EXIT_IO, "%s", msg);
        }
        file_bytes += st_writer_file_size(w);
        tool_info("wrote %s: %zu tensors, %llu bytes", spath, ti - first,
                  (unsigned long long)st_writer_file_size(w));
        st_writer_free(w);
        free(spath);
    }
    if (g.progress)
        fprintf(stderr, "\r%*s\r", 60, "");

    char err[1024];
    char *ipath = path_join(out, "model.safetensors.index.json");
    if (st_index_write(ix, ipath, total, err, sizeof err))
        tool_die(EXIT_IO, "%s", err);
    free(ipath);
    st_index_free(ix);

    size_t cl = strlen(cfg_text);
    char *cfg_nl = realloc(cfg_text, cl + 2);
    if (!cfg_nl)
        die_oom();
    cfg_nl[cl] = '\n';
    cfg_nl[cl + 1] = 0;
    char *cpath = path_join(out, "config.json");
    if (st_write_file_atomic(cpath, cfg_nl, cl + 1, err, sizeof err))
        tool_die(EXIT_IO, "%s", err);
    free(cpath);
    free(cfg_nl);

    int tok_files = 0;
    if (tok_src) {
        char *tp = path_join(out, "tokenizer.json");
        if (st_copy_file_atomic(tok_src, tp, err, sizeof err))
            tool_die(EXIT_IO, "%s", err);
        free(tp);
        tok_files++;
        if (tcfg_src) {
            tp = path_join(out, "tokenizer_config.json");
            if (st_copy_file_atomic(tcfg_src, tp, err, sizeof err))
                tool_die(EXIT_IO, "%s", err);
            free(tp);
            tok_files++;
        }
    }
    remove_stale(out, nshards);
    if (st_fsync_dir(out, err, sizeof err))
        tool_die(EXIT_IO, "%s", err);

    if (!quiet) {
        char hp[64], hb[64];
        human((double)params, "", 0, hp, sizeof hp);
        human((double)file_bytes, "B", 1, hb, sizeof hb);
        fprintf(stderr, "%s: wrote %s: %s, %lld layers%s, %llu params (%s), %zu tensors, %llu bytes (%s) "
                "in %d shard%s + config.json, model.safetensors.index.json%s, seed %llu\n",
                tool_name, out, mc.v32 ? "deepseek_v32" : "deepseek_v3", (long long)mc.layers,
                mc.mtp ? " + MTP" : "", (unsigned long long)params, hp, p.n,
                (unsigned long long)file_bytes, hb, nshards, nshards == 1 ? "" : "s",
                tok_files == 2 ? ", tokenizer.json, tokenizer_config.json" : tok_files ? ", tokenizer.json" : "",
                (unsigned long long)seed);
    }

    for (size_t i = 0; i < p.n; i++)
        free(p.t[i].name);
    free(p.t);
    free(g.buf);
    free(g.lut);
    free(sets);
    for (int i = 0; i < 3; i++)
        free(tok_cands[i]);
    for (int i = 0; i < 4; i++)
        free(tcfg_cands[i]);
    return EXIT_OK;
}
