/* indexer.c — the DSA lightning indexer of DeepSeek-V3.2: index keys and
 * queries (LayerNorm / RoPE half-split, rope dims first / 128-point
 * Hadamard / FP8 e4m3 per-vector quantisation), the ReLU-weighted head sum
 * of FP8 dot products, and the top-k selection of key positions that
 * sparse MLA attends to.
 *
 * Scoring is the per-token cost that grows with the context: every cached
 * key, every layer, every head.  Keys are decoded in blocks to f64 and
 * scored by ds_index_scores (simd/, one register tile of 8 keys x 16 heads
 * at a time, exact and bit-identical to the int64 reference); a decode
 * step splits the key blocks across the threads, prefill decodes each key
 * block once for a block of queries.  An untraced decode step scores in
 * f32 with an error bound first and rescores exactly only the keys near
 * the k-th score (select_approx): the same selection, at a fraction of
 * the cost. */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"
#include "worksplit.h"
#include "dsconfig.h"
#ifdef DS_HAVE_CUDA
#include <stdio.h>
#include "indexer_gpu.h"
#endif

/* e4m3 value * 2^9 is an integer for every finite code, so a dot product of
 * two e4m3 vectors is exact in int64 and rounded once to f32, as the
 * reference's FP8 dot does. */
static int32_t e4m3_int[256];
static pthread_once_t e4m3_int_once = PTHREAD_ONCE_INIT;
static void fill_e4m3_int(void)
{
    for (int i = 0; i < 256; i++) {
        float v = ds_e4m3_table[i];
        e4m3_int[i] = isnan(v) ? 0 : (int32_t)(v * 512.0f);
    }
}

/* The reference form of the FP8 dot (tests compare the fast one with it). */
float ds_index_dot_ref(const uint8_t *a, const uint8_t *b, int n)
{
    pthread_once(&e4m3_int_once, fill_e4m3_int);
    int64_t s = 0;
    for (int i = 0; i < n; i++)
        s += (int64_t)e4m3_int[a[i]] * e4m3_int[b[i]];
    return (float)((double)s * (1.0 / 262144.0));
}

/* The fast form, bit-identical: e4m3 values as doubles are exact, every
 * product of two has at most 8 significant bits between 2^-18 and 2^18, so
 * any sum of 128 of them is exact in a double's 53 bits — in any order,
 * hence vector lanes.  GCC builds AVX-512, AVX2 and baseline clones of it
 * and picks one at load time. */
typedef double v8d __attribute__((vector_size(64)));

__attribute__((target_clones("avx512f", "avx2", "default")))
static float dot_f64(const double *a, const double *b, int n)
{
    v8d acc0 = {0}, acc1 = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        v8d x0, y0, x1, y1;
        memcpy(&x0, a + i, 64), memcpy(&y0, b + i, 64);
        memcpy(&x1, a + i + 8, 64), memcpy(&y1, b + i + 8, 64);
        acc0 += x0 * y0;
        acc1 += x1 * y1;
    }
    v8d acc = acc0 + acc1;
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += acc[k];
    for (; i < n; i++)
        s += a[i] * b[i];
    return (float)s;
}

static void decode_e4m3(const uint8_t *q, int n, double *out)
{
    for (int i = 0; i < n; i++)
        out[i] = (double)e4m3_int[q[i]] * (1.0 / 512.0);
}

float ds_index_dot_fast(const uint8_t *a, const uint8_t *b, int n)
{
    pthread_once(&e4m3_int_once, fill_e4m3_int);
    double x[256], y[256];
    float s = 0.0f;
    for (int i0 = 0; i0 < n; i0 += 256) {   /* callers use n <= 256; longer n sums chunks */
        int k = n - i0 < 256 ? n - i0 : 256;
        decode_e4m3(a + i0, k, x);
        decode_e4m3(b + i0, k, y);
        s += dot_f64(x, y, k);
    }
    return s;
}

/* Scores as unsigned keys in the same order (-0 counts as +0, as the
 * comparisons of the selection's definition do). */
static inline uint32_t score_key(float f)
{
    f += 0.0f;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

/* Radix selection: three histogram passes (12, 12 and 8 bits of the keys)
 * find the k-th largest key and how many of the keys equal to it belong to
 * the top k; one more ascending pass then emits the positions, the lowest
 * ones among ties — in ascending order, with no sort and no allocation.
 *
 * kth_key: the three passes; the key of the k-th largest score
 * (0 < k < n), and in *rank_out how many of the scores equal to it are
 * among the k largest. */
static uint32_t kth_key(const float *score, int n, int k, uint32_t *rank_out)
{
    static const int shift[3] = {20, 8, 0}, bits[3] = {12, 12, 8};
    uint32_t hist[1 << 12];
    uint32_t prefix = 0, mask = 0, rank = (uint32_t)k;   /* the rank-th largest among keys matching prefix */
    for (int l = 0; l < 3; l++) {
        const uint32_t nb = 1u << bits[l];
        memset(hist, 0, sizeof(uint32_t) * nb);
        for (int i = 0; i < n; i++) {
            const uint32_t key = score_key(score[i]);
            if ((key & mask) == prefix)
                hist[(key >> shift[l]) & (nb - 1)]++;
        }
        uint32_t b = nb - 1;
        while (hist[b] < rank)
            rank -= hist[b--];
        prefix |= b << shift[l];
        mask |= (nb - 1) << shift[l];
    }
    *rank_out = rank;
    return prefix;
}

int ds_topk_positions(const float *score, int n, int k, int32_t *out)
{
    if (k >= n) {
        for (int i = 0; i < n; i++)
            out[i] = i;
        return n;
    }
    if (k <= 0)
        return 0;
    uint32_t rank;
    const uint32_t prefix = kth_key(score, n, k, &rank);
    /* prefix is the k-th largest key; rank of the keys equal to it are in */
    int m = 0;
    for (int i = 0; i < n; i++) {
        const uint32_t key = score_key(score[i]);
        if (key > prefix || (key == prefix && rank && rank--))
            out[m++] = i;
    }
    return m;
}

/* LayerNorm/RoPE/Hadamard/quantise one index key and store it at pos. */
static void index_key(ds_context *c, int layer, float *k, int pos)
{
    const ds_model *m = c->model;
    const ds_config *cfg = &m->cfg;
    const ds_layer_w *L = &m->layers[layer];
    const int id = cfg->index_head_dim;
    float *tmp = k + id;
    ds_layernorm(k, L->idx_k_norm_w, L->idx_k_norm_b, 1e-6f, id, tmp);
    ds_rope_halves(tmp, cfg->qk_rope_head_dim, pos, m->rope_freq, m->rope_mscale);
    ds_hadamard(tmp, id);
    ds_kv_layer *kv = &c->kv[layer];
    uint8_t row[DS_INDEX_MAXDIM];   /* index_head_dim <= 256 (config.c) */
    kv->idx_s[pos] = ds_quant_e4m3_block(tmp, id, cfg->scale_ue8m0, row);
    ds_index_key_put(kv->idx_k, id, pos, row);
}

/* The scorer works on blocks of keys decoded once to f64 (ds_e4m3_to_f64)
 * and queries decoded once and transposed to qt[d][head] (ds_index_scores
 * in simd/, bit-identical to ds_index_dot_ref per head); prefill scores a
 * block of queries against each decoded key block. */
enum { KEY_BLOCK = 32, QUERY_BLOCK = 8, SCORE_CLAIM = 32 };

/* qt[d * hs + h] for the ih e4m3 vectors of one query, padding heads 0;
 * qd[ih * id] is scratch. */
static void query_transposed(const uint8_t *q8, int ih, int id, double *qd, double *qt)
{
    const int hs = DS_INDEX_HSTRIDE(ih);
    ds_e4m3_to_f64(q8, (size_t)ih * id, qd);
    for (int d = 0; d < id; d++) {
        double *row = qt + (size_t)d * hs;
        for (int h = 0; h < ih; h++)
            row[h] = qd[(size_t)h * id + d];
        for (int h = ih; h < hs; h++)
            row[h] = 0.0;
    }
}

/* score[j] for keys [j0, j1) of one prepared query, KEY_BLOCK keys at a
 * time out of their tiles (exact: straight from the codes, decoding
 * beside the FMAs). */
static void score_range(const ds_kv_layer *kv, int ih, int id, const double *qt, const float *w, int j0, int j1,
                        float *score)
{
    uint8_t rows[KEY_BLOCK * DS_INDEX_MAXDIM];
    for (int j = j0; j < j1; j += KEY_BLOCK) {
        const int kn = j1 - j < KEY_BLOCK ? j1 - j : KEY_BLOCK;
        ds_index_keys_get(kv->idx_k, id, j, kn, rows);
        ds_index_scores_fp8(qt, ih, id, w, rows, kv->idx_s + j, kn, score + j);
    }
}

/* The context's indexer scratch, grown to at least bytes (64-byte aligned). */
static void *idx_scratch(ds_context *c, size_t bytes, ds_error *err)
{
    if (c->idx_scratch_bytes < bytes) {
        free(c->idx_scratch);
        c->idx_scratch_bytes = 0;
        c->idx_scratch = ds_alloc_aligned(bytes, err);
        if (!c->idx_scratch)
            return NULL;
        c->idx_scratch_bytes = bytes;
    }
    return c->idx_scratch;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

/* Decode (one query): score[j], j < nkeys, in the context's scratch, key
 * blocks split across the threads.  NULL when out of memory. */
static float *score_one(ds_context *c, int layer, const uint8_t *q8, const float *w, int nkeys, ds_error *err)
{
    const ds_config *cfg = &c->model->cfg;
    const int id = cfg->index_head_dim, ih = cfg->index_n_heads, hs = DS_INDEX_HSTRIDE(ih);
    const int nt = nkeys >= 16 * KEY_BLOCK ? omp_get_max_threads() : 1;
    const size_t b_score = align64(sizeof(float) * (size_t)nkeys), b_qt = align64(sizeof(double) * (size_t)hs * id);
    const size_t b_qd = align64(sizeof(double) * (size_t)ih * id);
    char *p = idx_scratch(c, b_score + b_qt + b_qd, err);
    if (!p)
        return NULL;
    float *score = (float *)p;
    double *qt = (double *)(p + b_score), *qd = (double *)(p + b_score + b_qt);
    query_transposed(q8, ih, id, qd, qt);
    const ds_kv_layer *kv = &c->kv[layer];
    const int nb = (nkeys + KEY_BLOCK - 1) / KEY_BLOCK;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int n = omp_get_num_threads(), t = omp_get_thread_num();
        const int b0 = (int)((long)nb * t / n), b1 = (int)((long)nb * (t + 1) / n);
        const int j0 = b0 * KEY_BLOCK, j1 = b1 * KEY_BLOCK < nkeys ? b1 * KEY_BLOCK : nkeys;
        score_range(kv, ih, id, qt, w, j0, j1, score);
    }
    return score;
}

#ifdef DS_HAVE_CUDA
/* Scores and selects on the GPU (bit-identical to ds_index_scores +
 * ds_topk_positions, see indexer_gpu.h).  Returns 1 when it filled sel and
 * nsel; 0 when the CPU must: no GPU state, or a GPU error, after which the
 * GPU is dropped for this context and the note keeps the message. */
static int gpu_select(ds_context *c, int layer, const uint8_t *q8, const float *w, int T, int start,
                      int32_t *sel, int *nsel, int sel_stride)
{
    if (!c->gpu_idx || c->gpu_idx_failed)
        return 0;
    const ds_kv_layer *kv = &c->kv[layer];
    ds_error e;
    ds_error_clear(&e);
    /* keys first, always, so the GPU copy never misses a position */
    ds_status st = ds_gpu_indexer_sync_keys(c->gpu_idx, layer, kv->idx_k, kv->idx_s, start, start + T, &e);
    float *score = NULL;
    if (st == DS_OK && c->trace) {   /* scores come back only for the trace hook */
        score = malloc(sizeof(float) * (size_t)T * (size_t)(start + T));
        if (!score)
            return 0;
    }
    if (st == DS_OK)
        st = ds_gpu_indexer_select(c->gpu_idx, layer, q8, w, T, start, c->model->cfg.index_topk, sel, nsel,
                                   sel_stride, score, &e);
    if (st != DS_OK) {
        c->gpu_idx_failed = 1;
        snprintf(c->gpu_idx_note, sizeof c->gpu_idx_note, "indexer back on the CPU after a GPU error: %s", e.msg);
        free(score);
        return 0;
    }
    for (int t = 0; c->trace && t < T; t++) {
        c->trace(c->trace_user, DS_TRACE_INDEXER_SCORES, layer, start + t, score + (size_t)t * (start + T),
                 start + t + 1);
        c->trace(c->trace_user, DS_TRACE_INDEXER_TOPK, layer, start + t, sel + (size_t)t * sel_stride, nsel[t]);
    }
    free(score);
    return 1;
}
#endif

ds_status ds_indexer_parts(const ds_model *m, int layer, const float *x, const float *qr, int T, ds_index_proj *p,
                           ds_gemm_part of_x[2], ds_gemm_part *of_qr, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const ds_layer_w *L = &m->layers[layer];
    const int H = cfg->hidden_size, id = cfg->index_head_dim, ih = cfg->index_n_heads;
    p->k = ds_calloc((size_t)T * 2 * id, sizeof(float), err);
    p->q = ds_calloc((size_t)T * ih * id, sizeof(float), err);
    p->w = ds_calloc((size_t)T * ih, sizeof(float), err);
    if (!p->k || !p->q || !p->w) {
        ds_index_proj_free(p);
        return DS_ERR_NOMEM;
    }
    of_x[0] = (ds_gemm_part){&L->idx_wk, 0, id, x, H, p->k, 2 * id};
    of_x[1] = (ds_gemm_part){&L->idx_wproj, 0, ih, x, H, p->w, ih};
    *of_qr = (ds_gemm_part){&L->idx_wq_b, 0, ih * id, qr, cfg->q_lora_rank, p->q, ih * id};
    return DS_OK;
}

ds_status ds_indexer_project(const ds_model *m, int layer, const float *x, const float *qr, int T, int bf16,
                             ds_index_proj *p, ds_error *err)
{
    ds_gemm_part px[2], pq;
    const ds_status st = ds_indexer_parts(m, layer, x, qr, T, p, px, &pq, err);
    if (st != DS_OK)
        return st;
    /* The projections follow the step's precision like every other weight
     * product (in bf16 the selection is the reference's up to the rounding
     * of these activations, as the rest of the layer is).  In f32 the keys
     * go one row at a time: an FP8 key must not depend on the rows it was
     * computed with. */
    if (bf16)
        ds_matmul_parts(px, 1, T, 1);
    else
        for (int t = 0; t < T; t++)
            ds_gemv(px[0].m, 0, px[0].nrows, x + (size_t)t * px[0].ldx, p->k + (size_t)t * px[0].ldy);
    ds_matmul_parts(&pq, 1, T, bf16);
    ds_matmul_parts(px + 1, 1, T, bf16);
    return DS_OK;
}

void ds_index_proj_free(ds_index_proj *p)
{
    free(p->k);
    free(p->q);
    free(p->w);
    p->k = p->q = p->w = NULL;
}

/* A decode step that sees no more keys than index_topk selects them all,
 * in position order, whatever their scores: neither the query nor the
 * scores are needed (a traced run still computes them, for the trace).
 * With a device indexer the step still goes through gpu_select, whose key
 * upload must see every position as it is written: after a truncation
 * (the server's prefix reuse) the device may hold an older sequence's keys
 * below its high-water mark. */
static int all_keys_selected(const ds_context *c, int T, int start)
{
    return T == 1 && !c->trace && start + 1 <= c->model->cfg.index_topk && (!c->gpu_idx || c->gpu_idx_failed);
}

ds_status ds_indexer_run(ds_context *c, int layer, ds_index_proj *p, int row, int T, int start, int32_t *sel,
                         int *nsel, int sel_stride, ds_error *err)
{
    const ds_model *m = c->model;
    const ds_config *cfg = &m->cfg;
    const int id = cfg->index_head_dim, ih = cfg->index_n_heads;
    pthread_once(&e4m3_int_once, fill_e4m3_int);
    /* Keys of these rows first: queries may select any of them. */
    for (int t = 0; t < T; t++)
        index_key(c, layer, p->k + (size_t)(row + t) * 2 * id, start + t);
    if (all_keys_selected(c, T, start))   /* the query's transform would go unused */
        return ds_indexer_select(c, layer, NULL, NULL, T, start, sel, nsel, sel_stride, err);
    uint8_t *q8 = ds_calloc((size_t)T * ih * id, 1, err);
    if (!q8)
        return DS_ERR_NOMEM;
    float *wrow = p->w + (size_t)row * ih;
    const float head_scale = 1.0f / sqrtf((float)ih), dim_scale = 1.0f / sqrtf((float)id);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < ih; h++) {
            float *q = p->q + ((size_t)(row + t) * ih + h) * id;
            ds_rope_halves(q, cfg->qk_rope_head_dim, start + t, m->rope_freq, m->rope_mscale);
            ds_hadamard(q, id);
            float qs = ds_quant_e4m3_block(q, id, cfg->scale_ue8m0, q8 + ((size_t)t * ih + h) * id);
            float *w = wrow + (size_t)t * ih + h;
            *w = *w * head_scale * qs * dim_scale;
        }
    }
    ds_status st = ds_indexer_select(c, layer, q8, wrow, T, start, sel, nsel, sel_stride, err);
    free(q8);
    return st;
}

/* The k-th largest score (0 < k < n). */
static float kth_score(const float *score, int n, int k)
{
    uint32_t rank;
    const uint32_t key = kth_key(score, n, k, &rank);
    const uint32_t u = key & 0x80000000u ? key & 0x7fffffffu : ~key;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Decode selection from approximate scores (ds_index_scores_fp8_approx:
 * f32, twice the lanes of the exact f64 scorer) that gives the exact
 * scorer's selection.  With tau~ the k-th largest approximate score and B
 * the largest bound, the exact k-th score tau is within B of tau~ (at
 * least k keys score exactly >= tau~ - B, fewer than k > tau~ + B).  Keys
 * scored approximately within 2B of tau~ are rescored exactly; those above
 * are exactly above tau and those below exactly below it, so the top k of
 * the mixed scores is the exact top k, ties included.  Returns 0 when the
 * kernel level has no fast approximate scorer or when more than CLOSE_MAX
 * keys are that close (then the caller scores exactly).
 *
 * Finding tau~ and the keys near it must not cost a serial pass per step
 * over every key (at 32K keys that was as long as the scoring): each
 * thread histograms the top HIST_BITS of its own scores' keys while they
 * are in cache, every thread reads the merged histogram to find the bucket
 * of the k-th largest, and keeps the positions of its keys from the bucket
 * below that one up (the candidates, in position order).  The k-th largest
 * of all is the k-th largest candidate, and the keys within 2B of it are
 * candidates too unless tau~ - 2B falls below those buckets (then every
 * key is looked at). */
enum { CLOSE_MAX = 256, HIST_BITS = 12 };

typedef struct {        /* the keys above hi and the close ones, by position */
    int32_t *above;
    int nabove, nclose;
    int close[CLOSE_MAX];
} approx_split;

/* Splits positions pos[0 .. n) (all of [0, n) when pos is NULL) by
 * approximate score against [lo, hi]; 0 when more than CLOSE_MAX are in. */
static int split_close(const float *score, const int32_t *pos, int n, double lo, double hi, approx_split *sp)
{
    sp->nabove = sp->nclose = 0;
    for (int i = 0; i < n; i++) {
        const int j = pos ? pos[i] : i;
        const double v = (double)score[j];
        if (v > hi)
            sp->above[sp->nabove++] = j;
        else if (v >= lo) {
            if (sp->nclose == CLOSE_MAX)
                return 0;
            sp->close[sp->nclose++] = j;
        }
    }
    return 1;
}

/* The lowest key of the histogram bucket below the one that holds the k-th
 * largest of the scores counted in hist[nt][1 << HIST_BITS] (a bucket's
 * margin: tau~ - 2B nearly always stays above it). */
static uint32_t bucket_floor(const uint32_t *hist, int nt, int k)
{
    const int nb = 1 << HIST_BITS;
    uint32_t rank = (uint32_t)k;
    for (int b = nb - 1; b > 0; b--) {
        uint32_t h = 0;
        for (int t = 0; t < nt; t++)
            h += hist[(size_t)t * nb + b];
        if (h >= rank)
            return (uint32_t)(b - 1) << (32 - HIST_BITS);
        rank -= h;
    }
    return 0;
}

static int select_approx(ds_context *c, int layer, const uint8_t *q8, const float *w, int nkeys, int32_t *sel,
                         int *nsel, ds_error *err, int *nomem)
{
    const ds_config *cfg = &c->model->cfg;
    const int id = cfg->index_head_dim, ih = cfg->index_n_heads, hs = DS_INDEX_HSTRIDE(ih), topk = cfg->index_topk;
    if (id > DS_INDEX_MAXDIM || topk <= 0 || topk >= nkeys)
        return 0;
    const int nt = nkeys >= 16 * KEY_BLOCK ? omp_get_max_threads() : 1;
    const size_t b_score = align64(sizeof(float) * (size_t)nkeys), b_qt = align64(sizeof(double) * (size_t)hs * id);
    const size_t b_qd = align64(sizeof(double) * (size_t)ih * id), b_qf = align64(sizeof(float) * (size_t)hs * id);
    const size_t b_hist = align64(sizeof(uint32_t) << HIST_BITS) * (size_t)nt, b_t = align64(2 * sizeof(int) * (size_t)nt);
    char *p = idx_scratch(c, 4 * b_score + b_qt + b_qd + b_qf + b_hist + b_t, err);
    if (!p) {
        *nomem = 1;
        return 0;
    }
    float *score = (float *)p, *bound = (float *)(p + b_score);
    int32_t *cand = (int32_t *)(p + 2 * b_score);
    float *cscore = (float *)(p + 3 * b_score);   /* later the keys above hi */
    double *qt = (double *)(p + 4 * b_score), *qd = (double *)(p + 4 * b_score + b_qt);
    float *qf = (float *)(p + 4 * b_score + b_qt + b_qd);
    uint32_t *hist = (uint32_t *)(p + 4 * b_score + b_qt + b_qd + b_qf);
    int *ncand_t = (int *)(p + 4 * b_score + b_qt + b_qd + b_qf + b_hist), *j0_t = ncand_t + nt;
    memset(ncand_t, 0, 2 * sizeof(int) * (size_t)nt);
    query_transposed(q8, ih, id, qd, qt);
    for (int i = 0; i < hs * id; i++)
        qf[i] = (float)qt[i];   /* FP8 values: exact */
    const ds_kv_layer *kv = &c->kv[layer];
    const int nb = (nkeys + KEY_BLOCK - 1) / KEY_BLOCK;
    int ok = 1, nact = 1;
    uint32_t floor_key = 0;   /* every thread finds the same; thread 0 keeps it */
    float bmax = 0.0f;
    /* the scoring goes in claims of SCORE_CLAIM blocks (worksplit.h: a
     * thread done early takes from the back of another's share); scores,
     * bounds and histogram counts do not depend on who took what */
    ds_split *split = ds_split_begin(nt, nb);
    if (!split) {
        *nomem = 1;
        return 0;
    }
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(& : ok) reduction(max : bmax)
    {
        const int n = omp_get_num_threads(), t = omp_get_thread_num();
        const int b0 = (int)((long)nb * t / n), b1 = (int)((long)nb * (t + 1) / n);
        const int j0 = b0 * KEY_BLOCK, j1 = b1 * KEY_BLOCK < nkeys ? b1 * KEY_BLOCK : nkeys;
        uint32_t *h = hist + ((size_t)t << HIST_BITS);
        if (t == 0)
            nact = n;
        memset(h, 0, sizeof(uint32_t) << HIST_BITS);
        for (int g, k; ok && (k = ds_split_next(split, t, SCORE_CLAIM, &g)) > 0;) {
            const int js = g * KEY_BLOCK, je = (g + k) * KEY_BLOCK < nkeys ? (g + k) * KEY_BLOCK : nkeys;
            ok = ds_index_scores_fp8_approx(qf, ih, id, w, kv->idx_k, js, kv->idx_s + js, je - js, score + js,
                                            bound + js);
            for (int j = js; ok && j < je; j++) {
                bmax = bound[j] > bmax ? bound[j] : bmax;
                h[score_key(score[j]) >> (32 - HIST_BITS)]++;
            }
        }
#pragma omp barrier
        /* every thread finds the same bucket; each keeps its own candidates */
        const uint32_t fk = bucket_floor(hist, n, topk);
        if (t == 0)
            floor_key = fk;
        int m = 0;
        for (int j = j0; j < j1; j++)
            if (score_key(score[j]) >= fk)
                cand[j0 + m++] = j;
        ncand_t[t] = m;
        j0_t[t] = j0;
    }
    if (!ok)
        return 0;
    int ncand = 0;
    for (int t = 0; t < nact; t++) {
        memmove(cand + ncand, cand + j0_t[t], sizeof(int32_t) * (size_t)ncand_t[t]);
        ncand += ncand_t[t];
    }
    for (int i = 0; i < ncand; i++)
        cscore[i] = score[cand[i]];
    const double tau = (double)kth_score(cscore, ncand, topk), lo = tau - 2.0 * (double)bmax,
                 hi = tau + 2.0 * (double)bmax;
    /* every key at or above lo a candidate? (lo rounded down to a float) */
    float lo_f = (float)lo;
    if ((double)lo_f > lo)
        lo_f = nextafterf(lo_f, -INFINITY);
    const int all_in = score_key(lo_f) >= floor_key;
    approx_split sp;
    sp.above = (int32_t *)cscore;
    if (!split_close(score, all_in ? cand : NULL, all_in ? ncand : nkeys, lo, hi, &sp))
        return 0;   /* flat scores: many keys to rescore */
    /* the close keys, packed, rescored exactly in one call */
    uint8_t kc[CLOSE_MAX * DS_INDEX_MAXDIM];
    float ksc[CLOSE_MAX], sc[CLOSE_MAX];
    for (int i = 0; i < sp.nclose; i++) {
        ds_index_keys_get(kv->idx_k, id, sp.close[i], 1, kc + (size_t)i * id);
        ksc[i] = kv->idx_s[sp.close[i]];
    }
    if (sp.nclose)
        ds_index_scores_fp8(qt, ih, id, w, kc, ksc, sp.nclose, sc);
    /* Keys above hi are in, those below lo out; the rest of the places go
     * to the close keys by exact score, the lowest positions first among
     * equals (as ds_topk_positions over every key would have it: no key
     * outside [lo, hi] scores exactly the k-th score).  Both lists are in
     * position order: merged, so is the selection. */
    int32_t pick[CLOSE_MAX];
    const int np = ds_topk_positions(sc, sp.nclose, topk - sp.nabove, pick);
    int m = 0, a = 0, ci = 0;
    while (a < sp.nabove || ci < np) {
        const int32_t cj = ci < np ? sp.close[pick[ci]] : INT32_MAX;
        if (a < sp.nabove && sp.above[a] < cj)
            sel[m++] = sp.above[a++];
        else
            sel[m++] = cj, ci++;
    }
    *nsel = m;
    return 1;
}

ds_status ds_indexer_select(ds_context *c, int layer, const uint8_t *q8, const float *wbuf, int T, int start,
                            int32_t *sel, int *nsel, int sel_stride, ds_error *err)
{
    const ds_config *cfg = &c->model->cfg;
    const int id = cfg->index_head_dim, ih = cfg->index_n_heads, topk = cfg->index_topk;
    ds_status st = DS_OK;
#ifdef DS_HAVE_CUDA
    if (gpu_select(c, layer, q8, wbuf, T, start, sel, nsel, sel_stride))
        return DS_OK;
#endif

    int fail = 0;
    if (all_keys_selected(c, T, start)) {
        for (int j = 0; j <= start; j++)
            sel[j] = j;
        nsel[0] = start + 1;
        return DS_OK;
    }
    if (T == 1 && !c->trace) {     /* decode: approximate scores, the close ones exact */
        int nomem = 0;
        if (select_approx(c, layer, q8, wbuf, start + 1, sel, nsel, err, &nomem))
            return DS_OK;
        if (nomem)
            return ds_fail(err, DS_ERR_NOMEM, "out of memory in the indexer");
    }
    if (T == 1) {                  /* decode: one query, its keys split across the threads */
        const float *score = score_one(c, layer, q8, wbuf, start + 1, err);
        if (!score) {
            return ds_fail(err, DS_ERR_NOMEM, "out of memory in the indexer");
        }
        nsel[0] = ds_topk_positions(score, start + 1, topk, sel);
        if (c->trace) {
            c->trace(c->trace_user, DS_TRACE_INDEXER_SCORES, layer, start, score, start + 1);
            c->trace(c->trace_user, DS_TRACE_INDEXER_TOPK, layer, start, sel, nsel[0]);
        }
        return DS_OK;
    }
    /* prefill: blocks of QUERY_BLOCK queries, each key block decoded once
     * for all queries of a block that see it */
    const int hs = DS_INDEX_HSTRIDE(ih), nqb = (T + QUERY_BLOCK - 1) / QUERY_BLOCK;
#pragma omp parallel
    {
        float *score = malloc(sizeof(float) * QUERY_BLOCK * (size_t)(start + T));
        double *qt = malloc(sizeof(double) * QUERY_BLOCK * (size_t)hs * id);
        double *qd = malloc(sizeof(double) * (size_t)ih * id);
        double *kd = malloc(sizeof(double) * KEY_BLOCK * (size_t)id);
        uint8_t rows[KEY_BLOCK * DS_INDEX_MAXDIM];
        if (!score || !qt || !qd || !kd) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int qb = 0; qb < nqb; qb++) {
            if (!score || !qt || !qd || !kd)
                continue;
            const int t0 = qb * QUERY_BLOCK, tn = T - t0 < QUERY_BLOCK ? T - t0 : QUERY_BLOCK;
            for (int i = 0; i < tn; i++)
                query_transposed(q8 + (size_t)(t0 + i) * ih * id, ih, id, qd, qt + (size_t)i * hs * id);
            const ds_kv_layer *kv = &c->kv[layer];
            const int nmax = start + t0 + tn;   /* keys the block's last query sees */
            for (int j = 0; j < nmax; j += KEY_BLOCK) {
                const int kn = nmax - j < KEY_BLOCK ? nmax - j : KEY_BLOCK;
                ds_index_keys_get(kv->idx_k, id, j, kn, rows);
                ds_e4m3_to_f64(rows, (size_t)kn * id, kd);
                for (int i = 0; i < tn; i++) {
                    const int n = start + t0 + i + 1;
                    if (j < n)
                        ds_index_scores(qt + (size_t)i * hs * id, ih, id, wbuf + (size_t)(t0 + i) * ih, kd,
                                        kv->idx_s + j, n - j < kn ? n - j : kn,
                                        score + (size_t)i * (start + T) + j);
                }
            }
            for (int i = 0; i < tn; i++) {
                const int t = t0 + i, n = start + t + 1;
                const float *sc = score + (size_t)i * (start + T);
                nsel[t] = ds_topk_positions(sc, n, topk, sel + (size_t)t * sel_stride);
                if (c->trace) {
#pragma omp critical(ds_trace)
                    {
                        c->trace(c->trace_user, DS_TRACE_INDEXER_SCORES, layer, start + t, sc, n);
                        c->trace(c->trace_user, DS_TRACE_INDEXER_TOPK, layer, start + t,
                                 sel + (size_t)t * sel_stride, nsel[t]);
                    }
                }
            }
        }
        free(score);
        free(qt);
        free(qd);
        free(kd);
    }
    if (fail)
        st = ds_fail(err, DS_ERR_NOMEM, "out of memory in the indexer");
    return st;
}
