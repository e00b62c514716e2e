/* weights.c — binds checkpoint tensors to the model's weight views and
 * checks that every tensor the config implies is present with the right
 * dtype and shape.  Norm vectors and block scales are copied into owned,
 * aligned f32 arrays; matrices stay views of the mapped files. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "internal.h"
#include "model.h"
#include "numa.h"

void *ds_model_own(ds_model *m, size_t bytes, ds_error *err)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **nv = realloc(m->owned, sizeof(void *) * (size_t)cap);
        if (!nv) {
            ds_fail(err, DS_ERR_NOMEM, "out of memory");
            return NULL;
        }
        m->owned = nv;
        m->cap_owned = cap;
    }
    void *p = ds_alloc_aligned(bytes, err);
    if (p)
        m->owned[m->n_owned++] = p;
    return p;
}

static const char *file_of(const ds_model *m, const ds_tensor *t)
{
    const char *p = ds_table_file_path(m->table, t->file);
    const char *slash = p ? strrchr(p, '/') : NULL;
    return slash ? slash + 1 : (p ? p : "?");
}

static ds_status missing(const ds_model *m, const char *name, ds_error *err)
{
    return ds_fail(err, DS_ERR_FORMAT, "%s: required tensor '%s' is missing from the checkpoint",
                   m->dir, name);
}

static void shape_str(const ds_tensor *t, char *buf, size_t n)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Copies data that is misaligned for its element type so kernels can load
 * it directly. */
static const void *aligned_view(ds_model *m, const ds_tensor *t, ds_error *err)
{
    /* Block types (34 / 144-byte blocks) have no natural alignment: their
     * kernels read scales with memcpy and quants with unaligned loads. */
    if (ds_dtype_is_block(t->dtype))
        return t->data;
    size_t esz = ds_dtype_size(t->dtype);
    if (((uintptr_t)t->data % esz) == 0)
        return t->data;
    void *p = ds_model_own(m, t->nbytes, err);
    if (p)
        memcpy(p, t->data, t->nbytes);
    return p;
}

static ds_status bind_scale(ds_model *m, const char *name, const ds_tensor *w, int rows, int cols,
                            const float **out, ds_error *err)
{
    char sname[320];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const ds_tensor *s = ds_table_find(m->table, sname);
    if (!s)
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' is F8_E4M3 but its block scale '%s' is missing",
                       file_of(m, w), name, sname);
    int sr = (rows + DS_QBLOCK - 1) / DS_QBLOCK, sc = (cols + DS_QBLOCK - 1) / DS_QBLOCK;
    if (s->dtype != DS_DT_F32 && s->dtype != DS_DT_BF16)
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected F32", file_of(m, s),
                       sname, ds_dtype_name(s->dtype));
    if (s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc) {
        char buf[96];
        shape_str(s, buf, sizeof buf);
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected [%d, %d] (128x128 blocks of [%d, %d])",
                       file_of(m, s), sname, buf, sr, sc, rows, cols);
    }
    float *f = ds_model_own(m, sizeof(float) * (size_t)sr * sc, err);
    if (!f)
        return DS_ERR_NOMEM;
    ds_convert_to_f32(s->dtype, s->data, f, (size_t)sr * sc);
    for (int i = 0; i < sr * sc; i++)
        if (!isfinite(f[i]) || f[i] <= 0.0f)
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' holds a non-positive or non-finite scale (%g at block %d)",
                           file_of(m, s), sname, (double)f[i], i);
    *out = f;
    return DS_OK;
}

static ds_status bind_mat(ds_model *m, const char *name, int rows, int cols, ds_mat *out, ds_error *err)
{
    const ds_tensor *t = ds_table_find(m->table, name);
    if (!t)
        return missing(m, name, err);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char buf[96];
        shape_str(t, buf, sizeof buf);
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' has shape %s, but config.json implies [%d, %d]",
                       file_of(m, t), name, buf, rows, cols);
    }
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->scale = NULL;
    switch (t->dtype) {
    case DS_DT_F8_E4M3:
        out->data = t->data;
        return bind_scale(m, name, t, rows, cols, &out->scale, err);
    case DS_DT_Q8_0:
    case DS_DT_Q4_K:
        if (cols % ds_dtype_block(t->dtype))
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' is %s but its %d columns are not a multiple "
                           "of the %lld-element block", file_of(m, t), name, ds_dtype_name(t->dtype), cols,
                           (long long)ds_dtype_block(t->dtype));
        /* fall through */
    case DS_DT_F32:
    case DS_DT_F16:
    case DS_DT_BF16:
        out->data = aligned_view(m, t, err);
        return out->data ? DS_OK : DS_ERR_NOMEM;
    default:
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; weights must be F8_E4M3, "
                       "Q8_0, Q4_K, BF16, F16 or F32", file_of(m, t), name, ds_dtype_name(t->dtype));
    }
}

static ds_status bind_vec(ds_model *m, const char *name, int n, float **out, ds_error *err)
{
    const ds_tensor *t = ds_table_find(m->table, name);
    if (!t)
        return missing(m, name, err);
    if (t->ndim != 1 || t->shape[0] != n) {
        char buf[96];
        shape_str(t, buf, sizeof buf);
        return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' has shape %s, but config.json implies [%d]",
                       file_of(m, t), name, buf, n);
    }
    if (t->dtype != DS_DT_F32 && t->dtype != DS_DT_BF16 && t->dtype != DS_DT_F16)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; vectors must be F32, BF16 or F16",
                       file_of(m, t), name, ds_dtype_name(t->dtype));
    float *f = ds_model_own(m, sizeof(float) * (size_t)n, err);
    if (!f)
        return DS_ERR_NOMEM;
    ds_convert_to_f32(t->dtype, t->data, f, (size_t)n);
    /* norms and biases are read once, so a NaN or Inf here (a corrupt
     * file) is cheap to refuse at load instead of yielding NaN logits */
    for (int i = 0; i < n; i++)
        if (!isfinite(f[i]))
            return ds_fail(err, DS_ERR_FORMAT, "%s: tensor '%s' holds %g at index %d", file_of(m, t), name,
                           (double)f[i], i);
    *out = f;
    return DS_OK;
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
#define TRY(x) do { ds_status s_ = (x); if (s_ != DS_OK) return s_; } while (0)

static ds_status bind_ffn(ds_model *m, const char *prefix, int inter, ds_ffn_w *w, ds_error *err)
{
    char nm[320];
    int H = m->cfg.hidden_size;
    TRY(bind_mat(m, NAME("%s.gate_proj.weight", prefix), inter, H, &w->gate, err));
    TRY(bind_mat(m, NAME("%s.up_proj.weight", prefix), inter, H, &w->up, err));
    TRY(bind_mat(m, NAME("%s.down_proj.weight", prefix), H, inter, &w->down, err));
    return DS_OK;
}

ds_status ds_weights_bind_expert(ds_model *m, int l, int e, ds_ffn_w *w, ds_error *err)
{
    char prefix[160];
    snprintf(prefix, sizeof prefix, "model.layers.%d.mlp.experts.%d", l, e);
    return bind_ffn(m, prefix, m->cfg.moe_intermediate_size, w, err);
}

static ds_status bind_layer(ds_model *m, int l, ds_layer_w *L, ds_error *err)
{
    const ds_config *c = &m->cfg;
    char nm[320], p[96];
    int H = c->hidden_size, nh = c->num_attention_heads;
    int qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    snprintf(p, sizeof p, "model.layers.%d", l);
    TRY(bind_vec(m, NAME("%s.input_layernorm.weight", p), H, &L->attn_norm, err));
    TRY(bind_vec(m, NAME("%s.post_attention_layernorm.weight", p), H, &L->ffn_norm, err));
    TRY(bind_mat(m, NAME("%s.self_attn.q_a_proj.weight", p), c->q_lora_rank, H, &L->q_a, err));
    TRY(bind_vec(m, NAME("%s.self_attn.q_a_layernorm.weight", p), c->q_lora_rank, &L->q_a_norm, err));
    TRY(bind_mat(m, NAME("%s.self_attn.q_b_proj.weight", p), nh * qk, c->q_lora_rank, &L->q_b, err));
    TRY(bind_mat(m, NAME("%s.self_attn.kv_a_proj_with_mqa.weight", p), c->kv_lora_rank + c->qk_rope_head_dim,
                 H, &L->kv_a, err));
    TRY(bind_vec(m, NAME("%s.self_attn.kv_a_layernorm.weight", p), c->kv_lora_rank, &L->kv_a_norm, err));
    TRY(bind_mat(m, NAME("%s.self_attn.kv_b_proj.weight", p), nh * (c->qk_nope_head_dim + c->v_head_dim),
                 c->kv_lora_rank, &L->kv_b, err));
    TRY(bind_mat(m, NAME("%s.self_attn.o_proj.weight", p), H, nh * c->v_head_dim, &L->o, err));
    if (c->is_v32) {
        int ih = c->index_n_heads, id = c->index_head_dim;
        TRY(bind_mat(m, NAME("%s.self_attn.indexer.wq_b.weight", p), ih * id, c->q_lora_rank, &L->idx_wq_b, err));
        TRY(bind_mat(m, NAME("%s.self_attn.indexer.wk.weight", p), id, H, &L->idx_wk, err));
        TRY(bind_vec(m, NAME("%s.self_attn.indexer.k_norm.weight", p), id, &L->idx_k_norm_w, err));
        TRY(bind_vec(m, NAME("%s.self_attn.indexer.k_norm.bias", p), id, &L->idx_k_norm_b, err));
        TRY(bind_mat(m, NAME("%s.self_attn.indexer.weights_proj.weight", p), ih, H, &L->idx_wproj, err));
    }
    L->is_moe = ds_config_is_moe_layer(c, l);
    if (!L->is_moe) {
        snprintf(p, sizeof p, "model.layers.%d.mlp", l);
        return bind_ffn(m, p, c->intermediate_size, &L->mlp, err);
    }
    TRY(bind_mat(m, NAME("%s.mlp.gate.weight", p), c->n_routed_experts, H, &L->gate, err));
    if (ds_table_find(m->table, NAME("%s.mlp.gate.e_score_correction_bias", p)))
        TRY(bind_vec(m, nm, c->n_routed_experts, &L->gate_bias, err));
    else {
        L->gate_bias = ds_model_own(m, sizeof(float) * (size_t)c->n_routed_experts, err);
        if (!L->gate_bias)
            return DS_ERR_NOMEM;
    }
    L->has_shared = c->n_shared_experts > 0;
    if (L->has_shared) {
        snprintf(p, sizeof p, "model.layers.%d.mlp.shared_experts", l);
        TRY(bind_ffn(m, p, c->n_shared_experts * c->moe_intermediate_size, &L->shared, err));
    }
    return DS_OK;
}

ds_status ds_weights_bind(ds_model *m, ds_error *err)
{
    const ds_config *c = &m->cfg;
    TRY(bind_mat(m, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, &m->embed, err));
    if (m->embed.dtype == DS_DT_F8_E4M3)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s: model.embed_tokens.weight must be BF16, F16 or F32", m->dir);
    TRY(bind_vec(m, "model.norm.weight", c->hidden_size, &m->final_norm, err));
    if (c->tie_word_embeddings && !ds_table_find(m->table, "lm_head.weight"))
        m->lm_head = m->embed;
    else
        TRY(bind_mat(m, "lm_head.weight", c->vocab_size, c->hidden_size, &m->lm_head, err));
    m->layers = ds_model_own(m, sizeof(ds_layer_w) * (size_t)c->num_hidden_layers, err);
    if (!m->layers)
        return DS_ERR_NOMEM;
    for (int l = 0; l < c->num_hidden_layers; l++)
        TRY(bind_layer(m, l, &m->layers[l], err));
    return DS_OK;
}

/* The dense matrices of the model: everything but the routed experts (owned
 * by the expert cache) and the embedding (one row per token).  fn is called
 * on each; stops at the first error. */
static ds_status each_dense_mat(ds_model *m, ds_status (*fn)(ds_model *, ds_mat *, void *, ds_error *), void *arg,
                                ds_error *err)
{
    TRY(fn(m, &m->lm_head, arg, err));
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        ds_layer_w *L = &m->layers[l];
        ds_mat *mats[] = {&L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->o, &L->idx_wq_b, &L->idx_wk, &L->idx_wproj,
                          &L->mlp.gate, &L->mlp.up, &L->mlp.down, &L->gate,
                          &L->shared.gate, &L->shared.up, &L->shared.down};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (mats[i]->data)
                TRY(fn(m, mats[i], arg, err));
    }
    return DS_OK;
}

static size_t mat_bytes(const ds_mat *w) { return ds_dtype_row_bytes(w->dtype, w->cols) * (size_t)w->rows; }

static ds_status add_bytes(ds_model *m, ds_mat *w, void *arg, ds_error *err)
{
    (void)m, (void)err;
    *(int64_t *)arg += (int64_t)mat_bytes(w);
    return DS_OK;
}

static ds_status copy_to_nodes(ds_model *m, ds_mat *w, void *arg, ds_error *err)
{
    const int nodes = *(const int *)arg;
    const size_t bytes = mat_bytes(w);
    ds_mat *copies = ds_model_own(m, sizeof(ds_mat) * (size_t)nodes, err);
    struct ds_node_mem *nm = realloc(m->node_mem, sizeof *nm * (size_t)(m->n_node_mem + nodes));
    if (!copies || !nm)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory replicating the dense weights");
    m->node_mem = nm;
    for (int k = 0; k < nodes; k++) {
        void *p = ds_numa_alloc(m->numa, bytes, k);
        if (!p)
            return ds_fail(err, DS_ERR_NOMEM, "out of memory replicating the dense weights (%zu bytes on node %d)",
                           bytes, k);
        m->node_mem[m->n_node_mem++] = (struct ds_node_mem){p, bytes};
        memcpy(p, w->data, bytes);            /* first touch, after the bind */
        copies[k] = *w;
        copies[k].data = p;
    }
    w->copies = copies;
    w->n_copies = nodes;
    return DS_OK;
}

/* Copies are made only when they all fit in half of the available memory:
 * replication trades RAM for bandwidth and must never push the experts
 * out to disk. */
ds_status ds_weights_replicate(ds_model *m, ds_error *err)
{
    int nodes = m->numa ? ds_numa_nodes(m->numa) : 1;
    int64_t bytes = 0;
    m->numa_replicas = 1;
    if (nodes < 2)
        return DS_OK;
    each_dense_mat(m, add_bytes, &bytes, err);
    if ((uint64_t)bytes * (uint64_t)nodes > ds_mem_available() / 2)
        return DS_OK;
    ds_status st = each_dense_mat(m, copy_to_nodes, &nodes, err);
    if (st != DS_OK)
        return st;
    m->numa_replicas = nodes;
    m->replica_bytes = bytes;
    return DS_OK;
}

static ds_status copy_to_ram(ds_model *m, ds_mat *w, void *arg, ds_error *err)
{
    if (w->copies)
        return DS_OK;                     /* replicated: the kernels read the copies */
    const size_t bytes = mat_bytes(w);
    struct ds_node_mem *nm = realloc(m->node_mem, sizeof *nm * (size_t)(m->n_node_mem + 1));
    if (!nm)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory");
    m->node_mem = nm;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory copying the dense weights (%zu bytes)", bytes);
    madvise(p, bytes, MADV_HUGEPAGE);
    memcpy(p, w->data, bytes);
    mprotect(p, bytes, PROT_READ);
    m->node_mem[m->n_node_mem++] = (struct ds_node_mem){p, bytes};
    w->data = p;
    *(int64_t *)arg += (int64_t)bytes;
    return DS_OK;
}

/* When experts stream the checkpoint stays mapped, and the dense matrices
 * would be read from 4 KiB page-cache pages, where the hardware prefetchers
 * stop at every page (a real-size dense layer ran at 3-9 GB/s).  Copied
 * into huge-page memory they run at memory bandwidth; the expert budget
 * already counts them as resident. */
ds_status ds_weights_dense_to_ram(ds_model *m, ds_error *err)
{
    int64_t bytes = 0;
    ds_status st = each_dense_mat(m, copy_to_ram, &bytes, err);
    m->dense_copy_bytes = bytes;
    return st;
}

void ds_weights_free_replicas(ds_model *m)
{
    for (int i = 0; i < m->n_node_mem; i++)
        ds_numa_free_mem(m->numa, m->node_mem[i].p, m->node_mem[i].len);
    free(m->node_mem);
    m->node_mem = NULL;
    m->n_node_mem = 0;
}
