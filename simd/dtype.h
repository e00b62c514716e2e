/* dtype.h — element types of weight tensors and exact scalar conversions
 * (FP8 e4m3fn, BF16, F16 <-> F32).  Knows nothing of DeepSeek. */
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
    DS_DT_COUNT
} ds_dtype;

/* Bytes per element; 0 for an unknown dtype. */
size_t ds_dtype_size(ds_dtype t);
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

/* Converts n elements of dtype t at src into f32 (F32/F16/BF16/F8_E4M3 only). */
void ds_convert_to_f32(ds_dtype t, const void *src, float *dst, size_t n);

#endif
