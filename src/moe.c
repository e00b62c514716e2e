/* moe.c — the FFN block: SwiGLU MLP for dense layers, and for MoE layers
 * the router, the routed experts (tokens grouped by expert so each expert's
 * weights are read once per step) and the shared expert.
 *
 * Routed experts run one of two ways.  With many tokens per expert (prefill)
 * experts go one after another and each product is split across the
 * threads.  With few (decode, batched decode) that would cost three thread
 * barriers per expert for little work each, so the threads instead take
 * whole experts from a shared queue.  Both add the weighted expert outputs
 * to each token in increasing expert id, so they give identical bits. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"
#include "numa.h"

/* out[t] = down(silu(gate x_t) * up x_t) for n tokens. */
static ds_status swiglu(const ds_ffn_w *w, const float *x, int n, int ldx, float *out, int ldo, int bf16,
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
    const ds_gemm_part gu[2] = {{&w->gate, 0, I, x, ldx, g, I}, {&w->up, 0, I, x, ldx, u, I}};
    ds_matmul_parts(gu, 2, n, bf16);     /* one region, x packed once */
    for (size_t i = 0; i < (size_t)n * I; i++)
        g[i] = ds_silu(g[i]) * u[i];
    ds_matmul(&w->down, 0, H, g, I, n, out, ldo, bf16);
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

/* Gathers the tokens routed to expert e: their indices, routing weights and
 * (in xs) hidden rows; returns how many. */
static int gather_tokens(int e, const float *x, int T, int K, int H, const int32_t *experts,
                         const float *weights, int *tok, float *tw, float *xs)
{
    int n = 0;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++)
            if (experts[(size_t)t * K + k] == e) {
                tok[n] = t;
                tw[n] = weights[(size_t)t * K + k];
                memcpy(xs + (size_t)n * H, x + (size_t)t * H, sizeof(float) * (size_t)H);
                n++;
            }
    return n;
}

/* Runs expert e on the tokens routed to it and adds weight * output. */
static ds_status run_expert(const ds_model *m, int layer, int e, const float *x, int T, const int32_t *experts,
                            const float *weights, float *out, float *xs, float *ys, int *tok, float *tw, int bf16,
                            ds_error *err)
{
    const int H = m->cfg.hidden_size, K = m->cfg.num_experts_per_tok;
    const int n = gather_tokens(e, x, T, K, H, experts, weights, tok, tw, xs);
    if (n == 0)
        return DS_OK;
    const ds_ffn_w *w = ds_experts_get(m->experts, layer, e, err);
    if (!w)
        return err ? err->code : DS_ERR_INVALID_ARG;
    ds_status st = swiglu(w, xs, n, H, ys, H, bf16, err);
    ds_experts_release(m->experts, layer, e);
    if (st != DS_OK)
        return st;
    for (int i = 0; i < n; i++)
        ds_axpy(tw[i], ys + (size_t)i * H, out + (size_t)tok[i] * H, H);
    return DS_OK;
}

/* Experts go to threads whole when they average at most this many tokens. */
#define EXPERT_PAR_MAX_TOKENS 8

/* The i-th expert a thread of node `node` should run next: experts of its
 * own node first (their slabs live there), then any left, so no thread idles
 * while work remains.  next[] counts claims per node, one atomic each. */
static int claim_expert(const ds_numa *nm, const int32_t *used, int n_used, int E, int node, int nodes,
                        int *next)
{
    for (int k = 0; k < nodes; k++) {
        const int nd = (node + k) % nodes;
        for (;;) {
            int i = __atomic_fetch_add(&next[nd], 1, __ATOMIC_RELAXED);
            /* walk node nd's experts: the i-th expert of used[] owned by nd */
            int seen = 0, found = -1;
            for (int j = 0; j < n_used && found < 0; j++)
                if (ds_numa_expert_node(nm, used[j], E) == nd && seen++ == i)
                    found = j;
            if (found < 0)
                break;
            return found;
        }
    }
    return -1;
}

/* The shared expert inside the experts' parallel region, in row chunks
 * claimed as threads come free: SwiGLU's gate and up rows (then its
 * activation on them), a barrier, the down rows.  A thread that ends its
 * routed experts first starts on it at once, instead of both meeting at a
 * barrier and then splitting three more products (mid, FP8 decode: the
 * slower thread's last expert was the other's wait).  g, u: [T][I]. */
enum { SHARED_ROWS = 64 };

static void shared_chunks(const ds_ffn_w *w, const float *x, int T, int H, float *g, float *u, float *out, int bf16,
                          int *next_gu, int *next_down)
{
    const int I = w->gate.rows;
    for (;;) {
        const int r = SHARED_ROWS * __atomic_fetch_add(next_gu, 1, __ATOMIC_RELAXED);
        if (r >= I)
            break;
        const int k = I - r < SHARED_ROWS ? I - r : SHARED_ROWS;
        const ds_gemm_part gu[2] = {{&w->gate, r, k, x, H, g + r, I}, {&w->up, r, k, x, H, u + r, I}};
        ds_matmul_parts(gu, 2, T, bf16);
        for (int t = 0; t < T; t++)
            for (int j = r; j < r + k; j++)
                g[(size_t)t * I + j] = ds_silu(g[(size_t)t * I + j]) * u[(size_t)t * I + j];
    }
#pragma omp barrier
    for (;;) {
        const int r = 4 * SHARED_ROWS * __atomic_fetch_add(next_down, 1, __ATOMIC_RELAXED);
        if (r >= H)
            break;
        const int k = H - r < 4 * SHARED_ROWS ? H - r : 4 * SHARED_ROWS;
        ds_matmul(&w->down, r, k, g, I, T, out + r, H, bf16);
    }
}

/* Token t's expert outputs (ybuf[t][slot]) times their weights into
 * out[t], in increasing expert id. */
static void add_token_experts(int t, int K, int E, int H, const int32_t *experts, const float *weights,
                              const float *ybuf, float *out)
{
    const int32_t *ex = experts + (size_t)t * K;
    for (int prev = -1;;) {
        int slot = -1;
        for (int k = 0; k < K; k++)
            if (ex[k] > prev && (slot < 0 || ex[k] < ex[slot]))
                slot = k;
        if (slot < 0 || ex[slot] >= E)
            break;
        prev = ex[slot];
        ds_axpy(weights[(size_t)t * K + slot], ybuf + ((size_t)t * K + slot) * H, out + (size_t)t * H, H);
    }
}

/* Threads take whole experts (resident weights only: the streaming path
 * orders reads and read-ahead itself).  With several NUMA nodes a thread
 * takes its own node's experts first.  Each expert's output rows land in
 * ybuf[t][slot]; they are then added to each token in increasing expert id,
 * the order of the one-at-a-time path. */
static ds_status run_experts_parallel(const ds_model *m, int layer, const float *x, int T,
                                      const int32_t *experts, const float *weights, const int32_t *used,
                                      int n_used, float *out, const ds_ffn_w *shared, float *shared_out, int bf16,
                                      ds_error *err)
{
    const int H = m->cfg.hidden_size, K = m->cfg.num_experts_per_tok, E = m->cfg.n_routed_experts;
    const int I = shared ? shared->gate.rows : 0;
    float *ybuf = ds_calloc((size_t)T * K * H, sizeof(float), err);
    float *sg = shared ? ds_calloc((size_t)T * I, sizeof(float), err) : NULL;
    float *su = shared ? ds_calloc((size_t)T * I, sizeof(float), err) : NULL;
    int next_gu = 0, next_down = 0;
    if (!ybuf || (shared && (!sg || !su))) {
        free(ybuf), free(sg), free(su);
        return DS_ERR_NOMEM;
    }
    ds_status st = DS_OK;
    ds_error first;
    const int nodes = m->numa ? ds_numa_nodes(m->numa) : 1;
    int *next = ds_calloc((size_t)nodes, sizeof(int), err);
    if (!next) {
        free(ybuf), free(sg), free(su);
        return DS_ERR_NOMEM;
    }
#pragma omp parallel
    {
        float *xs = malloc(sizeof(float) * (size_t)T * H), *ys = malloc(sizeof(float) * (size_t)T * H);
        int *tok = malloc(sizeof(int) * (size_t)T);
        float *tw = malloc(sizeof(float) * (size_t)T);
        ds_error my;
        ds_status mine = xs && ys && tok && tw ? DS_OK : ds_fail(&my, DS_ERR_NOMEM, "out of memory");
        const int tn = nodes > 1 ? ds_numa_thread_node(m->numa, omp_get_thread_num()) : 0;
        const int node = tn > 0 ? tn : 0;
        for (;;) {
            const int i = nodes > 1 ? claim_expert(m->numa, used, n_used, E, node, nodes, next)
                                    : __atomic_fetch_add(&next[0], 1, __ATOMIC_RELAXED);
            if (i < 0 || i >= n_used)
                break;
            if (mine != DS_OK)
                continue;
            const int e = used[i];
            const int n = gather_tokens(e, x, T, K, H, experts, weights, tok, tw, xs);
            const ds_ffn_w *w = ds_experts_get(m->experts, layer, e, &my);
            if (!w) {
                mine = my.code;
                continue;
            }
            mine = swiglu(w, xs, n, H, ys, H, bf16, &my);
            ds_experts_release(m->experts, layer, e);
            for (int j = 0; j < n && mine == DS_OK; j++) {
                int slot = 0;
                while (experts[(size_t)tok[j] * K + slot] != e)
                    slot++;
                memcpy(ybuf + ((size_t)tok[j] * K + slot) * H, ys + (size_t)j * H, sizeof(float) * (size_t)H);
            }
        }
#pragma omp critical(ds_moe_error)
        if (mine != DS_OK && st == DS_OK) {
            st = mine;
            first = my;
        }
        free(xs), free(ys), free(tok), free(tw);
        if (shared)     /* every thread reaches it: its barrier is the team's */
            shared_chunks(shared, x, T, H, sg, su, shared_out, bf16, &next_gu, &next_down);
    }
    free(next);
    free(sg), free(su);
    if (st != DS_OK) {
        if (err)
            *err = first;
        free(ybuf);
        return st;
    }
    /* a few tokens' sums take less than entering a region (3 us here) */
    if (T >= 16) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++)
            add_token_experts(t, K, E, H, experts, weights, ybuf, out);
    } else
        for (int t = 0; t < T; t++)
            add_token_experts(t, K, E, H, experts, weights, ybuf, out);
    free(ybuf);
    return DS_OK;
}

/* Runs every expert the tokens chose, in increasing id, reading ahead a
 * window of the chosen experts so the cache's reads overlap the compute. */
static ds_status run_experts(const ds_model *m, int layer, const float *x, int T, const int32_t *experts,
                             const float *weights, float *out, float *xs, float *ys, int *tok, float *tw,
                             const ds_ffn_w *shared, float *shared_out, int *shared_done, int bf16, ds_error *err)
{
    const int E = m->cfg.n_routed_experts, K = m->cfg.num_experts_per_tok;
    int32_t *used = ds_calloc((size_t)E, sizeof(int32_t), err);
    char *chosen = ds_calloc((size_t)E, 1, err), *pinned = ds_calloc((size_t)E, 1, err);
    ds_status st = used && chosen && pinned ? DS_OK : DS_ERR_NOMEM;
    int n = 0;
    for (int i = 0; st == DS_OK && i < T * K; i++)
        chosen[experts[i]] = 1;
    for (int e = 0; st == DS_OK && e < E; e++)
        if (chosen[e])
            used[n++] = e;
    if (st == DS_OK)
        ds_experts_observe(m->experts, layer, used, n);
    if (st == DS_OK && !ds_experts_streaming(m->experts) && n > 1 && omp_get_max_threads() > 1 &&
        T * K <= EXPERT_PAR_MAX_TOKENS * n) {
        st = run_experts_parallel(m, layer, x, T, experts, weights, used, n, out, shared, shared_out, bf16, err);
        *shared_done = shared != NULL;
        free(used);
        free(chosen);
        free(pinned);
        return st;
    }
    if (st == DS_OK)
        ds_experts_prefetch(m->experts, layer, used, n, pinned);
    for (int k = 0; k < n && st == DS_OK; k++) {
        st = run_expert(m, layer, used[k], x, T, experts, weights, out, xs, ys, tok, tw, bf16, err);
        if (pinned[k])
            ds_experts_release(m->experts, layer, used[k]);
        ds_experts_prefetch(m->experts, layer, used + k + 1, n - k - 1, pinned + k + 1);
    }
    for (int k = 0; k < n; k++)        /* after an error: drop read-ahead pins */
        if (pinned[k] && st != DS_OK)
            ds_experts_release(m->experts, layer, used[k]);
    free(used);
    free(chosen);
    free(pinned);
    return st;
}

/* Next-layer prediction: the next MoE layer's router applied to this
 * layer's FFN input guesses its experts early so their reads can start. */
static ds_status predict_next_layer(const ds_model *m, int layer, const float *x, int T, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    int next = layer + 1;
    ds_expert_stats es;
    ds_experts_stats(m->experts, &es);
    if (!es.streaming || next >= cfg->num_hidden_layers || !m->layers[next].is_moe)
        return DS_OK;
    const int H = cfg->hidden_size, E = cfg->n_routed_experts, K = cfg->num_experts_per_tok;
    const ds_layer_w *N = &m->layers[next];
    const ds_router_params rp = {E, cfg->n_group, cfg->topk_group, K, cfg->routed_scaling_factor,
                                 cfg->norm_topk_prob};
    float *logits = ds_calloc((size_t)E, sizeof(float), err), w[64];
    int32_t *ex = ds_calloc((size_t)K, sizeof(int32_t), err), *list = ds_calloc((size_t)E, sizeof(int32_t), err);
    char *seen = ds_calloc((size_t)E, 1, err);
    ds_status st = logits && ex && list && seen && K <= 64 ? DS_OK : DS_ERR_NOMEM;
    int n = 0;
    for (int t = 0; st == DS_OK && t < T; t++) {
        ds_gemv(&N->gate, 0, E, x + (size_t)t * H, logits);
        ds_route(&rp, logits, N->gate_bias, ex, w);
        for (int k = 0; k < K; k++)
            if (!seen[ex[k]]) {
                seen[ex[k]] = 1;
                list[n++] = ex[k];
            }
    }
    if (st == DS_OK)
        ds_experts_predict(m->experts, next, list, n);
    free(logits);
    free(ex);
    free(list);
    free(seen);
    return st;
}

static ds_status moe_forward(const ds_model *m, int layer, const float *x, int T, const ds_tok_ref *tr,
                             int bf16, float *out, ds_error *err)
{
    const ds_config *cfg = &m->cfg;
    const ds_layer_w *L = &m->layers[layer];
    const int H = cfg->hidden_size, K = cfg->num_experts_per_tok;
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
    if (st == DS_OK)
        st = predict_next_layer(m, layer, x, T, err);
    memset(out, 0, sizeof(float) * (size_t)T * H);
    /* sh: the shared expert's output; the parallel experts path computes
     * it alongside the routed ones (shared_done) */
    float *sh = L->has_shared ? ds_calloc((size_t)T * H, sizeof(float), err) : NULL;
    int shared_done = 0;
    if (st == DS_OK && L->has_shared && !sh)
        st = DS_ERR_NOMEM;
    if (st == DS_OK)
        st = run_experts(m, layer, x, T, experts, weights, out, xs, ys, tok, tw, L->has_shared ? &L->shared : NULL,
                         sh, &shared_done, bf16, err);
    if (st == DS_OK && L->has_shared && !shared_done)
        st = swiglu(&L->shared, x, T, H, sh, H, bf16, err);
    for (size_t i = 0; st == DS_OK && sh && i < (size_t)T * H; i++)
        out[i] += sh[i];
    free(sh);
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
                         int bf16, float *out, ds_error *err)
{
    const ds_layer_w *L = &m->layers[layer];
    if (L->is_moe)
        return moe_forward(m, layer, x, T, tr, bf16, out, err);
    return swiglu(&L->mlp, x, T, m->cfg.hidden_size, out, m->cfg.hidden_size, bf16, err);
}
