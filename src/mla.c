/* mla.c — Multi-head Latent Attention.  Projections (q LoRA, compressed
 * latent + shared rope key), cache writes, then attention over the key
 * positions the indexer selected (all causal keys for V3 / short contexts):
 * prefill in the expanded "MHA" form (k_nope and v from kv_b per key),
 * decode in the absorbed form directly over the cached latent.  Only
 * selected keys are ever touched. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"
#include "worksplit.h"

typedef struct mla_dims {
    int H, nh, nope, rope, vd, kvl, ql, qk, kvb_rows;
} mla_dims;

static mla_dims dims_of(const ds_config *c)
{
    mla_dims d = {c->hidden_size, c->num_attention_heads, c->qk_nope_head_dim, c->qk_rope_head_dim,
                  c->v_head_dim, c->kv_lora_rank, c->q_lora_rank, 0, 0};
    d.qk = d.nope + d.rope;
    d.kvb_rows = d.nope + d.vd;
    return d;
}

static int key_at(const int32_t *sel, int i) { return sel ? sel[i] : i; }

static void report_rows(ds_context *c, int layer, int pos, int rows)
{
    if (c->trace)
        c->trace(c->trace_user, DS_TRACE_ATTN_ROWS, layer, pos, &rows, 1);
}

/* Keys of the absorbed attention handled at once: their f32 latents
 * (KEY_CHUNK x kv_lora, 1 MiB at kv_lora 512, half of it loaded by each
 * of two threads) stay in cache between the score and the sum passes.
 * 512 was the fastest of 256 / 512 / 1024 / 2048 at 2K keys on mid. */
#define KEY_CHUNK 512

/* lat[i] = latent of key key_at(sel, k0 + i), kr[i] = its rope key, i < n;
 * keys decoded in parallel. */
static void load_keys(const ds_context *c, int layer, const int32_t *sel, int k0, int n, const mla_dims *d,
                      float *lat, float *kr)
{
#pragma omp parallel for schedule(static) if (n >= 32)
    for (int i = 0; i < n; i++) {
        const int j = key_at(sel, k0 + i);
        if (sel && i + 8 < n)   /* selected keys are scattered: fetch ahead */
            ds_kv_prefetch(c, layer, key_at(sel, k0 + i + 8));
        ds_kv_load_latent(c, layer, j, lat + (size_t)i * d->kvl);
        if (kr) {
            float kt[DS_MAX_ROPE];
            memcpy(kr + (size_t)i * d->rope, ds_kv_rope(c, layer, j, kt), sizeof(float) * (size_t)d->rope);
        }
    }
}

/* latT[c * n + i] = lat[i * kvl + c]: a chunk's latents transposed, so the
 * weighted sum over its keys is one product with the keys as the columns.
 * In 16 x 16 tiles, so every cache line read or written is used whole;
 * latent columns split across the threads. */
#define TR_TILE 16

static void transpose_latents(const float *lat, int n, int kvl, float *latT)
{
#pragma omp parallel for schedule(static) if (n >= 32)
    for (int c0 = 0; c0 < kvl; c0 += TR_TILE) {
        const int c1 = c0 + TR_TILE < kvl ? c0 + TR_TILE : kvl;
        for (int i0 = 0; i0 < n; i0 += TR_TILE) {
            const int i1 = i0 + TR_TILE < n ? i0 + TR_TILE : n;
            for (int c = c0; c < c1; c++)
                for (int i = i0; i < i1; i++)
                    latT[(size_t)c * n + i] = lat[(size_t)i * kvl + c];
        }
    }
}

/* Scores of every head against the chunk of keys k0 .. k0 + n - 1 (latents
 * in lat, rope keys in kr): two GEMMs with the keys as the matrix rows and
 * the heads as the tokens; the latent part goes to p, the rope part to sr
 * (both [nh][nk]). */
static void chunk_scores(const float *qabs, const float *q, const mla_dims *d, const float *lat, const float *kr,
                         int k0, int n, int nk, float *p, float *sr)
{
    const ds_mat lm = {DS_DT_F32, n, d->kvl, lat, NULL, NULL, 0}, rm = {DS_DT_F32, n, d->rope, kr, NULL, NULL, 0};
    ds_gemm(&lm, 0, n, qabs, d->kvl, d->nh, p + k0, nk);
    ds_gemm(&rm, 0, n, q + d->nope, d->qk, d->nh, sr + k0, nk);
}

/* p[h] = softmax((p[h] + sr[h]) * scale) for every head, heads split across
 * the threads (one pass over each head's row after all chunks are scored). */
static void scores_softmax(float *p, const float *sr, int nh, int nk, float scale)
{
#pragma omp parallel for schedule(static)
    for (int h = 0; h < nh; h++) {
        float *ph = p + (size_t)h * nk;
        const float *rh = sr + (size_t)h * nk;
        for (int i = 0; i < nk; i++)
            ph[i] = (ph[i] + rh[i]) * scale;
        ds_softmax(ph, nk);
    }
}

/* olat[h] += sum_i p[h][k0 + i] * latent_i over the chunk's n keys, every
 * head at once: the heads' probability rows times the latents ([n][kvl])
 * in one product (ds_gemm_tn_f32, each thread over the keys it loaded);
 * where the kernel level has no such form, the latents are transposed
 * into latT ([kvl][n]) for ds_gemm with the heads as the tokens.  The
 * first chunk writes olat, later ones go through tmp and are added. */
static void chunk_weighted_sum(const float *p, int nk, int k0, int n, const mla_dims *d, const float *lat,
                               float *latT, float *tmp, float *olat, int first)
{
    float *y = first ? olat : tmp;
    if (!ds_gemm_tn_f32(lat, n, d->kvl, p + k0, nk, d->nh, y, d->kvl)) {
        const ds_mat lt = {DS_DT_F32, d->kvl, n, latT, NULL, NULL, 0};
        transpose_latents(lat, n, d->kvl, latT);
        ds_gemm(&lt, 0, d->kvl, p + k0, nk, d->nh, y, d->kvl);
    }
    if (first)
        return;
    for (size_t i = 0; i < (size_t)d->nh * d->kvl; i++)
        olat[i] += tmp[i];
}

/* olat[h] = sum over the nk keys of softmax(scores)[h][i] * latent_i for
 * every head, the keys gathered in chunks: scores for all heads are two
 * GEMMs (latent and rope parts, keys as the matrix rows, heads as the
 * tokens), the weighted sums one GEMM per chunk (transposed latents as the
 * matrix, heads as the tokens), so the work is spread over the threads in
 * whole tiles; memory stays bounded for V3's dense attention over long
 * contexts.  The form for kernel levels without ds_attn_fast. */
static ds_status latent_sum_gathered(ds_context *c, int layer, const mla_dims *dp, const float *q, const float *qabs,
                                     const int32_t *sel, int nk, float *olat, ds_error *err)
{
    const mla_dims d = *dp;
    const int ch = nk < KEY_CHUNK ? nk : KEY_CHUNK;
    /* every buffer is written before it is read: no zeroing (a few hundred
     * KiB per layer and token at 2K keys) */
    const int tn = ds_gemm_tn_fast();
    float *p = malloc(sizeof(float) * (size_t)d.nh * nk);
    float *sr = malloc(sizeof(float) * (size_t)d.nh * nk);
    float *tmp = nk > ch ? malloc(sizeof(float) * (size_t)d.nh * d.kvl) : NULL;
    float *lat = malloc(sizeof(float) * (size_t)ch * d.kvl);
    float *latT = tn ? NULL : malloc(sizeof(float) * (size_t)ch * d.kvl);
    float *kr = malloc(sizeof(float) * (size_t)ch * d.rope);
    if (!p || !sr || (nk > ch && !tmp) || !lat || (!tn && !latT) || !kr) {
        free(p), free(sr), free(tmp), free(lat), free(latT), free(kr);
        return ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
    }
    for (int k0 = 0; k0 < nk; k0 += ch) {
        const int n = nk - k0 < ch ? nk - k0 : ch;
        load_keys(c, layer, sel, k0, n, &d, lat, kr);
        chunk_scores(qabs, q, &d, lat, kr, k0, n, nk, p, sr);
    }
    scores_softmax(p, sr, d.nh, nk, c->model->attn_scale);
    for (int k0 = 0; k0 < nk; k0 += ch) {
        const int n = nk - k0 < ch ? nk - k0 : ch;
        if (nk > ch)                      /* one chunk: its latents are still there */
            load_keys(c, layer, sel, k0, n, &d, lat, NULL);
        chunk_weighted_sum(p, nk, k0, n, &d, lat, latT, tmp, olat, k0 == 0);
    }
    free(p), free(sr), free(tmp), free(lat), free(latT), free(kr);
    return DS_OK;
}

/* The same straight over the cache (ds_attn_scores / _softmax / _wsum):
 * no f32 copy of the keys.  The keys go in blocks: the threads claim
 * blocks to score (worksplit.h: contiguous shares, a thread done early
 * takes from another's), one thread per head block takes the softmax, and
 * each thread sums the latents of the blocks it scored (still in its
 * cache) into one partial per block.  The partials are added in block
 * order, so the result does not depend on which thread took which block,
 * and a slower core takes fewer. */
enum { ATTN_BLOCK_MIN = 256, ATTN_BLOCKS_PER_THREAD = 4 };

typedef struct fused_job {
    const ds_attn_keys *keys;
    const int32_t *sel;
    const float *qp;
    float *s, *part;
    int *owner;
    ds_split *split;
    size_t part_floats;
    int nk, nhb, nblk, bk;
    float scale;
} fused_job;

static void fused_scores(const fused_job *j, int t)
{
    for (int g, k; (k = ds_split_next(j->split, t, 1, &g)) > 0;) {
        const int i0 = g * j->bk, i1 = i0 + j->bk < j->nk ? i0 + j->bk : j->nk;
        if (i1 > i0)
            ds_attn_scores(j->keys, j->sel ? j->sel + i0 : NULL, i0, i1 - i0, j->qp, j->nhb, j->s + (size_t)i0 * 16,
                           j->nk);
        j->owner[g] = t;
    }
}

static void fused_wsum(const fused_job *j, int t)
{
    for (int g = 0; g < j->nblk; g++) {
        const int i0 = g * j->bk, i1 = i0 + j->bk < j->nk ? i0 + j->bk : j->nk;
        if (j->owner[g] == t)   /* an empty block's partial is written as zeros */
            ds_attn_wsum(j->keys, j->sel ? j->sel + i0 : NULL, i0, i1 > i0 ? i1 - i0 : 0, j->s + (size_t)i0 * 16,
                         j->nhb, j->nk, j->part + (size_t)g * j->part_floats);
    }
}

/* The partials from x on, in block order, into block 0's. */
static void fused_add(const fused_job *j, size_t x)
{
    for (int g = 1; g < j->nblk; g++)
        ds_axpy(1.0f, j->part + (size_t)g * j->part_floats + x, j->part + x, 256);
}

/* One thread's part of latent_sum_fused, inside its region. */
static void fused_team(const fused_job *j)
{
    const int t = omp_get_thread_num();
    fused_scores(j, t);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int b = 0; b < j->nhb; b++)
        ds_attn_softmax(j->s + (size_t)b * j->nk * 16, j->nk, 1, j->nk, j->scale);
    fused_wsum(j, t);
#pragma omp barrier
#pragma omp for schedule(static)
    for (size_t x = 0; x < j->part_floats; x += 256)
        fused_add(j, x);
}

/* The same for one thread, without a region (entering one costs 1.5 us
 * even under if (0)) and without worksharing constructs, which inside
 * another region (sequences attended in parallel) would bind to its
 * team. */
static void fused_alone(const fused_job *j)
{
    fused_scores(j, 0);
    for (int b = 0; b < j->nhb; b++)
        ds_attn_softmax(j->s + (size_t)b * j->nk * 16, j->nk, 1, j->nk, j->scale);
    fused_wsum(j, 0);
    for (size_t x = 0; x < j->part_floats; x += 256)
        fused_add(j, x);
}

static ds_status latent_sum_fused(ds_context *c, int layer, const mla_dims *d, const float *q, const float *qabs,
                                  const int32_t *sel, int nk, float *olat, ds_error *err)
{
    ds_attn_keys keys;
    ds_kv_attn_keys(c, layer, &keys);
    const int nhb = (d->nh + DS_ATTN_HB - 1) / DS_ATTN_HB, nc = (d->kvl + 15) / 16;
    /* team: the threads a lone sequence's keys split across; one thread
     * works alone inside another region (sequences attended in parallel)
     * but on the same blocks, so its sums are the lone sequence's */
    const int team = nk >= 64 ? omp_get_max_threads() : 1;
    /* blocks of at least ATTN_BLOCK_MIN keys, a few per thread (each one
     * partial of nhb * nc * 256 floats) */
    int nblk = (nk + ATTN_BLOCK_MIN - 1) / ATTN_BLOCK_MIN;
    nblk = nblk < ATTN_BLOCKS_PER_THREAD * team ? nblk : ATTN_BLOCKS_PER_THREAD * team;
    nblk = nblk > 0 ? nblk : 1;
    /* a single block is one thread's work: a team would only wait on it */
    const int nt = omp_in_parallel() || nblk == 1 ? 1 : team;
    const int bk = (nk + nblk - 1) / nblk;
    const size_t part_floats = (size_t)nhb * nc * 256;
    /* 64-byte aligned, not zeroed: ds_attn_pack_q and ds_attn_wsum write
     * every float (both are multiples of 256 floats) */
    float *qp = aligned_alloc(64, sizeof(float) * ds_attn_q_floats(d->nh, d->kvl, d->rope));
    float *s = malloc(sizeof(float) * (size_t)nhb * nk * 16);
    float *part = aligned_alloc(64, sizeof(float) * part_floats * (size_t)nblk);
    int *owner = malloc(sizeof(int) * (size_t)nblk);
    ds_split *split = ds_split_begin(nt, nblk);
    if (!qp || !s || !part || !owner || !split) {
        free(qp), free(s), free(part), free(owner);
        return ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
    }
    ds_attn_pack_q(qabs, d->kvl, q + d->nope, d->qk, d->nh, d->kvl, d->rope, qp);
    const fused_job job = {&keys, sel, qp, s, part, owner, split, part_floats, nk, nhb, nblk, bk, c->model->attn_scale};
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        fused_team(&job);
    } else
        fused_alone(&job);
    for (int h = 0; h < d->nh; h++)   /* 16 contiguous columns of head h */
        for (int cc = 0; cc < nc; cc++) {
            const int w = d->kvl - 16 * cc < 16 ? d->kvl - 16 * cc : 16;
            memcpy(olat + (size_t)h * d->kvl + 16 * cc, part + (((size_t)(h / 16) * nc + cc) * 16 + h % 16) * 16,
                   sizeof(float) * (size_t)w);
        }
    free(qp), free(s), free(part), free(owner);
    return DS_OK;
}

/* Absorbed attention of one query over nk keys: q_nope is folded through
 * W_UK so scores are taken against the latent itself, and the weighted
 * latent sum is expanded through W_UV once per head. */
static ds_status attend_absorbed(ds_context *c, int layer, const float *q, const float *qabs_in, int pos,
                                 const int32_t *sel, int nk, float *o, float *olat_out, ds_error *err)
{
    const ds_model *m = c->model;
    const ds_layer_w *L = &m->layers[layer];
    const mla_dims d = dims_of(&m->cfg);
    float *own_qabs = qabs_in ? NULL : malloc(sizeof(float) * (size_t)d.nh * d.kvl);
    const float *qabs = qabs_in ? qabs_in : own_qabs;
    float *olat = olat_out ? olat_out : malloc(sizeof(float) * (size_t)d.nh * d.kvl);
    float *own = olat_out ? NULL : olat;     /* olat_out is the caller's */
    if (!qabs || !olat) {
        free(own_qabs), free(own);
        return ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
    }
    /* heads one at a time to whichever thread is free: a slower core
     * takes fewer */
    if (own_qabs)
#pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < d.nh; h++)
            ds_gemv_t(&L->kv_b, h * d.kvb_rows, d.nope, q + (size_t)h * d.qk, own_qabs + (size_t)h * d.kvl);
    ds_status st = ds_attn_fast() ? latent_sum_fused(c, layer, &d, q, qabs, sel, nk, olat, err)
                                  : latent_sum_gathered(c, layer, &d, q, qabs, sel, nk, olat, err);
    if (st == DS_OK && !olat_out)   /* else the caller projects several sequences' at once */
#pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < d.nh; h++)
            ds_gemv(&L->kv_b, h * d.kvb_rows + d.nope, d.vd, olat + (size_t)h * d.kvl, o + (size_t)h * d.vd);
    if (st == DS_OK)
        report_rows(c, layer, pos, nk);
    free(own_qabs), free(own);
    return st;
}

/* The expanded attention as two GEMMs per head when most (query, key)
 * pairs are selected (prefill over dense or nearly dense keys): scores of
 * every query against every key in keys[0..nu) (k_nope from kvb, rope key
 * from the cache, gathered into one contiguous [nu][qk] matrix), softmax
 * over each query's own selection (others weigh 0), then the weighted sum
 * of the values as P [T][nu] times V [nu][vd] (V transposed so it is the
 * matrix), in blocks of QBLK queries.  Heads are split across the threads.  The f32 sums run in a
 * different order than attend_expanded's per-key loop; nothing is rounded
 * otherwise. */
/* Queries per block of attend_gemm. */
#define QBLK 64

static ds_status attend_gemm(ds_context *c, int layer, const float *q, int T, int start, const int32_t *sel,
                             const int *nsel, int stride, const int32_t *keys, const int32_t *slot, int nu,
                             const float *kvb, int kw, float *o)
{
    const ds_model *m = c->model;
    const mla_dims d = dims_of(&m->cfg);
    int fail = 0;
#pragma omp parallel
    {
        float *K = malloc(sizeof(float) * (size_t)nu * d.qk);
        float *VT = malloc(sizeof(float) * (size_t)d.vd * nu);
        float *S = malloc(sizeof(float) * (size_t)(T < QBLK ? T : QBLK) * nu);
        float *p = malloc(sizeof(float) * (size_t)nu);
        if (!K || !VT || !S || !p) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int h = 0; h < d.nh; h++) {
            if (!K || !VT || !S || !p)
                continue;
            for (int u = 0; u < nu; u++) {
                const float *kv = kvb + (size_t)u * kw + (size_t)h * d.kvb_rows;
                float kt[DS_MAX_ROPE];
                memcpy(K + (size_t)u * d.qk, kv, sizeof(float) * (size_t)d.nope);
                memcpy(K + (size_t)u * d.qk + d.nope, ds_kv_rope(c, layer, keys[u], kt), sizeof(float) * (size_t)d.rope);
            }
            /* Queries in blocks: a block only needs the keys up to its last
             * position, a prefix of keys[] (ascending), so the causal upper
             * triangle is mostly skipped. */
            for (int t0 = 0, nb = 0; t0 < T; t0 += QBLK) {
                const int tb = T - t0 < QBLK ? T - t0 : QBLK;
                while (nb < nu && keys[nb] <= start + t0 + tb - 1)
                    nb++;
                const ds_mat km = {DS_DT_F32, nb, d.qk, K, NULL, NULL, 0}, vm = {DS_DT_F32, d.vd, nb, VT, NULL, NULL, 0};
                ds_gemm(&km, 0, nb, q + ((size_t)t0 * d.nh + h) * d.qk, d.nh * d.qk, tb, S, nb);
                for (int t = t0; t < t0 + tb; t++) {
                    const int32_t *ts = sel ? sel + (size_t)t * stride : NULL;
                    const int n = sel ? nsel[t] : start + t + 1;
                    float *row = S + (size_t)(t - t0) * nb;
                    for (int i = 0; i < n; i++)
                        p[i] = row[slot[key_at(ts, i)]] * m->attn_scale;
                    ds_softmax(p, n);
                    memset(row, 0, sizeof(float) * (size_t)nb);
                    for (int i = 0; i < n; i++)
                        row[slot[key_at(ts, i)]] = p[i];
                }
                for (int e = 0; e < d.vd; e++)       /* V transposed, the block's keys */
                    for (int u = 0; u < nb; u++)
                        VT[(size_t)e * nb + u] = kvb[(size_t)u * kw + (size_t)h * d.kvb_rows + d.nope + e];
                ds_gemm(&vm, 0, d.vd, S, nb, tb, o + ((size_t)t0 * d.nh + h) * d.vd, d.nh * d.vd);
            }
        }
        free(K), free(VT), free(S), free(p);
    }
    return fail ? DS_ERR_NOMEM : DS_OK;
}

/* Expanded (MHA) attention for a chunk of T queries: k_nope and v are
 * computed once for every key that some query selected. */
static ds_status attend_expanded(ds_context *c, int layer, const float *q, int T, int start,
                                 const int32_t *sel, const int *nsel, int stride, int bf16, float *o,
                                 ds_error *err)
{
    const ds_model *m = c->model;
    const ds_layer_w *L = &m->layers[layer];
    const mla_dims d = dims_of(&m->cfg);
    const int nkeys = start + T;
    ds_status st = DS_OK;
    int32_t *slot = malloc(sizeof(int32_t) * (size_t)nkeys);
    int32_t *keys = malloc(sizeof(int32_t) * (size_t)nkeys);
    float *lat = NULL, *kvb = NULL;
    if (!slot || !keys) {
        st = ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
        goto out;
    }
    for (int j = 0; j < nkeys; j++)
        slot[j] = -1;
    int nu = 0;
    for (int t = 0; t < T; t++) {
        int n = sel ? nsel[t] : start + t + 1;
        for (int i = 0; i < n; i++) {
            int j = key_at(sel ? sel + (size_t)t * stride : NULL, i);
            if (slot[j] < 0)
                slot[j] = 1;
        }
    }
    for (int j = 0; j < nkeys; j++)
        if (slot[j] >= 0) {
            slot[j] = nu;
            keys[nu++] = j;
        }
    const int kw = d.nh * d.kvb_rows;
    lat = ds_calloc((size_t)nu * d.kvl, sizeof(float), err);
    kvb = ds_calloc((size_t)nu * kw, sizeof(float), err);
    if (!lat || !kvb) {
        st = DS_ERR_NOMEM;
        goto out;
    }
    for (int u = 0; u < nu; u++)
        ds_kv_load_latent(c, layer, keys[u], lat + (size_t)u * d.kvl);
    /* exact even in bf16: decode's absorbed form multiplies the unrounded
     * latent through kv_b, and a token must not depend on which form ran */
    ds_gemm(&L->kv_b, 0, kw, lat, d.kvl, nu, kvb, kw);

    /* Mostly dense selections (prefill): as GEMMs over all pairs. */
    long pairs = 0;
    for (int t = 0; t < T; t++)
        pairs += sel ? nsel[t] : start + t + 1;
    if (T > 1 && pairs * 3 >= (long)T * nu) {
        if (attend_gemm(c, layer, q, T, start, sel, nsel, stride, keys, slot, nu, kvb, kw, o) != DS_OK)
            st = ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
        else if (c->trace)
            for (int t = 0; t < T; t++)
                report_rows(c, layer, start + t, sel ? nsel[t] : start + t + 1);
        goto out;
    }

    int fail = 0;
#pragma omp parallel
    {
        float *p = malloc(sizeof(float) * (size_t)nkeys);
        if (!p) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < T; t++) {
            if (!p)
                continue;
            const int32_t *ts = sel ? sel + (size_t)t * stride : NULL;
            int n = sel ? nsel[t] : start + t + 1;
            for (int h = 0; h < d.nh; h++) {
                const float *qh = q + ((size_t)t * d.nh + h) * d.qk;
                for (int i = 0; i < n; i++) {
                    int j = key_at(ts, i);
                    const float *kn = kvb + (size_t)slot[j] * kw + (size_t)h * d.kvb_rows;
                    float kt[DS_MAX_ROPE];
                    float s = ds_dot(qh, kn, d.nope) + ds_dot(qh + d.nope, ds_kv_rope(c, layer, j, kt), d.rope);
                    p[i] = s * m->attn_scale;
                }
                ds_softmax(p, n);
                float *oh = o + ((size_t)t * d.nh + h) * d.vd;
                memset(oh, 0, sizeof(float) * (size_t)d.vd);
                for (int i = 0; i < n; i++) {
                    int j = key_at(ts, i);
                    ds_axpy(p[i], kvb + (size_t)slot[j] * kw + (size_t)h * d.kvb_rows + d.nope, oh, d.vd);
                }
            }
            if (c->trace) {
#pragma omp critical(ds_trace)
                report_rows(c, layer, start + t, n);
            }
        }
        free(p);
    }
    if (fail)
        st = ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
out:
    free(slot);
    free(keys);
    free(lat);
    free(kvb);
    return st;
}

/* Projections for all T tokens of a step at once (each weight matrix is
 * read once per step, whatever the number of sequences); writes every
 * token's latent and rope key into its own sequence's cache and returns
 * the rotated queries [T][nh][qk] and the q LoRA output qr. */
static void project(const ds_model *m, int layer, const ds_mla_seq *seqs, int n_seqs, const float *x, int T,
                    int bf16, float *q, float *qr, float *kva, const ds_gemm_part *idx_x, const ds_gemm_part *idx_qr)
{
    const ds_layer_w *L = &m->layers[layer];
    const mla_dims d = dims_of(&m->cfg);
    const float eps = m->cfg.rms_norm_eps;
    const int kw = d.kvl + d.rope;
    /* the products of x, then those of the normalised q_a output, each
     * group in one region (with the indexer's where given) */
    ds_gemm_part px[4] = {{&L->q_a, 0, d.ql, x, d.H, qr, d.ql}, {&L->kv_a, 0, kw, x, d.H, kva, kw}};
    ds_gemm_part pq[2] = {{&L->q_b, 0, d.nh * d.qk, qr, d.ql, q, d.nh * d.qk}};
    if (idx_x) {
        px[2] = idx_x[0], px[3] = idx_x[1];
        pq[1] = *idx_qr;
    }
    ds_matmul_parts(px, idx_x ? 4 : 2, T, bf16);
    for (int t = 0; t < T; t++)
        ds_rmsnorm(qr + (size_t)t * d.ql, L->q_a_norm, eps, d.ql, qr + (size_t)t * d.ql);
    ds_matmul_parts(pq, idx_x ? 2 : 1, T, bf16);
    for (int i = 0; i < n_seqs; i++) {
        ds_context *c = seqs[i].ctx;
        for (int k = 0; k < seqs[i].n; k++) {
            int t = seqs[i].off + k, pos = seqs[i].start + k;
            for (int h = 0; h < d.nh; h++)
                ds_rope_interleaved(q + ((size_t)t * d.nh + h) * d.qk + d.nope, d.rope, pos, m->rope_freq,
                                    m->rope_mscale);
            float *row = kva + (size_t)t * kw;
            ds_rmsnorm(row, L->kv_a_norm, eps, d.kvl, row);
            ds_kv_store_latent(c, layer, pos, row);
            ds_rope_interleaved(row + d.kvl, d.rope, pos, m->rope_freq, m->rope_mscale);
            ds_kv_store_rope(c, layer, pos, row + d.kvl);
        }
    }
}

/* Indexer selection and attention of one sequence's rows. */
static ds_status attend_seq(const ds_mla_seq *sq, int layer, ds_index_proj *ip, const float *q, const float *qabs,
                            int bf16, float *o, float *olat_out, ds_error *err)
{
    ds_context *c = sq->ctx;
    const ds_config *cfg = &c->model->cfg;
    const mla_dims d = dims_of(cfg);
    const int T = sq->n, start = sq->start;
    int stride = cfg->is_v32 ? (cfg->index_topk < start + T ? cfg->index_topk : start + T) : 0;
    int32_t *sel = cfg->is_v32 ? ds_calloc((size_t)T * stride, sizeof(int32_t), err) : NULL;
    int *nsel = cfg->is_v32 ? ds_calloc((size_t)T, sizeof(int), err) : NULL;
    ds_status st = DS_OK;
    if (cfg->is_v32 && (!sel || !nsel))
        st = DS_ERR_NOMEM;
    if (st == DS_OK && cfg->is_v32)
        st = ds_indexer_run(c, layer, ip, sq->off, T, start, sel, nsel, stride, err);
    const float *qs = q + (size_t)sq->off * d.nh * d.qk;
    float *os = o + (size_t)sq->off * d.nh * d.vd;
    if (st == DS_OK)
        st = T == 1 ? attend_absorbed(c, layer, qs, qabs, start, sel, sel ? nsel[0] : start + 1, os, olat_out, err)
                    : attend_expanded(c, layer, qs, T, start, sel, nsel, stride, bf16, os, err);
    free(sel);
    free(nsel);
    return st;
}

/* The absorbed queries (q_nope through W_UK) of nd decoding sequences,
 * whose rows of q are listed in rows[], into qabs [nd][heads * kvl]: one
 * ds_gemm_t per head through kv_b for all of them, each row of W_UK
 * converted once per step rather than once per sequence, and each query's
 * result its own ds_gemv_t's (attend_absorbed) to the bit.  qd: [nd][heads
 * * qk] scratch. */
static void absorb_queries(const ds_layer_w *L, const mla_dims *d, const float *q, const int *rows, int nd, float *qd,
                           float *qabs)
{
    const size_t qw = (size_t)d->nh * d->qk, aw = (size_t)d->nh * d->kvl;
    for (int j = 0; j < nd; j++)
        memcpy(qd + j * qw, q + (size_t)rows[j] * qw, sizeof(float) * qw);
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < d->nh; h++)
        ds_gemm_t(&L->kv_b, h * d->kvb_rows, d->nope, qd + (size_t)h * d->qk, (int)qw, nd,
                  qabs + (size_t)h * d->kvl, (int)aw);
}

/* Whether the decoding sequences of a step attend in parallel, a thread a
 * sequence: their fixed costs (packing, a region and its barriers per
 * sequence, the indexer's query) took longer than the attention itself at
 * short contexts.  Not under a trace hook (its callback need not be
 * thread-safe) nor with a device indexer, which serves one call at a time. */
static int seqs_in_parallel(const ds_mla_seq *seqs, int n_seqs)
{
    if (omp_get_max_threads() < 2 || omp_in_parallel())
        return 0;
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].ctx->trace || seqs[i].ctx->gpu_idx)
            return 0;
    return 1;
}

/* attend_seq for every decoding sequence (one token), whole sequences to
 * whichever thread is free; the j-th of them leaves its weighted latents
 * in olat[j] (and reads its absorbed query at qabs[j] where given).  Each
 * runs the one-thread forms of the attention kernels on the blocks a lone
 * sequence would split across its team, so its weighted latents are the
 * lone sequence's to the bit, whatever the interleaving. */
static ds_status attend_decoding(const ds_mla_seq *seqs, int n_seqs, int layer, ds_index_proj *ip, const float *q,
                                 const float *qabs, int bf16, float *o, float *olat, ds_error *err)
{
    const mla_dims d = dims_of(&seqs[0].ctx->model->cfg);
    int *slot = malloc(sizeof(int) * (size_t)n_seqs);
    if (!slot)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory in attention");
    for (int i = 0, j = 0; i < n_seqs; i++)
        slot[i] = seqs[i].n == 1 ? j++ : -1;
    ds_status st = DS_OK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n_seqs; i++) {
        if (slot[i] < 0)
            continue;
        const size_t at = (size_t)slot[i] * d.nh * d.kvl;
        ds_error e;
        const ds_status s = attend_seq(&seqs[i], layer, ip, q, qabs ? qabs + at : NULL, bf16, o, olat + at, &e);
        if (s != DS_OK)
#pragma omp critical(ds_mla_error)
            if (st == DS_OK) {
                st = s;
                if (err)
                    *err = e;
            }
    }
    free(slot);
    return st;
}

ds_status ds_mla_forward(const ds_mla_seq *seqs, int n_seqs, int layer, const float *x, int T, int bf16,
                         float *out, ds_error *err)
{
    const ds_model *m = seqs[0].ctx->model;
    const ds_layer_w *L = &m->layers[layer];
    const mla_dims d = dims_of(&m->cfg);
    ds_status st = DS_OK;
    ds_index_proj ip = {NULL, NULL, NULL};
    float *q = ds_calloc((size_t)T * d.nh * d.qk, sizeof(float), err);
    float *qr = ds_calloc((size_t)T * d.ql, sizeof(float), err);
    float *kva = ds_calloc((size_t)T * (d.kvl + d.rope), sizeof(float), err);
    float *o = ds_calloc((size_t)T * d.nh * d.vd, sizeof(float), err);
    if (!q || !qr || !kva || !o) {
        st = DS_ERR_NOMEM;
        goto out;
    }
    /* in bf16 the indexer's projections join MLA's groups (in f32 its keys
     * go one row at a time, ds_indexer_project) */
    ds_gemm_part idx_x[2], idx_qr;
    const int idx_grouped = m->cfg.is_v32 && bf16;
    if (idx_grouped && (st = ds_indexer_parts(m, layer, x, qr, T, &ip, idx_x, &idx_qr, err)) != DS_OK)
        goto out;
    project(m, layer, seqs, n_seqs, x, T, bf16, q, qr, kva, idx_grouped ? idx_x : NULL,
            idx_grouped ? &idx_qr : NULL);
    if (m->cfg.is_v32 && !idx_grouped && (st = ds_indexer_project(m, layer, x, qr, T, bf16, &ip, err)) != DS_OK)
        goto out;
    /* Decoding sequences (one token each) leave their weighted latents in
     * olat; their value projections through kv_b then run as one product
     * per head for all of them, kv_b read once per step instead of once
     * per sequence. */
    int nd = 0;
    for (int i = 0; i < n_seqs; i++)
        nd += seqs[i].n == 1;
    float *olat = nd > 1 ? malloc(sizeof(float) * (size_t)nd * d.nh * d.kvl) : NULL;
    float *ov = nd > 1 ? malloc(sizeof(float) * (size_t)nd * d.nh * d.vd) : NULL;
    int absorb = nd > 1;
    float *qabs = absorb ? malloc(sizeof(float) * (size_t)nd * d.nh * d.kvl) : NULL;
    float *qd = absorb ? malloc(sizeof(float) * (size_t)nd * d.nh * d.qk) : NULL;
    int *rows = absorb ? malloc(sizeof(int) * (size_t)nd) : NULL;
    if (nd > 1 && (!olat || !ov))
        nd = 0;                 /* no room: each sequence on its own */
    absorb = absorb && nd > 1 && qabs && qd && rows;   /* else each query absorbs alone */
    if (absorb) {
        for (int i = 0, j = 0; i < n_seqs; i++)
            if (seqs[i].n == 1)
                rows[j++] = seqs[i].off;
        absorb_queries(L, &d, q, rows, nd, qd, qabs);
    }
    const int par = nd > 1 && seqs_in_parallel(seqs, n_seqs);
    if (par)
        st = attend_decoding(seqs, n_seqs, layer, m->cfg.is_v32 ? &ip : NULL, q, absorb ? qabs : NULL, bf16, o,
                             olat, err);
    for (int i = 0, j = 0; i < n_seqs && st == DS_OK; i++) {
        const int dec = nd > 1 && seqs[i].n == 1;
        float *ol = dec ? olat + (size_t)j * d.nh * d.kvl : NULL;
        const float *qa = dec && absorb ? qabs + (size_t)j * d.nh * d.kvl : NULL;
        j += dec;
        if (!(par && dec))
            st = attend_seq(&seqs[i], layer, m->cfg.is_v32 ? &ip : NULL, q, qa, bf16, o, ol, err);
    }
    if (st == DS_OK && nd > 1) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < d.nh; h++)
            ds_gemm(&L->kv_b, h * d.kvb_rows + d.nope, d.vd, olat + (size_t)h * d.kvl, d.nh * d.kvl, nd,
                    ov + (size_t)h * d.vd, d.nh * d.vd);
        for (int i = 0, j = 0; i < n_seqs; i++)
            if (seqs[i].n == 1)
                memcpy(o + (size_t)seqs[i].off * d.nh * d.vd, ov + (size_t)j++ * d.nh * d.vd,
                       sizeof(float) * (size_t)d.nh * d.vd);
    }
    free(olat);
    free(ov);
    free(qabs);
    free(qd);
    free(rows);
    if (st == DS_OK)
        ds_matmul(&L->o, 0, d.H, o, d.nh * d.vd, T, out, d.H, bf16);
out:
    ds_index_proj_free(&ip);
    free(q);
    free(qr);
    free(kva);
    free(o);
    return st;
}
