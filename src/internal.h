/* internal.h — helpers shared by the library's translation units:
 * error reporting into ds_error and checked allocation. */
#ifndef DS_INTERNAL_H
#define DS_INTERNAL_H

#include <stddef.h>
#include "dsinfer.h"

#if defined(__GNUC__)
#define DS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DS_PRINTF(a, b)
#endif

/* Fills err (if non-NULL) and returns code, so callers can `return ds_fail(...)`. */
ds_status ds_fail(ds_error *err, ds_status code, const char *fmt, ...) DS_PRINTF(3, 4);
void ds_error_clear(ds_error *err);

/* Allocation that reports DS_ERR_NOMEM instead of returning NULL silently. */
void *ds_calloc(size_t n, size_t size, ds_error *err);
/* 64-byte aligned, zeroed; free with free(). */
void *ds_alloc_aligned(size_t bytes, ds_error *err);
/* Bytes of memory this process may still use: MemAvailable, lowered to what
 * its cgroup's memory limit (v1 or v2) leaves; DSINFER_MEM_AVAILABLE (bytes)
 * overrides. */
uint64_t ds_mem_available(void);

/* Tests only: 1 makes the sampler sort every token for top-k / top-p, the
 * plain form its candidate histogram must match token for token. */
void ds_sampler_set_full_sort(ds_sampler *s, int on);
/* Whether any of v[0..n) is NaN: logits of a forward pass through a weight
 * that holds NaN or Inf, which no token can be chosen from. */
int ds_logits_have_nan(const float *v, int n);

/* Benchmarks only (dsinfer-bench --depth-fill synthetic): fills the KV and
 * indexer caches of positions [0, n) with seeded random entries in the layout
 * prefill writes (latent, rotated rope key and e4m3 index key with its
 * scale, each quantised as the cache type stores it) and sets the context
 * position to n, so decode speed at depth n can be measured without the
 * prefill.  The entries are well formed but no token produced them. */
ds_status ds_context_fill_synthetic(ds_context *c, int n, uint64_t seed, ds_error *err);

#endif
