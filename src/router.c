/* router.c — DeepSeek's noaux_tc MoE routing: sigmoid scores, selection on
 * scores + e_score_correction_bias restricted to the topk_group best expert
 * groups (a group scores the sum of its two best biased scores), weights
 * from the unbiased scores, normalised and scaled.  Ties prefer the lower
 * index, so the choice is deterministic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

#define MAX_EXPERTS 1024

/* Index of the best entry of v[0..n) not yet taken (-1 if none). */
static int best_free(const float *v, const unsigned char *taken, int n)
{
    int b = -1;
    for (int i = 0; i < n; i++)
        if (!taken[i] && (b < 0 || v[i] > v[b]))
            b = i;
    return b;
}

static int cmp_int(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void ds_route(const ds_router_params *p, const float *logits, const float *bias,
              int32_t *experts, float *weights)
{
    const int E = p->n_experts, G = p->n_group, per = E / G;
    float s[MAX_EXPERTS], b[MAX_EXPERTS], gscore[MAX_EXPERTS];
    unsigned char taken[MAX_EXPERTS], gkeep[MAX_EXPERTS];
    for (int e = 0; e < E; e++) {
        s[e] = 1.0f / (1.0f + expf(-logits[e]));
        b[e] = s[e] + (bias ? bias[e] : 0.0f);
    }
    for (int g = 0; g < G; g++) {
        const float *bg = b + g * per;
        memset(taken, 0, (size_t)per);
        int i1 = best_free(bg, taken, per);
        if (i1 < 0) {
            gscore[g] = -INFINITY;
            continue;
        }
        taken[i1] = 1;
        int i2 = per > 1 ? best_free(bg, taken, per) : -1;
        gscore[g] = bg[i1] + (i2 >= 0 ? bg[i2] : 0.0f);
    }
    memset(gkeep, 0, (size_t)G);
    memset(taken, 0, (size_t)G);
    for (int k = 0; k < p->topk_group; k++) {
        int g = best_free(gscore, taken, G);
        if (g < 0)
            break;
        taken[g] = 1;
        gkeep[g] = 1;
    }
    /* experts of dropped groups count as already taken */
    for (int e = 0; e < E; e++)
        taken[e] = !gkeep[e / per];
    for (int k = 0; k < p->k; k++) {
        int e = best_free(b, taken, E);
        if (e < 0)
            e = 0;     /* unreachable: config checks k <= experts in kept groups */
        taken[e] = 1;
        experts[k] = e;
    }
    qsort(experts, (size_t)p->k, sizeof(int32_t), cmp_int);
    float sum = 0.0f;
    for (int k = 0; k < p->k; k++)
        sum += s[experts[k]];
    for (int k = 0; k < p->k; k++)
        weights[k] = (p->norm ? s[experts[k]] / sum : s[experts[k]]) * p->scale;
}
