/* test_tokenizer.c — the tokenizer (src/tokenizer.c) on the shipped
 * data/tokenizer-v32.json: the DeepSeek-V3.2 README test vector (encode and
 * decode), special tokens, UTF-8 validation errors with their offset, NUL
 * bytes, the streaming detokenizer, random round trips, unknown ids, and a
 * 10 MB input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dsinfer.h"

static int failures;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

static const char *srcdir(void)
{
    const char *d = getenv("top_srcdir");
#ifdef DS_SRCDIR
    if (!d)
        d = DS_SRCDIR;
#endif
    return d ? d : ".";
}

/* Independent strict UTF-8 check (not the library's), for the streaming test. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], need, cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (i + need >= n)
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

static const char vec_text[] =
    "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek."
    "<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>";
static const int32_t vec_ids[21] = { 0, 128803, 33310, 128804, 128799, 19923, 3, 342, 1030, 22651,
                                     4374, 1465, 16, 1, 128803, 19, 13, 19, 127252, 128804, 128798 };

/* Encodes and returns the ids (count in *n), failing the test on error. */
static int32_t *enc(const ds_tokenizer *t, const char *s, size_t len, int special, int *n)
{
    int32_t *ids = NULL;
    ds_error err = { 0 };
    ds_status st = ds_tokenizer_encode(t, s, len, special, &ids, n, &err);
    CHECK(st == DS_OK, "encode failed: %s", err.msg);
    return st == DS_OK ? ids : NULL;
}

static char *dec(const ds_tokenizer *t, const int32_t *ids, int n, int skip, size_t *len)
{
    char *s = NULL;
    ds_error err = { 0 };
    ds_status st = ds_tokenizer_decode(t, ids, n, skip, &s, len, &err);
    CHECK(st == DS_OK, "decode failed: %s", err.msg);
    return s;
}

static void test_vector(const ds_tokenizer *t)
{
    int n;
    size_t len;
    int32_t *ids = enc(t, vec_text, strlen(vec_text), 1, &n);
    CHECK(ids && n == 21 && !memcmp(ids, vec_ids, sizeof vec_ids), "SPEC 8.1 vector: got %d ids", n);
    char *s = dec(t, vec_ids, 21, 0, &len);
    CHECK(s && len == strlen(vec_text) && !strcmp(s, vec_text), "SPEC 8.1 decode: '%s'", s ? s : "");
    free(ids);
    free(s);
}

static void test_special(const ds_tokenizer *t)
{
    int n;
    size_t len;
    const char *bos = "<｜begin▁of▁sentence｜>";
    CHECK(ds_tokenizer_token_id(t, bos) == 0, "bos id");
    CHECK(ds_tokenizer_token_id(t, "<think>") == 128798, "<think> id");
    CHECK(ds_tokenizer_token_id(t, "no such token") == -1, "unknown token");
    CHECK(ds_tokenizer_bos_id(t) == 0 && ds_tokenizer_eos_id(t) == 1, "bos/eos from config");
    CHECK(ds_tokenizer_is_special(t, 0) && !ds_tokenizer_is_special(t, 128803), "special flags");
    CHECK(ds_tokenizer_vocab_size(t) == 128815, "vocab size %d", ds_tokenizer_vocab_size(t));
    CHECK(!strcmp(ds_tokenizer_token_str(t, 33310), "hello"), "token_str");
    CHECK(ds_tokenizer_token_str(t, 128815) == NULL, "token_str out of range");
    CHECK(ds_tokenizer_chat_template(t) != NULL, "chat template from config");

    /* skip_special drops BOS/EOS but keeps the non-special <｜User｜>. */
    char *s = dec(t, vec_ids, 21, 1, &len);
    CHECK(s && !strncmp(s, "<｜User｜>hello", strlen("<｜User｜>hello")) && !strstr(s, "sentence"),
          "skip_special: '%s'", s ? s : "");
    free(s);

    /* parse_special = 0: the BOS text is ordinary text, still round-trips. */
    int32_t *ids = enc(t, bos, strlen(bos), 0, &n);
    CHECK(ids && n > 1 && ids[0] != 0, "BOS text not parsed as special (n=%d)", n);
    s = ids ? dec(t, ids, n, 0, &len) : NULL;
    CHECK(s && !strcmp(s, bos), "BOS as text round trip");
    free(s);
    free(ids);
    ids = enc(t, "<｜User｜>", strlen("<｜User｜>"), 0, &n);
    CHECK(ids && n == 1 && ids[0] == 128803, "non-special added token kept with parse_special=0");
    free(ids);
}

static void expect_bad_utf8(const ds_tokenizer *t, const char *s, size_t len, size_t off)
{
    int32_t *ids = NULL;
    int n = -1;
    char want[64];
    ds_error err = { 0 };
    ds_status st = ds_tokenizer_encode(t, s, len, 1, &ids, &n, &err);
    snprintf(want, sizeof want, "offset %zu", off);
    CHECK(st == DS_ERR_INPUT && strstr(err.msg, want), "bad UTF-8 at %zu: status %d '%s'", off,
          (int)st, err.msg);
    CHECK(ids == NULL, "no ids on error");
}

static void test_invalid_utf8(const ds_tokenizer *t)
{
    expect_bad_utf8(t, "ab\xff" "cd", 5, 2);
    expect_bad_utf8(t, "hello \xe4\xbd", 8, 6);         /* truncated at the end */
    expect_bad_utf8(t, "x\xc0\xaf", 3, 1);              /* overlong '/' */
    expect_bad_utf8(t, "xy\xed\xa0\x80", 5, 2);         /* surrogate */
    expect_bad_utf8(t, "\xf4\x90\x80\x80", 4, 0);       /* > U+10FFFF */
    expect_bad_utf8(t, "ok\x80", 3, 2);                 /* stray continuation */
}

static void test_nul(const ds_tokenizer *t)
{
    static const char s[] = "a\0b\0\0 c";
    int n;
    size_t len;
    int32_t *ids = enc(t, s, sizeof s - 1, 1, &n);
    char *d = ids ? dec(t, ids, n, 0, &len) : NULL;
    CHECK(d && len == sizeof s - 1 && !memcmp(d, s, len), "NUL bytes round trip");
    free(ids);
    free(d);
    ids = enc(t, "", 0, 1, &n);
    CHECK(ids && n == 0, "empty text");
    free(ids);
}

/* Feeds ids one at a time; every chunk must be valid UTF-8 and the chunks
 * must add up to the one-shot decode. */
static void test_stream(const ds_tokenizer *t)
{
    const char *s = "Crab 🦀, DNA 🧬 und Planet 🪐: 你好世界 — naïve café ĳ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢!";
    int n, held = 0;
    size_t len, total = 0;
    int32_t *ids = enc(t, s, strlen(s), 1, &n);
    ds_detok *d = ds_detok_create(t, 0);
    char *acc = calloc(strlen(s) * 4 + 16, 1);
    ds_error err = { 0 };
    CHECK(ids && d && acc, "setup");
    for (int i = 0; ids && d && acc && i < n; i++) {
        char *out;
        size_t tb;
        CHECK(ds_detok_push(d, ids[i], &out, &len, &err) == DS_OK, "push: %s", err.msg);
        CHECK(valid_utf8((const unsigned char *)out, len), "chunk %d not valid UTF-8", i);
        ds_tokenizer_token_bytes(t, ids[i], &tb);
        held += len == 0 && tb > 0;
        memcpy(acc + total, out, len);
        total += len;
        free(out);
    }
    char *out = NULL;
    if (d && ds_detok_flush(d, &out, &len, &err) == DS_OK) {
        memcpy(acc + total, out, len);
        total += len;
    }
    free(out);
    CHECK(held > 0, "no token split a character (test string too easy)");
    CHECK(total == strlen(s) && !memcmp(acc, s, total), "stream equals full decode");

    /* A lone lead byte is held back, then flushed as U+FFFD. */
    int32_t lead = ds_tokenizer_token_id(t, "ð");       /* byte 0xF0 */
    CHECK(ds_detok_push(d, lead, &out, &len, &err) == DS_OK && len == 0, "lead byte held");
    free(out);
    CHECK(ds_detok_flush(d, &out, &len, &err) == DS_OK && len == 3 && !memcmp(out, "\xEF\xBF\xBD", 3),
          "flush gives U+FFFD");
    free(out);
    CHECK(ds_detok_push(d, 999999, &out, &len, &err) == DS_ERR_INPUT, "detok unknown id");
    ds_detok_free(d);
    free(acc);
    free(ids);
}

static size_t put_cp(char *d, unsigned cp)
{
    if (cp < 0x80) { d[0] = (char)cp; return 1; }
    if (cp < 0x800) { d[0] = (char)(0xC0 | cp >> 6); d[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | cp >> 12); d[1] = (char)(0x80 | (cp >> 6 & 63));
        d[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    d[0] = (char)(0xF0 | cp >> 18); d[1] = (char)(0x80 | (cp >> 12 & 63));
    d[2] = (char)(0x80 | (cp >> 6 & 63)); d[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* A random code point from a mix of scripts, spaces, digits and symbols. */
static unsigned random_cp(unsigned *seed)
{
    static const unsigned lo[] = { 0x20, 0x30, 0x61, 0x09, 0xC0, 0x370, 0x400, 0x4E00, 0x3040,
                                   0xAC00, 0x1F300, 0x2000, 0x0, 0xE000, 0x10000 };
    static const unsigned span[] = { 16, 10, 26, 5, 64, 64, 96, 2000, 96, 500, 600, 112, 32, 16, 4096 };
    *seed = *seed * 1103515245u + 12345u;
    unsigned k = (*seed >> 16) % 15;
    *seed = *seed * 1103515245u + 12345u;
    unsigned cp = lo[k] + (*seed >> 8) % span[k];
    return cp >= 0xD800 && cp <= 0xDFFF ? 'x' : cp;
}

static void test_roundtrip(const ds_tokenizer *t)
{
    unsigned seed = 12345;
    char buf[1024];
    for (int iter = 0; iter < 300; iter++) {
        size_t len = 0;
        int nchar = 1 + (int)(seed >> 20) % 120;
        for (int i = 0; i < nchar; i++)
            len += put_cp(buf + len, random_cp(&seed));
        int n;
        size_t dl;
        int32_t *ids = enc(t, buf, len, 1, &n);
        char *d = ids ? dec(t, ids, n, 0, &dl) : NULL;
        CHECK(d && dl == len && !memcmp(d, buf, len), "round trip %d", iter);
        free(ids);
        free(d);
    }
}

static void test_unknown_id(const ds_tokenizer *t)
{
    int32_t bad[] = { 19923, 999999 }, neg[] = { -5 };
    char *s = NULL;
    size_t len;
    ds_error err = { 0 };
    CHECK(ds_tokenizer_decode(t, bad, 2, 0, &s, &len, &err) == DS_ERR_INPUT && strstr(err.msg, "999999"),
          "unknown id: '%s'", err.msg);
    CHECK(s == NULL, "no text on error");
    CHECK(ds_tokenizer_decode(t, neg, 1, 0, &s, &len, &err) == DS_ERR_INPUT && strstr(err.msg, "-5"),
          "negative id: '%s'", err.msg);
}

/* Large inputs: 10 MB of prose, and 1 MB of one letter (a single
 * pre-token, which exercises the O(n log n) BPE path). */
static void test_large(const ds_tokenizer *t)
{
    static const char para[] =
        "The quick brown fox jumps over the lazy dog; 1234567 times!\n"
        "    def f(x):\n        return x ** 2  # 平方 ✓\n"
        "Ünïcödé text, emoji 🚀 and \"quotes\"...\r\n\t";
    size_t big = 10u << 20, plen = sizeof para - 1;
    char *s = malloc(big);
    CHECK(s != NULL, "alloc");
    if (!s)
        return;
    size_t len = 0;
    while (len + plen <= big) {
        memcpy(s + len, para, plen);
        len += plen;
    }
    clock_t c0 = clock();
    int n;
    size_t dl;
    int32_t *ids = enc(t, s, len, 1, &n);
    double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK(ids && n > (int)(len / 8), "10 MB encode gave %d ids", n);
    char *d = ids ? dec(t, ids, n, 0, &dl) : NULL;
    CHECK(d && dl == len && !memcmp(d, s, len), "10 MB round trip");
    printf("10 MB prose: %d tokens in %.2f s CPU\n", n, secs);
    free(ids);
    free(d);

    memset(s, 'a', 1u << 20);
    ids = enc(t, s, 1u << 20, 1, &n);
    d = ids ? dec(t, ids, n, 0, &dl) : NULL;
    CHECK(d && dl == (1u << 20) && !memcmp(d, s, dl), "1 MB of 'a' round trip");
    free(ids);
    free(d);
    free(s);
}

static void test_load_errors(void)
{
    ds_tokenizer *t = NULL;
    ds_error err = { 0 };
    char path[4096];
    CHECK(ds_tokenizer_load("/nonexistent/tokenizer.json", &t, &err) == DS_ERR_IO && !t,
          "missing file: '%s'", err.msg);
    snprintf(path, sizeof path, "%s/data", srcdir());
    CHECK(ds_tokenizer_load(path, &t, &err) == DS_OK && t, "directory load: %s", err.msg);
    if (t)
        CHECK(ds_tokenizer_token_id(t, "<think>") == -1, "V3 tokenizer has no <think>");
    ds_tokenizer_free(t);
}

int main(void)
{
    char path[4096];
    ds_tokenizer *t = NULL;
    ds_error err = { 0 };
    snprintf(path, sizeof path, "%s/data/tokenizer-v32.json", srcdir());
    if (ds_tokenizer_load(path, &t, &err) != DS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", path, err.msg);
        return 1;
    }
    test_vector(t);
    test_special(t);
    test_invalid_utf8(t);
    test_nul(t);
    test_stream(t);
    test_roundtrip(t);
    test_unknown_id(t);
    test_large(t);
    test_load_errors();
    ds_tokenizer_free(t);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("test_tokenizer: all checks passed\n");
    return failures ? 1 : 0;
}
