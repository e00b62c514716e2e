/* dtype.h — element types of weight tensors and exact scalar conversions
 * (FP8 e4m3fn, BF16, F16 <-> F32), plus the block-quantised GGUF-compatible
 * types Q8_0 and Q4_K (layouts in quant.h).  Knows nothing of DeepSeek. */
#ifndef DS_DTYPE_H
#define DS_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum ds_dtype {
    DS_DT_F32 = 0,
    DS_DT_F16,
    DS_DT_BF16,
    DS_DT_F8_E4M3,
    DS_DT_I32,
    DS_DT_I64,
    DS_DT_U8,
    DS_DT_Q8_0,     /* blocks of 32: f16 d, int8 q[32] (34 bytes) */
    DS_DT_Q4_K,     /* super-blocks of 256 (144 bytes), see quant.h */
    DS_DT_COUNT
} ds_dtype;

/* Bytes per element; 0 for an unknown dtype and for block types (Q8_0,
 * Q4_K), whose elements have no byte size of their own: size those with
 * ds_dtype_row_bytes. */
size_t ds_dtype_size(ds_dtype t);
/* Elements per block: 32 (Q8_0), 256 (Q4_K), 1 for plain types, 0 if unknown. */
int64_t ds_dtype_block(ds_dtype t);
/* Bytes per block: 34 (Q8_0), 144 (Q4_K), the element size for plain types. */
size_t ds_dtype_block_bytes(ds_dtype t);
static inline int ds_dtype_is_block(ds_dtype t) { return t == DS_DT_Q8_0 || t == DS_DT_Q4_K; }
/* Bytes of one row of cols elements; 0 when cols is negative or not a
 * multiple of the block, for an unknown dtype, or on overflow. */
size_t ds_dtype_row_bytes(ds_dtype t, int64_t cols);
/* Safetensors spelling ("F32", "BF16", "F8_E4M3", ...) and its inverse (-1 if unknown). */
const char *ds_dtype_name(ds_dtype t);
int ds_dtype_from_name(const char *name);

/* FP8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities,
 * 0x7F/0xFF NaN, max finite 448. */
extern const float ds_e4m3_table[256];
static inline float ds_e4m3_to_f32(uint8_t v) { return ds_e4m3_table[v]; }
/* Round to nearest even, saturating to +-448; NaN -> 0x7F. */
uint8_t ds_f32_to_e4m3(float f);

static inline float ds_bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round to nearest even; NaN stays NaN. */
uint16_t ds_f32_to_bf16(float f);
float ds_f16_to_f32(uint16_t h);
uint16_t ds_f32_to_f16(float f);

/* Converts n elements of dtype t at src into f32 (F32/F16/BF16/F8_E4M3,
 * and Q8_0/Q4_K when n is a multiple of the block; zeros otherwise). */
void ds_convert_to_f32(ds_dtype t, const void *src, float *dst, size_t n);

#endif
