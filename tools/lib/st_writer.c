/* st_writer.c — streaming safetensors writer (see st_writer.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "st_writer.h"

#define ST_BUF_SIZE (1u << 20)

typedef struct st_entry {
    char *name;
    ds_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
    int pad;             /* padding: zero bytes the writer fills itself */
} st_entry;

struct st_writer {
    char *path, *tmp;
    st_entry *t;
    size_t n, cap;
    json_t *meta;        /* extra __metadata__ strings */
    json_t *names;       /* set of names, for duplicate checks */
    uint64_t data_size;  /* declared */
    uint64_t written;    /* data bytes accepted so far */
    uint64_t header_len; /* 8 + padded JSON */
    size_t cur;          /* tensor the next byte belongs to */
    uint64_t align;      /* data area starts at a multiple of this (1: no rule) */
    int npad;            /* padding tensors declared */
    int fd;
    int state;           /* 0 declaring, 1 writing, 2 finished, -1 failed */
    unsigned char *buf;
    size_t buf_used;
    char err[768];
};

static int fail(st_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(st_writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
    w->state = -1;
    return -1;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *str_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

/* write() loop; returns 0 or -1 with errno set (ENOSPC for a 0-byte write). */
static int write_all(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

uint64_t st_tensor_bytes(ds_dtype dt, int ndim, const int64_t *shape)
{
    uint64_t n = ds_dtype_size(dt);
    if (ds_dtype_is_block(dt)) {
        /* Q8_0 / Q4_K: whole-block rows of the last dimension (0 if ragged). */
        if (ndim < 1 || ndim > ST_MAX_DIMS || shape[ndim - 1] <= 0)
            return 0;
        n = ds_dtype_row_bytes(dt, shape[ndim - 1]);
        ndim--;
    }
    if (!n || ndim < 0 || ndim > ST_MAX_DIMS)
        return 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return 0;
        uint64_t d = (uint64_t)shape[i];
        if (d && n > UINT64_MAX / 4 / d)
            return 0;
        n *= d;
    }
    return n;
}

st_writer *st_writer_new(const char *path)
{
    st_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->fd = -1;
    w->align = 8;
    w->path = strdup(path);
    w->tmp = str_concat(path, ".tmp");
    w->meta = json_object();
    w->names = json_object();
    if (!w->path || !w->tmp || !w->meta || !w->names) {
        st_writer_free(w);
        return NULL;
    }
    return w;
}

int st_writer_set_meta(st_writer *w, const char *key, const char *value)
{
    if (w->state != 0)
        return fail(w, "%s: metadata set after the header was written", w->path);
    if (!strcmp(key, "format"))
        return fail(w, "%s: __metadata__.format is always \"pt\"", w->path);
    if (json_object_set_new(w->meta, key, json_string(value)))
        return fail(w, "%s: cannot store metadata '%s' (out of memory or not UTF-8)", w->path, key);
    return 0;
}

int st_writer_add(st_writer *w, const char *name, ds_dtype dt, int ndim, const int64_t *shape)
{
    if (w->state != 0)
        return fail(w, "%s: tensor '%s' declared after the header was written", w->path, name);
    if (!*name || !strcmp(name, "__metadata__"))
        return fail(w, "%s: invalid tensor name '%s'", w->path, name);
    if (json_object_get(w->names, name))
        return fail(w, "%s: duplicate tensor name '%s'", w->path, name);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return fail(w, "%s: tensor '%s' has %d dimensions (at most %d)", w->path, name, ndim, ST_MAX_DIMS);
    uint64_t bytes = st_tensor_bytes(dt, ndim, shape);
    int empty = 0;
    for (int i = 0; i < ndim; i++)
        empty |= shape[i] == 0;
    if (!bytes && !empty)
        return fail(w, "%s: tensor '%s' has a bad dtype or shape", w->path, name);
    if (w->data_size > UINT64_MAX / 4 - bytes)
        return fail(w, "%s: file too large", w->path);
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 64;
        st_entry *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt)
            return fail(w, "%s: out of memory", w->path);
        w->t = nt;
        w->cap = nc;
    }
    st_entry *e = &w->t[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name || json_object_set_new(w->names, name, json_true())) {
        free(e->name);
        return fail(w, "%s: out of memory (or tensor name not UTF-8)", w->path);
    }
    e->dt = dt;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->begin = w->data_size;
    e->end = w->data_size + bytes;
    w->data_size = e->end;
    w->n++;
    return 0;
}

int st_writer_set_align(st_writer *w, uint64_t align)
{
    if (w->state != 0)
        return fail(w, "%s: alignment set after the header was written", w->path);
    if (align < 8 || (align & (align - 1)))
        return fail(w, "%s: bad alignment %llu", w->path, (unsigned long long)align);
    w->align = align;
    return 0;
}

int st_writer_pad_to(st_writer *w, uint64_t align)
{
    if (!align || (align & (align - 1)))
        return fail(w, "%s: bad alignment %llu", w->path, (unsigned long long)align);
    const uint64_t gap = (align - w->data_size % align) % align;
    if (!gap)
        return 0;
    char name[64];
    snprintf(name, sizeof name, ST_PAD_PREFIX "%d", w->npad);
    const int64_t shape[1] = {(int64_t)gap};
    if (st_writer_add(w, name, DS_DT_U8, 1, shape))
        return -1;
    w->t[w->n - 1].pad = 1;
    w->npad++;
    return 0;
}

size_t st_writer_count(const st_writer *w) { return w->n; }
uint64_t st_writer_data_size(const st_writer *w) { return w->data_size; }
size_t st_writer_current(const st_writer *w) { return w->cur; }
const char *st_writer_error(const st_writer *w) { return w->err; }
uint64_t st_writer_file_size(const st_writer *w) { return w->header_len + w->data_size; }

static int fill_pads(st_writer *w);

static char *build_header(st_writer *w)
{
    json_t *root = json_object();
    json_t *meta = json_object();
    if (!root || !meta)
        goto oom;
    json_object_set_new(meta, "format", json_string("pt"));
    const char *k;
    json_t *v;
    json_object_foreach(w->meta, k, v)
        json_object_set(meta, k, v);
    json_object_set_new(root, "__metadata__", meta);
    meta = NULL;
    for (size_t i = 0; i < w->n; i++) {
        st_entry *e = &w->t[i];
        json_t *o = json_object(), *sh = json_array(), *off = json_array();
        if (!o || !sh || !off) {
            json_decref(o);
            json_decref(sh);
            json_decref(off);
            goto oom;
        }
        for (int d = 0; d < e->ndim; d++)
            json_array_append_new(sh, json_integer((json_int_t)e->shape[d]));
        json_array_append_new(off, json_integer((json_int_t)e->begin));
        json_array_append_new(off, json_integer((json_int_t)e->end));
        json_object_set_new(o, "dtype", json_string(ds_dtype_name(e->dt)));
        json_object_set_new(o, "shape", sh);
        json_object_set_new(o, "data_offsets", off);
        if (json_object_set_new(root, e->name, o))
            goto oom;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(root);
    return s;
oom:
    json_decref(meta);
    json_decref(root);
    return NULL;
}

int st_writer_begin(st_writer *w)
{
    if (w->state != 0)
        return fail(w, "%s: header already written", w->path);
    char *json = build_header(w);
    if (!json)
        return fail(w, "%s: out of memory building the header", w->path);
    size_t jl = strlen(json);
    /* 8 + padded is a multiple of the alignment (8 by default: padded too) */
    size_t padded = (size_t)((8 + jl + w->align - 1) / w->align * w->align - 8);
    w->buf = malloc(ST_BUF_SIZE > 8 + padded ? ST_BUF_SIZE : 8 + padded);
    if (!w->buf) {
        free(json);
        return fail(w, "%s: out of memory", w->path);
    }
    uint64_t hl = padded;
    for (int i = 0; i < 8; i++)
        w->buf[i] = (unsigned char)(hl >> (8 * i));
    memcpy(w->buf + 8, json, jl);
    memset(w->buf + 8 + jl, ' ', padded - jl);
    free(json);
    w->header_len = 8 + padded;

    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return fail(w, "%s: cannot create: %s", w->tmp, strerror(errno));
    w->state = 1;
    if (write_all(w->fd, w->buf, 8 + padded))
        return fail(w, "%s: write failed: %s", w->tmp, strerror(errno));
    if (padded + 8 > ST_BUF_SIZE) {
        unsigned char *nb = realloc(w->buf, ST_BUF_SIZE);
        if (nb)
            w->buf = nb;
    }
    w->buf_used = 0;
    w->cur = 0;
    while (w->cur < w->n && w->t[w->cur].end == w->t[w->cur].begin)
        w->cur++;
    return fill_pads(w);
}

static int flush_buf(st_writer *w)
{
    if (w->buf_used && write_all(w->fd, w->buf, w->buf_used))
        return fail(w, "%s: write failed: %s", w->tmp, strerror(errno));
    w->buf_used = 0;
    return 0;
}

static int write_data(st_writer *w, const void *data, size_t n);

/* Writes the zero bytes of the padding tensors at the current position. */
static int fill_pads(st_writer *w)
{
    static const unsigned char zeros[4096];
    while (w->cur < w->n && w->t[w->cur].pad) {
        const st_entry *e = &w->t[w->cur];
        uint64_t left = e->end - w->written;
        while (left) {
            size_t k = left < sizeof zeros ? (size_t)left : sizeof zeros;
            if (write_data(w, zeros, k))
                return -1;
            left -= k;
        }
    }
    return 0;
}

/* The caller's bytes go to the tensors in order, the padding tensors
 * between them filled in as they come up. */
int st_writer_write(st_writer *w, const void *data, size_t n)
{
    if (w->state != 1)
        return fail(w, "%s: write outside begin/finish", w->path);
    const unsigned char *p = data;
    while (n) {
        if (w->cur >= w->n)
            return fail(w, "%s: %zu bytes written beyond the declared %llu", w->path, n,
                        (unsigned long long)w->data_size);
        const uint64_t room = w->t[w->cur].end - w->written;
        const size_t k = n < room ? n : (size_t)room;
        if (write_data(w, p, k) || fill_pads(w))
            return -1;
        p += k;
        n -= k;
    }
    return 0;
}

static int write_data(st_writer *w, const void *data, size_t n)
{
    if (n > w->data_size - w->written)
        return fail(w, "%s: %llu bytes written beyond the declared %llu", w->path,
                    (unsigned long long)(w->written + n - w->data_size),
                    (unsigned long long)w->data_size);
    const unsigned char *p = data;
    if (n >= ST_BUF_SIZE) {
        if (flush_buf(w))
            return -1;
        if (write_all(w->fd, p, n))
            return fail(w, "%s: write failed: %s", w->tmp, strerror(errno));
    } else {
        if (w->buf_used + n > ST_BUF_SIZE && flush_buf(w))
            return -1;
        memcpy(w->buf + w->buf_used, p, n);
        w->buf_used += n;
    }
    w->written += n;
    while (w->cur < w->n && w->t[w->cur].end <= w->written)
        w->cur++;
    return 0;
}

int st_writer_finish(st_writer *w)
{
    if (w->state == 0 && st_writer_begin(w))
        return -1;
    if (w->state != 1)
        return fail(w, "%s: finish in a bad state", w->path);
    if (w->written != w->data_size)
        return fail(w, "%s: only %llu of %llu data bytes were written (tensor '%s' incomplete)",
                    w->path, (unsigned long long)w->written, (unsigned long long)w->data_size,
                    w->cur < w->n ? w->t[w->cur].name : "?");
    if (flush_buf(w))
        return -1;
    if (fsync(w->fd))
        return fail(w, "%s: fsync failed: %s", w->tmp, strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd))
        return fail(w, "%s: close failed: %s", w->tmp, strerror(errno));
    if (rename(w->tmp, w->path))
        return fail(w, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
    w->state = 2;
    return 0;
}

void st_writer_abort(st_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->state == 1 || w->state == -1)
        unlink(w->tmp);
    if (w->state != 2)
        w->state = -1;
}

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    json_decref(w->meta);
    json_decref(w->names);
    free(w->buf);
    free(w->path);
    free(w->tmp);
    free(w);
}

/* ---- whole files ------------------------------------------------------ */

typedef struct {
    char *tmp;
    int fd;
} atomic_file;

static int af_open(atomic_file *af, const char *path, char *err, size_t errlen)
{
    af->tmp = str_concat(path, ".tmp");
    af->fd = -1;
    if (!af->tmp) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    af->fd = open(af->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (af->fd < 0) {
        set_err(err, errlen, "%s: cannot create: %s", af->tmp, strerror(errno));
        free(af->tmp);
        af->tmp = NULL;
        return -1;
    }
    return 0;
}

static void af_abort(atomic_file *af)
{
    if (af->fd >= 0)
        close(af->fd);
    if (af->tmp)
        unlink(af->tmp);
    free(af->tmp);
    af->tmp = NULL;
    af->fd = -1;
}

static int af_commit(atomic_file *af, const char *path, char *err, size_t errlen)
{
    if (fsync(af->fd)) {
        set_err(err, errlen, "%s: fsync failed: %s", af->tmp, strerror(errno));
        af_abort(af);
        return -1;
    }
    int fd = af->fd;
    af->fd = -1;
    if (close(fd)) {
        set_err(err, errlen, "%s: close failed: %s", af->tmp, strerror(errno));
        af_abort(af);
        return -1;
    }
    if (rename(af->tmp, path)) {
        set_err(err, errlen, "cannot rename %s to %s: %s", af->tmp, path, strerror(errno));
        af_abort(af);
        return -1;
    }
    free(af->tmp);
    af->tmp = NULL;
    return 0;
}

int st_write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    atomic_file af;
    if (af_open(&af, path, err, errlen))
        return -1;
    if (write_all(af.fd, data, len)) {
        set_err(err, errlen, "%s: write failed: %s", af.tmp, strerror(errno));
        af_abort(&af);
        return -1;
    }
    return af_commit(&af, path, err, errlen);
}

int st_copy_file_atomic(const char *src, const char *dst, char *err, size_t errlen)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        set_err(err, errlen, "%s: cannot open: %s", src, strerror(errno));
        return -1;
    }
    atomic_file af;
    if (af_open(&af, dst, err, errlen)) {
        close(in);
        return -1;
    }
    char *buf = malloc(ST_BUF_SIZE);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", dst);
        goto bad;
    }
    for (;;) {
        ssize_t r = read(in, buf, ST_BUF_SIZE);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            set_err(err, errlen, "%s: read failed: %s", src, strerror(errno));
            goto bad;
        }
        if (r == 0)
            break;
        if (write_all(af.fd, buf, (size_t)r)) {
            set_err(err, errlen, "%s: write failed: %s", af.tmp, strerror(errno));
            goto bad;
        }
    }
    free(buf);
    close(in);
    return af_commit(&af, dst, err, errlen);
bad:
    free(buf);
    close(in);
    af_abort(&af);
    return -1;
}

int st_fsync_dir(const char *dir, char *err, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open directory: %s", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    if (fsync(fd) && errno != EINVAL && errno != ENOTSUP && errno != EROFS) {
        set_err(err, errlen, "%s: fsync failed: %s", dir, strerror(errno));
        rc = -1;
    }
    close(fd);
    return rc;
}

/* ---- index ------------------------------------------------------------ */

struct st_index {
    json_t *map;
    json_t *meta;        /* extra metadata strings */
};

st_index *st_index_new(void)
{
    st_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    ix->map = json_object();
    ix->meta = json_object();
    if (!ix->map || !ix->meta) {
        json_decref(ix->map);
        json_decref(ix->meta);
        free(ix);
        return NULL;
    }
    return ix;
}

int st_index_add(st_index *ix, const char *tensor, const char *shard)
{
    if (json_object_get(ix->map, tensor))
        return -1;
    return json_object_set_new(ix->map, tensor, json_string(shard)) ? -1 : 0;
}

int st_index_set_meta(st_index *ix, const char *key, const char *value)
{
    if (!strcmp(key, "total_size"))
        return -1;
    return json_object_set_new(ix->meta, key, json_string(value)) ? -1 : 0;
}

int st_index_write(const st_index *ix, const char *path, uint64_t total_size, char *err, size_t errlen)
{
    json_t *root = json_object(), *meta = json_object();
    if (!root || !meta) {
        json_decref(root);
        json_decref(meta);
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    json_object_update(meta, ix->meta);
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total_size));
    json_object_set_new(root, "metadata", meta);
    json_object_set(root, "weight_map", ix->map);
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!s) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    size_t len = strlen(s);
    char *t = realloc(s, len + 2);
    if (!t) {
        free(s);
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    t[len] = '\n';
    t[len + 1] = 0;
    int rc = st_write_file_atomic(path, t, len + 1, err, errlen);
    free(t);
    return rc;
}

void st_index_free(st_index *ix)
{
    if (!ix)
        return;
    json_decref(ix->map);
    json_decref(ix->meta);
    free(ix);
}
