/* test_indexer_gpu.c — the optional CUDA lightning indexer (indexer_gpu.h)
 * must be interchangeable with the CPU one: identical top-k sets and
 * bit-identical scores.
 *
 * Every build: asking for the GPU indexer never fails a context; without
 * CUDA support (or a device) the CPU indexer runs, the note says why and the
 * results equal a plain CPU context.
 * --with-cuda builds: the host renderings of the device scoring function
 * and top-k algorithm are checked against the CPU reference (this part runs
 * without a GPU); with a usable GPU, tiny-dsa (prefill in chunks + decode,
 * traced scores and selections) and an 8K-key synthetic cache with topk
 * 2048 and heavily tied scores run through both paths.
 * Exits 77 (automake SKIP) when the GPU part cannot run. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dsconfig.h"
#include "dsinfer.h"
#include "dtype.h"
#include "model.h"
#ifdef DS_HAVE_CUDA
#include "indexer_gpu.h"
#endif

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

/* tests/data/tiny-dsa/tokens.json: prompt and decode_inputs */
static const int32_t prompt[48] = {0, 831, 89, 185, 244, 187, 820, 890, 596, 42, 98, 341, 444, 636, 491, 272,
                                   165, 708, 752, 35, 118, 464, 401, 909, 530, 431, 442, 682, 601, 178, 756, 775,
                                   979, 805, 292, 329, 664, 666, 713, 890, 301, 961, 3, 80, 996, 966, 306, 144};
static const int32_t decode_in[16] = {900, 807, 42, 500, 67, 308, 229, 72, 695, 618, 399, 617, 382, 717, 324, 690};
enum { N_TOK = 64, MAX_LAYERS = 8 };

/* ---- traced run of tiny-dsa --------------------------------------------- */

/* Indexer scores and selections of every (layer, position), as traced. */
typedef struct run_dump {
    float *scores[MAX_LAYERS][N_TOK];
    int n_scores[MAX_LAYERS][N_TOK];
    int32_t *topk[MAX_LAYERS][N_TOK];
    int n_topk[MAX_LAYERS][N_TOK];
    float *logits;   /* [N_TOK][vocab] */
} run_dump;

static void *dup_bytes(const void *p, size_t n)
{
    void *q = malloc(n ? n : 1);
    if (!q) {
        printf("out of memory\n");
        exit(1);
    }
    memcpy(q, p, n);
    return q;
}

static void on_trace(void *user, ds_trace_kind kind, int layer, int pos, const void *data, int n)
{
    run_dump *d = user;
    if (layer < 0 || layer >= MAX_LAYERS || pos < 0 || pos >= N_TOK)
        return;
    if (kind == DS_TRACE_INDEXER_SCORES) {
        free(d->scores[layer][pos]);
        d->scores[layer][pos] = dup_bytes(data, sizeof(float) * (size_t)n);
        d->n_scores[layer][pos] = n;
    } else if (kind == DS_TRACE_INDEXER_TOPK) {
        free(d->topk[layer][pos]);
        d->topk[layer][pos] = dup_bytes(data, sizeof(int32_t) * (size_t)n);
        d->n_topk[layer][pos] = n;
    }
}

static void free_dump(run_dump *d)
{
    for (int l = 0; l < MAX_LAYERS; l++)
        for (int p = 0; p < N_TOK; p++) {
            free(d->scores[l][p]);
            free(d->topk[l][p]);
        }
    free(d->logits);
}

/* Prefill the prompt in chunks of 20 / 1 / 27 tokens (start > 0 with T > 1
 * included), then decode the 16 decode inputs one at a time. */
static int run_tiny(ds_model *m, int device, run_dump *d, int *on_gpu, char *note, size_t note_size)
{
    const int V = ds_model_get_info(m)->vocab_size;
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.ctx_size = 128;
    cp.indexer_device = device;
    ds_context *c = NULL;
    ds_error err;
    if (ds_context_create(m, &cp, &c, &err) != DS_OK) {
        printf("context: %s\n", err.msg);
        return -1;
    }
    memset(d, 0, sizeof *d);
    d->logits = calloc((size_t)N_TOK * V, sizeof(float));
    ds_context_set_trace(c, on_trace, d);
    const int chunks[3][2] = {{0, 20}, {20, 1}, {21, 27}};
    int ok = d->logits != NULL;
    for (int k = 0; ok && k < 3; k++)
        ok = ds_eval(c, prompt + chunks[k][0], chunks[k][1], d->logits + (size_t)chunks[k][0] * V, 1, &err) == DS_OK;
    for (int k = 0; ok && k < 16; k++)
        ok = ds_eval(c, decode_in + k, 1, d->logits + (size_t)(48 + k) * V, 0, &err) == DS_OK;
    if (!ok)
        printf("eval: %s\n", err.msg);
    *on_gpu = ds_context_indexer_on_gpu(c);
    const char *n = ds_context_indexer_note(c);
    snprintf(note, note_size, "%s", n ? n : "");
    ds_context_free(c);
    return ok ? 0 : -1;
}

/* Bit-identical scores, identical selections and logits. */
static void compare_dumps(const run_dump *a, const run_dump *b, int layers, int V, const char *what)
{
    int mismatches = 0, traced = 0;
    for (int l = 0; l < layers; l++)
        for (int p = 0; p < N_TOK; p++) {
            traced += a->n_topk[l][p] > 0;
            if (a->n_scores[l][p] != b->n_scores[l][p] || a->n_topk[l][p] != b->n_topk[l][p] ||
                memcmp(a->scores[l][p], b->scores[l][p], sizeof(float) * (size_t)a->n_scores[l][p]) != 0 ||
                memcmp(a->topk[l][p], b->topk[l][p], sizeof(int32_t) * (size_t)a->n_topk[l][p]) != 0)
                mismatches++;
        }
    CHECK(traced == layers * N_TOK, "%s: %d of %d (layer, position) traces", what, traced, layers * N_TOK);
    CHECK(mismatches == 0, "%s: %d (layer, position) pairs differ in indexer scores or top-k", what, mismatches);
    CHECK(memcmp(a->logits, b->logits, sizeof(float) * (size_t)N_TOK * V) == 0, "%s: logits differ", what);
}

/* Asking for the GPU never fails a context; the result equals the CPU's. */
static void test_tiny(ds_model *m, int expect_gpu)
{
    const int V = ds_model_get_info(m)->vocab_size, L = ds_model_get_info(m)->num_layers;
    run_dump cpu, gpu;
    int on_cpu_gpu = 0, on_gpu = 0;
    char note_cpu[640], note_gpu[640];
    if (run_tiny(m, 0, &cpu, &on_cpu_gpu, note_cpu, sizeof note_cpu) != 0 ||
        run_tiny(m, 1, &gpu, &on_gpu, note_gpu, sizeof note_gpu) != 0) {
        CHECK(0, "tiny-dsa runs failed");
        return;
    }
    CHECK(!on_cpu_gpu && note_cpu[0] == 0, "CPU context: on_gpu %d, note '%s'", on_cpu_gpu, note_cpu);
    if (expect_gpu)
        CHECK(on_gpu, "GPU context fell back to the CPU: %s", note_gpu);
    else
        CHECK(!on_gpu && note_gpu[0] != 0, "no GPU here: on_gpu %d, note '%s'", on_gpu, note_gpu);
    printf("tiny-dsa: indexer_device=1 -> %s%s%s\n", on_gpu ? "GPU" : "CPU", note_gpu[0] ? "; note: " : "",
           note_gpu);
    compare_dumps(&cpu, &gpu, L < MAX_LAYERS ? L : MAX_LAYERS, V, on_gpu ? "tiny-dsa GPU vs CPU" : "fallback vs CPU");
    free_dump(&cpu);
    free_dump(&gpu);
}

static void test_bad_device(ds_model *m)
{
    ds_context_params cp;
    ds_context_params_init(&cp);
    CHECK(cp.indexer_device == 0, "indexer_device defaults to %d", cp.indexer_device);
    cp.ctx_size = 16;
    cp.indexer_device = 7;
    ds_context *c = NULL;
    ds_error err;
    CHECK(ds_context_create(m, &cp, &c, &err) == DS_ERR_INVALID_ARG, "indexer_device 7 accepted");
    ds_context_free(c);
}

#ifdef DS_HAVE_CUDA
/* ---- CPU reference: the arithmetic of indexer.c's score_keys ------------ */

static int32_t e4m3_int[256];

static void fill_e4m3_int(void)
{
    for (int i = 0; i < 256; i++) {
        float v = ds_e4m3_table[i];
        e4m3_int[i] = isnan(v) ? 0 : (int32_t)(v * 512.0f);
    }
}

static float ref_dot(const uint8_t *a, const uint8_t *b, int n)
{
    int64_t s = 0;
    for (int i = 0; i < n; i++)
        s += (int64_t)e4m3_int[a[i]] * e4m3_int[b[i]];
    return (float)((double)s * (1.0 / 262144.0));
}

static float ref_score(const uint8_t *q8, const float *w, int heads, int dim, const uint8_t *k8, float ks)
{
    float s = 0.0f;
    for (int h = 0; h < heads; h++) {
        float d = ref_dot(q8 + (size_t)h * dim, k8, dim);
        if (d > 0.0f)
            s += w[h] * d;
    }
    return s * ks;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* A synthetic indexer cache: keys drawn from `distinct` key vectors (and
 * scales from a few values) so many scores tie exactly; some zero scales
 * give +0 / -0 scores.  Queries and weights are random, weights of both
 * signs. */
typedef struct synth {
    int heads, dim, nkeys, T, start, topk;
    uint8_t *k8, *q8;
    float *ks, *w;
} synth;

static int make_synth(synth *s, int heads, int dim, int nkeys, int T, int start, int topk, int distinct)
{
    *s = (synth){heads, dim, nkeys, T, start, topk, NULL, NULL, NULL, NULL};
    uint8_t *base = malloc((size_t)distinct * dim);
    s->k8 = malloc((size_t)nkeys * dim);
    s->ks = malloc(sizeof(float) * (size_t)nkeys);
    s->q8 = malloc((size_t)T * heads * dim);
    s->w = malloc(sizeof(float) * (size_t)T * heads);
    if (!base || !s->k8 || !s->ks || !s->q8 || !s->w) {
        free(base);
        return -1;
    }
    for (int i = 0; i < distinct * dim; i++)
        base[i] = (uint8_t)next_u32();
    static const float scales[4] = {0.0f, 0.25f, 1.0f, 0.0078125f};
    for (int j = 0; j < nkeys; j++) {
        memcpy(s->k8 + (size_t)j * dim, base + (size_t)(next_u32() % distinct) * dim, (size_t)dim);
        s->ks[j] = scales[next_u32() % 4];
    }
    for (int i = 0; i < T * heads * dim; i++)
        s->q8[i] = (uint8_t)next_u32();
    for (int i = 0; i < T * heads; i++)
        s->w[i] = ((float)(next_u32() % 2001) - 1000.0f) * 1e-3f;
    free(base);
    return 0;
}

static void free_synth(synth *s)
{
    free(s->k8);
    free(s->ks);
    free(s->q8);
    free(s->w);
}

/* CPU scores of query t over keys 0..start+t. */
static void ref_scores(const synth *s, int t, float *score)
{
    const size_t qsz = (size_t)s->heads * s->dim;
    for (int j = 0; j < s->start + t + 1; j++)
        score[j] = ref_score(s->q8 + t * qsz, s->w + (size_t)t * s->heads, s->heads, s->dim,
                             s->k8 + (size_t)j * s->dim, s->ks[j]);
}

/* Host renderings of the device code (no GPU needed). */
static void test_emulation(void)
{
    CHECK(ds_gpu_indexer_check_e4m3() == 0, "device e4m3 decoder differs at code %d",
          ds_gpu_indexer_check_e4m3() - 1);
    synth s;
    if (make_synth(&s, 64, 128, 600, 3, 597, 256, 12) != 0) {
        CHECK(0, "out of memory");
        return;
    }
    float *score = malloc(sizeof(float) * 600);
    int32_t *a = malloc(sizeof(int32_t) * 600), *b = malloc(sizeof(int32_t) * 600);
    int bad_scores = 0, bad_sel = 0, zeros = 0;
    for (int t = 0; t < s.T && score && a && b; t++) {
        const int n = s.start + t + 1;
        ref_scores(&s, t, score);
        for (int j = 0; j < n; j++) {
            float e = ds_gpu_indexer_emulate_score(s.q8 + (size_t)t * 64 * 128, s.w + (size_t)t * 64, 64, 128,
                                                   s.k8 + (size_t)j * 128, s.ks[j]);
            bad_scores += memcmp(&e, &score[j], 4) != 0;
            zeros += score[j] == 0.0f;
        }
        for (int k = 1; k <= n; k += 37) {
            int na = ds_topk_positions(score, n, k, a), nb = ds_gpu_indexer_emulate_topk(score, n, k, b);
            bad_sel += na != nb || memcmp(a, b, sizeof(int32_t) * (size_t)na) != 0;
        }
    }
    CHECK(bad_scores == 0, "emulated device scores: %d differ from the CPU's", bad_scores);
    CHECK(bad_sel == 0, "emulated device top-k: %d selections differ from ds_topk_positions", bad_sel);
    CHECK(zeros > 0, "synthetic data has no zero scores (tie test too weak)");
    /* signed zeros and exact ties straight */
    const float z[8] = {0.0f, -0.0f, 1.0f, -0.0f, 0.0f, 1.0f, -1.0f, 0.0f};
    for (int k = 1; k <= 8; k++) {
        int32_t za[8], zb[8];
        int na = ds_topk_positions(z, 8, k, za), nb = ds_gpu_indexer_emulate_topk(z, 8, k, zb);
        CHECK(na == nb && memcmp(za, zb, sizeof(int32_t) * (size_t)na) == 0, "signed-zero ties, k %d", k);
    }
    printf("emulation: %d scores, %s\n", 3 * 600 - 3, bad_scores || bad_sel ? "MISMATCH" : "bit-identical");
    free(score);
    free(a);
    free(b);
    free_synth(&s);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One synthetic case through the GPU (layer `layer` of g) and the CPU. */
static void run_synth(ds_gpu_indexer *g, int layer, const synth *s, const char *what)
{
    const int total = s->start + s->T, stride = s->topk < total ? s->topk : total;
    ds_error err;
    int32_t *sel = calloc((size_t)s->T * stride, sizeof(int32_t)), *ref = calloc((size_t)stride, sizeof(int32_t));
    int *nsel = calloc((size_t)s->T, sizeof(int));
    float *gsc = calloc((size_t)s->T * total, sizeof(float)), *rsc = calloc((size_t)total, sizeof(float));
    if (!sel || !ref || !nsel || !gsc || !rsc) {
        CHECK(0, "out of memory");
        goto out;
    }
    CHECK(ds_gpu_indexer_sync_keys(g, layer, s->k8, s->ks, 0, total, &err) == DS_OK, "%s: keys: %s", what, err.msg);
    double t0 = now();
    ds_status st = ds_gpu_indexer_select(g, layer, s->q8, s->w, s->T, s->start, s->topk, sel, nsel, stride, NULL, &err);
    double t1 = now();
    CHECK(st == DS_OK, "%s: select: %s", what, err.msg);
    st = ds_gpu_indexer_select(g, layer, s->q8, s->w, s->T, s->start, s->topk, sel, nsel, stride, gsc, &err);
    CHECK(st == DS_OK, "%s: select with scores: %s", what, err.msg);
    int bad_scores = 0, bad_sel = 0, ties = 0;
    double cpu = 0.0;
    for (int t = 0; st == DS_OK && t < s->T; t++) {
        const int n = s->start + t + 1;
        double c0 = now();
        ref_scores(s, t, rsc);
        int nr = ds_topk_positions(rsc, n, s->topk, ref);
        cpu += now() - c0;
        bad_scores += memcmp(gsc + (size_t)t * total, rsc, sizeof(float) * (size_t)n) != 0;
        bad_sel += nsel[t] != nr || memcmp(sel + (size_t)t * stride, ref, sizeof(int32_t) * (size_t)nr) != 0;
        if (nr < n) {   /* keys tied with the last selected one, on both sides of the cut */
            float thr = rsc[ref[0]];
            for (int i = 0; i < nr; i++)
                thr = rsc[ref[i]] < thr ? rsc[ref[i]] : thr;
            for (int j = 0; j < n; j++)
                ties += rsc[j] == thr;
        }
    }
    CHECK(bad_scores == 0, "%s: %d query rows with scores not bit-identical", what, bad_scores);
    CHECK(bad_sel == 0, "%s: %d query rows with different top-k", what, bad_sel);
    printf("%s: %d queries x %d keys, topk %d, %d keys tied at the cut; GPU %.3f ms (select), CPU %.3f ms\n",
           what, s->T, total, s->topk, ties, 1e3 * (t1 - t0), 1e3 * cpu);
out:
    free(sel);
    free(ref);
    free(nsel);
    free(gsc);
    free(rsc);
}

static void test_synthetic(void)
{
    ds_error err;
    ds_gpu_indexer *g = ds_gpu_indexer_create(2, 8192, 128, 64, &err);
    if (!g) {
        CHECK(0, "GPU state: %s", err.msg);
        return;
    }
    synth a, b;
    if (make_synth(&a, 64, 128, 8192, 4, 8188, 2048, 24) == 0)   /* decode-like, 8K keys, ties */
        run_synth(g, 0, &a, "8K keys");
    free_synth(&a);
    if (make_synth(&b, 64, 128, 300, 300, 0, 64, 40) == 0)       /* prefill: k >= n rows, two passes */
        run_synth(g, 1, &b, "prefill 300");
    free_synth(&b);
    ds_gpu_indexer_free(g);
}
#endif

int main(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    unsetenv("DSINFER_INDEXER");   /* the test chooses through ds_context_params */
    ds_model *m;
    ds_error err;
    if (ds_model_load(dir, NULL, &m, &err) != DS_OK) {
        printf("load: %s\n", err.msg);
        return 1;
    }
    int have_gpu = 0;
    const char *why = "built without --with-cuda";
#ifdef DS_HAVE_CUDA
    fill_e4m3_int();
    test_emulation();
    ds_gpu_indexer *probe = ds_gpu_indexer_create(1, 16, 128, 8, &err);
    have_gpu = probe != NULL;
    ds_gpu_indexer_free(probe);
    static char msg[600];
    snprintf(msg, sizeof msg, "no usable GPU (%s)", err.msg);
    if (!have_gpu)
        why = msg;
#endif
    test_bad_device(m);
    test_tiny(m, have_gpu);
#ifdef DS_HAVE_CUDA
    if (have_gpu)
        test_synthetic();
#endif
    ds_model_free(m);
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    if (!have_gpu) {
        printf("SKIP: GPU comparison not run: %s (the CPU fallback checks passed)\n", why);
        return 77;
    }
    printf("all GPU indexer checks passed\n");
    return 0;
}
