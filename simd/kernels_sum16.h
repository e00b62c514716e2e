/* kernels_sum16.h — sum16: sixteen AVX-512 vectors' lane sums in one
 * vector (lane g = the sum of v[g]), a transposing reduction shared by the
 * AVX-512 files.  Four halving steps (256-bit halves, 128-bit quarters,
 * then pairs and single lanes within 128 bits) leave v[j + 4 m] in lane
 * 4 j + m; reading the inputs in that transposed order puts v[g] in lane
 * g.  Inlines into any function whose target includes AVX-512F. */
#ifndef DS_KERNELS_SUM16_H
#define DS_KERNELS_SUM16_H
#include <immintrin.h>

/* By value, so the caller's vectors stay in registers (an array whose
 * address is taken lives in memory): DS_SUM16(a) passes a[0] .. a[15]. */
static inline __attribute__((always_inline, target("avx512f"))) __m512
ds_sum16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5, __m512 v6, __m512 v7, __m512 v8,
         __m512 v9, __m512 v10, __m512 v11, __m512 v12, __m512 v13, __m512 v14, __m512 v15)
{
#define DS_SUM16_PAIR(a, b) \
    _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee))
    /* inputs in the transposed order: pair i takes v[4 (g % 4) + g / 4] for g = 2i, 2i + 1 */
    const __m512 r10 = DS_SUM16_PAIR(v0, v4), r11 = DS_SUM16_PAIR(v8, v12), r12 = DS_SUM16_PAIR(v1, v5),
                 r13 = DS_SUM16_PAIR(v9, v13), r14 = DS_SUM16_PAIR(v2, v6), r15 = DS_SUM16_PAIR(v10, v14),
                 r16 = DS_SUM16_PAIR(v3, v7), r17 = DS_SUM16_PAIR(v11, v15);
#undef DS_SUM16_PAIR
#define DS_SUM16_QUAD(a, b) \
    _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd))
    const __m512 r20 = DS_SUM16_QUAD(r10, r11), r21 = DS_SUM16_QUAD(r12, r13), r22 = DS_SUM16_QUAD(r14, r15),
                 r23 = DS_SUM16_QUAD(r16, r17);
#undef DS_SUM16_QUAD
    const __m512 r30 = _mm512_add_ps(_mm512_shuffle_ps(r20, r21, 0x44), _mm512_shuffle_ps(r20, r21, 0xee));
    const __m512 r31 = _mm512_add_ps(_mm512_shuffle_ps(r22, r23, 0x44), _mm512_shuffle_ps(r22, r23, 0xee));
    return _mm512_add_ps(_mm512_shuffle_ps(r30, r31, 0x88), _mm512_shuffle_ps(r30, r31, 0xdd));
}
#define DS_SUM16(a)                                                                                              \
    ds_sum16((a)[0], (a)[1], (a)[2], (a)[3], (a)[4], (a)[5], (a)[6], (a)[7], (a)[8], (a)[9], (a)[10], (a)[11], \
             (a)[12], (a)[13], (a)[14], (a)[15])

#endif
