/* reader_pread.c — the portable backend of the range reader: a few worker
 * threads take operations from the reader's queue and pread(2) them, so
 * reads proceed in the background exactly as with io_uring.  Workers hold
 * r->mu only to take and hand back operations; the reads and bounce
 * copies run unlocked. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"
#include "reader_impl.h"

typedef struct pread_state {
    pthread_t *threads;
    int n_threads;
    pthread_cond_t work;     /* ops queued, or stop */
    pthread_cond_t done;     /* an op finished */
    int stop;
    int inflight;            /* ops taken by workers and not finished */
} pread_state;

/* Reads until the op is finished; r->mu is not held. */
static void run_op(ds_reader *r, rd_op *op)
{
    for (;;) {
        size_t n = rd_op_read_len(r, op);
        ssize_t res = pread(op->fd, op->buf + op->done, n, (off_t)(op->off + op->done));
        if (rd_op_result(r, op, res < 0 ? -errno : res))
            break;
    }
    rd_op_copy_out(op);
}

static void *worker(void *arg)
{
    ds_reader *r = arg;
    pread_state *ps = r->be_state;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        rd_op *op = NULL;
        while (!ps->stop && !(op = rd_next_op(r)))
            pthread_cond_wait(&ps->work, &r->mu);
        if (!op)
            break;
        ps->inflight++;
        pthread_mutex_unlock(&r->mu);
        run_op(r, op);
        pthread_mutex_lock(&r->mu);
        ps->inflight--;
        rd_op_finish(r, op);
        pthread_cond_broadcast(&ps->done);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void pread_kick(ds_reader *r)
{
    pread_state *ps = r->be_state;
    pthread_cond_broadcast(&ps->work);
}

static int pread_progress(ds_reader *r, int block)
{
    pread_state *ps = r->be_state;
    if (!block)
        return 0;   /* workers finish ops on their own */
    if (ps->inflight == 0 && !r->q_plain.head && !r->q_bounce.head)
        return EDEADLK;
    pthread_cond_wait(&ps->done, &r->mu);
    return 0;
}

static void stop_workers(ds_reader *r, pread_state *ps)
{
    pthread_mutex_lock(&r->mu);
    ps->stop = 1;
    pthread_cond_broadcast(&ps->work);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < ps->n_threads; i++)
        pthread_join(ps->threads[i], NULL);
    ps->n_threads = 0;
}

static void pread_close(ds_reader *r)
{
    pread_state *ps = r->be_state;
    if (!ps)
        return;
    stop_workers(r, ps);
    pthread_cond_destroy(&ps->work);
    pthread_cond_destroy(&ps->done);
    free(ps->threads);
    free(ps);
    r->be_state = NULL;
}

ds_status rd_pread_init(ds_reader *r, ds_error *err)
{
    pread_state *ps = ds_calloc(1, sizeof *ps, err);
    if (!ps)
        return DS_ERR_NOMEM;
    ps->threads = ds_calloc((size_t)r->p.threads, sizeof *ps->threads, err);
    if (!ps->threads) {
        free(ps);
        return DS_ERR_NOMEM;
    }
    pthread_cond_init(&ps->work, NULL);
    pthread_cond_init(&ps->done, NULL);
    r->be_state = ps;
    for (int i = 0; i < r->p.threads; i++) {
        int e = pthread_create(&ps->threads[i], NULL, worker, r);
        if (e) {
            pread_close(r);
            return ds_fail(err, DS_ERR_UNSUPPORTED, "pread reader: cannot start worker thread: %s",
                           strerror(e));
        }
        ps->n_threads++;
    }
    return DS_OK;
}

const rd_backend rd_backend_pread = {
    .name = "pread",
    .kick = pread_kick,
    .progress = pread_progress,
    .close = pread_close,
};
