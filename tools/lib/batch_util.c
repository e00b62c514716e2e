/* batch_util.c — hashing, the string count table, UTF-8 checks and buffers
 * for dsinfer-batch (see batch_util.h). */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "batch_util.h"
#include "common.h"

uint64_t batch_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void *batch_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        tool_die(EXIT_RUNTIME, "out of memory");
    return p;
}

char *batch_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(batch_xmalloc(n), s, n);
}

/* ---- string -> count table ------------------------------------------- */
typedef struct strmap_slot {
    char *key;             /* NULL = empty */
    uint64_t hash;
    int count;
} strmap_slot;

struct batch_strmap {
    strmap_slot *slots;
    size_t cap, n;         /* cap is a power of two, kept at most half full */
};

batch_strmap *batch_strmap_new(void)
{
    batch_strmap *m = batch_xmalloc(sizeof *m);
    m->cap = 64;
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots)
        tool_die(EXIT_RUNTIME, "out of memory");
    return m;
}

void batch_strmap_free(batch_strmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    free(m);
}

static strmap_slot *strmap_find(const batch_strmap *m, const char *key, uint64_t h)
{
    size_t i = (size_t)h & (m->cap - 1);
    for (;;) {
        strmap_slot *s = &m->slots[i];
        if (!s->key || (s->hash == h && strcmp(s->key, key) == 0))
            return s;
        i = (i + 1) & (m->cap - 1);
    }
}

static void strmap_grow(batch_strmap *m)
{
    batch_strmap bigger = {calloc(m->cap * 2, sizeof(strmap_slot)), m->cap * 2, m->n};
    if (!bigger.slots)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key)
            *strmap_find(&bigger, m->slots[i].key, m->slots[i].hash) = m->slots[i];
    free(m->slots);
    *m = bigger;
}

int batch_strmap_get(const batch_strmap *m, const char *key)
{
    const strmap_slot *s = strmap_find(m, key, batch_fnv1a64(key, strlen(key)));
    return s->key ? s->count : 0;
}

int batch_strmap_add(batch_strmap *m, const char *key, int delta)
{
    uint64_t h = batch_fnv1a64(key, strlen(key));
    strmap_slot *s = strmap_find(m, key, h);
    if (!s->key) {
        if (2 * (m->n + 1) > m->cap) {
            strmap_grow(m);
            s = strmap_find(m, key, h);
        }
        s->key = batch_xstrdup(key);
        s->hash = h;
        s->count = 0;
        m->n++;
    }
    s->count += delta;
    return s->count;
}

size_t batch_strmap_size(const batch_strmap *m)
{
    return m->n;
}

/* ---- UTF-8 ------------------------------------------------------------- */
/* Length of the well-formed UTF-8 sequence at s (at most n bytes), 0 if
 * there is none. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int batch_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t l = utf8_seq_len(p + i, len - i);
        if (!l)
            return 0;
        i += l;
    }
    return 1;
}

char *batch_utf8_sanitize(const char *s)
{
    size_t n = strlen(s);
    char *out = batch_xmalloc(n + 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq_len(p + i, n - i);
        if (l) {
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = 0;
    return out;
}

/* ---- buffer and clock ------------------------------------------------- */
void batch_buf_append(batch_buf *b, const char *s, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            tool_die(EXIT_RUNTIME, "out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, len);
    b->len += len;
    b->data[b->len] = 0;
}

void batch_buf_free(batch_buf *b)
{
    free(b->data);
    *b = (batch_buf){0};
}
