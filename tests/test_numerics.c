/* test_numerics.c — unit tests of the numeric building blocks of the
 * forward pass against independent expectations: FP8 e4m3 codes and
 * rounding, the block quantiser (plain and ue8m0 scales), the FP8 latent
 * cache round trip, the Hadamard transform, YaRN frequencies and mscale,
 * noaux_tc routing on hand-made scores, top-k selection, and the sampler's
 * top-k / top-p cut (hand-computed nuclei, and its candidate histogram
 * against sorting every token). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "model.h"

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

/* e4m3fn from its definition: bias 7, 3 mantissa bits, subnormals at 2^-9. */
static double e4m3_value(int c)
{
    int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if ((c & 0x7f) == 0x7f)
        return NAN;
    double v = e == 0 ? ldexp(m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

static void test_e4m3_codes(void)
{
    for (int c = 0; c < 256; c++) {
        double want = e4m3_value(c);
        float got = ds_e4m3_to_f32((uint8_t)c);
        if (isnan(want))
            CHECK(isnan(got), "code 0x%02x should be NaN", c);
        else {
            CHECK(got == (float)want, "code 0x%02x decodes to %g, expected %g", c, got, want);
            CHECK(ds_f32_to_e4m3(got) == c || (c == 0x80 && ds_f32_to_e4m3(got) == 0x80),
                  "code 0x%02x does not round-trip (got 0x%02x)", c, ds_f32_to_e4m3(got));
        }
    }
    CHECK(ds_e4m3_to_f32(0x7e) == 448.0f, "max finite is 448");
    CHECK(ds_e4m3_to_f32(0x01) == ldexpf(1, -9), "smallest subnormal is 2^-9");
}

static void test_e4m3_rounding(void)
{
    /* Every midpoint between neighbouring positive codes rounds to the even code;
     * a hair above goes up, a hair below goes down. */
    for (int c = 0; c < 0x7e; c++) {
        double lo = e4m3_value(c), hi = e4m3_value(c + 1), mid = (lo + hi) / 2;
        int even = (c % 2 == 0) ? c : c + 1;
        CHECK(ds_f32_to_e4m3((float)mid) == even, "midpoint %g between 0x%02x/0x%02x -> 0x%02x", mid, c,
              c + 1, ds_f32_to_e4m3((float)mid));
        CHECK(ds_f32_to_e4m3((float)(mid + (hi - lo) * 0.01)) == c + 1, "above midpoint of 0x%02x", c);
        CHECK(ds_f32_to_e4m3((float)(mid - (hi - lo) * 0.01)) == c, "below midpoint of 0x%02x", c);
        CHECK(ds_f32_to_e4m3((float)-mid) == (0x80 | even), "negative midpoint of 0x%02x", c);
    }
    /* saturation, NaN, signed zero, below half the smallest subnormal */
    CHECK(ds_f32_to_e4m3(448.0f) == 0x7e, "448");
    CHECK(ds_f32_to_e4m3(463.0f) == 0x7e, "463 saturates");
    CHECK(ds_f32_to_e4m3(1e6f) == 0x7e, "1e6 saturates");
    CHECK(ds_f32_to_e4m3(-1e6f) == 0xfe, "-1e6 saturates");
    CHECK(ds_f32_to_e4m3(INFINITY) == 0x7e, "inf saturates");
    CHECK((ds_f32_to_e4m3(NAN) & 0x7f) == 0x7f, "NaN stays NaN");
    CHECK(ds_f32_to_e4m3(-0.0f) == 0x80, "-0");
    CHECK(ds_f32_to_e4m3(ldexpf(1, -10)) == 0x00, "2^-10 ties to even 0");
    CHECK(ds_f32_to_e4m3(ldexpf(3, -10)) == 0x02, "3 * 2^-10 ties to even 2 * 2^-9");
}

static float ref_ue8m0(float amax)
{
    float s = amax * (1.0f / 448.0f);
    int e;
    float m = frexpf(s, &e);        /* s = m 2^e, m in [0.5, 1) */
    return m == 0.5f ? s : ldexpf(1.0f, e);
}

static void test_block_quant(void)
{
    float v[128];
    uint8_t q[128];
    srand(7);
    for (int ue = 0; ue <= 1; ue++)
        for (int trial = 0; trial < 200; trial++) {
            float mag = ldexpf(1.0f, rand() % 20 - 10);
            int n = trial % 3 == 0 ? 64 : 128;
            float amax = 0.0f;
            for (int i = 0; i < n; i++) {
                v[i] = mag * ((float)rand() / RAND_MAX * 2.0f - 1.0f);
                amax = fmaxf(amax, fabsf(v[i]));
            }
            if (trial == 5)
                amax = 448.0f * ldexpf(1.0f, -5), v[3] = amax;   /* amax/448 a power of two */
            if (trial == 6) {
                memset(v, 0, sizeof v);                          /* all zero: amax floor 1e-4 */
                amax = 0.0f;
            }
            float want_s = ue ? ref_ue8m0(fmaxf(amax, 1e-4f)) : fmaxf(amax, 1e-4f) * (1.0f / 448.0f);
            float s = ds_quant_e4m3_block(v, n, ue, q);
            CHECK(s == want_s, "scale %g, expected %g (ue8m0 %d, amax %g)", s, want_s, ue, amax);
            for (int i = 0; i < n; i++) {
                float y = fminf(fmaxf(v[i] / want_s, -448.0f), 448.0f);
                CHECK(q[i] == ds_f32_to_e4m3(y), "element %d quantised to 0x%02x", i, q[i]);
                CHECK(fabsf(ds_e4m3_to_f32(q[i]) * s - v[i]) <= fabsf(v[i]) / 16 + ldexpf(s, -9),
                      "element %d round trip error too large", i);
            }
        }
    /* ue8m0 scales are powers of two */
    float x[128];
    for (int i = 0; i < 128; i++)
        x[i] = 3.0f * (i % 2 ? 1 : -1);
    float s = ds_quant_e4m3_block(x, 128, 1, q);
    CHECK(s == ldexpf(1.0f, -7), "ue8m0 scale of amax 3 is 2^-7 (got %g)", s);
}

static void test_hadamard(void)
{
    for (int n = 1; n <= 128; n *= 2) {
        float x[128], y[128];
        for (int i = 0; i < n; i++)
            x[i] = (float)rand() / RAND_MAX - 0.5f;
        memcpy(y, x, sizeof(float) * n);
        ds_hadamard(y, n);
        for (int i = 0; i < n; i++) {
            double s = 0.0;
            for (int j = 0; j < n; j++)
                s += (__builtin_popcount(i & j) & 1 ? -1.0 : 1.0) * x[j];
            s /= sqrt((double)n);
            CHECK(fabs(s - y[i]) < 1e-5, "hadamard n=%d row %d: %g vs %g", n, i, y[i], s);
        }
    }
}

static void test_yarn(void)
{
    ds_config c;
    memset(&c, 0, sizeof c);
    c.qk_rope_head_dim = 64;
    c.qk_nope_head_dim = 128;
    c.rope_theta = 10000.0;
    c.yarn = 1;
    c.rope_factor = 40.0;
    c.beta_fast = 32;
    c.beta_slow = 1;
    c.original_max_position_embeddings = 4096;
    float f[32];
    ds_yarn_freqs(&c, f);
    /* SPEC 3.4: pairs 0..10 unchanged, 11..22 blended, 23.. divided by 40 */
    const struct { int i; double v; } want[] = {
        {0, 1.0}, {1, 0.7498942}, {8, 0.1}, {10, 0.05623413}, {11, 0.03900693}, {12, 0.02687936},
        {13, 0.01837814}, {16, 0.0055}, {19, 0.001370513}, {22, 1.778279e-4}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
        CHECK(fabs(f[want[k].i] - want[k].v) <= 2e-6 * want[k].v + 1e-12, "yarn f[%d] = %.9g, expected %.9g",
              want[k].i, f[want[k].i], want[k].v);
    for (int i = 23; i < 32; i++) {
        double base = pow(10000.0, -2.0 * i / 64) / 40.0;
        CHECK(fabs(f[i] - base) <= 1e-6 * base, "yarn f[%d] = %g, expected %g", i, f[i], base);
    }
    float m = ds_yarn_mscale(40.0, 1.0);
    CHECK(fabsf(m - 1.3688879454f) < 1e-6f, "mscale %g", m);
    CHECK(fabs(m * m / sqrt(192.0) - 0.1352337789) < 1e-6, "softmax scale %g", m * m / sqrt(192.0));
    /* the conformance configs: 64 original positions give low 0, high 9 */
    c.original_max_position_embeddings = 64;
    ds_yarn_freqs(&c, f);
    CHECK(f[0] == 1.0f, "pair 0 keeps its frequency");
    for (int i = 9; i < 32; i++)
        CHECK(fabs(f[i] - pow(10000.0, -2.0 * i / 64) / 40.0) <= 1e-6 * f[i], "pair %d divided by 40", i);
    CHECK(f[4] < pow(10000.0, -8.0 / 64) && f[4] > pow(10000.0, -8.0 / 64) / 40, "pair 4 blends");
    /* no rope_scaling: plain RoPE */
    c.yarn = 0;
    ds_yarn_freqs(&c, f);
    CHECK(fabs(f[31] - pow(10000.0, -62.0 / 64)) < 1e-9, "plain rope frequency");
    /* interleaved and half-split layouts rotate different pairs by the same angle */
    float x[8] = {1, 0, 0, 0, 0, 0, 0, 0}, fr[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    ds_rope_interleaved(x, 8, 2, fr, 1.0f);
    CHECK(fabsf(x[0] - cosf(1.0f)) < 1e-6f && fabsf(x[1] - sinf(1.0f)) < 1e-6f, "interleaved pair (0,1)");
    float y[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    ds_rope_halves(y, 8, 2, fr, 1.0f);
    CHECK(fabsf(y[0] - cosf(1.0f)) < 1e-6f && fabsf(y[4] - sinf(1.0f)) < 1e-6f && y[1] == 0.0f,
          "half-split pair (0,4)");
}

static float logit_of(double p) { return (float)log(p / (1.0 - p)); }

static void test_router(void)
{
    int32_t ex[8];
    float w[8];
    float lg[8], bias[8] = {0};
    /* group score = sum of the two best: group 1 (0.7+0.7) beats group 0 (0.95+0.05) */
    const double s1[8] = {0.95, 0.05, 0.7, 0.7, 0.1, 0.1, 0.2, 0.2};
    for (int i = 0; i < 8; i++)
        lg[i] = logit_of(s1[i]);
    ds_router_params p = {8, 4, 1, 2, 2.5f, 1};
    ds_route(&p, lg, bias, ex, w);
    CHECK(ex[0] == 2 && ex[1] == 3, "sum-of-top-2 group rule: got %d %d", ex[0], ex[1]);
    CHECK(fabsf(w[0] - 1.25f) < 1e-6f && fabsf(w[1] - 1.25f) < 1e-6f, "weights %g %g", w[0], w[1]);
    /* the bias steers selection; weights use the unbiased scores */
    const double s2[8] = {0.9, 0.3, 0.8, 0.2, 0.1, 0.1, 0.1, 0.1};
    for (int i = 0; i < 8; i++)
        lg[i] = logit_of(s2[i]);
    bias[1] = 0.7f;      /* b1 = 1.0 > b2 = 0.8 */
    ds_router_params p2 = {8, 2, 1, 2, 1.0f, 1};
    ds_route(&p2, lg, bias, ex, w);
    CHECK(ex[0] == 0 && ex[1] == 1, "bias selects expert 1: got %d %d", ex[0], ex[1]);
    CHECK(fabsf(w[0] - 0.75f) < 1e-5f && fabsf(w[1] - 0.25f) < 1e-5f, "unbiased weights %g %g", w[0], w[1]);
    /* without normalisation the weight is score * scale */
    ds_router_params p3 = {8, 2, 1, 2, 2.0f, 0};
    ds_route(&p3, lg, bias, ex, w);
    CHECK(fabsf(w[0] - 1.8f) < 1e-5f && fabsf(w[1] - 0.6f) < 1e-5f, "unnormalised weights %g %g", w[0], w[1]);
    /* ties everywhere: lowest groups, then lowest experts */
    memset(bias, 0, sizeof bias);
    for (int i = 0; i < 8; i++)
        lg[i] = 0.0f;
    ds_router_params p4 = {8, 4, 2, 3, 2.5f, 1};
    ds_route(&p4, lg, bias, ex, w);
    CHECK(ex[0] == 0 && ex[1] == 1 && ex[2] == 2, "ties: got %d %d %d", ex[0], ex[1], ex[2]);
    CHECK(fabsf(w[0] + w[1] + w[2] - 2.5f) < 1e-5f, "weights sum to the scale");
    /* a dropped group's best expert is never chosen */
    const double s5[8] = {0.99, 0.01, 0.6, 0.6, 0.55, 0.55, 0.01, 0.01};
    for (int i = 0; i < 8; i++)
        lg[i] = logit_of(s5[i]);
    ds_router_params p5 = {8, 4, 2, 2, 1.0f, 1};
    ds_route(&p5, lg, bias, ex, w);
    CHECK(ex[0] == 2 && ex[1] == 3, "expert 0 sits in a dropped group: got %d %d", ex[0], ex[1]);
}

static int cmp_desc_then_pos(const void *a, const void *b, void *arg)
{
    const float *s = arg;
    int x = *(const int *)a, y = *(const int *)b;
    if (s[x] != s[y])
        return s[x] < s[y] ? 1 : -1;
    return x - y;
}

static void test_topk(void)
{
    enum { N = 40000 };
    float *s = malloc(sizeof(float) * N);
    int32_t *got = malloc(sizeof(int32_t) * N);
    int *order = malloc(sizeof(int) * N);
    for (int trial = 0; trial < 160; trial++) {
        const int big = trial >= 100;   /* decode-sized: tens of thousands of keys, k = 2048 */
        int n = big ? 2000 + rand() % (N - 2000) : 1 + rand() % 300, k = big ? 2048 : 1 + rand() % 40;
        for (int i = 0; i < n; i++)
            switch (trial % 5) {
            case 0: s[i] = (float)(rand() % 50); break;                           /* many ties */
            case 1: s[i] = ((float)rand() / RAND_MAX - 0.5f) * 1e-3f; break;     /* signs, magnitudes */
            case 2: s[i] = rand() % 3 ? (rand() & 1 ? 0.0f : -0.0f) : (float)rand() / RAND_MAX - 0.7f; break;
            case 3: s[i] = 7.0f; break;                                           /* all equal */
            default: s[i] = ldexpf((float)(rand() % 1000), rand() % 60 - 30) * (rand() & 1 ? 1 : -1); break;
            }
        for (int i = 0; i < n; i++)
            order[i] = i;
        qsort_r(order, (size_t)n, sizeof(int), cmp_desc_then_pos, s);
        int m = ds_topk_positions(s, n, k, got);
        int want_m = k < n ? k : n;
        CHECK(m == want_m, "top-%d of %d returned %d", k, n, m);
        char *in = calloc(N, 1);
        for (int i = 0; i < want_m; i++)
            in[order[i]] = 1;
        for (int i = 0; i < m; i++) {
            CHECK(in[got[i]], "position %d should not be selected", got[i]);
            if (i)
                CHECK(got[i] > got[i - 1], "selection is not ascending");
        }
        free(in);
    }
    free(s);
    free(got);
    free(order);
}

/* The FP8 latent cache stores e4m3(v / s) with one scale per 128 values
 * (power of two with ue8m0) and reads back code * scale. */
static void test_latent_cache(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    ds_model *m;
    ds_error err;
    if (ds_model_load(dir, NULL, &m, &err) != DS_OK) {
        CHECK(0, "cannot load %s: %s", dir, err.msg);
        return;
    }
    for (int ue = 0; ue <= 1; ue++) {
        m->cfg.scale_ue8m0 = ue;
        ds_context_params cp;
        ds_context_params_init(&cp);
        cp.ctx_size = 4;
        ds_context *c;
        if (ds_context_create(m, &cp, &c, &err) != DS_OK) {
            CHECK(0, "context: %s", err.msg);
            break;
        }
        const int n = m->cfg.kv_lora_rank;
        float *v = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
        for (int i = 0; i < n; i++)
            v[i] = ((float)rand() / RAND_MAX - 0.5f) * (i < 128 ? 0.01f : 3.0f);
        ds_kv_store_latent(c, 1, 2, v);
        ds_kv_load_latent(c, 1, 2, back);
        for (int b = 0; b < n / 128; b++) {
            float amax = 0.0f;
            for (int i = 0; i < 128; i++)
                amax = fmaxf(amax, fabsf(v[b * 128 + i]));
            float s = ue ? ref_ue8m0(amax) : amax * (1.0f / 448.0f);
            for (int i = b * 128; i < b * 128 + 128; i++) {
                float want = ds_e4m3_to_f32(ds_f32_to_e4m3(v[i] / s)) * s;
                CHECK(back[i] == want, "latent %d: %g, expected %g (ue8m0 %d)", i, back[i], want, ue);
            }
        }
        free(v);
        free(back);
        ds_context_free(c);
    }
    ds_model_free(m);
}

/* The indexer's vectorised FP8 dot equals the exact int64 reference bit for
 * bit: random codes (all 256, NaN codes included), extreme magnitudes, odd
 * lengths and tails. */
static void test_index_dot(void)
{
    static const int lens[] = {1, 3, 7, 15, 16, 17, 64, 100, 127, 128, 129, 200, 255, 256};
    uint8_t a[256], b[256];
    int bad = 0;
    for (int rep = 0; rep < 400; rep++)
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            const int n = lens[li];
            for (int i = 0; i < n; i++) {
                /* mix all codes with runs of the largest and smallest magnitudes */
                int mode = rep % 4;
                a[i] = (uint8_t)(mode == 1 ? (rand() & 1 ? 0x7e : 0xfe) : mode == 2 ? (rand() & 7) : rand());
                b[i] = (uint8_t)(mode == 3 ? (0x01 | (rand() & 0x80)) : rand());
            }
            float r = ds_index_dot_ref(a, b, n), f = ds_index_dot_fast(a, b, n);
            if (memcmp(&r, &f, sizeof r) != 0 && bad++ < 5)
                printf("index dot n=%d: ref %.9g fast %.9g\n", n, r, f);
        }
    CHECK(bad == 0, "%d vectorised indexer dots differ from the exact reference", bad);
}

/* ds_context_fill_synthetic (dsinfer-bench --depth-fill synthetic) leaves
 * the caches as prefill would: finite latents, e4m3 index keys without NaN
 * codes quantised with a positive scale, the position at the depth, seeded
 * contents; decode then runs from there and gives finite logits. */
static void test_fill_synthetic(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    ds_model *m;
    ds_error err;
    if (ds_model_load(dir, NULL, &m, &err) != DS_OK) {
        CHECK(0, "cannot load %s: %s", dir, err.msg);
        return;
    }
    const ds_config *cfg = &m->cfg;
    const int depth = 77, L = cfg->num_hidden_layers, id = cfg->index_head_dim, kvl = cfg->kv_lora_rank;
    ds_context *c[3] = {0};
    for (int i = 0; i < 3; i++) {
        ds_context_params cp;
        ds_context_params_init(&cp);
        cp.ctx_size = depth + 2;
        if (ds_context_create(m, &cp, &c[i], &err) != DS_OK ||
            ds_context_fill_synthetic(c[i], depth, i == 2 ? 8 : 7, &err) != DS_OK) {
            CHECK(0, "synthetic fill: %s", err.msg);
            goto out;
        }
        CHECK(ds_context_pos(c[i]) == depth, "position %d after filling %d", ds_context_pos(c[i]), depth);
    }
    CHECK(ds_context_fill_synthetic(c[0], depth + 3, 1, &err) == DS_ERR_INVALID_ARG, "fill past the context size");
    int nan_codes = 0, bad_scales = 0, same = 1, differs = 0;
    float *lat = malloc(sizeof(float) * (size_t)kvl);
    for (int l = 0; l < L; l++) {
        const ds_kv_layer *a = &c[0]->kv[l], *b = &c[1]->kv[l], *o = &c[2]->kv[l];
        for (int p = 0; p < depth; p++) {
            uint8_t row[DS_INDEX_MAXDIM];
            ds_index_keys_get(a->idx_k, id, p, 1, row);
            for (int i = 0; i < id; i++)
                nan_codes += (row[i] & 0x7f) == 0x7f;
            bad_scales += !(a->idx_s[p] > 0.0f && isfinite(a->idx_s[p]));
            ds_kv_load_latent(c[0], l, p, lat);
            for (int i = 0; i < kvl; i++)
                bad_scales += !isfinite(lat[i]);
        }
        same &= memcmp(a->idx_k, b->idx_k, ds_index_tiles_bytes(depth, id)) == 0 &&
                memcmp(a->idx_s, b->idx_s, sizeof(float) * depth) == 0 &&
                memcmp(a->latent_q, b->latent_q, (size_t)depth * kvl) == 0;
        differs |= memcmp(a->idx_k, o->idx_k, ds_index_tiles_bytes(depth, id)) != 0;
    }
    free(lat);
    CHECK(nan_codes == 0, "%d NaN codes among the synthetic index keys", nan_codes);
    CHECK(bad_scales == 0, "%d non-positive or non-finite scales / latents", bad_scales);
    CHECK(same, "the same seed gives different caches");
    CHECK(differs, "another seed gives the same index keys");
    {
        int32_t tok = 5;
        float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
        ds_status st = ds_eval(c[0], &tok, 1, logits, 0, &err);
        CHECK(st == DS_OK, "decode after the synthetic fill: %s", err.msg);
        int finite = 1;
        for (int i = 0; st == DS_OK && i < cfg->vocab_size; i++)
            finite &= isfinite(logits[i]) != 0;
        CHECK(finite, "non-finite logits after the synthetic fill");
        CHECK(ds_context_pos(c[0]) == depth + 1, "position after one decode step");
        free(logits);
    }
out:
    for (int i = 0; i < 3; i++)
        ds_context_free(c[i]);
    ds_model_free(m);
}

/* The CPU indexer's scoring path (query and key blocks, key ranges split
 * across threads in decode, query blocks with causal limits in prefill)
 * gives, for every query and key, the reference score bit for bit: per head
 * the exact FP8 dot (ds_index_dot_ref), then the ReLU-weighted head sum in
 * head order, times the key scale; and selects the top-k of those scores. */
typedef struct score_trace {
    int start, T, n_keys;
    float *scores;     /* [T][n_keys] */
    int32_t *topk;     /* [T][topk] */
    int *ntopk, topk_cap, seen;
} score_trace;

static void on_trace(void *user, ds_trace_kind kind, int layer, int pos, const void *data, int n)
{
    score_trace *st = user;
    (void)layer;
    const int t = pos - st->start;
    if (t < 0 || t >= st->T)
        return;
    if (kind == DS_TRACE_INDEXER_SCORES && n <= st->n_keys) {
        memcpy(st->scores + (size_t)t * st->n_keys, data, sizeof(float) * (size_t)n);
        st->seen++;
    } else if (kind == DS_TRACE_INDEXER_TOPK && n <= st->topk_cap) {
        memcpy(st->topk + (size_t)t * st->topk_cap, data, sizeof(int32_t) * (size_t)n);
        st->ntopk[t] = n;
    }
}

/* Random e4m3 codes, never NaN. */
static void rand_codes(uint8_t *q, int n)
{
    for (int i = 0; i < n; i++)
        do
            q[i] = (uint8_t)rand();
        while ((q[i] & 0x7f) == 0x7f);
}

/* Key j of a layer's indexer cache as a row (out of its tiles); the
 * buffer is the caller thread's and good until the next call. */
static const uint8_t *key_row(const ds_kv_layer *kv, int id, int j)
{
    static __thread uint8_t row[DS_INDEX_MAXDIM];
    ds_index_keys_get(kv->idx_k, id, j, 1, row);
    return row;
}

/* An untraced decode selection over keys 0 .. n - 1 of the layer (query q8,
 * weights w) against the top-k of the reference scores; 1 when it differs. */
static int untraced_select_differs(ds_context *c, int layer, const uint8_t *q8, const float *w, int n)
{
    const ds_config *cfg = &c->model->cfg;
    const int ih = cfg->index_n_heads, id = cfg->index_head_dim, topk = cfg->index_topk;
    const ds_kv_layer *kv = &c->kv[layer];
    float *ref = malloc(sizeof(float) * n);
    int32_t *sel = malloc(sizeof(int32_t) * topk), *want_sel = malloc(sizeof(int32_t) * topk);
    for (int j = 0; j < n; j++) {
        float sc = 0.0f;
        for (int h = 0; h < ih; h++) {
            float d = ds_index_dot_ref(q8 + (size_t)h * id, key_row(kv, id, j), id);
            if (d > 0.0f) {
                volatile float pr = w[h] * d;
                sc += pr;
            }
        }
        ref[j] = sc * kv->idx_s[j];
    }
    const int k = ds_topk_positions(ref, n, topk, want_sel);
    int nsel = -1;
    ds_error err;
    ds_status st = ds_indexer_select(c, layer, q8, w, 1, n - 1, sel, &nsel, topk, &err);
    const int differs = st != DS_OK || nsel != k || memcmp(sel, want_sel, sizeof(int32_t) * k) != 0;
    free(ref), free(sel), free(want_sel);
    return differs;
}

static void test_index_select(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    ds_model *m;
    ds_error err;
    if (ds_model_load(dir, NULL, &m, &err) != DS_OK) {
        CHECK(0, "cannot load %s: %s", dir, err.msg);
        return;
    }
    const ds_config *cfg = &m->cfg;
    const int ih = cfg->index_n_heads, id = cfg->index_head_dim, topk = cfg->index_topk, layer = 1;
    enum { DEPTH = 1040 };
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.ctx_size = DEPTH;
    ds_context *c;
    if (ds_context_create(m, &cp, &c, &err) != DS_OK || ds_context_fill_synthetic(c, DEPTH, 3, &err) != DS_OK) {
        CHECK(0, "context: %s", err.msg);
        ds_model_free(m);
        return;
    }
    const ds_kv_layer *kv = &c->kv[layer];
    /* decode steps at 1, 7, 9, 127, 1000 keys; prefill blocks (odd T, with
     * and without earlier context) */
    static const int cases[][2] = {{0, 1}, {6, 1}, {8, 1}, {126, 1}, {511, 1}, {999, 1}, {0, 9}, {500, 37}, {1000, 40}};
    int bad = 0, bad_sel = 0, calls = 0, calls_fast = 0;
    /* ties: keys 200..399 repeat keys 0..19 ten times over, scales too */
    for (int j = 200; j < 400; j++) {
        ds_index_key_put(c->kv[layer].idx_k, id, j, key_row(&c->kv[layer], id, j % 20));
        c->kv[layer].idx_s[j] = c->kv[layer].idx_s[j % 20];
    }
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int start = cases[ci][0], T = cases[ci][1], nk = start + T;
        uint8_t *q8 = malloc((size_t)T * ih * id);
        float *w = malloc(sizeof(float) * (size_t)T * ih);
        for (int i = 0; i < T * ih * id; i++)   /* any code but NaN; some queries all-positive */
            do
                q8[i] = (uint8_t)(ci % 3 == 2 ? rand() & 0x7f : rand());
            while ((q8[i] & 0x7f) == 0x7f);
        for (int i = 0; i < T * ih; i++)
            w[i] = ((float)rand() / RAND_MAX - 0.3f) * 0.01f;
        score_trace tr = {start, T, nk, calloc((size_t)T * nk, sizeof(float)),
                          malloc(sizeof(int32_t) * (size_t)T * topk), calloc((size_t)T, sizeof(int)), topk, 0};
        int32_t *sel = malloc(sizeof(int32_t) * (size_t)T * topk), *want_sel = malloc(sizeof(int32_t) * topk);
        int *nsel = calloc((size_t)T, sizeof(int));
        float *ref = malloc(sizeof(float) * (size_t)nk);
        ds_context_set_trace(c, on_trace, &tr);
        ds_status st = ds_indexer_select(c, layer, q8, w, T, start, sel, nsel, topk, &err);
        ds_context_set_trace(c, NULL, NULL);
        CHECK(st == DS_OK, "ds_indexer_select: %s", err.msg);
        CHECK(tr.seen == T, "%d score traces for %d queries", tr.seen, T);
        for (int t = 0; t < T; t++) {
            const int n = start + t + 1;
            for (int j = 0; j < n; j++) {
                float sc = 0.0f;
                for (int h = 0; h < ih; h++) {
                    float d = ds_index_dot_ref(q8 + ((size_t)t * ih + h) * id, key_row(kv, id, j), id);
                    if (d > 0.0f) {
                        volatile float p = w[t * ih + h] * d;
                        sc += p;
                    }
                }
                ref[j] = sc * kv->idx_s[j];
                const float got = tr.scores[(size_t)t * nk + j];
                calls++;
                if (memcmp(&got, &ref[j], sizeof got) != 0 && bad++ < 5)
                    printf("index score start %d T %d query %d key %d: %.9g, want %.9g\n", start, T, t, j, got,
                           ref[j]);
            }
            const int k = ds_topk_positions(ref, n, topk, want_sel);
            if ((nsel[t] != k || memcmp(sel + (size_t)t * topk, want_sel, sizeof(int32_t) * k) != 0 ||
                 tr.ntopk[t] != k) && bad_sel++ < 5)
                printf("index selection start %d T %d query %d differs\n", start, T, t);
            if (T == 1) {   /* untraced decode: approximate scores, the close ones rescored */
                nsel[0] = -1;
                st = ds_indexer_select(c, layer, q8, w, T, start, sel, nsel, topk, &err);
                if ((st != DS_OK || nsel[0] != k || memcmp(sel, want_sel, sizeof(int32_t) * k) != 0) && bad_sel++ < 5)
                    printf("untraced index selection start %d differs\n", start);
                calls_fast++;
            }
        }
        free(q8), free(w), free(tr.scores), free(tr.topk), free(tr.ntopk), free(sel), free(want_sel), free(nsel);
        free(ref);
    }
    /* Many exact ties at the k-th score: keys 0..999 are 125 copies each
     * of 8 keys, so the decode's close keys (rescored exactly) are a whole
     * group of copies and the lowest positions among them must be picked. */
    for (int j = 8; j < 1000; j++) {
        ds_index_key_put(c->kv[layer].idx_k, id, j, key_row(&c->kv[layer], id, j % 8));
        c->kv[layer].idx_s[j] = c->kv[layer].idx_s[j % 8];
    }
    for (int rep = 0; rep < 4; rep++) {
        uint8_t *q8 = malloc((size_t)ih * id);
        float *w = malloc(sizeof(float) * ih);
        rand_codes(q8, ih * id);
        for (int i = 0; i < ih; i++)
            w[i] = ((float)rand() / RAND_MAX - 0.3f) * 0.01f;
        calls_fast++;
        if (untraced_select_differs(c, layer, q8, w, 1000) && bad_sel++ < 5)
            printf("untraced index selection over 125-fold ties (rep %d) differs\n", rep);
        free(q8), free(w);
    }
    /* The k-th largest score next to zero, far inside the largest bound:
     * every weight is negative, so scores are <= 0; twenty keys get tiny
     * scales (scores just below 0), the rest scale 1.  tau~ - 2B then
     * falls below the histogram buckets the decode's candidates come from,
     * and its selection must look at every key. */
    for (int rep = 0; rep < 3; rep++) {
        uint8_t *q8 = malloc((size_t)ih * id);
        float *w = malloc(sizeof(float) * ih);
        rand_codes(q8, ih * id);
        for (int j = 0; j < 1000; j++) {
            uint8_t row[DS_INDEX_MAXDIM];
            rand_codes(row, id);
            ds_index_key_put(c->kv[layer].idx_k, id, j, row);
        }
        for (int j = 0; j < 1000; j++)
            c->kv[layer].idx_s[j] = j % 50 == 7 ? ldexpf(1.0f, -40 - rand() % 8) : 1.0f;
        for (int i = 0; i < ih; i++)
            w[i] = -((float)rand() / RAND_MAX + 0.1f) * 0.01f;
        calls_fast++;
        if (untraced_select_differs(c, layer, q8, w, 1000) && bad_sel++ < 5)
            printf("untraced index selection with the k-th score next to 0 (rep %d) differs\n", rep);
        free(q8), free(w);
    }
    CHECK(bad == 0, "%d of %d indexer scores differ from the exact reference", bad, calls);
    printf("indexer: %d scores checked in %d cases\n", calls, (int)(sizeof cases / sizeof cases[0]));
    CHECK(bad_sel == 0, "%d indexer selections differ from the top-k of the reference scores", bad_sel);
    CHECK(calls_fast > 0, "no untraced decode selection was checked");
    ds_context_free(c);
    ds_model_free(m);
}

static double gauss(void)
{
    const double u = (rand() + 1.0) / (RAND_MAX + 2.0), v = (rand() + 1.0) / (RAND_MAX + 2.0);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Nuclei by hand: probabilities 1:2:4:8 (tot 15).  top_p 0.5 keeps {3}
 * (8/15 >= 0.5), top_p 0.75 keeps {3, 2} (12/15), top_k 1 keeps {3}; the
 * kept tokens are drawn in proportion 2:1. */
static void test_sampler_nucleus(void)
{
    const float logits[4] = {0.0f, logf(2.0f), logf(4.0f), logf(8.0f)};
    static const struct { int top_k; float top_p; int want[4]; } cases[] = {
        {0, 0.5f, {0, 0, 0, 1}}, {0, 0.75f, {0, 0, 1, 1}}, {1, 1.0f, {0, 0, 0, 1}}, {3, 1.0f, {0, 1, 1, 1}}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ds_sampler_params p;
        ds_sampler_params_init(&p);
        p.temperature = 1.0f, p.top_k = cases[c].top_k, p.top_p = cases[c].top_p, p.seed = 99 + c;
        ds_sampler *s = NULL;
        CHECK(ds_sampler_create(&p, &s, NULL) == DS_OK, "sampler create");
        if (!s)
            continue;
        int count[4] = {0};
        enum { DRAWS = 6000 };
        for (int i = 0; i < DRAWS; i++) {
            const int32_t t = ds_sampler_sample(s, logits, 4);
            CHECK(t >= 0 && t < 4 && cases[c].want[t], "case %zu: token %d outside the nucleus", c, (int)t);
            if (t >= 0 && t < 4)
                count[t]++;
        }
        if (cases[c].want[2] && !cases[c].want[1]) {   /* {3, 2}: 2/3 and 1/3 */
            const double f = (double)count[3] / DRAWS;
            CHECK(fabs(f - 2.0 / 3.0) < 0.03, "case %zu: token 3 drawn %.3f of the time, want 0.667", c, f);
        }
        ds_sampler_free(s);
    }
    /* a NaN logit (a corrupt weight upstream) chooses nothing, greedy or not */
    const float nan_logits[4] = {0.0f, NAN, 1.0f, 2.0f};
    for (int greedy = 0; greedy < 2; greedy++) {
        ds_sampler_params p;
        ds_sampler_params_init(&p);
        p.temperature = greedy ? 0.0f : 0.8f;
        ds_sampler *s = NULL;
        CHECK(ds_sampler_create(&p, &s, NULL) == DS_OK, "sampler create");
        CHECK(s && ds_sampler_sample(s, nan_logits, 4) == -1, "NaN logits (greedy %d): not -1", greedy);
        const int32_t t = s ? ds_sampler_sample(s, nan_logits + 2, 2) : -1;
        CHECK(greedy ? t == 1 : t == 0 || t == 1, "finite logits after NaN ones (greedy %d): %d", greedy, (int)t);
        /* +Inf is that token; all -Inf (everything masked) is none */
        const float inf_logits[4] = {0.0f, 1.0f, INFINITY, 2.0f}, masked[3] = {-INFINITY, -INFINITY, -INFINITY};
        CHECK(s && ds_sampler_sample(s, inf_logits, 4) == 2, "+Inf logit (greedy %d)", greedy);
        CHECK(s && ds_sampler_sample(s, masked, 3) == -1, "all -Inf (greedy %d)", greedy);
        CHECK(ds_sampler_sample(NULL, inf_logits, 4) == -1 && (!s || ds_sampler_sample(s, NULL, 4) == -1),
              "NULL sampler or logits");
        ds_sampler_free(s);
    }
}

/* The candidate histogram must pick exactly the token sorting every token
 * picks, over vocabularies, temperatures, flat and peaked logits, ties,
 * and top-k / top-p settings. */
static void test_sampler_candidates(void)
{
    static const int vocab[] = {1, 7, 1000, 32000, 129280};
    static const float temps[] = {0.3f, 0.7f, 1.5f};
    static const struct { int top_k; float top_p; } cuts[] = {
        {0, 0.9f}, {40, 1.0f}, {40, 0.5f}, {0, 0.05f}, {5, 0.999f}, {200000, 0.8f}, {0, 1.0f}};
    float *logits = malloc(sizeof(float) * 129280);
    int mismatches = 0, draws = 0;
    for (size_t v = 0; v < sizeof vocab / sizeof *vocab; v++)
        for (int shape = 0; shape < 4; shape++) {
            const int n = vocab[v];
            for (int i = 0; i < n; i++) {
                const double g = gauss();
                logits[i] = shape == 0 ? (float)g : shape == 1 ? (float)(5.0 * g)
                            : shape == 2 ? (float)(0.01 * g) : (float)(int)(3.0 * g);   /* 3: many ties */
            }
            for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++)
                for (size_t ci = 0; ci < sizeof cuts / sizeof *cuts; ci++) {
                    ds_sampler_params p;
                    ds_sampler_params_init(&p);
                    p.temperature = temps[ti], p.top_k = cuts[ci].top_k, p.top_p = cuts[ci].top_p;
                    p.seed = 7 + v * 100 + ti * 10 + ci;
                    ds_sampler *fast = NULL, *full = NULL;
                    ds_sampler_create(&p, &fast, NULL);
                    ds_sampler_create(&p, &full, NULL);
                    ds_sampler_set_full_sort(full, 1);
                    for (int d = 0; fast && full && d < (n > 10000 ? 2 : 8); d++, draws++) {
                        const int32_t a = ds_sampler_sample(fast, logits, n), b = ds_sampler_sample(full, logits, n);
                        if (a != b && mismatches++ < 5)
                            CHECK(0, "n=%d shape %d T=%.1f top_k %d top_p %.3f: %d vs sorting everything %d", n,
                                  shape, temps[ti], p.top_k, p.top_p, (int)a, (int)b);
                    }
                    ds_sampler_free(fast);
                    ds_sampler_free(full);
                }
        }
    CHECK(mismatches == 0, "sampler: %d of %d draws differ from sorting every token", mismatches, draws);
    free(logits);
}

int main(void)
{
    srand(1234);
    test_index_dot();
    test_e4m3_codes();
    test_e4m3_rounding();
    test_block_quant();
    test_hadamard();
    test_yarn();
    test_router();
    test_topk();
    test_latent_cache();
    test_fill_synthetic();
    test_index_select();
    test_sampler_nucleus();
    test_sampler_candidates();
    if (failures)
        printf("%d checks failed\n", failures);
    else
        printf("all numeric checks passed\n");
    return failures != 0;
}
