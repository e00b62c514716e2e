/* expert_cache.c — owner of the routed-expert slabs (gate, up and down
 * weights of one expert of one layer; their block scales stay resident).
 *
 * Resident mode (the budget holds every expert): slabs are views of the
 * mapped checkpoint.  Streaming mode (a smaller budget): a fixed pool of
 * slab buffers, filled from the checkpoint files through io/ (io_uring or
 * pread) on demand, with read-ahead of the experts a layer's router chose
 * and of the experts the next layer's router is predicted to choose.
 * Eviction ranks slabs by use frequency decayed with age (a slab used often
 * recently stays; DSINFER_EXPERT_POLICY=lru selects plain LRU to compare).
 * Slabs in use are pinned between get and release.
 *
 * Slab checks (DSINFER_VERIFY_SLABS=1; on by default in --enable-debug and
 * sanitizer builds): the first time an expert is read, the checksum of the
 * bytes read must equal that of the same bytes seen through the mapped
 * file (an independent path: page cache, not O_DIRECT); it is kept, and
 * every later re-read after an eviction must reproduce it.  A mismatch is
 * an I/O error naming the expert, never silently wrong weights. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "dsconfig.h"
#include "internal.h"
#include "model.h"
#include "reader.h"
#include "numa.h"

typedef struct part {
    int file;              /* reader file id */
    uint64_t off;
    size_t len;
    size_t dst;            /* offset in the slab buffer */
} part;

typedef struct slot {
    int key;               /* layer * E + expert, -1 when empty */
    int pins;
    int loading;           /* a read is in flight (tag = slot index + 1) */
    int predicted;         /* loaded ahead by prediction and not used yet */
    int fresh;             /* read on demand (a miss) and not yet handed out */
    int checked;           /* slab checksum verified since the read (verify mode) */
    int node;              /* NUMA node holding the buffer */
    uint64_t last;         /* access tick */
    double freq;           /* use count decayed by age */
    uint8_t *buf;
    ds_ffn_w w;
} slot;

struct ds_expert_cache {
    int n_layers, n_experts;
    ds_ffn_w *views;       /* [layer][expert]: mapped weights + resident scales */
    int streaming;
    pthread_mutex_t mu;
    ds_reader *rd;
    part *src;             /* [layer][expert][3] */
    unsigned char *whole;  /* [layer][expert]: the parts lie in the file as in the slab (one read) */
    int *where;            /* [layer][expert] -> slot or -1 */
    slot *slots;
    int nslots;
    size_t slab_bytes;
    uint64_t tick;
    int lru;
    unsigned char *pred;   /* [layer][expert]: predicted for the layer's next use */
    int verify;            /* check slab checksums (see top) */
    uint64_t *sums;        /* [layer][expert]: checksum of the first read, 0 = not read yet */
    ds_expert_stats st;
    struct ds_numa *numa;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 64-bit FNV-1a over 8-byte words (bytewise tail): cheap, order-sensitive. */
static uint64_t checksum(uint64_t h, const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int verify_default(void)
{
    const char *v = getenv("DSINFER_VERIFY_SLABS");
    if (v && *v)
        return strcmp(v, "0") != 0;
#ifdef DS_VERIFY_SLABS_DEFAULT
    return 1;
#else
    return 0;
#endif
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static ds_status bind_views(ds_model *m, ds_expert_cache *ec, ds_error *err)
{
    const ds_config *c = &m->cfg;
    for (int l = 0; l < ec->n_layers; l++) {
        if (!ds_config_is_moe_layer(c, l))
            continue;
        for (int e = 0; e < ec->n_experts; e++) {
            ds_status s = ds_weights_bind_expert(m, l, e, &ec->views[(size_t)l * ec->n_experts + e], err);
            if (s != DS_OK)
                return s;
        }
    }
    return DS_OK;
}

/* Resident experts go to the memory of the node that computes them (the
 * same partition the MoE threads claim by, ds_numa_expert_node): the whole
 * pages inside each matrix are bound, and migrated when already in RAM.
 * Page-cache pages of a mapped file keep the kernel's placement.  Returns
 * the bytes bound (0 on one node or a synthetic topology). */
static int64_t bind_resident(const ds_expert_cache *ec, const ds_model *m)
{
    int64_t bound = 0;
    if (!m->numa || ds_numa_nodes(m->numa) < 2)
        return 0;
    for (int l = 0; l < ec->n_layers; l++) {
        if (!ds_config_is_moe_layer(&m->cfg, l))
            continue;
        for (int e = 0; e < ec->n_experts; e++) {
            const ds_ffn_w *w = &ec->views[(size_t)l * ec->n_experts + e];
            const ds_mat *mats[3] = {&w->gate, &w->up, &w->down};
            const int node = ds_numa_expert_node(m->numa, e, ec->n_experts);
            for (int k = 0; k < 3; k++) {
                uintptr_t a = (uintptr_t)mats[k]->data;
                uintptr_t b = a + (size_t)mats[k]->rows * ds_dtype_row_bytes(mats[k]->dtype, mats[k]->cols);
                a = (a + 4095) & ~(uintptr_t)4095;
                b &= ~(uintptr_t)4095;
                if (b > a && ds_numa_bind(m->numa, (void *)a, b - a, node))
                    bound += (int64_t)(b - a);
            }
        }
    }
    return bound;
}

static int64_t total_expert_bytes(const ds_expert_cache *ec, const ds_model *m, size_t *max_slab)
{
    int64_t tot = 0;
    *max_slab = 0;
    for (int l = 0; l < ec->n_layers; l++) {
        if (!ds_config_is_moe_layer(&m->cfg, l))
            continue;
        for (int e = 0; e < ec->n_experts; e++) {
            const ds_ffn_w *w = &ec->views[(size_t)l * ec->n_experts + e];
            const ds_mat *mats[3] = {&w->gate, &w->up, &w->down};
            size_t slab = 0;
            for (int k = 0; k < 3; k++)
                slab += align_up((size_t)mats[k]->rows * ds_dtype_row_bytes(mats[k]->dtype, mats[k]->cols), 4096);
            tot += (int64_t)slab;
            if (slab > *max_slab)
                *max_slab = slab;
        }
    }
    return tot;
}

/* File ranges of each expert's three weight tensors. */
static ds_status locate_sources(ds_model *m, ds_expert_cache *ec, ds_error *err)
{
    static const char *names[3] = {"gate_proj", "up_proj", "down_proj"};
    int nfiles = ds_table_file_count(m->table);
    int *fid = ds_calloc((size_t)nfiles, sizeof(int), err);
    if (!fid)
        return DS_ERR_NOMEM;
    for (int f = 0; f < nfiles; f++)
        fid[f] = -1;
    ds_status st = DS_OK;
    for (int l = 0; l < ec->n_layers && st == DS_OK; l++) {
        if (!ds_config_is_moe_layer(&m->cfg, l))
            continue;
        for (int e = 0; e < ec->n_experts && st == DS_OK; e++) {
            size_t dst = 0;
            for (int k = 0; k < 3; k++) {
                char nm[160];
                snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.%d.%s.weight", l, e, names[k]);
                const ds_tensor *t = ds_table_find(m->table, nm);
                if (fid[t->file] < 0) {
                    fid[t->file] = ds_reader_add_file(ec->rd, ds_table_file_path(m->table, t->file), err);
                    if (fid[t->file] < 0) {
                        st = err ? err->code : DS_ERR_IO;
                        break;
                    }
                }
                part *p = &ec->src[((size_t)l * ec->n_experts + e) * 3 + k];
                p->file = fid[t->file];
                p->off = t->offset;
                p->len = t->nbytes;
                p->dst = dst;
                dst += align_up(t->nbytes, 4096);
            }
            /* dsinfer-quantize --repack writes gate, up and down at the
             * slab's own offsets: then one request reads the whole slab */
            const size_t key = (size_t)l * ec->n_experts + e;
            const part *p = &ec->src[key * 3];
            ec->whole[key] = st == DS_OK && p[1].file == p[0].file && p[2].file == p[0].file &&
                             p[1].off == p[0].off + p[1].dst && p[2].off == p[0].off + p[2].dst;
        }
    }
    free(fid);
    return st;
}

static ds_status start_streaming(ds_model *m, ds_expert_cache *ec, const ds_load_params *p, size_t max_slab,
                                 ds_error *err)
{
    ec->streaming = 1;
    ec->slab_bytes = max_slab;
    int64_t n = p->expert_budget / (int64_t)max_slab;
    if (n < 2)
        return ds_fail(err, DS_ERR_INVALID_ARG,
                       "expert memory budget of %lld bytes is too small: one expert slab needs %zu bytes and "
                       "streaming needs at least 2 slabs", (long long)p->expert_budget, max_slab);
    int64_t all = (int64_t)ec->n_layers * ec->n_experts;
    ec->nslots = (int)(n < all ? n : all);
    const char *pol = getenv("DSINFER_EXPERT_POLICY");
    ec->lru = pol && strcmp(pol, "lru") == 0;
    ds_reader_params rp;
    ds_reader_params_init(&rp);
    rp.backend = p->io == DS_IO_MODE_URING ? DS_IO_URING : p->io == DS_IO_MODE_PREAD ? DS_IO_PREAD : DS_IO_AUTO;
    ds_status st = ds_reader_open(&rp, &ec->rd, err);
    if (st != DS_OK)
        return st;
    ec->verify = verify_default();
    if (ec->verify && !(ec->sums = ds_calloc((size_t)all, sizeof(uint64_t), err)))
        return DS_ERR_NOMEM;
    ec->src = ds_calloc((size_t)all * 3, sizeof(part), err);
    ec->where = ds_calloc((size_t)all, sizeof(int), err);
    ec->whole = ds_calloc((size_t)all, 1, err);
    ec->slots = ds_calloc((size_t)ec->nslots, sizeof(slot), err);
    if (!ec->src || !ec->where || !ec->whole || !ec->slots)
        return DS_ERR_NOMEM;
    for (int64_t i = 0; i < all; i++)
        ec->where[i] = -1;
    int nodes = m->numa ? ds_numa_nodes(m->numa) : 1;
    ec->numa = m->numa;
    for (int i = 0; i < ec->nslots; i++) {
        ec->slots[i].key = -1;
        ec->slots[i].buf = ds_alloc_aligned(max_slab, err);
        if (!ec->slots[i].buf)
            return DS_ERR_NOMEM;
        /* slabs spread evenly over the nodes; an expert prefers a slab on its own node */
        ec->slots[i].node = (int)((long)i * nodes / ec->nslots);
        if (m->numa)
            ds_numa_bind(m->numa, ec->slots[i].buf, max_slab, ec->slots[i].node);
    }
    ec->st.streaming = 1;
    ec->st.slots = ec->nslots;
    ec->st.slab_bytes = (int64_t)max_slab;
    ec->st.io_backend = ds_reader_backend_name(ec->rd);
    return locate_sources(m, ec, err);
}

/* The auto budget (ds_load_params.expert_budget == 0): 0 (all resident)
 * when the checkpoint and headroom fit in available memory, else what is
 * left after the dense weights and headroom, at least two slabs.  Headroom
 * (KV caches, activations, the OS) is an eighth of the memory, >= 512 MiB. */
static int64_t auto_budget(const ds_model *m, int64_t experts, size_t max_slab)
{
    const int64_t avail = (int64_t)ds_mem_available(), total = (int64_t)ds_table_bytes(m->table);
    int64_t headroom = avail / 8 > (512 << 20) ? avail / 8 : (int64_t)512 << 20;
    if (avail <= 0 || total + headroom <= avail)
        return 0;
    int64_t b = avail - headroom - (total - experts);
    return b > 2 * (int64_t)max_slab ? b : 2 * (int64_t)max_slab;
}

ds_status ds_experts_create(ds_model *m, const ds_load_params *p, ds_expert_cache **out, ds_error *err)
{
    const ds_config *c = &m->cfg;
    ds_expert_cache *ec = ds_calloc(1, sizeof *ec, err);
    if (!ec)
        return DS_ERR_NOMEM;
    pthread_mutex_init(&ec->mu, NULL);
    ec->n_layers = c->num_hidden_layers;
    ec->n_experts = c->n_routed_experts;
    ec->st.io_backend = "mmap";
    ec->views = ds_calloc((size_t)ec->n_layers * (size_t)(ec->n_experts ? ec->n_experts : 1), sizeof(ds_ffn_w), err);
    ec->pred = ds_calloc((size_t)ec->n_layers * (size_t)(ec->n_experts ? ec->n_experts : 1), 1, err);
    ds_status st = ec->views && ec->pred ? bind_views(m, ec, err) : DS_ERR_NOMEM;
    size_t max_slab = 0;
    int64_t total = st == DS_OK ? total_expert_bytes(ec, m, &max_slab) : 0;
    int64_t budget = p ? p->expert_budget : 0;
    if (st == DS_OK && budget < 0 && budget != DS_EXPERT_BUDGET_ALL)
        st = ds_fail(err, DS_ERR_INVALID_ARG, "the expert memory budget is negative");
    /* weights already copied into RAM stay there: the copy decided for them */
    if (st == DS_OK && budget == 0 && max_slab > 0 && !m->weights_in_ram)
        budget = auto_budget(m, total, max_slab);
    ds_load_params eff;
    if (p)
        eff = *p;
    else
        ds_load_params_init(&eff);
    eff.expert_budget = budget;
    if (st == DS_OK && budget > 0 && budget < total && max_slab > 0)
        st = start_streaming(m, ec, &eff, max_slab, err);
    if (st == DS_OK && !ec->streaming)
        ec->st.numa_bound_bytes = bind_resident(ec, m);
    if (st != DS_OK) {
        ds_experts_free(ec);
        return st;
    }
    ec->st.slots = ec->streaming ? ec->nslots : ec->n_layers * ec->n_experts;
    ec->st.slab_bytes = (int64_t)max_slab;
    *out = ec;
    return DS_OK;
}

void ds_experts_free(ds_expert_cache *c)
{
    if (!c)
        return;
    ds_reader_close(c->rd);
    for (int i = 0; c->slots && i < c->nslots; i++)
        free(c->slots[i].buf);
    free(c->slots);
    free(c->src);
    free(c->where);
    free(c->whole);
    free(c->pred);
    free(c->sums);
    free(c->views);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Eviction rank: lower is evicted first. */
static double rank(const ds_expert_cache *c, const slot *s)
{
    if (c->lru)
        return (double)s->last;
    double age = (double)(c->tick - s->last);
    return s->freq * exp2(-age / (double)c->nslots) + 1e-9 * (double)s->last;
}

static int pick_victim_on(ds_expert_cache *c, int node, int take_predicted);

/* Marks finished reads as loaded so their slots become evictable. */
static void collect_done(ds_expert_cache *c)
{
    uint64_t tags[64];
    int n;
    while ((n = ds_reader_poll(c->rd, tags, 64)) > 0)
        for (int i = 0; i < n; i++)
            c->slots[tags[i] - 1].loading = 0;
}

/* A victim slot for key: on the key's NUMA node first; slabs read ahead for
 * the next layer's predicted experts are spared until that layer has
 * routed (ds_experts_observe), else a small cache evicts its own
 * predictions before they are used and reads them twice. */
static int pick_victim(ds_expert_cache *c, int key)
{
    int want = c->numa ? ds_numa_expert_node(c->numa, key % c->n_experts, c->n_experts) : 0;
    for (int pass = 0; pass < 4; pass++) {
        int i = pick_victim_on(c, pass % 2 == 0 && c->numa ? want : -1, pass >= 2);
        if (i >= 0)
            return i;
    }
    return -1;
}

static int pick_victim_on(ds_expert_cache *c, int node, int take_predicted)
{
    int best = -1;
    for (int i = 0; i < c->nslots; i++) {
        slot *s = &c->slots[i];
        if (s->pins || s->loading || (node >= 0 && s->node != node) || (s->predicted && !take_predicted))
            continue;
        if (s->key < 0)
            return i;
        if (best < 0 || rank(c, s) < rank(c, &c->slots[best]))
            best = i;
    }
    return best;
}

static void evict(ds_expert_cache *c, int i)
{
    slot *s = &c->slots[i];
    if (s->key >= 0)
        c->where[s->key] = -1;
    s->key = -1;
    s->predicted = 0;
    s->fresh = 0;
    s->freq = 0.0;
}

/* Points the slot's matrices into its buffer; scales stay the resident ones. */
static void bind_slot(ds_expert_cache *c, slot *s, int key)
{
    const ds_ffn_w *v = &c->views[key];
    const part *p = &c->src[(size_t)key * 3];
    s->w = *v;
    s->w.gate.data = s->buf + p[0].dst;
    s->w.up.data = s->buf + p[1].dst;
    s->w.down.data = s->buf + p[2].dst;
}

static ds_status start_read(ds_expert_cache *c, int i, int key, ds_error *err)
{
    slot *s = &c->slots[i];
    const part *p = &c->src[(size_t)key * 3];
    ds_io_req rq[3];
    int n = 3;
    if (c->whole[key]) {
        /* one range from gate to the end of down, the padding between included */
        rq[0] = (ds_io_req){p[0].file, p[0].off, p[2].dst + p[2].len, s->buf};
        n = 1;
    } else {
        for (int k = 0; k < 3; k++)
            rq[k] = (ds_io_req){p[k].file, p[k].off, p[k].len, s->buf + p[k].dst};
    }
    ds_status st = ds_reader_submit(c->rd, rq, n, (uint64_t)i + 1, err);
    if (st != DS_OK)
        return st;
    evict(c, i);
    s->key = key;
    s->loading = 1;
    s->checked = 0;
    c->where[key] = i;
    bind_slot(c, s, key);
    for (int k = 0; k < n; k++)
        c->st.bytes_read += rq[k].length;
    c->st.io_requests += (uint64_t)n;
    return DS_OK;
}

static ds_status finish_read(ds_expert_cache *c, int i, ds_error *err)
{
    slot *s = &c->slots[i];
    if (!s->loading)
        return DS_OK;
    double t0 = now_s();
    ds_status st = ds_reader_wait(c->rd, (uint64_t)i + 1, err);
    c->st.stall_seconds += now_s() - t0;
    s->loading = 0;
    if (st != DS_OK)
        evict(c, i);
    return st;
}

/* The slab's checksum (see top): against the mapped file on the first read
 * of the expert, against the first read's afterwards. */
static ds_status check_slab(ds_expert_cache *c, slot *s, ds_error *err)
{
    const part *p = &c->src[(size_t)s->key * 3];
    const ds_ffn_w *v = &c->views[s->key];
    const void *mapped[3] = {v->gate.data, v->up.data, v->down.data};
    uint64_t got = 0xcbf29ce484222325ull;
    for (int k = 0; k < 3; k++)
        got = checksum(got, s->buf + p[k].dst, p[k].len);
    got |= 1;
    uint64_t want = c->sums[s->key];
    const char *what = "the first read";
    if (!want) {
        want = 0xcbf29ce484222325ull;
        for (int k = 0; k < 3; k++)
            want = checksum(want, mapped[k], p[k].len);
        want |= 1;
        what = "the mapped file";
    }
    if (got != want)
        return ds_fail(err, DS_ERR_IO, "expert %d of layer %d: slab checksum %016llx differs from %s's "
                       "%016llx (the read returned wrong bytes or the checkpoint changed on disk)",
                       s->key % c->n_experts, s->key / c->n_experts, (unsigned long long)got, what,
                       (unsigned long long)want);
    c->sums[s->key] = want;
    s->checked = 1;
    return DS_OK;
}

static void touch(ds_expert_cache *c, slot *s)
{
    double age = (double)(c->tick - s->last);
    s->freq = s->freq * exp2(-age / (double)c->nslots) + 1.0;
    s->last = ++c->tick;
}

const ds_ffn_w *ds_experts_get(ds_expert_cache *c, int layer, int e, ds_error *err)
{
    if (layer < 0 || layer >= c->n_layers || e < 0 || e >= c->n_experts) {
        ds_fail(err, DS_ERR_INVALID_ARG, "expert %d of layer %d does not exist", e, layer);
        return NULL;
    }
    int key = layer * c->n_experts + e;
    if (!c->streaming) {
        __atomic_add_fetch(&c->st.hits, 1, __ATOMIC_RELAXED);
        return &c->views[key];
    }
    pthread_mutex_lock(&c->mu);
    const ds_ffn_w *w = NULL;
    int i = c->where[key];
    if (i < 0) {
        collect_done(c);
        i = pick_victim(c, key);
        for (int j = 0; i < 0 && j < c->nslots; j++)
            if (c->slots[j].loading && !c->slots[j].pins) {   /* a read-ahead nobody claimed (or failed) */
                finish_read(c, j, NULL);
                i = pick_victim(c, key);
            }
        if (i < 0) {
            ds_fail(err, DS_ERR_NOMEM, "expert cache: all %d slabs are in use; raise the memory budget", c->nslots);
            goto out;
        }
        if (start_read(c, i, key, err) != DS_OK)
            goto out;
        c->slots[i].fresh = 1;
    }
    if (finish_read(c, i, err) != DS_OK)
        goto out;
    slot *s = &c->slots[i];
    if (c->verify && !s->checked && check_slab(c, s, err) != DS_OK) {
        if (!s->pins)
            evict(c, i);
        goto out;
    }
    if (s->predicted) {
        c->st.prefetch_used++;
        s->predicted = 0;
    }
    if (s->fresh)
        c->st.misses++;            /* counted once, when first handed out */
    else
        c->st.hits++;
    s->fresh = 0;
    s->pins++;
    touch(c, s);
    w = &s->w;
out:
    pthread_mutex_unlock(&c->mu);
    return w;
}

void ds_experts_release(ds_expert_cache *c, int layer, int e)
{
    if (!c->streaming)
        return;
    pthread_mutex_lock(&c->mu);
    int i = c->where[layer * c->n_experts + e];
    if (i >= 0 && c->slots[i].pins > 0)
        c->slots[i].pins--;
    pthread_mutex_unlock(&c->mu);
}

void ds_experts_prefetch(ds_expert_cache *c, int layer, const int32_t *experts, int n, char *pinned)
{
    if (!c->streaming)
        return;
    pthread_mutex_lock(&c->mu);
    collect_done(c);
    for (int k = 0; k < n; k++) {
        if (pinned[k])
            continue;
        int key = layer * c->n_experts + experts[k];
        int i = c->where[key];
        if (i < 0) {
            /* keep one slab free for on-demand reads so the layer always progresses */
            int free_or_evictable = 0;
            for (int j = 0; j < c->nslots; j++)
                free_or_evictable += !c->slots[j].pins && !c->slots[j].loading;
            if (free_or_evictable < 2)
                break;
            i = pick_victim(c, key);
            if (i < 0 || start_read(c, i, key, NULL) != DS_OK)
                break;
            c->slots[i].fresh = 1;
        }
        c->slots[i].pins++;
        pinned[k] = 1;
    }
    pthread_mutex_unlock(&c->mu);
}

void ds_experts_predict(ds_expert_cache *c, int layer, const int32_t *experts, int n)
{
    if (layer < 0 || layer >= c->n_layers)
        return;
    pthread_mutex_lock(&c->mu);
    for (int k = 0; k < n; k++)
        c->pred[(size_t)layer * c->n_experts + experts[k]] = 1;
    if (c->streaming) {
        collect_done(c);
        int budget = c->nslots / 2;
        for (int k = 0; k < n && budget > 0; k++) {
            int key = layer * c->n_experts + experts[k];
            if (c->where[key] >= 0)
                continue;
            int i = pick_victim(c, key);
            if (i < 0 || start_read(c, i, key, NULL) != DS_OK)
                break;
            c->slots[i].predicted = 1;
            c->st.prefetched++;
            budget--;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

void ds_experts_observe(ds_expert_cache *c, int layer, const int32_t *experts, int n)
{
    pthread_mutex_lock(&c->mu);
    unsigned char *p = c->pred + (size_t)layer * c->n_experts;
    /* this layer has routed: its wrong predictions lose their protection */
    for (int i = 0; c->streaming && i < c->nslots; i++) {
        slot *s = &c->slots[i];
        if (s->predicted && s->key >= 0 && s->key / c->n_experts == layer) {
            int used = 0;
            for (int k = 0; k < n; k++)
                used |= s->key % c->n_experts == experts[k];
            if (!used)
                s->predicted = 0;
        }
    }
    int any = 0;
    for (int e = 0; e < c->n_experts; e++)
        any |= p[e];
    if (any) {
        for (int e = 0; e < c->n_experts; e++)
            c->st.predicted += p[e];
        for (int k = 0; k < n; k++)
            c->st.predicted_right += p[experts[k]];
        memset(p, 0, (size_t)c->n_experts);
    }
    pthread_mutex_unlock(&c->mu);
}

void ds_experts_stats(ds_expert_cache *c, ds_expert_stats *s)
{
    pthread_mutex_lock(&c->mu);
    *s = c->st;
    pthread_mutex_unlock(&c->mu);
}

int ds_experts_streaming(const ds_expert_cache *c) { return c->streaming; }

void ds_model_expert_stats(ds_model *m, ds_expert_stats *s)
{
    if (!s)
        return;
    if (m && m->experts)
        ds_experts_stats(m->experts, s);
    else
        memset(s, 0, sizeof *s);
}
