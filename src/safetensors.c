/* safetensors.c — the safetensors reader behind format.h: maps every file of
 * a checkpoint, validates each JSON header completely (dtype, shape, byte
 * ranges, overlaps), checks model.safetensors.index.json against the shards
 * and serves name lookups from a hash table.  Tensor data stays in the
 * read-only mappings; nothing is copied. */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "config.h"
#include "format.h"
#include "internal.h"
#include "mapfile.h"

#define ST_MAX_HEADER (100ull << 20)   /* HF caps headers at 100 MB as well */
#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define MAX_TENSORS (1 << 28)          /* keeps the hash table's int32 slots safe */
/* Tensors named PAD_PREFIX<n> (1-D U8) only fill gaps so that the tensors
 * after them start aligned (dsinfer-quantize --repack; safetensors has no
 * holes between tensors): validated like any entry, then left out of the
 * table and not expected in the index. */
#define PAD_PREFIX "__dsinfer_pad."


struct ds_tensor_table {
    ds_tensor *tensors;
    int n_tensors, cap_tensors;
    ds_mapped_file *files;
    int n_files, cap_files;
    int32_t *slots;                    /* open addressing: tensor index or -1 */
    uint64_t slot_mask;                /* slot count - 1 (a power of two) */
};

/* ---- error-message helpers ---------------------------------------------- */

/* Tensor names come from untrusted JSON: shorten them and hide control
 * characters so an error stays one readable line.  Returned by value so a
 * message can show two names; the temporary lives until the end of the
 * full expression (C11 6.2.4p8). */
typedef struct shown_name { char s[160]; } shown_name;

static shown_name show(const char *name)
{
    shown_name r;
    size_t n = strlen(name), keep = n < sizeof r.s - 4 ? n : sizeof r.s - 4;
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)name[i];
        r.s[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    while (keep < n && keep > 0 && ((unsigned char)name[keep] & 0xc0) == 0x80)
        keep--;                 /* not inside a UTF-8 sequence: the message may go into JSON */
    if (keep < n)
        memcpy(r.s + keep, "...", 3), keep += 3;
    r.s[keep] = 0;
    return r;
}

typedef struct shown_shape { char s[120]; } shown_shape;

static shown_shape show_shape(const int64_t *shape, int ndim)
{
    shown_shape r;
    size_t len = 0;
    r.s[len++] = '[';
    for (int i = 0; i < ndim; i++)
        len += (size_t)snprintf(r.s + len, sizeof r.s - len, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    snprintf(r.s + len, sizeof r.s - len, "]");
    return r;
}

/* ---- table storage ----------------------------------------------------- */

static ds_status grow(void **arr, int *cap, int need, size_t elem, ds_error *err)
{
    if (need <= *cap)
        return DS_OK;
    if (need > MAX_TENSORS)
        return ds_fail(err, DS_ERR_FORMAT, "too many tensors or files (%d)", need);
    int ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory for %d table entries", ncap);
    memset((char *)p + (size_t)*cap * elem, 0, (size_t)(ncap - *cap) * elem);
    *arr = p;
    *cap = ncap;
    return DS_OK;
}

static ds_status add_file(ds_tensor_table *t, const char *path, int *index, ds_error *err)
{
    void *files = t->files;
    ds_status s = grow(&files, &t->cap_files, t->n_files + 1, sizeof *t->files, err);
    t->files = files;
    if (s)
        return s;
    s = ds_map_file(path, &t->files[t->n_files], err);
    if (s)
        return s;
    *index = t->n_files++;
    return DS_OK;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;            /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Builds the name index over all tensors; a name seen twice (in two shards:
 * duplicates inside one header are rejected by the JSON parser) is an error. */
static ds_status build_hash(ds_tensor_table *t, ds_error *err)
{
    uint64_t n = 16;
    while (n < 2 * (uint64_t)t->n_tensors)
        n *= 2;
    t->slots = ds_calloc(n, sizeof *t->slots, err);
    if (!t->slots)
        return DS_ERR_NOMEM;
    memset(t->slots, 0xff, n * sizeof *t->slots);
    t->slot_mask = n - 1;
    for (int i = 0; i < t->n_tensors; i++) {
        const ds_tensor *ti = &t->tensors[i];
        uint64_t h = hash_name(ti->name) & t->slot_mask;
        for (; t->slots[h] >= 0; h = (h + 1) & t->slot_mask) {
            const ds_tensor *o = &t->tensors[t->slots[h]];
            if (strcmp(o->name, ti->name) == 0)
                return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': also present in %s",
                               t->files[ti->file].path, show(ti->name).s, t->files[o->file].path);
        }
        t->slots[h] = i;
    }
    return DS_OK;
}

/* ---- one safetensors header -------------------------------------------- */

/* Dtypes the safetensors format defines but this runtime does not handle:
 * those are "unsupported", anything else is a malformed header. */
static int is_known_st_dtype(const char *name)
{
    static const char *const known[] = {
        "BOOL", "I8", "I16", "U16", "U32", "U64", "F64", "F8_E5M2", "F8_E8M0",
        "F4", "F6_E2M3", "F6_E3M2", "C64",
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(name, known[i]) == 0)
            return 1;
    return 0;
}

static ds_status parse_dtype(const char *path, const char *name, json_t *entry,
                             ds_tensor *out, ds_error *err)
{
    json_t *jd = json_object_get(entry, "dtype");
    if (!json_is_string(jd))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': \"dtype\" missing or not a string",
                       path, show(name).s);
    const char *ds = json_string_value(jd);
    int dt = ds_dtype_from_name(ds);
    if (dt < 0)
        return ds_fail(err, is_known_st_dtype(ds) ? DS_ERR_UNSUPPORTED : DS_ERR_FORMAT,
                       "%s: tensor '%s': %s dtype '%s'", path, show(name).s,
                       is_known_st_dtype(ds) ? "unsupported" : "unknown", show(ds).s);
    out->dtype = (ds_dtype)dt;
    return DS_OK;
}

static ds_status parse_shape(const char *path, const char *name, json_t *entry,
                             ds_tensor *out, ds_error *err)
{
    json_t *js = json_object_get(entry, "shape");
    if (!json_is_array(js))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': \"shape\" missing or not an array",
                       path, show(name).s);
    size_t nd = json_array_size(js);
    if (nd > DS_MAX_DIMS)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most %d)",
                       path, show(name).s, nd, DS_MAX_DIMS);
    out->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return ds_fail(err, DS_ERR_FORMAT,
                           "%s: tensor '%s': shape entry %zu is not a non-negative integer",
                           path, show(name).s, i);
        out->shape[i] = (int64_t)json_integer_value(d);
    }
    return DS_OK;
}

/* Byte size of a block-quantised (Q8_0 / Q4_K) tensor: the header keeps
 * the logical shape, each row (last dimension) is a whole number of blocks,
 * so the data is (elements / cols) rows of ds_dtype_row_bytes(cols).  The
 * element count was already checked for overflow by the caller. */
static ds_status block_range(const char *path, const char *name, ds_tensor *out, uint64_t b,
                             uint64_t e, uint64_t *begin, ds_error *err)
{
    const int64_t blk = ds_dtype_block(out->dtype);
    if (out->ndim < 1)
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': %s tensors need at least one dimension",
                       path, show(name).s, ds_dtype_name(out->dtype));
    const int64_t cols = out->shape[out->ndim - 1];
    if (cols % blk)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': shape %s of %s: the last dimension is not a multiple "
                       "of the %lld-element block",
                       path, show(name).s, show_shape(out->shape, out->ndim).s,
                       ds_dtype_name(out->dtype), (long long)blk);
    uint64_t rows = 1, bytes = 0;
    for (int i = 0; i + 1 < out->ndim; i++)
        rows *= (uint64_t)out->shape[i];     /* <= the element count: no overflow */
    const size_t row_bytes = ds_dtype_row_bytes(out->dtype, cols);
    if (cols && (row_bytes == 0 || __builtin_mul_overflow(rows, (uint64_t)row_bytes, &bytes)))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': shape %s of %s overflows",
                       path, show(name).s, show_shape(out->shape, out->ndim).s,
                       ds_dtype_name(out->dtype));
    if (bytes != e - b)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': shape %s of %s (%zu bytes per %lld-element block) does not "
                       "fill data_offsets [%llu, %llu) (%llu bytes)",
                       path, show(name).s, show_shape(out->shape, out->ndim).s,
                       ds_dtype_name(out->dtype), ds_dtype_block_bytes(out->dtype), (long long)blk,
                       (unsigned long long)b, (unsigned long long)e, (unsigned long long)(e - b));
    out->nbytes = bytes;
    *begin = b;
    return DS_OK;
}

/* Reads data_offsets into *begin and nbytes (relative to the data area) and checks
 * them against the area and against shape x dtype size. */
static ds_status parse_range(const char *path, const char *name, json_t *entry,
                             uint64_t area, ds_tensor *out, uint64_t *begin, ds_error *err)
{
    json_t *jo = json_object_get(entry, "data_offsets");
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(jb) ||
        !json_is_integer(je) || json_integer_value(jb) < 0 || json_integer_value(je) < 0)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': \"data_offsets\" is not a pair of non-negative integers",
                       path, show(name).s);
    uint64_t b = (uint64_t)json_integer_value(jb), e = (uint64_t)json_integer_value(je);
    if (b > e)
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu) end before they begin",
                       path, show(name).s, (unsigned long long)b, (unsigned long long)e);
    if (e > area)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu) exceed the data area (%llu bytes)",
                       path, show(name).s, (unsigned long long)b, (unsigned long long)e,
                       (unsigned long long)area);

    uint64_t elems = 1, bytes;
    for (int i = 0; i < out->ndim; i++)
        if (__builtin_mul_overflow(elems, (uint64_t)out->shape[i], &elems))
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': shape %s overflows",
                           path, show(name).s, show_shape(out->shape, out->ndim).s);
    size_t esize = ds_dtype_size(out->dtype);
    if (ds_dtype_is_block(out->dtype))
        return block_range(path, name, out, b, e, begin, err);
    if (__builtin_mul_overflow(elems, (uint64_t)esize, &bytes))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': shape %s of %s overflows",
                       path, show(name).s, show_shape(out->shape, out->ndim).s,
                       ds_dtype_name(out->dtype));
    if (bytes != e - b)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': shape %s of %s (%zu bytes each) does not fill "
                       "data_offsets [%llu, %llu) (%llu bytes)",
                       path, show(name).s, show_shape(out->shape, out->ndim).s,
                       ds_dtype_name(out->dtype), esize, (unsigned long long)b,
                       (unsigned long long)e, (unsigned long long)(e - b));
    out->nbytes = bytes;
    *begin = b;
    return DS_OK;
}

static ds_status parse_entry(const char *path, const char *name, json_t *entry, uint64_t area,
                             ds_tensor *out, uint64_t *begin, ds_error *err)
{
    if (!json_is_object(entry))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': header entry is not an object",
                       path, show(name).s);
    ds_status s = parse_dtype(path, name, entry, out, err);
    if (!s)
        s = parse_shape(path, name, entry, out, err);
    if (!s)
        s = parse_range(path, name, entry, area, out, begin, err);
    return s;
}

static int cmp_offset(const void *a, const void *b)
{
    const ds_tensor *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Tensors [first, first + n) all belong to one file and are sorted by
 * offset; any non-empty range starting before the furthest end seen so far
 * overlaps an earlier tensor. */
static ds_status check_overlaps(const ds_tensor_table *t, int first, int n, ds_error *err)
{
    const ds_tensor *reach = NULL;   /* the tensor whose range ends furthest */
    for (int i = first; i < first + n; i++) {
        const ds_tensor *ti = &t->tensors[i];
        if (ti->nbytes == 0)
            continue;
        if (reach && ti->offset < reach->offset + reach->nbytes)
            return ds_fail(err, DS_ERR_FORMAT,
                           "%s: tensor '%s': bytes [%llu, %llu) overlap tensor '%s' [%llu, %llu)",
                           t->files[ti->file].path, show(ti->name).s,
                           (unsigned long long)ti->offset,
                           (unsigned long long)(ti->offset + ti->nbytes), show(reach->name).s,
                           (unsigned long long)reach->offset,
                           (unsigned long long)(reach->offset + reach->nbytes));
        if (!reach || ti->offset + ti->nbytes > reach->offset + reach->nbytes)
            reach = ti;
    }
    return DS_OK;
}

static ds_status parse_header_json(const ds_mapped_file *f, json_t **root, uint64_t *data_start,
                                   ds_error *err)
{
    if (f->size < 8)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: file is %llu bytes, too short for the 8-byte header length",
                       f->path, (unsigned long long)f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->base[i];
    if (n > ST_MAX_HEADER)
        return ds_fail(err, DS_ERR_FORMAT, "%s: header length %llu is absurd (limit %llu bytes)",
                       f->path, (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: header length %llu exceeds the file (%llu bytes): truncated?",
                       f->path, (unsigned long long)n, (unsigned long long)f->size);
    json_error_t je;
    *root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!*root && json_error_code(&je) == json_error_duplicate_key)
        return ds_fail(err, DS_ERR_FORMAT, "%s: duplicate tensor name in the header (%s)",
                       f->path, je.text);
    if (!*root)
        return ds_fail(err, DS_ERR_FORMAT, "%s: invalid JSON header: %s (column %d)",
                       f->path, je.text, je.column);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return ds_fail(err, DS_ERR_FORMAT, "%s: JSON header is not an object", f->path);
    }
    *data_start = 8 + n;
    return DS_OK;
}

/* Parses the header of file `file` and appends its tensors to the table. */
static ds_status parse_file(ds_tensor_table *t, int file, ds_error *err)
{
    const ds_mapped_file *f = &t->files[file];
    json_t *root = NULL;
    uint64_t start = 0;
    ds_status s = parse_header_json(f, &root, &start, err);
    if (s)
        return s;
    void *arr = t->tensors;
    s = grow(&arr, &t->cap_tensors, t->n_tensors + (int)json_object_size(root),
             sizeof *t->tensors, err);
    t->tensors = arr;
    int first = t->n_tensors;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (s)
            break;
        if (strcmp(key, "__metadata__") == 0)
            continue;   /* free-form strings; nothing in them is needed */
        ds_tensor tn = {.file = file};
        uint64_t begin = 0;
        s = parse_entry(f->path, key, val, f->size - start, &tn, &begin, err);
        if (s)
            break;
        if (strncmp(key, PAD_PREFIX, strlen(PAD_PREFIX)) == 0) {
            /* filler between aligned tensors (dsinfer-quantize --repack) */
            if (tn.dtype != DS_DT_U8 || tn.ndim != 1)
                s = ds_fail(err, DS_ERR_FORMAT, "%s: padding tensor '%s' is not one-dimensional U8",
                            f->path, show(key).s);
            continue;
        }
        tn.offset = start + begin;
        tn.data = f->base + tn.offset;
        if (!(tn.name = strdup(key))) {
            s = ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", f->path);
            break;
        }
        t->tensors[t->n_tensors++] = tn;
    }
    json_decref(root);
    if (s)
        return s;
    if (t->n_tensors == first)   /* a file of no tensors ("{}"): t->tensors may be NULL */
        return DS_OK;
    /* Ordering by offset both finds overlaps and gives a stable, file-order
     * iteration independent of the JSON key order. */
    qsort(t->tensors + first, (size_t)(t->n_tensors - first), sizeof *t->tensors, cmp_offset);
    return check_overlaps(t, first, t->n_tensors - first, err);
}

/* ---- sharded checkpoints: model.safetensors.index.json ------------------ */

static int plain_file_name(const char *s)
{
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static char *join_path(const char *dir, const char *name, ds_error *err)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0) {
        ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", dir);
        return NULL;
    }
    return p;
}

/* Maps and parses the shard named by one weight_map entry, once per shard;
 * `shards` maps shard name -> file index. */
static ds_status open_shard(ds_tensor_table *t, const char *dir, const char *index_path,
                            const char *tensor, json_t *shard, json_t *shards, ds_error *err)
{
    if (!json_is_string(shard))
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': shard name is not a string",
                       index_path, show(tensor).s);
    if (!plain_file_name(json_string_value(shard)))
        return ds_fail(err, DS_ERR_FORMAT,
                       "%s: tensor '%s': shard '%s' is not a plain file name in the directory",
                       index_path, show(tensor).s, show(json_string_value(shard)).s);
    const char *name = json_string_value(shard);
    if (json_object_get(shards, name))
        return DS_OK;
    char *path = join_path(dir, name, err);
    if (!path)
        return DS_ERR_NOMEM;
    int file = -1;
    ds_status s = add_file(t, path, &file, err);
    free(path);
    if (s == DS_ERR_IO && err) {
        char inner[sizeof err->msg];
        memcpy(inner, err->msg, sizeof inner);
        ds_fail(err, s, "%s (shard of tensor '%s' in %s)", inner, show(tensor).s, INDEX_NAME);
    }
    if (s)
        return s;
    if (json_object_set_new(shards, name, json_integer(file)) != 0)
        return ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", index_path);
    return parse_file(t, file, err);
}

/* Both directions: every weight_map entry names a tensor that its shard
 * holds, and every tensor of every shard is in weight_map. */
static ds_status check_index(const ds_tensor_table *t, const char *index_path, json_t *wmap,
                             json_t *shards, ds_error *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(wmap, key, val) {
        const ds_tensor *tn = ds_table_find(t, key);
        const char *shard = json_string_value(val);
        json_int_t want = json_integer_value(json_object_get(shards, shard));
        if (!tn)
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': listed in shard %s, which has no such tensor",
                           index_path, show(key).s, show(shard).s);
        if (tn->file != want)
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': listed in shard %s but found in %s",
                           index_path, show(key).s, show(shard).s, t->files[tn->file].path);
    }
    for (int i = 0; i < t->n_tensors; i++)
        if (!json_object_get(wmap, t->tensors[i].name))
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s': not listed in %s",
                           t->files[t->tensors[i].file].path, show(t->tensors[i].name).s,
                           INDEX_NAME);
    return DS_OK;
}

static ds_status load_index_json(const char *index_path, json_t **root, ds_error *err)
{
    return ds_json_file_load(index_path, JSON_REJECT_DUPLICATES, root, err);
}

static ds_status open_index(ds_tensor_table *t, const char *dir, const char *index_path,
                            ds_error *err)
{
    json_t *root = NULL, *shards = NULL;
    ds_status s = load_index_json(index_path, &root, err);
    if (s)
        return s;
    json_t *wmap = json_object_get(root, "weight_map");
    if (!json_is_object(wmap) || json_object_size(wmap) == 0) {
        s = ds_fail(err, DS_ERR_FORMAT, "%s: \"weight_map\" missing, empty or not an object",
                    index_path);
        goto out;
    }
    if (!(shards = json_object())) {
        s = ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wmap, key, val) {
        if ((s = open_shard(t, dir, index_path, key, val, shards, err)))
            goto out;
    }
    if (!(s = build_hash(t, err)))
        s = check_index(t, index_path, wmap, shards, err);
out:
    json_decref(shards);
    json_decref(root);
    return s;
}

/* ---- public API -------------------------------------------------------- */

static ds_status finish(ds_tensor_table *t, ds_status s, ds_tensor_table **out)
{
    if (s) {
        ds_table_free(t);
        return s;
    }
    *out = t;
    return DS_OK;
}

ds_status ds_table_open_file(const char *path, ds_tensor_table **out, ds_error *err)
{
    if (!out || !path)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_table_open_file: NULL argument");
    *out = NULL;
    ds_tensor_table *t = ds_calloc(1, sizeof *t, err);
    if (!t)
        return DS_ERR_NOMEM;
    int file = -1;
    ds_status s = add_file(t, path, &file, err);
    if (!s)
        s = parse_file(t, file, err);
    if (!s)
        s = build_hash(t, err);
    return finish(t, s, out);
}

static int is_regular(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

ds_status ds_table_open(const char *dir, ds_tensor_table **out, ds_error *err)
{
    if (!out || !dir)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_table_open: NULL argument");
    *out = NULL;
    char *index_path = join_path(dir, INDEX_NAME, err);
    char *single_path = join_path(dir, SINGLE_NAME, err);
    ds_status s = DS_ERR_NOMEM;
    if (!index_path || !single_path)
        goto out;
    if (is_regular(index_path)) {
        ds_tensor_table *t = ds_calloc(1, sizeof *t, err);
        if (t)
            s = finish(t, open_index(t, dir, index_path, err), out);
    } else if (is_regular(single_path)) {
        s = ds_table_open_file(single_path, out, err);
    } else {
        s = ds_fail(err, DS_ERR_IO, "%s: no %s or %s", dir, INDEX_NAME, SINGLE_NAME);
    }
out:
    free(index_path);
    free(single_path);
    return s;
}

void ds_table_free(ds_tensor_table *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_tensors; i++)
        free((char *)t->tensors[i].name);
    for (int i = 0; i < t->n_files; i++)
        ds_unmap_file(&t->files[i]);
    free(t->tensors);
    free(t->files);
    free(t->slots);
    free(t);
}

int ds_table_count(const ds_tensor_table *t) { return t ? t->n_tensors : 0; }

const ds_tensor *ds_table_at(const ds_tensor_table *t, int i)
{
    return t && i >= 0 && i < t->n_tensors ? &t->tensors[i] : NULL;
}

const ds_tensor *ds_table_find(const ds_tensor_table *t, const char *name)
{
    if (!t || !t->slots || !name)
        return NULL;
    for (uint64_t h = hash_name(name) & t->slot_mask; t->slots[h] >= 0;
         h = (h + 1) & t->slot_mask)
        if (strcmp(t->tensors[t->slots[h]].name, name) == 0)
            return &t->tensors[t->slots[h]];
    return NULL;
}

int ds_table_file_count(const ds_tensor_table *t) { return t ? t->n_files : 0; }

const char *ds_table_file_path(const ds_tensor_table *t, int file)
{
    return t && file >= 0 && file < t->n_files ? t->files[file].path : NULL;
}

ds_status ds_table_to_ram(ds_tensor_table *t, int drop_cache, ds_error *err)
{
    for (int f = 0; f < t->n_files; f++) {
        const uint8_t *old = t->files[f].base;
        ds_status s = ds_mapped_to_ram(&t->files[f], drop_cache, err);
        if (s != DS_OK)
            return s;
        for (int i = 0; i < t->n_tensors; i++)
            if (t->tensors[i].file == f && t->tensors[i].data)
                t->tensors[i].data = t->files[f].base + (t->tensors[i].data - old);
    }
    return DS_OK;
}

uint64_t ds_table_bytes(const ds_tensor_table *t)
{
    uint64_t n = 0;
    for (int f = 0; f < t->n_files; f++)
        n += t->files[f].size;
    return n;
}
