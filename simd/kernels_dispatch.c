/* kernels_dispatch.c — owns the public matrix/vector entry points of
 * kernels.h that have SIMD versions: each forwards to the table of the ISA
 * level chosen once per process (ds_cpu_isa()).  It also owns the choice of
 * a matrix's NUMA-node copy (ds_mat.copies): a product over a replicated
 * matrix is split here into one row range per thread, each read from the
 * copy in the thread's own node; and the work split of worksplit.h
 * (its per-thread range buffers). */
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "worksplit.h"

static const ds_kernels *active;
static pthread_once_t pick_once = PTHREAD_ONCE_INIT;

const ds_kernels *ds_kernels_for(ds_isa isa)
{
    if (!ds_cpu_isa_supported(isa))
        return NULL;
    switch (isa) {
    case DS_ISA_SCALAR: return &ds_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
    case DS_ISA_AVX2: return &ds_kernels_avx2;
    case DS_ISA_AVX512: return &ds_kernels_avx512;
#endif
#if defined(__aarch64__)
    case DS_ISA_NEON: return &ds_kernels_neon;
#endif
    default: return NULL;
    }
}

static void pick(void)
{
    const ds_kernels *k = ds_kernels_for(ds_cpu_isa());
    __atomic_store_n(&active, k ? k : &ds_kernels_scalar, __ATOMIC_RELEASE);
}

/* ds_dot/ds_axpy run on short vectors in attention loops, so the common path
 * is one acquire load; pthread_once is only reached before the first pick. */
const ds_kernels *ds_kernels_active(void)
{
    const ds_kernels *k = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    if (__builtin_expect(k != NULL, 1))
        return k;
    pthread_once(&pick_once, pick);
    return __atomic_load_n(&active, __ATOMIC_ACQUIRE);
}

static __thread int thread_node;

void ds_kernels_set_node(int node) { thread_node = node > 0 ? node : 0; }
int ds_kernels_node(void) { return thread_node; }

/* The copy of m in the calling thread's node (m itself when unreplicated). */
static const ds_mat *local_copy(const ds_mat *m)
{
    return m->copies && thread_node < m->n_copies ? &m->copies[thread_node] : m;
}

/* A replicated product called outside a parallel region is split by rows
 * here, in blocks of 16 rows so every kernel keeps its full tiles; inside
 * a region the caller already split the work. */
static int split_here(const ds_mat *m, long work)
{
    return m->copies && !omp_in_parallel() && omp_get_max_threads() > 1 && ds_worth_threads(work);
}

static void thread_rows(int nrows, int *lo, int *hi)
{
    const int nb = (nrows + 15) / 16, t = omp_get_thread_num(), nt = omp_get_num_threads();
    *lo = (int)((long)nb * t / nt) * 16;
    *hi = (int)((long)nb * (t + 1) / nt) * 16;
    if (*hi > nrows)
        *hi = nrows;
}

void ds_mat_row(const ds_mat *m, int r, float *out) { ds_kernels_active()->mat_row(local_copy(m), r, out); }

void ds_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    const ds_kernels *k = ds_kernels_active();
    if (!split_here(m, (long)nrows * m->cols)) {
        k->gemv(local_copy(m), r0, nrows, x, y);
        return;
    }
#pragma omp parallel
    {
        int lo, hi;
        thread_rows(nrows, &lo, &hi);
        if (hi > lo)
            k->gemv(local_copy(m), r0 + lo, hi - lo, x, y + lo);
    }
}

void ds_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    ds_kernels_active()->gemv_t(local_copy(m), r0, nrows, x, y);
}

void ds_gemm_t(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_kernels *k = ds_kernels_active();
    m = local_copy(m);
    if (k->gemm_t) {
        k->gemm_t(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
    for (int t = 0; t < n; t++)
        k->gemv_t(m, r0, nrows, X + (size_t)t * ldx, Y + (size_t)t * ldy);
}

void ds_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_kernels *k = ds_kernels_active();
    if (!split_here(m, (long)nrows * m->cols * n)) {
        k->gemm(local_copy(m), r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
#pragma omp parallel
    {
        int lo, hi;
        thread_rows(nrows, &lo, &hi);
        if (hi > lo)
            k->gemm(local_copy(m), r0 + lo, hi - lo, X, ldx, n, Y + lo, ldy);
    }
}

int ds_gemm_bf16_rounds(ds_dtype dt)
{
    return dt == DS_DT_F8_E4M3 || dt == DS_DT_BF16 || dt == DS_DT_Q8_0 || dt == DS_DT_Q4_K;
}

int ds_gemm_bf16_native(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return ds_cpu_isa() == DS_ISA_AVX512 && ds_cpu_get_features()->avx512_bf16;
#else
    return 0;
#endif
}

/* X rounded to bf16 (nearest even), then the exact kernels: the same
 * products as the vdpbf16ps kernels (a bf16 activation times an exact weight
 * code is exact in f32), summed in another order.  Q8_0 products of fewer
 * than DS_GEMM_BF16_MIN_N tokens and CPUs without AVX512_BF16 take this
 * path, so a token's result does not depend on how many tokens share its
 * step or on the CPU beyond f32 summation order. */
static void gemm_rounded(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const int cols = m->cols;
    float *xr = malloc(sizeof(float) * (size_t)n * (size_t)cols);
    if (!xr) {                  /* no memory for the copy: round in place is not allowed, go exact */
        ds_gemm(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
    for (int t = 0; t < n; t++) {
        const uint32_t *src = (const uint32_t *)(const void *)(X + (size_t)t * ldx);
        uint32_t *dst = (uint32_t *)(void *)(xr + (size_t)t * cols);
        for (int c = 0; c < cols; c++) {
            uint32_t u = src[c];
            const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
            dst[c] = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) & 0xffff0000u : r;   /* NaN stays NaN */
        }
    }
    ds_gemm(m, r0, nrows, xr, cols, n, Y, ldy);
    free(xr);
}

#if defined(__x86_64__) || defined(__i386__)
/* Bandwidth-bound: a replicated matrix is split here by rows, each thread
 * reading its own node's copy (as ds_gemv). */
static int gemm_bf16_small(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    if (!split_here(m, (long)nrows * m->cols * n))
        return ds_gemm_bf16_small_avx512(local_copy(m), r0, nrows, X, ldx, n, Y, ldy);
    int ok = 1;
#pragma omp parallel reduction(& : ok)
    {
        int lo, hi;
        thread_rows(nrows, &lo, &hi);
        if (hi > lo)
            ok = ds_gemm_bf16_small_avx512(local_copy(m), r0 + lo, hi - lo, X, ldx, n, Y + lo, ldy);
    }
    return ok;
}
#endif

#if defined(__x86_64__) || defined(__i386__)
/* Token t of X into the int8 form (see ds_q4k_i8_pack_avx2). */
static int q4k_i8_pack(const float *X, int ldx, int cols, int t, int8_t *xq, float *xd, float *xs)
{
    const int nblk = cols / DS_Q4_K_BLOCK;
    return ds_q4k_i8_pack_avx2(X + (size_t)t * ldx, cols, xq + (size_t)t * cols, xd + (size_t)t * nblk,
                               xs + 8 * (size_t)t * nblk);
}
#endif

int ds_gemm_bf16_q4k_i8(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
#if !defined(__x86_64__) && !defined(__i386__)
    (void)m, (void)r0, (void)nrows, (void)X, (void)ldx, (void)n, (void)Y, (void)ldy;
    return 0;
#else
    const int cols = m->cols, nblk = cols / DS_Q4_K_BLOCK;
    /* from DS_GEMM_BF16_MIN_N tokens only at the AVX2 level: AVX-512's f32
     * GEMM does as many multiply-adds an instruction */
    const int gemm = n >= DS_GEMM_BF16_MIN_N;
    if (m->dtype != DS_DT_Q4_K || cols % DS_Q4_K_BLOCK || n < 1 || !ds_cpu_isa_supported(DS_ISA_AVX2) ||
        (gemm && ds_cpu_isa() != DS_ISA_AVX2))
        return 0;
    /* one allocation: 2^e and the sub-block sums (9 floats a block), then the levels */
    float *xd = malloc(sizeof(float) * 9 * (size_t)n * nblk + (size_t)n * cols);
    float *xs = xd ? xd + (size_t)n * nblk : NULL;
    int8_t *xq = xd ? (int8_t *)(void *)(xs + 8 * (size_t)n * nblk) : NULL;
    int ok = xd != NULL;
    const int team = ds_worth_threads((long)nrows * cols * n) && !omp_in_parallel() && omp_get_max_threads() > 1;
    if (ok && team && gemm) {    /* decode packs a few tokens: no region for that */
#pragma omp parallel for schedule(static) reduction(& : ok)
        for (int t = 0; t < n; t++)
            ok &= q4k_i8_pack(X, ldx, cols, t, xq, xd, xs);
    } else
        for (int t = 0; t < n && ok; t++)
            ok = q4k_i8_pack(X, ldx, cols, t, xq, xd, xs);
    if (ok && team) {
#pragma omp parallel reduction(& : ok)
        {
            int lo, hi;
            thread_rows(nrows, &lo, &hi);
            if (hi > lo && gemm)
                ok = ds_q4k_i8_gemm_avx2(local_copy(m), r0 + lo, hi - lo, xq, xd, xs, n, Y + lo, ldy);
            else if (hi > lo)
                ds_q4k_i8_rows_avx2(local_copy(m), r0 + lo, hi - lo, xq, xd, xs, n, Y + lo, ldy);
        }
    } else if (ok && gemm)
        ok = ds_q4k_i8_gemm_avx2(local_copy(m), r0, nrows, xq, xd, xs, n, Y, ldy);
    else if (ok)
        ds_q4k_i8_rows_avx2(local_copy(m), r0, nrows, xq, xd, xs, n, Y, ldy);
    free(xd);
    return ok;
#endif
}

void ds_q4_k_act_round_rows(const float *X, int ldx, int n, int cols, float *out)
{
#if defined(__x86_64__) || defined(__i386__)
    if (ds_cpu_isa() == DS_ISA_AVX512) {
        for (int t = 0; t < n; t++)
            ds_q4_k_act_round_avx512(X + (size_t)t * ldx, cols, out + (size_t)t * cols);
        return;
    }
#endif
    for (int t = 0; t < n; t++)
        ds_q4_k_act_round(X + (size_t)t * ldx, cols, out + (size_t)t * cols);
}

void ds_gemm_bf16(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    if (!ds_gemm_bf16_rounds(m->dtype)) {
        ds_gemm(m, r0, nrows, X, ldx, n, Y, ldy);
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    /* the decode kernel takes Q4_K's activations to int8 itself */
    if (ds_gemm_bf16_native() && n < DS_GEMM_BF16_MIN_N && gemm_bf16_small(m, r0, nrows, X, ldx, n, Y, ldy))
        return;
    /* without the AVX512_BF16 kernels, Q4_K decode sums int8 dots on AVX2 */
    if ((ds_cpu_isa() == DS_ISA_AVX2 || ds_cpu_isa() == DS_ISA_AVX512) &&
        ds_gemm_bf16_q4k_i8(m, r0, nrows, X, ldx, n, Y, ldy))
        return;
#endif
    float *xq = NULL;
    if (m->dtype == DS_DT_Q4_K && (xq = malloc(sizeof(float) * (size_t)n * m->cols))) {
        ds_q4_k_act_round_rows(X, ldx, n, m->cols, xq);   /* exact in bf16: the rounding below keeps it */
        X = xq;
        ldx = m->cols;
    }
#if defined(__x86_64__) || defined(__i386__)
    /* compute-bound: the calling thread's copy serves the whole team */
    if (ds_gemm_bf16_native() && n >= DS_GEMM_BF16_MIN_N && ds_gemm_bf16_avx512(local_copy(m), r0, nrows, X, ldx, n, Y, ldy)) {
        free(xq);
        return;
    }
#endif
    gemm_rounded(m, r0, nrows, X, ldx, n, Y, ldy);
    free(xq);
}

void ds_gemm_bf16_parts(const ds_gemm_part *p, int np, int n)
{
#if defined(__x86_64__) || defined(__i386__)
    /* a replicated matrix is split by node (gemm_bf16_small): on its own */
    int one_region = ds_gemm_bf16_native() && n < DS_GEMM_BF16_MIN_N;
    for (int i = 0; i < np && one_region; i++)
        one_region = !p[i].m->copies && ds_gemm_bf16_rounds(p[i].m->dtype);
    if (one_region && ds_gemm_bf16_small_parts_avx512(p, np, n))
        return;
#endif
    for (int i = 0; i < np; i++)
        ds_gemm_bf16(p[i].m, p[i].r0, p[i].nrows, p[i].X, p[i].ldx, n, p[i].Y, p[i].ldy);
}

int ds_gemm_tn_fast(void)
{
    const ds_kernels *k = ds_kernels_active();
    return k->gemm_tn && k != &ds_kernels_scalar;   /* the scalar form is the reference, not a fast one */
}

/* The rows of A (keys) are split across the threads as a static
 * schedule splits them, so each thread reads the rows it has just written
 * in its own cache (attention's load_keys); the threads' partial products
 * are then added in thread order, a fixed order for a given team size. */
int ds_gemm_tn_f32(const float *A, int n, int cols, const float *X, int ldx, int nt, float *Y, int ldy)
{
    const ds_kernels *k = ds_kernels_active();
    if (!ds_gemm_tn_fast())
        return 0;
    const int nth = ds_worth_threads((long)n * cols * nt) && n >= 64 && !omp_in_parallel() ? omp_get_max_threads() : 1;
    float *part = nth > 1 ? malloc(sizeof(float) * (size_t)(nth - 1) * nt * cols) : NULL;
    if (!part) {
        k->gemm_tn(A, n, cols, X, ldx, 0, nt, Y, ldy);
        return 1;
    }
#pragma omp parallel num_threads(nth)
    {
        const int id = omp_get_thread_num(), team = omp_get_num_threads(), chunk = (n + team - 1) / team;
        const int r0 = id * chunk < n ? id * chunk : n, r1 = r0 + chunk < n ? r0 + chunk : n;
        float *y = id ? part + (size_t)(id - 1) * nt * cols : Y;
        if (r1 > r0)
            k->gemm_tn(A + (size_t)r0 * cols, r1 - r0, cols, X + r0, ldx, 0, nt, y, id ? cols : ldy);
        else
            for (int t = 0; t < nt; t++)
                memset(y + (size_t)t * (id ? cols : ldy), 0, sizeof(float) * (size_t)cols);
#pragma omp barrier
#pragma omp for schedule(static)
        for (int t = 0; t < nt; t++)
            for (int i = 1; i < team; i++)
                k->axpy(1.0f, part + ((size_t)(i - 1) * nt + t) * cols, Y + (size_t)t * ldy, cols);
    }
    free(part);
    return 1;
}

void ds_softmax(float *x, int n)
{
    const ds_kernels *k = ds_kernels_active();
    (k->softmax ? k->softmax : ds_kernels_scalar.softmax)(x, n);
}

float ds_dot(const float *a, const float *b, int n) { return ds_kernels_active()->dot(a, b, n); }

void ds_axpy(float a, const float *x, float *y, int n) { ds_kernels_active()->axpy(a, x, y, n); }

void ds_e4m3_to_f64(const uint8_t *q, size_t n, double *out) { ds_kernels_active()->e4m3_to_f64(q, n, out); }

void ds_index_scores(const double *qt, int nh, int dim, const float *w, const double *kd, const float *ks,
                     int n, float *score)
{
    ds_kernels_active()->index_scores(qt, nh, dim, w, kd, ks, n, score);
}

void ds_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8, const float *ks,
                         int n, float *score)
{
    ds_kernels_active()->index_scores_fp8(qt, nh, dim, w, k8, ks, n, score);
}

/* The tables' approximate scorers read key rows: the keys come out of
 * their tiles DS_INDEX_TILE * 4 at a time. */
int ds_index_scores_fp8_approx(const float *qt, int nh, int dim, const float *w, const uint8_t *tiles, int j0,
                               const float *ks, int n, float *score, float *bound)
{
    const ds_kernels *k = ds_kernels_active();
#if defined(__x86_64__) || defined(__i386__)
    if (k == &ds_kernels_avx512 && ds_index_scores_approx_bf16(qt, nh, dim, w, tiles, j0, ks, n, score, bound))
        return 1;
#endif
    if (!k->index_scores_approx || dim > DS_INDEX_MAXDIM)
        return 0;
    enum { ROWS = DS_INDEX_TILE * 4 };
    uint8_t rows[ROWS * DS_INDEX_MAXDIM];
    for (int i = 0; i < n; i += ROWS) {
        const int kn = n - i < ROWS ? n - i : ROWS;
        ds_index_keys_get(tiles, dim, j0 + i, kn, rows);
        k->index_scores_approx(qt, nh, dim, w, rows, ks + i, kn, score + i, bound + i);
    }
    return 1;
}

size_t ds_attn_q_floats(int nh, int kvl, int rope)
{
    const size_t nhb = (size_t)(nh + DS_ATTN_HB - 1) / DS_ATTN_HB;
    return nhb * (size_t)((kvl + 15) / 16 + (rope + 15) / 16) * 256;
}

void ds_attn_pack_q(const float *qabs, int ldqa, const float *qr, int ldqr, int nh, int kvl, int rope, float *qp)
{
    const int ncl = (kvl + 15) / 16, ncr = (rope + 15) / 16;
    memset(qp, 0, sizeof(float) * ds_attn_q_floats(nh, kvl, rope));
    /* a head's 16 columns of a chunk are contiguous on both sides: copied
     * as runs (element by element with a 1 KiB stride, 7 us a query) */
    for (int h = 0; h < nh; h++) {
        float *qb = qp + (size_t)(h / 16) * (ncl + ncr) * 256 + (h % 16) * 16;
        for (int c = 0; c < kvl; c += 16)
            memcpy(qb + (size_t)(c / 16) * 256, qabs + (size_t)h * ldqa + c,
                   sizeof(float) * (size_t)(kvl - c < 16 ? kvl - c : 16));
        for (int r = 0; r < rope; r += 16)
            memcpy(qb + (size_t)(ncl + r / 16) * 256, qr + (size_t)h * ldqr + r,
                   sizeof(float) * (size_t)(rope - r < 16 ? rope - r : 16));
    }
}

int ds_attn_fast(void)
{
    const ds_kernels *k = ds_kernels_active();
    return k->attn_scores && k != &ds_kernels_scalar;   /* the scalar form is the reference */
}

static const ds_kernels *attn_table(void)
{
    const ds_kernels *k = ds_kernels_active();
    return k->attn_scores ? k : &ds_kernels_scalar;
}

void ds_attn_scores(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *qp, int nhb, float *s,
                    int lds)
{
    attn_table()->attn_scores(k, pos, base, n, qp, nhb, s, lds);
}

void ds_attn_softmax(float *s, int n, int nhb, int lds, float scale)
{
    attn_table()->attn_softmax(s, n, nhb, lds, scale);
}

void ds_attn_wsum(const ds_attn_keys *k, const int32_t *pos, int base, int n, const float *p, int nhb, int ldp,
                  float *o)
{
    attn_table()->attn_wsum(k, pos, base, n, p, nhb, ldp, o);
}

/* ---- work split (worksplit.h) -------------------------------------------- */
static __thread ds_split *split_buf;
static __thread int split_cap;
static pthread_key_t split_key;
static pthread_once_t split_once = PTHREAD_ONCE_INIT;

static void split_key_make(void) { pthread_key_create(&split_key, free); }

ds_split *ds_split_begin(int nth, int n)
{
    if (nth < 1 || n < 0)
        return NULL;
    if (split_cap < nth + 1) {
        pthread_once(&split_once, split_key_make);
        free(split_buf);
        split_cap = 0;
        split_buf = aligned_alloc(64, sizeof(ds_split) * (size_t)(nth + 1));
        pthread_setspecific(split_key, split_buf);   /* freed when the thread exits */
        if (!split_buf)
            return NULL;
        split_cap = nth + 1;
    }
    split_buf[0].r = (uint64_t)nth;   /* slot 0 holds the count, the ranges follow */
    for (int t = 0; t < nth; t++) {
        const uint64_t lo = (uint64_t)((int64_t)n * t / nth), hi = (uint64_t)((int64_t)n * (t + 1) / nth);
        split_buf[t + 1].r = lo | hi << 32;
    }
    return split_buf;
}
