/* engine.c — the scheduler behind serving and batch processing: a pool of
 * context slots, a FIFO of waiting requests, and continuous batching (one
 * ds_eval_batch per step over every running sequence: decoders one token
 * each, prefills a chunk within the step's token budget).  Finished
 * sequences leave their KV in the slot so a later request with the same
 * prefix (a shared system prompt) skips recomputing it. */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "json_schema.h"
#include "model.h"

typedef struct req {
    uint64_t id;
    int32_t *prompt;
    int n_prompt;
    int max_tokens, ignore_eos;
    int sample_vocab;
    int32_t *stop;
    int n_stop;
    ds_sampler *smp;
    ds_token_fn cb;
    void *user;
    int slot;              /* -1 while waiting */
    int fed;               /* prompt tokens in the cache (reused ones included) */
    int generated;
    int32_t last;          /* last sampled token, fed at the next step */
    int cancel;
    ds_json_matcher *jm;   /* JSON constraint (NULL = none) */
    const ds_json_vocab *jv;
    uint8_t *allowed;      /* [vocab]: this step's token mask */
    int n_allowed;
    struct req *next;
} req;

typedef struct slot {
    ds_context *ctx;
    int32_t *hist;         /* the tokens at cache positions 0 .. n_hist-1 */
    int n_hist;
    req *r;
    uint64_t last_used;
} slot;

struct ds_engine {
    ds_model *m;
    ds_engine_params p;
    int vocab;
    slot *slots;
    pthread_mutex_t mu;
    req *wait_head, *wait_tail;
    uint64_t next_id, clock;
    ds_engine_stats st;
    float *logits;         /* [max_seqs][vocab] */
    float *masked;         /* [vocab]: logits of a constrained sequence, masked */
    ds_batch_item *items;
    int *item_slot;
};

void ds_engine_params_init(ds_engine_params *p)
{
    p->max_seqs = 4;
    p->ctx_size = 0;
    p->kv_type = DS_KV_FP8;
    p->max_step_tokens = 512;
    p->prefill_chunk = 256;
    p->prefix_reuse = 1;
    p->precision = DS_PRECISION_F32;
}

static void free_req(req *r)
{
    if (!r)
        return;
    ds_sampler_free(r->smp);
    ds_json_matcher_free(r->jm);
    free(r->allowed);
    free(r->prompt);
    free(r->stop);
    free(r);
}

ds_status ds_engine_create(ds_model *m, const ds_engine_params *p, ds_engine **out, ds_error *err)
{
    ds_error_clear(err);
    if (!m || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_engine_create: NULL argument");
    ds_engine_params def;
    ds_engine_params_init(&def);
    if (!p)
        p = &def;
    if (p->max_seqs < 1 || p->max_seqs > 4096)
        return ds_fail(err, DS_ERR_INVALID_ARG, "engine: max_seqs %d is not in [1, 4096]", p->max_seqs);
    if (p->max_step_tokens < 1 || p->prefill_chunk < 1)
        return ds_fail(err, DS_ERR_INVALID_ARG, "engine: max_step_tokens %d and prefill_chunk %d must be >= 1",
                       p->max_step_tokens, p->prefill_chunk);
    if (p->ctx_size < 0)
        return ds_fail(err, DS_ERR_INVALID_ARG, "engine: ctx_size %d is negative", p->ctx_size);
    ds_engine *e = ds_calloc(1, sizeof *e, err);
    if (!e)
        return DS_ERR_NOMEM;
    e->m = m;
    e->p = *p;
    if (e->p.max_step_tokens < e->p.max_seqs)
        e->p.max_step_tokens = e->p.max_seqs;    /* every decoder must fit in a step */
    e->vocab = m->cfg.vocab_size;
    e->next_id = 1;
    pthread_mutex_init(&e->mu, NULL);
    ds_status st = DS_ERR_NOMEM;
    e->slots = ds_calloc((size_t)p->max_seqs, sizeof(slot), err);
    e->logits = ds_calloc((size_t)p->max_seqs * e->vocab, sizeof(float), err);
    e->masked = ds_calloc((size_t)e->vocab, sizeof(float), err);
    e->items = ds_calloc((size_t)p->max_seqs, sizeof(ds_batch_item), err);
    e->item_slot = ds_calloc((size_t)p->max_seqs, sizeof(int), err);
    if (!e->slots || !e->logits || !e->masked || !e->items || !e->item_slot)
        goto fail;
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.ctx_size = p->ctx_size;
    cp.kv_type = p->kv_type;
    cp.precision = p->precision;
    for (int i = 0; i < p->max_seqs; i++) {
        st = ds_context_create(m, &cp, &e->slots[i].ctx, err);
        if (st != DS_OK)
            goto fail;
        /* the stats count positions in an int */
        if (i == 0 && (int64_t)ds_context_size(e->slots[0].ctx) * p->max_seqs > INT_MAX) {
            st = ds_fail(err, DS_ERR_INVALID_ARG, "engine: %d sequences of %d positions exceed 2^31 - 1 positions",
                         p->max_seqs, ds_context_size(e->slots[0].ctx));
            goto fail;
        }
        e->slots[i].hist = ds_calloc((size_t)ds_context_size(e->slots[i].ctx), sizeof(int32_t), err);
        if (!e->slots[i].hist) {
            st = DS_ERR_NOMEM;
            goto fail;
        }
    }
    e->p.ctx_size = ds_context_size(e->slots[0].ctx);
    e->st.slots = p->max_seqs;
    e->st.kv_capacity = p->max_seqs * e->p.ctx_size;
    *out = e;
    return DS_OK;
fail:
    ds_engine_free(e);
    return st;
}

void ds_engine_free(ds_engine *e)
{
    if (!e)
        return;
    /* every request gets its final callback (as cancelled), so whatever the
     * application holds for it is released */
    for (req *r = e->wait_head, *n; r; r = n) {
        n = r->next;
        r->cb(r->user, r->id, -1, NULL, DS_FINISH_CANCELLED);
        free_req(r);
    }
    for (int i = 0; e->slots && i < e->p.max_seqs; i++) {
        if (e->slots[i].r)
            e->slots[i].r->cb(e->slots[i].r->user, e->slots[i].r->id, -1, NULL, DS_FINISH_CANCELLED);
        free_req(e->slots[i].r);
        ds_context_free(e->slots[i].ctx);
        free(e->slots[i].hist);
    }
    pthread_mutex_destroy(&e->mu);
    free(e->slots);
    free(e->logits);
    free(e->masked);
    free(e->items);
    free(e->item_slot);
    free(e);
}

static int32_t *copy_ids(const int32_t *ids, int n, ds_error *err)
{
    int32_t *c = ds_calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t), err);
    if (c && n > 0)
        memcpy(c, ids, sizeof(int32_t) * (size_t)n);
    return c;
}

/* The request's JSON matcher and mask buffer. */
static ds_status json_constraint(ds_engine *e, req *r, const ds_request *rq, ds_error *err)
{
    if (!rq->json_vocab)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_engine_submit: json_schema needs json_vocab");
    ds_status st = ds_json_matcher_create(rq->json_schema, &r->jm, err);
    if (st != DS_OK)
        return st;
    r->jv = rq->json_vocab;
    r->allowed = ds_calloc((size_t)e->vocab, 1, err);
    return r->allowed ? DS_OK : DS_ERR_NOMEM;
}

ds_status ds_engine_submit(ds_engine *e, const ds_request *rq, uint64_t *id, ds_error *err)
{
    ds_error_clear(err);
    if (!e || !rq || !rq->on_token || (!rq->prompt && rq->n_prompt > 0) || (!rq->stop_ids && rq->n_stop_ids > 0))
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_engine_submit: NULL argument, callback, prompt or stop_ids");
    if (rq->n_prompt < 1)
        return ds_fail(err, DS_ERR_INPUT, "the prompt is empty");
    if (rq->n_prompt >= e->p.ctx_size)
        return ds_fail(err, DS_ERR_INPUT, "the prompt has %d tokens; the context holds %d (prompt + at least one generated token)",
                       rq->n_prompt, e->p.ctx_size);
    if (rq->max_tokens < 0 || rq->n_stop_ids < 0 || rq->sample_vocab < 0)
        return ds_fail(err, DS_ERR_INVALID_ARG, "max_tokens %d, n_stop_ids %d and sample_vocab %d must be >= 0",
                       rq->max_tokens, rq->n_stop_ids, rq->sample_vocab);
    for (int i = 0; i < rq->n_prompt; i++)
        if (rq->prompt[i] < 0 || rq->prompt[i] >= e->vocab)
            return ds_fail(err, DS_ERR_INPUT, "prompt token %d (id %d) is outside the vocabulary [0, %d)", i,
                           rq->prompt[i], e->vocab);
    req *r = ds_calloc(1, sizeof *r, err);
    if (!r)
        return DS_ERR_NOMEM;
    r->prompt = copy_ids(rq->prompt, rq->n_prompt, err);
    r->stop = copy_ids(rq->stop_ids, rq->n_stop_ids, err);
    ds_status st = r->prompt && r->stop ? ds_sampler_create(&rq->sampling, &r->smp, err) : DS_ERR_NOMEM;
    if (st == DS_OK && rq->json_schema)
        st = json_constraint(e, r, rq, err);
    if (st != DS_OK) {
        free_req(r);
        return st;
    }
    r->n_prompt = rq->n_prompt;
    r->n_stop = rq->n_stop_ids;
    r->max_tokens = rq->max_tokens;
    r->ignore_eos = rq->ignore_eos;
    r->sample_vocab = rq->sample_vocab > 0 && rq->sample_vocab < e->vocab ? rq->sample_vocab : e->vocab;
    r->cb = rq->on_token;
    r->user = rq->user;
    r->slot = -1;
    pthread_mutex_lock(&e->mu);
    r->id = e->next_id++;
    if (e->wait_tail)
        e->wait_tail->next = r;
    else
        e->wait_head = r;
    e->wait_tail = r;
    e->st.submitted++;
    e->st.waiting++;
    pthread_mutex_unlock(&e->mu);
    if (id)
        *id = r->id;
    return DS_OK;
}

void ds_engine_cancel(ds_engine *e, uint64_t id)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    for (req *r = e->wait_head; r; r = r->next)
        if (r->id == id)
            __atomic_store_n(&r->cancel, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < e->p.max_seqs; i++)
        if (e->slots[i].r && e->slots[i].r->id == id)
            __atomic_store_n(&e->slots[i].r->cancel, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&e->mu);
}

void ds_engine_get_stats(ds_engine *e, ds_engine_stats *s)
{
    if (!s)
        return;
    if (!e) {
        memset(s, 0, sizeof *s);
        return;
    }
    pthread_mutex_lock(&e->mu);
    *s = e->st;
    s->kv_used = 0;
    for (int i = 0; i < e->p.max_seqs; i++)
        if (e->slots[i].r)
            s->kv_used += e->slots[i].n_hist;
    pthread_mutex_unlock(&e->mu);
}

/* A finished request: the final callback runs outside the lock. */
typedef struct done {
    req *r;
    ds_finish_reason why;
} done;

static void finish_slot(ds_engine *e, int i, ds_finish_reason why, done *d, int *nd)
{
    slot *s = &e->slots[i];
    d[(*nd)++] = (done){s->r, why};
    s->r = NULL;
    s->last_used = ++e->clock;
    e->st.active--;
    e->st.finished++;
    if (why == DS_FINISH_CANCELLED)
        e->st.cancelled++;
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* Picks the free slot sharing the longest prefix with r (least recently
 * used on ties) and rewinds its cache to the reusable part. */
static void admit(ds_engine *e, req *r)
{
    int best = -1, best_len = -1;
    for (int i = 0; i < e->p.max_seqs; i++) {
        slot *s = &e->slots[i];
        if (s->r)
            continue;
        int l = e->p.prefix_reuse ? common_prefix(s->hist, s->n_hist, r->prompt, r->n_prompt) : 0;
        if (l > best_len || (l == best_len && s->last_used < e->slots[best].last_used)) {
            best = i;
            best_len = l;
        }
    }
    slot *s = &e->slots[best];
    int reuse = best_len < r->n_prompt ? best_len : r->n_prompt - 1;   /* the last prompt token makes the logits */
    ds_context_truncate(s->ctx, reuse, NULL);
    s->n_hist = reuse;
    s->r = r;
    r->slot = best;
    r->fed = reuse;
    e->st.reused_prompt_tokens += (uint64_t)reuse;
    e->st.prompt_tokens += (uint64_t)r->n_prompt;
    e->st.active++;
}

static int free_slots(const ds_engine *e)
{
    int n = 0;
    for (int i = 0; i < e->p.max_seqs; i++)
        n += e->slots[i].r == NULL;
    return n;
}

/* Under the lock: drop cancelled requests, admit waiting ones, and lay out
 * this step's batch. Returns the number of items. */
static int plan(ds_engine *e, done *d, int *nd, int max_dropped)
{
    for (req **pp = &e->wait_head; *pp && max_dropped > 0;) {
        req *r = *pp;
        if (__atomic_load_n(&r->cancel, __ATOMIC_RELAXED)) {
            max_dropped--;
            *pp = r->next;
            if (e->wait_tail == r) {
                e->wait_tail = NULL;
                for (req *q = e->wait_head; q; q = q->next)
                    e->wait_tail = q;
            }
            e->st.waiting--;
            e->st.finished++;
            e->st.cancelled++;
            d[(*nd)++] = (done){r, DS_FINISH_CANCELLED};
        } else
            pp = &r->next;
    }
    for (int i = 0; i < e->p.max_seqs; i++)
        if (e->slots[i].r && __atomic_load_n(&e->slots[i].r->cancel, __ATOMIC_RELAXED))
            finish_slot(e, i, DS_FINISH_CANCELLED, d, nd);
    while (e->wait_head && free_slots(e) > 0) {
        req *r = e->wait_head;
        e->wait_head = r->next;
        if (!e->wait_head)
            e->wait_tail = NULL;
        r->next = NULL;
        e->st.waiting--;
        admit(e, r);
    }
    int n = 0, budget = e->p.max_step_tokens;
    for (int pass = 0; pass < 2; pass++)            /* decoders first, then prefills */
        for (int i = 0; i < e->p.max_seqs; i++) {
            slot *s = &e->slots[i];
            req *r = s->r;
            if (!r || (pass == 0) != (r->fed == r->n_prompt) || budget <= 0)
                continue;
            ds_batch_item *it = &e->items[n];
            it->ctx = s->ctx;
            it->logits = e->logits + (size_t)n * e->vocab;
            it->all_logits = 0;
            if (pass == 0) {
                it->tokens = &r->last;
                it->n = 1;
            } else {
                int c = r->n_prompt - r->fed;
                c = c < e->p.prefill_chunk ? c : e->p.prefill_chunk;
                c = c < budget ? c : budget;
                it->tokens = r->prompt + r->fed;
                it->n = c;
            }
            budget -= it->n;
            e->item_slot[n++] = i;
        }
    return n;
}

static int is_stop(const req *r, int32_t tok, int eos)
{
    if (tok == eos && (!r->ignore_eos || r->jm))
        return 1;
    if (r->jm && ds_json_matcher_done(r->jm))
        return 1;                            /* the JSON value is complete: nothing may follow */
    for (int i = 0; i < r->n_stop; i++)
        if (r->stop[i] == tok)
            return 1;
    return 0;
}

/* After the forward pass: record fed tokens, sample where a position produced
 * a next token, and decide who finishes.  Token callbacks are collected in
 * tok[] to run outside the lock. */
typedef struct emit {
    req *r;
    int32_t token;
    const float *logits;
} emit;

/* Samples from the logits with the tokens the grammar forbids at -inf, and
 * feeds the chosen token to the matcher. */
static int32_t sample_constrained(ds_engine *e, req *r, const float *logits, int32_t eos)
{
    int n = r->sample_vocab, best = -1;
    for (int i = 0; i < n; i++) {
        e->masked[i] = r->allowed[i] ? logits[i] : -INFINITY;
        if (r->allowed[i] && (best < 0 || logits[i] > logits[best]))
            best = i;
    }
    int32_t tok = ds_sampler_sample(r->smp, e->masked, n);
    if (tok < 0 || tok >= n || !r->allowed[tok])
        tok = best;                          /* rounding picked a zero-probability token */
    size_t len;
    const char *b = tok == eos ? NULL : js_vocab_bytes(r->jv, tok, &len);
    if (b)
        ds_json_matcher_feed(r->jm, b, len);
    return tok;
}

/* Token masks of the constrained sequences that sample this step.  Runs
 * outside the lock: only the stepping thread touches running requests. */
static void compute_masks(ds_engine *e, int n)
{
    req *todo[n];
    int m = 0;
    for (int k = 0; k < n; k++) {
        req *r = e->slots[e->item_slot[k]].r;
        if (r->jm && r->fed + e->items[k].n >= r->n_prompt)
            todo[m++] = r;
    }
    int32_t eos = e->m->cfg.eos_token_id;
#pragma omp parallel for schedule(dynamic) if (m > 1)
    for (int k = 0; k < m; k++)
        todo[k]->n_allowed = ds_json_matcher_allowed(todo[k]->jm, todo[k]->jv, eos, todo[k]->allowed,
                                                     todo[k]->sample_vocab);
}

static void absorb(ds_engine *e, int n, emit *em, int *nem, done *d, int *nd)
{
    for (int k = 0; k < n; k++) {
        ds_batch_item *it = &e->items[k];
        int i = e->item_slot[k];
        slot *s = &e->slots[i];
        req *r = s->r;
        memcpy(s->hist + s->n_hist, it->tokens, sizeof(int32_t) * (size_t)it->n);
        s->n_hist += it->n;
        if (r->fed < r->n_prompt) {
            r->fed += it->n;
            if (r->fed < r->n_prompt)
                continue;                            /* more prompt to go */
        }
        if (r->jm && r->n_allowed == 0) {
            finish_slot(e, i, DS_FINISH_ERROR, d, nd);     /* the grammar allows no token (cannot happen) */
            continue;
        }
        int32_t tok;
        if (!r->jm)
            tok = ds_sampler_sample(r->smp, it->logits, r->sample_vocab);
        else if (ds_logits_have_nan(it->logits, r->sample_vocab))
            tok = -1;
        else
            tok = sample_constrained(e, r, it->logits, e->m->cfg.eos_token_id);
        if (tok < 0) {
            finish_slot(e, i, DS_FINISH_ERROR, d, nd);     /* NaN logits: a corrupt weight */
            continue;
        }
        r->generated++;
        e->st.generated_tokens++;
        em[(*nem)++] = (emit){r, tok, it->logits};
        r->last = tok;
        if (is_stop(r, tok, e->m->cfg.eos_token_id))
            finish_slot(e, i, DS_FINISH_STOP, d, nd);
        else if ((r->max_tokens && r->generated >= r->max_tokens) || s->n_hist >= e->p.ctx_size)
            finish_slot(e, i, DS_FINISH_LENGTH, d, nd);
    }
}

int ds_engine_step(ds_engine *e, ds_error *err)
{
    ds_error_clear(err);
    if (!e) {
        ds_fail(err, DS_ERR_INVALID_ARG, "ds_engine_step: NULL engine");
        return -1;
    }
    const int cap = e->p.max_seqs;
    done d[2 * cap + 64];
    emit em[cap];
    int nd = 0, nem = 0, rc = 0;
    pthread_mutex_lock(&e->mu);
    /* at most 64 waiting cancellations per step so d[] cannot overflow */
    int n = plan(e, d, &nd, 64);
    pthread_mutex_unlock(&e->mu);

    ds_status st = n ? ds_eval_batch(e->items, n, err) : DS_OK;
    if (st == DS_OK && n)
        compute_masks(e, n);

    pthread_mutex_lock(&e->mu);
    e->st.steps += n > 0;
    if (st == DS_OK)
        absorb(e, n, em, &nem, d, &nd);
    else {
        for (int k = 0; k < n; k++)
            finish_slot(e, e->item_slot[k], DS_FINISH_ERROR, d, &nd);
        rc = -1;
    }
    pthread_mutex_unlock(&e->mu);

    for (int k = 0; k < nem; k++) {
        req *r = em[k].r;
        if (r->cb(r->user, r->id, em[k].token, em[k].logits, DS_FINISH_NONE)) {
            /* cancel asked from the callback: only requests still running can be */
            int still = 0;
            for (int j = 0; j < nd; j++)
                still |= d[j].r == r;
            if (!still)
                ds_engine_cancel(e, r->id);
        }
    }
    for (int k = 0; k < nd; k++) {
        d[k].r->cb(d[k].r->user, d[k].r->id, -1, NULL, d[k].why);
        free_req(d[k].r);
    }
    if (rc < 0)
        return -1;
    pthread_mutex_lock(&e->mu);
    int left = e->st.active + e->st.waiting;
    pthread_mutex_unlock(&e->mu);
    return left;
}
