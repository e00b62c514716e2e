/* test_config.c — config.json parsing (config.h): the tiny-dsa conformance
 * config when tests/data has it, defaults of a minimal V3 config, and
 * hand-made configs with errors (missing key, wrong type, bad model_type,
 * groups not dividing experts, unsupported rope scaling / quantisation),
 * each failing with the right status and a message naming file and key. */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "config.h"

static int failures;
static char tmpdir[4096];
static char cfg_path[4352];

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* A minimal valid deepseek_v3 config: only the required keys. */
static json_t *base_v3(void)
{
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
                          "model_type", "deepseek_v3", "vocab_size", 1000, "hidden_size", 64,
                          "intermediate_size", 128, "moe_intermediate_size", 32,
                          "num_hidden_layers", 4, "num_attention_heads", 2,
                          "n_routed_experts", 8, "num_experts_per_tok", 2, "kv_lora_rank", 32,
                          "qk_nope_head_dim", 16, "qk_rope_head_dim", 8, "v_head_dim", 16,
                          "q_lora_rank", 48);
    if (!j)
        exit(2);
    return j;
}

static json_t *base_v32(void)
{
    json_t *j = base_v3();
    json_object_set_new(j, "model_type", json_string("deepseek_v32"));
    json_object_set_new(j, "index_n_heads", json_integer(4));
    json_object_set_new(j, "index_head_dim", json_integer(32));
    json_object_set_new(j, "index_topk", json_integer(8));
    return j;
}

/* Writes j (and releases it) and loads it. */
static ds_status load_json(json_t *j, ds_config *cfg, ds_error *e)
{
    char *text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    if (!text)
        exit(2);
    write_text(cfg_path, text);
    free(text);
    memset(e, 0, sizeof *e);
    return ds_config_load(cfg_path, cfg, e);
}

static void expect_ok(const char *label, json_t *j, ds_config *cfg)
{
    ds_error e;
    ds_status s = load_json(j, cfg, &e);
    CHECK(s == DS_OK, "%s: %s", label, e.msg);
}

static void expect_fail(const char *label, json_t *j, ds_status want, const char *needle)
{
    ds_config cfg;
    ds_error e;
    ds_status s = load_json(j, &cfg, &e);
    CHECK(s == want, "%s: status %d (%s), want %d: %s", label, s, ds_status_str(s), want, e.msg);
    CHECK(strstr(e.msg, "config.json") != NULL, "%s: message lacks the file: %s", label, e.msg);
    CHECK(!needle || strstr(e.msg, needle), "%s: message lacks '%s': %s", label, needle, e.msg);
    if (getenv("DS_TEST_VERBOSE"))
        printf("%-34s %s\n", label, e.msg);
}

static json_t *with(json_t *j, const char *key, json_t *v)
{
    json_object_set_new(j, key, v);
    return j;
}

static json_t *without(json_t *j, const char *key)
{
    json_object_del(j, key);
    return j;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-6 * fabs(b); }

/* ---- cases -------------------------------------------------------------- */

static void test_tiny_dsa(void)
{
    const char *top = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/tiny-dsa/model/config.json", top ? top : ".");
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("skip: %s not present\n", path);
        return;
    }
    ds_config c;
    ds_error e = {0};
    ds_status s = ds_config_load(path, &c, &e);
    CHECK(s == DS_OK, "tiny-dsa config: %s", e.msg);
    if (s)
        return;
    CHECK(strcmp(c.model_type, "deepseek_v32") == 0 && c.is_v32, "model_type %s", c.model_type);
    CHECK(c.hidden_size == 512 && c.num_hidden_layers == 3 && c.vocab_size == 1024,
          "sizes %d %d %d", c.hidden_size, c.num_hidden_layers, c.vocab_size);
    CHECK(c.index_topk == 16 && c.index_n_heads == 8 && c.index_head_dim == 128,
          "indexer %d %d %d", c.index_topk, c.index_n_heads, c.index_head_dim);
    CHECK(c.yarn && near(c.rope_factor, 40) && c.original_max_position_embeddings == 64,
          "yarn %d factor %g orig %d", c.yarn, c.rope_factor, c.original_max_position_embeddings);
    CHECK(near(c.beta_fast, 32) && near(c.beta_slow, 1) && near(c.mscale, 1) &&
          near(c.mscale_all_dim, 1), "yarn betas/mscale");
    CHECK(c.fp8_block == 128 && c.scale_ue8m0 == 0, "quant %d %d", c.fp8_block, c.scale_ue8m0);
    CHECK(c.q_lora_rank == 256 && c.kv_lora_rank == 512 && c.qk_nope_head_dim == 128 &&
          c.qk_rope_head_dim == 64 && c.v_head_dim == 128 && c.num_attention_heads == 4,
          "attention dims");
    CHECK(c.n_routed_experts == 16 && c.n_group == 4 && c.topk_group == 2 &&
          c.num_experts_per_tok == 4 && c.n_shared_experts == 1 && c.moe_intermediate_size == 128,
          "moe dims");
    CHECK(near(c.routed_scaling_factor, 2.5) && c.norm_topk_prob && near(c.rms_norm_eps, 1e-6) &&
          near(c.rope_theta, 10000), "scalars");
    CHECK(c.max_position_embeddings == 2560 && c.bos_token_id == 0 && c.eos_token_id == 1 &&
          !c.tie_word_embeddings && c.num_nextn_predict_layers == 0, "misc");
    CHECK(!ds_config_is_moe_layer(&c, 0) && ds_config_is_moe_layer(&c, 1) &&
          ds_config_is_moe_layer(&c, 2), "moe layers");
    CHECK(ds_config_check(&c, path, &e) == DS_OK, "check: %s", e.msg);

    /* tiny-dense: same shapes, index_topk above every sequence length */
    snprintf(path, sizeof path, "%s/tests/data/tiny-dense/model/config.json", top ? top : ".");
    if (stat(path, &st) == 0) {
        s = ds_config_load(path, &c, &e);
        CHECK(s == DS_OK && c.index_topk == 2048, "tiny-dense config: %s", e.msg);
    }
}

static void test_defaults(void)
{
    ds_config c;
    expect_ok("minimal v3", base_v3(), &c);
    CHECK(strcmp(c.model_type, "deepseek_v3") == 0 && !c.is_v32, "model_type");
    CHECK(c.first_k_dense_replace == 0 && c.moe_layer_freq == 1 && c.n_shared_experts == 0 &&
          c.n_group == 1 && c.topk_group == 1, "moe defaults");
    CHECK(near(c.routed_scaling_factor, 1) && c.norm_topk_prob && near(c.rms_norm_eps, 1e-6) &&
          near(c.rope_theta, 10000) && c.max_position_embeddings == 4096, "scalar defaults");
    CHECK(c.bos_token_id == 0 && c.eos_token_id == 1 && !c.tie_word_embeddings &&
          c.num_nextn_predict_layers == 0, "token defaults");
    CHECK(!c.yarn && near(c.rope_factor, 1) && c.fp8_block == 0 && !c.scale_ue8m0, "rope/quant");
    CHECK(c.index_n_heads == 0 && c.index_head_dim == 0 && c.index_topk == 0, "no indexer");
    CHECK(ds_config_is_moe_layer(&c, 0) && ds_config_is_moe_layer(&c, 3), "all layers moe");

    json_t *j = base_v3();
    with(j, "eos_token_id", json_pack("[i, i]", 7, 8));
    with(j, "bos_token_id", json_null());
    with(j, "hidden_size", json_real(64.0));
    with(j, "first_k_dense_replace", json_integer(2));
    with(j, "moe_layer_freq", json_integer(2));
    with(j, "num_hidden_layers", json_integer(7));
    with(j, "scoring_func", json_string("sigmoid"));
    with(j, "topk_method", json_string("noaux_tc"));
    with(j, "rope_scaling", json_pack("{s:s, s:f, s:i}", "rope_type", "yarn", "factor", 4.0,
                                      "original_max_position_embeddings", 1024));
    with(j, "quantization_config", json_pack("{s:s, s:[i, i], s:s}", "quant_method", "fp8",
                                             "weight_block_size", 128, 128, "scale_fmt", "ue8m0"));
    expect_ok("v3 with options", j, &c);
    CHECK(c.eos_token_id == 7 && c.bos_token_id == 0 && c.hidden_size == 64, "eos list / real int");
    CHECK(c.yarn && near(c.rope_factor, 4) && c.original_max_position_embeddings == 1024 &&
          near(c.beta_fast, 32) && near(c.beta_slow, 1) && near(c.mscale, 1) &&
          near(c.mscale_all_dim, 0), "yarn defaults");
    CHECK(c.fp8_block == 128 && c.scale_ue8m0 == 1, "ue8m0");
    int moe[7];
    for (int l = 0; l < 7; l++)
        moe[l] = ds_config_is_moe_layer(&c, l);
    CHECK(!moe[0] && !moe[1] && moe[2] && !moe[3] && moe[4] && !moe[5] && moe[6],
          "HF moe rule (l >= 2 && l %% 2 == 0)");

    expect_ok("minimal v32", base_v32(), &c);
    CHECK(c.is_v32 && c.index_topk == 8 && c.index_head_dim == 32, "v32 fields");
}

static void test_errors(void)
{
    expect_fail("missing key", without(base_v3(), "hidden_size"), DS_ERR_FORMAT, "'hidden_size'");
    expect_fail("null required key", with(base_v3(), "vocab_size", json_null()), DS_ERR_FORMAT,
                "'vocab_size'");
    expect_fail("wrong type", with(base_v3(), "hidden_size", json_string("64")), DS_ERR_FORMAT,
                "'hidden_size'");
    expect_fail("non-integral", with(base_v3(), "kv_lora_rank", json_real(32.5)), DS_ERR_FORMAT,
                "'kv_lora_rank'");
    expect_fail("int out of range", with(base_v3(), "vocab_size", json_integer(1ll << 40)),
                DS_ERR_FORMAT, "'vocab_size'");
    expect_fail("bool type", with(base_v3(), "norm_topk_prob", json_string("yes")), DS_ERR_FORMAT,
                "'norm_topk_prob'");
    expect_fail("float type", with(base_v3(), "rope_theta", json_string("1e4")), DS_ERR_FORMAT,
                "'rope_theta'");
    expect_fail("eos type", with(base_v3(), "eos_token_id", json_string("</s>")), DS_ERR_FORMAT,
                "'eos_token_id'");
    expect_fail("bad model_type", with(base_v3(), "model_type", json_string("deepseek_v2")),
                DS_ERR_UNSUPPORTED, "unsupported model_type 'deepseek_v2' (expected deepseek_v3 or deepseek_v32)");
    expect_fail("no model_type", without(base_v3(), "model_type"), DS_ERR_FORMAT, "'model_type'");
    expect_fail("q_lora null", with(base_v3(), "q_lora_rank", json_null()), DS_ERR_UNSUPPORTED,
                "q_lora_rank null");
    expect_fail("q_lora missing", without(base_v3(), "q_lora_rank"), DS_ERR_FORMAT,
                "'q_lora_rank'");
    expect_fail("v32 missing index_topk", without(base_v32(), "index_topk"), DS_ERR_FORMAT,
                "'index_topk'");
    expect_fail("index_head_dim not pow2", with(base_v32(), "index_head_dim", json_integer(48)),
                DS_ERR_FORMAT, "index_head_dim");
    expect_fail("index_head_dim < rope", with(base_v32(), "index_head_dim", json_integer(4)),
                DS_ERR_FORMAT, "index_head_dim");
    expect_fail("index_topk 0", with(base_v32(), "index_topk", json_integer(0)), DS_ERR_FORMAT,
                "index_topk");

    expect_fail("n_group not dividing", with(base_v3(), "n_group", json_integer(3)),
                DS_ERR_FORMAT, "n_group 3 does not divide n_routed_experts 8");
    json_t *j = with(base_v3(), "n_group", json_integer(2));
    expect_fail("topk_group > n_group", with(j, "topk_group", json_integer(3)), DS_ERR_FORMAT,
                "topk_group");
    j = with(base_v3(), "n_group", json_integer(4));
    with(j, "topk_group", json_integer(1));
    expect_fail("experts beyond groups", with(j, "num_experts_per_tok", json_integer(3)),
                DS_ERR_FORMAT, "num_experts_per_tok");
    expect_fail("experts 0", with(base_v3(), "num_experts_per_tok", json_integer(0)),
                DS_ERR_FORMAT, "num_experts_per_tok");
    expect_fail("moe_layer_freq 0", with(base_v3(), "moe_layer_freq", json_integer(0)),
                DS_ERR_FORMAT, "moe_layer_freq");
    expect_fail("dense > layers", with(base_v3(), "first_k_dense_replace", json_integer(5)),
                DS_ERR_FORMAT, "first_k_dense_replace");
    expect_fail("odd rope dim", with(base_v3(), "qk_rope_head_dim", json_integer(7)),
                DS_ERR_FORMAT, "qk_rope_head_dim");
    expect_fail("zero size", with(base_v3(), "hidden_size", json_integer(0)), DS_ERR_FORMAT,
                "hidden_size");
    expect_fail("negative size", with(base_v3(), "v_head_dim", json_integer(-16)), DS_ERR_FORMAT,
                "v_head_dim");
    expect_fail("huge size", with(base_v3(), "hidden_size", json_integer(1 << 24)), DS_ERR_FORMAT,
                "hidden_size");
    j = with(base_v3(), "num_attention_heads", json_integer(1 << 20));
    expect_fail("huge product", with(j, "qk_nope_head_dim", json_integer(1 << 12)), DS_ERR_FORMAT,
                "num_attention_heads");
    expect_fail("eos >= vocab", with(base_v3(), "eos_token_id", json_integer(1000)), DS_ERR_FORMAT,
                "eos_token_id");
    expect_fail("eps 0", with(base_v3(), "rms_norm_eps", json_real(0)), DS_ERR_FORMAT,
                "rms_norm_eps");

    expect_fail("scoring softmax", with(base_v3(), "scoring_func", json_string("softmax")),
                DS_ERR_UNSUPPORTED, "scoring_func");
    expect_fail("topk greedy", with(base_v3(), "topk_method", json_string("greedy")),
                DS_ERR_UNSUPPORTED, "topk_method");
    expect_fail("rope linear",
                with(base_v3(), "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor", 2.0)),
                DS_ERR_UNSUPPORTED, "rope_scaling type 'linear'");
    expect_fail("rope no type", with(base_v3(), "rope_scaling", json_pack("{s:f}", "factor", 2.0)),
                DS_ERR_FORMAT, "'rope_scaling.type'");
    expect_fail("rope not object", with(base_v3(), "rope_scaling", json_string("yarn")),
                DS_ERR_FORMAT, "'rope_scaling'");
    expect_fail("yarn missing orig",
                with(base_v3(), "rope_scaling", json_pack("{s:s, s:f}", "type", "yarn", "factor", 4.0)),
                DS_ERR_FORMAT, "'rope_scaling.original_max_position_embeddings'");
    expect_fail("yarn factor type",
                with(base_v3(), "rope_scaling", json_pack("{s:s, s:s, s:i}", "type", "yarn", "factor", "4",
                                                          "original_max_position_embeddings", 64)),
                DS_ERR_FORMAT, "'rope_scaling.factor'");
    /* mscale values whose gains would be inf, NaN or negative (the attention
     * would be inf / NaN with no error) */
    static const double bad_ms[][2] = {{1e300, 1}, {1, 1e20}, {-100, 1}, {1, -1e3}};
    for (int k = 0; k < 4; k++)
        expect_fail("yarn mscale gain",
                    with(base_v3(), "rope_scaling",
                         json_pack("{s:s, s:f, s:i, s:f, s:f}", "type", "yarn", "factor", 40.0,
                                   "original_max_position_embeddings", 64, "mscale", bad_ms[k][0],
                                   "mscale_all_dim", bad_ms[k][1])),
                    DS_ERR_FORMAT, "must be finite and positive");
    {
        ds_config c;
        expect_ok("yarn mscale 0.707",
                  with(base_v3(), "rope_scaling",
                       json_pack("{s:s, s:f, s:i, s:f, s:f}", "type", "yarn", "factor", 40.0,
                                 "original_max_position_embeddings", 64, "mscale", 0.707, "mscale_all_dim", 0.707)),
                  &c);
    }
    expect_fail("quant awq",
                with(base_v3(), "quantization_config", json_pack("{s:s}", "quant_method", "awq")),
                DS_ERR_UNSUPPORTED, "quant_method 'awq'");
    expect_fail("quant block 64",
                with(base_v3(), "quantization_config",
                     json_pack("{s:s, s:[i, i]}", "quant_method", "fp8", "weight_block_size", 128, 64)),
                DS_ERR_UNSUPPORTED, "[128, 64]");
    expect_fail("quant no block",
                with(base_v3(), "quantization_config", json_pack("{s:s}", "quant_method", "fp8")),
                DS_ERR_FORMAT, "'quantization_config.weight_block_size'");
    expect_fail("quant scale_fmt",
                with(base_v3(), "quantization_config",
                     json_pack("{s:s, s:[i, i], s:s}", "quant_method", "fp8", "weight_block_size",
                               128, 128, "scale_fmt", "e8m0fnu")),
                DS_ERR_UNSUPPORTED, "scale_fmt 'e8m0fnu'");
    expect_fail("not an object", json_pack("[i]", 1), DS_ERR_FORMAT, "not a JSON object");

    ds_config c;
    ds_error e = {0};
    write_text(cfg_path, "{\"model_type\": ");
    ds_status s = ds_config_load(cfg_path, &c, &e);
    CHECK(s == DS_ERR_FORMAT && strstr(e.msg, "config.json") && strstr(e.msg, "invalid JSON"),
          "bad JSON: %d %s", s, e.msg);
    unlink(cfg_path);
    s = ds_config_load(cfg_path, &c, &e);
    CHECK(s == DS_ERR_IO && strstr(e.msg, "config.json"), "missing file: %d %s", s, e.msg);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/dsinfer-cfg-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror(tmpdir);
        return 2;
    }
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", tmpdir);
    test_tiny_dsa();
    test_defaults();
    test_errors();
    unlink(cfg_path);
    rmdir(tmpdir);
    if (failures) {
        fprintf(stderr, "test_config: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_config: all passed\n");
    return 0;
}
