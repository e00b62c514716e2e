/* config.h — the model hyper-parameters read from an HF config.json. */
#ifndef DS_CONFIG_H
#define DS_CONFIG_H

#define DS_MAX_ROPE 256   /* largest qk_rope_head_dim (stack buffers of rope keys) */

#include "dsinfer.h"

typedef struct ds_config {
    char model_type[32];         /* "deepseek_v3" | "deepseek_v32" */
    int is_v32;                  /* has the DSA lightning indexer */
    int vocab_size;
    int hidden_size;
    int intermediate_size;       /* dense MLP */
    int moe_intermediate_size;   /* per routed / shared expert */
    int num_hidden_layers;
    int first_k_dense_replace;
    int moe_layer_freq;
    int num_attention_heads;
    int n_routed_experts;
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group, topk_group;
    float routed_scaling_factor;
    int norm_topk_prob;
    int q_lora_rank;
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int index_n_heads, index_head_dim, index_topk;   /* 0 when !is_v32 */
    float rms_norm_eps;
    double rope_theta;
    int yarn;                    /* rope_scaling.type == "yarn" */
    double rope_factor, beta_fast, beta_slow, mscale, mscale_all_dim;
    int original_max_position_embeddings;
    int max_position_embeddings;
    int bos_token_id, eos_token_id;
    int scale_ue8m0;             /* quantization_config.scale_fmt == "ue8m0" */
    int fp8_block;               /* weight_block_size (must be 128 x 128); 0 if unquantised */
    int tie_word_embeddings;
    int num_nextn_predict_layers;
} ds_config;

/* Parses and validates DIR/config.json (path is the file). Errors name the
 * file and the key. */
ds_status ds_config_load(const char *path, ds_config *cfg, ds_error *err);
/* The same from config.json's text (name: what messages call it), for
 * dsinfer-mkmodel to refuse a config before writing a checkpoint. */
ds_status ds_config_parse(const char *text, size_t len, const char *name, ds_config *cfg, ds_error *err);

/* A checkpoint's JSON file (config, index, tokenizer) into *root, parsed
 * with jansson flags; DS_ERR_IO when it cannot be read or is not a regular
 * file (a FIFO is refused, not waited on), DS_ERR_FORMAT when it is empty
 * or not JSON, the message naming the file. */
struct json_t;

/* rope.c: YaRN's magnitude factor 0.1 mscale ln(factor) + 1 (1 when
 * factor <= 1), as the float the kernels take; ds_config_check keeps every
 * one a config yields finite and positive. */
float ds_yarn_mscale(double factor, double mscale);
ds_status ds_json_file_load(const char *path, size_t flags, struct json_t **root, ds_error *err);
/* Validation of relations between fields (positive sizes, groups divide
 * experts, ...); called by ds_config_load, exposed for tests. */
ds_status ds_config_check(const ds_config *cfg, const char *path, ds_error *err);
/* Whether layer l uses routed experts. */
int ds_config_is_moe_layer(const ds_config *cfg, int l);

#endif
