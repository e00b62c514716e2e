/* kvcache.c — the per-sequence KV arena: for every layer and position the
 * MLA latent (f32, or e4m3 with one scale per 128 values), the rotated rope
 * key (f32, or bf16 in the compact layout) and the indexer key (128 x e4m3
 * in tiles of 16 positions, simd/index_tiles.h, +
 * f32 scale).  One allocation per context, sized by ctx_size, locked in RAM
 * when RLIMIT_MEMLOCK allows (ds_context_kv_locked says whether it was). */
#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "internal.h"
#include "model.h"

float ds_quant_e4m3_block(const float *v, int n, int ue8m0, uint8_t *q)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(v[i]);
        if (a > amax)
            amax = a;
    }
    if (amax < 1e-4f)
        amax = 1e-4f;
    float s = amax * (1.0f / 448.0f);
    if (ue8m0) {
        /* smallest power of two >= s, from s's bits as the reference does */
        uint32_t u;
        memcpy(&u, &s, 4);
        uint32_t e = (u >> 23) & 0xff;
        if (u & 0x7fffff)
            e++;
        u = e << 23;
        memcpy(&s, &u, 4);
    }
    for (int i = 0; i < n; i++) {
        float y = v[i] / s;
        y = y > 448.0f ? 448.0f : (y < -448.0f ? -448.0f : y);
        q[i] = ds_f32_to_e4m3(y);
    }
    return s;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

ds_status ds_kv_alloc(ds_context *c, ds_error *err)
{
    const ds_config *cfg = &c->model->cfg;
    const size_t P = (size_t)c->ctx_size, L = (size_t)cfg->num_hidden_layers;
    const size_t kvl = (size_t)cfg->kv_lora_rank, nb = (kvl + DS_QBLOCK - 1) / DS_QBLOCK;
    size_t lat = c->kv_type == DS_KV_F32 ? align64(P * kvl * 4) : align64(P * kvl) + align64(P * nb * 4);
    const size_t rope_es = c->kv_type == DS_KV_FP8_COMPACT ? 2 : 4;
    size_t per_layer = lat + align64(P * (size_t)cfg->qk_rope_head_dim * rope_es);
    if (cfg->is_v32)
        per_layer += align64(ds_index_tiles_bytes((int)P, cfg->index_head_dim)) + align64(P * 4);
    if (per_layer != 0 && L > SIZE_MAX / per_layer)
        return ds_fail(err, DS_ERR_NOMEM, "KV cache for %zu positions is too large", P);
    c->kv = ds_calloc(L, sizeof(ds_kv_layer), err);
    if (!c->kv)
        return DS_ERR_NOMEM;
    c->arena_bytes = per_layer * L != 0 ? per_layer * L : 64;
    /* An anonymous mapping (zeroed, page aligned) on huge pages: attention
     * reads the 2048 selected positions of a deep context scattered over
     * the arena, three rows each, and on 4 KiB pages nearly every row is a
     * TLB miss. */
    c->arena = mmap(NULL, c->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->arena == MAP_FAILED) {
        c->arena = NULL;
        free(c->kv);
        c->kv = NULL;
        return ds_fail(err, DS_ERR_NOMEM, "cannot allocate the KV cache: %zu bytes for %zu positions",
                       c->arena_bytes, P);
    }
    madvise(c->arena, c->arena_bytes, MADV_HUGEPAGE);
    c->kv_locked = mlock(c->arena, c->arena_bytes) == 0;   /* RLIMIT_MEMLOCK may refuse */
    uint8_t *p = c->arena;
    for (size_t l = 0; l < L; l++) {
        ds_kv_layer *k = &c->kv[l];
        if (c->kv_type == DS_KV_F32) {
            k->latent_f32 = (float *)p;
            p += align64(P * kvl * 4);
        } else {
            k->latent_q = p;
            p += align64(P * kvl);
            k->latent_s = (float *)p;
            p += align64(P * nb * 4);
        }
        if (c->kv_type == DS_KV_FP8_COMPACT)
            k->kpe_bf16 = (uint16_t *)p;
        else
            k->kpe = (float *)p;
        p += align64(P * (size_t)cfg->qk_rope_head_dim * rope_es);
        if (cfg->is_v32) {
            k->idx_k = p;
            p += align64(ds_index_tiles_bytes((int)P, cfg->index_head_dim));
            k->idx_s = (float *)p;
            p += align64(P * 4);
        }
    }
    return DS_OK;
}

void ds_kv_free(ds_context *c)
{
    if (c->arena) {
        if (c->kv_locked)
            munlock(c->arena, c->arena_bytes);
        munmap(c->arena, c->arena_bytes);
    }
    free(c->kv);
    c->arena = NULL;
    c->kv = NULL;
}

void ds_kv_store_latent(ds_context *c, int layer, int pos, const float *latent)
{
    const ds_config *cfg = &c->model->cfg;
    const int kvl = cfg->kv_lora_rank, nb = (kvl + DS_QBLOCK - 1) / DS_QBLOCK;
    ds_kv_layer *k = &c->kv[layer];
    if (c->kv_type == DS_KV_F32) {
        memcpy(k->latent_f32 + (size_t)pos * kvl, latent, sizeof(float) * (size_t)kvl);
        return;
    }
    for (int b = 0; b < nb; b++) {
        int n = kvl - b * DS_QBLOCK < DS_QBLOCK ? kvl - b * DS_QBLOCK : DS_QBLOCK;
        k->latent_s[(size_t)pos * nb + b] = ds_quant_e4m3_block(
            latent + b * DS_QBLOCK, n, cfg->scale_ue8m0, k->latent_q + (size_t)pos * kvl + b * DS_QBLOCK);
    }
}

void ds_kv_load_latent(const ds_context *c, int layer, int pos, float *out)
{
    const int kvl = c->model->cfg.kv_lora_rank, nb = (kvl + DS_QBLOCK - 1) / DS_QBLOCK;
    const ds_kv_layer *k = &c->kv[layer];
    if (c->kv_type == DS_KV_F32) {
        memcpy(out, k->latent_f32 + (size_t)pos * kvl, sizeof(float) * (size_t)kvl);
        return;
    }
    /* one row of an FP8 matrix with 128-wide scale blocks: the SIMD decoder */
    const ds_mat row = {DS_DT_F8_E4M3, 1, kvl, k->latent_q + (size_t)pos * kvl, k->latent_s + (size_t)pos * nb,
                         NULL, 0};
    ds_mat_row(&row, 0, out);
}

void ds_kv_prefetch(const ds_context *c, int layer, int pos)
{
    const ds_config *cfg = &c->model->cfg;
    const size_t kvl = (size_t)cfg->kv_lora_rank, nb = (kvl + DS_QBLOCK - 1) / DS_QBLOCK;
    const size_t rope = (size_t)cfg->qk_rope_head_dim;
    const ds_kv_layer *k = &c->kv[layer];
    const char *lat, *rp;
    size_t lat_bytes, rope_bytes;
    if (c->kv_type == DS_KV_F32) {
        lat = (const char *)(k->latent_f32 + (size_t)pos * kvl), lat_bytes = kvl * 4;
    } else {
        lat = (const char *)(k->latent_q + (size_t)pos * kvl), lat_bytes = kvl;
        __builtin_prefetch(k->latent_s + (size_t)pos * nb, 0, 3);
    }
    if (c->kv_type == DS_KV_FP8_COMPACT)
        rp = (const char *)(k->kpe_bf16 + (size_t)pos * rope), rope_bytes = rope * 2;
    else
        rp = (const char *)(k->kpe + (size_t)pos * rope), rope_bytes = rope * 4;
    for (size_t b = 0; b < lat_bytes; b += 64)
        __builtin_prefetch(lat + b, 0, 3);
    for (size_t b = 0; b < rope_bytes; b += 64)
        __builtin_prefetch(rp + b, 0, 3);
}

void ds_kv_attn_keys(const ds_context *c, int layer, ds_attn_keys *k)
{
    const ds_kv_layer *kv = &c->kv[layer];
    memset(k, 0, sizeof *k);
    k->kvl = c->model->cfg.kv_lora_rank;
    k->rope = c->model->cfg.qk_rope_head_dim;
    if (c->kv_type == DS_KV_F32)
        k->lat_f32 = kv->latent_f32;
    else
        k->lat_q = kv->latent_q, k->lat_s = kv->latent_s;
    if (c->kv_type == DS_KV_FP8_COMPACT)
        k->rope_bf16 = kv->kpe_bf16;
    else
        k->rope_f32 = kv->kpe;
}

/* bf16 with round-to-nearest-even (finite inputs). */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void ds_kv_store_rope(ds_context *c, int layer, int pos, const float *kpe)
{
    const int rope = c->model->cfg.qk_rope_head_dim;
    ds_kv_layer *k = &c->kv[layer];
    if (c->kv_type == DS_KV_FP8_COMPACT)
        for (int i = 0; i < rope; i++)
            k->kpe_bf16[(size_t)pos * rope + i] = f32_to_bf16(kpe[i]);
    else
        memcpy(k->kpe + (size_t)pos * rope, kpe, sizeof(float) * (size_t)rope);
}

const float *ds_kv_rope(const ds_context *c, int layer, int pos, float *tmp)
{
    const int rope = c->model->cfg.qk_rope_head_dim;
    const ds_kv_layer *k = &c->kv[layer];
    if (c->kv_type != DS_KV_FP8_COMPACT)
        return k->kpe + (size_t)pos * rope;
    for (int i = 0; i < rope; i++) {
        uint32_t u = (uint32_t)k->kpe_bf16[(size_t)pos * rope + i] << 16;
        memcpy(tmp + i, &u, 4);
    }
    return tmp;
}

size_t ds_kv_bytes_per_position_layer(const ds_model *m, ds_kv_type t)
{
    if (!m || (t != DS_KV_F32 && t != DS_KV_FP8 && t != DS_KV_FP8_COMPACT))
        return 0;
    const ds_config *cfg = &m->cfg;
    const size_t kvl = (size_t)cfg->kv_lora_rank, nb = (kvl + DS_QBLOCK - 1) / DS_QBLOCK;
    size_t b = t == DS_KV_F32 ? kvl * 4 : kvl + nb * 4;
    b += (size_t)cfg->qk_rope_head_dim * (t == DS_KV_FP8_COMPACT ? 2 : 4);
    if (cfg->is_v32)
        b += (size_t)cfg->index_head_dim + 4;
    return b;
}

/* A seeded stream of roughly unit-normal values (Irwin-Hall: the sum of four
 * uniforms, centred and scaled), cheap enough for millions per layer. */
static float synth_normal(uint64_t *s)
{
    float sum = 0.0f;
    for (int i = 0; i < 4; i++) {
        *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;   /* xorshift64 */
        sum += (float)(*s >> 40) * (1.0f / 16777216.0f);
    }
    return (sum - 2.0f) * 1.7320508f;
}

ds_status ds_context_fill_synthetic(ds_context *c, int n, uint64_t seed, ds_error *err)
{
    if (!c || n < 0 || n > c->ctx_size)
        return ds_fail(err, DS_ERR_INVALID_ARG, "cannot fill %d synthetic positions (context size %d)", n,
                       c ? c->ctx_size : 0);
    const ds_config *cfg = &c->model->cfg;
    const int L = cfg->num_hidden_layers, kvl = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim;
    const int id = cfg->is_v32 ? cfg->index_head_dim : 0;
    const int width = kvl + rope + id;
    int fail = 0;
#pragma omp parallel
    {
        float *v = malloc(sizeof(float) * (size_t)(width > 0 ? width : 1));
        if (!v) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int l = 0; l < L; l++) {
            if (!v)
                continue;
            uint64_t s = (seed + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)l + 1) * 0xd1b54a32d192ed03ull;
            if (!s)
                s = 1;
            ds_kv_layer *k = &c->kv[l];
            for (int p = 0; p < n; p++) {
                for (int i = 0; i < width; i++)
                    v[i] = synth_normal(&s);
                ds_kv_store_latent(c, l, p, v);
                ds_kv_store_rope(c, l, p, v + kvl);
                if (id) {
                    uint8_t row[DS_INDEX_MAXDIM];   /* index_head_dim <= 256 (config.c) */
                    k->idx_s[p] = ds_quant_e4m3_block(v + kvl + rope, id, cfg->scale_ue8m0, row);
                    ds_index_key_put(k->idx_k, id, p, row);
                }
            }
        }
        free(v);
    }
    if (fail)
        return ds_fail(err, DS_ERR_NOMEM, "out of memory filling the context");
    c->pos = n;
    return DS_OK;
}
