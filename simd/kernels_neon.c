/* kernels_neon.c — the aarch64 Advanced SIMD (NEON) kernel table
 * ds_kernels_neon: row dot products, row dequantisation, GEMV, transposed
 * GEMV, a register-tiled GEMM and dot/axpy over F32, BF16, F16, FP8 e4m3
 * (128x128 block scales), Q8_0 and Q4_K weights.
 *
 * NEON and the f16 <-> f32 conversions are part of the AArch64 baseline, so
 * the file needs no target attributes and the table is always usable on
 * aarch64; elsewhere the file compiles to nothing.  Same structure as
 * kernels_avx2.c.  Weights are consumed 8 at a time (two float32x4_t, one
 * 8-byte FP8 or 16-byte F16/BF16 load); NEON has no masked loads, so
 * weight and activation tails are copied into zero-padded temporaries and
 * stores of tails go through one too.
 *
 * FP8 decoding is the one of kernels_avx2.c: an e4m3 byte s.eeee.mmm is
 * moved into the f16 bit layout s.0eeee.mmm0000000 (sign-extend to 16 bits,
 * shift left 7, clear bit 14) and converted with fcvtl.  Every value,
 * subnormals included, comes out exactly 2^-8 times the true one; the 2^8 is
 * folded into the block scale (an exact power-of-two product).  The NaN
 * codes 0x7f/0xff decode to the finite +-480: valid weights never hold them.
 *
 * Q8_0 / Q4_K (layouts in quant.h): as in kernels_avx2.c the quants are
 * widened to f32 and FMA'd with the unquantised f32 activations, so results
 * stay within f32 rounding of the scalar reference and mat_row is bitwise
 * equal to it (the Q4_K decode (d*sc)*q - dmin*m has an exact product).  An
 * int8 dot-product path (sdot) would change the numbers by the activation
 * quantisation error and is left out on purpose. */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_isa.h"
#include "quant.h"

#define INL static inline __attribute__((always_inline))
#define NOINL static __attribute__((noinline))

enum {
    VW = 8,             /* weights per step: two float32x4_t */
    KC = 512,           /* GEMM column chunk: 4 rows + 4 tokens of it stay in L1 */
    RT = 4,             /* GEMM rows per register tile */
    TT = 4,             /* GEMM tokens per register tile: 16 accumulators + 4 weights of 32 q-regs */
};

/* Eight floats as two quad registers. */
typedef struct v8 {
    float32x4_t lo, hi;
} v8;

INL v8 v8_zero(void) { return (v8){vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)}; }
INL v8 v8_load(const float *p) { return (v8){vld1q_f32(p), vld1q_f32(p + 4)}; }

INL void v8_store(float *p, v8 v)
{
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
}

/* x[0..left) zero-padded to 8 lanes (left < 8). */
INL v8 v8_load_tail(const float *x, int left)
{
    float tmp[VW] = {0};
    memcpy(tmp, x, sizeof(float) * (size_t)left);
    return v8_load(tmp);
}

INL void v8_store_tail(float *p, v8 v, int left)
{
    float tmp[VW];
    v8_store(tmp, v);
    memcpy(p, tmp, sizeof(float) * (size_t)left);
}

/* acc + a * b, lane-wise. */
INL v8 v8_fma(v8 acc, v8 a, v8 b) { return (v8){vfmaq_f32(acc.lo, a.lo, b.lo), vfmaq_f32(acc.hi, a.hi, b.hi)}; }
INL v8 v8_fma_n(v8 acc, v8 a, float s) { return (v8){vfmaq_n_f32(acc.lo, a.lo, s), vfmaq_n_f32(acc.hi, a.hi, s)}; }
INL v8 v8_mul_n(v8 a, float s) { return (v8){vmulq_n_f32(a.lo, s), vmulq_n_f32(a.hi, s)}; }
INL float v8_hsum(v8 v) { return vaddvq_f32(vaddq_f32(v.lo, v.hi)); }

/* 8 f16 bit patterns -> 8 floats (exact). */
INL v8 f16x8(uint16x8_t h)
{
    const float16x8_t f = vreinterpretq_f16_u16(h);
    return (v8){vcvt_f32_f16(vget_low_f16(f)), vcvt_high_f32_f16(f)};
}

/* 8 e4m3 codes -> 8 floats, each 2^-8 times its true value (see top). */
INL v8 e4m3x8(uint8x8_t b)
{
    uint16x8_t h = vreinterpretq_u16_s16(vshlq_n_s16(vmovl_s8(vreinterpret_s8_u8(b)), 7));
    return f16x8(vandq_u16(h, vdupq_n_u16(0xbf80)));
}

/* 8 weights of dtype dt starting at element c.  dt is a constant at every
 * (inlined) call site, so the switch folds. */
INL v8 load_w(ds_dtype dt, const void *w, int c)
{
    switch (dt) {
    case DS_DT_F32:
        return v8_load((const float *)w + c);
    case DS_DT_BF16: {
        const uint16x8_t u = vld1q_u16((const uint16_t *)w + c);
        return (v8){vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(u), 16)),
                    vreinterpretq_f32_u32(vshll_high_n_u16(u, 16))};
    }
    case DS_DT_F16:
        return f16x8(vld1q_u16((const uint16_t *)w + c));
    case DS_DT_F8_E4M3:
        return e4m3x8(vld1_u8((const uint8_t *)w + c));
    default:
        return v8_zero();
    }
}

/* The last left < 8 weights from element c, zero-padded: copied first
 * because a full-width load could run past the end of the matrix. */
INL v8 load_w_tail(ds_dtype dt, const void *w, int c, int left)
{
    const size_t es = ds_dtype_size(dt);
    uint8_t tmp[VW * sizeof(float)] = {0};
    memcpy(tmp, (const uint8_t *)w + (size_t)c * es, (size_t)left * es);
    return load_w(dt, tmp, 0);
}

/* Lane sums of w[0..n) * x[0..n) (FP8 values still 2^-8 scaled). */
INL v8 span_dot(ds_dtype dt, const void *w, const float *x, int n)
{
    v8 a0 = v8_zero(), a1 = v8_zero();
    int c = 0;
    for (; c + 2 * VW <= n; c += 2 * VW) {
        a0 = v8_fma(a0, load_w(dt, w, c), v8_load(x + c));
        a1 = v8_fma(a1, load_w(dt, w, c + VW), v8_load(x + c + VW));
    }
    if (c + VW <= n) {
        a0 = v8_fma(a0, load_w(dt, w, c), v8_load(x + c));
        c += VW;
    }
    if (c < n)
        a1 = v8_fma(a1, load_w_tail(dt, w, c, n - c), v8_load_tail(x + c, n - c));
    return (v8){vaddq_f32(a0.lo, a1.lo), vaddq_f32(a0.hi, a1.hi)};
}

INL const void *row_ptr(const ds_mat *m, int r)
{
    return (const uint8_t *)m->data + (size_t)r * ds_mat_row_bytes(m);
}

/* ---- Q8_0 / Q4_K -------------------------------------------------------- */

/* The f16 at p (exact, like ds_f16_to_f32). */
INL float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* 8 int8 quants -> 8 floats. */
INL v8 q8x8(const uint8_t *q)
{
    const int16x8_t s = vmovl_s8(vld1_s8((const int8_t *)q));
    return (v8){vcvtq_f32_s32(vmovl_s16(vget_low_s16(s))), vcvtq_f32_s32(vmovl_high_s16(s))};
}

/* Lane sums of q[i] * x[i] over one Q8_0 block (d not yet applied). */
INL v8 q8_0_block_dot(const uint8_t *b, const float *x)
{
    const uint8_t *q = b + 2;
    v8 a0 = v8_fma(v8_zero(), q8x8(q), v8_load(x));
    v8 a1 = v8_fma(v8_zero(), q8x8(q + 8), v8_load(x + 8));
    a0 = v8_fma(a0, q8x8(q + 16), v8_load(x + 16));
    a1 = v8_fma(a1, q8x8(q + 24), v8_load(x + 24));
    return (v8){vaddq_f32(a0.lo, a1.lo), vaddq_f32(a0.hi, a1.hi)};
}

NOINL float q8_0_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    v8 total = v8_zero();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q8_0_BLOCK, b += DS_Q8_0_BYTES)
        total = v8_fma_n(total, q8_0_block_dot(b, x + c0), f16_at(b));
    return v8_hsum(total);
}

/* The multipliers of sub-blocks 2g and 2g+1 of a Q4_K block: weight =
 * q * a - b with a = d * sc, b = dmin * m (both exact products). */
INL void q4_k_pair(const uint8_t *blk, int g, float a[2], float bm[2])
{
    const float d = f16_at(blk), dmin = f16_at(blk + 2);
    for (int h = 0; h < 2; h++) {
        int sc, mn;
        ds_q4_k_scale_min(blk + DS_Q4_K_OFF_SCALES, 2 * g + h, &sc, &mn);
        a[h] = d * (float)sc;
        bm[h] = dmin * (float)mn;
    }
}

/* 8 nibbles (0..15, in u16 lanes) -> 8 weights q * a - b. */
INL v8 q4_k_nib8(uint16x8_t q, float a, float b)
{
    const float32x4_t vb = vdupq_n_f32(b);
    const float32x4_t lo = vcvtq_f32_u32(vmovl_u16(vget_low_u16(q)));
    const float32x4_t hi = vcvtq_f32_u32(vmovl_high_u16(q));
    return (v8){vsubq_f32(vmulq_n_f32(lo, a), vb), vsubq_f32(vmulq_n_f32(hi, a), vb)};
}

/* Weights l .. l+7 of sub-blocks 2g (lo) and 2g+1 (hi) of a Q4_K block. */
INL void q4_k_w8(const uint8_t *blk, int g, int l, const float a[2], const float bm[2], v8 *lo, v8 *hi)
{
    const uint16x8_t v = vmovl_u8(vld1_u8(blk + DS_Q4_K_OFF_QS + 32 * g + l));
    *lo = q4_k_nib8(vandq_u16(v, vdupq_n_u16(15)), a[0], bm[0]);
    *hi = q4_k_nib8(vshrq_n_u16(v, 4), a[1], bm[1]);
}

NOINL float q4_k_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *b = row_ptr(m, r);
    v8 acc0 = v8_zero(), acc1 = v8_zero();
    for (int c0 = 0; c0 < m->cols; c0 += DS_Q4_K_BLOCK, b += DS_Q4_K_BYTES)
        for (int g = 0; g < 4; g++) {
            float a[2], bm[2];
            q4_k_pair(b, g, a, bm);
            const float *xg = x + c0 + 64 * g;
            for (int l = 0; l < 32; l += VW) {
                v8 lo, hi;
                q4_k_w8(b, g, l, a, bm, &lo, &hi);
                acc0 = v8_fma(acc0, lo, v8_load(xg + l));
                acc1 = v8_fma(acc1, hi, v8_load(xg + 32 + l));
            }
        }
    return v8_hsum(acc0) + v8_hsum(acc1);
}

/* Decodes one block at b into out (32 or 256 floats), bitwise equal to the
 * quant.c decoders. */
INL void block_decode(ds_dtype dt, const uint8_t *b, float *out)
{
    if (dt == DS_DT_Q8_0) {
        const float d = f16_at(b);
        for (int l = 0; l < DS_Q8_0_BLOCK; l += VW)
            v8_store(out + l, v8_mul_n(q8x8(b + 2 + l), d));
        return;
    }
    for (int g = 0; g < 4; g++) {
        float a[2], bm[2];
        q4_k_pair(b, g, a, bm);
        for (int l = 0; l < 32; l += VW) {
            v8 lo, hi;
            q4_k_w8(b, g, l, a, bm, &lo, &hi);
            v8_store(out + 64 * g + l, lo);
            v8_store(out + 64 * g + 32 + l, hi);
        }
    }
}

/* out[j] = W[r][c0 + j], j < len, for a block type; c0 and len are
 * multiples of the block (rows are whole blocks, chunks start at 0 or a
 * multiple of KC). */
NOINL void block_convert(const ds_mat *m, int r, int c0, int len, float *out)
{
    const int blk = (int)ds_dtype_block(m->dtype);
    const size_t bb = ds_dtype_block_bytes(m->dtype);
    const uint8_t *b = (const uint8_t *)row_ptr(m, r) + (size_t)(c0 / blk) * bb;
    for (int j = 0; j < len; j += blk, b += bb)
        block_decode(m->dtype, b, out + j);
}

/* ---- plain and FP8 rows --------------------------------------------------- */

INL const float *scale_row(const ds_mat *m, int r)
{
    return m->scale + (size_t)(r / DS_QBLOCK) * ((m->cols + DS_QBLOCK - 1) / DS_QBLOCK);
}

INL float fp8_row_dot(const ds_mat *m, int r, const float *x)
{
    const uint8_t *w = row_ptr(m, r);
    const float *s = scale_row(m, r);
    v8 total = v8_zero();
    for (int c0 = 0, b = 0; c0 < m->cols; c0 += DS_QBLOCK, b++) {
        int len = m->cols - c0 < DS_QBLOCK ? m->cols - c0 : DS_QBLOCK;
        total = v8_fma_n(total, span_dot(DS_DT_F8_E4M3, w + c0, x + c0, len), s[b] * 256.0f);
    }
    return v8_hsum(total);
}

NOINL float row_dot(const ds_mat *m, int r, const float *x)
{
    switch (m->dtype) {
    case DS_DT_F32: return v8_hsum(span_dot(DS_DT_F32, row_ptr(m, r), x, m->cols));
    case DS_DT_BF16: return v8_hsum(span_dot(DS_DT_BF16, row_ptr(m, r), x, m->cols));
    case DS_DT_F16: return v8_hsum(span_dot(DS_DT_F16, row_ptr(m, r), x, m->cols));
    case DS_DT_F8_E4M3: return fp8_row_dot(m, r, x);
    case DS_DT_Q8_0: return q8_0_row_dot(m, r, x);
    case DS_DT_Q4_K: return q4_k_row_dot(m, r, x);
    default: return 0.0f;
    }
}

/* out[j] = mul * w[j], j < n. */
INL void span_convert(ds_dtype dt, const void *w, float mul, float *out, int n)
{
    int c = 0;
    for (; c + VW <= n; c += VW)
        v8_store(out + c, v8_mul_n(load_w(dt, w, c), mul));
    if (c < n)
        v8_store_tail(out + c, v8_mul_n(load_w_tail(dt, w, c, n - c), mul), n - c);
}

/* out[j] = W[r][c0 + j] dequantised, j < len; c0 is a multiple of DS_QBLOCK
 * so FP8 scale blocks start at chunk starts. */
NOINL void convert_span(const ds_mat *m, int r, int c0, int len, float *out)
{
    const void *w = row_ptr(m, r);
    switch (m->dtype) {
    case DS_DT_F32: memcpy(out, (const float *)w + c0, sizeof(float) * (size_t)len); break;
    case DS_DT_BF16: span_convert(DS_DT_BF16, (const uint16_t *)w + c0, 1.0f, out, len); break;
    case DS_DT_F16: span_convert(DS_DT_F16, (const uint16_t *)w + c0, 1.0f, out, len); break;
    case DS_DT_F8_E4M3: {
        const float *s = scale_row(m, r);
        for (int j = 0; j < len; j += DS_QBLOCK) {
            int n = len - j < DS_QBLOCK ? len - j : DS_QBLOCK;
            float mul = s[(c0 + j) / DS_QBLOCK] * 256.0f;
            span_convert(DS_DT_F8_E4M3, (const uint8_t *)w + c0 + j, mul, out + j, n);
        }
        break;
    }
    case DS_DT_Q8_0:
    case DS_DT_Q4_K: block_convert(m, r, c0, len, out); break;
    default: memset(out, 0, sizeof(float) * (size_t)len); break;
    }
}

static void neon_mat_row(const ds_mat *m, int r, float *out) { convert_span(m, r, 0, m->cols, out); }

static void neon_gemv(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    DS_GEMV_BY_ROWS(row_dot, m, r0, nrows, x, y);
}

NOINL float neon_dot(const float *a, const float *b, int n)
{
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

NOINL void neon_axpy(float a, const float *x, float *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
        vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vld1q_f32(x + i + 4), a));
    }
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* y[c] += a * W[r][c] for every column, decoding straight into the sum. */
NOINL void row_axpy(const ds_mat *m, int r, float a, float *y)
{
    const void *w = row_ptr(m, r);
    const int cols = m->cols;
    if (m->dtype == DS_DT_F32) {
        neon_axpy(a, w, y, cols);
        return;
    }
    if (ds_dtype_is_block(m->dtype)) {
        /* Decode a block, then accumulate it: blocks are at most 256 wide. */
        float tmp[DS_Q4_K_BLOCK] __attribute__((aligned(16)));
        const int blk = (int)ds_dtype_block(m->dtype);
        const size_t bb = ds_dtype_block_bytes(m->dtype);
        const uint8_t *b = w;
        for (int c0 = 0; c0 < cols; c0 += blk, b += bb) {
            block_decode(m->dtype, b, tmp);
            neon_axpy(a, tmp, y + c0, blk);
        }
        return;
    }
    const float *s = m->dtype == DS_DT_F8_E4M3 ? scale_row(m, r) : NULL;
    for (int c0 = 0; c0 < cols; c0 += DS_QBLOCK) {
        const int len = cols - c0 < DS_QBLOCK ? cols - c0 : DS_QBLOCK;
        const float va = s ? a * s[c0 / DS_QBLOCK] * 256.0f : a;
        int c = c0;
        for (; c + VW <= c0 + len; c += VW) {
            v8 wv;
            if (m->dtype == DS_DT_BF16)
                wv = load_w(DS_DT_BF16, w, c);
            else if (m->dtype == DS_DT_F16)
                wv = load_w(DS_DT_F16, w, c);
            else
                wv = load_w(DS_DT_F8_E4M3, w, c);
            v8_store(y + c, v8_fma_n(v8_load(y + c), wv, va));
        }
        if (c < c0 + len) {
            const int left = c0 + len - c;
            v8 wv = load_w_tail(m->dtype, w, c, left);
            v8_store_tail(y + c, v8_fma_n(v8_load_tail(y + c, left), wv, va), left);
        }
    }
}

/* Transposed product; serial like the reference because callers issue it
 * per attention head on small slices. */
static void neon_gemv_t(const ds_mat *m, int r0, int nrows, const float *x, float *y)
{
    memset(y, 0, sizeof(float) * (size_t)m->cols);
    for (int i = 0; i < nrows; i++)
        row_axpy(m, r0 + i, x[i], y);
}

/* out[r][t] = sum_c w[r][c] * x[t][c] over len columns, for RT rows and nt
 * tokens.  Each weight vector is loaded once per column step and reused for
 * every token; nt is a constant after inlining so the accumulators stay in
 * registers.  The last len % 4 columns are summed in scalar code. */
INL void tile_dot(const float *const w[RT], const float *x, int ldx, int len, int nt, float out[RT][TT])
{
    float32x4_t acc[RT][TT];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++)
            acc[r][t] = vdupq_n_f32(0.0f);
    int c = 0;
    for (; c + 4 <= len; c += 4) {
        float32x4_t wv[RT];
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++)
            wv[r] = vld1q_f32(w[r] + c);
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const float32x4_t xv = vld1q_f32(x + (size_t)t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < RT; r++)
                acc[r][t] = vfmaq_f32(acc[r][t], wv[r], xv);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            float s = vaddvq_f32(acc[r][t]);
            const float *xt = x + (size_t)t * ldx;
            for (int j = c; j < len; j++)
                s += w[r][j] * xt[j];
            out[r][t] = s;
        }
}

NOINL void tile_dot_n(const float *const w[RT], const float *x, int ldx, int len, int nt, float out[RT][TT])
{
    switch (nt) {
    case 1: tile_dot(w, x, ldx, len, 1, out); break;
    case 2: tile_dot(w, x, ldx, len, 2, out); break;
    case 3: tile_dot(w, x, ldx, len, 3, out); break;
    default: tile_dot(w, x, ldx, len, 4, out); break;
    }
}

/* Rows i0 .. i0+nr-1 (nr <= RT) of the GEMM: each KC-column chunk of the
 * rows is dequantised once into buf and reused by every token. */
static void gemm_tile(const ds_mat *m, int r0, int i0, int nr, const float *X, int ldx, int n,
                      float *Y, int ldy)
{
    float buf[RT][KC] __attribute__((aligned(64)));
    const int cols = m->cols;
    for (int c0 = 0; c0 < cols; c0 += KC) {
        const int len = cols - c0 < KC ? cols - c0 : KC;
        ds_prefetch_rows(m, r0 + i0 + RT, RT, c0, len);
        const float *w[RT] = {NULL};
        for (int r = 0; r < RT; r++) {
            if (r >= nr) {
                w[r] = w[0];      /* padding row: computed, never stored */
            } else if (m->dtype == DS_DT_F32) {
                w[r] = (const float *)m->data + (size_t)(r0 + i0 + r) * cols + c0;
            } else {
                convert_span(m, r0 + i0 + r, c0, len, buf[r]);
                w[r] = buf[r];
            }
        }
        for (int t0 = 0; t0 < n; t0 += TT) {
            const int nt = n - t0 < TT ? n - t0 : TT;
            float out[RT][TT];
            tile_dot_n(w, X + (size_t)t0 * ldx + c0, ldx, len, nt, out);
            for (int t = 0; t < nt; t++) {
                float *yr = Y + (size_t)(t0 + t) * ldy + i0;
                for (int r = 0; r < nr; r++)
                    yr[r] = c0 == 0 ? out[r][t] : yr[r] + out[r][t];
            }
        }
    }
}

static void neon_gemm(const ds_mat *m, int r0, int nrows, const float *X, int ldx, int n,
                      float *Y, int ldy)
{
    if (n == 1) {
        neon_gemv(m, r0, nrows, X, Y);
        return;
    }
    const int ntiles = (nrows + RT - 1) / RT;
#pragma omp parallel for schedule(static) if (ds_worth_threads((long)nrows * m->cols * n))
    for (int tile = 0; tile < ntiles; tile++) {
        const int i0 = tile * RT;
        const int nr = nrows - i0 < RT ? nrows - i0 : RT;
        gemm_tile(m, r0, i0, nr, X, ldx, n, Y, ldy);
    }
}

static void neon_index_scores_fp8(const double *qt, int nh, int dim, const float *w, const uint8_t *k8,
                                  const float *ks, int n, float *score)
{
    ds_index_scores_fp8_with(&ds_kernels_neon, qt, nh, dim, w, k8, ks, n, score);
}

const ds_kernels ds_kernels_neon = {
    .name = "neon",
    .mat_row = neon_mat_row,
    .gemv = neon_gemv,
    .gemv_t = neon_gemv_t,
    .gemm = neon_gemm,
    .dot = neon_dot,
    .axpy = neon_axpy,
    .e4m3_to_f64 = ds_e4m3_to_f64_scalar,   /* no NEON forms yet: the scalar ones */
    .index_scores = ds_index_scores_scalar,
    .index_scores_fp8 = neon_index_scores_fp8,
};

#endif /* aarch64 */
