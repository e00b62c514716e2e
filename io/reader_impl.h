/* reader_impl.h — internals shared by the reader front (reader.c) and its
 * backends (reader_uring.c, reader_pread.c): files, jobs, read operations,
 * the queue of operations waiting for a slot, and bounce buffers.
 *
 * Locking: all of ds_reader's fields are guarded by r->mu.  The io_uring
 * backend only ever runs in the caller's thread, so the mutex is
 * uncontended there; the pread backend's workers take it around each
 * hand-over.  Everything an operation does between being taken from the
 * queue and being finished touches only the operation itself. */
#ifndef DS_READER_IMPL_H
#define DS_READER_IMPL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include "reader.h"

typedef struct rd_file {
    char *path;
    int fd_buf;              /* buffered descriptor: always open */
    int fd_direct;           /* O_DIRECT descriptor, -1 when not used */
    int direct;              /* reads still go through fd_direct */
    size_t align;            /* O_DIRECT offset/length/memory alignment */
} rd_file;

typedef struct rd_job rd_job;

/* One read system call's worth of work (resubmitted until complete). */
typedef struct rd_op {
    rd_job *job;
    int file;
    int fd;                  /* descriptor chosen at dispatch time */
    int fd_buf;              /* the file's buffered descriptor (fallback, EOF tail) */
    int direct;              /* fd is the O_DIRECT one */
    size_t align;            /* the file's O_DIRECT alignment */
    uint64_t seq;            /* queue order across the two queues */
    uint64_t off;            /* file offset of the read */
    size_t len;              /* bytes the read covers */
    size_t need;             /* bytes that must arrive (< len only at the aligned tail) */
    size_t done;             /* bytes already read */
    uint8_t *buf;            /* destination of the read: dst, or the bounce slot */
    int bounce;              /* needs a bounce slot */
    int slot;                /* bounce slot held, -1 when none */
    uint8_t *dst;            /* caller bytes: copy `want` bytes from buf + skip */
    size_t skip, want;
    int errnum;              /* errno of a failure, or -1 for end of file */
    uint64_t err_off;        /* file offset of the failed read */
    /* counters carried back to the shared stats when the op finishes */
    uint32_t n_reads, n_short, n_retries;
    int fell_back;           /* switched to buffered after an O_DIRECT EINVAL */
    struct rd_op *next;      /* queue link */
} rd_op;

struct rd_job {
    uint64_t tag;
    int ops_left;            /* ops not finished yet */
    int n_ops;
    rd_op *ops;
    ds_io_req *reqs;         /* copy of the requests, kept for verify */
    int n_reqs;
    ds_status status;
    ds_error error;          /* first failure of the job */
    rd_job *hnext;           /* tag hash chain */
    rd_job *dnext, *dprev;   /* list of completed, uncollected jobs */
    int complete;
};

typedef struct rd_queue { rd_op *head, *tail; int n; } rd_queue;

typedef struct rd_backend {
    const char *name;
    /* Ops were queued: start what fits.  Called with r->mu held. */
    void (*kick)(ds_reader *r);
    /* Reap finished reads and start queued ones; when block is set, wait
     * until at least one op finished.  Called with r->mu held (the pread
     * backend releases it while waiting).  Returns 0, or an errno when it
     * cannot make progress (nothing in flight, or the ring failed). */
    int (*progress)(ds_reader *r, int block);
    void (*close)(ds_reader *r);
} rd_backend;

#define RD_HASH 256

struct ds_reader {
    ds_reader_params p;
    const rd_backend *be;
    void *be_state;
    pthread_mutex_t mu;

    rd_file *files;
    int n_files, cap_files;

    rd_job *hash[RD_HASH];
    rd_job *done_head, *done_tail;   /* completed jobs in completion order */
    int n_jobs;              /* submitted, not collected */
    int n_incomplete;        /* submitted, not complete */
    uint64_t seq;

    rd_queue q_plain;        /* ops reading straight into caller memory */
    rd_queue q_bounce;       /* ops waiting for a bounce slot */
    int inflight;

    uint8_t *bounce_mem;     /* bounce_buffers * max_request bytes, page aligned */
    int *free_slots;
    int n_free_slots;

    ds_reader_stats st;
};

/* Next op to start, with its bounce slot and descriptor set; NULL if none
 * can start now.  Ops of an already failed job finish without reading. */
rd_op *rd_next_op(ds_reader *r);
/* Bytes the next read of op should ask for, and where (respecting
 * DS_IO_DEBUG_SHORT_READS). */
size_t rd_op_read_len(const ds_reader *r, const rd_op *op);
/* Result of one read of op: bytes (>= 0) or -errno.  Returns 1 when the op
 * is finished (successfully or not), 0 when it must be issued again. */
int rd_op_result(ds_reader *r, rd_op *op, ssize_t res);
/* Copies the wanted bytes out of a bounce slot; safe without r->mu. */
void rd_op_copy_out(rd_op *op);
/* Accounts a finished op (r->mu held): releases its slot, records errors,
 * completes its job when it was the last. */
void rd_op_finish(ds_reader *r, rd_op *op);

extern const rd_backend rd_backend_uring;
extern const rd_backend rd_backend_pread;
/* Set up backend state; on failure return a status with err filled. */
ds_status rd_uring_init(ds_reader *r, ds_error *err);
ds_status rd_pread_init(ds_reader *r, ds_error *err);

#endif
