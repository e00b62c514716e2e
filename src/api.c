/* api.c — the public handles: model load/free (config + tensor table +
 * weight binding + expert cache), contexts with their KV arena, ds_eval and
 * the trace hook. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"
#include "model.h"
#include "cpu.h"
#include "numa.h"
#include "dsconfig.h"
#ifdef DS_HAVE_CUDA
#include "indexer_gpu.h"
#endif

void ds_load_params_init(ds_load_params *p)
{
    p->threads = 0;
    p->expert_budget = 0;
    p->io = DS_IO_MODE_AUTO;
    p->numa = 1;
    p->weights_in_ram = -1;
}

/* One number from a text file (a cgroup limit); 0 when absent or "max". */
static uint64_t read_u64_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    unsigned long long v = 0;
    if (f) {
        if (fscanf(f, "%llu", &v) != 1)
            v = 0;
        fclose(f);
    }
    return (uint64_t)v;
}

/* The value of key in a cgroup memory.stat file (0 when absent). */
static uint64_t read_stat(const char *dir, const char *key)
{
    char path[4096], line[256], k[128];
    unsigned long long v;
    snprintf(path, sizeof path, "%s/memory.stat", dir);
    FILE *f = fopen(path, "r");
    uint64_t out = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%127s %llu", k, &v) == 2 && strcmp(k, key) == 0)
            out = (uint64_t)v;
    if (f)
        fclose(f);
    return out;
}

/* Memory the process's cgroup still allows (limit - usage + reclaimable
 * file cache), v2 or v1; UINT64_MAX when no limit applies. */
static uint64_t cgroup_room(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[4096], dir[4200];
    uint64_t room = UINT64_MAX;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = 0;
        const char *ctl = c1 + 1, *path = c2 + 1;
        uint64_t limit, used, cache;
        if (!*ctl) {                                  /* v2 unified hierarchy */
            snprintf(dir, sizeof dir, "/sys/fs/cgroup%s", path);
            limit = read_u64_file(dir, "memory.max");
            used = read_u64_file(dir, "memory.current");
            cache = read_stat(dir, "file");
        } else if (strstr(ctl, "memory")) {           /* v1 memory controller */
            snprintf(dir, sizeof dir, "/sys/fs/cgroup/memory%s", path);
            limit = read_u64_file(dir, "memory.limit_in_bytes");
            used = read_u64_file(dir, "memory.usage_in_bytes");
            cache = read_stat(dir, "total_cache");
        } else
            continue;
        if (limit == 0 || limit >= (UINT64_C(1) << 60))   /* "max" or v1's unlimited */
            continue;
        uint64_t r = limit > used ? limit - used : 0;
        r += cache < used ? cache : 0;
        if (r < room)
            room = r;
    }
    if (f)
        fclose(f);
    return room;
}

uint64_t ds_mem_available(void)
{
    const char *env = getenv("DSINFER_MEM_AVAILABLE");
    if (env && *env)
        return strtoull(env, NULL, 10);
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    uint64_t avail = (uint64_t)kb * 1024, room = cgroup_room();
    /* in a container MemAvailable is the host's: the cgroup limit binds */
    return room < avail ? room : avail;
}

/* Copies the weights into RAM when asked, or (auto) when nothing streams
 * and the checkpoint fits with headroom (an eighth of the memory, at least
 * 512 MiB, as for the expert budget): huge pages keep decode at memory
 * bandwidth, where 4 KiB page-cache pages stop the hardware prefetchers at
 * every page (a real-size layer ran at 3-9 GB/s from the page cache).  Up
 * to half of the memory the page cache is kept too, for a fast next load;
 * beyond that it is dropped behind the copy so the file is not held twice. */
static ds_status place_weights(ds_model *m, const ds_load_params *p, ds_error *err)
{
    int want = p ? p->weights_in_ram : -1;
    const uint64_t bytes = ds_table_bytes(m->table), avail = ds_mem_available();
    const uint64_t headroom = avail / 8 > (512u << 20) ? avail / 8 : (uint64_t)512 << 20;
    const int resident = !p || p->expert_budget == 0 || p->expert_budget == DS_EXPERT_BUDGET_ALL;
    if (want < 0)
        want = resident && bytes + headroom <= avail;
    m->weights_in_ram = want != 0;
    return want ? ds_table_to_ram(m->table, bytes > avail / 2, err) : DS_OK;
}

void ds_context_params_init(ds_context_params *p)
{
    p->ctx_size = 0;
    p->kv_type = DS_KV_FP8;
    p->threads = 0;
    p->indexer_device = 0;
    p->precision = DS_PRECISION_F32;
}

const char *ds_precision_name(ds_precision p)
{
    return p == DS_PRECISION_F32 ? "f32" : p == DS_PRECISION_BF16 ? "bf16" : "?";
}

int ds_precision_bf16_native(void) { return ds_gemm_bf16_native(); }

static void fill_info(ds_model *m)
{
    const ds_config *c = &m->cfg;
    ds_model_info *i = &m->info;
    snprintf(i->model_type, sizeof i->model_type, "%s", c->model_type);
    i->vocab_size = c->vocab_size;
    i->hidden_size = c->hidden_size;
    i->num_layers = c->num_hidden_layers;
    i->first_dense_layers = c->first_k_dense_replace;
    i->num_heads = c->num_attention_heads;
    i->q_lora_rank = c->q_lora_rank;
    i->kv_lora_rank = c->kv_lora_rank;
    i->qk_nope_dim = c->qk_nope_head_dim;
    i->qk_rope_dim = c->qk_rope_head_dim;
    i->v_head_dim = c->v_head_dim;
    i->n_routed_experts = c->n_routed_experts;
    i->n_shared_experts = c->n_shared_experts;
    i->experts_per_token = c->num_experts_per_tok;
    i->n_group = c->n_group;
    i->topk_group = c->topk_group;
    i->has_indexer = c->is_v32;
    i->index_n_heads = c->index_n_heads;
    i->index_head_dim = c->index_head_dim;
    i->index_topk = c->index_topk;
    i->bos_token_id = c->bos_token_id;
    i->eos_token_id = c->eos_token_id;
    i->max_position_embeddings = c->max_position_embeddings;
    i->scale_ue8m0 = c->scale_ue8m0;
    i->numa_nodes = m->numa ? ds_numa_nodes(m->numa) : 1;
    i->numa_replicas = m->numa_replicas > 1 ? m->numa_replicas : 1;
    i->replica_bytes = m->replica_bytes;
    i->dense_copy_bytes = m->dense_copy_bytes;
    i->n_tensors = ds_table_count(m->table);
    i->weight_bytes = i->expert_bytes = i->active_bytes_per_token = 0;
    for (int k = 0; k < ds_table_count(m->table); k++)
        i->weight_bytes += (int64_t)ds_table_at(m->table, k)->nbytes;
    for (int l = 0; m->layer_bytes && l <= c->num_hidden_layers; l++)
        i->active_bytes_per_token += m->layer_bytes[l];
    i->expert_bytes = m->expert_bytes;
}

/* Bytes one decoded token reads, per block (the last entry: embedding row,
 * final norm, head): dense tensors plus experts_per_token of the block's
 * routed experts on average.  MTP layers are not run; the padding tensors
 * of a repacked checkpoint are never read. */
static ds_status count_layer_bytes(ds_model *m, ds_error *err)
{
    const ds_config *c = &m->cfg;
    const int L = c->num_hidden_layers;
    m->layer_bytes = ds_model_own(m, sizeof(int64_t) * (size_t)(L + 1), err);
    int64_t *experts = calloc((size_t)L + 1, sizeof(int64_t));
    if (!m->layer_bytes || !experts) {
        free(experts);
        return ds_fail(err, DS_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < ds_table_count(m->table); k++) {
        const ds_tensor *t = ds_table_at(m->table, k);
        int l = -1, off = 0;
        if (strncmp(t->name, "__dsinfer_pad", 13) == 0)
            continue;
        if (sscanf(t->name, "model.layers.%d.%n", &l, &off) != 1 || off == 0)
            l = L;
        else if (l >= L || l < 0)
            continue;
        if (strcmp(t->name, "model.embed_tokens.weight") == 0)
            m->layer_bytes[l] += (int64_t)(t->nbytes / (uint64_t)c->vocab_size);
        else if (l < L && strncmp(t->name + off, "mlp.experts.", 12) == 0)
            experts[l] += (int64_t)t->nbytes;
        else
            m->layer_bytes[l] += (int64_t)t->nbytes;
    }
    m->expert_bytes = 0;
    for (int l = 0; l < L; l++) {
        m->expert_bytes += experts[l];
        if (c->n_routed_experts > 0)
            m->layer_bytes[l] += (int64_t)((double)experts[l] * c->num_experts_per_tok / c->n_routed_experts);
    }
    free(experts);
    return DS_OK;
}

int64_t ds_model_layer_bytes(const ds_model *m, int layer)
{
    if (!m || !m->layer_bytes || layer < 0 || layer > m->cfg.num_hidden_layers)
        return -1;
    return m->layer_bytes[layer];
}

static ds_status check_limits(const ds_model *m, ds_error *err)
{
    const ds_config *c = &m->cfg;
    if (c->n_routed_experts > 1024)
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s/config.json: n_routed_experts %d exceeds the supported 1024",
                       m->dir, c->n_routed_experts);
    if (c->is_v32 && (c->index_head_dim & (c->index_head_dim - 1)))
        return ds_fail(err, DS_ERR_UNSUPPORTED, "%s/config.json: index_head_dim %d is not a power of two",
                       m->dir, c->index_head_dim);
    return DS_OK;
}

int ds_default_threads(void)
{
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const int omp = omp_get_max_threads(), ncpu = cpus > 0 ? (cpus < DS_MAX_THREADS ? (int)cpus : DS_MAX_THREADS) : 1;
    return omp > DS_MAX_THREADS || (long)omp > 8L * ncpu ? ncpu : omp;
}

/* The OpenMP team a load sets up: the caller's count, else
 * ds_default_threads (replacing an absurd OMP_NUM_THREADS before the first
 * parallel region of the load). */
static ds_status set_team(const ds_load_params *p, ds_error *err)
{
    if (p && (p->threads < 0 || p->threads > DS_MAX_THREADS))
        return ds_fail(err, DS_ERR_INVALID_ARG, "threads %d: expected 0 (all cores) to %d", p->threads,
                       DS_MAX_THREADS);
    /* the other enumerations too: an unknown value is not a default */
    if (p && (p->numa < DS_NUMA_OFF || p->numa > DS_NUMA_REPLICATE))
        return ds_fail(err, DS_ERR_INVALID_ARG, "numa %d: expected DS_NUMA_OFF, DS_NUMA_ON or DS_NUMA_REPLICATE",
                       p->numa);
    if (p && (p->io < DS_IO_MODE_AUTO || p->io > DS_IO_MODE_PREAD))
        return ds_fail(err, DS_ERR_INVALID_ARG, "io %d: expected DS_IO_MODE_AUTO, _URING or _PREAD", (int)p->io);
    if (p && (p->weights_in_ram < -1 || p->weights_in_ram > 1))
        return ds_fail(err, DS_ERR_INVALID_ARG, "weights_in_ram %d: expected -1 (auto), 0 or 1", p->weights_in_ram);
    const int n = p && p->threads > 0 ? p->threads : ds_default_threads();
    if (n != omp_get_max_threads())
        omp_set_num_threads(n);
    return DS_OK;
}

/* The NUMA plan.  The OpenMP team of a thread that runs the model is pinned
 * to distinct cores on its first step (pin_if_first_step) unless the user
 * set OMP_PROC_BIND / OMP_PLACES: unpinned threads drift onto one core and
 * decode loses a third of its bandwidth.  Pinning happens on the stepping
 * thread, not at load, so threads an application creates after loading
 * (HTTP workers) do not inherit a single-core mask. */
static ds_status place_numa(ds_model *m, const ds_load_params *p, ds_error *err)
{
    ds_status st = ds_numa_create(omp_get_max_threads(), &m->numa, err);
    if (st != DS_OK)
        return st;
    m->pin_threads = ds_numa_nodes(m->numa) > 1 || (!getenv("OMP_PROC_BIND") && !getenv("OMP_PLACES"));
    return DS_OK;
}

ds_status ds_model_load(const char *dir, const ds_load_params *p, ds_model **out, ds_error *err)
{
    ds_error_clear(err);
    if (!dir || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_model_load: NULL argument");
    *out = NULL;
    ds_status st = set_team(p, err);
    if (st != DS_OK)
        return st;
    ds_model *m = ds_calloc(1, sizeof *m, err);
    if (!m)
        return DS_ERR_NOMEM;
    st = DS_ERR_NOMEM;
    m->dir = strdup(dir);
    char *path = malloc(strlen(dir) + 32);
    if (!m->dir || !path)
        goto fail;
    sprintf(path, "%s/config.json", dir);
    st = ds_config_load(path, &m->cfg, err);
    if (st == DS_OK)
        st = check_limits(m, err);
    if (st == DS_OK)
        st = ds_table_open(dir, &m->table, err);
    if (st == DS_OK)
        st = place_weights(m, p, err);
    if (st == DS_OK)
        st = ds_weights_bind(m, err);
    if (st == DS_OK && (!p || p->numa))
        st = place_numa(m, p, err);
    if (st == DS_OK && p && p->numa == DS_NUMA_REPLICATE)
        st = ds_weights_replicate(m, err);
    if (st == DS_OK)
        st = ds_experts_create(m, p, &m->experts, err);
    if (st == DS_OK && ds_experts_streaming(m->experts) && !m->weights_in_ram)
        st = ds_weights_dense_to_ram(m, err);
    if (st == DS_OK)
        st = ds_rope_init(m, err);
    if (st == DS_OK)
        st = count_layer_bytes(m, err);
    if (st != DS_OK)
        goto fail;
    fill_info(m);
    free(path);
    *out = m;
    return DS_OK;
fail:
    free(path);
    ds_model_free(m);
    return st;
}

void ds_model_free(ds_model *m)
{
    if (!m)
        return;
    ds_experts_free(m->experts);
    ds_weights_free_replicas(m);
    ds_numa_free(m->numa);
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    if (m->table)
        ds_table_free(m->table);
    free(m->dir);
    free(m);
}

const ds_model_info *ds_model_get_info(const ds_model *m) { return m ? &m->info : NULL; }

/* Puts the DSA indexer on the GPU when asked (DSINFER_INDEXER=cpu|gpu
 * overrides p->indexer_device).  Never fails: without CUDA support or a
 * usable device the CPU indexer stays, and the note says why. */
static void setup_gpu_indexer(ds_context *c, const ds_context_params *p)
{
    const ds_config *cfg = &c->model->cfg;
    int want = p->indexer_device == 1;
    const char *env = getenv("DSINFER_INDEXER");
    if (env && strcmp(env, "gpu") == 0)
        want = 1;
    else if (env && strcmp(env, "cpu") == 0)
        want = 0;
    else if (env && *env)
        snprintf(c->gpu_idx_note, sizeof c->gpu_idx_note,
                 "DSINFER_INDEXER=%.40s is neither cpu nor gpu; ignored", env);
    if (!want || !cfg->is_v32)
        return;
#ifdef DS_HAVE_CUDA
    ds_error e;
    ds_error_clear(&e);
    c->gpu_idx = ds_gpu_indexer_create(cfg->num_hidden_layers, c->ctx_size, cfg->index_head_dim,
                                       cfg->index_n_heads, &e);
    if (!c->gpu_idx) {
        c->gpu_idx_failed = 1;
        snprintf(c->gpu_idx_note, sizeof c->gpu_idx_note, "indexer on the CPU: %s", e.msg);
    }
#else
    c->gpu_idx_failed = 1;
    snprintf(c->gpu_idx_note, sizeof c->gpu_idx_note,
             "indexer on the CPU: GPU requested but this build has no CUDA support (configure --with-cuda)");
#endif
}

ds_status ds_context_create(ds_model *m, const ds_context_params *p, ds_context **out, ds_error *err)
{
    ds_error_clear(err);
    if (!m || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_context_create: NULL argument");
    ds_context_params def;
    ds_context_params_init(&def);
    if (!p)
        p = &def;
    if (p->kv_type != DS_KV_FP8 && p->kv_type != DS_KV_F32 && p->kv_type != DS_KV_FP8_COMPACT)
        return ds_fail(err, DS_ERR_INVALID_ARG, "unknown KV cache type %d", (int)p->kv_type);
    if (p->indexer_device != 0 && p->indexer_device != 1)
        return ds_fail(err, DS_ERR_INVALID_ARG, "unknown indexer device %d (0 = CPU, 1 = GPU)", p->indexer_device);
    if (p->precision != DS_PRECISION_F32 && p->precision != DS_PRECISION_BF16)
        return ds_fail(err, DS_ERR_INVALID_ARG, "unknown precision %d (0 = f32, 1 = bf16)", (int)p->precision);
    if (p->threads < 0 || p->threads > DS_MAX_THREADS)
        return ds_fail(err, DS_ERR_INVALID_ARG, "threads %d: expected 0 (keep) to %d", p->threads, DS_MAX_THREADS);
    int size = p->ctx_size;
    if (size < 0 || size > DS_MAX_CTX_SIZE)
        return ds_fail(err, DS_ERR_INVALID_ARG, "context size %d: expected 0 (default) to %d", size, DS_MAX_CTX_SIZE);
    if (size == 0)
        size = m->cfg.max_position_embeddings < 4096 ? m->cfg.max_position_embeddings : 4096;
    ds_context *c = ds_calloc(1, sizeof *c, err);
    if (!c)
        return DS_ERR_NOMEM;
    c->model = m;
    c->ctx_size = size;
    c->kv_type = p->kv_type;
    c->precision = p->precision;
    ds_status st = ds_kv_alloc(c, err);
    if (st != DS_OK) {
        free(c);
        return st;
    }
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    setup_gpu_indexer(c, p);
    *out = c;
    return DS_OK;
}

void ds_context_free(ds_context *c)
{
    if (!c)
        return;
#ifdef DS_HAVE_CUDA
    ds_gpu_indexer_free(c->gpu_idx);
#endif
    ds_kv_free(c);
    free(c->idx_scratch);
    free(c);
}

int ds_context_pos(const ds_context *c) { return c ? c->pos : 0; }
int ds_context_size(const ds_context *c) { return c ? c->ctx_size : 0; }
int ds_context_indexer_on_gpu(const ds_context *c) { return c && c->gpu_idx && !c->gpu_idx_failed; }
const char *ds_context_indexer_note(const ds_context *c)
{
    return c && c->gpu_idx_note[0] ? c->gpu_idx_note : NULL;
}

ds_status ds_context_truncate(ds_context *c, int pos, ds_error *err)
{
    if (!c)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_context_truncate: NULL context");
    if (pos < 0 || pos > c->pos)
        return ds_fail(err, DS_ERR_INVALID_ARG, "cannot truncate the context to position %d (it holds %d)", pos,
                       c->pos);
    c->pos = pos;
    return DS_OK;
}

void ds_context_set_trace(ds_context *c, ds_trace_fn fn, void *user)
{
    if (!c)
        return;
    c->trace = fn;
    c->trace_user = user;
}

static void pin_if_first_step(ds_model *m)
{
    static __thread const ds_model *pinned_for;
    if (m->pin_threads && m->numa && pinned_for != m) {
        ds_numa_pin_team(m->numa);
        pinned_for = m;
    }
}

ds_status ds_eval(ds_context *c, const int32_t *tokens, int n, float *logits, int all_logits, ds_error *err)
{
    ds_error_clear(err);
    if (!c || (!tokens && n > 0))
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_eval: NULL argument");
    ds_batch_item it = {c, tokens, n, logits, all_logits};
    pin_if_first_step(c->model);
    return ds_forward(&it, 1, err);
}

ds_status ds_eval_batch(const ds_batch_item *items, int n_items, ds_error *err)
{
    ds_error_clear(err);
    if (!items || n_items <= 0)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_eval_batch: no items");
    for (int i = 0; i < n_items; i++) {
        if (!items[i].ctx || (!items[i].tokens && items[i].n > 0))
            return ds_fail(err, DS_ERR_INVALID_ARG, "ds_eval_batch: item %d has a NULL context or tokens", i);
        if (items[i].ctx->model != items[0].ctx->model)
            return ds_fail(err, DS_ERR_INVALID_ARG, "ds_eval_batch: item %d belongs to another model", i);
        for (int j = 0; j < i; j++)
            if (items[j].ctx == items[i].ctx)
                return ds_fail(err, DS_ERR_INVALID_ARG, "ds_eval_batch: items %d and %d share a context", j, i);
    }
    pin_if_first_step(items[0].ctx->model);
    return ds_forward(items, n_items, err);
}

int ds_model_tensor_count(const ds_model *m) { return m ? ds_table_count(m->table) : 0; }

ds_status ds_model_tensor_info(const ds_model *m, int i, ds_tensor_info *out, ds_error *err)
{
    if (!m || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_model_tensor_info: NULL argument");
    if (i < 0 || i >= ds_table_count(m->table))
        return ds_fail(err, DS_ERR_INVALID_ARG, "tensor index %d out of range [0, %d)", i, ds_table_count(m->table));
    const ds_tensor *t = ds_table_at(m->table, i);
    out->name = t->name;
    out->dtype = ds_dtype_name(t->dtype);
    out->ndim = t->ndim;
    for (int k = 0; k < 4; k++)
        out->shape[k] = k < t->ndim ? t->shape[k] : 0;
    out->nbytes = t->nbytes;
    out->file = ds_table_file_path(m->table, t->file);
    return DS_OK;
}

const char *ds_kernel_isa(void) { return ds_cpu_isa_name(); }

int ds_context_kv_locked(const ds_context *c) { return c ? c->kv_locked : 0; }

size_t ds_context_kv_bytes(const ds_context *c) { return c ? c->arena_bytes : 0; }
