/* batch_util.h — small helpers of dsinfer-batch that know nothing about
 * models or files: the FNV-1a hash used for sharding, a string-keyed count
 * table (completed ids, duplicate detection), UTF-8 checks, a growable
 * byte buffer and the monotonic clock. */
#ifndef DS_BATCH_UTIL_H
#define DS_BATCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a, 64 bit, over len bytes: the --shard hash, stable across
 * machines and versions (documented in dsinfer-batch.1). */
uint64_t batch_fnv1a64(const void *data, size_t len);

/* Open-addressing table from NUL-terminated strings to counts.  Dies with
 * EXIT_RUNTIME when out of memory (a batch run cannot go on without it). */
typedef struct batch_strmap batch_strmap;
batch_strmap *batch_strmap_new(void);
void batch_strmap_free(batch_strmap *m);
/* Current count of key (0 when absent). */
int batch_strmap_get(const batch_strmap *m, const char *key);
/* Adds delta to key's count (creating it at 0) and returns the new count. */
int batch_strmap_add(batch_strmap *m, const char *key, int delta);
size_t batch_strmap_size(const batch_strmap *m);

/* Non-zero when s[0..len) is well-formed UTF-8 (no overlongs, surrogates
 * or code points past U+10FFFF). */
int batch_utf8_valid(const char *s, size_t len);
/* Copies s into a malloc'ed NUL-terminated string whose invalid bytes are
 * replaced by '?', so library messages (which may be cut inside a UTF-8
 * character) can always go into a JSON string. */
char *batch_utf8_sanitize(const char *s);

/* Growable byte buffer, always NUL-terminated. */
typedef struct batch_buf {
    char *data;
    size_t len, cap;
} batch_buf;
void batch_buf_append(batch_buf *b, const char *s, size_t len);
void batch_buf_free(batch_buf *b);

/* malloc / strdup that die with EXIT_RUNTIME instead of returning NULL. */
void *batch_xmalloc(size_t n);
char *batch_xstrdup(const char *s);

#endif
