/* dsinfer-quantize — converts a Hugging Face DeepSeek V3/V3.2 checkpoint's
 * projection and expert weights to Q8_0, Q4_K, FP8 (e4m3, 128x128 block
 * scales) or BF16 and writes a new checkpoint directory in the same layout
 * (config.json, model.safetensors.index.json, shards, tokenizer files).
 *
 * The checkpoint is read through the library's internal tensor table
 * (src/format.h, every header validated), weights are decoded row by row
 * with the kernels (ds_mat_row) and re-encoded with simd/quant.c, and the
 * shards are streamed with st_writer one tensor (one 128-row strip) at a
 * time, so memory stays at a few strips whatever the model size.  The
 * quantisation error against the decoded source is reported as one JSON
 * line on stdout. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "common.h"
#include "format.h"
#include "kernels.h"
#include "quant.h"
#include "st_writer.h"

const char *tool_name = "dsinfer-quantize";

#define SHARD_MAX (4ull << 30)   /* data bytes per output shard, like the HF releases */
#define STRIP DS_QBLOCK          /* rows converted together: one FP8 scale row */
#define COPY_CHUNK (8u << 20)

typedef enum { T_Q8_0, T_Q4_K, T_FP8, T_BF16, T_KEEP } target;
static const char *const target_names[] = {"q8_0", "q4_k", "fp8", "bf16", "keep"};

#define REPACK_ALIGN 4096        /* the expert cache's slab part alignment */
#define REPACK_LAYOUT "expert-contiguous-4k"

typedef struct options {
    const char *in, *out;
    target type;
    target head;          /* lm_head / shared_head: T_KEEP copies them */
    int experts_only, keep_attention, threads, quiet, repack;
} options;

/* Error statistics are kept per kind of weight. */
enum { K_ATTN, K_ROUTED, K_SHARED, K_DENSE, K_HEAD, K_OTHER, K_COUNT };
static const char *const kind_names[K_COUNT] = {"attention", "routed_experts", "shared_experts", "dense_mlp", "head",
                                                "other"};

typedef struct stats {
    double err2, ref2;     /* sum of squared error, of squared source values */
    uint64_t n;            /* elements */
    int tensors;
} stats;

enum how { COPY, CONVERT, NEW_SCALE };

/* One tensor of the output checkpoint. */
typedef struct out_tensor {
    const ds_tensor *src;
    char *name;
    ds_dtype dt;
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    enum how how;
    int shard;
    int kind;
    int align;              /* --repack: starts at a REPACK_ALIGN multiple of the file */
    int cont;               /* --repack: continues an expert group (never starts a shard) */
    int of;                 /* NEW_SCALE: index of the weight whose scales it holds */
    float *scales;          /* CONVERT to FP8: its block scales, written by the NEW_SCALE after it */
} out_tensor;

typedef struct plan {
    out_tensor *t;
    int n, cap;
    int nshards;
    int converted, copied, dropped, fallback_q8, fallback_bf16;
    uint64_t bytes_in, bytes_out;
} plan;

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: dsinfer-quantize --model IN_DIR --out OUT_DIR --type TYPE [OPTION]...\n"
        "Convert the projection and expert weights of a DeepSeek V3/V3.2 checkpoint to TYPE\n"
        "and write a new checkpoint (config.json, index, shards, tokenizer files) into OUT_DIR.\n"
        "\n"
        "  -m, --model IN_DIR     source checkpoint directory (HF layout)\n"
        "  -o, --out OUT_DIR      output directory (created if missing; must differ from IN_DIR)\n"
        "      --type TYPE        q8_0, q4_k, fp8 (e4m3, 128x128 block scales) or bf16;\n"
        "                         optional with --repack (then every tensor is copied)\n"
        "      --repack           write each routed expert's gate, up and down weights\n"
        "                         adjacent, each at a 4096-byte aligned file offset, so\n"
        "                         the expert cache reads one expert with one request\n"
        "      --experts-only     convert only the routed experts\n"
        "      --keep-attention   leave every self_attn weight (indexer included) as it is\n"
        "      --head TYPE        also convert lm_head (and the MTP layer's shared_head)\n"
        "                         to TYPE (q8_0, q4_k, fp8 or bf16); without it they are\n"
        "                         copied.  --type may then be left out\n"
        "  -t, --threads N        worker threads (default: all cores)\n"
        "  -q, --quiet            no progress on stderr (the JSON report is still printed)\n"
        "  -v, --verbose          also each converted tensor and its RMSE on stderr\n"
        "  -h, --help             show this help and exit\n"
        "  -V, --version          show the version and exit\n"
        "\n"
        "Embeddings, norms, the router gate, biases, the indexer's weights_proj and (unless\n"
        "--head) lm_head are copied unchanged.  Q4_K needs rows of 256 columns, Q8_0 of\n"
        "32: narrower rows fall back to Q8_0, then BF16.  Prints one JSON line with the\n"
        "RMSE of the converted weights against the (dequantised) source, overall and per\n"
        "kind of weight.\n"
        "\n"
        "Exit status: 0 success, 1 usage error, 2 bad input checkpoint, 3 I/O error,\n"
        "4 runtime failure.\n");
}

static target parse_target(const char *opt, const char *name)
{
    size_t k = 0;
    while (k < T_KEEP && strcmp(name, target_names[k]) != 0)
        k++;
    if (k == T_KEEP)
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (q8_0, q4_k, fp8 or bf16)", opt, name);
    return (target)k;
}

static void parse_args(int argc, char **argv, options *o)
{
    enum { OPT_TYPE = 256, OPT_EXPERTS, OPT_KEEP_ATTN, OPT_REPACK, OPT_HEAD };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"type", required_argument, NULL, OPT_TYPE},
        {"experts-only", no_argument, NULL, OPT_EXPERTS},
        {"keep-attention", no_argument, NULL, OPT_KEEP_ATTN},
        {"repack", no_argument, NULL, OPT_REPACK},
        {"head", required_argument, NULL, OPT_HEAD},
        {"threads", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *type = NULL, *head = NULL;
    int c;
    memset(o, 0, sizeof *o);
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:o:t:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->in = optarg; break;
        case 'o': o->out = optarg; break;
        case OPT_TYPE: type = optarg; break;
        case OPT_EXPERTS: o->experts_only = 1; break;
        case OPT_KEEP_ATTN: o->keep_attention = 1; break;
        case OPT_REPACK: o->repack = 1; break;
        case OPT_HEAD: head = optarg; break;
        case 't': o->threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case 'q': o->quiet = 1, tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); exit(EXIT_OK);
        case 'V': tool_print_version(); break;
        case ':': tool_die(EXIT_USAGE, "option '%s' needs a value (see --help)", argv[optind - 1]);
        default: tool_die(EXIT_USAGE, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->in || !o->out || (!type && !head && !o->repack))
        tool_die(EXIT_USAGE, "--model, --out and --type (or --head, or --repack) are required (see --help)");
    o->type = type ? parse_target("--type", type) : T_KEEP;
    o->head = head ? parse_target("--head", head) : T_KEEP;
}

/* ---- planning --------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_head(const char *name)
{
    return strstr(name, "lm_head") || strstr(name, "shared_head");
}

static int kind_of(const char *name)
{
    if (is_head(name))
        return K_HEAD;
    if (strstr(name, ".self_attn."))
        return K_ATTN;
    if (strstr(name, ".mlp.experts."))
        return K_ROUTED;
    if (strstr(name, ".mlp.shared_experts."))
        return K_SHARED;
    if (strstr(name, ".mlp."))
        return K_DENSE;
    return K_OTHER;
}

/* What this run converts a tensor to; T_KEEP: it is copied.  Embeddings,
 * norms, biases, the router gate, the indexer's weights_proj and (unless
 * --head) lm_head and the MTP layer's shared_head stay as they are: they
 * are small or precision-critical. */
static target kind_target(const options *o, const char *n)
{
    if (is_head(n))
        return o->head;
    if (strstr(n, "embed_tokens") || strstr(n, "norm") || strstr(n, "bias") || ends_with(n, ".mlp.gate.weight") ||
        strstr(n, "weights_proj"))
        return T_KEEP;
    if (o->experts_only && !strstr(n, ".mlp.experts."))
        return T_KEEP;
    if (o->keep_attention && strstr(n, ".self_attn."))
        return T_KEEP;
    return o->type;
}

/* The dtype a [rows, cols] matrix converted to ty gets: ty, or the
 * nearest format whose block divides a row. */
static ds_dtype output_dtype(target ty, int64_t cols)
{
    switch (ty) {
    case T_FP8: return DS_DT_F8_E4M3;
    case T_Q4_K:
        if (cols % DS_Q4_K_BLOCK == 0)
            return DS_DT_Q4_K;
        /* fall through */
    case T_Q8_0: return cols % DS_Q8_0_BLOCK == 0 ? DS_DT_Q8_0 : DS_DT_BF16;
    default: return DS_DT_BF16;
    }
}

/* A weight already in Q8_0 or Q4_K is copied when that is its target; to
 * any other it is refused: converting it again would compound two
 * roundings, and leaving it as it is would label the output with a type
 * it does not have. */
static target tensor_target(const options *o, const ds_tensor *t)
{
    if (t->ndim != 2 || !ends_with(t->name, ".weight"))
        return T_KEEP;
    const target ty = kind_target(o, t->name);
    if (t->dtype != DS_DT_Q8_0 && t->dtype != DS_DT_Q4_K)
        return t->dtype == DS_DT_F8_E4M3 || t->dtype == DS_DT_BF16 || t->dtype == DS_DT_F16 || t->dtype == DS_DT_F32
                   ? ty
                   : T_KEEP;
    if (ty == T_KEEP || output_dtype(ty, t->shape[1]) == t->dtype)
        return T_KEEP;
    tool_die(EXIT_INPUT, "%s: '%s' is already %s, not %s; dsinfer-quantize converts FP8, BF16, F16 and F32 weights, "
             "so start from the original checkpoint", o->in, t->name, ds_dtype_name(t->dtype), target_names[ty]);
}

/* output_dtype, counting the fallbacks for the report. */
static ds_dtype target_dtype(plan *p, target ty, int64_t cols)
{
    const ds_dtype dt = output_dtype(ty, cols);
    p->fallback_q8 += ty == T_Q4_K && dt == DS_DT_Q8_0;
    p->fallback_bf16 += (ty == T_Q4_K || ty == T_Q8_0) && dt == DS_DT_BF16;
    return dt;
}

static out_tensor *plan_push(plan *p, const ds_tensor *src, const char *name, ds_dtype dt, enum how how)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        p->t = realloc(p->t, sizeof *p->t * (size_t)p->cap);
        if (!p->t)
            tool_die(EXIT_RUNTIME, "out of memory");
    }
    out_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    t->src = src;
    t->name = strdup(name);
    if (!t->name)
        tool_die(EXIT_RUNTIME, "out of memory");
    t->dt = dt;
    t->ndim = src->ndim;
    memcpy(t->shape, src->shape, sizeof t->shape);
    t->how = how;
    t->kind = kind_of(name);
    return t;
}

static uint64_t out_bytes(const out_tensor *t)
{
    return st_tensor_bytes(t->dt, t->ndim, t->shape);
}

/* Splits "model.layers.L.mlp.experts.E.<proj>.weight[_scale_inv]" into the
 * expert's prefix (up to and including "E."), the projection (0 gate, 1 up,
 * 2 down) and whether it is the scale; 0 when the name is no such tensor. */
static int expert_part(const char *name, size_t *prefix_len, int *proj, int *scale)
{
    static const char *const projs[3] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
    const char *e = strstr(name, ".mlp.experts.");
    if (!e || strncmp(name, "model.layers.", 13) != 0)
        return 0;
    e += strlen(".mlp.experts.");
    if (*e < '0' || *e > '9')
        return 0;
    while (*e >= '0' && *e <= '9')
        e++;
    if (*e++ != '.')
        return 0;
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(projs[k]);
        if (strncmp(e, projs[k], n) == 0 && (!e[n] || !strcmp(e + n, "_scale_inv"))) {
            *prefix_len = (size_t)(e - name);
            *proj = k;
            *scale = e[n] != 0;
            return 1;
        }
    }
    return 0;
}

/* --repack: reorders the plan so every routed expert's three weights come
 * together (gate, up, down, each REPACK_ALIGN-aligned: the expert cache's
 * slab layout), followed by their block scales, at the place of the
 * expert's first tensor in the source order.  NEW_SCALE entries still come
 * after the weight that produces them. */
static void repack_plan(plan *p)
{
    json_t *groups = json_object();   /* expert prefix -> [6 plan indices or -1] */
    int *order = malloc(sizeof(int) * (size_t)(p->n + 1)), *newpos = malloc(sizeof(int) * (size_t)(p->n + 1));
    char *done = calloc((size_t)p->n + 1, 1);
    if (!groups || !order || !newpos || !done)
        tool_die(EXIT_RUNTIME, "out of memory");
    char key[512];
    for (int i = 0; i < p->n; i++) {
        size_t pl;
        int proj, scale;
        if (!expert_part(p->t[i].name, &pl, &proj, &scale) || p->t[i].ndim != 2)
            continue;
        snprintf(key, sizeof key, "%.*s", (int)pl, p->t[i].name);
        json_t *g = json_object_get(groups, key);
        if (!g) {
            g = json_array();
            for (int k = 0; k < 6; k++)
                json_array_append_new(g, json_integer(-1));
            if (json_object_set_new(groups, key, g))
                tool_die(EXIT_RUNTIME, "out of memory");
        }
        json_array_set_new(g, (size_t)(scale * 3 + proj), json_integer(i));
    }
    int n = 0;
    for (int i = 0; i < p->n; i++) {
        if (done[i])
            continue;
        size_t pl;
        int proj, scale;
        json_t *g = NULL;
        if (expert_part(p->t[i].name, &pl, &proj, &scale) && p->t[i].ndim == 2) {
            snprintf(key, sizeof key, "%.*s", (int)pl, p->t[i].name);
            g = json_object_get(groups, key);
        }
        int idx[6] = {-1, -1, -1, -1, -1, -1}, full = g != NULL;
        for (int k = 0; g && k < 6; k++)
            idx[k] = (int)json_integer_value(json_array_get(g, (size_t)k));
        for (int k = 0; k < 3; k++)
            full &= idx[k] >= 0;
        if (!full) {
            order[n++] = i;
            done[i] = 1;
            continue;
        }
        for (int k = 0; k < 6; k++) {
            if (idx[k] < 0)
                continue;
            out_tensor *t = &p->t[idx[k]];
            t->align = k < 3;
            t->cont = k > 0;
            order[n++] = idx[k];
            done[idx[k]] = 1;
        }
    }
    out_tensor *nt = malloc(sizeof *nt * (size_t)(p->n + 1));
    if (!nt)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int k = 0; k < n; k++)
        newpos[order[k]] = k;
    for (int k = 0; k < n; k++) {
        nt[k] = p->t[order[k]];
        if (nt[k].how == NEW_SCALE)
            nt[k].of = newpos[nt[k].of];
    }
    free(p->t);
    p->t = nt;
    p->cap = p->n + 1;
    json_decref(groups);
    free(order), free(newpos), free(done);
}

/* A source weight's "_scale_inv" is dropped when the weight is converted
 * to anything but FP8; FP8 sources stay FP8 (copied) under --type fp8. */
static void build_plan(const options *o, const ds_tensor_table *tab, plan *p)
{
    const int n = ds_table_count(tab);
    char nm[512];
    for (int i = 0; i < n; i++) {
        const ds_tensor *t = ds_table_at(tab, i);
        p->bytes_in += t->nbytes;
        if (ends_with(t->name, "_scale_inv")) {
            const size_t len = strlen(t->name) - strlen("_scale_inv");
            snprintf(nm, sizeof nm, "%.*s", (int)len, t->name);
            const ds_tensor *w = ds_table_find(tab, nm);
            const target wt = w ? tensor_target(o, w) : T_KEEP;
            if (wt != T_KEEP && wt != T_FP8) {
                p->dropped++;
                continue;
            }
            plan_push(p, t, t->name, t->dtype, COPY);
            p->copied++;
            continue;
        }
        const target ty = tensor_target(o, t);
        if (ty == T_KEEP || (ty == T_FP8 && t->dtype == DS_DT_F8_E4M3) || (ty == T_BF16 && t->dtype == DS_DT_BF16)) {
            plan_push(p, t, t->name, t->dtype, COPY);
            p->copied++;
            continue;
        }
        if (t->dtype == DS_DT_F8_E4M3) {
            snprintf(nm, sizeof nm, "%s_scale_inv", t->name);
            if (!ds_table_find(tab, nm))
                tool_die(EXIT_INPUT, "%s: F8_E4M3 tensor '%s' has no block scale '%s'", o->in, t->name, nm);
        }
        plan_push(p, t, t->name, target_dtype(p, ty, t->shape[1]), CONVERT);
        p->converted++;
        if (ty == T_FP8) {
            snprintf(nm, sizeof nm, "%s_scale_inv", t->name);
            if (ds_table_find(tab, nm))
                tool_die(EXIT_INPUT, "%s: non-FP8 tensor '%s' already has a '%s'", o->in, t->name, nm);
            out_tensor *s = plan_push(p, t, nm, DS_DT_F32, NEW_SCALE);
            s->of = p->n - 2;
            s->shape[0] = (t->shape[0] + DS_QBLOCK - 1) / DS_QBLOCK;
            s->shape[1] = (t->shape[1] + DS_QBLOCK - 1) / DS_QBLOCK;
        }
    }
    if (o->repack)
        repack_plan(p);
    /* Shards in order of the source; a weight and its new scale stay
     * together, and so does a repacked expert group. */
    uint64_t fill = 0;
    int shard = 0;
    for (int i = 0; i < p->n; i++) {
        const uint64_t b = out_bytes(&p->t[i]);
        /* an aligned tensor may bring up to REPACK_ALIGN - 1 bytes of padding */
        const uint64_t room = p->t[i].align ? b + REPACK_ALIGN : b;
        if (p->t[i].how != NEW_SCALE && !p->t[i].cont && fill > 0 && fill + room > SHARD_MAX) {
            shard++;
            fill = 0;
        }
        p->t[i].shard = shard;
        fill += room;
        p->bytes_out += b;
    }
    p->nshards = shard + 1;
}

/* ---- conversion ------------------------------------------------------- */

typedef struct src_view {
    ds_mat m;
    float *scale;     /* owned f32 copy of an FP8 source's block scales */
} src_view;

static void open_source(const options *o, const ds_tensor_table *tab, const ds_tensor *t, src_view *v)
{
    memset(v, 0, sizeof *v);
    v->m = (ds_mat){.dtype = t->dtype, .rows = (int)t->shape[0], .cols = (int)t->shape[1], .data = t->data};
    if (t->shape[0] > INT_MAX || t->shape[1] > INT_MAX)
        tool_die(EXIT_INPUT, "%s: tensor '%s' is too large", o->in, t->name);
    if (t->dtype != DS_DT_F8_E4M3)
        return;
    char nm[512];
    snprintf(nm, sizeof nm, "%s_scale_inv", t->name);
    const ds_tensor *s = ds_table_find(tab, nm);
    const int64_t sr = (t->shape[0] + DS_QBLOCK - 1) / DS_QBLOCK, sc = (t->shape[1] + DS_QBLOCK - 1) / DS_QBLOCK;
    if (s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc ||
        (s->dtype != DS_DT_F32 && s->dtype != DS_DT_BF16))
        tool_die(EXIT_INPUT, "%s: '%s' is not an F32/BF16 [%lld, %lld] block scale", o->in, nm, (long long)sr,
                 (long long)sc);
    v->scale = malloc(sizeof(float) * (size_t)(sr * sc));
    if (!v->scale)
        tool_die(EXIT_RUNTIME, "out of memory");
    ds_convert_to_f32(s->dtype, s->data, v->scale, (size_t)(sr * sc));
    v->m.scale = v->scale;
}

/* Encodes one f32 row into dtype dt (FP8: with the strip's block scales)
 * and decodes it back into back[] for the error statistics. */
static void encode_row(ds_dtype dt, const float *x, int cols, const float *fp8_scales, uint8_t *dst, float *back)
{
    switch (dt) {
    case DS_DT_Q8_0:
        ds_quant_q8_0(x, dst, (size_t)cols / DS_Q8_0_BLOCK);
        break;
    case DS_DT_Q4_K:
        ds_quant_q4_k(x, dst, (size_t)cols / DS_Q4_K_BLOCK);
        break;
    case DS_DT_BF16:
        for (int c = 0; c < cols; c++) {
            const uint16_t h = ds_f32_to_bf16(x[c]);
            memcpy(dst + 2 * (size_t)c, &h, 2);
        }
        break;
    case DS_DT_F8_E4M3:
        for (int c = 0; c < cols; c++) {
            const float s = fp8_scales[c / DS_QBLOCK];
            dst[c] = ds_f32_to_e4m3(s > 0.0f ? x[c] / s : 0.0f);
        }
        break;
    default:
        break;
    }
    ds_convert_to_f32(dt, dst, back, (size_t)cols);
    if (dt == DS_DT_F8_E4M3)
        for (int c = 0; c < cols; c++)
            back[c] *= fp8_scales[c / DS_QBLOCK];
}

/* FP8 block scales of one strip of rows: amax / 448 per 128 columns, so the
 * largest magnitude maps to the largest finite e4m3 value. */
static void strip_scales(const float *x, int nrows, int cols, float *scales)
{
    const int nb = (cols + DS_QBLOCK - 1) / DS_QBLOCK;
    for (int b = 0; b < nb; b++) {
        float amax = 0.0f;
        for (int r = 0; r < nrows; r++)
            for (int c = b * DS_QBLOCK; c < cols && c < (b + 1) * DS_QBLOCK; c++)
                amax = fmaxf(amax, fabsf(x[(size_t)r * cols + c]));
        scales[b] = amax > 0.0f ? amax / 448.0f : 1.0f;
    }
}

/* A failed write (a full disk) removes the shard's temporary before the
 * exit, or it would keep the disk full. */
static void die_writer(st_writer *w)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", st_writer_error(w));
    st_writer_abort(w);
    tool_die(EXIT_IO, "%s", msg);
}

/* Converts one tensor strip by strip (rows decoded, encoded and measured in
 * parallel) and appends its bytes to w. */
static void write_converted(const options *o, const ds_tensor_table *tab, out_tensor *t, st_writer *w,
                            stats *st)
{
    src_view v;
    open_source(o, tab, t->src, &v);
    const int rows = v.m.rows, cols = v.m.cols;
    const size_t rb = ds_dtype_row_bytes(t->dt, cols);
    float *x = malloc(sizeof(float) * (size_t)STRIP * cols);
    float *back = malloc(sizeof(float) * (size_t)STRIP * cols);
    uint8_t *enc = malloc(rb * STRIP);
    if (t->dt == DS_DT_F8_E4M3)
        t->scales = malloc(sizeof(float) * (size_t)((rows + STRIP - 1) / STRIP) * ((cols + STRIP - 1) / STRIP));
    if (!x || !back || !enc || (t->dt == DS_DT_F8_E4M3 && !t->scales))
        tool_die(EXIT_RUNTIME, "out of memory converting '%s'", t->name);
    const int nth = o->threads;
    double err2 = 0.0, ref2 = 0.0;
    for (int r0 = 0; r0 < rows; r0 += STRIP) {
        const int nr = rows - r0 < STRIP ? rows - r0 : STRIP;
        float *sc = NULL;
#pragma omp parallel for schedule(static) num_threads(nth)
        for (int i = 0; i < nr; i++)
            ds_mat_row(&v.m, r0 + i, x + (size_t)i * cols);
        if (t->dt == DS_DT_F8_E4M3) {
            sc = t->scales + (size_t)(r0 / STRIP) * ((cols + STRIP - 1) / STRIP);
            strip_scales(x, nr, cols, sc);
        }
#pragma omp parallel for schedule(static) num_threads(nth) reduction(+ : err2, ref2)
        for (int i = 0; i < nr; i++) {
            const float *xi = x + (size_t)i * cols;
            float *bi = back + (size_t)i * cols;
            encode_row(t->dt, xi, cols, sc, enc + rb * (size_t)i, bi);
            for (int c = 0; c < cols; c++) {
                err2 += ((double)bi[c] - xi[c]) * ((double)bi[c] - xi[c]);
                ref2 += (double)xi[c] * xi[c];
            }
        }
        if (st_writer_write(w, enc, rb * (size_t)nr) != 0)
            die_writer(w);
    }
    tool_info("%s: %d x %d -> %s, rmse %.3g (relative %.3g)", t->name, rows, cols, ds_dtype_name(t->dt),
              sqrt(err2 / ((double)rows * cols)), ref2 > 0 ? sqrt(err2 / ref2) : 0.0);
    st->err2 += err2;
    st->ref2 += ref2;
    st->n += (uint64_t)rows * cols;
    st->tensors++;
    free(x), free(back), free(enc), free(v.scale);
}

static void write_copy(const out_tensor *t, st_writer *w)
{
    const uint8_t *d = t->src->data;
    for (uint64_t off = 0; off < t->src->nbytes; off += COPY_CHUNK) {
        const uint64_t n = t->src->nbytes - off < COPY_CHUNK ? t->src->nbytes - off : COPY_CHUNK;
        if (st_writer_write(w, d + off, (size_t)n) != 0)
            die_writer(w);
    }
}

static void write_shard(const options *o, const ds_tensor_table *tab, plan *p, int shard, st_index *ix,
                        stats st[K_COUNT])
{
    char fname[64], path[PATH_MAX];
    snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", shard + 1, p->nshards);
    snprintf(path, sizeof path, "%s/%s", o->out, fname);
    st_writer *w = st_writer_new(path);
    if (!w)
        tool_die(EXIT_RUNTIME, "out of memory");
    int count = 0;
    if (o->repack && (st_writer_set_align(w, REPACK_ALIGN) != 0 ||
                      st_writer_set_meta(w, "dsinfer_layout", REPACK_LAYOUT) != 0))
        die_writer(w);
    for (int i = 0; i < p->n; i++) {
        out_tensor *t = &p->t[i];
        if (t->shard != shard)
            continue;
        if (t->align && st_writer_pad_to(w, REPACK_ALIGN) != 0)
            die_writer(w);
        if (st_writer_add(w, t->name, t->dt, t->ndim, t->shape) != 0)
            die_writer(w);
        if (st_index_add(ix, t->name, fname) != 0)
            tool_die(EXIT_RUNTIME, "duplicate tensor '%s'", t->name);
        count++;
    }
    if (!o->quiet)
        fprintf(stderr, "%s: writing %s (%d tensors)\n", tool_name, fname, count);
    if (st_writer_begin(w) != 0)
        die_writer(w);
    for (int i = 0; i < p->n; i++) {
        out_tensor *t = &p->t[i];
        if (t->shard != shard)
            continue;
        switch (t->how) {
        case COPY: write_copy(t, w); break;
        case CONVERT: write_converted(o, tab, t, w, &st[t->kind]); break;
        case NEW_SCALE: {
            /* Its weight, written before it, produced the scales. */
            out_tensor *wt = &p->t[t->of];
            if (st_writer_write(w, wt->scales, sizeof(float) * (size_t)(t->shape[0] * t->shape[1])) != 0)
                die_writer(w);
            free(wt->scales);
            wt->scales = NULL;
            break;
        }
        }
    }
    if (st_writer_finish(w) != 0)
        die_writer(w);
    st_writer_free(w);
}

/* ---- config, tokenizer, report --------------------------------------- */

static int any_fp8(const plan *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->t[i].dt == DS_DT_F8_E4M3)
            return 1;
    return 0;
}

/* config.json with quantization_config kept while FP8 weights remain (or
 * when it carries scale_fmt, which also sets the runtime's activation
 * quantisation) and removed otherwise; "dsinfer_quant" records the type. */
static void write_config(const options *o, const plan *p)
{
    char path[PATH_MAX], err[512];
    snprintf(path, sizeof path, "%s/config.json", o->in);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg || !json_is_object(cfg))
        tool_die(EXIT_INPUT, "%s: %s", path, cfg ? "not a JSON object" : je.text);
    json_t *qc = json_object_get(cfg, "quantization_config");
    const int keep_qc = any_fp8(p) || (json_is_object(qc) && json_object_get(qc, "scale_fmt"));
    if (!keep_qc) {
        json_object_del(cfg, "quantization_config");
    } else if (!json_is_object(qc)) {
        json_t *q = json_pack("{s:s, s:s, s:s, s:[i,i]}", "activation_scheme", "dynamic", "fmt", "e4m3",
                              "quant_method", "fp8", "weight_block_size", 128, 128);
        json_object_set_new(cfg, "quantization_config", q);
    }
    if (o->type != T_KEEP)
        json_object_set_new(cfg, "dsinfer_quant", json_string(target_names[o->type]));
    if (o->head != T_KEEP)
        json_object_set_new(cfg, "dsinfer_quant_head", json_string(target_names[o->head]));
    char *text = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    if (!text)
        tool_die(EXIT_RUNTIME, "out of memory");
    const size_t len = strlen(text);
    char *withnl = realloc(text, len + 2);
    if (!withnl)
        tool_die(EXIT_RUNTIME, "out of memory");
    withnl[len] = '\n';
    withnl[len + 1] = 0;
    snprintf(path, sizeof path, "%s/config.json", o->out);
    if (st_write_file_atomic(path, withnl, len + 1, err, sizeof err) != 0)
        tool_die(EXIT_IO, "%s", err);
    free(withnl);
}

static void copy_tokenizer(const options *o)
{
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "tokenizer.model", "chat_template.jinja"};
    char src[PATH_MAX], dst[PATH_MAX], err[512];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        struct stat sb;
        snprintf(src, sizeof src, "%s/%s", o->in, files[i]);
        if (stat(src, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        snprintf(dst, sizeof dst, "%s/%s", o->out, files[i]);
        if (st_copy_file_atomic(src, dst, err, sizeof err) != 0)
            tool_die(EXIT_IO, "%s", err);
    }
}

static json_t *stats_json(const stats *s)
{
    const double rmse = s->n ? sqrt(s->err2 / (double)s->n) : 0.0;
    const double rel = s->ref2 > 0.0 ? sqrt(s->err2 / s->ref2) : 0.0;
    return json_pack("{s:i, s:I, s:f, s:f}", "tensors", s->tensors, "elements", (json_int_t)s->n, "rmse", rmse,
                     "rel_rmse", rel);
}

static void report(const options *o, const plan *p, const stats st[K_COUNT])
{
    stats all = {0};
    json_t *kinds = json_object();
    for (int k = 0; k < K_COUNT; k++) {
        all.err2 += st[k].err2, all.ref2 += st[k].ref2, all.n += st[k].n, all.tensors += st[k].tensors;
        if (st[k].tensors)
            json_object_set_new(kinds, kind_names[k], stats_json(&st[k]));
    }
    json_t *r = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:{s:i, s:i}, s:i, s:I, s:I}", "type", target_names[o->type],
                          "head", target_names[o->head],
                          "out", o->out, "converted", p->converted, "copied", p->copied, "dropped_scales",
                          p->dropped, "fallbacks", "Q8_0", p->fallback_q8, "BF16", p->fallback_bf16, "shards",
                          p->nshards, "bytes_in", (json_int_t)p->bytes_in, "bytes_out", (json_int_t)p->bytes_out);
    json_t *a = stats_json(&all);
    json_object_set(r, "rmse", json_object_get(a, "rmse"));
    json_object_set(r, "rel_rmse", json_object_get(a, "rel_rmse"));
    json_decref(a);
    json_object_set_new(r, "by_kind", kinds);
    char *s = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(r);
}

static void make_out_dir(const options *o)
{
    if (mkdir(o->out, 0755) != 0 && errno != EEXIST)
        tool_die(EXIT_IO, "%s: cannot create: %s", o->out, strerror(errno));
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(o->in, a) && realpath(o->out, b) && strcmp(a, b) == 0)
        tool_die(EXIT_USAGE, "--out must differ from --model (%s)", o->in);
}

static int default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int main(int argc, char **argv)
{
    options o;
    parse_args(argc, argv, &o);
    ds_error err;
    ds_tensor_table *tab;
    if (ds_table_open(o.in, &tab, &err) != DS_OK)
        tool_die_err(&err);
    make_out_dir(&o);
    plan p = {0};
    build_plan(&o, tab, &p);
    stats st[K_COUNT] = {{0}};
    st_index *ix = st_index_new();
    if (!ix)
        tool_die(EXIT_RUNTIME, "out of memory");
    if (o.threads == 0)
        o.threads = default_threads();
    for (int s = 0; s < p.nshards; s++)
        write_shard(&o, tab, &p, s, ix, st);
    char path[PATH_MAX], msg[512];
    if (o.repack && st_index_set_meta(ix, "dsinfer_layout", REPACK_LAYOUT) != 0)
        tool_die(EXIT_RUNTIME, "out of memory");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", o.out);
    if (st_index_write(ix, path, p.bytes_out, msg, sizeof msg) != 0)
        tool_die(EXIT_IO, "%s", msg);
    write_config(&o, &p);
    copy_tokenizer(&o);
    if (st_fsync_dir(o.out, msg, sizeof msg) != 0)
        tool_die(EXIT_IO, "%s", msg);
    report(&o, &p, st);
    st_index_free(ix);
    for (int i = 0; i < p.n; i++)
        free(p.t[i].name);
    free(p.t);
    ds_table_free(tab);
    return EXIT_OK;
}
