/* moe.c — the FFN block: SwiGLU MLP for dense layers, and for MoE layers
 * the router, the routed experts (tokens grouped by expert so each expert's
 * weights are read once per step) and the shared expert. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"

/* out[t] = down(silu(gate x_t) * up x_t) for n tokens. */
static ds_status swiglu(const ds_ffn_w *w, const float *x, int n, int ldx, float *out, int ldo,
                        ds_error *err)
{
    const int I = w->gate.rows, H = w->down.rows;
    float *g = ds_calloc((size_t)n * I, sizeof(float), err);
    float *u = ds_calloc((size_t)n * I, sizeof(float), err);
    if (!g || !u) {
        free(g);
        free(u);
        return DS_ERR_NOMEM;
    }
    ds_gemm(&w->gate, 0, I, x, ldx, n, g, I);
    ds_gemm(&w->up, 0, I, x, ldx, n, u, I);
    for (size_t i = 0; i < (size_t)n * I; i++)
        g[i] = ds_silu(g[i]) * u[i];
    ds_gemm(&w->down, 0, H, g, I, n, out, ldo);
    free(g);
    free(u);
    return DS_OK;
}

static ds_status route_tokens(const ds_model *m, int layer, const float *x, int T, const ds_tok_ref *tr,
                              int32_t *experts, float *weights, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const ds_layer_w *L = &m->layers[layer];
    const int H = cfg->hidden_size, E = cfg->n_routed_experts, K = cfg->num_experts_per_tok;
    const ds_router_params rp = {E, cfg->n_group, cfg->topk_group, K, cfg->routed_scaling_factor,
                                 cfg->norm_topk_prob};
    float *logits = ds_calloc((size_t)T * E, sizeof(float), err);
    if (!logits)
        return DS_ERR_NOMEM;
    ds_gemm(&L->gate, 0, E, x, H, T, logits, E);
    for (int t = 0; t < T; t++) {
        ds_route(&rp, logits + (size_t)t * E, L->gate_bias, experts + (size_t)t * K, weights + (size_t)t * K);
        const ds_context *c = tr ? tr[t].ctx : NULL;
        if (c && c->trace) {
            c->trace(c->trace_user, DS_TRACE_MOE_EXPERTS, layer, tr[t].pos, experts + (size_t)t * K, K);
            c->trace(c->trace_user, DS_TRACE_MOE_WEIGHTS, layer, tr[t].pos, weights + (size_t)t * K, K);
        }
    }
    free(logits);
    return DS_OK;
}

/* Runs expert e on the tokens routed to it and adds weight * output. */
static ds_status run_expert(const ds_model *m, int layer, int e, const float *x, int T, const int32_t *experts,
                            const float *weights, float *out, float *xs, float *ys, int *tok, float *tw,
                            ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const int H = cfg->hidden_size, K = cfg->num_experts_per_tok;
    int n = 0;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++)
            if (experts[(size_t)t * K + k] == e) {
                tok[n] = t;
                tw[n] = weights[(size_t)t * K + k];
                memcpy(xs + (size_t)n * H, x + (size_t)t * H, sizeof(float) * (size_t)H);
                n++;
            }
    if (n == 0)
        return DS_OK;
    const ds_ffn_w *w = ds_experts_get(m->experts, layer, e, err);
    if (!w)
        return err ? err->code : DS_ERR_INVALID_ARG;
    ds_status st = swiglu(w, xs, n, H, ys, H, err);
    ds_experts_release(m->experts, layer, e);
    if (st != DS_OK)
        return st;
    for (int i = 0; i < n; i++)
        ds_axpy(tw[i], ys + (size_t)i * H, out + (size_t)tok[i] * H, H);
    return DS_OK;
}

static ds_status moe_forward(const ds_model *m, int layer, const float *x, int T, const ds_tok_ref *tr,
                             float *out, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const ds_layer_w *L = &m->layers[layer];
    const int H = cfg->hidden_size, E = cfg->n_routed_experts, K = cfg->num_experts_per_tok;
    ds_status st = DS_ERR_NOMEM;
    int32_t *experts = ds_calloc((size_t)T * K, sizeof(int32_t), err);
    float *weights = ds_calloc((size_t)T * K, sizeof(float), err);
    float *xs = ds_calloc((size_t)T * H, sizeof(float), err);
    float *ys = ds_calloc((size_t)T * H, sizeof(float), err);
    int *tok = ds_calloc((size_t)T, sizeof(int), err);
    float *tw = ds_calloc((size_t)T, sizeof(float), err);
    if (!experts || !weights || !xs || !ys || !tok || !tw)
        goto out;
    st = route_tokens(m, layer, x, T, tr, experts, weights, err);
    memset(out, 0, sizeof(float) * (size_t)T * H);
    for (int e = 0; e < E && st == DS_OK; e++)
        st = run_expert(m, layer, e, x, T, experts, weights, out, xs, ys, tok, tw, err);
    if (st == DS_OK && L->has_shared) {
        st = swiglu(&L->shared, x, T, H, ys, H, err);
        for (size_t i = 0; st == DS_OK && i < (size_t)T * H; i++)
            out[i] += ys[i];
    }
out:
    free(experts);
    free(weights);
    free(xs);
    free(ys);
    free(tok);
    free(tw);
    return st;
}

ds_status ds_ffn_forward(const ds_model *m, int layer, const float *x, int T, const ds_tok_ref *tr,
                         float *out, ds_error *err)
{
    const ds_layer_w *L = &m->layers[layer];
    if (L->is_moe)
        return moe_forward(m, layer, x, T, tr, out, err);
    return swiglu(&L->mlp, x, T, m->cfg.hidden_size, out, m->cfg.hidden_size, err);
}
