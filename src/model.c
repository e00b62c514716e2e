/* model.c — the DeepSeek forward pass over one step of a batch: the new
 * tokens of one or more sequences.  Embeddings, then per block RMSNorm ->
 * MLA (+ indexer) per sequence -> residual -> RMSNorm -> FFN/MoE over all
 * tokens together -> residual, then final norm and lm_head.  A sequence may
 * bring several tokens (prefill, also at start > 0: chunked prefill) or one
 * (decode). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"

typedef struct step {
    const ds_batch_item *items;
    int n_items;
    int T;                 /* tokens in the step */
    int *off;              /* first row of item i */
    int *start;            /* cache position of item i's first token */
    ds_tok_ref *tr;        /* sequence and position of every row */
    ds_mla_seq *seqs;      /* the same per sequence, for attention */
    int bf16;              /* every context asked for DS_PRECISION_BF16 */
} step;

static ds_status check_items(const ds_batch_item *items, int n, ds_error *err)
{
    for (int i = 0; i < n; i++) {
        const ds_context *c = items[i].ctx;
        char who[32] = "";      /* which item, when a batch has several */
        if (n > 1)
            snprintf(who, sizeof who, "batch item %d: ", i);
        if (items[i].n <= 0)
            return ds_fail(err, DS_ERR_INVALID_ARG, "%sno tokens to evaluate", who);
        if (items[i].n > c->ctx_size - c->pos)
            return ds_fail(err, DS_ERR_CONTEXT_FULL,
                           "%scontext full: %d cached + %d new tokens exceed the context size %d (raise --ctx-size)",
                           who, c->pos, items[i].n, c->ctx_size);
        for (int t = 0; t < items[i].n; t++)
            if (items[i].tokens[t] < 0 || items[i].tokens[t] >= c->model->cfg.vocab_size)
                return ds_fail(err, DS_ERR_INPUT, "%stoken id %d at index %d is outside the vocabulary [0, %d)", who,
                               items[i].tokens[t], t, c->model->cfg.vocab_size);
    }
    return DS_OK;
}

static ds_status plan_step(const ds_batch_item *items, int n, step *s, ds_error *err)
{
    s->items = items;
    s->n_items = n;
    s->T = 0;
    s->bf16 = 1;
    for (int i = 0; i < n; i++) {
        s->T += items[i].n;
        s->bf16 &= items[i].ctx->precision == DS_PRECISION_BF16;
    }
    s->off = ds_calloc((size_t)n, sizeof(int), err);
    s->start = ds_calloc((size_t)n, sizeof(int), err);
    s->tr = ds_calloc((size_t)s->T, sizeof(ds_tok_ref), err);
    s->seqs = ds_calloc((size_t)n, sizeof(ds_mla_seq), err);
    if (!s->off || !s->start || !s->tr || !s->seqs)
        return DS_ERR_NOMEM;
    for (int i = 0, row = 0; i < n; i++) {
        s->off[i] = row;
        s->start[i] = items[i].ctx->pos;
        s->seqs[i] = (ds_mla_seq){items[i].ctx, s->start[i], items[i].n, row};
        for (int t = 0; t < items[i].n; t++, row++) {
            s->tr[row].ctx = items[i].ctx;
            s->tr[row].pos = s->start[i] + t;
        }
    }
    return DS_OK;
}

static ds_status block(const ds_model *m, const step *s, int l, float *h, float *x, float *y, ds_error *err)
{
    const ds_layer_w *L = &m->layers[l];
    const int H = m->cfg.hidden_size, T = s->T;
    const float eps = m->cfg.rms_norm_eps;
    for (int t = 0; t < T; t++)
        ds_rmsnorm(h + (size_t)t * H, L->attn_norm, eps, H, x + (size_t)t * H);
    ds_status st = ds_mla_forward(s->seqs, s->n_items, l, x, T, s->bf16, y, err);
    if (st != DS_OK)
        return st;
    for (size_t i = 0; i < (size_t)T * H; i++)
        h[i] += y[i];
    for (int t = 0; t < T; t++)
        ds_rmsnorm(h + (size_t)t * H, L->ffn_norm, eps, H, x + (size_t)t * H);
    st = ds_ffn_forward(m, l, x, T, s->tr, s->bf16, y, err);
    if (st != DS_OK)
        return st;
    for (size_t i = 0; i < (size_t)T * H; i++)
        h[i] += y[i];
    for (int t = 0; t < T; t++) {
        const ds_context *c = s->tr[t].ctx;
        if (c->trace)
            c->trace(c->trace_user, DS_TRACE_LAYER_OUT, l, s->tr[t].pos, h + (size_t)t * H, H);
    }
    return DS_OK;
}

/* Final norm and lm_head for the rows the items asked logits for, in one
 * GEMM so the head's weights are read once per step; the rows are then
 * copied to each item's buffer. */
static ds_status head(const ds_model *m, const step *s, const float *h, float *x, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const int H = cfg->hidden_size, V = cfg->vocab_size;
    int rows = 0;
    for (int i = 0; i < s->n_items; i++)
        if (s->items[i].logits)
            rows += s->items[i].all_logits ? s->items[i].n : 1;
    if (rows == 0)
        return DS_OK;
    int single = 0;
    for (int i = 0; i < s->n_items; i++)
        single += s->items[i].logits != NULL;
    for (int i = 0, r = 0; i < s->n_items; i++) {
        const ds_batch_item *it = &s->items[i];
        if (!it->logits)
            continue;
        int first = it->all_logits ? 0 : it->n - 1;
        for (int t = first; t < it->n; t++, r++)
            ds_rmsnorm(h + (size_t)(s->off[i] + t) * H, m->final_norm, cfg->rms_norm_eps, H, x + (size_t)r * H);
    }
    if (single == 1) {                       /* one item: straight into its buffer */
        for (int i = 0; i < s->n_items; i++)
            if (s->items[i].logits)
                ds_matmul(&m->lm_head, 0, V, x, H, rows, s->items[i].logits, V, s->bf16);
        return DS_OK;
    }
    float *all = ds_calloc((size_t)rows * V, sizeof(float), err);
    if (!all)
        return DS_ERR_NOMEM;
    ds_matmul(&m->lm_head, 0, V, x, H, rows, all, V, s->bf16);
    for (int i = 0, r = 0; i < s->n_items; i++) {
        const ds_batch_item *it = &s->items[i];
        if (!it->logits)
            continue;
        int n = it->all_logits ? it->n : 1;
        memcpy(it->logits, all + (size_t)r * V, sizeof(float) * (size_t)n * V);
        r += n;
    }
    free(all);
    return DS_OK;
}

ds_status ds_forward(const ds_batch_item *items, int n_items, ds_error *err)
{
    const ds_model *m = items[0].ctx->model;
    const int H = m->cfg.hidden_size;
    step s = {0};
    float *h = NULL, *x = NULL, *y = NULL;
    ds_status st = check_items(items, n_items, err);
    if (st == DS_OK)
        st = plan_step(items, n_items, &s, err);
    if (st != DS_OK)
        goto out;
    st = DS_ERR_NOMEM;
    h = ds_calloc((size_t)s.T * H, sizeof(float), err);
    x = ds_calloc((size_t)s.T * H, sizeof(float), err);
    y = ds_calloc((size_t)s.T * H, sizeof(float), err);
    if (!h || !x || !y)
        goto out;
    for (int t = 0, i = 0; i < n_items; i++)
        for (int k = 0; k < items[i].n; k++, t++)
            ds_mat_row(&m->embed, items[i].tokens[k], h + (size_t)t * H);
    st = DS_OK;
    for (int l = 0; l < m->cfg.num_hidden_layers && st == DS_OK; l++)
        st = block(m, &s, l, h, x, y, err);
    if (st != DS_OK)
        goto out;
    st = head(m, &s, h, x, err);
    if (st != DS_OK)
        goto out;
    /* The caches now hold the step: advance only after everything succeeded. */
    for (int i = 0; i < n_items; i++)
        items[i].ctx->pos = s.start[i] + items[i].n;
out:
    free(s.off);
    free(s.start);
    free(s.tr);
    free(s.seqs);
    free(h);
    free(x);
    free(y);
    return st;
}
