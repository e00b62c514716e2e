/* indexer_gpu.h — optional CUDA offload of the DSA lightning indexer's
 * scoring and top-k selection (built only with ./configure --with-cuda,
 * which defines DS_HAVE_CUDA).
 *
 * Division of work: the CPU still computes the index keys and queries
 * (indexer.c already has them, FP8-quantised); the GPU keeps a copy of the
 * FP8 index-key cache per context and layer, scores every cached key for
 * each query and selects the top-k positions.  Only the selected positions
 * (and, when a trace hook wants them, the scores) come back to the host.
 *
 * Bit-exactness contract (so the GPU and CPU paths are interchangeable
 * mid-sequence and conformance dumps do not change):
 *   dot(q, k) = (float)((double)S * 2^-18), S = sum_d e4m3i(q[d]) * e4m3i(k[d])
 *               exactly in 64-bit integers, e4m3i(x) = e4m3 value * 512;
 *   s = 0; for h in head order: if dot > 0: s = s + w[h] * dot   (each op
 *               rounded to f32 separately, never fused into an FMA);
 *   score = s * key_scale (one f32 rounding).
 * Top-k: the k = min(topk, n) largest scores of keys 0..n-1; among equal
 * scores the lower position wins (+0 and -0 are equal); the positions are
 * written ascending.  This is exactly ds_topk_positions()'s rule. */
#ifndef DS_INDEXER_GPU_H
#define DS_INDEXER_GPU_H

#include <stdint.h>
#include "dsinfer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_gpu_indexer ds_gpu_indexer;

/* GPU state of one context: key cache for `layers` x `ctx_size` positions
 * of `head_dim` e4m3 bytes + one f32 scale, and work buffers for queries of
 * `n_heads` heads.  Returns NULL and fills err when there is no usable GPU
 * (no device, no driver, out of device memory, unsupported shape). */
ds_gpu_indexer *ds_gpu_indexer_create(int layers, int ctx_size, int head_dim, int n_heads, ds_error *err);
void ds_gpu_indexer_free(ds_gpu_indexer *g);

/* The host cache of `layer` (k8_all: the codes in tiles of 16 positions,
 * simd/index_tiles.h; ks_all: [ctx]) was just written at positions
 * [start, end).  The device keeps them as rows [ctx][head_dim].  Uploads them, plus any
 * positions below start that the GPU has not seen yet (its copy is valid
 * for a contiguous prefix of positions). */
ds_status ds_gpu_indexer_sync_keys(ds_gpu_indexer *g, int layer, const uint8_t *k8_all, const float *ks_all,
                                   int start, int end, ds_error *err);

/* Scores and selects for T queries at positions start..start+T-1: query t
 * sees keys 0..start+t (causal).  q8: [T][n_heads][head_dim] e4m3, w:
 * [T][n_heads] head weights already scaled as in indexer.c.  Writes the
 * min(topk, start+t+1) selected positions ascending to sel + t*sel_stride and
 * their count to nsel[t].  When scores is non-NULL it also receives the raw
 * scores: row t at scores + t*(start+T), start+t+1 values. */
ds_status ds_gpu_indexer_select(ds_gpu_indexer *g, int layer, const uint8_t *q8, const float *w, int T,
                                int start, int topk, int32_t *sel, int *nsel, int sel_stride,
                                float *scores, ds_error *err);

/* Host-side emulation of the device code paths, sharing their per-key
 * scoring function and key ordering, for tests on machines without a GPU. */
int ds_gpu_indexer_check_e4m3(void);    /* 0 when the device decoder matches ds_e4m3_table */
float ds_gpu_indexer_emulate_score(const uint8_t *q8, const float *w, int n_heads, int head_dim,
                                   const uint8_t *k8, float ks);
int ds_gpu_indexer_emulate_topk(const float *score, int n, int k, int32_t *out);

#ifdef __cplusplus
}
#endif

#endif
