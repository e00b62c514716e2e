/* model.c — the DeepSeek forward pass over a chunk of tokens: embeddings,
 * per block RMSNorm -> MLA (+ indexer) -> residual -> RMSNorm -> FFN/MoE ->
 * residual, final norm and lm_head.  Works for prefill (T > 1, at any
 * start position: chunked prefill) and decode (T == 1). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"

static ds_status embed(const ds_model *m, const int32_t *tokens, int T, float *h, ds_error *err)
{
    const int H = m->cfg.hidden_size;
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return ds_fail(err, DS_ERR_INPUT, "token id %d at index %d is outside the vocabulary [0, %d)",
                           tokens[t], t, m->cfg.vocab_size);
        ds_mat_row(&m->embed, tokens[t], h + (size_t)t * H);
    }
    return DS_OK;
}

static ds_status block(ds_context *c, int l, float *h, float *x, float *y, int T, int start, ds_error *err)
{
    const ds_model *m = c->model;
    const ds_layer_w *L = &m->layers[l];
    const int H = m->cfg.hidden_size;
    const float eps = m->cfg.rms_norm_eps;
    for (int t = 0; t < T; t++)
        ds_rmsnorm(h + (size_t)t * H, L->attn_norm, eps, H, x + (size_t)t * H);
    ds_status st = ds_mla_forward(c, l, x, T, start, y, err);
    if (st != DS_OK)
        return st;
    for (size_t i = 0; i < (size_t)T * H; i++)
        h[i] += y[i];
    for (int t = 0; t < T; t++)
        ds_rmsnorm(h + (size_t)t * H, L->ffn_norm, eps, H, x + (size_t)t * H);
    st = ds_ffn_forward(c, l, x, T, start, y, err);
    if (st != DS_OK)
        return st;
    for (size_t i = 0; i < (size_t)T * H; i++)
        h[i] += y[i];
    if (c->trace)
        for (int t = 0; t < T; t++)
            c->trace(c->trace_user, DS_TRACE_LAYER_OUT, l, start + t, h + (size_t)t * H, H);
    return DS_OK;
}

ds_status ds_forward(ds_context *c, const int32_t *tokens, int T, float *logits, int all, ds_error *err)
{
    const ds_model *m = c->model;
    const ds_config *cfg = &m->cfg;
    const int H = cfg->hidden_size, start = c->pos;
    if (T <= 0)
        return ds_fail(err, DS_ERR_INVALID_ARG, "no tokens to evaluate");
    if (T > c->ctx_size - start)
        return ds_fail(err, DS_ERR_CONTEXT_FULL,
                       "context full: %d cached + %d new tokens exceed the context size %d (raise --ctx-size)",
                       start, T, c->ctx_size);
    ds_status st = DS_ERR_NOMEM;
    float *h = ds_calloc((size_t)T * H, sizeof(float), err);
    float *x = ds_calloc((size_t)T * H, sizeof(float), err);
    float *y = ds_calloc((size_t)T * H, sizeof(float), err);
    if (!h || !x || !y)
        goto out;
    st = embed(m, tokens, T, h, err);
    for (int l = 0; l < cfg->num_hidden_layers && st == DS_OK; l++)
        st = block(c, l, h, x, y, T, start, err);
    if (st != DS_OK)
        goto out;
    /* The cache now holds the chunk: only advance after every layer succeeded. */
    c->pos = start + T;
    if (logits) {
        int first = all ? 0 : T - 1, n = T - first;
        for (int t = first; t < T; t++)
            ds_rmsnorm(h + (size_t)t * H, m->final_norm, cfg->rms_norm_eps, H, x + (size_t)(t - first) * H);
        ds_gemm(&m->lm_head, 0, cfg->vocab_size, x, H, n, logits, cfg->vocab_size);
    }
out:
    free(h);
    free(x);
    free(y);
    return st;
}
