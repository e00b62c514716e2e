/* dtype.c — dtype names and exact conversions; the e4m3 table is built
 * at compile time from the format definition so no runtime init is needed. */
#include <math.h>
#include "dtype.h"
#include "quant.h"

/* Block types have no per-element size (0 here); their block geometry is
 * in the two tables below, 1 element per "block" for plain types. */
static const size_t dtype_sizes[DS_DT_COUNT] = {4, 2, 2, 1, 4, 8, 1, 0, 0};
static const int64_t dtype_blocks[DS_DT_COUNT] = {1, 1, 1, 1, 1, 1, 1, DS_Q8_0_BLOCK, DS_Q4_K_BLOCK};
static const size_t dtype_block_bytes[DS_DT_COUNT] = {4, 2, 2, 1, 4, 8, 1, DS_Q8_0_BYTES, DS_Q4_K_BYTES};
static const char *dtype_names[DS_DT_COUNT] = {"F32", "F16", "BF16", "F8_E4M3", "I32", "I64", "U8",
                                               "Q8_0", "Q4_K"};

size_t ds_dtype_size(ds_dtype t) { return (unsigned)t < DS_DT_COUNT ? dtype_sizes[t] : 0; }
int64_t ds_dtype_block(ds_dtype t) { return (unsigned)t < DS_DT_COUNT ? dtype_blocks[t] : 0; }
size_t ds_dtype_block_bytes(ds_dtype t) { return (unsigned)t < DS_DT_COUNT ? dtype_block_bytes[t] : 0; }

size_t ds_dtype_row_bytes(ds_dtype t, int64_t cols)
{
    const int64_t blk = ds_dtype_block(t);
    if (blk <= 0 || cols < 0 || cols % blk)
        return 0;
    size_t bytes;
    if (__builtin_mul_overflow((uint64_t)(cols / blk), (uint64_t)ds_dtype_block_bytes(t), &bytes))
        return 0;
    return bytes;
}
const char *ds_dtype_name(ds_dtype t) { return (unsigned)t < DS_DT_COUNT ? dtype_names[t] : "?"; }

int ds_dtype_from_name(const char *name)
{
    for (int i = 0; i < DS_DT_COUNT; i++)
        if (strcmp(name, dtype_names[i]) == 0)
            return i;
    return -1;
}

/* e4m3fn value of code c: exponent field e, mantissa m.
 * e == 0: m * 2^-9 (subnormal); else (8 + m) * 2^(e - 10). */
#define E4M3_MAG(c) ((((c) >> 3) & 15) == 0 ? ((c) & 7) / 512.0f \
    : (8 + ((c) & 7)) * (float)(1u << (((c) >> 3) & 15)) / 1024.0f)
#define E4M3(c) (((c) & 0x7f) == 0x7f ? NAN : (((c) & 0x80) ? -E4M3_MAG(c) : E4M3_MAG(c)))
#define R4(c) E4M3(c), E4M3((c) + 1), E4M3((c) + 2), E4M3((c) + 3)
#define R16(c) R4(c), R4((c) + 4), R4((c) + 8), R4((c) + 12)
#define R64(c) R16(c), R16((c) + 16), R16((c) + 32), R16((c) + 48)
const float ds_e4m3_table[256] = {R64(0), R64(64), R64(128), R64(192)};

/* On the f32 bits: the three top mantissa bits rounded to nearest even
 * by one carrying add, the exponent rebased from bias 127 to 7.  Below
 * 2^-6 the e4m3 grid is the subnormal step 2^-9.  (Exhaustively equal,
 * over all 2^32 inputs, to the frexpf formulation this replaced.) */
uint8_t ds_f32_to_e4m3(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u)             /* NaN */
        return 0x7f;
    if (u >= 0x43e80000u)            /* 464 = 448 + half an ulp: ties go to even 448 below */
        return sign | 0x7e;
    if (u < 0x3c800000u) {           /* below 2^-6 */
        float a;
        memcpy(&a, &u, 4);
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    }
    u += 0x7ffffu + ((u >> 20) & 1u);
    return sign | (uint8_t)((u >> 20) - (120u << 3));
}

uint16_t ds_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float ds_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    int exp = (h >> 10) & 31;
    uint32_t man = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    uint32_t u;
    if (exp == 31)
        u = sign | 0x7f800000u | (man << 13);
    else
        u = sign | ((uint32_t)(exp - 15 + 127) << 23) | (man << 13);
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ds_f32_to_f16(float f)
{
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    float a = fabsf(f);
    if (isnan(f))
        return 0x7e00;
    if (a >= 65520.0f)
        return sign | 0x7c00;
    if (a < 6.103515625e-05f) {      /* subnormal: multiples of 2^-24 */
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    }
    int e;
    float m = frexpf(a, &e);
    float frac = nearbyintf((m * 2.0f - 1.0f) * 1024.0f);
    int exp = e - 1 + 15;
    if (frac >= 1024.0f) {
        frac = 0.0f;
        exp++;
    }
    return sign | (uint16_t)((exp << 10) | (int)frac);
}

void ds_convert_to_f32(ds_dtype t, const void *src, float *dst, size_t n)
{
    const uint8_t *b = src;
    switch (t) {
    case DS_DT_F32:
        memcpy(dst, src, n * 4);
        break;
    case DS_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, b + 2 * i, 2);
            dst[i] = ds_bf16_to_f32(v);
        }
        break;
    case DS_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, b + 2 * i, 2);
            dst[i] = ds_f16_to_f32(v);
        }
        break;
    case DS_DT_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = ds_e4m3_table[b[i]];
        break;
    case DS_DT_Q8_0:
        if (n % DS_Q8_0_BLOCK)
            goto zero;
        ds_dequant_q8_0(src, dst, n / DS_Q8_0_BLOCK);
        break;
    case DS_DT_Q4_K:
        if (n % DS_Q4_K_BLOCK)
            goto zero;
        ds_dequant_q4_k(src, dst, n / DS_Q4_K_BLOCK);
        break;
    default:
    zero:
        for (size_t i = 0; i < n; i++)
            dst[i] = 0.0f;
        break;
    }
}
