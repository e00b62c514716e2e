/* worksplit.h — a parallel loop's units split into one contiguous range
 * per thread, as a static schedule splits them, where a thread that runs
 * out of its own takes chunks from the back of the range with the most
 * left.  Each thread still walks its memory in order (the prefetchers'
 * pattern), and a slower core no longer keeps the others waiting at the
 * region's end: on a shared host one vCPU can run 1.5x slower than the
 * other for minutes (measured here), and hybrid CPUs mix core speeds.
 *
 * Which thread computes a unit varies from run to run, so the units must
 * write disjoint outputs (rows of a product, scores of keys): nothing here
 * may decide an order of summation.
 *
 *   ds_split *s = ds_split_begin(nth, n);     before the region (NULL: no
 *                                             memory; split statically)
 *   #pragma omp parallel num_threads(nth)
 *   for (int lo, k; (k = ds_split_next(s, omp_get_thread_num(), chunk, &lo)) > 0;)
 *       ... units [lo, lo + k) ...
 *
 * A team smaller than nth is fine: the ranges of threads that never ran
 * are taken by the others. */
#ifndef DS_WORKSPLIT_H
#define DS_WORKSPLIT_H

#include <stdint.h>

typedef struct ds_split {
    uint64_t r;              /* this thread's range: low 32 bits lo, high 32 bits hi */
    char pad[56];            /* one range per cache line */
} ds_split;

/* The calling thread's ranges (kept per thread, freed at its exit); a
 * region uses them until it ends. */
ds_split *ds_split_begin(int nth, int n);

/* Claims up to chunk units for thread id: from the front of its own
 * range, else from the back of the range with the most left.  Returns how
 * many (0: none left anywhere), the first in *lo. */
static inline int ds_split_next(ds_split *s, int id, int chunk, int *lo)
{
    const int nth = (int)s[0].r;
    uint64_t *own = &s[1 + id].r, v = __atomic_load_n(own, __ATOMIC_RELAXED);
    for (;;) {
        const uint32_t a = (uint32_t)v, b = (uint32_t)(v >> 32);
        if (a >= b)
            break;
        const uint32_t e = b - a > (uint32_t)chunk ? a + (uint32_t)chunk : b;
        if (__atomic_compare_exchange_n(own, &v, e | (uint64_t)b << 32, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            *lo = (int)a;
            return (int)(e - a);
        }
    }
    for (;;) {
        int victim = -1;
        uint32_t most = 0;
        for (int t = 0; t < nth; t++) {
            const uint64_t w = __atomic_load_n(&s[1 + t].r, __ATOMIC_RELAXED);
            const uint32_t a = (uint32_t)w, b = (uint32_t)(w >> 32);
            if (b > a && b - a > most) {
                most = b - a;
                victim = t;
            }
        }
        if (victim < 0)
            return 0;
        uint64_t *vr = &s[1 + victim].r, w = __atomic_load_n(vr, __ATOMIC_RELAXED);
        const uint32_t a = (uint32_t)w, b = (uint32_t)(w >> 32);
        if (a >= b)
            continue;
        const uint32_t f = b - a > (uint32_t)chunk ? b - (uint32_t)chunk : a;
        if (__atomic_compare_exchange_n(vr, &w, a | (uint64_t)f << 32, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            *lo = (int)f;
            return (int)(b - f);
        }
    }
}

#endif
