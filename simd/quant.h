/* quant.h — block-quantised weight formats Q8_0 and Q4_K, bit-compatible
 * with the GGUF block layouts of the same names, written from the format
 * definitions.  Rows of such a matrix are sequences of blocks; a row's
 * length must be a multiple of the block size.  Multi-byte fields are
 * little-endian (the runtime only targets little-endian hosts).
 *
 * Q8_0 — 32 weights in 34 bytes:
 *     bytes 0-1   d      f16 scale
 *     bytes 2-33  q[32]  int8
 *     w[i] = d * q[i]
 *
 * Q4_K — 256 weights in 144 bytes, 8 sub-blocks j of 32:
 *     bytes 0-1     d       f16 super-block scale of the sub-block scales
 *     bytes 2-3     dmin    f16 super-block scale of the sub-block mins
 *     bytes 4-15    packed  8 6-bit scales sc[j] and 8 6-bit mins m[j]:
 *                     packed[j]     (j < 4): bits 0-5 sc[j],   bits 6-7 sc[j+4] >> 4
 *                     packed[j + 4] (j < 4): bits 0-5 m[j],    bits 6-7 m[j+4] >> 4
 *                     packed[j + 8] (j < 4): bits 0-3 sc[j+4] & 15, bits 4-7 m[j+4] & 15
 *     bytes 16-143  qs[128] 4-bit quants: the 256 weights form 4 groups of
 *                     64; group g takes qs[32g .. 32g+31], sub-block 2g in
 *                     the low nibbles and sub-block 2g+1 in the high ones
 *     w[32j + l] = d * sc[j] * q - dmin * m[j],  q = the nibble, 0..15
 *
 * Dequantisation is exact in f32: d * sc (11 x 6 significant bits) and
 * (d * sc) * q, d * q are exact products, so every kernel that computes
 * (d * sc) * q - dmin * m with one rounding (an FMA or not) agrees bitwise
 * with ds_dequant_q4_k. */
#ifndef DS_QUANT_H
#define DS_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "dtype.h"

#define DS_Q8_0_BLOCK 32
#define DS_Q8_0_BYTES 34
#define DS_Q4_K_BLOCK 256
#define DS_Q4_K_SUB 32
#define DS_Q4_K_BYTES 144

/* Offsets inside a Q4_K block. */
#define DS_Q4_K_OFF_SCALES 4
#define DS_Q4_K_OFF_QS 16

/* The f16 at p (unaligned) as f32. */
static inline float ds_load_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return ds_f16_to_f32(h);
}

/* The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void ds_q4_k_scale_min(const uint8_t *packed, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = packed[j] & 63;
        *mn = packed[j + 4] & 63;
    } else {
        *sc = (packed[j + 4] & 15) | ((packed[j - 4] >> 6) << 4);
        *mn = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
    }
}

/* Inverse of ds_q4_k_scale_min for all 8 sub-blocks (values 0..63). */
void ds_q4_k_pack_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t packed[12]);

/* nblocks blocks at src -> nblocks * block floats at dst. */
void ds_dequant_q8_0(const void *src, float *dst, size_t nblocks);
void ds_dequant_q4_k(const void *src, float *dst, size_t nblocks);

/* nblocks * block floats at src -> nblocks blocks at dst.
 * Q8_0: d = amax / 127, q = x / d rounded to nearest (halves away from 0).
 * Q4_K: per sub-block a least-squares search of scale and min (see
 * quant.c), then the 8 scales and mins quantised to 6 bits against d and
 * dmin = their maxima / 63, and the quants recomputed from the final
 * scales. */
void ds_quant_q8_0(const float *src, void *dst, size_t nblocks);
void ds_quant_q4_k(const float *src, void *dst, size_t nblocks);

/* Activations against Q4_K weights (ds_gemm_bf16): each block of 256
 * columns becomes int8 levels q (|q| <= 127) times a power of two 2^e,
 * x -> rint(x * 2^-e) * 2^e (nearest even), e the smallest exponent >= -126
 * whose levels all fit, so the largest |q| is 64..127.  The value is exact
 * in bf16 (7 significant bits), so every kernel forms the same exact
 * products: the panel GEMM on the rounded value, the decode kernel on q
 * (int8 dots, the scale applied after).  Rounding a rounded block changes
 * nothing.  A block holding Inf or NaN is left as it is. */
/* 2^e as a float, -126 <= e <= 127. */
static inline float ds_pow2f(int e)
{
    const uint32_t b = (uint32_t)(127 + e) << 23;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* e for a block whose largest |x| is amax (finite). */
static inline int ds_q4_k_act_exp(float amax)
{
    uint32_t u;
    memcpy(&u, &amax, 4);
    int e = (int)(u >> 23) - 127 - 6;   /* amax / 2^e in [64, 128) */
    e = e < -126 ? -126 : e;
    return __builtin_rintf(amax * ds_pow2f(-e)) > 127.0f ? e + 1 : e;
}

/* cols (a multiple of 256) activations x rounded as above into out. */
void ds_q4_k_act_round(const float *x, int cols, float *out);

#endif
