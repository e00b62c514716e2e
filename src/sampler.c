/* sampler.c — next-token choice from logits: greedy argmax (ties -> lower
 * id), or temperature sampling with optional top-k and top-p (nucleus),
 * seeded with a xoshiro256** generator so runs are reproducible.
 *
 * Top-k / top-p need the tokens in decreasing probability, but only as far
 * as the cut: a histogram of the probabilities by binary exponent finds the
 * buckets the cut can reach, and only their tokens are sorted (a few
 * hundred of a 129K vocabulary, instead of all of them every token). */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include "internal.h"

struct ds_sampler {
    ds_sampler_params p;
    uint64_t s[4];
    float *prob;
    int *idx;
    int cap;
    int full_sort;      /* tests: sort every token, as without the histogram */
};

void ds_sampler_set_full_sort(ds_sampler *s, int on)
{
    if (s)
        s->full_sort = on;
}

void ds_sampler_params_init(ds_sampler_params *p)
{
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->seed = 0x5eed;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static double next_unit(ds_sampler *s)
{
    uint64_t *q = s->s;
    uint64_t r = rotl(q[1] * 5, 7) * 9, t = q[1] << 17;
    q[2] ^= q[0];
    q[3] ^= q[1];
    q[1] ^= q[2];
    q[0] ^= q[3];
    q[2] ^= t;
    q[3] = rotl(q[3], 45);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

ds_status ds_sampler_create(const ds_sampler_params *p, ds_sampler **out, ds_error *err)
{
    if (!p || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "sampler: NULL argument");
    if (!(p->temperature >= 0.0f) || !(p->top_p > 0.0f && p->top_p <= 1.0f) || p->top_k < 0)
        return ds_fail(err, DS_ERR_INVALID_ARG,
                       "sampler: temperature must be >= 0, top_p in (0, 1], top_k >= 0");
    ds_sampler *s = ds_calloc(1, sizeof *s, err);
    if (!s)
        return DS_ERR_NOMEM;
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->s[i] = splitmix64(&x);
    *out = s;
    return DS_OK;
}

void ds_sampler_free(ds_sampler *s)
{
    if (!s)
        return;
    free(s->prob);
    free(s->idx);
    free(s);
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* 0 for 1, 1 for [1/2, 1), 2 for [1/4, 1/2), ..., 63 for the smallest
 * and 0: a larger bucket holds only smaller probabilities. */
static inline int prob_bucket(float p)
{
    if (!(p > 0.0f))
        return 63;
    const int e = -ilogbf(p);
    return e < 0 ? 0 : e > 63 ? 63 : e;
}

static int by_prob_desc(const void *a, const void *b, void *keys)
{
    const float *sort_keys = keys;
    int x = *(const int *)a, y = *(const int *)b;
    if (sort_keys[x] != sort_keys[y])
        return sort_keys[x] < sort_keys[y] ? 1 : -1;
    return (x > y) - (x < y);
}

/* Puts into idx the tokens that can come before the top-k / top-p cut (all
 * tokens of the probability buckets, by binary exponent, down to where the
 * cut is sure to fall, plus one bucket against rounding) and returns their
 * count.  prob is in (0, 1] (relative to the largest) or 0; tot is their
 * sum. */
static int cut_candidates(const float *prob, int n, int top_k, float top_p, double tot, int *idx)
{
    enum { NB = 64 };
    double mass[NB] = {0};
    int cnt[NB] = {0};
    for (int i = 0; i < n; i++)
        mass[prob_bucket(prob[i])] += prob[i], cnt[prob_bucket(prob[i])]++;
    int last = NB - 1;
    double cm = 0.0;
    long cc = 0;
    for (int b = 0; b < NB; b++) {
        cm += mass[b];
        cc += cnt[b];
        if ((top_k > 0 && cc >= top_k) || (top_k <= 0 && cm >= (double)top_p * tot * (1.0 + 1e-9))) {
            last = b + 1 < NB ? b + 1 : b;
            break;
        }
    }
    int nc = 0;
    for (int i = 0; i < n; i++)
        if (prob_bucket(prob[i]) <= last)
            idx[nc++] = i;
    return nc;
}

int ds_logits_have_nan(const float *v, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++)
        bad |= v[i] != v[i];
    return bad;
}

int32_t ds_sampler_sample(ds_sampler *s, const float *logits, int n)
{
    if (!s || !logits || n <= 0 || ds_logits_have_nan(logits, n))
        return -1;
    /* +Inf: that token (the first); all -Inf (every token masked): none
     * (exp(inf - inf) would make every probability NaN) */
    const int best = argmax(logits, n);
    if (s->p.temperature <= 0.0f || isinf(logits[best]))
        return logits[best] == -INFINITY ? -1 : best;
    if (s->cap < n) {
        float *np = realloc(s->prob, sizeof(float) * (size_t)n);
        if (np)
            s->prob = np;
        int *ni = realloc(s->idx, sizeof(int) * (size_t)n);
        if (ni)
            s->idx = ni;
        if (!np || !ni)
            return argmax(logits, n);
        s->cap = n;
    }
    float mx = logits[best];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        s->prob[i] = expf((logits[i] - mx) / s->p.temperature);
        sum += s->prob[i];
        s->idx[i] = i;
    }
    int m = n;
    if (s->p.top_k > 0 || s->p.top_p < 1.0f) {
        const int nc = s->full_sort ? n : cut_candidates(s->prob, n, s->p.top_k, s->p.top_p, sum, s->idx);
        qsort_r(s->idx, (size_t)nc, sizeof(int), by_prob_desc, s->prob);
        if (s->p.top_k > 0 && s->p.top_k < m)
            m = s->p.top_k;
        /* the top-p total: over the top k, or over all tokens (sum) */
        double cut = 0.0, tot = 0.0;
        if (m < n)
            for (int i = 0; i < m; i++)
                tot += s->prob[s->idx[i]];
        else
            tot = sum;
        const int lim = m < nc ? m : nc;
        int found = 0;
        for (int i = 0; i < lim; i++) {
            cut += s->prob[s->idx[i]];
            if (cut >= s->p.top_p * tot) {
                m = i + 1;
                found = 1;
                break;
            }
        }
        if (!found)
            m = lim;    /* top-k cut, or every candidate (the sum's rounding) */
        sum = 0.0;
        for (int i = 0; i < m; i++)
            sum += s->prob[s->idx[i]];
    }
    double r = next_unit(s) * sum, acc = 0.0;
    for (int i = 0; i < m; i++) {
        acc += s->prob[s->idx[i]];
        if (r < acc)
            return s->idx[i];
    }
    return s->idx[m - 1];
}
