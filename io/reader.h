/* reader.h — asynchronous reads of byte ranges of files into caller
 * buffers, for streaming data (routed-expert slabs) from NVMe on demand.
 * Knows nothing of models: it reads bytes and reports failures naming the
 * file, the offset and the system error.
 *
 * Two backends behave identically: io_uring, and a small pool of worker
 * threads calling pread(2).  Files are opened with O_DIRECT when the
 * filesystem accepts it (falling back to buffered reads per file); ranges
 * that do not meet O_DIRECT's alignment rules go through internal bounce
 * buffers, so callers may pass any offset, length and destination.
 *
 * Threading: a reader is not thread-safe; use it from one thread at a time
 * (any thread, but callers must serialise).  The pread backend's workers
 * are internal and do not change this rule.
 *
 * Jobs: ds_reader_submit queues one or more requests under a tag; the job
 * completes when all of them have.  A completed job is collected exactly
 * once, by ds_reader_wait(tag) or — if it succeeded — by ds_reader_poll.
 * A failed job is never reported by ds_reader_poll: it stays until
 * ds_reader_wait(tag) returns its error, so a poller cannot mistake a
 * failed read for finished data.  Until then the destination bytes of a
 * job are undefined and must not be touched. */
#ifndef DS_READER_H
#define DS_READER_H

#include <stddef.h>
#include <stdint.h>
#include "dsinfer.h"

typedef enum { DS_IO_AUTO, DS_IO_URING, DS_IO_PREAD } ds_io_backend;

/* Fault injection for tests (ds_reader_params.debug); 0 in production. */
enum {
    DS_IO_DEBUG_REFUSE_DIRECT = 1,  /* the O_DIRECT probe of add_file fails with EINVAL */
    DS_IO_DEBUG_EINVAL_DIRECT = 2,  /* every O_DIRECT read fails with EINVAL (mid-run fallback) */
    DS_IO_DEBUG_SHORT_READS = 4,    /* reads are issued for about half the bytes (short-read path) */
    DS_IO_DEBUG_EIO = 8             /* every read fails with EIO */
};

typedef struct ds_reader_params {
    ds_io_backend backend;   /* DS_IO_AUTO: io_uring if it can be set up, else pread */
    int queue_depth;         /* reads in flight at once; 0 = 64 */
    size_t max_request;      /* larger ranges are split; 0 = 1 MiB (rounded up to 4 KiB) */
    int use_direct;          /* 1 = try O_DIRECT per file (default), 0 = buffered only */
    int bounce_buffers;      /* O_DIRECT bounce buffers of max_request bytes; 0 = 16 */
    int threads;             /* pread workers; 0 = min(queue_depth, 8) */
    int verify;              /* re-read each collected job with plain pread and compare */
    unsigned debug;          /* DS_IO_DEBUG_* flags */
} ds_reader_params;

void ds_reader_params_init(ds_reader_params *p);

typedef struct ds_io_req {
    int file;                /* id from ds_reader_add_file */
    uint64_t offset;
    size_t length;
    void *dst;               /* length bytes; any alignment */
} ds_io_req;

typedef struct ds_reader_stats {
    uint64_t bytes_read;     /* bytes delivered to callers' buffers */
    uint64_t bytes_device;   /* bytes the reads returned (includes O_DIRECT alignment padding) */
    uint64_t requests;       /* ds_io_req entries submitted */
    uint64_t reads;          /* read operations issued (after splitting, incl. retries) */
    uint64_t bounce_reads;   /* reads that went through a bounce buffer */
    uint64_t short_reads;    /* short reads resubmitted for the remainder */
    uint64_t retries;        /* EINTR / EAGAIN retries */
    uint64_t direct_fallbacks; /* files switched from O_DIRECT to buffered after EINVAL */
    uint64_t jobs;           /* jobs collected */
    uint64_t errors;         /* jobs that failed */
    double wait_seconds;     /* time spent blocked in ds_reader_wait */
} ds_reader_stats;

typedef struct ds_reader ds_reader;

/* p may be NULL for defaults.  DS_IO_URING fails with DS_ERR_UNSUPPORTED
 * naming the reason when io_uring cannot be set up; DS_IO_AUTO then uses pread. */
ds_status ds_reader_open(const ds_reader_params *p, ds_reader **out, ds_error *err);
/* Waits for every job still in flight, then frees everything.  NULL is fine. */
void ds_reader_close(ds_reader *r);

/* Opens path for reading and returns its id (>= 0), or -1 with err set. */
int ds_reader_add_file(ds_reader *r, const char *path, ds_error *err);
/* 1 if the file is read with O_DIRECT, 0 if buffered, -1 for a bad id. */
int ds_reader_file_direct(const ds_reader *r, int file);

/* Queues n requests as one job.  The tag must not belong to a job that has
 * not been collected yet.  n == 0 makes a job that is complete at once.
 * Errors here (bad file id, tag in use) queue nothing. */
ds_status ds_reader_submit(ds_reader *r, const ds_io_req *reqs, int n, uint64_t tag,
                           ds_error *err);
/* Blocks until the job completes, collects it and returns its status (the
 * first error of the job, with its message in err). */
ds_status ds_reader_wait(ds_reader *r, uint64_t tag, ds_error *err);
/* Non-blocking: collects up to max successfully completed jobs and stores
 * their tags; returns how many. */
int ds_reader_poll(ds_reader *r, uint64_t *done_tags, int max);
/* Jobs submitted and not yet collected. */
int ds_reader_pending(const ds_reader *r);

void ds_reader_stats_get(const ds_reader *r, ds_reader_stats *out);
/* "io_uring" or "pread". */
const char *ds_reader_backend_name(const ds_reader *r);

#endif
