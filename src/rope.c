/* rope.c — YaRN-corrected rotary position embedding: the frequency table,
 * the MLA softmax mscale, and the two layouts DeepSeek uses (interleaved
 * pairs (2i, 2i+1) for MLA, half-split pairs (i, i+d/2) for the indexer). */
#include <math.h>
#include <string.h>
#include "internal.h"
#include "model.h"

float ds_yarn_mscale(double factor, double mscale)
{
    if (factor <= 1.0)
        return 1.0f;
    return (float)(0.1 * mscale * log(factor) + 1.0);
}

static double correction_dim(double rotations, int dim, double base, double orig_len)
{
    return dim * log(orig_len / (rotations * 2.0 * M_PI)) / (2.0 * log(base));
}

void ds_yarn_freqs(const ds_config *cfg, float *freq)
{
    const int dim = cfg->qk_rope_head_dim, half = dim / 2;
    for (int i = 0; i < half; i++)
        freq[i] = (float)(1.0 / pow(cfg->rope_theta, (double)(2 * i) / dim));
    if (!cfg->yarn || cfg->rope_factor <= 1.0)
        return;
    double low = floor(correction_dim(cfg->beta_fast, dim, cfg->rope_theta,
                                      cfg->original_max_position_embeddings));
    double high = ceil(correction_dim(cfg->beta_slow, dim, cfg->rope_theta,
                                      cfg->original_max_position_embeddings));
    if (low < 0)
        low = 0;
    if (high > dim - 1)
        high = dim - 1;
    if (low == high)
        high += 0.001;
    for (int i = 0; i < half; i++) {
        float ramp = (float)((i - low) / (high - low));
        ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
        float smooth = 1.0f - ramp;
        freq[i] = freq[i] / (float)cfg->rope_factor * (1.0f - smooth) + freq[i] * smooth;
    }
}

ds_status ds_rope_init(ds_model *m, ds_error *err)
{
    const ds_config *c = &m->cfg;
    m->rope_freq = ds_model_own(m, sizeof(float) * (size_t)(c->qk_rope_head_dim / 2), err);
    if (!m->rope_freq)
        return DS_ERR_NOMEM;
    ds_yarn_freqs(c, m->rope_freq);
    float scale = 1.0f / sqrtf((float)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    m->rope_mscale = 1.0f;
    if (c->yarn && c->rope_factor > 1.0) {
        /* HF semantics: softmax gains mscale(mscale_all_dim)^2; cos/sin gain
         * mscale(mscale)/mscale(mscale_all_dim), which is 1 in DeepSeek's configs. */
        float m_all = c->mscale_all_dim != 0.0 ? ds_yarn_mscale(c->rope_factor, c->mscale_all_dim) : 1.0f;
        scale *= m_all * m_all;
        m->rope_mscale = ds_yarn_mscale(c->rope_factor, c->mscale) / m_all;
    }
    m->attn_scale = scale;
    return DS_OK;
}

static void angle(int pos, float freq, float mscale, float *co, float *si)
{
    float a = (float)pos * freq;
    *co = (float)cos((double)a) * mscale;
    *si = (float)sin((double)a) * mscale;
}

/* The cos / sin of one position, kept per thread: every head of a token
 * (and the key, and the indexer's heads) rotates by the same angles, so
 * they are computed once per token and layer instead of once per head. */
enum { ROPE_CACHE_MAX = 256 };
static __thread struct {
    float mscale;
    int pos, half;
    float freq[ROPE_CACHE_MAX];     /* by value: a freed model's table may be reused at the same address */
    float co[ROPE_CACHE_MAX], si[ROPE_CACHE_MAX];
} rope_cache;

/* Points co / si at the angles of pos; 0 (nothing cached) when half is
 * too large for the cache. */
static int rope_angles(int pos, int half, const float *freq, float mscale, const float **co, const float **si)
{
    if (half > ROPE_CACHE_MAX)
        return 0;
    if (rope_cache.pos != pos || rope_cache.half != half || rope_cache.mscale != mscale ||
        memcmp(rope_cache.freq, freq, sizeof(float) * (size_t)half) != 0) {
        for (int i = 0; i < half; i++)
            angle(pos, freq[i], mscale, &rope_cache.co[i], &rope_cache.si[i]);
        memcpy(rope_cache.freq, freq, sizeof(float) * (size_t)half);
        rope_cache.pos = pos, rope_cache.half = half, rope_cache.mscale = mscale;
    }
    *co = rope_cache.co;
    *si = rope_cache.si;
    return 1;
}

void ds_rope_interleaved(float *x, int dim, int pos, const float *freq, float mscale)
{
    const float *cs, *sn;
    const int cached = rope_angles(pos, dim / 2, freq, mscale, &cs, &sn);
    for (int i = 0; i < dim / 2; i++) {
        float co, si, a = x[2 * i], b = x[2 * i + 1];
        if (cached)
            co = cs[i], si = sn[i];
        else
            angle(pos, freq[i], mscale, &co, &si);
        x[2 * i] = a * co - b * si;
        x[2 * i + 1] = a * si + b * co;
    }
}

void ds_rope_halves(float *x, int dim, int pos, const float *freq, float mscale)
{
    const int half = dim / 2;
    const float *cs, *sn;
    const int cached = rope_angles(pos, half, freq, mscale, &cs, &sn);
    for (int i = 0; i < half; i++) {
        float co, si, a = x[i], b = x[i + half];
        if (cached)
            co = cs[i], si = sn[i];
        else
            angle(pos, freq[i], mscale, &co, &si);
        x[i] = a * co - b * si;
        x[i + half] = a * si + b * co;
    }
}
