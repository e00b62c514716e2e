/* quant.c — encoders and decoders of the Q8_0 and Q4_K block formats
 * (layouts in quant.h), written from the format definitions.  The decoders
 * are the reference the kernels are tested against; the encoders are used
 * by dsinfer-quantize and the tests. */
#include <float.h>
#include <math.h>
#include "quant.h"

/* ---- Q8_0 ----------------------------------------------------------------- */

void ds_dequant_q8_0(const void *src, float *dst, size_t nblocks)
{
    const uint8_t *b = src;
    for (size_t k = 0; k < nblocks; k++, b += DS_Q8_0_BYTES, dst += DS_Q8_0_BLOCK) {
        const float d = ds_load_f16(b);
        const int8_t *q = (const int8_t *)(b + 2);
        for (int i = 0; i < DS_Q8_0_BLOCK; i++)
            dst[i] = d * (float)q[i];
    }
}

void ds_quant_q8_0(const float *src, void *dst, size_t nblocks)
{
    uint8_t *b = dst;
    for (size_t k = 0; k < nblocks; k++, b += DS_Q8_0_BYTES, src += DS_Q8_0_BLOCK) {
        float amax = 0.0f;
        for (int i = 0; i < DS_Q8_0_BLOCK; i++)
            amax = fmaxf(amax, fabsf(src[i]));
        const float d = amax / 127.0f;
        /* The f32 d (not its f16 rounding) sets the grid, so amax maps to
         * exactly +-127 and nothing needs clipping beyond the guard. */
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        const uint16_t h = ds_f32_to_f16(d);
        memcpy(b, &h, 2);
        for (int i = 0; i < DS_Q8_0_BLOCK; i++) {
            float q = roundf(src[i] * id);
            q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
            b[2 + i] = (uint8_t)(int8_t)q;
        }
    }
}

/* ---- Q4_K ----------------------------------------------------------------- */

void ds_q4_k_pack_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t packed[12])
{
    for (int j = 0; j < 4; j++) {
        packed[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        packed[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

void ds_dequant_q4_k(const void *src, float *dst, size_t nblocks)
{
    const uint8_t *b = src;
    for (size_t k = 0; k < nblocks; k++, b += DS_Q4_K_BYTES, dst += DS_Q4_K_BLOCK) {
        const float d = ds_load_f16(b), dmin = ds_load_f16(b + 2);
        const uint8_t *qs = b + DS_Q4_K_OFF_QS;
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            ds_q4_k_scale_min(b + DS_Q4_K_OFF_SCALES, j, &sc, &mn);
            const float a = d * (float)sc, off = dmin * (float)mn;
            const uint8_t *g = qs + 32 * (j / 2);
            const int shift = (j & 1) * 4;
            for (int l = 0; l < DS_Q4_K_SUB; l++)
                dst[32 * j + l] = a * (float)((g[l] >> shift) & 15) - off;
        }
    }
}

/* The 4-bit level nearest to v (a grid position, x scaled by the inverse
 * step), clamped to 0..15.  Adding 0.5 and truncating is round-half-up for
 * v >= 0 and avoids a libm call in this innermost loop. */
static inline int q4_round(float v)
{
    if (!(v > 0.0f))
        return 0;
    const int q = (int)(v + 0.5f);
    return q > 15 ? 15 : q;
}

/* The 4-bit level of x on the grid a * q - b, ia = 1 / a. */
static inline int q4_level(float x, float ia, float b) { return q4_round((x + b) * ia); }

/* Squared error of n values rounded onto the grid a * q - b, q in 0..15. */
static float grid_error(const float *x, int n, float a, float b)
{
    const float ia = a > 0.0f ? 1.0f / a : 0.0f;
    float e = 0.0f;
    for (int i = 0; i < n; i++) {
        const float r = a * (float)q4_level(x[i], ia, b) - b - x[i];
        e += r * r;
    }
    return e;
}

/* For fixed levels q (x rounded on the grid spanning [lo, hi] with inverse
 * step iscale), the least-squares a, b of x ~ a * q - b with b >= 0 (the
 * format's mins only shift down).  Returns 0 when the fit is degenerate. */
static int fit_levels(const float *x, int n, float lo, float iscale, float *a, float *b)
{
    float sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; i++) {
        const float q = (float)q4_round((x[i] - lo) * iscale);
        sq += q, sqq += q * q, sx += x[i], sqx += q * x[i];
    }
    const float det = (float)n * sqq - sq * sq;
    if (det <= 0.0f)
        return 0;
    float slope = ((float)n * sqx - sq * sx) / det;
    float off = (sqq * sx - sq * sqx) / det;        /* x ~ slope * q + off */
    if (off > 0.0f) {                                /* b would be negative */
        off = 0.0f;
        slope = sqx / sqq;
    }
    if (!(slope > 0.0f))
        return 0;
    *a = slope;
    *b = -off;
    return 1;
}

/* Scale a >= 0 and min b >= 0 of one sub-block: starts from the min/max
 * grid, then tries grids slightly narrower and wider than the range (which
 * trade clipping of the extremes for a finer step) and keeps the least-
 * squares fit with the smallest rounding error. */
static void search_sub_block(const float *x, int n, float *a, float *b)
{
    float lo = 0.0f, hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    if (!(hi > lo)) {               /* constant sub-block (<= 0) or all zero */
        *a = 0.0f;
        *b = -lo;
        return;
    }
    float best_a = (hi - lo) / 15.0f, best_b = -lo;
    float best = grid_error(x, n, best_a, best_b);
    for (int k = -10; k <= 10; k++) {
        float ca, cb;
        if (!fit_levels(x, n, lo, (15.0f + 0.1f * (float)k) / (hi - lo), &ca, &cb))
            continue;
        const float e = grid_error(x, n, ca, cb);
        if (e < best) {
            best = e;
            best_a = ca;
            best_b = cb;
        }
    }
    *a = best_a;
    *b = best_b;
}

/* One super-block of 256 values into 144 bytes. */
static void quant_q4_k_block(const float *x, uint8_t *out)
{
    float a[8], b[8], amax = 0.0f, bmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        search_sub_block(x + 32 * j, DS_Q4_K_SUB, &a[j], &b[j]);
        amax = fmaxf(amax, a[j]);
        bmax = fmaxf(bmax, b[j]);
    }
    const uint16_t hd = ds_f32_to_f16(amax / 63.0f), hm = ds_f32_to_f16(bmax / 63.0f);
    const float d = ds_f16_to_f32(hd), dmin = ds_f16_to_f32(hm);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        const float s = d > 0.0f ? roundf(a[j] / d) : 0.0f, m = dmin > 0.0f ? roundf(b[j] / dmin) : 0.0f;
        sc[j] = (uint8_t)(s > 63.0f ? 63 : s);
        mn[j] = (uint8_t)(m > 63.0f ? 63 : m);
    }
    memcpy(out, &hd, 2);
    memcpy(out + 2, &hm, 2);
    ds_q4_k_pack_scales(sc, mn, out + DS_Q4_K_OFF_SCALES);
    uint8_t *qs = out + DS_Q4_K_OFF_QS;
    memset(qs, 0, 128);
    /* Levels from the stored (6-bit, f16) scales, not the searched ones, so
     * each value lands on the nearest point of the grid actually decoded. */
    for (int j = 0; j < 8; j++) {
        const float ea = d * (float)sc[j], eb = dmin * (float)mn[j];
        const float ia = ea > 0.0f ? 1.0f / ea : 0.0f;
        uint8_t *g = qs + 32 * (j / 2);
        const int shift = (j & 1) * 4;
        for (int l = 0; l < DS_Q4_K_SUB; l++) {
            const int q = q4_level(x[32 * j + l], ia, eb);
            g[l] |= (uint8_t)(q << shift);
        }
    }
}

void ds_quant_q4_k(const float *src, void *dst, size_t nblocks)
{
    uint8_t *b = dst;
    for (size_t k = 0; k < nblocks; k++)
        quant_q4_k_block(src + k * DS_Q4_K_BLOCK, b + k * DS_Q4_K_BYTES);
}

void ds_q4_k_act_round(const float *x, int cols, float *out)
{
    for (int c0 = 0; c0 < cols; c0 += DS_Q4_K_BLOCK) {
        const float *b = x + c0;
        float *o = out + c0;
        float amax = 0.0f;
        for (int i = 0; i < DS_Q4_K_BLOCK; i++)
            amax = fabsf(b[i]) > amax || b[i] != b[i] ? fabsf(b[i]) : amax;
        if (!(amax <= FLT_MAX)) {   /* Inf or NaN: as it is */
            memmove(o, b, sizeof(float) * DS_Q4_K_BLOCK);
            continue;
        }
        const int e = ds_q4_k_act_exp(amax);
        const float inv = ds_pow2f(-e), s = ds_pow2f(e);
        for (int i = 0; i < DS_Q4_K_BLOCK; i++)
            o[i] = rintf(b[i] * inv) * s;
    }
}
