/* tokenizer.c — byte-level BPE tokenizer compatible with Hugging Face
 * `tokenizers` as configured by a DeepSeek tokenizer.json: loading (vocab,
 * merges, added tokens, pre-tokenizer regexes, tokenizer_config.json),
 * encoding (added tokens -> Split regexes -> ByteLevel -> BPE), decoding,
 * and the streaming detokenizer.  Data structures: tokenizer_internal.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#include "config.h"
#include "tokenizer_internal.h"

/* ======================================================================
 * Small growable byte buffer
 * ====================================================================== */
typedef struct tk_buf {
    char *p;
    size_t n, cap;
} tk_buf;

static int buf_reserve(tk_buf *b, size_t extra)
{
    if (b->n + extra + 1 <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np)
        return 0;
    b->p = np;
    b->cap = cap;
    return 1;
}

static int buf_add(tk_buf *b, const void *src, size_t n)
{
    if (!buf_reserve(b, n))
        return 0;
    memcpy(b->p + b->n, src, n);
    b->n += n;
    b->p[b->n] = 0;
    return 1;
}

/* ======================================================================
 * UTF-8
 * ====================================================================== */

/* Classifies the sequence at p[0..n).  Returns 1 for a valid character of
 * *adv bytes, 0 when the bytes are a valid but incomplete prefix that runs
 * into the end of the input (only possible if !final), and -1 for an
 * invalid sequence whose maximal valid prefix is *adv bytes (the unit that
 * is replaced by one U+FFFD, as Unicode and Rust's from_utf8_lossy do). */
static int utf8_classify(const uint8_t *p, size_t n, int final, size_t *adv)
{
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *adv = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;          /* no overlongs */
        if (c == 0xED) hi = 0x9F;          /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;          /* <= U+10FFFF */
    } else {
        *adv = 1;
        return -1;
    }
    size_t k = 1;
    for (; k < need; k++) {
        if (k >= n) {
            *adv = k;
            return final ? -1 : 0;
        }
        uint8_t lim_lo = k == 1 ? lo : 0x80, lim_hi = k == 1 ? hi : 0xBF;
        if (p[k] < lim_lo || p[k] > lim_hi) {
            *adv = k;
            return -1;
        }
    }
    *adv = need;
    return 1;
}

/* Offset of the first invalid byte, or n when the text is valid UTF-8. */
static size_t utf8_first_invalid(const uint8_t *p, size_t n)
{
    size_t i = 0, adv;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        if (utf8_classify(p + i, n - i, 1, &adv) != 1)
            return i;
        i += adv;
    }
    return n;
}

/* Appends p[0..n) to out with invalid sequences replaced by U+FFFD.  When
 * !final an incomplete character at the end is left; returns the number of
 * bytes consumed, or (size_t)-1 when out of memory. */
static size_t utf8_lossy(tk_buf *out, const uint8_t *p, size_t n, int final)
{
    static const char repl[3] = { (char)0xEF, (char)0xBF, (char)0xBD };
    size_t i = 0, adv;
    if (!buf_reserve(out, n))
        return (size_t)-1;
    while (i < n) {
        int r = utf8_classify(p + i, n - i, final, &adv);
        if (r == 0)
            break;
        if (!(r == 1 ? buf_add(out, p + i, adv) : buf_add(out, repl, 3)))
            return (size_t)-1;
        i += adv;
    }
    return i;
}

static size_t utf8_put(char *dst, uint32_t cp)
{
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xC0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one character of a string known to be valid UTF-8. */
static size_t utf8_get(const uint8_t *s, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0) {
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* ======================================================================
 * GPT-2 byte <-> code point map.  Printable Latin-1 bytes stand for
 * themselves; the other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) are
 * shifted to U+0100.. in byte order so every byte has a visible character.
 * ====================================================================== */
static void byte_map_build(ds_tokenizer *t)
{
    uint32_t next = 256;
    for (int i = 0; i < 512; i++)
        t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = self ? (uint32_t)b : next++;
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

/* Writes the raw bytes a byte-level spelling stands for.  Returns 0 (and
 * writes nothing) when some character is outside the map: such a token is
 * then decoded to its spelling verbatim, as the ByteLevel decoder does. */
static int spelling_to_bytes(const ds_tokenizer *t, const char *s, size_t n, char *dst, size_t *len)
{
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        i += utf8_get((const uint8_t *)s + i, &cp);
        if (cp >= 512 || t->cp_byte[cp] < 0)
            return 0;
        dst[o++] = (char)t->cp_byte[cp];
    }
    *len = o;
    return 1;
}

/* ======================================================================
 * Hash maps
 * ====================================================================== */
static uint64_t hash_bytes(const void *key, size_t n)
{
    const uint8_t *p = key;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xC2B2AE3D27D4EB4FULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001B3ULL;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    while (n--)
        h = (h ^ *p++) * 0x100000001B3ULL;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    return h ? h : 1;           /* 0 marks an empty slot */
}

static size_t bmap_probe(const tk_bmap *m, const void *key, size_t len, uint64_t h)
{
    size_t i = h & (m->cap - 1);
    for (;;) {
        const tk_bslot *s = &m->slots[i];
        if (!s->hash || (s->hash == h && s->len == len && !memcmp(m->pool + s->off, key, len)))
            return i;
        i = (i + 1) & (m->cap - 1);
    }
}

static int bmap_get(const tk_bmap *m, const void *key, size_t len, int32_t *val)
{
    if (!m->cap)
        return 0;
    const tk_bslot *s = &m->slots[bmap_probe(m, key, len, hash_bytes(key, len))];
    if (!s->hash)
        return 0;
    *val = s->val;
    return 1;
}

static int bmap_grow(tk_bmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tk_bslot *ns = calloc(cap, sizeof *ns);
    if (!ns)
        return 0;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].hash)
            continue;
        size_t j = m->slots[i].hash & (cap - 1);
        while (ns[j].hash)
            j = (j + 1) & (cap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = cap;
    return 1;
}

/* Inserts key or overwrites its value (a later duplicate wins, like a
 * Rust HashMap built from an iterator). */
static int bmap_put(tk_bmap *m, const void *key, size_t len, int32_t val)
{
    if ((m->count + 1) * 2 > m->cap && !bmap_grow(m))
        return 0;
    uint64_t h = hash_bytes(key, len);
    tk_bslot *s = &m->slots[bmap_probe(m, key, len, h)];
    if (s->hash) {
        s->val = val;
        return 1;
    }
    if (m->pool_len + len > UINT32_MAX)
        return 0;
    if (m->pool_len + len > m->pool_cap) {
        size_t cap = m->pool_cap ? m->pool_cap : 4096;
        while (cap < m->pool_len + len)
            cap *= 2;
        char *np = realloc(m->pool, cap);
        if (!np)
            return 0;
        m->pool = np;
        m->pool_cap = cap;
    }
    memcpy(m->pool + m->pool_len, key, len);
    s->hash = h;
    s->off = (uint32_t)m->pool_len;
    s->len = (uint32_t)len;
    s->val = val;
    m->pool_len += len;
    m->count++;
    return 1;
}

static void bmap_clear(tk_bmap *m)
{
    if (m->slots)
        memset(m->slots, 0, m->cap * sizeof *m->slots);
    m->count = 0;
    m->pool_len = 0;
}

static void bmap_free(tk_bmap *m)
{
    free(m->slots);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static size_t pmap_probe(const tk_pmap *m, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h ^ (h >> 29)) & (m->cap - 1);
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int pmap_init(tk_pmap *m, size_t expected)
{
    size_t cap = 1024;
    while (cap < expected * 2)
        cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return 0;
    memset(m->slots, 0xFF, cap * sizeof *m->slots);   /* all keys UINT64_MAX */
    m->cap = cap;
    m->count = 0;
    return 1;
}

/* The table is sized once from the merge count, so it never grows. */
static void pmap_put(tk_pmap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = pair_key(a, b);
    tk_pslot *s = &m->slots[pmap_probe(m, key)];
    if (s->key == UINT64_MAX)
        m->count++;
    s->key = key;
    s->rank = rank;
    s->id = id;
}

static const tk_pslot *pmap_get(const tk_pmap *m, int32_t a, int32_t b)
{
    const tk_pslot *s = &m->slots[pmap_probe(m, pair_key(a, b))];
    return s->key == UINT64_MAX ? NULL : s;
}

/* ======================================================================
 * Added-token trie
 * ====================================================================== */
static int32_t trie_new_node(tk_trie *tr, uint8_t byte)
{
    if (tr->n == tr->cap) {
        size_t cap = tr->cap ? tr->cap * 2 : 256;
        tk_tnode *nn = realloc(tr->nodes, cap * sizeof *nn);
        if (!nn)
            return -1;
        tr->nodes = nn;
        tr->cap = cap;
    }
    tk_tnode *nd = &tr->nodes[tr->n];
    nd->child = nd->sibling = nd->added = -1;
    nd->byte = byte;
    return (int32_t)tr->n++;
}

static int32_t trie_child(const tk_trie *tr, int32_t node, uint8_t byte)
{
    for (int32_t c = tr->nodes[node].child; c >= 0; c = tr->nodes[c].sibling)
        if (tr->nodes[c].byte == byte)
            return c;
    return -1;
}

static int trie_add(tk_trie *tr, const uint8_t *s, size_t n, int32_t added_idx)
{
    if (!tr->n && trie_new_node(tr, 0) < 0)
        return 0;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = trie_child(tr, node, s[i]);
        if (c < 0) {
            if ((c = trie_new_node(tr, s[i])) < 0)
                return 0;
            tr->nodes[c].sibling = tr->nodes[node].child;
            tr->nodes[node].child = c;
        }
        node = c;
    }
    tr->nodes[node].added = added_idx;
    tr->first[s[0]] = 1;
    return 1;
}

/* ======================================================================
 * Loading
 * ====================================================================== */

/* Appends a NUL-terminated copy of s to the tokenizer's text pool. */
static int text_add(ds_tokenizer *t, const char *s, size_t n, uint32_t *off)
{
    if (t->text_len + n + 1 > UINT32_MAX)
        return 0;
    if (t->text_len + n + 1 > t->text_cap) {
        size_t cap = t->text_cap ? t->text_cap : 1 << 20;
        while (cap < t->text_len + n + 1)
            cap *= 2;
        char *np = realloc(t->text, cap);
        if (!np)
            return 0;
        t->text = np;
        t->text_cap = cap;
    }
    memcpy(t->text + t->text_len, s, n);
    t->text[t->text_len + n] = 0;
    *off = (uint32_t)t->text_len;
    t->text_len += n + 1;
    return 1;
}

static ds_status nomem(ds_error *err)
{
    return ds_fail(err, DS_ERR_NOMEM, "out of memory while loading the tokenizer");
}

static int json_flag(const json_t *obj, const char *key, int dflt)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Largest id in model.vocab and added_tokens, to size the per-id tables. */
static ds_status scan_max_id(const json_t *vocab, const json_t *added, int64_t *max_id, ds_error *err)
{
    const char *key;
    json_t *v;
    size_t i;
    *max_id = -1;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX / 2)
            return ds_fail(err, DS_ERR_FORMAT, "tokenizer: bad id for vocab entry '%s'", key);
        if (json_integer_value(v) > *max_id)
            *max_id = json_integer_value(v);
    }
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= INT32_MAX / 2)
            return ds_fail(err, DS_ERR_FORMAT, "tokenizer: added_tokens[%zu] has no valid id", i);
        if (json_integer_value(id) > *max_id)
            *max_id = json_integer_value(id);
    }
    if (*max_id < 0)
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: empty vocabulary");
    return DS_OK;
}

static ds_status alloc_id_tables(ds_tokenizer *t, int64_t max_id, ds_error *err)
{
    t->n_ids = (int)(max_id + 1);
    t->flags = calloc((size_t)t->n_ids, 1);
    t->str_off = calloc((size_t)t->n_ids, sizeof *t->str_off);
    t->bytes_off = calloc((size_t)t->n_ids, sizeof *t->bytes_off);
    t->bytes_len = calloc((size_t)t->n_ids, sizeof *t->bytes_len);
    if (!t->flags || !t->str_off || !t->bytes_off || !t->bytes_len)
        return nomem(err);
    return DS_OK;
}

/* Records the spelling of an id and the bytes it decodes to. */
static ds_status set_token(ds_tokenizer *t, int32_t id, const char *s, size_t n, int verbatim,
                           ds_error *err)
{
    char small[256];
    char *tmp = n <= sizeof small ? small : malloc(n);
    size_t blen = 0;
    if (!tmp)
        return nomem(err);
    if (verbatim || !spelling_to_bytes(t, s, n, tmp, &blen)) {
        memcpy(tmp, s, n);
        blen = n;
    }
    int ok = text_add(t, s, n, &t->str_off[id]) && text_add(t, tmp, blen, &t->bytes_off[id]);
    t->bytes_len[id] = (uint32_t)blen;
    if (tmp != small)
        free(tmp);
    return ok ? DS_OK : nomem(err);
}

static ds_status load_vocab(ds_tokenizer *t, const json_t *vocab, ds_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t n = strlen(key);
        ds_status st = set_token(t, id, key, n, 0, err);
        if (st)
            return st;
        t->flags[id] |= TK_PRESENT;
        if (!bmap_put(&t->vocab, key, n, id))
            return nomem(err);
    }
    return DS_OK;
}

/* Splits one merges entry ("A B" or ["A", "B"]) into its two spellings. */
static int merge_parts(const json_t *m, const char **a, size_t *na, const char **b, size_t *nb)
{
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *na = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *nb = json_string_length(json_array_get(m, 1));
        return 1;
    }
    if (!json_is_string(m))
        return 0;
    const char *s = json_string_value(m), *sp = strchr(s, ' ');
    if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' '))
        return 0;
    *a = s;
    *na = (size_t)(sp - s);
    *b = sp + 1;
    *nb = strlen(sp + 1);
    return 1;
}

static ds_status load_merges(ds_tokenizer *t, const json_t *merges, ds_error *err)
{
    size_t i;
    json_t *m;
    tk_buf cat = { 0 };
    ds_status st = DS_OK;
    if (!pmap_init(&t->merges, json_array_size(merges)))
        return nomem(err);
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t na, nb;
        int32_t ia, ib, im;
        if (!merge_parts(m, &a, &na, &b, &nb)) {
            st = ds_fail(err, DS_ERR_FORMAT, "tokenizer: merges[%zu] is not a pair of tokens", i);
            break;
        }
        cat.n = 0;
        if (!buf_add(&cat, a, na) || !buf_add(&cat, b, nb)) {
            st = nomem(err);
            break;
        }
        if (!bmap_get(&t->vocab, a, na, &ia) || !bmap_get(&t->vocab, b, nb, &ib) ||
            !bmap_get(&t->vocab, cat.p, cat.n, &im)) {
            st = ds_fail(err, DS_ERR_FORMAT, "tokenizer: merges[%zu] ('%.*s %.*s') uses a token "
                         "missing from the vocabulary", i, (int)na, a, (int)nb, b);
            break;
        }
        /* A later duplicate overrides an earlier one, as in HF. */
        pmap_put(&t->merges, ia, ib, (int32_t)i, im);
    }
    t->n_ranks = (int32_t)json_array_size(merges);
    free(cat.p);
    return st;
}

/* The 256 single-byte tokens every byte-level vocabulary must contain. */
static ds_status load_byte_ids(ds_tokenizer *t, ds_error *err)
{
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t n = utf8_put(s, t->byte_cp[b]);
        if (!bmap_get(&t->vocab, s, n, &t->byte_id[b]))
            return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: the vocabulary lacks the "
                           "byte-level token for byte 0x%02x", b);
    }
    return DS_OK;
}

static ds_status load_model(ds_tokenizer *t, const json_t *model, ds_error *err)
{
    const json_t *type = json_object_get(model, "type");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    if (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE")))
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: model type '%s' is not supported (BPE only)",
                       json_is_string(type) ? json_string_value(type) : "?");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: model lacks vocab or merges");
    const char *affix[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, affix[i]);
        if (json_is_string(v) && json_string_length(v))
            return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: BPE %s is not supported", affix[i]);
    }
    if (json_flag(model, "byte_fallback", 0))
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: BPE byte_fallback is not supported");
    t->ignore_merges = json_flag(model, "ignore_merges", 0);
    ds_status st = load_vocab(t, vocab, err);
    if (!st)
        st = load_merges(t, merges, err);
    if (!st)
        st = load_byte_ids(t, err);
    return st;
}

static ds_status load_added(ds_tokenizer *t, const json_t *added, ds_error *err)
{
    size_t i;
    json_t *a;
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added)
        return nomem(err);
    json_array_foreach(added, i, a) {
        const json_t *content = json_object_get(a, "content");
        if (!json_is_string(content) || !json_string_length(content))
            return ds_fail(err, DS_ERR_FORMAT, "tokenizer: added_tokens[%zu] has no content", i);
        tk_added *ad = &t->added[t->n_added];
        const char *s = json_string_value(content);
        size_t n = json_string_length(content);
        ad->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        ad->special = (uint8_t)json_flag(a, "special", 0);
        ad->single_word = (uint8_t)json_flag(a, "single_word", 0);
        ad->lstrip = (uint8_t)json_flag(a, "lstrip", 0);
        ad->rstrip = (uint8_t)json_flag(a, "rstrip", 0);
        ad->normalized = (uint8_t)json_flag(a, "normalized", !ad->special);
        /* Added tokens decode to their content verbatim. */
        ds_status st = set_token(t, ad->id, s, n, 1, err);
        if (st)
            return st;
        ad->off = t->bytes_off[ad->id];
        ad->len = (uint32_t)n;
        t->flags[ad->id] |= TK_PRESENT | TK_ADDED | (ad->special ? TK_SPECIAL : 0);
        tk_trie *tr = ad->normalized ? &t->trie_norm : &t->trie_raw;
        if (!bmap_put(&t->added_map, s, n, ad->id) ||
            !trie_add(tr, (const uint8_t *)s, n, t->n_added))
            return nomem(err);
        t->n_added++;
    }
    return DS_OK;
}

/* Only normalizers that leave the text unchanged are supported (the
 * DeepSeek files have an empty Sequence). */
static ds_status check_normalizer(const json_t *norm, ds_error *err)
{
    if (!norm || json_is_null(norm))
        return DS_OK;
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *sub;
        json_array_foreach(json_object_get(norm, "normalizers"), i, sub) {
            ds_status st = check_normalizer(sub, err);
            if (st)
                return st;
        }
        return DS_OK;
    }
    return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: normalizer '%s' is not supported",
                   type ? type : "?");
}

static ds_status compile_regex(const char *pat, size_t n, int literal, pcre2_code **out,
                               ds_error *err)
{
    int code;
    PCRE2_SIZE off;
    /* PCRE2 rejects UCP together with LITERAL (it has no classes anyway). */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    *out = pcre2_compile((PCRE2_SPTR)pat, n, opts, &code, &off, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: bad pre-tokenizer regex at offset %zu: %s",
                       (size_t)off, (const char *)msg);
    }
    /* JIT is an optimisation only; the interpreter is used if it fails. */
    (void)pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
    return DS_OK;
}

static int parse_behavior(const char *s)
{
    static const char *names[] = { "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                   "Contiguous" };
    for (int i = 0; i < 5; i++)
        if (s && !strcmp(s, names[i]))
            return i;
    return -1;
}

static ds_status load_split(const json_t *pt, tk_step *st, ds_error *err)
{
    const json_t *pat = json_object_get(pt, "pattern");
    const json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    const json_t *src = json_is_string(re) ? re : lit;
    if (!json_is_string(src))
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: Split pre-tokenizer without a pattern");
    st->kind = TK_SPLIT;
    st->behavior = parse_behavior(json_string_value(json_object_get(pt, "behavior")));
    if (st->behavior < 0)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: unknown Split behavior");
    st->invert = json_flag(pt, "invert", 0);
    return compile_regex(json_string_value(src), json_string_length(src), src == lit, &st->re, err);
}

/* The GPT-2 pre-tokenizer pattern that ByteLevel applies when use_regex is
 * true: contractions, letter runs, digit runs, other symbols, spaces. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static ds_status load_pretok(ds_tokenizer *t, const json_t *pt, ds_error *err)
{
    if (!pt || json_is_null(pt))
        return DS_OK;
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *sub;
        json_array_foreach(json_object_get(pt, "pretokenizers"), i, sub) {
            ds_status st = load_pretok(t, sub, err);
            if (st)
                return st;
        }
        return DS_OK;
    }
    if (t->n_steps == TK_MAX_STEPS)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: too many pre-tokenizers");
    tk_step *st = &t->steps[t->n_steps];
    if (type && !strcmp(type, "Split")) {
        ds_status s = load_split(pt, st, err);
        if (!s)
            t->n_steps++;
        return s;
    }
    if (type && !strcmp(type, "ByteLevel")) {
        st->kind = TK_BYTELEVEL;
        st->add_prefix_space = json_flag(pt, "add_prefix_space", 1);
        t->n_steps++;
        if (json_flag(pt, "use_regex", 1))
            return compile_regex(gpt2_pattern, sizeof gpt2_pattern - 1, 0, &st->re, err);
        return DS_OK;
    }
    return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer '%s' is not supported",
                   type ? type : "?");
}

/* The BPE here works on raw bytes and maps them through the byte table, so
 * the pipeline must end with ByteLevel (the regexes before it see the raw
 * text) and the decoder, if any, must be ByteLevel. */
static ds_status check_pipeline(const ds_tokenizer *t, const json_t *decoder, ds_error *err)
{
    for (int i = 0; i < t->n_steps; i++)
        if (t->steps[i].kind == TK_BYTELEVEL && i != t->n_steps - 1)
            return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: ByteLevel must be the last pre-tokenizer");
    if (!t->n_steps || t->steps[t->n_steps - 1].kind != TK_BYTELEVEL)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: only byte-level BPE is supported "
                       "(no ByteLevel pre-tokenizer)");
    const char *type = json_string_value(json_object_get(decoder, "type"));
    if (decoder && !json_is_null(decoder) && (!type || strcmp(type, "ByteLevel")))
        return ds_fail(err, DS_ERR_UNSUPPORTED, "tokenizer: decoder '%s' is not supported",
                       type ? type : "?");
    return DS_OK;
}

/* bos_token / eos_token are either a string or {"content": ...}. */
static int32_t config_token(const ds_tokenizer *t, const json_t *cfg, const char *key)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_is_string(v) ? ds_tokenizer_token_id(t, json_string_value(v)) : -1;
}

/* chat_template is a string, or a list of {name, template}: take "default". */
static ds_status config_template(ds_tokenizer *t, const json_t *cfg, ds_error *err)
{
    const json_t *v = json_object_get(cfg, "chat_template");
    if (json_is_array(v)) {
        size_t i;
        json_t *e, *pick = NULL;
        json_array_foreach(v, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (!pick || (name && !strcmp(name, "default")))
                pick = json_object_get(e, "template");
        }
        v = pick;
    }
    if (!json_is_string(v))
        return DS_OK;
    t->chat_template = strdup(json_string_value(v));
    return t->chat_template ? DS_OK : nomem(err);
}

static ds_status load_config(ds_tokenizer *t, const char *path, ds_error *err)
{
    struct stat sb;
    json_t *cfg;
    if (stat(path, &sb) != 0)
        return DS_OK;           /* optional */
    ds_status st = ds_json_file_load(path, 0, &cfg, err);
    if (st != DS_OK)
        return st;
    t->bos_id = config_token(t, cfg, "bos_token");
    t->eos_id = config_token(t, cfg, "eos_token");
    st = config_template(t, cfg, err);
    json_decref(cfg);
    return st;
}

static ds_status load_json(ds_tokenizer *t, const json_t *root, ds_error *err)
{
    const json_t *model = json_object_get(root, "model");
    const json_t *added = json_object_get(root, "added_tokens");
    int64_t max_id;
    ds_status st;
    if (!json_is_object(model))
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: no model section");
    if (added && !json_is_array(added))
        return ds_fail(err, DS_ERR_FORMAT, "tokenizer: added_tokens is not a list");
    if ((st = scan_max_id(json_object_get(model, "vocab"), added, &max_id, err)) ||
        (st = alloc_id_tables(t, max_id, err)) ||
        (st = load_model(t, model, err)) ||
        (st = load_added(t, added, err)) ||
        (st = check_normalizer(json_object_get(root, "normalizer"), err)) ||
        (st = load_pretok(t, json_object_get(root, "pre_tokenizer"), err)))
        return st;
    return check_pipeline(t, json_object_get(root, "decoder"), err);
}

/* A directory means DIR/tokenizer.json; the config sits beside the file. */
static ds_status resolve_paths(const char *path_or_dir, char **json_path, char **cfg_path,
                               ds_error *err)
{
    struct stat sb;
    if (stat(path_or_dir, &sb) != 0)
        return ds_fail(err, DS_ERR_IO, "%s: %s", path_or_dir, strerror(errno));
    size_t n = strlen(path_or_dir);
    *json_path = malloc(n + 32);
    *cfg_path = malloc(n + 32);
    if (!*json_path || !*cfg_path)
        return nomem(err);
    if (S_ISDIR(sb.st_mode)) {
        snprintf(*json_path, n + 32, "%s/tokenizer.json", path_or_dir);
        snprintf(*cfg_path, n + 32, "%s/tokenizer_config.json", path_or_dir);
    } else {
        const char *slash = strrchr(path_or_dir, '/');
        snprintf(*json_path, n + 32, "%s", path_or_dir);
        if (slash)
            snprintf(*cfg_path, n + 32, "%.*s/tokenizer_config.json",
                     (int)(slash - path_or_dir), path_or_dir);
        else
            snprintf(*cfg_path, n + 32, "tokenizer_config.json");
    }
    return DS_OK;
}

ds_status ds_tokenizer_load(const char *path_or_dir, ds_tokenizer **out, ds_error *err)
{
    char *json_path = NULL, *cfg_path = NULL;
    json_t *root = NULL;
    ds_tokenizer *t = NULL;
    ds_status st;
    if (!path_or_dir || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_tokenizer_load: NULL argument");
    *out = NULL;
    if ((st = resolve_paths(path_or_dir, &json_path, &cfg_path, err)))
        goto done;
    if ((st = ds_json_file_load(json_path, 0, &root, err)))
        goto done;
    if (!(t = calloc(1, sizeof *t))) {
        st = nomem(err);
        goto done;
    }
    t->bos_id = t->eos_id = -1;
    byte_map_build(t);
    if (!(st = load_json(t, root, err)))
        st = load_config(t, cfg_path, err);
done:
    json_decref(root);
    free(json_path);
    free(cfg_path);
    if (st) {
        ds_tokenizer_free(t);
        return st;
    }
    *out = t;
    return DS_OK;
}

void ds_tokenizer_free(ds_tokenizer *t)
{
    if (!t)
        return;
    free(t->flags);
    free(t->str_off);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->text);
    bmap_free(&t->vocab);
    bmap_free(&t->added_map);
    free(t->merges.slots);
    free(t->added);
    free(t->trie_raw.nodes);
    free(t->trie_norm.nodes);
    for (int i = 0; i < t->n_steps; i++)
        pcre2_code_free(t->steps[i].re);
    free(t->chat_template);
    free(t);
}

/* ======================================================================
 * Token lookups
 * ====================================================================== */
static int id_ok(const ds_tokenizer *t, int32_t id)
{
    return t && id >= 0 && id < t->n_ids && (t->flags[id] & TK_PRESENT);
}

int ds_tokenizer_vocab_size(const ds_tokenizer *t) { return t ? t->n_ids : 0; }
int32_t ds_tokenizer_bos_id(const ds_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t ds_tokenizer_eos_id(const ds_tokenizer *t) { return t ? t->eos_id : -1; }
const char *ds_tokenizer_chat_template(const ds_tokenizer *t) { return t ? t->chat_template : NULL; }

int32_t ds_tokenizer_token_id(const ds_tokenizer *t, const char *token)
{
    int32_t id;
    if (!t || !token)
        return -1;
    size_t n = strlen(token);
    /* Added tokens take precedence over the model vocabulary, as in HF. */
    if (bmap_get(&t->added_map, token, n, &id) || bmap_get(&t->vocab, token, n, &id))
        return id;
    return -1;
}

const char *ds_tokenizer_token_str(const ds_tokenizer *t, int32_t id)
{
    return id_ok(t, id) ? t->text + t->str_off[id] : NULL;
}

const char *ds_tokenizer_token_bytes(const ds_tokenizer *t, int32_t id, size_t *len)
{
    if (!id_ok(t, id))
        return NULL;
    if (len)
        *len = t->bytes_len[id];
    return t->text + t->bytes_off[id];
}

int ds_tokenizer_is_special(const ds_tokenizer *t, int32_t id)
{
    return id_ok(t, id) && (t->flags[id] & TK_SPECIAL);
}

/* ======================================================================
 * Encoding
 * ====================================================================== */
typedef struct tk_seg {
    size_t s, e;
    int match;
} tk_seg;

typedef struct tk_hent {
    int32_t rank, pos;
} tk_hent;

/* Pre-tokens up to this many bytes have their BPE result cached for the
 * duration of one encode call (the cache is per call, so a shared
 * tokenizer stays read-only and thread-safe). */
#define TK_CACHE_MAX_LEN 64
#define TK_CACHE_MAX_ENTRIES 65536

typedef struct enc_ctx {
    const ds_tokenizer *t;
    ds_error *err;
    int parse_special;
    int32_t *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    tk_seg *segs[TK_MAX_STEPS];     /* per pre-tokenizer depth */
    size_t seg_cap[TK_MAX_STEPS];
    tk_buf pfx[TK_MAX_STEPS];       /* ByteLevel add_prefix_space copies */
    int32_t *sym, *prv, *nxt;       /* BPE symbol list */
    size_t sym_cap;
    tk_hent *heap;
    size_t heap_n, heap_cap;
    tk_hent *init;                  /* long pre-tokens: initial pairs sorted by (rank, pos) */
    size_t init_n, init_pos, init_cap;
    uint32_t *rank_count;           /* counting-sort buckets, n_ranks + 1 */
    tk_bmap cache;                  /* pre-token -> offset in cpool */
    int32_t *cpool;                 /* [count, ids...] per cached pre-token */
    size_t cpool_n, cpool_cap;
} enc_ctx;

static ds_status enc_nomem(enc_ctx *c)
{
    return ds_fail(c->err, DS_ERR_NOMEM, "out of memory while encoding");
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return 0;
    *p = np;
    *cap = nc;
    return 1;
}

static ds_status emit_ids(enc_ctx *c, const int32_t *ids, size_t n)
{
    if (!grow((void **)&c->ids, &c->cap_ids, c->n_ids + n, sizeof *c->ids))
        return enc_nomem(c);
    memcpy(c->ids + c->n_ids, ids, n * sizeof *ids);
    c->n_ids += n;
    return DS_OK;
}

/* ---- BPE over one pre-token: a min-heap of candidate merges ordered by
 * (rank, position) over a linked list of symbols, so each merge costs
 * O(log n) and a long pre-token is O(n log n). -------------------------- */
static int hent_less(tk_hent a, tk_hent b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

/* A 4-ary heap: half the depth of a binary one, and the four children
 * share a cache line, which matters when it holds millions of entries. */
static void heap_down(tk_hent *h, size_t n, size_t i)
{
    tk_hent e = h[i];
    for (;;) {
        size_t c0 = 4 * i + 1, m = c0;
        if (c0 >= n)
            break;
        size_t end = c0 + 4 < n ? c0 + 4 : n;
        for (size_t k = c0 + 1; k < end; k++)
            if (hent_less(h[k], h[m]))
                m = k;
        if (!hent_less(h[m], e))
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = e;
}

static int heap_push(enc_ctx *c, int32_t rank, int32_t pos)
{
    if (!grow((void **)&c->heap, &c->heap_cap, c->heap_n + 1, sizeof *c->heap))
        return 0;
    size_t i = c->heap_n++;
    tk_hent e = { rank, pos };
    while (i > 0 && hent_less(e, c->heap[(i - 1) / 4])) {
        c->heap[i] = c->heap[(i - 1) / 4];
        i = (i - 1) / 4;
    }
    c->heap[i] = e;
    return 1;
}

static tk_hent heap_pop(enc_ctx *c)
{
    tk_hent top = c->heap[0];
    c->heap[0] = c->heap[--c->heap_n];
    if (c->heap_n)
        heap_down(c->heap, c->heap_n, 0);
    return top;
}

/* Pushes the merge candidate of symbol i and its right neighbour, if any. */
static int push_pair(enc_ctx *c, int32_t i)
{
    if (i < 0 || c->nxt[i] < 0)
        return 1;
    const tk_pslot *m = pmap_get(&c->t->merges, c->sym[i], c->sym[c->nxt[i]]);
    return m ? heap_push(c, m->rank, i) : 1;
}

/* A pre-token with this many candidate pairs has them counting-sorted by
 * rank instead of heapified: the sorted array is consumed in O(1) per pop
 * and only pairs created by merges go through the heap, which keeps a long
 * run such as 10 MB of one letter to a few seconds. */
#define TK_SORT_MIN 4096

/* Stable counting sort of heap[0..heap_n) (in position order) by rank into
 * init; the heap is then emptied for the pairs created by merges. */
static ds_status sort_initial_pairs(enc_ctx *c)
{
    size_t nr = (size_t)c->t->n_ranks + 1;
    if (!c->rank_count && !(c->rank_count = malloc(nr * sizeof *c->rank_count)))
        return enc_nomem(c);
    if (!grow((void **)&c->init, &c->init_cap, c->heap_n, sizeof *c->init))
        return enc_nomem(c);
    memset(c->rank_count, 0, nr * sizeof *c->rank_count);
    for (size_t i = 0; i < c->heap_n; i++)
        c->rank_count[c->heap[i].rank + 1]++;
    for (size_t r = 1; r < nr; r++)
        c->rank_count[r] += c->rank_count[r - 1];
    for (size_t i = 0; i < c->heap_n; i++)
        c->init[c->rank_count[c->heap[i].rank]++] = c->heap[i];
    c->init_n = c->heap_n;
    c->heap_n = 0;
    return DS_OK;
}

static ds_status bpe_init_symbols(enc_ctx *c, const uint8_t *w, size_t n)
{
    if (n > INT32_MAX / 4)
        return ds_fail(c->err, DS_ERR_INPUT, "pre-token of %zu bytes is too long", n);
    if (n > c->sym_cap) {
        int32_t *a = realloc(c->sym, n * sizeof *a);
        if (a)
            c->sym = a;
        int32_t *b = realloc(c->prv, n * sizeof *b);
        if (b)
            c->prv = b;
        int32_t *d = realloc(c->nxt, n * sizeof *d);
        if (d)
            c->nxt = d;
        if (!a || !b || !d)
            return enc_nomem(c);
        c->sym_cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        c->sym[i] = c->t->byte_id[w[i]];
        c->prv[i] = (int32_t)i - 1;
        c->nxt[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    /* Collect all adjacent pairs, in position order. */
    c->heap_n = c->init_n = c->init_pos = 0;
    if (!grow((void **)&c->heap, &c->heap_cap, n, sizeof *c->heap))
        return enc_nomem(c);
    for (size_t i = 0; i + 1 < n; i++) {
        const tk_pslot *m = pmap_get(&c->t->merges, c->sym[i], c->sym[i + 1]);
        if (m)
            c->heap[c->heap_n++] = (tk_hent){ m->rank, (int32_t)i };
    }
    if (c->heap_n >= TK_SORT_MIN)
        return sort_initial_pairs(c);
    for (size_t i = c->heap_n / 4 + 1; c->heap_n > 1 && i-- > 0;)     /* heapify in O(n) */
        heap_down(c->heap, c->heap_n, i);
    return DS_OK;
}

/* next_merge: the smaller of the sorted initial pairs and the heap top. */
static int next_merge(enc_ctx *c, tk_hent *out)
{
    int have_init = c->init_pos < c->init_n;
    if (!have_init && !c->heap_n)
        return 0;
    if (have_init && (!c->heap_n || hent_less(c->init[c->init_pos], c->heap[0])))
        *out = c->init[c->init_pos++];
    else
        *out = heap_pop(c);
    return 1;
}

static ds_status bpe_merge_all(enc_ctx *c)
{
    tk_hent top;
    while (next_merge(c, &top)) {
        int32_t i = top.pos, j = c->nxt[i];
        /* Skip stale entries: the symbol was absorbed, or its pair changed
         * (a rank identifies a pair, so a rank match means the same pair). */
        if (c->sym[i] < 0 || j < 0)
            continue;
        const tk_pslot *m = pmap_get(&c->t->merges, c->sym[i], c->sym[j]);
        if (!m || m->rank != top.rank)
            continue;
        c->sym[i] = m->id;
        c->sym[j] = -1;
        c->nxt[i] = c->nxt[j];
        if (c->nxt[j] >= 0)
            c->prv[c->nxt[j]] = i;
        if (!push_pair(c, c->prv[i]) || !push_pair(c, i))
            return enc_nomem(c);
    }
    return DS_OK;
}

static ds_status cache_store(enc_ctx *c, const uint8_t *w, size_t n, size_t first)
{
    size_t cnt = c->n_ids - first;
    if (c->cache.count >= TK_CACHE_MAX_ENTRIES) {
        bmap_clear(&c->cache);
        c->cpool_n = 0;
    }
    if (!grow((void **)&c->cpool, &c->cpool_cap, c->cpool_n + cnt + 1, sizeof *c->cpool) ||
        !bmap_put(&c->cache, w, n, (int32_t)c->cpool_n))
        return enc_nomem(c);
    c->cpool[c->cpool_n] = (int32_t)cnt;
    memcpy(c->cpool + c->cpool_n + 1, c->ids + first, cnt * sizeof *c->ids);
    c->cpool_n += cnt + 1;
    return DS_OK;
}

/* ignore_merges: a pre-token that is itself in the vocabulary is one token. */
static int whole_word_id(enc_ctx *c, const uint8_t *w, size_t n, int32_t *id)
{
    tk_buf s = { 0 };
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        if (!buf_add(&s, u, utf8_put(u, c->t->byte_cp[w[i]]))) {
            free(s.p);
            return 0;
        }
    }
    found = bmap_get(&c->t->vocab, s.p, s.n, id);
    free(s.p);
    return found;
}

static ds_status bpe_word(enc_ctx *c, const uint8_t *w, size_t n)
{
    int32_t v;
    if (n == 1)
        return emit_ids(c, &c->t->byte_id[w[0]], 1);
    if (n <= TK_CACHE_MAX_LEN && bmap_get(&c->cache, w, n, &v))
        return emit_ids(c, c->cpool + v + 1, (size_t)c->cpool[v]);
    if (c->t->ignore_merges && whole_word_id(c, w, n, &v))
        return emit_ids(c, &v, 1);
    size_t first = c->n_ids;
    ds_status st = bpe_init_symbols(c, w, n);
    if (!st)
        st = bpe_merge_all(c);
    for (int32_t i = 0; !st && i >= 0; i = c->nxt[i])
        st = emit_ids(c, &c->sym[i], 1);
    if (!st && n <= TK_CACHE_MAX_LEN)
        st = cache_store(c, w, n, first);
    return st;
}

/* ---- pre-tokenizer pipeline ------------------------------------------ */
static ds_status pretok_run(enc_ctx *c, int step, const uint8_t *p, size_t n);

static ds_status seg_push(enc_ctx *c, int step, size_t *cnt, size_t s, size_t e, int match)
{
    if (s == e)
        return DS_OK;
    if (!grow((void **)&c->segs[step], &c->seg_cap[step], *cnt + 1, sizeof(tk_seg)))
        return enc_nomem(c);
    c->segs[step][(*cnt)++] = (tk_seg){ s, e, match };
    return DS_OK;
}

/* Cuts p[0..n) into alternating non-matching / matching segments of re.
 * The subject is the piece alone, so anchors and look-arounds see only the
 * piece, as in HF where each Split runs on the previous step's pieces. */
static ds_status regex_segments(enc_ctx *c, int step, const pcre2_code *re, const uint8_t *p,
                                size_t n, size_t *cnt)
{
    size_t off = 0, prev = 0;
    ds_status st = DS_OK;
    *cnt = 0;
    while (off < n && !st) {
        /* The text was validated once up front; re-checking it at every
         * call would make the loop quadratic. */
        int rc = pcre2_match(re, p, n, off, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ds_fail(c->err, DS_ERR_INPUT, "pre-tokenizer regex failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t s = ov[0], e = ov[1];
        if (e <= s) {           /* empty match: step over one character */
            size_t adv = 1;
            if (s < n)
                utf8_classify(p + s, n - s, 1, &adv);
            off = s + adv;
            continue;
        }
        st = seg_push(c, step, cnt, prev, s, 0);
        if (!st)
            st = seg_push(c, step, cnt, s, e, 1);
        prev = off = e;
    }
    if (!st)
        st = seg_push(c, step, cnt, prev, n, 0);
    return st;
}

/* Applies a Split behavior in place, keeping the segment order. */
static size_t apply_behavior(tk_seg *sg, size_t cnt, int behavior, int invert)
{
    size_t o = 0;
    for (size_t k = 0; k < cnt; k++)
        sg[k].match ^= invert;
    for (size_t k = 0; k < cnt; k++) {
        tk_seg cur = sg[k];
        int prev_match = k > 0 && sg[k - 1].match;
        switch (behavior) {
        case TK_REMOVED:
            if (!cur.match)
                sg[o++] = cur;
            break;
        case TK_MERGED_PREV:     /* a delimiter joins the non-delimiter before it */
            if (cur.match && k > 0 && !prev_match)
                sg[o - 1].e = cur.e;
            else
                sg[o++] = cur;
            break;
        case TK_MERGED_NEXT:     /* a delimiter joins the non-delimiter after it */
            if (cur.match && k + 1 < cnt && !sg[k + 1].match) {
                cur.e = sg[k + 1].e;
                cur.match = 0;
                k++;
            }
            sg[o++] = cur;
            break;
        case TK_CONTIGUOUS:      /* adjacent delimiters form one piece */
            if (k > 0 && cur.match == prev_match)
                sg[o - 1].e = cur.e;
            else
                sg[o++] = cur;
            break;
        default:                 /* Isolated */
            sg[o++] = cur;
        }
    }
    return o;
}

static ds_status run_split(enc_ctx *c, int step, const tk_step *sp, const uint8_t *p, size_t n)
{
    size_t cnt;
    ds_status st = regex_segments(c, step, sp->re, p, n, &cnt);
    if (st)
        return st;
    cnt = apply_behavior(c->segs[step], cnt, sp->behavior, sp->invert);
    /* segs[step] is not touched by deeper steps, so it stays valid here. */
    for (size_t k = 0; k < cnt && !st; k++)
        st = pretok_run(c, step + 1, p + c->segs[step][k].s,
                        c->segs[step][k].e - c->segs[step][k].s);
    return st;
}

static ds_status run_bytelevel(enc_ctx *c, int step, const tk_step *sp, const uint8_t *p, size_t n)
{
    if (sp->add_prefix_space && p[0] != ' ') {
        tk_buf *b = &c->pfx[step];
        b->n = 0;
        if (!buf_add(b, " ", 1) || !buf_add(b, p, n))
            return enc_nomem(c);
        p = (const uint8_t *)b->p;
        n = b->n;
    }
    if (!sp->re)
        return pretok_run(c, step + 1, p, n);
    tk_step isolated = *sp;
    isolated.behavior = TK_ISOLATED;
    isolated.invert = 0;
    return run_split(c, step, &isolated, p, n);
}

static ds_status pretok_run(enc_ctx *c, int step, const uint8_t *p, size_t n)
{
    if (n == 0)
        return DS_OK;
    if (step == c->t->n_steps)
        return bpe_word(c, p, n);
    const tk_step *sp = &c->t->steps[step];
    return sp->kind == TK_SPLIT ? run_split(c, step, sp, p, n) : run_bytelevel(c, step, sp, p, n);
}

/* ---- added tokens ---------------------------------------------------- */
static int is_word_byte(uint8_t b)
{
    return b >= 0x80 || b == '_' || (b >= '0' && b <= '9') || ((b | 0x20) >= 'a' && (b | 0x20) <= 'z');
}

static int is_space_byte(uint8_t b)
{
    return b == ' ' || (b >= '\t' && b <= '\r');
}

/* Whether added token a may match at p[s..e): not a disabled special token,
 * and for single_word tokens not glued to a word character on either side
 * (bytes >= 0x80 count as word characters). */
static int added_ok(const enc_ctx *c, const tk_added *a, const uint8_t *p, size_t n, size_t s, size_t e)
{
    if (c->parse_special < 0 || (a->special && !c->parse_special))
        return 0;
    if (a->single_word && ((s > 0 && is_word_byte(p[s - 1])) || (e < n && is_word_byte(p[e]))))
        return 0;
    return 1;
}

/* Longest acceptable added token starting at p[i]; 0 if none. */
static size_t trie_match(const enc_ctx *c, const tk_trie *tr, const uint8_t *p, size_t n, size_t i,
                         int32_t *which)
{
    int32_t node = 0;
    size_t best = 0;
    for (size_t k = i; k < n; k++) {
        node = trie_child(tr, node, p[k]);
        if (node < 0)
            break;
        int32_t a = tr->nodes[node].added;
        if (a >= 0 && added_ok(c, &c->t->added[a], p, n, i, k + 1)) {
            best = k + 1 - i;
            *which = a;
        }
    }
    return best;
}

typedef ds_status (*tk_text_fn)(enc_ctx *c, const uint8_t *p, size_t n);

/* Cuts added tokens out of p[0..n), leftmost-longest as HF's Aho-Corasick
 * does; the text between them goes to on_text.  lstrip/rstrip tokens also
 * swallow the whitespace beside them. */
static ds_status added_split(enc_ctx *c, const tk_trie *tr, const uint8_t *p, size_t n,
                             tk_text_fn on_text)
{
    size_t start = 0, i = 0;
    ds_status st = DS_OK;
    if (!tr->n)
        return on_text(c, p, n);
    while (i < n && !st) {
        int32_t a = -1;
        size_t len = tr->first[p[i]] ? trie_match(c, tr, p, n, i, &a) : 0;
        if (!len) {
            i++;
            continue;
        }
        const tk_added *ad = &c->t->added[a];
        size_t s = i, e = i + len;
        while (ad->lstrip && s > start && is_space_byte(p[s - 1]))
            s--;
        while (ad->rstrip && e < n && is_space_byte(p[e]))
            e++;
        if (s > start)
            st = on_text(c, p + start, s - start);
        if (!st)
            st = emit_ids(c, &ad->id, 1);
        start = i = e;
    }
    if (!st && start < n)
        st = on_text(c, p + start, n - start);
    return st;
}

static ds_status pretok_run_root(enc_ctx *c, const uint8_t *p, size_t n)
{
    return pretok_run(c, 0, p, n);
}

/* The normalizer is the identity (checked at load), so the normalized
 * added tokens are matched in the text left by the non-normalized ones. */
static ds_status on_text_normalized(enc_ctx *c, const uint8_t *p, size_t n)
{
    return added_split(c, &c->t->trie_norm, p, n, pretok_run_root);
}

static void enc_free(enc_ctx *c)
{
    pcre2_match_data_free(c->md);
    pcre2_match_context_free(c->mctx);
    for (int i = 0; i < TK_MAX_STEPS; i++) {
        free(c->segs[i]);
        free(c->pfx[i].p);
    }
    free(c->sym);
    free(c->prv);
    free(c->nxt);
    free(c->heap);
    free(c->init);
    free(c->rank_count);
    bmap_free(&c->cache);
    free(c->cpool);
    free(c->ids);
}

static ds_status enc_init(enc_ctx *c, const ds_tokenizer *t, int parse_special, ds_error *err)
{
    memset(c, 0, sizeof *c);
    c->t = t;
    c->err = err;
    c->parse_special = parse_special;
    c->md = pcre2_match_data_create(1, NULL);
    c->mctx = pcre2_match_context_create(NULL);
    if (!c->md || !c->mctx)
        return enc_nomem(c);
    /* One pre-token can be megabytes long (a run of letters); the default
     * match limits are meant for untrusted patterns, not for long text. */
    pcre2_set_match_limit(c->mctx, UINT32_MAX);
    pcre2_set_depth_limit(c->mctx, UINT32_MAX);
    return DS_OK;
}

ds_status ds_tokenizer_encode(const ds_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **ids, int *n, ds_error *err)
{
    enc_ctx c;
    if (!t || (!text && len) || !ids || !n)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n = 0;
    if (len > (size_t)INT32_MAX / 2)
        return ds_fail(err, DS_ERR_INPUT, "text of %zu bytes is too long to encode", len);
    const uint8_t *p = (const uint8_t *)text;
    size_t bad = utf8_first_invalid(p, len);
    if (bad < len)
        return ds_fail(err, DS_ERR_INPUT, "invalid UTF-8 in text at byte offset %zu (byte 0x%02x)",
                       bad, p[bad]);
    ds_status st = enc_init(&c, t, parse_special, err);
    if (!st && len)
        st = added_split(&c, &t->trie_raw, p, len, on_text_normalized);
    if (!st) {
        *ids = c.ids ? c.ids : malloc(sizeof(int32_t));
        if (!*ids)
            st = enc_nomem(&c);
        *n = (int)c.n_ids;
        c.ids = NULL;
    }
    enc_free(&c);
    return st;
}

/* ======================================================================
 * Decoding
 * ====================================================================== */

/* Appends the raw bytes of ids to out (before UTF-8 repair). */
static ds_status decode_raw(const ds_tokenizer *t, const int32_t *ids, int n, int skip_special,
                            tk_buf *out, ds_error *err)
{
    for (int i = 0; i < n; i++) {
        if (!id_ok(t, ids[i]))
            return ds_fail(err, DS_ERR_INPUT, "unknown token id %" PRId32 " (vocabulary size %d)",
                           ids[i], t->n_ids);
        if (skip_special && (t->flags[ids[i]] & TK_SPECIAL))
            continue;
        if (!buf_add(out, t->text + t->bytes_off[ids[i]], t->bytes_len[ids[i]]))
            return ds_fail(err, DS_ERR_NOMEM, "out of memory while decoding");
    }
    return DS_OK;
}

ds_status ds_tokenizer_decode(const ds_tokenizer *t, const int32_t *ids, int n, int skip_special,
                              char **text, size_t *len, ds_error *err)
{
    tk_buf raw = { 0 }, out = { 0 };
    if (!t || (!ids && n > 0) || n < 0 || !text)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_tokenizer_decode: bad argument");
    *text = NULL;
    ds_status st = decode_raw(t, ids, n, skip_special, &raw, err);
    if (!st && (!buf_reserve(&out, 0) || utf8_lossy(&out, (const uint8_t *)raw.p, raw.n, 1) == (size_t)-1))
        st = ds_fail(err, DS_ERR_NOMEM, "out of memory while decoding");
    free(raw.p);
    if (st) {
        free(out.p);
        return st;
    }
    out.p[out.n] = 0;
    *text = out.p;
    if (len)
        *len = out.n;
    return DS_OK;
}

/* ---- streaming ------------------------------------------------------- */
struct ds_detok {
    const ds_tokenizer *t;
    int skip_special;
    tk_buf pend;                /* an incomplete UTF-8 tail (at most 3 bytes) */
};

ds_detok *ds_detok_create(const ds_tokenizer *t, int skip_special)
{
    ds_detok *d = t ? calloc(1, sizeof *d) : NULL;
    if (d) {
        d->t = t;
        d->skip_special = skip_special;
    }
    return d;
}

void ds_detok_free(ds_detok *d)
{
    if (d) {
        free(d->pend.p);
        free(d);
    }
}

/* Emits the complete characters of pend (all of it when final) and keeps
 * the rest for later. */
static ds_status detok_emit(ds_detok *d, int final, char **out, size_t *len, ds_error *err)
{
    tk_buf o = { 0 };
    size_t used = 0;
    if (!buf_reserve(&o, 0) ||
        (used = utf8_lossy(&o, (const uint8_t *)d->pend.p, d->pend.n, final)) == (size_t)-1) {
        free(o.p);
        return ds_fail(err, DS_ERR_NOMEM, "out of memory while decoding");
    }
    if (used) {
        memmove(d->pend.p, d->pend.p + used, d->pend.n - used);
        d->pend.n -= used;
    }
    o.p[o.n] = 0;
    *out = o.p;
    if (len)
        *len = o.n;
    return DS_OK;
}

ds_status ds_detok_push(ds_detok *d, int32_t id, char **out, size_t *len, ds_error *err)
{
    if (!d || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_detok_push: NULL argument");
    *out = NULL;
    ds_status st = decode_raw(d->t, &id, 1, d->skip_special, &d->pend, err);
    return st ? st : detok_emit(d, 0, out, len, err);
}

ds_status ds_detok_flush(ds_detok *d, char **out, size_t *len, ds_error *err)
{
    if (!d || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_detok_flush: NULL argument");
    *out = NULL;
    return detok_emit(d, 1, out, len, err);
}
