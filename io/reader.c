/* reader.c — the front of the range reader (see reader.h): parameters,
 * files and their O_DIRECT probing, splitting requests into read
 * operations, bounce buffers, job bookkeeping, wait/poll, verification and
 * statistics.  The backends only move operations through the kernel. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"
#include "reader_impl.h"

#define RD_PAGE 4096
#define RD_MAX_RETRIES 1000

static size_t round_down(size_t x, size_t a) { return x & ~(a - 1); }
static size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ds_reader_params_init(ds_reader_params *p)
{
    memset(p, 0, sizeof *p);
    p->backend = DS_IO_AUTO;
    p->queue_depth = 64;
    p->max_request = 1u << 20;
    p->use_direct = 1;
    p->bounce_buffers = 16;
}

/* ---- setup ------------------------------------------------------------ */

static void normalise_params(ds_reader_params *p)
{
    if (p->queue_depth <= 0)
        p->queue_depth = 64;
    if (p->queue_depth > 4096)
        p->queue_depth = 4096;   /* io_uring's ring limit is far above any useful depth */
    if (p->max_request == 0)
        p->max_request = 1u << 20;
    /* A multiple of the page keeps split points aligned for O_DIRECT;
     * the cap keeps one read within what read(2) returns in one go. */
    p->max_request = round_up(p->max_request, RD_PAGE);
    if (p->max_request > (1u << 30))
        p->max_request = 1u << 30;
    if (p->bounce_buffers <= 0)
        p->bounce_buffers = 16;
    if (p->threads <= 0)
        p->threads = p->queue_depth < 8 ? p->queue_depth : 8;
}

static ds_status alloc_bounce(ds_reader *r, ds_error *err)
{
    size_t bytes = (size_t)r->p.bounce_buffers * r->p.max_request;
    r->bounce_mem = aligned_alloc(RD_PAGE, bytes);
    r->free_slots = malloc(sizeof(int) * (size_t)r->p.bounce_buffers);
    if (!r->bounce_mem || !r->free_slots)
        return ds_fail(err, DS_ERR_NOMEM, "reader: out of memory for %zu bytes of bounce buffers",
                       bytes);
    for (int i = 0; i < r->p.bounce_buffers; i++)
        r->free_slots[i] = r->p.bounce_buffers - 1 - i;
    r->n_free_slots = r->p.bounce_buffers;
    return DS_OK;
}

static ds_status start_backend(ds_reader *r, ds_error *err)
{
    ds_io_backend b = r->p.backend;
    if (b == DS_IO_URING || b == DS_IO_AUTO) {
        ds_error uerr = { 0 };
        ds_status s = rd_uring_init(r, &uerr);
        if (s == DS_OK) {
            r->be = &rd_backend_uring;
            return DS_OK;
        }
        if (b == DS_IO_URING) {
            if (err)
                *err = uerr;
            return s;
        }
    } else if (b != DS_IO_PREAD) {
        return ds_fail(err, DS_ERR_INVALID_ARG, "reader: unknown backend %d", (int)b);
    }
    ds_status s = rd_pread_init(r, err);
    if (s == DS_OK)
        r->be = &rd_backend_pread;
    return s;
}

ds_status ds_reader_open(const ds_reader_params *p, ds_reader **out, ds_error *err)
{
    if (!out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_open: NULL out");
    *out = NULL;
    ds_reader *r = ds_calloc(1, sizeof *r, err);
    if (!r)
        return DS_ERR_NOMEM;
    if (p)
        r->p = *p;
    else
        ds_reader_params_init(&r->p);
    normalise_params(&r->p);
    pthread_mutex_init(&r->mu, NULL);
    ds_status s = r->p.use_direct ? alloc_bounce(r, err) : DS_OK;
    if (s == DS_OK)
        s = start_backend(r, err);
    if (s != DS_OK) {
        ds_reader_close(r);
        return s;
    }
    *out = r;
    return DS_OK;
}

static void free_job(rd_job *j)
{
    free(j->ops);
    free(j->reqs);
    free(j);
}

void ds_reader_close(ds_reader *r)
{
    if (!r)
        return;
    if (r->be) {
        /* In-flight reads write into caller memory: let them land first. */
        pthread_mutex_lock(&r->mu);
        while (r->n_incomplete > 0 && r->be->progress(r, 1) == 0)
            ;
        pthread_mutex_unlock(&r->mu);
        r->be->close(r);
    }
    for (int i = 0; i < RD_HASH; i++) {
        while (r->hash[i]) {
            rd_job *j = r->hash[i];
            r->hash[i] = j->hnext;
            free_job(j);
        }
    }
    for (int i = 0; i < r->n_files; i++) {
        close(r->files[i].fd_buf);
        if (r->files[i].fd_direct >= 0)
            close(r->files[i].fd_direct);
        free(r->files[i].path);
    }
    free(r->files);
    free(r->bounce_mem);
    free(r->free_slots);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- files -------------------------------------------------------------- */

/* O_DIRECT alignment of an open file: what statx reports where the kernel
 * knows (Linux 6.1+), else the page size, which every device accepts.
 * 0 means the file cannot do direct I/O. */
static size_t direct_alignment(int fd)
{
#ifdef STATX_DIOALIGN
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
        if (sx.stx_dio_offset_align == 0)
            return 0;
        size_t a = sx.stx_dio_offset_align;
        if (sx.stx_dio_mem_align > a)
            a = sx.stx_dio_mem_align;
        /* Bounce slots are page aligned; larger or odd alignments are not
         * worth special-casing. */
        if (a > RD_PAGE || (a & (a - 1)))
            return 0;
        return a;
    }
#else
    (void)fd;
#endif
    return RD_PAGE;
}

/* Opens the O_DIRECT descriptor and proves it with one aligned read;
 * returns -1 (buffered reads) when the filesystem refuses. */
static int open_direct(ds_reader *r, const char *path, size_t *align, ds_error *err, int *failed)
{
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        return -1;   /* EINVAL: the filesystem has no O_DIRECT; anything else: buffered still worked */
    size_t a = direct_alignment(fd);
    if (a == 0) {
        close(fd);
        return -1;
    }
    void *buf = aligned_alloc(RD_PAGE, RD_PAGE);
    if (!buf) {
        close(fd);
        *failed = ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", path);
        return -1;
    }
    ssize_t n;
    do
        n = pread(fd, buf, a, 0);
    while (n < 0 && (errno == EINTR || errno == EAGAIN));
    int e = n < 0 ? errno : 0;
    if (r->p.debug & DS_IO_DEBUG_REFUSE_DIRECT)
        e = EINVAL;
    free(buf);
    if (e) {
        close(fd);
        if (e != EINVAL)
            *failed = ds_fail(err, DS_ERR_IO, "%s: cannot read: %s", path, strerror(e));
        return -1;
    }
    *align = a;
    return fd;
}

int ds_reader_add_file(ds_reader *r, const char *path, ds_error *err)
{
    if (!r || !path)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_add_file: NULL argument"), -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ds_fail(err, DS_ERR_IO, "%s: cannot open: %s", path, strerror(errno)), -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ds_fail(err, DS_ERR_IO, "%s: cannot stat: %s", path, strerror(e)), -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ds_fail(err, DS_ERR_IO, "%s: not a regular file", path), -1;
    }
    rd_file f = { .path = strdup(path), .fd_buf = fd, .fd_direct = -1, .align = 1 };
    int failed = 0;
    if (f.path && r->p.use_direct) {
        f.fd_direct = open_direct(r, path, &f.align, err, &failed);
        f.direct = f.fd_direct >= 0;
    }
    if (!f.path || failed) {
        close(fd);
        free(f.path);
        return f.path ? -1 : (ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", path), -1);
    }

    pthread_mutex_lock(&r->mu);
    if (r->p.use_direct && !f.direct)
        r->st.direct_fallbacks++;
    if (r->n_files == r->cap_files) {
        int cap = r->cap_files ? 2 * r->cap_files : 16;
        rd_file *nf = realloc(r->files, sizeof *nf * (size_t)cap);
        if (!nf) {
            pthread_mutex_unlock(&r->mu);
            close(fd);
            if (f.fd_direct >= 0)
                close(f.fd_direct);
            free(f.path);
            return ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", path), -1;
        }
        r->files = nf;
        r->cap_files = cap;
    }
    int id = r->n_files++;
    r->files[id] = f;
    pthread_mutex_unlock(&r->mu);
    return id;
}

int ds_reader_file_direct(const ds_reader *r, int file)
{
    if (!r || file < 0 || file >= r->n_files)
        return -1;
    pthread_mutex_lock((pthread_mutex_t *)&r->mu);
    int d = r->files[file].direct;
    pthread_mutex_unlock((pthread_mutex_t *)&r->mu);
    return d;
}

/* ---- jobs ----------------------------------------------------------------- */

static unsigned tag_bucket(uint64_t tag)
{
    tag ^= tag >> 33;
    tag *= 0xff51afd7ed558ccdULL;
    tag ^= tag >> 33;
    return (unsigned)(tag % RD_HASH);
}

static rd_job *find_job(ds_reader *r, uint64_t tag)
{
    for (rd_job *j = r->hash[tag_bucket(tag)]; j; j = j->hnext)
        if (j->tag == tag)
            return j;
    return NULL;
}

static void complete_job(ds_reader *r, rd_job *j)
{
    j->complete = 1;
    j->dprev = r->done_tail;
    j->dnext = NULL;
    if (r->done_tail)
        r->done_tail->dnext = j;
    else
        r->done_head = j;
    r->done_tail = j;
}

/* Removes a completed job from the reader's lists (r->mu held). */
static void unlink_job(ds_reader *r, rd_job *j)
{
    rd_job **pp = &r->hash[tag_bucket(j->tag)];
    while (*pp != j)
        pp = &(*pp)->hnext;
    *pp = j->hnext;
    if (j->dprev)
        j->dprev->dnext = j->dnext;
    else
        r->done_head = j->dnext;
    if (j->dnext)
        j->dnext->dprev = j->dprev;
    else
        r->done_tail = j->dprev;
    r->n_jobs--;
    r->st.jobs++;
    if (j->status != DS_OK)
        r->st.errors++;
}

static void enqueue(ds_reader *r, rd_op *op)
{
    rd_queue *q = op->bounce ? &r->q_bounce : &r->q_plain;
    op->seq = r->seq++;
    op->next = NULL;
    if (q->tail)
        q->tail->next = op;
    else
        q->head = op;
    q->tail = op;
    q->n++;
}

static rd_op *dequeue(rd_queue *q)
{
    rd_op *op = q->head;
    q->head = op->next;
    if (!q->head)
        q->tail = NULL;
    q->n--;
    op->next = NULL;
    return op;
}

/* ---- splitting requests into reads --------------------------------------- */

typedef struct plan {
    rd_op *ops;      /* NULL while counting */
    int n;
    rd_job *job;
    int file;
    int direct;
} plan;

static void plan_add(plan *pl, uint64_t off, size_t len, size_t need, uint8_t *buf, int bounce,
                     uint8_t *dst, size_t skip, size_t want)
{
    if (pl->ops) {
        rd_op *op = &pl->ops[pl->n];
        memset(op, 0, sizeof *op);
        op->job = pl->job;
        op->file = pl->file;
        op->direct = pl->direct;
        op->off = off;
        op->len = len;
        op->need = need;
        op->buf = buf;
        op->bounce = bounce;
        op->slot = -1;
        op->dst = dst;
        op->skip = skip;
        op->want = want;
    }
    pl->n++;
}

/* Reads straight into caller memory, split at max_request. */
static void plan_straight(plan *pl, size_t max, uint64_t off, size_t len, uint8_t *dst)
{
    for (size_t pos = 0; pos < len;) {
        size_t n = len - pos < max ? len - pos : max;
        plan_add(pl, off + pos, n, n, dst + pos, 0, dst + pos, 0, n);
        pos += n;
    }
}

/* One aligned read of [s, s+rlen) through a bounce slot, delivering the
 * caller bytes [pos, pos+want). */
static void plan_bounce(plan *pl, uint64_t s, size_t rlen, uint64_t pos, size_t want, uint8_t *dst)
{
    size_t skip = (size_t)(pos - s);
    plan_add(pl, s, rlen, skip + want, NULL, 1, dst, skip, want);
}

static void plan_request(plan *pl, const rd_file *f, size_t max, const ds_io_req *q)
{
    uint64_t off = q->offset, end = q->offset + q->length;
    uint8_t *dst = q->dst;
    if (q->length == 0)
        return;
    pl->direct = f->direct;
    if (!f->direct) {
        plan_straight(pl, max, off, q->length, dst);
        return;
    }
    size_t a = f->align;
    if ((((uintptr_t)dst ^ off) & (a - 1)) == 0) {
        /* Destination and offset share their misalignment: only a partial
         * block at each end needs a bounce, the middle goes straight. */
        uint64_t bs = round_up(off, a), be = round_down(end, a);
        if (off != bs) {
            uint64_t hend = bs < end ? bs : end;
            plan_bounce(pl, bs - a, a, off, (size_t)(hend - off), dst);
        }
        if (be > bs)
            plan_straight(pl, max, bs, (size_t)(be - bs), dst + (bs - off));
        if (end != be && be >= bs)
            plan_bounce(pl, be, a, be, (size_t)(end - be), dst + (be - off));
        return;
    }
    /* Any other layout: every byte goes through a bounce slot, in aligned
     * reads of at most max bytes. */
    for (uint64_t pos = off; pos < end;) {
        uint64_t s = round_down(pos, a);
        uint64_t cend = s + max < end ? s + max : end;
        plan_bounce(pl, s, round_up(cend, a) - s, pos, (size_t)(cend - pos), dst + (pos - off));
        pos = cend;
    }
}

static ds_status check_requests(ds_reader *r, const ds_io_req *reqs, int n, uint64_t tag,
                                ds_error *err)
{
    if (n < 0 || (n > 0 && !reqs))
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_submit: bad request array");
    if (find_job(r, tag))
        return ds_fail(err, DS_ERR_INVALID_ARG,
                       "ds_reader_submit: tag %" PRIu64 " belongs to a job not yet collected", tag);
    for (int i = 0; i < n; i++) {
        const ds_io_req *q = &reqs[i];
        if (q->file < 0 || q->file >= r->n_files)
            return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_submit: bad file id %d", q->file);
        if (q->length && !q->dst)
            return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_submit: NULL destination");
        if (q->offset > (uint64_t)INT64_MAX || q->length > (uint64_t)INT64_MAX - q->offset)
            return ds_fail(err, DS_ERR_INVALID_ARG, "%s: range at offset %" PRIu64
                           " of %zu bytes is out of range", r->files[q->file].path, q->offset,
                           q->length);
    }
    return DS_OK;
}

static ds_status build_job(ds_reader *r, const ds_io_req *reqs, int n, uint64_t tag,
                           rd_job **out, ds_error *err)
{
    plan pl = { 0 };
    for (int i = 0; i < n; i++)
        plan_request(&pl, &r->files[reqs[i].file], r->p.max_request, &reqs[i]);
    rd_job *j = ds_calloc(1, sizeof *j, err);
    if (!j)
        return DS_ERR_NOMEM;
    j->tag = tag;
    j->n_ops = pl.n;
    j->ops = ds_calloc((size_t)pl.n, sizeof *j->ops, err);
    if (j->ops && r->p.verify && n > 0) {
        j->reqs = ds_calloc((size_t)n, sizeof *j->reqs, err);
        if (j->reqs)
            memcpy(j->reqs, reqs, sizeof *reqs * (size_t)n);
        j->n_reqs = n;
    }
    if (!j->ops || (r->p.verify && n > 0 && !j->reqs)) {
        free_job(j);
        return DS_ERR_NOMEM;
    }
    pl.ops = j->ops;
    pl.n = 0;
    pl.job = j;
    for (int i = 0; i < n; i++) {
        pl.file = reqs[i].file;
        plan_request(&pl, &r->files[reqs[i].file], r->p.max_request, &reqs[i]);
    }
    j->ops_left = pl.n;
    *out = j;
    return DS_OK;
}

ds_status ds_reader_submit(ds_reader *r, const ds_io_req *reqs, int n, uint64_t tag,
                           ds_error *err)
{
    if (!r)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_submit: NULL reader");
    pthread_mutex_lock(&r->mu);
    rd_job *j = NULL;
    ds_status s = check_requests(r, reqs, n, tag, err);
    if (s == DS_OK)
        s = build_job(r, reqs, n, tag, &j, err);
    if (s != DS_OK) {
        pthread_mutex_unlock(&r->mu);
        return s;
    }
    rd_job **head = &r->hash[tag_bucket(tag)];
    j->hnext = *head;
    *head = j;
    r->n_jobs++;
    r->st.requests += (uint64_t)n;
    if (j->n_ops == 0) {
        complete_job(r, j);
    } else {
        r->n_incomplete++;
        for (int i = 0; i < j->n_ops; i++)
            enqueue(r, &j->ops[i]);
        r->be->kick(r);
    }
    pthread_mutex_unlock(&r->mu);
    return DS_OK;
}

/* ---- operations (shared with the backends) --------------------------------- */

static void release_slot(ds_reader *r, rd_op *op)
{
    if (op->slot >= 0) {
        r->free_slots[r->n_free_slots++] = op->slot;
        op->slot = -1;
    }
}

static void record_failure(ds_reader *r, rd_op *op)
{
    rd_job *j = op->job;
    const char *path = r->files[op->file].path;
    if (j->status != DS_OK)
        return;   /* the first error of a job is the one reported */
    j->status = DS_ERR_IO;
    if (op->errnum < 0)
        ds_fail(&j->error, DS_ERR_IO, "%s: short file: read at offset %" PRIu64
                " reached end of file %zu bytes early", path, op->err_off, op->need - op->done);
    else
        ds_fail(&j->error, DS_ERR_IO, "%s: read at offset %" PRIu64 " failed: %s", path,
                op->err_off, strerror(op->errnum));
}

void rd_op_finish(ds_reader *r, rd_op *op)
{
    rd_file *f = &r->files[op->file];
    release_slot(r, op);
    r->st.reads += op->n_reads;
    r->st.short_reads += op->n_short;
    r->st.retries += op->n_retries;
    r->st.bytes_device += op->done;
    if (op->n_reads && op->bounce)
        r->st.bounce_reads++;
    if (op->fell_back && f->direct) {
        /* Remembered for the file: later reads go buffered from the start. */
        f->direct = 0;
        r->st.direct_fallbacks++;
    }
    if (op->errnum)
        record_failure(r, op);
    else if (op->n_reads)
        r->st.bytes_read += op->want;
    if (--op->job->ops_left == 0) {
        r->n_incomplete--;
        complete_job(r, op->job);
    }
}

static rd_queue *next_queue(ds_reader *r)
{
    rd_op *p = r->q_plain.head, *b = r->n_free_slots > 0 ? r->q_bounce.head : NULL;
    if (p && (!b || p->seq < b->seq))
        return &r->q_plain;
    return b ? &r->q_bounce : NULL;
}

rd_op *rd_next_op(ds_reader *r)
{
    rd_queue *q;
    while ((q = next_queue(r))) {
        rd_op *op = dequeue(q);
        if (op->job->status != DS_OK) {
            rd_op_finish(r, op);   /* the job already failed: skip the read */
            continue;
        }
        const rd_file *f = &r->files[op->file];
        if (op->bounce) {
            op->slot = r->free_slots[--r->n_free_slots];
            op->buf = r->bounce_mem + (size_t)op->slot * r->p.max_request;
        }
        op->direct = op->direct && f->direct;
        op->fd = op->direct ? f->fd_direct : f->fd_buf;
        op->fd_buf = f->fd_buf;
        op->align = f->align;
        return op;
    }
    return NULL;
}

size_t rd_op_read_len(const ds_reader *r, const rd_op *op)
{
    size_t rem = op->len - op->done;
    if (!(r->p.debug & DS_IO_DEBUG_SHORT_READS) || rem < 2)
        return rem;
    if (!op->direct)
        return rem / 2;
    size_t half = round_down(rem / 2, op->align);
    return half ? half : rem;
}

static void switch_to_buffered(rd_op *op)
{
    op->direct = 0;
    op->fd = op->fd_buf;
}

int rd_op_result(ds_reader *r, rd_op *op, ssize_t res)
{
    op->n_reads++;
    if (r->p.debug & DS_IO_DEBUG_EIO)
        res = -EIO;
    else if ((r->p.debug & DS_IO_DEBUG_EINVAL_DIRECT) && op->direct)
        res = -EINVAL;
    if (res < 0) {
        int e = (int)-res;
        if ((e == EINTR || e == EAGAIN) && op->n_retries < RD_MAX_RETRIES) {
            op->n_retries++;
            return 0;
        }
        if (e == EINVAL && op->direct) {
            switch_to_buffered(op);
            op->fell_back = 1;
            return 0;
        }
        op->errnum = e;
        op->err_off = op->off + op->done;
        return 1;
    }
    if (res == 0) {
        op->errnum = -1;   /* end of file before the wanted bytes */
        op->err_off = op->off + op->done;
        return 1;
    }
    op->done += (size_t)res;
    if (op->done >= op->need)
        return 1;
    op->n_short++;
    /* An O_DIRECT read only stops off a block boundary at end of file; the
     * buffered descriptor can carry on from any offset. */
    if (op->direct && (op->done & (op->align - 1)))
        switch_to_buffered(op);
    return 0;
}

void rd_op_copy_out(rd_op *op)
{
    if (op->slot >= 0 && !op->errnum)
        memcpy(op->dst, op->buf + op->skip, op->want);
}

/* ---- wait / poll ------------------------------------------------------------ */

/* Re-reads a job's ranges with plain pread and compares (r->mu held). */
static void verify_job(ds_reader *r, rd_job *j)
{
    for (int i = 0; i < j->n_reqs && j->status == DS_OK; i++) {
        const ds_io_req *q = &j->reqs[i];
        const rd_file *f = &r->files[q->file];
        uint8_t *tmp = malloc(q->length ? q->length : 1);
        if (!tmp) {
            j->status = ds_fail(&j->error, DS_ERR_NOMEM, "%s: verify: out of memory", f->path);
            break;
        }
        size_t got = 0;
        while (got < q->length) {
            ssize_t n = pread(f->fd_buf, tmp + got, q->length - got, (off_t)(q->offset + got));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        if (got < q->length)
            j->status = ds_fail(&j->error, DS_ERR_IO, "%s: verify: cannot re-read offset %" PRIu64,
                                f->path, q->offset + got);
        else if (memcmp(tmp, q->dst, q->length) != 0) {
            size_t k = 0;
            while (tmp[k] == ((const uint8_t *)q->dst)[k])
                k++;
            j->status = ds_fail(&j->error, DS_ERR_IO, "%s: verify: data mismatch at offset %" PRIu64,
                                f->path, q->offset + k);
        }
        free(tmp);
    }
    free(j->reqs);
    j->reqs = NULL;
    j->n_reqs = 0;
}

static ds_status stalled(ds_reader *r, int e, ds_error *err)
{
    return ds_fail(err, DS_ERR_IO, "reader (%s): cannot make progress: %s", r->be->name,
                   strerror(e));
}

ds_status ds_reader_wait(ds_reader *r, uint64_t tag, ds_error *err)
{
    if (!r)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_wait: NULL reader");
    pthread_mutex_lock(&r->mu);
    rd_job *j = find_job(r, tag);
    if (!j) {
        pthread_mutex_unlock(&r->mu);
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_reader_wait: no job with tag %" PRIu64, tag);
    }
    if (!j->complete) {
        double t0 = now_seconds();
        int e = 0;
        while (!j->complete && (e = r->be->progress(r, 1)) == 0)
            ;
        r->st.wait_seconds += now_seconds() - t0;
        if (!j->complete) {
            pthread_mutex_unlock(&r->mu);
            return stalled(r, e, err);
        }
    }
    verify_job(r, j);
    unlink_job(r, j);
    pthread_mutex_unlock(&r->mu);
    ds_status s = j->status;
    if (s != DS_OK && err)
        *err = j->error;
    free_job(j);
    return s;
}

int ds_reader_poll(ds_reader *r, uint64_t *done_tags, int max)
{
    if (!r || max <= 0 || !done_tags)
        return 0;
    pthread_mutex_lock(&r->mu);
    r->be->progress(r, 0);
    int n = 0;
    rd_job *j = r->done_head;
    while (j && n < max) {
        rd_job *next = j->dnext;
        verify_job(r, j);
        if (j->status == DS_OK) {
            done_tags[n++] = j->tag;
            unlink_job(r, j);
            free_job(j);
        }
        j = next;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

int ds_reader_pending(const ds_reader *r)
{
    return r ? r->n_jobs : 0;
}

void ds_reader_stats_get(const ds_reader *r, ds_reader_stats *out)
{
    if (!r || !out)
        return;
    pthread_mutex_lock((pthread_mutex_t *)&r->mu);
    *out = r->st;
    pthread_mutex_unlock((pthread_mutex_t *)&r->mu);
}

const char *ds_reader_backend_name(const ds_reader *r)
{
    return r && r->be ? r->be->name : "none";
}
