/* test_safetensors.c — the safetensors loader (format.h): valid single files
 * and sharded directories load with the right dtype/shape/bytes; every
 * malformed case fails with the right status and a message naming the file
 * and the tensor; truncations and byte flips never crash; the tiny-dsa
 * conformance checkpoint loads when tests/data has it. */
#define _GNU_SOURCE
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "format.h"

static int failures;
static char tmpdir[4096];

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

/* ---- file builders ------------------------------------------------------ */

static char *path_in(const char *dir, const char *name)
{
    static char buf[4][4352];
    static int next;
    char *p = buf[next++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static uint8_t pattern(size_t i) { return (uint8_t)(i * 7 + 3); }

/* Builds a safetensors image: header length hlen (normally strlen(header)),
 * the header, then data_len pattern bytes.  Caller frees. */
static uint8_t *st_image(const char *header, uint64_t hlen, size_t data_len, size_t *size)
{
    size_t n = strlen(header);
    *size = 8 + n + data_len;
    uint8_t *b = malloc(*size);
    if (!b)
        exit(2);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(b + 8, header, n);
    for (size_t i = 0; i < data_len; i++)
        b[8 + n + i] = pattern(i);
    return b;
}

static void write_st(const char *path, const char *header, size_t data_len)
{
    size_t size;
    uint8_t *b = st_image(header, strlen(header), data_len, &size);
    write_bytes(path, b, size);
    free(b);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

/* A fresh empty directory under tmpdir for one directory-level case; the
 * name stays valid until the next call (path_in's buffers rotate faster). */
static const char *fresh_dir(const char *name)
{
    static char d[4352];
    snprintf(d, sizeof d, "%s/%s", tmpdir, name);
    nftw(d, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (mkdir(d, 0700) != 0) {
        perror(d);
        exit(2);
    }
    return d;
}

/* ---- expectations -------------------------------------------------------- */

/* Opens path as one file and expects failure `want` with a message holding
 * each of the non-NULL substrings. */
static void expect_fail_status(const char *label, ds_status got, ds_status want,
                               const ds_error *e, const char *s1, const char *s2)
{
    CHECK(got == want, "%s: status %d (%s), want %d: %s", label, got, ds_status_str(got),
          want, e->msg);
    CHECK(!s1 || strstr(e->msg, s1), "%s: message lacks '%s': %s", label, s1, e->msg);
    CHECK(!s2 || strstr(e->msg, s2), "%s: message lacks '%s': %s", label, s2, e->msg);
    CHECK(!strchr(e->msg, '\n'), "%s: message is not one line: %s", label, e->msg);
    if (getenv("DS_TEST_VERBOSE"))
        printf("%-36s %s\n", label, e->msg);
}

static void expect_file_fail(const char *label, const char *file, ds_status want,
                             const char *s1, const char *s2)
{
    ds_tensor_table *t = (ds_tensor_table *)1;
    ds_error e = {0};
    ds_status s = ds_table_open_file(path_in(tmpdir, file), &t, &e);
    if (want == DS_OK) {
        CHECK(s == DS_OK, "%s: %s", label, e.msg);
        if (s == DS_OK)
            ds_table_free(t);
        return;
    }
    CHECK(t == NULL, "%s: table not NULL on failure", label);
    expect_fail_status(label, s, want, &e, file, s1);
    if (s2)
        expect_fail_status(label, s, want, &e, s2, NULL);
    if (s == DS_OK)
        ds_table_free(t);
}

static void expect_header_fail(const char *label, const char *header, size_t data_len,
                               ds_status want, const char *s1, const char *s2)
{
    char file[64];
    snprintf(file, sizeof file, "case-%s.safetensors", label);
    write_st(path_in(tmpdir, file), header, data_len);
    expect_file_fail(label, file, want, s1, s2);
}

static void expect_dir_fail(const char *label, const char *dir, ds_status want, const char *s1,
                            const char *s2)
{
    ds_tensor_table *t = (ds_tensor_table *)1;
    ds_error e = {0};
    ds_status s = ds_table_open(dir, &t, &e);
    CHECK(t == NULL, "%s: table not NULL on failure", label);
    expect_fail_status(label, s, want, &e, s1, s2);
    if (s == DS_OK)
        ds_table_free(t);
}

static void check_tensor(const ds_tensor_table *t, const char *name, ds_dtype dt, int ndim,
                         const int64_t *shape, uint64_t nbytes)
{
    const ds_tensor *x = ds_table_find(t, name);
    CHECK(x != NULL, "tensor %s not found", name);
    if (!x)
        return;
    CHECK(strcmp(x->name, name) == 0, "name %s vs %s", x->name, name);
    CHECK(x->dtype == dt, "%s: dtype %s, want %s", name, ds_dtype_name(x->dtype), ds_dtype_name(dt));
    CHECK(x->ndim == ndim, "%s: ndim %d, want %d", name, x->ndim, ndim);
    for (int i = 0; i < ndim && i < x->ndim; i++)
        CHECK(x->shape[i] == shape[i], "%s: dim %d is %lld, want %lld", name, i,
              (long long)x->shape[i], (long long)shape[i]);
    CHECK(x->nbytes == nbytes, "%s: %llu bytes, want %llu", name,
          (unsigned long long)x->nbytes, (unsigned long long)nbytes);
}

/* ---- valid files ---------------------------------------------------------- */

static const char *valid_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"c\":{\"dtype\":\"F8_E4M3\",\"shape\":[],\"data_offsets\":[32,33]},"
    "\"e\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[33,33]},"
    "\"d\":{\"dtype\":\"U8\",\"shape\":[1,1,1,3],\"data_offsets\":[33,36]}}";

static void test_valid_file(void)
{
    const char *path = path_in(tmpdir, "valid.safetensors");
    write_st(path, valid_header, 36);
    ds_tensor_table *t = NULL;
    ds_error e = {0};
    ds_status s = ds_table_open_file(path, &t, &e);
    CHECK(s == DS_OK, "valid file: %s", e.msg);
    if (s)
        return;
    CHECK(ds_table_count(t) == 5, "count %d", ds_table_count(t));
    CHECK(ds_table_file_count(t) == 1, "file count %d", ds_table_file_count(t));
    CHECK(strcmp(ds_table_file_path(t, 0), path) == 0, "file path %s", ds_table_file_path(t, 0));
    CHECK(ds_table_file_path(t, 1) == NULL && ds_table_at(t, 5) == NULL && ds_table_at(t, -1) == NULL,
          "out-of-range access not NULL");
    check_tensor(t, "a", DS_DT_F32, 2, (int64_t[]){2, 3}, 24);
    check_tensor(t, "b", DS_DT_BF16, 1, (int64_t[]){4}, 8);
    check_tensor(t, "c", DS_DT_F8_E4M3, 0, NULL, 1);
    check_tensor(t, "e", DS_DT_I64, 2, (int64_t[]){0, 5}, 0);
    check_tensor(t, "d", DS_DT_U8, 4, (int64_t[]){1, 1, 1, 3}, 3);
    CHECK(ds_table_find(t, "__metadata__") == NULL, "__metadata__ is not a tensor");
    CHECK(ds_table_find(t, "zz") == NULL, "found a missing tensor");

    uint64_t start = 8 + strlen(valid_header);
    const ds_tensor *b = ds_table_find(t, "b");
    if (b) {
        CHECK(b->offset == start + 24 && b->file == 0, "b offset %llu", (unsigned long long)b->offset);
        int same = 1;
        for (int i = 0; i < 8; i++)
            same &= b->data[i] == pattern(24 + (size_t)i);
        CHECK(same, "b data bytes differ");
    }
    /* iteration is in file order */
    for (int i = 1; i < ds_table_count(t); i++)
        CHECK(ds_table_at(t, i - 1)->offset <= ds_table_at(t, i)->offset, "order at %d", i);
    CHECK(strcmp(ds_table_at(t, 0)->name, "a") == 0, "first tensor %s", ds_table_at(t, 0)->name);
    ds_table_free(t);

    /* the same file as a directory's model.safetensors */
    const char *dir = fresh_dir("single");
    write_st(path_in(dir, "model.safetensors"), valid_header, 36);
    s = ds_table_open(dir, &t, &e);
    CHECK(s == DS_OK && ds_table_count(t) == 5, "single-file dir: %s", e.msg);
    if (!s)
        ds_table_free(t);
    ds_table_free(NULL);
    CHECK(ds_table_find(NULL, "a") == NULL && ds_table_count(NULL) == 0, "NULL table");

    /* a file of no tensors ("{}", or metadata only) is a valid, empty table
     * (UBSan: no qsort of a NULL array) */
    static const char *const empties[] = {"{}", "{\"__metadata__\":{\"format\":\"pt\"}}"};
    for (int k = 0; k < 2; k++) {
        write_st(path_in(tmpdir, "empty.safetensors"), empties[k], 0);
        s = ds_table_open_file(path_in(tmpdir, "empty.safetensors"), &t, &e);
        CHECK(s == DS_OK && ds_table_count(t) == 0, "empty table %s: %s", empties[k], e.msg);
        if (s == DS_OK)
            ds_table_free(t);
    }
}

/* ---- malformed single files --------------------------------------------- */

static void test_truncation(void)
{
    size_t size;
    uint8_t *img = st_image(valid_header, strlen(valid_header), 36, &size);
    /* cut inside the header */
    write_bytes(path_in(tmpdir, "cut-header.safetensors"), img, 8 + strlen(valid_header) / 2);
    expect_file_fail("cut in header", "cut-header.safetensors", DS_ERR_FORMAT,
                     "header length", NULL);
    /* cut in the data: only 'd' [33, 36) reaches past 34 bytes */
    write_bytes(path_in(tmpdir, "cut-data.safetensors"), img, size - 2);
    expect_file_fail("cut in data", "cut-data.safetensors", DS_ERR_FORMAT, "'d'",
                     "exceed the data area (34 bytes)");
    write_bytes(path_in(tmpdir, "short.safetensors"), img, 5);
    expect_file_fail("5-byte file", "short.safetensors", DS_ERR_FORMAT, "too short", NULL);
    write_bytes(path_in(tmpdir, "empty.safetensors"), img, 0);
    expect_file_fail("empty file", "empty.safetensors", DS_ERR_FORMAT, "too short", NULL);

    /* every prefix and many single-byte corruptions: errors, never crashes */
    const char *path = path_in(tmpdir, "fuzz.safetensors");
    for (size_t n = 0; n < size; n++) {
        write_bytes(path, img, n);
        ds_tensor_table *t = NULL;
        ds_error e = {0};
        ds_status s = ds_table_open_file(path, &t, &e);
        CHECK(s != DS_OK && t == NULL && e.msg[0], "prefix %zu accepted", n);
        ds_table_free(t);
    }
    srand(12345);
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t *m = malloc(size);
        if (!m)
            exit(2);
        memcpy(m, img, size);
        for (int k = 0; k < 1 + iter % 3; k++)
            m[(size_t)rand() % (8 + strlen(valid_header))] = (uint8_t)rand();
        write_bytes(path, m, size);
        ds_tensor_table *t = NULL;
        ds_error e = {0};
        ds_status s = ds_table_open_file(path, &t, &e);
        CHECK(s == DS_OK || (t == NULL && e.msg[0]), "corruption %d: status without message", iter);
        for (int i = 0; s == DS_OK && i < ds_table_count(t); i++) {
            const ds_tensor *x = ds_table_at(t, i);
            CHECK(x->offset + x->nbytes <= size && ds_table_find(t, x->name) == x,
                  "corruption %d: accepted tensor out of bounds", iter);
        }
        ds_table_free(t);
        free(m);
    }
    free(img);
}

static void test_header_length(void)
{
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    size_t size;
    uint8_t *img = st_image(h, 1ull << 40, 1, &size);
    write_bytes(path_in(tmpdir, "absurd.safetensors"), img, size);
    expect_file_fail("absurd header length", "absurd.safetensors", DS_ERR_FORMAT, "absurd", NULL);
    free(img);
    img = st_image(h, UINT64_MAX, 1, &size);
    write_bytes(path_in(tmpdir, "max.safetensors"), img, size);
    expect_file_fail("2^64-1 header length", "max.safetensors", DS_ERR_FORMAT, "header length", NULL);
    free(img);
    img = st_image(h, strlen(h) + 2, 1, &size);
    write_bytes(path_in(tmpdir, "long.safetensors"), img, size);
    expect_file_fail("header length past the end", "long.safetensors", DS_ERR_FORMAT,
                     "exceeds the file", NULL);
    free(img);
    img = st_image(h, 0, 0, &size);
    write_bytes(path_in(tmpdir, "zero.safetensors"), img, 8);
    expect_file_fail("header length 0", "zero.safetensors", DS_ERR_FORMAT, "JSON", NULL);
    free(img);
}

#define ENTRY(name, dt, shape, off) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape \
    ",\"data_offsets\":" off "}"

static void test_bad_headers(void)
{
    expect_header_fail("badjson", "{\"a\": {\"dtype\": ", 0, DS_ERR_FORMAT, "invalid JSON", NULL);
    expect_header_fail("trailing", "{} x", 0, DS_ERR_FORMAT, "invalid JSON", NULL);
    expect_header_fail("array", "[1, 2]", 0, DS_ERR_FORMAT, "not an object", NULL);
    {
        /* a long name of 2-byte characters is shortened at a character
         * boundary: the message stays UTF-8 (it may be put into JSON) */
        char hdr[1024], name[512];
        size_t k = 0;
        name[k++] = 'a';
        for (int i = 0; i < 100; i++)
            name[k++] = (char)0xc3, name[k++] = (char)0xa9;
        name[k] = 0;
        snprintf(hdr, sizeof hdr, "{\"%s\": {\"dtype\": \"XX\", \"shape\": [1], \"data_offsets\": [0, 1]}}", name);
        write_st(path_in(tmpdir, "long-name.safetensors"), hdr, 1);
        ds_tensor_table *t = NULL;
        ds_error e = {0};
        ds_status st = ds_table_open_file(path_in(tmpdir, "long-name.safetensors"), &t, &e);
        const char *dots = strstr(e.msg, "...");
        CHECK(st != DS_OK && dots && ((unsigned char)dots[-1] == 0xa9), "long name cut inside a character: %s", e.msg);
        if (st == DS_OK)
            ds_table_free(t);
    }
    expect_header_fail("notobj", "{\"w.weight\": 5}", 0, DS_ERR_FORMAT, "'w.weight'", "not an object");
    expect_header_fail("overlap",
                       "{" ENTRY("x.weight", "F32", "[2,3]", "[0,24]") ","
                       ENTRY("y.bias", "BF16", "[4]", "[16,24]") "}", 24,
                       DS_ERR_FORMAT, "'x.weight'", "'y.bias'");
    expect_header_fail("overlap-nested",
                       "{" ENTRY("big", "U8", "[100]", "[0,100]") ","
                       ENTRY("mid", "U8", "[10]", "[10,20]") ","
                       ENTRY("late", "U8", "[10]", "[50,60]") "}", 100,
                       DS_ERR_FORMAT, "overlap", "'big'");
    expect_header_fail("empty-inside",   /* empty ranges overlap nothing */
                       "{" ENTRY("big", "U8", "[100]", "[0,100]") ","
                       ENTRY("none", "U8", "[0]", "[10,10]") "}", 100, DS_OK, NULL, NULL);
    expect_header_fail("wrongsize", "{" ENTRY("x.weight", "F32", "[2,3]", "[0,12]") "}", 12,
                       DS_ERR_FORMAT, "'x.weight'", "does not fill");
    expect_header_fail("unknown-dtype", "{" ENTRY("q.weight", "Q5_1", "[2]", "[0,2]") "}", 2,
                       DS_ERR_FORMAT, "'q.weight'", "unknown dtype 'Q5_1'");
    expect_header_fail("f64", "{" ENTRY("d.weight", "F64", "[2]", "[0,16]") "}", 16,
                       DS_ERR_UNSUPPORTED, "'d.weight'", "F64");
    expect_header_fail("nodtype", "{\"n\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                       DS_ERR_FORMAT, "'n'", "dtype");
    expect_header_fail("negdim", "{" ENTRY("s", "U8", "[-1]", "[0,1]") "}", 1,
                       DS_ERR_FORMAT, "'s'", "shape");
    expect_header_fail("strdim", "{" ENTRY("s", "U8", "[\"1\"]", "[0,1]") "}", 1,
                       DS_ERR_FORMAT, "'s'", "shape");
    expect_header_fail("realdim", "{" ENTRY("s", "U8", "[1.0]", "[0,1]") "}", 1,
                       DS_ERR_FORMAT, "'s'", "shape");
    expect_header_fail("noshape", "{\"s\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1,
                       DS_ERR_FORMAT, "'s'", "shape");
    expect_header_fail("5dims", "{" ENTRY("s", "U8", "[1,1,1,1,1]", "[0,1]") "}", 1,
                       DS_ERR_UNSUPPORTED, "'s'", "dimensions");
    expect_header_fail("overflow",
                       "{" ENTRY("s", "F32", "[4294967296,4294967296,16]", "[0,0]") "}", 0,
                       DS_ERR_FORMAT, "'s'", "overflow");
    expect_header_fail("overflow-size",   /* 2^62 elements x 4 bytes wraps to 0 */
                       "{" ENTRY("s", "F32", "[4611686018427387904]", "[0,0]") "}", 0,
                       DS_ERR_FORMAT, "'s'", "overflow");
    expect_header_fail("offsets-1", "{" ENTRY("o", "U8", "[1]", "[1]") "}", 1,
                       DS_ERR_FORMAT, "'o'", "data_offsets");
    expect_header_fail("offsets-rev", "{" ENTRY("o", "U8", "[1]", "[5,4]") "}", 8,
                       DS_ERR_FORMAT, "'o'", "[5, 4)");
    expect_header_fail("offsets-neg", "{" ENTRY("o", "U8", "[1]", "[-1,0]") "}", 8,
                       DS_ERR_FORMAT, "'o'", "data_offsets");
    expect_header_fail("offsets-huge",
                       "{" ENTRY("o", "U8", "[1]", "[9223372036854775806,9223372036854775807]") "}",
                       8, DS_ERR_FORMAT, "'o'", "exceed the data area (8 bytes)");
    expect_header_fail("offsets-range", "{" ENTRY("x.weight", "U8", "[100]", "[0,100]") "}", 64,
                       DS_ERR_FORMAT, "'x.weight'",
                       "data_offsets [0, 100) exceed the data area (64 bytes)");
    expect_header_fail("duplicate",
                       "{" ENTRY("dup.weight", "U8", "[1]", "[0,1]") ","
                       ENTRY("dup.weight", "U8", "[1]", "[1,2]") "}", 2,
                       DS_ERR_FORMAT, "dup.weight", "duplicate");
    expect_header_fail("ctrl-name", "{" ENTRY("bad\\nname", "Q", "[1]", "[0,1]") "}", 1,
                       DS_ERR_FORMAT, "bad?name", NULL);

    ds_error e = {0};
    ds_tensor_table *t = NULL;
    ds_status s = ds_table_open_file(path_in(tmpdir, "no-such.safetensors"), &t, &e);
    expect_fail_status("missing file", s, DS_ERR_IO, &e, "no-such.safetensors", "No such file");
    s = ds_table_open_file(tmpdir, &t, &e);
    expect_fail_status("directory as file", s, DS_ERR_IO, &e, tmpdir, NULL);
}

/* ---- sharded directories ------------------------------------------------ */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"
#define INDEX "model.safetensors.index.json"

static const char *shard1_header =
    "{" ENTRY("a", "F32", "[2]", "[0,8]") "," ENTRY("b", "U8", "[3]", "[8,11]") "}";
static const char *shard2_header = "{" ENTRY("c", "BF16", "[2,2]", "[0,8]") "}";

static const char *sharded_dir(const char *name, const char *index)
{
    const char *d = fresh_dir(name);
    write_st(path_in(d, SHARD1), shard1_header, 11);
    write_st(path_in(d, SHARD2), shard2_header, 8);
    write_text(path_in(d, INDEX), index);
    return d;
}

static void test_sharded(void)
{
    const char *d = sharded_dir("sharded",
        "{\"metadata\":{\"total_size\":19},\"weight_map\":{"
        "\"c\":\"" SHARD2 "\",\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\"}}");
    ds_tensor_table *t = NULL;
    ds_error e = {0};
    ds_status s = ds_table_open(d, &t, &e);
    CHECK(s == DS_OK, "sharded dir: %s", e.msg);
    if (!s) {
        CHECK(ds_table_count(t) == 3 && ds_table_file_count(t) == 2, "count %d files %d",
              ds_table_count(t), ds_table_file_count(t));
        check_tensor(t, "c", DS_DT_BF16, 2, (int64_t[]){2, 2}, 8);
        const ds_tensor *c = ds_table_find(t, "c"), *a = ds_table_find(t, "a");
        if (c && a) {
            CHECK(strstr(ds_table_file_path(t, c->file), SHARD2) != NULL, "c in %s",
                  ds_table_file_path(t, c->file));
            CHECK(strstr(ds_table_file_path(t, a->file), SHARD1) != NULL, "a in %s",
                  ds_table_file_path(t, a->file));
            CHECK(c->offset == 8 + strlen(shard2_header) && c->data[3] == pattern(3), "c data");
        }
        ds_table_free(t);
    }

    d = sharded_dir("missing-shard",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\","
        "\"z.weight\":\"model-00003-of-00003.safetensors\"}}");
    expect_dir_fail("missing shard", d, DS_ERR_IO, "model-00003-of-00003.safetensors", "'z.weight'");

    d = sharded_dir("missing-tensor",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\","
        "\"ghost.weight\":\"" SHARD2 "\"}}");
    expect_dir_fail("tensor in index missing from shard", d, DS_ERR_FORMAT, "'ghost.weight'", SHARD2);

    d = sharded_dir("unlisted",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}");
    expect_dir_fail("tensor in shard missing from index", d, DS_ERR_FORMAT, "'b'", SHARD1);

    d = sharded_dir("wrong-shard",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD2 "\",\"c\":\"" SHARD2 "\"}}");
    expect_dir_fail("tensor in the wrong shard", d, DS_ERR_FORMAT, "'b'", SHARD2);

    d = sharded_dir("dup-across",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}");
    write_st(path_in(d, SHARD2), "{" ENTRY("c", "BF16", "[2,2]", "[0,8]") ","
             ENTRY("a", "U8", "[1]", "[8,9]") "}", 9);
    expect_dir_fail("tensor in two shards", d, DS_ERR_FORMAT, "'a'", "also present");

    d = sharded_dir("traversal", "{\"weight_map\":{\"a\":\"../" SHARD1 "\"}}");
    expect_dir_fail("shard path with ../", d, DS_ERR_FORMAT, "plain file name", "'a'");
    d = sharded_dir("dotdot", "{\"weight_map\":{\"a\":\"..\"}}");
    expect_dir_fail("shard named ..", d, DS_ERR_FORMAT, "plain file name", NULL);
    d = sharded_dir("nonstring", "{\"weight_map\":{\"a\":1}}");
    expect_dir_fail("shard not a string", d, DS_ERR_FORMAT, "'a'", "not a string");
    d = sharded_dir("no-map", "{\"metadata\":{}}");
    expect_dir_fail("no weight_map", d, DS_ERR_FORMAT, "weight_map", INDEX);
    d = sharded_dir("bad-index", "{\"weight_map\":{\"a\":");
    expect_dir_fail("bad index JSON", d, DS_ERR_FORMAT, "invalid JSON", INDEX);
    d = sharded_dir("dup-index",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"a\":\"" SHARD2 "\"}}");
    expect_dir_fail("duplicate index entry", d, DS_ERR_FORMAT, "duplicate", "\"a\"");

    d = sharded_dir("bad-shard",
        "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}");
    write_st(path_in(d, SHARD2), "{" ENTRY("c", "BF16", "[2,2]", "[0,8]") "}", 4);
    expect_dir_fail("truncated shard", d, DS_ERR_FORMAT, SHARD2, "'c'");

    d = fresh_dir("empty");
    expect_dir_fail("empty dir", d, DS_ERR_IO, "no model.safetensors.index.json or model.safetensors",
                    d);
    expect_dir_fail("no such dir", path_in(tmpdir, "nope"), DS_ERR_IO, "nope", NULL);
}

/* ---- the conformance checkpoint ------------------------------------------ */

static void test_tiny_dsa(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("skip: %s not present\n", dir);
        return;
    }
    ds_tensor_table *t = NULL;
    ds_error e = {0};
    ds_status s = ds_table_open(dir, &t, &e);
    CHECK(s == DS_OK, "tiny-dsa: %s", e.msg);
    if (s)
        return;
    CHECK(ds_table_file_count(t) == 2, "tiny-dsa files %d", ds_table_file_count(t));
    CHECK(ds_table_count(t) == 280, "tiny-dsa tensors %d", ds_table_count(t));
    check_tensor(t, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", DS_DT_F8_E4M3, 2,
                 (int64_t[]){576, 512}, 576 * 512);
    check_tensor(t, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv", DS_DT_F32, 2,
                 (int64_t[]){5, 4}, 5 * 4 * 4);
    check_tensor(t, "model.embed_tokens.weight", DS_DT_BF16, 2, (int64_t[]){1024, 512},
                 1024 * 512 * 2);
    const ds_tensor *sc = ds_table_find(t, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
    if (sc) {
        float v[20];
        memcpy(v, sc->data, sizeof v);
        int ok = 1;
        for (int i = 0; i < 20; i++)
            ok &= v[i] > 0 && v[i] < 1e30f;
        CHECK(ok, "scale_inv values not positive finite");
    }
    uint64_t total = 0;
    for (int i = 0; i < ds_table_count(t); i++)
        total += ds_table_at(t, i)->nbytes;
    CHECK(total == 14852272, "total bytes %llu", (unsigned long long)total);
    ds_table_free(t);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/dsinfer-st-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror(tmpdir);
        return 2;
    }
    test_valid_file();
    test_truncation();
    test_header_length();
    test_bad_headers();
    test_sharded();
    test_tiny_dsa();
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (failures) {
        fprintf(stderr, "test_safetensors: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_safetensors: all passed\n");
    return 0;
}
