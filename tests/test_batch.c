/* test_batch.c — ds_eval_batch: several sequences in one step (attention per
 * sequence, MoE over all tokens) must give the same logits as running each
 * sequence alone, for prefill, decode and mixed steps; errors leave every
 * context where it was. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dsinfer.h"

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

static ds_context *ctx(ds_model *m, int size)
{
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.ctx_size = size;
    cp.kv_type = DS_KV_F32;
    ds_context *c = NULL;
    ds_error err;
    if (ds_context_create(m, &cp, &c, &err) != DS_OK) {
        printf("context: %s\n", err.msg);
        exit(1);
    }
    return c;
}

static float max_diff(const float *a, const float *b, size_t n)
{
    float d = 0.0f;
    for (size_t i = 0; i < n; i++)
        d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* Five sequences decoding in one step: their queries absorb through kv_b
 * in one product per head and they attend in parallel, a thread each
 * (mla.c).  Each sequence is prefilled alone to its own length, twice
 * (one copy decodes in the batch, one alone), then three decode steps
 * must agree. */
static void test_many_decoding(ds_model *m)
{
    enum { NS = 5, STEPS = 3 };
    const int V = ds_model_get_info(m)->vocab_size;
    ds_context *bc[NS], *sc[NS];
    /* past the model's index_topk (16) the indexer selects, and from 64
     * keys a lone sequence's attention splits across threads: decoding
     * sequences attend in parallel, one thread each */
    static const int lens[NS] = {3, 7, 11, 19, 70};
    int32_t tok[NS][80];
    float *lb = calloc((size_t)NS * V, sizeof(float)), *ls = calloc((size_t)V, sizeof(float));
    float worst = 0.0f;
    ds_error err;
    for (int s = 0; s < NS; s++) {
        const int len = lens[s];
        for (int i = 0; i < 80; i++)
            tok[s][i] = i ? (i * (17 + 6 * s) + 5 * s) % V : 0;
        bc[s] = ctx(m, 96);
        sc[s] = ctx(m, 96);
        CHECK(ds_eval(bc[s], tok[s], len, NULL, 0, &err) == DS_OK && ds_eval(sc[s], tok[s], len, NULL, 0, &err) == DS_OK,
              "prefill %d: %s", s, err.msg);
    }
    for (int k = 0; k < STEPS; k++) {
        ds_batch_item items[NS];
        for (int s = 0; s < NS; s++)
            items[s] = (ds_batch_item){bc[s], &tok[s][lens[s] + k], 1, lb + (size_t)s * V, 0};
        CHECK(ds_eval_batch(items, NS, &err) == DS_OK, "decode step %d: %s", k, err.msg);
        for (int s = 0; s < NS; s++) {
            CHECK(ds_eval(sc[s], &tok[s][lens[s] + k], 1, ls, 0, &err) == DS_OK, "alone %d: %s", s, err.msg);
            worst = fmaxf(worst, max_diff(lb + (size_t)s * V, ls, (size_t)V));
        }
    }
    printf("%d sequences decoding together vs alone: max |diff| %.3g\n", NS, worst);
    CHECK(worst <= 1e-4f, "%d decoding sequences in one step differ from each alone by %g", NS, worst);
    for (int s = 0; s < NS; s++)
        ds_context_free(bc[s]), ds_context_free(sc[s]);
    free(lb), free(ls);
}

int main(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    ds_model *m;
    ds_error err;
    if (ds_model_load(dir, NULL, &m, &err) != DS_OK) {
        printf("load: %s\n", err.msg);
        return 1;
    }
    const int V = ds_model_get_info(m)->vocab_size;
    int32_t a[40], b[40];
    for (int i = 0; i < 40; i++) {
        a[i] = (i * 37 + 11) % V;
        b[i] = (i * 101 + 3) % V;
    }
    a[0] = b[0] = 0;
    /* schedule: step 1 prefill A[0:20] + B[0:30]; step 2 decode A[20] + prefill chunk B[30:33];
     * step 3 decode A[21], B[33] */
    const int steps[3][2][2] = {{{0, 20}, {0, 30}}, {{20, 1}, {30, 3}}, {{21, 1}, {33, 1}}};
    float *la = calloc((size_t)40 * V, sizeof(float)), *lb = calloc((size_t)40 * V, sizeof(float));
    float *ra = calloc((size_t)40 * V, sizeof(float)), *rb = calloc((size_t)40 * V, sizeof(float));
    ds_context *ca = ctx(m, 64), *cb = ctx(m, 64), *sa = ctx(m, 64), *sb = ctx(m, 64);
    for (int k = 0; k < 3; k++) {
        const int (*st)[2] = steps[k];
        ds_batch_item items[2] = {{ca, a + st[0][0], st[0][1], la + (size_t)st[0][0] * V, 1},
                                  {cb, b + st[1][0], st[1][1], lb + (size_t)st[1][0] * V, 1}};
        CHECK(ds_eval_batch(items, 2, &err) == DS_OK, "batch step %d: %s", k, err.msg);
        CHECK(ds_eval(sa, a + st[0][0], st[0][1], ra + (size_t)st[0][0] * V, 1, &err) == DS_OK, "alone A");
        CHECK(ds_eval(sb, b + st[1][0], st[1][1], rb + (size_t)st[1][0] * V, 1, &err) == DS_OK, "alone B");
    }
    float da = max_diff(la, ra, (size_t)22 * V), db = max_diff(lb, rb, (size_t)34 * V);
    printf("batched vs alone: max |diff| A %.3g, B %.3g\n", da, db);
    CHECK(da <= 1e-4f && db <= 1e-4f, "batched logits differ from single-sequence logits");
    CHECK(ds_context_pos(ca) == 22 && ds_context_pos(cb) == 34, "positions %d %d", ds_context_pos(ca),
          ds_context_pos(cb));

    /* a failing item (context overflow) advances nobody */
    ds_context *tiny = ctx(m, 2);
    ds_batch_item bad[2] = {{ca, a, 1, NULL, 0}, {tiny, b, 3, NULL, 0}};
    CHECK(ds_eval_batch(bad, 2, &err) == DS_ERR_CONTEXT_FULL, "overflow not reported");
    CHECK(ds_context_pos(ca) == 22 && ds_context_pos(tiny) == 0, "a failed step moved a context");
    ds_batch_item dup[2] = {{ca, a, 1, NULL, 0}, {ca, b, 1, NULL, 0}};
    CHECK(ds_eval_batch(dup, 2, &err) == DS_ERR_INVALID_ARG && strstr(err.msg, "share"), "shared context");
    int32_t big = V + 5;
    ds_batch_item oov[1] = {{ca, &big, 1, NULL, 0}};
    CHECK(ds_eval_batch(oov, 1, &err) == DS_ERR_INPUT && ds_context_pos(ca) == 22, "out-of-vocabulary id");
    CHECK(ds_context_truncate(ca, 10, &err) == DS_OK && ds_context_pos(ca) == 10, "truncate");
    CHECK(ds_context_truncate(ca, 11, &err) == DS_ERR_INVALID_ARG, "truncate beyond the cache");

    /* the same logits whether the weights are copied into RAM or used through the page cache */
    for (int in_ram = 0; in_ram <= 1; in_ram++) {
        ds_load_params lp;
        ds_load_params_init(&lp);
        lp.weights_in_ram = in_ram;
        ds_model *m2;
        CHECK(ds_model_load(dir, &lp, &m2, &err) == DS_OK, "load with weights_in_ram %d: %s", in_ram, err.msg);
        ds_context *c2 = ctx(m2, 64);
        float *l2 = calloc((size_t)20 * V, sizeof(float));
        CHECK(ds_eval(c2, a, 20, l2, 1, &err) == DS_OK, "eval");
        CHECK(max_diff(l2, ra, (size_t)20 * V) == 0.0f, "weights_in_ram %d changes the logits", in_ram);
        free(l2);
        ds_context_free(c2);
        ds_model_free(m2);
    }
    test_many_decoding(m);
    ds_context_free(tiny);
    ds_context_free(ca), ds_context_free(cb), ds_context_free(sa), ds_context_free(sb);
    free(la), free(lb), free(ra), free(rb);
    ds_model_free(m);
    printf(failures ? "%d checks failed\n" : "all batch checks passed\n", failures);
    return failures != 0;
}
