/* model.h — internal structures of the DeepSeek forward pass: the bound
 * weights of every layer, the per-sequence context with its KV arena, and
 * the functions of each model concept (one file each: mla.c, indexer.c,
 * router.c, moe.c, rope.c, kvcache.c, expert_cache.c). */
#ifndef DS_MODEL_H
#define DS_MODEL_H

#include <stdint.h>
#include "dsinfer.h"
#include "config.h"
#include "format.h"
#include "kernels.h"

/* gate (w1), up (w3), down (w2) of a SwiGLU MLP: dense MLP, expert or shared expert. */
typedef struct ds_ffn_w {
    ds_mat gate, up, down;
} ds_ffn_w;

typedef struct ds_layer_w {
    float *attn_norm, *ffn_norm;
    /* MLA */
    ds_mat q_a, q_b, kv_a, kv_b, o;
    float *q_a_norm, *kv_a_norm;
    /* DSA lightning indexer (V3.2 only) */
    ds_mat idx_wq_b, idx_wk, idx_wproj;
    float *idx_k_norm_w, *idx_k_norm_b;
    /* FFN */
    int is_moe;
    ds_ffn_w mlp;          /* dense layers */
    ds_mat gate;           /* router [experts, hidden] */
    float *gate_bias;      /* e_score_correction_bias [experts] */
    int has_shared;
    ds_ffn_w shared;
} ds_layer_w;

/* Owner of the routed experts (DESIGN decision 2).  Today every slab is a
 * resident view of the mapped checkpoint; streaming slabs come later behind
 * the same get/release pair. */
typedef struct ds_expert_cache ds_expert_cache;
ds_status ds_experts_create(ds_model *m, const ds_load_params *p, ds_expert_cache **out, ds_error *err);
void ds_experts_free(ds_expert_cache *c);
/* Returns the weights of expert e of layer l, pinned until released. */
const ds_ffn_w *ds_experts_get(ds_expert_cache *c, int layer, int e, ds_error *err);
void ds_experts_release(ds_expert_cache *c, int layer, int e);
/* Starts reading the listed experts of a layer (the ones the router chose)
 * so reads overlap compute; pins what it loads until ds_experts_release.
 * Sets used[i] when expert i was pinned here.  Never blocks on I/O. */
void ds_experts_prefetch(ds_expert_cache *c, int layer, const int32_t *experts, int n, char *pinned);
/* A hint: the router of `layer` (the next layer) would choose these
 * experts; read them ahead if there is room, without pinning. */
void ds_experts_predict(ds_expert_cache *c, int layer, const int32_t *experts, int n);
/* The experts a layer actually used, for prediction accuracy. */
void ds_experts_observe(ds_expert_cache *c, int layer, const int32_t *experts, int n);
void ds_experts_stats(ds_expert_cache *c, ds_expert_stats *s);
/* 1 when slabs are streamed from disk, 0 when every expert is resident. */
int ds_experts_streaming(const ds_expert_cache *c);

struct ds_model {
    ds_config cfg;
    ds_model_info info;
    ds_tensor_table *table;
    char *dir;
    ds_mat embed, lm_head;
    float *final_norm;
    ds_layer_w *layers;
    ds_expert_cache *experts;
    struct ds_numa *numa;  /* placement plan; NULL when NUMA placement is off */
    int pin_threads;       /* pin each stepping thread's OpenMP team to cores */
    float *rope_freq;      /* [qk_rope_head_dim / 2] YaRN-corrected frequencies */
    float rope_mscale;     /* cos/sin multiplier (HF YaRN attention factor; 1 for DeepSeek configs) */
    float attn_scale;      /* MLA softmax scale incl. YaRN mscale^2 */
    void **owned;          /* buffers to free with the model */
    int n_owned, cap_owned;
    struct ds_node_mem { void *p; size_t len; } *node_mem;  /* per-node weight copies */
    int n_node_mem, numa_replicas;
    int64_t replica_bytes;
    int64_t *layer_bytes;  /* [layers + 1] bytes a decoded token reads per block (+ head) */
    int64_t expert_bytes;  /* routed experts of the layers that run */
    int weights_in_ram;    /* the checkpoint was copied into process memory */
    int64_t dense_copy_bytes;  /* dense matrices copied into RAM by ds_weights_dense_to_ram */
};

/* Per-layer KV arena slices. */
typedef struct ds_kv_layer {
    float *latent_f32;     /* [ctx][kv_lora] when DS_KV_F32 */
    uint8_t *latent_q;     /* [ctx][kv_lora] e4m3 when DS_KV_FP8 */
    float *latent_s;       /* [ctx][kv_lora/128 rounded up] scales */
    float *kpe;            /* [ctx][rope] rotated rope key (f32 layouts) */
    uint16_t *kpe_bf16;    /* [ctx][rope] the same in bf16 (DS_KV_FP8_COMPACT) */
    uint8_t *idx_k;        /* e4m3 codes in tiles of 16 positions (simd/index_tiles.h) */
    float *idx_s;          /* [ctx] */
} ds_kv_layer;

struct ds_context {
    ds_model *model;
    int ctx_size, pos;
    ds_kv_type kv_type;
    ds_precision precision;    /* of the weight products (ds_matmul) */
    void *arena;
    size_t arena_bytes;
    int kv_locked;             /* the arena is mlock'ed */
    ds_kv_layer *kv;
    ds_trace_fn trace;
    void *trace_user;
    /* Optional GPU lightning indexer (indexer_gpu.h; --with-cuda builds). */
    void *gpu_idx;             /* ds_gpu_indexer *, NULL = CPU indexer */
    int gpu_idx_failed;        /* GPU requested but unavailable or failed: CPU from now on */
    char gpu_idx_note[640];    /* the one warning for tools to print ("" = none) */
    void *idx_scratch;         /* the CPU indexer's decode-step buffers (scores, query, key blocks) */
    size_t idx_scratch_bytes;
};

/* A weight product of a step: ds_gemm_bf16 when the step runs in bf16
 * (bf16 != 0), whatever its size, so a token's result does not depend on
 * how many tokens share its step (beyond f32 summation order); else the
 * exact ds_gemm. */
static inline void ds_matmul(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy,
                             int bf16)
{
    if (bf16)
        ds_gemm_bf16(m, r0, nrows, X, ldx, n, Y, ldy);
    else
        ds_gemm(m, r0, nrows, X, ldx, n, Y, ldy);
}

/* ds_matmul of several parts with the same n tokens (ds_gemm_bf16_parts:
 * one region for all of them on the streaming kernel). */
static inline void ds_matmul_parts(const ds_gemm_part *p, int np, int n, int bf16)
{
    if (bf16) {
        ds_gemm_bf16_parts(p, np, n);
        return;
    }
    for (int i = 0; i < np; i++)
        ds_gemm(p[i].m, p[i].r0, p[i].nrows, p[i].X, p[i].ldx, n, p[i].Y, p[i].ldy);
}

/* weights.c */
ds_status ds_weights_bind(ds_model *m, ds_error *err);
ds_status ds_weights_bind_expert(ds_model *m, int layer, int e, ds_ffn_w *w, ds_error *err);
void *ds_model_own(ds_model *m, size_t bytes, ds_error *err);
/* --numa replicate: one copy of every dense matrix in each node's memory. */
ds_status ds_weights_replicate(ds_model *m, ds_error *err);
/* Copies the dense matrices out of the mapped files into huge-page memory
 * (used when experts stream and the checkpoint stays mapped). */
ds_status ds_weights_dense_to_ram(ds_model *m, ds_error *err);
void ds_weights_free_replicas(ds_model *m);

/* rope.c */
ds_status ds_rope_init(ds_model *m, ds_error *err);
void ds_yarn_freqs(const ds_config *cfg, float *freq);
void ds_rope_interleaved(float *x, int dim, int pos, const float *freq, float mscale);
void ds_rope_halves(float *x, int dim, int pos, const float *freq, float mscale);

/* kvcache.c */
ds_status ds_kv_alloc(ds_context *c, ds_error *err);
void ds_kv_free(ds_context *c);
void ds_kv_store_latent(ds_context *c, int layer, int pos, const float *latent);
void ds_kv_load_latent(const ds_context *c, int layer, int pos, float *out);
void ds_kv_store_rope(ds_context *c, int layer, int pos, const float *kpe);
/* Starts reading the latent, its scales and the rope key of pos into the
 * cache (sparse attention gathers scattered positions; without it each
 * row arrives at memory latency). */
void ds_kv_prefetch(const ds_context *c, int layer, int pos);
/* The layer's cached keys as ds_attn_scores / ds_attn_wsum read them. */
void ds_kv_attn_keys(const ds_context *c, int layer, ds_attn_keys *k);
/* The rope key at pos: a pointer into the arena, or (bf16 layout) tmp[rope]
 * filled with its f32 values. */
const float *ds_kv_rope(const ds_context *c, int layer, int pos, float *tmp);

/* FP8 block quantisation shared by the latent cache and the indexer:
 * amax = max(max|v|, 1e-4), s = amax * fp32(1/448) (rounded up to a power
 * of two with ue8m0), q = e4m3(clamp(v / s)).  n <= 128. */
float ds_quant_e4m3_block(const float *v, int n, int ue8m0, uint8_t *q);

/* indexer.c: the indexer's projections of all T rows of a step (x: the
 * normed hidden rows, qr: the normed q_a outputs), in bf16 when bf16 != 0
 * (ds_matmul): one product per weight for every sequence of the step. */
typedef struct ds_index_proj {
    float *k;      /* [T][2 * head_dim]: the key, then scratch */
    float *q;      /* [T][heads * head_dim] */
    float *w;      /* [T][heads] head weights */
} ds_index_proj;
ds_status ds_indexer_project(const ds_model *m, int layer, const float *x, const float *qr, int T, int bf16,
                             ds_index_proj *p, ds_error *err);
/* The same products of a bf16 step as parts of MLA's grouped ones
 * (ds_matmul_parts): of_x[0..1] read x (key, head weights), *of_qr the
 * normalised q_a output (query); allocates p's buffers, computes nothing. */
ds_status ds_indexer_parts(const ds_model *m, int layer, const float *x, const float *qr, int T, ds_index_proj *p,
                           ds_gemm_part of_x[2], ds_gemm_part *of_qr, ds_error *err);
void ds_index_proj_free(ds_index_proj *p);
/* One sequence's rows [row, row + T) of p (used up: rotated and scaled in
 * place), at cache positions [start, start + T): caches their index keys
 * and returns for each row the selected key positions (ascending) in
 * sel[t * sel_stride ...] with counts nsel[t]. */
ds_status ds_indexer_run(ds_context *c, int layer, ds_index_proj *p, int row, int T, int start, int32_t *sel,
                         int *nsel, int sel_stride, ds_error *err);
/* The scoring and selection half of ds_indexer_run (keys of positions
 * < start + T already cached): q8 [T][heads][head_dim] e4m3 queries, w
 * [T][heads] their head weights with the query scales folded in.  Query t
 * sees keys [0, start + t]; scores go to the trace hook.  Exposed for unit
 * tests. */
ds_status ds_indexer_select(ds_context *c, int layer, const uint8_t *q8, const float *w, int T, int start,
                            int32_t *sel, int *nsel, int sel_stride, ds_error *err);
/* Positions of the k largest scores among n, ascending; ties prefer the
 * lower position.  Exposed for unit tests. */
int ds_topk_positions(const float *score, int n, int k, int32_t *out);
/* The indexer's FP8 dot of two e4m3 vectors, exact and rounded once to f32:
 * the reference (int64) form and the vectorised f64 form the indexer uses
 * (bit-identical for n <= 256; tests compare them). */
float ds_index_dot_ref(const uint8_t *a, const uint8_t *b, int n);
float ds_index_dot_fast(const uint8_t *a, const uint8_t *b, int n);

/* mla.c: the attention block over one step: projections for all T tokens
 * together, indexer and attention per sequence (rows [off, off+n) of the
 * step at cache positions [start, start+n)), output projection together. */
typedef struct ds_mla_seq {
    ds_context *ctx;
    int start, n, off;
} ds_mla_seq;
ds_status ds_mla_forward(const ds_mla_seq *seqs, int n_seqs, int layer, const float *x, int T,
                         int bf16, float *out, ds_error *err);

/* router.c: noaux_tc group-limited sigmoid routing of one token.  Writes
 * k experts ascending and their weights.  Exposed for unit tests. */
typedef struct ds_router_params {
    int n_experts, n_group, topk_group, k;
    float scale;
    int norm;
} ds_router_params;
void ds_route(const ds_router_params *p, const float *logits, const float *bias,
              int32_t *experts, float *weights);

/* The sequence and position of one token of a batch (for traces). */
typedef struct ds_tok_ref {
    const ds_context *ctx;
    int pos;
} ds_tok_ref;

/* moe.c: FFN block (dense MLP or routed experts + shared expert) over the
 * tokens of every sequence of a batch at once, so each expert's weights are
 * read once per step. */
ds_status ds_ffn_forward(const ds_model *m, int layer, const float *x, int T, const ds_tok_ref *tr,
                         int bf16, float *out, ds_error *err);

/* model.c: one step over the tokens of several sequences (ds_batch_item in
 * dsinfer.h); every context must belong to the same model. */
ds_status ds_forward(const ds_batch_item *items, int n_items, ds_error *err);

#endif
