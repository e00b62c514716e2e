/* config.c — reads an HF config.json of DeepSeek V3 / V3.2 into ds_config
 * (config.h): types are checked key by key, absent optional keys take the
 * HF defaults, and anything valid but not implemented (other rope scalings,
 * other quantisations, no q LoRA) is reported as unsupported rather than
 * silently mis-run. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "config.h"
#include "internal.h"
#include "mapfile.h"

/* Upper bound on every size, so products of two of them fit in int64 and
 * the ones the forward pass forms (heads x head_dim, ...) fit in int. */
#define CFG_MAX_DIM (1 << 24)
#define CFG_MAX_PRODUCT (1 << 30)

/* Where a value comes from, for messages: file, and the enclosing object's
 * key ("rope_scaling.") for nested values. */
typedef struct cfg_ctx {
    const char *path;
    const char *prefix;
    ds_error *err;
} cfg_ctx;

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static ds_status type_error(const cfg_ctx *c, const char *key, const char *want, const json_t *v)
{
    return ds_fail(c->err, DS_ERR_FORMAT, "%s: key '%s%s': expected %s, got %s", c->path,
                   c->prefix, key, want, type_name(v));
}

static ds_status missing(const cfg_ctx *c, const char *key)
{
    return ds_fail(c->err, DS_ERR_FORMAT, "%s: missing key '%s%s'", c->path, c->prefix, key);
}

/* Absent and null both mean "use the default" for optional keys. */
static json_t *get(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

/* Integral JSON numbers only; 128.0 is accepted since some exporters write
 * every number as a real. */
static ds_status to_int(const cfg_ctx *c, const char *key, const json_t *v, int *out)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < INT_MIN || i > INT_MAX)
            return ds_fail(c->err, DS_ERR_FORMAT, "%s: key '%s%s': %lld is out of range",
                           c->path, c->prefix, key, (long long)i);
        *out = (int)i;
        return DS_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
            return ds_fail(c->err, DS_ERR_FORMAT, "%s: key '%s%s': %g is not an integer",
                           c->path, c->prefix, key, d);
        *out = (int)d;
        return DS_OK;
    }
    return type_error(c, key, "an integer", v);
}

static ds_status get_int(const cfg_ctx *c, json_t *obj, const char *key, int required, int def,
                         int *out)
{
    json_t *v = get(obj, key);
    *out = def;
    if (!v && required && json_is_null(json_object_get(obj, key)))
        return ds_fail(c->err, DS_ERR_FORMAT, "%s: key '%s%s' is null", c->path, c->prefix, key);
    if (!v)
        return required ? missing(c, key) : DS_OK;
    return to_int(c, key, v, out);
}

static ds_status get_double(const cfg_ctx *c, json_t *obj, const char *key, int required,
                            double def, double *out)
{
    json_t *v = get(obj, key);
    *out = def;
    if (!v)
        return required ? missing(c, key) : DS_OK;
    if (!json_is_number(v))
        return type_error(c, key, "a number", v);
    *out = json_number_value(v);
    return DS_OK;
}

static ds_status get_bool(const cfg_ctx *c, json_t *obj, const char *key, int def, int *out)
{
    json_t *v = get(obj, key);
    *out = def;
    if (!v)
        return DS_OK;
    if (!json_is_boolean(v))
        return type_error(c, key, "a boolean", v);
    *out = json_is_true(v);
    return DS_OK;
}

/* *out is NULL when the key is absent or null. */
static ds_status get_string(const cfg_ctx *c, json_t *obj, const char *key, const char **out)
{
    json_t *v = get(obj, key);
    *out = NULL;
    if (!v)
        return DS_OK;
    if (!json_is_string(v))
        return type_error(c, key, "a string", v);
    *out = json_string_value(v);
    return DS_OK;
}

/* A token id may be a list (HF allows several eos ids): the first is used. */
static ds_status get_token_id(const cfg_ctx *c, json_t *obj, const char *key, int def, int *out)
{
    json_t *v = get(obj, key);
    *out = def;
    if (!v)
        return DS_OK;
    if (json_is_array(v)) {
        if (json_array_size(v) == 0)
            return ds_fail(c->err, DS_ERR_FORMAT, "%s: key '%s': empty list", c->path, key);
        v = json_array_get(v, 0);
    }
    return to_int(c, key, v, out);
}

/* ---- groups of keys ----------------------------------------------------- */

static ds_status read_model_type(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    const char *mt;
    ds_status s = get_string(c, root, "model_type", &mt);
    if (s)
        return s;
    if (!mt)
        return missing(c, "model_type");
    if (strcmp(mt, "deepseek_v3") && strcmp(mt, "deepseek_v32"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: unsupported model_type '%.64s' (expected deepseek_v3 or deepseek_v32)",
                       c->path, mt);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt);
    cfg->is_v32 = strcmp(mt, "deepseek_v32") == 0;
    return DS_OK;
}

typedef struct int_key {
    const char *key;
    size_t off;
    int required;
    int def;
} int_key;

#define REQ(k) {#k, offsetof(ds_config, k), 1, 0}
#define OPT(k, d) {#k, offsetof(ds_config, k), 0, d}
static const int_key int_keys[] = {
    REQ(vocab_size), REQ(hidden_size), REQ(intermediate_size), REQ(moe_intermediate_size),
    REQ(num_hidden_layers), REQ(num_attention_heads), REQ(n_routed_experts),
    REQ(num_experts_per_tok), REQ(kv_lora_rank), REQ(qk_nope_head_dim), REQ(qk_rope_head_dim),
    REQ(v_head_dim),
    OPT(first_k_dense_replace, 0), OPT(moe_layer_freq, 1), OPT(n_shared_experts, 0),
    OPT(n_group, 1), OPT(topk_group, 1), OPT(max_position_embeddings, 4096),
    OPT(num_nextn_predict_layers, 0),
};
static const int_key v32_keys[] = {REQ(index_n_heads), REQ(index_head_dim), REQ(index_topk)};
#undef REQ
#undef OPT

static ds_status read_int_keys(const cfg_ctx *c, json_t *root, const int_key *keys, size_t n,
                               ds_config *cfg)
{
    for (size_t i = 0; i < n; i++) {
        int *field = (int *)((char *)cfg + keys[i].off);
        ds_status s = get_int(c, root, keys[i].key, keys[i].required, keys[i].def, field);
        if (s)
            return s;
    }
    return DS_OK;
}

static ds_status read_q_lora(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    json_t *v = json_object_get(root, "q_lora_rank");
    if (!v)
        return missing(c, "q_lora_rank");
    if (json_is_null(v))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: q_lora_rank null (no q LoRA) is not supported", c->path);
    return to_int(c, "q_lora_rank", v, &cfg->q_lora_rank);
}

static ds_status read_scalars(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    double scale, eps;
    ds_status s;
    if ((s = get_double(c, root, "routed_scaling_factor", 0, 1.0, &scale)) ||
        (s = get_double(c, root, "rms_norm_eps", 0, 1e-6, &eps)) ||
        (s = get_double(c, root, "rope_theta", 0, 10000.0, &cfg->rope_theta)) ||
        (s = get_bool(c, root, "norm_topk_prob", 1, &cfg->norm_topk_prob)) ||
        (s = get_bool(c, root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings)) ||
        (s = get_token_id(c, root, "bos_token_id", 0, &cfg->bos_token_id)) ||
        (s = get_token_id(c, root, "eos_token_id", 1, &cfg->eos_token_id)))
        return s;
    cfg->routed_scaling_factor = (float)scale;
    cfg->rms_norm_eps = (float)eps;
    return DS_OK;
}

/* Only the noaux_tc sigmoid router of V3 is implemented. */
static ds_status read_router(const cfg_ctx *c, json_t *root)
{
    const char *scoring, *method;
    ds_status s;
    if ((s = get_string(c, root, "scoring_func", &scoring)) ||
        (s = get_string(c, root, "topk_method", &method)))
        return s;
    if (scoring && strcmp(scoring, "sigmoid"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: scoring_func '%.64s' is not supported (expected sigmoid)", c->path,
                       scoring);
    if (method && strcmp(method, "noaux_tc"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: topk_method '%.64s' is not supported (expected noaux_tc)", c->path,
                       method);
    return DS_OK;
}

static ds_status read_rope_scaling(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    cfg->yarn = 0;
    cfg->rope_factor = 1.0;
    cfg->beta_fast = 32.0;
    cfg->beta_slow = 1.0;
    cfg->mscale = 1.0;
    cfg->mscale_all_dim = 0.0;
    cfg->original_max_position_embeddings = cfg->max_position_embeddings;
    json_t *rs = get(root, "rope_scaling");
    if (!rs)
        return DS_OK;
    if (!json_is_object(rs))
        return type_error(c, "rope_scaling", "an object or null", rs);

    cfg_ctx sub = {c->path, "rope_scaling.", c->err};
    const char *type;
    ds_status s = get_string(&sub, rs, "type", &type);
    if (!s && !type)
        s = get_string(&sub, rs, "rope_type", &type);   /* newer HF spelling */
    if (s)
        return s;
    if (!type)
        return missing(&sub, "type");
    if (strcmp(type, "yarn"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: rope_scaling type '%.64s' is not supported (only yarn)", c->path, type);
    cfg->yarn = 1;
    if ((s = get_double(&sub, rs, "factor", 1, 1.0, &cfg->rope_factor)) ||
        (s = get_int(&sub, rs, "original_max_position_embeddings", 1, 0,
                     &cfg->original_max_position_embeddings)) ||
        (s = get_double(&sub, rs, "beta_fast", 0, 32.0, &cfg->beta_fast)) ||
        (s = get_double(&sub, rs, "beta_slow", 0, 1.0, &cfg->beta_slow)) ||
        (s = get_double(&sub, rs, "mscale", 0, 1.0, &cfg->mscale)) ||
        (s = get_double(&sub, rs, "mscale_all_dim", 0, 0.0, &cfg->mscale_all_dim)))
        return s;
    return DS_OK;
}

static ds_status read_block_size(const cfg_ctx *c, json_t *qc, ds_config *cfg)
{
    json_t *bs = get(qc, "weight_block_size");
    if (!bs)
        return missing(c, "weight_block_size");
    if (!json_is_array(bs) || json_array_size(bs) != 2)
        return type_error(c, "weight_block_size", "a list of two integers", bs);
    int b[2];
    for (int i = 0; i < 2; i++) {
        ds_status s = to_int(c, "weight_block_size", json_array_get(bs, (size_t)i), &b[i]);
        if (s)
            return s;
    }
    if (b[0] != 128 || b[1] != 128)
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: quantization_config.weight_block_size [%d, %d] is not supported "
                       "(only [128, 128])", c->path, b[0], b[1]);
    cfg->fp8_block = 128;
    return DS_OK;
}

static ds_status read_quantization(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    cfg->fp8_block = 0;
    cfg->scale_ue8m0 = 0;
    json_t *qc = get(root, "quantization_config");
    if (!qc)
        return DS_OK;
    if (!json_is_object(qc))
        return type_error(c, "quantization_config", "an object or null", qc);

    cfg_ctx sub = {c->path, "quantization_config.", c->err};
    const char *method, *fmt, *scale_fmt;
    ds_status s;
    if ((s = get_string(&sub, qc, "quant_method", &method)) ||
        (s = get_string(&sub, qc, "fmt", &fmt)) ||
        (s = get_string(&sub, qc, "scale_fmt", &scale_fmt)))
        return s;
    if (!method)
        return missing(&sub, "quant_method");
    if (strcmp(method, "fp8"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: quantization_config.quant_method '%.64s' is not supported (only fp8)",
                       c->path, method);
    if (fmt && strcmp(fmt, "e4m3"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: quantization_config.fmt '%.64s' is not supported (only e4m3)",
                       c->path, fmt);
    if (scale_fmt && strcmp(scale_fmt, "ue8m0"))
        return ds_fail(c->err, DS_ERR_UNSUPPORTED,
                       "%s: quantization_config.scale_fmt '%.64s' is not supported (only ue8m0)",
                       c->path, scale_fmt);
    cfg->scale_ue8m0 = scale_fmt != NULL;
    return read_block_size(&sub, qc, cfg);
}

static ds_status read_config(const cfg_ctx *c, json_t *root, ds_config *cfg)
{
    ds_status s;
    if ((s = read_model_type(c, root, cfg)) ||
        (s = read_int_keys(c, root, int_keys, sizeof int_keys / sizeof int_keys[0], cfg)) ||
        (s = read_q_lora(c, root, cfg)) ||
        (s = read_scalars(c, root, cfg)) ||
        (s = read_router(c, root)) ||
        (s = read_rope_scaling(c, root, cfg)) ||
        (s = read_quantization(c, root, cfg)))
        return s;
    if (cfg->is_v32)
        return read_int_keys(c, root, v32_keys, sizeof v32_keys / sizeof v32_keys[0], cfg);
    return DS_OK;
}

ds_status ds_json_file_load(const char *path, size_t flags, json_t **root, ds_error *err)
{
    ds_mapped_file f;
    *root = NULL;
    ds_status s = ds_map_file(path, &f, err);
    if (s)
        return s;
    if (f.size == 0) {
        ds_unmap_file(&f);
        return ds_fail(err, DS_ERR_FORMAT, "%s: the file is empty", path);
    }
    json_error_t je;
    *root = json_loadb((const char *)f.base, (size_t)f.size, flags, &je);
    ds_unmap_file(&f);
    if (!*root)
        return ds_fail(err, DS_ERR_FORMAT, "%s: invalid JSON: %s (line %d, column %d)", path, je.text, je.line,
                       je.column);
    return DS_OK;
}

static ds_status config_from_json(json_t *root, const char *path, ds_config *cfg, ds_error *err)
{
    cfg_ctx c = {path, "", err};
    ds_status s = json_is_object(root) ? read_config(&c, root, cfg)
                                       : ds_fail(err, DS_ERR_FORMAT, "%s: not a JSON object", path);
    return s ? s : ds_config_check(cfg, path, err);
}

ds_status ds_config_load(const char *path, ds_config *cfg, ds_error *err)
{
    if (!path || !cfg)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_config_load: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    json_t *root;
    ds_status s = ds_json_file_load(path, JSON_REJECT_DUPLICATES, &root, err);
    if (s)
        return s;
    s = config_from_json(root, path, cfg, err);
    json_decref(root);
    return s;
}

ds_status ds_config_parse(const char *text, size_t len, const char *name, ds_config *cfg, ds_error *err)
{
    if (!text || !name || !cfg)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_config_parse: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ds_fail(err, DS_ERR_FORMAT, "%s: invalid JSON: %s (line %d, column %d)", name, je.text, je.line,
                       je.column);
    ds_status s = config_from_json(root, name, cfg, err);
    json_decref(root);
    return s;
}

/* ---- relations between fields ------------------------------------------- */

typedef struct range_check {
    const char *key;
    int value;
    int min;
} range_check;

static ds_status check_ranges(const range_check *r, size_t n, const char *path, ds_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (r[i].value < r[i].min || r[i].value >= CFG_MAX_DIM)
            return ds_fail(err, DS_ERR_FORMAT, "%s: %s = %d is out of range [%d, %d)", path,
                           r[i].key, r[i].value, r[i].min, CFG_MAX_DIM);
    return DS_OK;
}

static ds_status check_sizes(const ds_config *cfg, const char *path, ds_error *err)
{
#define POS(k) {#k, cfg->k, 1}
#define NONNEG(k) {#k, cfg->k, 0}
    const range_check r[] = {
        POS(vocab_size), POS(hidden_size), POS(intermediate_size), POS(moe_intermediate_size),
        POS(num_hidden_layers), POS(num_attention_heads), POS(q_lora_rank), POS(kv_lora_rank),
        POS(qk_nope_head_dim), POS(qk_rope_head_dim), POS(v_head_dim),
        POS(max_position_embeddings), POS(n_group), POS(topk_group), POS(moe_layer_freq),
        NONNEG(first_k_dense_replace), NONNEG(n_routed_experts), NONNEG(n_shared_experts),
        NONNEG(num_experts_per_tok), NONNEG(num_nextn_predict_layers),
        NONNEG(bos_token_id), NONNEG(eos_token_id),
    };
#undef POS
#undef NONNEG
    ds_status s = check_ranges(r, sizeof r / sizeof r[0], path, err);
    if (s)
        return s;
    const struct { const char *what; int64_t v; } products[] = {
        {"num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim)",
         (int64_t)cfg->num_attention_heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim)},
        {"num_attention_heads x (qk_nope_head_dim + v_head_dim)",
         (int64_t)cfg->num_attention_heads * (cfg->qk_nope_head_dim + cfg->v_head_dim)},
        {"n_shared_experts x moe_intermediate_size",
         (int64_t)cfg->n_shared_experts * cfg->moe_intermediate_size},
        {"index_n_heads x index_head_dim", (int64_t)cfg->index_n_heads * cfg->index_head_dim},
    };
    for (size_t i = 0; i < sizeof products / sizeof products[0]; i++)
        if (products[i].v > CFG_MAX_PRODUCT)
            return ds_fail(err, DS_ERR_FORMAT, "%s: %s = %lld is too large", path,
                           products[i].what, (long long)products[i].v);
    if (cfg->qk_rope_head_dim % 2)
        return ds_fail(err, DS_ERR_FORMAT, "%s: qk_rope_head_dim %d is odd (RoPE rotates pairs)",
                       path, cfg->qk_rope_head_dim);
    if (cfg->qk_rope_head_dim > DS_MAX_ROPE)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: qk_rope_head_dim %d exceeds the supported %d",
                       path, cfg->qk_rope_head_dim, DS_MAX_ROPE);
    if (cfg->first_k_dense_replace > cfg->num_hidden_layers)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: first_k_dense_replace %d exceeds num_hidden_layers %d", path,
                       cfg->first_k_dense_replace, cfg->num_hidden_layers);
    if (cfg->bos_token_id >= cfg->vocab_size || cfg->eos_token_id >= cfg->vocab_size)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: bos_token_id %d / eos_token_id %d not below vocab_size %d", path,
                       cfg->bos_token_id, cfg->eos_token_id, cfg->vocab_size);
    return DS_OK;
}

static ds_status check_router(const ds_config *cfg, const char *path, ds_error *err)
{
    if (cfg->topk_group > cfg->n_group)
        return ds_fail(err, DS_ERR_FORMAT, "%s: topk_group %d exceeds n_group %d", path,
                       cfg->topk_group, cfg->n_group);
    if (!(cfg->routed_scaling_factor > 0 && isfinite(cfg->routed_scaling_factor)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: routed_scaling_factor %g is not positive",
                       path, cfg->routed_scaling_factor);
    if (cfg->n_routed_experts == 0)
        return DS_OK;   /* a dense-only model: no routing to check */
    if (cfg->n_routed_experts % cfg->n_group)
        return ds_fail(err, DS_ERR_FORMAT, "%s: n_group %d does not divide n_routed_experts %d",
                       path, cfg->n_group, cfg->n_routed_experts);
    int reachable = cfg->topk_group * (cfg->n_routed_experts / cfg->n_group);
    if (cfg->num_experts_per_tok < 1 || cfg->num_experts_per_tok > reachable)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: num_experts_per_tok %d not in [1, %d] (topk_group x experts per "
                       "group, at most n_routed_experts %d)",
                       path, cfg->num_experts_per_tok, reachable, cfg->n_routed_experts);
    return DS_OK;
}

static ds_status check_rope(const ds_config *cfg, const char *path, ds_error *err)
{
    if (!(cfg->rms_norm_eps > 0 && isfinite(cfg->rms_norm_eps)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: rms_norm_eps %g is not positive", path,
                       cfg->rms_norm_eps);
    /* YaRN divides by ln(rope_theta) */
    if (!(cfg->rope_theta > 1 && isfinite(cfg->rope_theta)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: rope_theta %g must be > 1", path,
                       cfg->rope_theta);
    if (!cfg->yarn)
        return DS_OK;
    if (!(cfg->rope_factor >= 1 && isfinite(cfg->rope_factor)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: rope_scaling.factor %g must be >= 1", path,
                       cfg->rope_factor);
    if (cfg->original_max_position_embeddings < 1)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: rope_scaling.original_max_position_embeddings %d is not positive",
                       path, cfg->original_max_position_embeddings);
    /* the correction range takes ln(L0 / (2 pi beta)) */
    if (!(cfg->beta_fast > 0 && cfg->beta_slow > 0 && isfinite(cfg->beta_fast) &&
          isfinite(cfg->beta_slow)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: rope_scaling.beta_fast %g / beta_slow %g must be positive",
                       path, cfg->beta_fast, cfg->beta_slow);
    if (!isfinite(cfg->mscale) || !isfinite(cfg->mscale_all_dim))
        return ds_fail(err, DS_ERR_FORMAT, "%s: rope_scaling.mscale is not finite", path);
    /* what rope.c makes of them: the rotation gain mscale(mscale) /
     * mscale(mscale_all_dim) and the softmax gain mscale(mscale_all_dim)^2
     * (a huge or negative mscale would give inf / NaN attention, silently) */
    const float m = ds_yarn_mscale(cfg->rope_factor, cfg->mscale),
                m_all = cfg->mscale_all_dim != 0.0 ? ds_yarn_mscale(cfg->rope_factor, cfg->mscale_all_dim) : 1.0f;
    if (!(m > 0 && m_all > 0 && isfinite(m / m_all) && isfinite(m_all * m_all) && m_all * m_all > 0))
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: rope_scaling.mscale %g / mscale_all_dim %g with factor %g give the attention a "
                       "gain of %g / %g: both must be finite and positive",
                       path, cfg->mscale, cfg->mscale_all_dim, cfg->rope_factor, (double)m, (double)m_all);
    return DS_OK;
}

static ds_status check_indexer(const ds_config *cfg, const char *path, ds_error *err)
{
    if (!cfg->is_v32) {
        if (cfg->index_n_heads || cfg->index_head_dim || cfg->index_topk)
            return ds_fail(err, DS_ERR_FORMAT, "%s: index_* values set for a model without indexer",
                           path);
        return DS_OK;
    }
    const range_check r[] = {
        {"index_n_heads", cfg->index_n_heads, 1},
        {"index_head_dim", cfg->index_head_dim, 1},
        {"index_topk", cfg->index_topk, 1},
    };
    ds_status s = check_ranges(r, sizeof r / sizeof r[0], path, err);
    if (s)
        return s;
    /* the indexer rotates q and k with a Hadamard transform of that size */
    int d = cfg->index_head_dim;
    if ((d & (d - 1)) || d < cfg->qk_rope_head_dim)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: index_head_dim %d must be a power of two >= qk_rope_head_dim %d",
                       path, d, cfg->qk_rope_head_dim);
    if (d > 256)   /* the exact f64 FP8 dot of indexer.c holds up to 256 terms */
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: index_head_dim %d exceeds the supported 256", path, d);
    return DS_OK;
}

ds_status ds_config_check(const ds_config *cfg, const char *path, ds_error *err)
{
    if (!cfg)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_config_check: NULL config");
    if (!path)
        path = "config";
    if (strcmp(cfg->model_type, "deepseek_v3") && strcmp(cfg->model_type, "deepseek_v32"))
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: unsupported model_type '%.31s'", path,
                       cfg->model_type);
    if (cfg->is_v32 != (strcmp(cfg->model_type, "deepseek_v32") == 0))
        return ds_fail(err, DS_ERR_FORMAT, "%s: is_v32 disagrees with model_type", path);
    if (cfg->fp8_block != 0 && cfg->fp8_block != 128)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: fp8 block size %d (only 128)", path,
                       cfg->fp8_block);
    ds_status s;
    if ((s = check_sizes(cfg, path, err)) || (s = check_router(cfg, path, err)) ||
        (s = check_rope(cfg, path, err)) || (s = check_indexer(cfg, path, err)))
        return s;
    return DS_OK;
}

int ds_config_is_moe_layer(const ds_config *cfg, int l)
{
    /* HF modeling_deepseek.py: n_routed_experts is not None and
     * layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0 */
    if (!cfg || l < 0 || cfg->n_routed_experts <= 0 || cfg->moe_layer_freq <= 0)
        return 0;
    return l >= cfg->first_k_dense_replace && l % cfg->moe_layer_freq == 0;
}
