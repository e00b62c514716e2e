/* reader_uring.c — the io_uring backend of the range reader: owns the ring,
 * keeps at most queue_depth reads in flight, reissues short reads and
 * retries, and reaps completions.  Everything runs in the caller's thread,
 * inside ds_reader_wait / ds_reader_poll / ds_reader_submit. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <liburing.h>
#include "internal.h"
#include "reader_impl.h"

typedef struct uring_state {
    struct io_uring ring;
    int inflight;            /* SQEs prepared and not yet reaped */
    int depth;
    int registered;          /* bounce memory is registered as fixed buffer 0 */
    rd_op *again_head;       /* ops to reissue (they keep their bounce slot) */
} uring_state;

/* Returns 0 when the SQ ring is full (cannot happen while inflight stays
 * below the SQ size, but the op is then kept for the next round). */
static int prep_read(uring_state *u, rd_op *op, size_t n)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        op->next = u->again_head;
        u->again_head = op;
        return 0;
    }
    void *buf = op->buf + op->done;
    uint64_t off = op->off + op->done;
    if (op->slot >= 0 && u->registered)
        io_uring_prep_read_fixed(sqe, op->fd, buf, (unsigned)n, off, 0);
    else
        io_uring_prep_read(sqe, op->fd, buf, (unsigned)n, off);
    io_uring_sqe_set_data(sqe, op);
    u->inflight++;
    return 1;
}

/* Prepares reissues first (they hold resources), then queued ops. */
static void fill(ds_reader *r, uring_state *u)
{
    while (u->inflight < u->depth && u->again_head) {
        rd_op *op = u->again_head;
        u->again_head = op->next;
        op->next = NULL;
        if (!prep_read(u, op, rd_op_read_len(r, op)))
            return;
    }
    rd_op *op;
    while (u->inflight < u->depth && (op = rd_next_op(r)))
        if (!prep_read(u, op, rd_op_read_len(r, op)))
            return;
}

/* Submits prepared SQEs; transient errors leave them in the ring for the
 * next call.  Returns 0 or an errno. */
static int submit(uring_state *u, int wait_nr)
{
    int ret = wait_nr ? io_uring_submit_and_wait(&u->ring, (unsigned)wait_nr)
                      : io_uring_submit(&u->ring);
    if (ret >= 0 || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY)
        return 0;
    return -ret;
}

static void handle_cqe(ds_reader *r, uring_state *u, rd_op *op, int res)
{
    u->inflight--;
    if (!rd_op_result(r, op, res)) {
        op->next = u->again_head;
        u->again_head = op;
        return;
    }
    rd_op_copy_out(op);
    rd_op_finish(r, op);
}

static int reap(ds_reader *r, uring_state *u)
{
    struct io_uring_cqe *cqe;
    int n = 0;
    while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
        rd_op *op = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&u->ring, cqe);
        handle_cqe(r, u, op, res);
        n++;
    }
    return n;
}

static void uring_kick(ds_reader *r)
{
    uring_state *u = r->be_state;
    fill(r, u);
    submit(u, 0);
}

static int uring_progress(ds_reader *r, int block)
{
    uring_state *u = r->be_state;
    int got = reap(r, u);
    fill(r, u);
    if (!block || got > 0)
        return submit(u, 0);
    if (u->inflight == 0)
        return EDEADLK;   /* nothing in flight and nothing startable */
    int e = submit(u, 1);
    if (e)
        return e;
    reap(r, u);
    fill(r, u);
    return submit(u, 0);
}

static void uring_close(ds_reader *r)
{
    uring_state *u = r->be_state;
    if (!u)
        return;
    if (u->registered)
        io_uring_unregister_buffers(&u->ring);
    io_uring_queue_exit(&u->ring);
    free(u);
    r->be_state = NULL;
}

ds_status rd_uring_init(ds_reader *r, ds_error *err)
{
    uring_state *u = ds_calloc(1, sizeof *u, err);
    if (!u)
        return DS_ERR_NOMEM;
    u->depth = r->p.queue_depth;
    int ret = io_uring_queue_init((unsigned)u->depth, &u->ring, 0);
    if (ret < 0) {
        free(u);
        return ds_fail(err, DS_ERR_UNSUPPORTED, "io_uring unavailable: io_uring_queue_init: %s%s",
                       strerror(-ret),
                       ret == -EPERM ? " (blocked by seccomp or kernel.io_uring_disabled)" :
                       ret == -ENOSYS ? " (kernel built without io_uring)" : "");
    }
    if (r->bounce_mem) {
        /* Fixed buffers save the kernel pinning bounce pages on every read;
         * failure (e.g. RLIMIT_MEMLOCK) just means plain reads. */
        struct iovec iov = { r->bounce_mem, (size_t)r->p.bounce_buffers * r->p.max_request };
        u->registered = io_uring_register_buffers(&u->ring, &iov, 1) == 0;
    }
    r->be_state = u;
    return DS_OK;
}

const rd_backend rd_backend_uring = {
    .name = "io_uring",
    .kick = uring_kick,
    .progress = uring_progress,
    .close = uring_close,
};
