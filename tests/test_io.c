/* test_io.c — the asynchronous range reader (io/reader.h), for each backend
 * (io_uring when it can be set up here, and pread) with O_DIRECT on and
 * off: random unaligned ranges into unaligned buffers against a 40 MB
 * deterministic file, more requests than the queue depth, waiting out of
 * order, polling, short files, missing files, statistics, the O_DIRECT
 * fallback (tmpfs, and injected EINVAL), injected short reads and EIO,
 * and argument errors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "reader.h"

static int failures;
static char tmpdir[4096];
static char big_path[4200], small_path[4200], empty_path[4200], shm_path[4200];

#define BIG_SIZE (40u << 20)
#define SMALL_SIZE 5000u
#define TMPFS_MAGIC_NUMBER 0x01021994

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

/* ---- data ----------------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Byte i of every test file: never periodic, so a read from the wrong
 * offset cannot match. */
static uint8_t pattern(uint64_t i)
{
    return (uint8_t)(mix(i >> 3) >> ((i & 7) * 8));
}

static uint64_t rng_state = 12345;
static uint64_t rnd(uint64_t n)
{
    rng_state = mix(rng_state);
    return n ? rng_state % n : 0;
}

static void write_pattern(const char *path, uint64_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot create %s\n", path);
        exit(2);
    }
    uint8_t buf[65536];
    for (uint64_t pos = 0; pos < size;) {
        size_t n = size - pos < sizeof buf ? (size_t)(size - pos) : sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = pattern(pos + k);
        if (fwrite(buf, 1, n, f) != n) {
            fprintf(stderr, "cannot write %s\n", path);
            exit(2);
        }
        pos += n;
    }
    if (fclose(f) != 0)
        exit(2);
}

/* ---- helpers -------------------------------------------------------------- */

typedef struct config {
    ds_io_backend backend;
    int use_direct;
    int queue_depth;
    size_t max_request;
    unsigned debug;
    int verify;
} config;

static const char *backend_str(ds_io_backend b)
{
    return b == DS_IO_URING ? "uring" : b == DS_IO_PREAD ? "pread" : "auto";
}

static ds_reader *open_reader(const config *c)
{
    ds_reader_params p;
    ds_reader_params_init(&p);
    p.backend = c->backend;
    p.use_direct = c->use_direct;
    if (c->queue_depth)
        p.queue_depth = c->queue_depth;
    if (c->max_request)
        p.max_request = c->max_request;
    p.debug = c->debug;
    p.verify = c->verify;
    ds_reader *r = NULL;
    ds_error err = { 0 };
    ds_status s = ds_reader_open(&p, &r, &err);
    CHECK(s == DS_OK, "open %s: %s", backend_str(c->backend), err.msg);
    return s == DS_OK ? r : NULL;
}

static int add_file(ds_reader *r, const char *path)
{
    ds_error err = { 0 };
    int id = ds_reader_add_file(r, path, &err);
    CHECK(id >= 0, "add %s: %s", path, err.msg);
    return id;
}

/* A destination with guard bytes on both sides, at a chosen misalignment
 * from a page boundary. */
typedef struct dest {
    uint8_t *mem;
    uint8_t *dst;
    size_t len;
} dest;

#define GUARD 64

static void dest_alloc(dest *d, size_t len, size_t misalign)
{
    size_t total = len + misalign + 2 * GUARD + 4096;
    d->mem = aligned_alloc(4096, (total + 4095) & ~(size_t)4095);
    if (!d->mem)
        exit(2);
    memset(d->mem, 0xA5, total);
    d->dst = d->mem + 4096 + misalign;   /* GUARD bytes before always exist */
    d->len = len;
}

static int dest_check(const dest *d, uint64_t offset, const char *what)
{
    for (size_t k = 0; k < d->len; k++)
        if (d->dst[k] != pattern(offset + k)) {
            CHECK(0, "%s: byte %zu of range at %" PRIu64 "+%zu differs", what, k, offset, d->len);
            return 0;
        }
    for (size_t k = 1; k <= GUARD; k++)
        if (d->dst[-(ptrdiff_t)k] != 0xA5 || d->dst[d->len + k - 1] != 0xA5) {
            CHECK(0, "%s: guard bytes around range at %" PRIu64 "+%zu overwritten", what, offset,
                  d->len);
            return 0;
        }
    return 1;
}

/* Lengths that exercise every splitting path: single bytes, sub-block,
 * around block and max-request boundaries, and several max requests. */
static size_t random_length(size_t max_req)
{
    switch (rnd(8)) {
    case 0: return 1;
    case 1: return 1 + rnd(511);
    case 2: return 4096 + rnd(3) - 1;
    case 3: return 1 + rnd(20000);
    case 4: return max_req + rnd(9000) - 4500;
    case 5: return 2 * max_req + 1 + rnd(max_req);
    case 6: return 1 + rnd(200000);
    default: return 4096 * (1 + rnd(64));
    }
}

/* Misalignment of the destination: random, page aligned, or congruent with
 * the file offset (the zero-copy O_DIRECT path). */
static size_t random_misalign(uint64_t offset)
{
    switch (rnd(4)) {
    case 0: return 0;
    case 1: return offset % 4096;
    default: return 1 + rnd(4095);
    }
}

/* ---- tests ----------------------------------------------------------------- */

#define NJOBS 60
#define MAXREQ_PER_JOB 4

typedef struct job {
    dest d[MAXREQ_PER_JOB];
    ds_io_req q[MAXREQ_PER_JOB];
    int n;
    uint64_t tag;
    int collected;
} job;

static void make_jobs(job *jobs, int njobs, int file, uint64_t file_size, size_t max_req)
{
    for (int j = 0; j < njobs; j++) {
        job *jb = &jobs[j];
        jb->n = 1 + (int)rnd(MAXREQ_PER_JOB);
        jb->tag = 1000 + 7 * (uint64_t)j;
        jb->collected = 0;
        for (int i = 0; i < jb->n; i++) {
            size_t len = random_length(max_req);
            if (len > file_size)
                len = file_size;
            uint64_t off = rnd(file_size - len + 1);
            if (rnd(6) == 0)
                off = file_size - len;   /* ends exactly at end of file */
            dest_alloc(&jb->d[i], len, random_misalign(off));
            jb->q[i] = (ds_io_req){ .file = file, .offset = off, .length = len,
                                    .dst = jb->d[i].dst };
        }
    }
}

static uint64_t jobs_bytes(const job *jobs, int njobs)
{
    uint64_t b = 0;
    for (int j = 0; j < njobs; j++)
        for (int i = 0; i < jobs[j].n; i++)
            b += jobs[j].q[i].length;
    return b;
}

static void check_job(job *jb, const char *what)
{
    for (int i = 0; i < jb->n; i++)
        dest_check(&jb->d[i], jb->q[i].offset, what);
}

static void free_jobs(job *jobs, int njobs)
{
    for (int j = 0; j < njobs; j++)
        for (int i = 0; i < jobs[j].n; i++)
            free(jobs[j].d[i].mem);
}

static int submit_all(ds_reader *r, job *jobs, int njobs)
{
    for (int j = 0; j < njobs; j++) {
        ds_error err = { 0 };
        ds_status s = ds_reader_submit(r, jobs[j].q, jobs[j].n, jobs[j].tag, &err);
        CHECK(s == DS_OK, "submit job %d: %s", j, err.msg);
        if (s != DS_OK)
            return 0;
    }
    return 1;
}

/* All jobs in flight at once, collected in a shuffled order. */
static void test_random_wait(const config *c, const char *label)
{
    ds_reader *r = open_reader(c);
    if (!r)
        return;
    int f = add_file(r, big_path);
    size_t max_req = c->max_request ? c->max_request : (1u << 20);
    static job jobs[NJOBS];
    make_jobs(jobs, NJOBS, f, BIG_SIZE, max_req);
    if (submit_all(r, jobs, NJOBS)) {
        CHECK(ds_reader_pending(r) == NJOBS, "%s: pending %d", label, ds_reader_pending(r));
        int order[NJOBS];
        for (int j = 0; j < NJOBS; j++)
            order[j] = j;
        for (int j = NJOBS - 1; j > 0; j--) {
            int k = (int)rnd((uint64_t)j + 1), t = order[j];
            order[j] = order[k];
            order[k] = t;
        }
        for (int k = 0; k < NJOBS; k++) {
            job *jb = &jobs[order[k]];
            ds_error err = { 0 };
            ds_status s = ds_reader_wait(r, jb->tag, &err);
            CHECK(s == DS_OK, "%s: wait tag %" PRIu64 ": %s", label, jb->tag, err.msg);
            check_job(jb, label);
        }
        ds_reader_stats st;
        ds_reader_stats_get(r, &st);
        uint64_t want = jobs_bytes(jobs, NJOBS);
        CHECK(st.bytes_read == want, "%s: stats bytes %" PRIu64 " want %" PRIu64, label,
              st.bytes_read, want);
        CHECK(st.jobs == NJOBS && st.errors == 0, "%s: stats jobs %" PRIu64 " errors %" PRIu64,
              label, st.jobs, st.errors);
        CHECK(st.reads >= st.requests, "%s: reads %" PRIu64 " < requests %" PRIu64, label,
              st.reads, st.requests);
        if (c->debug & DS_IO_DEBUG_SHORT_READS)
            CHECK(st.short_reads > 0, "%s: no short reads counted", label);
        if (c->use_direct && !(c->debug & (DS_IO_DEBUG_REFUSE_DIRECT | DS_IO_DEBUG_EINVAL_DIRECT)) &&
            ds_reader_file_direct(r, f) == 1)
            CHECK(st.bounce_reads > 0, "%s: no bounce reads with O_DIRECT", label);
        if (c->debug & DS_IO_DEBUG_EINVAL_DIRECT)
            CHECK(ds_reader_file_direct(r, f) == 0 && st.direct_fallbacks >= 1,
                  "%s: EINVAL did not switch the file to buffered", label);
        CHECK(ds_reader_pending(r) == 0, "%s: pending %d", label, ds_reader_pending(r));
    }
    ds_reader_close(r);
    free_jobs(jobs, NJOBS);
}

/* Jobs collected by polling only. */
static void test_poll(const config *c, const char *label)
{
    ds_reader *r = open_reader(c);
    if (!r)
        return;
    int f = add_file(r, big_path);
    static job jobs[NJOBS];
    make_jobs(jobs, NJOBS, f, BIG_SIZE, 1u << 20);
    if (submit_all(r, jobs, NJOBS)) {
        int left = NJOBS, spins = 0;
        while (left > 0 && spins < 20000) {
            uint64_t tags[7];
            int n = ds_reader_poll(r, tags, 7);
            CHECK(n >= 0 && n <= 7, "%s: poll returned %d", label, n);
            for (int i = 0; i < n; i++) {
                int found = 0;
                for (int j = 0; j < NJOBS; j++)
                    if (jobs[j].tag == tags[i] && !jobs[j].collected) {
                        jobs[j].collected = found = 1;
                        check_job(&jobs[j], label);
                    }
                CHECK(found, "%s: poll returned unknown or repeated tag %" PRIu64, label, tags[i]);
                left--;
            }
            if (n == 0) {
                usleep(500);
                spins++;
            }
        }
        CHECK(left == 0, "%s: %d jobs never reported by poll", label, left);
        for (int j = 0; j < NJOBS; j++) {
            ds_error err = { 0 };
            if (!jobs[j].collected)
                CHECK(ds_reader_wait(r, jobs[j].tag, &err) == DS_OK, "%s: unpolled job: %s",
                      label, err.msg);
        }
    }
    ds_reader_close(r);
    free_jobs(jobs, NJOBS);
}

static ds_status read_one(ds_reader *r, int f, uint64_t off, size_t len, void *dst, ds_error *err)
{
    ds_io_req q = { .file = f, .offset = off, .length = len, .dst = dst };
    ds_status s = ds_reader_submit(r, &q, 1, 42, err);
    return s == DS_OK ? ds_reader_wait(r, 42, err) : s;
}

/* The small file: whole-file and tail reads succeed (O_DIRECT's partial
 * last block), anything past the end is a "short file" error naming it;
 * the empty file reads 0 bytes and fails on 1. */
static void test_eof(const config *c, const char *label)
{
    ds_reader *r = open_reader(c);
    if (!r)
        return;
    int f = add_file(r, small_path), e = add_file(r, empty_path);
    dest d;
    dest_alloc(&d, SMALL_SIZE, 3);
    ds_error err = { 0 };
    ds_status s = read_one(r, f, 0, SMALL_SIZE, d.dst, &err);
    CHECK(s == DS_OK, "%s: whole small file: %s", label, err.msg);
    dest_check(&d, 0, label);
    free(d.mem);
    dest_alloc(&d, 10, 4093);
    s = read_one(r, f, SMALL_SIZE - 10, 10, d.dst, &err);
    CHECK(s == DS_OK, "%s: small file tail: %s", label, err.msg);
    dest_check(&d, SMALL_SIZE - 10, label);

    free(d.mem);
    dest_alloc(&d, SMALL_SIZE + 1, 1);
    uint64_t offs[] = { SMALL_SIZE - 10, SMALL_SIZE, 4096, 0, SMALL_SIZE + 10000 };
    size_t lens[] = { 20, 1, SMALL_SIZE, SMALL_SIZE + 1, 5 };
    for (int i = 0; i < 5; i++) {
        memset(&err, 0, sizeof err);
        s = read_one(r, f, offs[i], lens[i], d.dst, &err);
        CHECK(s == DS_ERR_IO, "%s: read %" PRIu64 "+%zu past end gave %d", label, offs[i], lens[i],
              (int)s);
        CHECK(strstr(err.msg, small_path) && strstr(err.msg, "short file"),
              "%s: message '%s'", label, err.msg);
    }
    s = read_one(r, e, 0, 0, d.dst, &err);
    CHECK(s == DS_OK, "%s: empty read of empty file: %s", label, err.msg);
    s = read_one(r, e, 0, 1, d.dst, &err);
    CHECK(s == DS_ERR_IO && strstr(err.msg, empty_path), "%s: 1 byte of empty file: '%s'", label,
          err.msg);
    ds_reader_stats st;
    ds_reader_stats_get(r, &st);
    CHECK(st.errors == 6, "%s: stats errors %" PRIu64, label, st.errors);
    ds_reader_close(r);
    free(d.mem);
}

/* Missing file, bad arguments, duplicate tags, empty jobs, close with jobs
 * still in flight. */
static void test_errors(const config *c, const char *label)
{
    ds_reader *r = open_reader(c);
    if (!r)
        return;
    char missing[4300];
    snprintf(missing, sizeof missing, "%s/no-such-file", tmpdir);
    ds_error err = { 0 };
    CHECK(ds_reader_add_file(r, missing, &err) == -1 && err.code == DS_ERR_IO &&
          strstr(err.msg, missing) && strstr(err.msg, "No such file"),
          "%s: missing file: '%s'", label, err.msg);
    CHECK(ds_reader_add_file(r, tmpdir, &err) == -1 && strstr(err.msg, "not a regular file"),
          "%s: directory: '%s'", label, err.msg);
    int f = add_file(r, big_path);
    uint8_t buf[100];
    ds_io_req q = { .file = f + 5, .offset = 0, .length = 10, .dst = buf };
    CHECK(ds_reader_submit(r, &q, 1, 1, &err) == DS_ERR_INVALID_ARG, "%s: bad file id", label);
    q.file = f;
    q.offset = UINT64_MAX - 5;
    CHECK(ds_reader_submit(r, &q, 1, 1, &err) == DS_ERR_INVALID_ARG, "%s: offset overflow", label);
    q.offset = 100;
    CHECK(ds_reader_submit(r, &q, 1, 1, &err) == DS_OK, "%s: submit: %s", label, err.msg);
    CHECK(ds_reader_submit(r, &q, 1, 1, &err) == DS_ERR_INVALID_ARG, "%s: duplicate tag", label);
    CHECK(ds_reader_wait(r, 99, &err) == DS_ERR_INVALID_ARG, "%s: unknown tag", label);
    CHECK(ds_reader_wait(r, 1, &err) == DS_OK, "%s: wait: %s", label, err.msg);
    CHECK(ds_reader_wait(r, 1, &err) == DS_ERR_INVALID_ARG, "%s: collected twice", label);
    CHECK(ds_reader_submit(r, NULL, 0, 2, &err) == DS_OK && ds_reader_wait(r, 2, &err) == DS_OK,
          "%s: empty job: %s", label, err.msg);
    /* Left in flight on purpose: close must wait for them, not crash. */
    static uint8_t big[4][3 << 20];
    for (int i = 0; i < 4; i++) {
        ds_io_req b = { .file = f, .offset = 1 + (uint64_t)i * 1000, .length = sizeof big[i] - 1,
                        .dst = big[i] + 1 };
        CHECK(ds_reader_submit(r, &b, 1, 10 + (uint64_t)i, &err) == DS_OK, "%s: %s", label,
              err.msg);
    }
    ds_reader_close(r);
}

/* Injected EIO: the job fails with a message naming file, offset and the
 * system error; poll never reports it, wait does. */
static void test_eio(const config *c0, const char *label)
{
    config c = *c0;
    c.debug |= DS_IO_DEBUG_EIO;
    ds_reader *r = open_reader(&c);
    if (!r)
        return;
    int f = add_file(r, big_path);
    static uint8_t buf[300000];
    ds_io_req q = { .file = f, .offset = 123457, .length = sizeof buf, .dst = buf };
    ds_error err = { 0 };
    CHECK(ds_reader_submit(r, &q, 1, 5, &err) == DS_OK, "%s: %s", label, err.msg);
    uint64_t tags[4];
    for (int i = 0; i < 1000; i++) {
        CHECK(ds_reader_poll(r, tags, 4) == 0, "%s: poll reported a failed job", label);
        usleep(100);
    }
    ds_status s = ds_reader_wait(r, 5, &err);
    CHECK(s == DS_ERR_IO && strstr(err.msg, big_path) && strstr(err.msg, "offset ") &&
          strstr(err.msg, "Input/output error"), "%s: EIO message '%s'", label, err.msg);
    ds_reader_stats st;
    ds_reader_stats_get(r, &st);
    CHECK(st.errors == 1, "%s: errors %" PRIu64, label, st.errors);
    ds_reader_close(r);
}

/* tmpfs: with O_DIRECT requested the reader either uses it or falls back
 * to buffered reads; either way the data is right.  A refused probe is
 * also injected so the fallback path runs on kernels whose tmpfs accepts
 * O_DIRECT (6.6+). */
static void test_tmpfs(const config *c0, const char *label)
{
    struct statfs sf;
    if (statfs("/dev/shm", &sf) != 0 || sf.f_type != TMPFS_MAGIC_NUMBER) {
        printf("  %s: /dev/shm is not tmpfs, skipping tmpfs fallback\n", label);
        return;
    }
    snprintf(shm_path, sizeof shm_path, "/dev/shm/test_io.%d", (int)getpid());
    write_pattern(shm_path, 3u << 20);
    for (int refuse = 0; refuse < 2; refuse++) {
        config c = *c0;
        c.use_direct = 1;
        if (refuse)
            c.debug |= DS_IO_DEBUG_REFUSE_DIRECT;
        ds_reader *r = open_reader(&c);
        if (!r)
            break;
        int f = add_file(r, shm_path);
        int direct = ds_reader_file_direct(r, f);
        if (!refuse)
            printf("  %s: tmpfs file opened %s\n", label, direct ? "with O_DIRECT" : "buffered (fallback)");
        else
            CHECK(direct == 0, "%s: refused probe still direct", label);
        for (int i = 0; i < 50; i++) {
            size_t len = 1 + rnd(300000);
            uint64_t off = rnd((3u << 20) - len);
            dest d;
            dest_alloc(&d, len, random_misalign(off));
            ds_error err = { 0 };
            CHECK(read_one(r, f, off, len, d.dst, &err) == DS_OK, "%s: tmpfs read: %s", label,
                  err.msg);
            dest_check(&d, off, label);
            free(d.mem);
        }
        ds_reader_stats st;
        ds_reader_stats_get(r, &st);
        if (refuse || !direct)
            CHECK(st.direct_fallbacks == 1 && st.bounce_reads == 0,
                  "%s: fallbacks %" PRIu64 " bounce %" PRIu64, label, st.direct_fallbacks,
                  st.bounce_reads);
        ds_reader_close(r);
    }
    unlink(shm_path);
}

static void test_auto(int uring_ok)
{
    config c = { .backend = DS_IO_AUTO, .use_direct = 1 };
    ds_reader *r = open_reader(&c);
    if (!r)
        return;
    const char *name = ds_reader_backend_name(r);
    if (uring_ok)
        CHECK(strcmp(name, "io_uring") == 0, "auto picked %s", name);
    else
        CHECK(strcmp(name, "pread") == 0, "auto picked %s without io_uring", name);
    printf("auto backend: %s\n", name);
    ds_reader_close(r);
}

static void run_backend(ds_io_backend b)
{
    static const struct {
        int direct, qd;
        size_t maxreq;
        unsigned debug;
        int verify;
        const char *name;
    } variants[] = {
        { 1, 0, 0, 0, 1, "direct" },
        { 0, 0, 0, 0, 1, "buffered" },
        { 1, 8, 256 << 10, 0, 0, "direct qd8 max256K" },
        { 0, 4, 64 << 10, 0, 0, "buffered qd4 max64K" },
        { 1, 16, 0, DS_IO_DEBUG_SHORT_READS, 1, "direct short-reads" },
        { 0, 16, 0, DS_IO_DEBUG_SHORT_READS, 0, "buffered short-reads" },
        { 1, 0, 0, DS_IO_DEBUG_EINVAL_DIRECT, 1, "direct EINVAL-fallback" },
        { 1, 0, 0, DS_IO_DEBUG_REFUSE_DIRECT, 0, "direct refused" },
    };
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        config c = { .backend = b, .use_direct = variants[v].direct, .queue_depth = variants[v].qd,
                     .max_request = variants[v].maxreq, .debug = variants[v].debug,
                     .verify = variants[v].verify };
        char label[128];
        snprintf(label, sizeof label, "%s %s", backend_str(b), variants[v].name);
        int before = failures;
        test_random_wait(&c, label);
        if (v < 4) {
            test_poll(&c, label);
            test_eof(&c, label);
        }
        printf("  %-36s %s\n", label, failures == before ? "ok" : "FAILED");
    }
    config c = { .backend = b, .use_direct = 1 };
    char label[64];
    snprintf(label, sizeof label, "%s errors", backend_str(b));
    test_errors(&c, label);
    test_eio(&c, label);
    test_tmpfs(&c, backend_str(b));
    c.use_direct = 0;
    {
        ds_reader *r = open_reader(&c);
        if (r) {
            int f = add_file(r, big_path);
            CHECK(ds_reader_file_direct(r, f) == 0, "use_direct=0 opened O_DIRECT");
            ds_reader_close(r);
        }
    }
}

static void cleanup(void)
{
    unlink(big_path);
    unlink(small_path);
    unlink(empty_path);
    if (shm_path[0])
        unlink(shm_path);
    rmdir(tmpdir);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/test_io.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 2;
    }
    snprintf(big_path, sizeof big_path, "%s/big.bin", tmpdir);
    snprintf(small_path, sizeof small_path, "%s/small.bin", tmpdir);
    snprintf(empty_path, sizeof empty_path, "%s/empty.bin", tmpdir);
    write_pattern(big_path, BIG_SIZE);
    write_pattern(small_path, SMALL_SIZE);
    write_pattern(empty_path, 0);

    ds_reader_params p;
    ds_reader_params_init(&p);
    p.backend = DS_IO_URING;
    ds_reader *r = NULL;
    ds_error err = { 0 };
    int uring_ok = ds_reader_open(&p, &r, &err) == DS_OK;
    ds_reader_close(r);
    if (uring_ok) {
        printf("io_uring backend:\n");
        run_backend(DS_IO_URING);
    } else {
        printf("SKIP io_uring backend: %s\n", err.msg);
    }
    printf("pread backend:\n");
    run_backend(DS_IO_PREAD);
    test_auto(uring_ok);

    cleanup();
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all io tests passed\n");
    return 0;
}
