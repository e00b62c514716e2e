/* kernels_avx512bf16.c — the bf16-activation GEMM of ds_gemm_bf16 (see
 * kernels.h) on AVX512_BF16: vdpbf16ps multiplies 32 bf16 pairs and adds
 * them into 16 f32 lanes, twice the multiply-adds of an f32 FMA.
 *
 * Semantics (ds_gemm_bf16_ref in kernels_scalar.c is the reference): every
 * activation is rounded to bf16 (nearest even); weight codes enter the dot
 * exactly — FP8 e4m3 values (subnormals included), Q8_0 int8 quants, Q4_K
 * 4-bit quants and BF16 weights all have at most 8 significant bits and an
 * exponent inside bf16's range — and products are summed in f32.  Block
 * multipliers are applied in f32 after each block's dot: the FP8 128x128
 * scale per 128 columns, Q8_0's d per 32, and Q4_K's d*sc and dmin*m per
 * 32-column sub-block (w = d*sc*q - dmin*m, so the dot is
 * d*sc*(q . x) - dmin*m*sum(x), with sum(x) of the rounded activations
 * taken once per token and sub-block).
 *
 * Layout.  Rows go in panels of 32; a panel is converted once per call into
 * "pair-interleaved" bf16: for each column pair k, the 32 rows' (w[2k],
 * w[2k+1]) as 32-bit words, so one aligned load gives 16 rows' pairs and
 * vdpbf16ps against a broadcast activation pair accumulates 16 rows of one
 * token.  The conversion takes 16 rows x 32 columns into 16 registers and
 * transposes them as a 16x16 matrix of 32-bit pairs.  Activations are
 * rounded and packed once per call (row-major bf16, zero padded).  The
 * micro-kernel keeps 2 row vectors x up to 6 tokens of block sums and as
 * many running totals in registers (12 tokens of totals for unscaled BF16),
 * reading the panel from L1/L2 once per token group.
 *
 * Only the functions carry target attributes; cpu.c's avx512_bf16 bit is
 * checked (ds_gemm_bf16 in kernels_dispatch.c) before anything here runs.
 * OpenMP regions stay in plain functions, as in kernels_avx512.c. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "quant.h"

#define TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define INL static inline __attribute__((always_inline)) TBF
#define NOINL static __attribute__((noinline)) TBF

enum {
    PR = 32,            /* rows per panel: two vectors of 16 */
    CK = 32,            /* columns per conversion step: 16 pairs */
    TS = 6,             /* tokens per micro-tile with block scales */
    TU = 12,            /* tokens per micro-tile for unscaled BF16 */
};

/* 32 floats (exact in bf16) -> 32 bf16 in memory order, as 16 pairs. */
INL __m512i to_bf16x32(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

/* 16 e4m3 codes -> 16 floats, 2^-8 times their values (as in kernels_avx512.c). */
INL __m512 e4m3x16(__m128i b)
{
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);
    h = _mm256_and_si256(h, _mm256_set1_epi16((short)0xbf80));
    return _mm512_cvtph_ps(h);
}

INL __m512 i8x16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }

INL const uint8_t *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_dtype_row_bytes(m->dtype, m->cols);
}

/* Columns c0 .. c0+31 of row r as 32 bf16 codes (zeros past the last
 * column).  FP8 codes come out 2^-8 times their value (the panel scales
 * carry the 256). */
INL __m512i row_chunk(const ds_mat *m, ds_dtype dt, const uint8_t *row, int c0, __m512i q4tbl)
{
    const int left = m->cols - c0;
    const __mmask32 k = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
    switch (dt) {
    case DS_DT_BF16:
        return _mm512_maskz_loadu_epi16(k, (const uint16_t *)row + c0);
    case DS_DT_F8_E4M3: {
        const __m256i v = _mm256_maskz_loadu_epi8(k, row + c0);
        return to_bf16x32(e4m3x16(_mm256_castsi256_si128(v)), e4m3x16(_mm256_extracti128_si256(v, 1)));
    }
    case DS_DT_Q8_0: {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(row + (size_t)(c0 / 32) * DS_Q8_0_BYTES + 2));
        return to_bf16x32(i8x16(_mm256_castsi256_si128(v)), i8x16(_mm256_extracti128_si256(v, 1)));
    }
    case DS_DT_Q4_K: {
        const int j = (c0 / 32) % 8;      /* sub-block in its super-block */
        const uint8_t *qs = row + (size_t)(c0 / 256) * DS_Q4_K_BYTES + DS_Q4_K_OFF_QS + 32 * (j / 2);
        __m512i q = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)qs));
        q = (j & 1) ? _mm512_srli_epi16(q, 4) : _mm512_and_si512(q, _mm512_set1_epi16(15));
        return _mm512_permutexvar_epi16(q, q4tbl);
    }
    default:
        return _mm512_setzero_si512();
    }
}

/* Transposes a 16x16 matrix of 32-bit words (v[i] = row i) and stores
 * column j at dst + j * stride (in words). */
INL void transpose16_store(__m512i v[16], uint32_t *dst, size_t stride)
{
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    /* v[4g + j], lane L: rows 4g..4g+3 of column 4L + j */
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        v[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        v[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        v[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        v[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512i a0 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0x88);      /* g0 L0, g0 L2, g1 L0, g1 L2 */
        const __m512i a1 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0xdd);      /* g0 L1, g0 L3, g1 L1, g1 L3 */
        const __m512i b0 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0x88);
        const __m512i b1 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0xdd);
        _mm512_store_si512((__m512i *)(dst + (size_t)j * stride), _mm512_shuffle_i32x4(a0, b0, 0x88));
        _mm512_store_si512((__m512i *)(dst + (size_t)(8 + j) * stride), _mm512_shuffle_i32x4(a0, b0, 0xdd));
        _mm512_store_si512((__m512i *)(dst + (size_t)(4 + j) * stride), _mm512_shuffle_i32x4(a1, b1, 0x88));
        _mm512_store_si512((__m512i *)(dst + (size_t)(12 + j) * stride), _mm512_shuffle_i32x4(a1, b1, 0xdd));
    }
}

/* The codes of rows[0..15] into the pair-interleaved panel (half h), for
 * one dtype (a constant after inlining). */
INL void pack_rows(const ds_mat *m, ds_dtype dt, const uint8_t *const rows[16], int h, int kpp, uint32_t *wp)
{
    const __m512 k16 = _mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i q4tbl = to_bf16x32(k16, k16);
    for (int c0 = 0; c0 < 2 * kpp; c0 += CK) {   /* 2 * kpp is cols rounded up to CK: c0 < cols */
        __m512i v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            v[i] = row_chunk(m, dt, rows[i], c0, q4tbl);
        transpose16_store(v, wp + (size_t)(c0 / 2) * PR + 16 * h, PR);
    }
}

/* Columns per scale block of a dtype (0: unscaled). */
static int block_cols(ds_dtype dt)
{
    switch (dt) {
    case DS_DT_F8_E4M3: return DS_QBLOCK;
    case DS_DT_Q8_0:
    case DS_DT_Q4_K: return 32;
    default: return 0;
    }
}

/* Converts the nr (<= PR) rows starting at r into wp (pair-interleaved,
 * kpp pairs x PR rows) and their block multipliers into
 * ps (and Q4_K's min terms into pm): [block][PR] floats. */
NOINL void pack_panel(const ds_mat *m, int r, int nr, int kpp, uint32_t *wp, float *ps, float *pm)
{
    const ds_dtype dt = m->dtype;
    for (int h = 0; h < PR / 16; h++) {
        /* rows past nr repeat row r: packed, never stored (their scales
         * are 0 and the stores are masked) */
        const uint8_t *rows[16];
        for (int i = 0; i < 16; i++)
            rows[i] = row_ptr(m, h * 16 + i < nr ? r + h * 16 + i : r);
        switch (dt) {
        case DS_DT_BF16: pack_rows(m, DS_DT_BF16, rows, h, kpp, wp); break;
        case DS_DT_F8_E4M3: pack_rows(m, DS_DT_F8_E4M3, rows, h, kpp, wp); break;
        case DS_DT_Q8_0: pack_rows(m, DS_DT_Q8_0, rows, h, kpp, wp); break;
        default: pack_rows(m, DS_DT_Q4_K, rows, h, kpp, wp); break;
        }
    }
    const int bc = block_cols(dt);
    if (!bc)
        return;
    const int nb = (m->cols + bc - 1) / bc, sc = (m->cols + DS_QBLOCK - 1) / DS_QBLOCK;
    for (int i = 0; i < PR; i++) {
        if (i >= nr) {
            for (int b = 0; b < nb; b++)
                ps[(size_t)b * PR + i] = pm[(size_t)b * PR + i] = 0.0f;
            continue;
        }
        const uint8_t *row = row_ptr(m, r + i);
        for (int b = 0; b < nb; b++) {
            float a = 0.0f, mn = 0.0f;
            if (dt == DS_DT_F8_E4M3) {
                a = m->scale[(size_t)((r + i) / DS_QBLOCK) * sc + b] * 256.0f;
            } else if (dt == DS_DT_Q8_0) {
                a = ds_load_f16(row + (size_t)b * DS_Q8_0_BYTES);
            } else {
                const uint8_t *blk = row + (size_t)(b / 8) * DS_Q4_K_BYTES;
                int s, mm;
                ds_q4_k_scale_min(blk + DS_Q4_K_OFF_SCALES, b % 8, &s, &mm);
                a = ds_load_f16(blk) * (float)s;
                mn = ds_load_f16(blk + 2) * (float)mm;
            }
            ps[(size_t)b * PR + i] = a;
            pm[(size_t)b * PR + i] = mn;
        }
    }
}

/* Rounds X[t] to bf16 into xb (rows of ldb pairs, zero padded) and, for
 * Q4_K, sums each 32-column sub-block of the rounded values into xs (rows
 * of nb floats). */
NOINL void pack_x(const float *x, int cols, int ldb, uint32_t *xb, float *xs)
{
    for (int c0 = 0; c0 < 2 * ldb; c0 += 32) {
        const int left = cols - c0;
        __m512i v = _mm512_setzero_si512();
        if (left > 0) {
            const __mmask16 k0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const __mmask16 k1 = left >= 32 ? (__mmask16)0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            v = to_bf16x32(_mm512_maskz_loadu_ps(k0, x + c0), _mm512_maskz_loadu_ps(k1, x + c0 + 16));
        }
        _mm512_store_si512((__m512i *)(xb + c0 / 2), v);
        if (xs && left > 0) {
            /* bf16 pairs back to f32: low halves shifted up, high halves masked */
            const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
            xs[c0 / 32] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
        }
    }
}

/* One panel (32 rows, 2 vectors) x nt tokens (a constant after inlining):
 * block dots in tmp, folded into tot with the block multipliers; unscaled
 * (BF16) dots go straight into tot.  Y rows past nr are not written. */
INL void panel_tile(const uint32_t *wp, int nkp, int scaled, int bkp, const float *ps, const float *pm, const uint32_t *xb,
                    int ldb, const float *xs, int nb, int nt, int mins, float *Y, int ldy, int nr)
{
    enum { TM = TU };
    __m512 tot[2][TM];
#pragma GCC unroll 12
    for (int t = 0; t < TM; t++)
        tot[0][t] = tot[1][t] = _mm512_setzero_ps();
    if (!scaled) {
        for (int kp = 0; kp < nkp; kp++) {
            const __m512bh w0 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR));
            const __m512bh w1 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR + 16));
#pragma GCC unroll 12
            for (int t = 0; t < nt; t++) {
                const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[(size_t)t * ldb + kp]);
                tot[0][t] = _mm512_dpbf16_ps(tot[0][t], w0, x);
                tot[1][t] = _mm512_dpbf16_ps(tot[1][t], w1, x);
            }
        }
    } else {
        for (int k0 = 0, b = 0; k0 < nkp; k0 += bkp, b++) {
            const int k1 = k0 + bkp < nkp ? k0 + bkp : nkp;
            __m512 tmp[2][TS];
#pragma GCC unroll 6
            for (int t = 0; t < TS; t++)
                tmp[0][t] = tmp[1][t] = _mm512_setzero_ps();
            for (int kp = k0; kp < k1; kp++) {
                const __m512bh w0 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR));
                const __m512bh w1 = (__m512bh)_mm512_load_si512((const __m512i *)(wp + (size_t)kp * PR + 16));
#pragma GCC unroll 6
                for (int t = 0; t < nt && t < TS; t++) {
                    const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[(size_t)t * ldb + kp]);
                    tmp[0][t] = _mm512_dpbf16_ps(tmp[0][t], w0, x);
                    tmp[1][t] = _mm512_dpbf16_ps(tmp[1][t], w1, x);
                }
            }
            const __m512 s0 = _mm512_load_ps(ps + (size_t)b * PR), s1 = _mm512_load_ps(ps + (size_t)b * PR + 16);
#pragma GCC unroll 6
            for (int t = 0; t < nt && t < TS; t++) {
                tot[0][t] = _mm512_fmadd_ps(tmp[0][t], s0, tot[0][t]);
                tot[1][t] = _mm512_fmadd_ps(tmp[1][t], s1, tot[1][t]);
            }
            if (mins) {
                const __m512 m0 = _mm512_load_ps(pm + (size_t)b * PR), m1 = _mm512_load_ps(pm + (size_t)b * PR + 16);
#pragma GCC unroll 6
                for (int t = 0; t < nt && t < TS; t++) {
                    const __m512 sx = _mm512_set1_ps(xs[(size_t)t * nb + b]);
                    tot[0][t] = _mm512_fnmadd_ps(m0, sx, tot[0][t]);
                    tot[1][t] = _mm512_fnmadd_ps(m1, sx, tot[1][t]);
                }
            }
        }
    }
    const __mmask16 k0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 k1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
#pragma GCC unroll 12
    for (int t = 0; t < nt; t++) {
        _mm512_mask_storeu_ps(Y + (size_t)t * ldy, k0, tot[0][t]);
        _mm512_mask_storeu_ps(Y + (size_t)t * ldy + 16, k1, tot[1][t]);
    }
}

#define SCALED(N, M) \
    case N: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, N, M, Y, ldy, nr); break;
#define UNSCALED(N) \
    case N: panel_tile(wp, nkp, 0, 0, ps, pm, xb, ldb, xs, nb, N, 0, Y, ldy, nr); break;

/* The panel against every token, in groups of TS (scaled) or TU tokens. */
NOINL void panel_run(const uint32_t *wp, int nkp, int bkp, const float *ps, const float *pm, const uint32_t *xb0,
                     int ldb, const float *xs0, int nb, int n, int mins, float *Y0, int ldy, int nr)
{
    const int tt = bkp ? TS : TU;
    for (int t0 = 0; t0 < n; t0 += tt) {
        const int nt = n - t0 < tt ? n - t0 : tt;
        const uint32_t *xb = xb0 + (size_t)t0 * ldb;
        const float *xs = xs0 ? xs0 + (size_t)t0 * nb : NULL;
        float *Y = Y0 + (size_t)t0 * ldy;
        if (bkp && mins) {
            switch (nt) {
                SCALED(1, 1) SCALED(2, 1) SCALED(3, 1) SCALED(4, 1) SCALED(5, 1)
            default: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, TS, 1, Y, ldy, nr); break;
            }
        } else if (bkp) {
            switch (nt) {
                SCALED(1, 0) SCALED(2, 0) SCALED(3, 0) SCALED(4, 0) SCALED(5, 0)
            default: panel_tile(wp, nkp, 1, bkp, ps, pm, xb, ldb, xs, nb, TS, 0, Y, ldy, nr); break;
            }
        } else {
            switch (nt) {
                UNSCALED(1) UNSCALED(2) UNSCALED(3) UNSCALED(4) UNSCALED(5) UNSCALED(6)
                UNSCALED(7) UNSCALED(8) UNSCALED(9) UNSCALED(10) UNSCALED(11)
            default: panel_tile(wp, nkp, 0, 0, ps, pm, xb, ldb, xs, nb, TU, 0, Y, ldy, nr); break;
            }
        }
    }
}

/* Per-thread scratch of the calling thread, grown as needed and kept
 * (a prefill calls the GEMM hundreds of times with the same shapes); a
 * thread key frees it when the thread exits (a server's engine thread). */
static __thread void *scratch;
static __thread size_t scratch_bytes;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void) { pthread_key_create(&scratch_key, free); }

static void *scratch_get(size_t bytes)
{
    if (bytes <= scratch_bytes)
        return scratch;
    pthread_once(&scratch_once, scratch_key_make);
    free(scratch);
    scratch = aligned_alloc(64, bytes);
    scratch_bytes = scratch ? bytes : 0;
    pthread_setspecific(scratch_key, scratch);
    return scratch;
}

static size_t up64(size_t b) { return (b + 63) & ~(size_t)63; }

int ds_gemm_bf16_avx512(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n, float *Y, int ldy)
{
    const ds_dtype dt = m->dtype;
    if (dt != DS_DT_BF16 && dt != DS_DT_F8_E4M3 && dt != DS_DT_Q8_0 && dt != DS_DT_Q4_K)
        return 0;
    const int cols = m->cols, kpp = (cols + CK - 1) / CK * (CK / 2), nkp = (cols + 1) / 2;
    const int bc = block_cols(dt), bkp = bc / 2, nb = bc ? (cols + bc - 1) / bc : 1;
    const int mins = dt == DS_DT_Q4_K;
    const int nth = omp_get_max_threads() > 0 ? omp_get_max_threads() : 1;
    const size_t xb_b = up64(sizeof(uint32_t) * (size_t)n * kpp);
    const size_t xs_b = mins ? up64(sizeof(float) * (size_t)n * nb) : 0;
    const size_t wp_b = up64(sizeof(uint32_t) * (size_t)kpp * PR), ps_b = up64(sizeof(float) * (size_t)nb * PR);
    const size_t per = wp_b + 2 * ps_b;
    uint8_t *buf = scratch_get(xb_b + xs_b + (size_t)nth * per);
    if (!buf)
        return 0;
    uint32_t *xb = (uint32_t *)buf;
    float *xs = mins ? (float *)(buf + xb_b) : NULL;
    const long work = (long)nrows * cols * n;
#pragma omp parallel for schedule(static) if (ds_worth_threads(work) && n > 1)
    for (int t = 0; t < n; t++)
        pack_x(X + (size_t)t * ldx, cols, kpp, xb + (size_t)t * kpp, xs ? xs + (size_t)t * nb : NULL);
    const int npan = (nrows + PR - 1) / PR;
#pragma omp parallel if (ds_worth_threads(work))
    {
        const int id = omp_get_thread_num() < nth ? omp_get_thread_num() : 0;
        uint8_t *mine = buf + xb_b + xs_b + (size_t)id * per;
        uint32_t *wp = (uint32_t *)mine;
        float *ps = (float *)(mine + wp_b), *pm = (float *)(mine + wp_b + ps_b);
#pragma omp for schedule(static)
        for (int p = 0; p < npan; p++) {
            const int i0 = p * PR, nr = nrows - i0 < PR ? nrows - i0 : PR;
            pack_panel(m, r0 + i0, nr, kpp, wp, ps, pm);
            panel_run(wp, nkp, bkp, ps, pm, xb, kpp, xs, nb, n, mins, Y + i0, ldy, nr);
        }
    }
    return 1;
}

#endif /* x86 */
