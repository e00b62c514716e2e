/* dsinfer-eval — the conformance contract: prefill a prompt, teacher-force
 * decode tokens, and write every position's logits (raw little-endian f32)
 * plus optional dumps of indexer / router choices and the residual stream
 * in the layouts of the golden reference files. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "outfiles.h"

const char *tool_name = "dsinfer-eval";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer-eval --model DIR --tokens FILE --out FILE [options]\n"
        "\n"
        "Prefills tokens.json's \"prompt\" at position 0, then feeds \"decode_inputs\" one\n"
        "token at a time; writes (prompt + decode) rows x vocab float32 logits to --out.\n"
        "\n"
        "  -m, --model DIR          checkpoint directory (HF layout)\n"
        "      --tokens FILE        JSON {\"prompt\": [ids], \"decode_inputs\": [ids]}\n"
        "  -o, --out FILE           output logits (raw little-endian float32)\n"
        "      --kv-cache TYPE      latent cache: fp8 (default), fp8-compact (bf16 rope key) or f32\n"
        TOOL_PRECISION_HELP("        ", "f32: the reference dumps stay exact")
        "  -t, --threads N          worker threads (default: all cores)\n"
        "  -c, --ctx-size N         KV cache positions (default: prompt + decode)\n"
        "      --chunk N            prefill in chunks of N tokens (default: all at once)\n"
        "      --dump-topk FILE     indexer selections, int32 [layers,P,min(topk,P)] then [D,layers,min(topk,P+D)]\n"
        "      --dump-scores FILE   indexer scores, float32 [layers,P,P] then [D,layers,P+D]\n"
        "      --dump-experts FILE  routed experts, int32 [moe layers,P,k] then [D,moe layers,k]\n"
        "      --dump-expert-weights FILE  their weights, float32, same layout\n"
        "      --dump-layers FILE   residual stream after each block, float32 [layers,P,hidden] (prefill)\n"
        "      --dump-attn-rows FILE  latent rows read per query, int32 [layers,P] then [D,layers]\n"
        "      --mem-budget SIZE    RAM for routed experts (e.g. 12G); smaller than the experts\n"
        "                           streams them from disk through an expert cache (default auto: all resident\n"
        "                           when the model fits in memory, else stream in what fits; all: resident)\n"
        "      --io MODE            how streamed experts are read: uring, pread or auto (default)\n"
        TOOL_HELP_NUMA
        "  -q, --quiet              print errors only\n"
        "  -v, --verbose            describe the model, kernels and expert cache on stderr\n"
        "  -h, --help               show this help\n"
        "  -V, --version            show the version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad model or input, 3 I/O error, 4 runtime error.\n");
}

/* Dump buffers, filled by the trace callback. */
typedef struct dumps {
    int L, P, D, H, K, kp, kd, n_moe, moe_cap;
    int phase_decode, step;
    int moe_index[4096];
    int32_t *topk;      /* prefill then decode */
    float *scores;
    int32_t *experts;
    float *eweights;
    float *layers;
    int32_t *rows;
    int want_topk, want_scores, want_experts, want_layers, want_rows;
} dumps;

static int moe_slot(dumps *d, int layer)
{
    if (layer < 0 || layer >= 4096)
        return 0;
    if (d->moe_index[layer] < 0)
        d->moe_index[layer] = d->n_moe++;
    return d->moe_index[layer];
}

static void on_trace(void *user, ds_trace_kind kind, int layer, int pos, const void *data, int n)
{
    dumps *d = user;
    const int P = d->P, L = d->L;
    const int dec = d->phase_decode, k = d->step;
    switch (kind) {
    case DS_TRACE_INDEXER_TOPK: {
        if (!d->topk)
            return;
        int w = dec ? d->kd : d->kp;
        int32_t *row = dec ? d->topk + (size_t)L * P * d->kp + ((size_t)k * L + layer) * w
                           : d->topk + ((size_t)layer * P + pos) * w;
        for (int i = 0; i < w; i++)
            row[i] = i < n ? ((const int32_t *)data)[i] : -1;
        break;
    }
    case DS_TRACE_INDEXER_SCORES: {
        if (!d->scores)
            return;
        int w = dec ? P + d->D : P;
        float *row = dec ? d->scores + (size_t)L * P * P + ((size_t)k * L + layer) * w
                         : d->scores + ((size_t)layer * P + pos) * w;
        for (int i = 0; i < w; i++)
            row[i] = i < n ? ((const float *)data)[i] : -INFINITY;
        break;
    }
    case DS_TRACE_MOE_EXPERTS:
    case DS_TRACE_MOE_WEIGHTS: {
        int m = moe_slot(d, layer);
        if (!d->experts || m >= d->moe_cap || n != d->K)
            return;
        size_t off = dec ? (size_t)d->n_moe * P * d->K + ((size_t)k * d->n_moe + m) * d->K
                         : ((size_t)m * P + pos) * d->K;
        if (kind == DS_TRACE_MOE_EXPERTS)
            memcpy(d->experts + off, data, sizeof(int32_t) * (size_t)n);
        else
            memcpy(d->eweights + off, data, sizeof(float) * (size_t)n);
        break;
    }
    case DS_TRACE_LAYER_OUT:
        if (d->layers && !dec)
            memcpy(d->layers + ((size_t)layer * P + pos) * d->H, data, sizeof(float) * (size_t)n);
        break;
    case DS_TRACE_ATTN_ROWS:
        if (d->rows)
            d->rows[dec ? (size_t)L * P + (size_t)k * L + layer : (size_t)layer * P + pos] =
                *(const int32_t *)data;
        break;
    }
}

static int32_t *json_ids(json_t *root, const char *key, const char *path, int *n)
{
    json_t *a = json_object_get(root, key);
    if (!a)
        tool_die(EXIT_INPUT, "%s: missing key \"%s\"", path, key);
    if (!json_is_array(a))
        tool_die(EXIT_INPUT, "%s: \"%s\" must be an array of token ids", path, key);
    *n = (int)json_array_size(a);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    if (!ids)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int i = 0; i < *n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            tool_die(EXIT_INPUT, "%s: \"%s\"[%d] is not a non-negative integer token id", path, key, i);
        ids[i] = (int32_t)json_integer_value(v);
    }
    return ids;
}

/* The output files, in the order of outs[] below. */
enum { F_OUT, F_TOPK, F_SCORES, F_EXPERTS, F_EW, F_LAYERS, F_ROWS, N_FILES };
static const char *const file_opts[N_FILES] = {"--out", "--dump-topk", "--dump-scores", "--dump-experts",
                                                "--dump-expert-weights", "--dump-layers", "--dump-attn-rows"};

/* Checks the output paths against each other, the tokens file and the
 * checkpoint, then creates them all (as temporaries: see outfiles.h) before
 * any work, so a bad path fails at once and a failed run replaces nothing. */
static void open_outputs(const char *const paths[N_FILES], const char *tokens_path, const char *model_dir,
                         tool_outfile *files[N_FILES])
{
    const char *const ins[1] = {tokens_path};
    tool_check_outputs(paths, file_opts, N_FILES, ins, 1, model_dir);
    for (int i = 0; i < N_FILES; i++)
        files[i] = paths[i] ? tool_outfile_open(paths[i]) : NULL;
}

static void put(tool_outfile *f, const void *data, size_t bytes)
{
    if (f)
        tool_outfile_write(f, data, bytes);
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *tokens_path = NULL, *out_path = NULL;
    const char *dump_topk = NULL, *dump_scores = NULL, *dump_experts = NULL, *dump_ew = NULL;
    const char *dump_layers = NULL, *dump_rows = NULL;
    int threads = 0, ctx_size = 0, chunk = 0;
    int64_t mem_budget = 0;
    ds_io_mode io_mode = DS_IO_MODE_AUTO;
    int numa = DS_NUMA_ON;
    ds_kv_type kv = DS_KV_FP8;
    ds_precision precision = DS_PRECISION_F32;
    enum { O_TOKENS = 256, O_KV, O_BUDGET, O_IO, O_NUMA, O_CHUNK, O_TOPK, O_SCORES, O_EXPERTS, O_EW, O_LAYERS, O_ROWS,
           O_PREC };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokens", required_argument, 0, O_TOKENS},
        {"out", required_argument, 0, 'o'}, {"kv-cache", required_argument, 0, O_KV},
        {"precision", required_argument, 0, O_PREC},
        {"threads", required_argument, 0, 't'}, {"ctx-size", required_argument, 0, 'c'},
        {"chunk", required_argument, 0, O_CHUNK}, {"dump-topk", required_argument, 0, O_TOPK},
        {"dump-scores", required_argument, 0, O_SCORES}, {"dump-experts", required_argument, 0, O_EXPERTS},
        {"dump-expert-weights", required_argument, 0, O_EW}, {"dump-layers", required_argument, 0, O_LAYERS},
        {"dump-attn-rows", required_argument, 0, O_ROWS},
        {"mem-budget", required_argument, 0, O_BUDGET}, {"io", required_argument, 0, O_IO},
        {"numa", required_argument, 0, O_NUMA},
        {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:o:t:c:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case O_TOKENS: tokens_path = optarg; break;
        case 'o': out_path = optarg; break;
        case O_KV: kv = tool_parse_kv("--kv-cache", optarg); break;
        case O_PREC: precision = tool_parse_precision("--precision", optarg); break;
        case 't': threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case 'c': ctx_size = (int)tool_parse_long("--ctx-size", optarg, 1, 1 << 24); break;
        case O_CHUNK: chunk = (int)tool_parse_long("--chunk", optarg, 1, 1 << 24); break;
        case O_TOPK: dump_topk = optarg; break;
        case O_SCORES: dump_scores = optarg; break;
        case O_EXPERTS: dump_experts = optarg; break;
        case O_EW: dump_ew = optarg; break;
        case O_LAYERS: dump_layers = optarg; break;
        case O_ROWS: dump_rows = optarg; break;
        case O_BUDGET: mem_budget = tool_parse_budget("--mem-budget", optarg); break;
        case O_IO: io_mode = tool_parse_io("--io", optarg); break;
        case O_NUMA: numa = tool_parse_numa("--numa", optarg); break;
        case 'q': tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': tool_print_version();
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!model_dir || !tokens_path || !out_path)
        tool_die(EXIT_USAGE, "--model, --tokens and --out are required (see --help)");

    json_error_t jerr;
    json_t *root = json_load_file(tokens_path, 0, &jerr);
    if (!root)
        tool_die(EXIT_INPUT, "%s: line %d: %s", tokens_path, jerr.line, jerr.text);
    if (!json_is_object(root))
        tool_die(EXIT_INPUT, "%s: expected a JSON object", tokens_path);
    int P, D;
    int32_t *prompt = json_ids(root, "prompt", tokens_path, &P);
    int32_t *dec = json_object_get(root, "decode_inputs") ? json_ids(root, "decode_inputs", tokens_path, &D)
                                                          : (D = 0, calloc(1, sizeof(int32_t)));
    json_decref(root);
    if (P == 0)
        tool_die(EXIT_INPUT, "%s: \"prompt\" is empty", tokens_path);
    const char *const paths[N_FILES] = {out_path, dump_topk, dump_scores, dump_experts, dump_ew, dump_layers, dump_rows};
    tool_outfile *files[N_FILES];
    open_outputs(paths, tokens_path, model_dir, files);

    ds_error err;
    ds_model *model;
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.threads = threads;
    lp.expert_budget = mem_budget;
    lp.io = io_mode;
    lp.numa = numa;
    model = tool_load_model(model_dir, &lp);
    const ds_model_info *mi = ds_model_get_info(model);
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.kv_type = kv;
    cp.precision = precision;
    tool_info_precision(precision);
    cp.threads = threads;
    cp.ctx_size = ctx_size ? ctx_size : P + D;
    ds_context *ctx;
    if (ds_context_create(model, &cp, &ctx, &err) != DS_OK)
        tool_die_err(&err);
    tool_check_kv_locked(ctx);

    dumps d;
    memset(&d, 0, sizeof d);
    for (int i = 0; i < 4096; i++)
        d.moe_index[i] = -1;
    d.L = mi->num_layers;
    d.P = P;
    d.D = D;
    d.H = mi->hidden_size;
    d.K = mi->experts_per_token;
    d.kp = mi->index_topk < P ? mi->index_topk : P;
    d.kd = mi->index_topk < P + D ? mi->index_topk : P + D;
    for (int l = 0; l < d.L && l < 4096; l++)
        if (mi->n_routed_experts > 0 && l >= mi->first_dense_layers)
            d.n_moe++;
    int n_moe = d.n_moe;
    d.moe_cap = n_moe;
    d.n_moe = 0;
    size_t ntopk = (size_t)d.L * P * d.kp + (size_t)D * d.L * d.kd;
    size_t nscores = (size_t)d.L * P * P + (size_t)D * d.L * (P + D);
    size_t nexp = (size_t)n_moe * (P + D) * d.K;
    if (dump_topk && mi->has_indexer)
        d.topk = calloc(ntopk ? ntopk : 1, sizeof(int32_t));
    if (dump_scores && mi->has_indexer)
        d.scores = calloc(nscores ? nscores : 1, sizeof(float));
    if (dump_experts || dump_ew) {
        d.experts = calloc(nexp ? nexp : 1, sizeof(int32_t));
        d.eweights = calloc(nexp ? nexp : 1, sizeof(float));
    }
    if (dump_layers)
        d.layers = calloc((size_t)d.L * P * d.H, sizeof(float));
    if (dump_rows)
        d.rows = calloc((size_t)d.L * (P + D), sizeof(int32_t));
    if ((dump_topk && mi->has_indexer && !d.topk) || (dump_scores && mi->has_indexer && !d.scores) ||
        ((dump_experts || dump_ew) && (!d.experts || !d.eweights)) || (dump_layers && !d.layers) ||
        (dump_rows && !d.rows))
        tool_die(EXIT_RUNTIME, "out of memory for the dumps");
    if (dump_topk && !mi->has_indexer)
        fprintf(stderr, "%s: warning: %s has no indexer; --dump-topk writes an empty file\n", tool_name, model_dir);
    ds_context_set_trace(ctx, on_trace, &d);

    const size_t V = (size_t)mi->vocab_size;
    float *logits = malloc(sizeof(float) * V * (size_t)(P + D));
    if (!logits)
        tool_die(EXIT_RUNTIME, "out of memory for %d x %zu logits", P + D, V);
    int step = chunk ? chunk : P;
    for (int s = 0; s < P; s += step) {
        int n = P - s < step ? P - s : step;
        if (ds_eval(ctx, prompt + s, n, logits + (size_t)s * V, 1, &err) != DS_OK)
            tool_die_err(&err);
    }
    d.n_moe = n_moe;
    d.phase_decode = 1;
    for (int k = 0; k < D; k++) {
        d.step = k;
        if (ds_eval(ctx, dec + k, 1, logits + (size_t)(P + k) * V, 0, &err) != DS_OK)
            tool_die_err(&err);
    }
    put(files[F_OUT], logits, sizeof(float) * V * (size_t)(P + D));
    put(files[F_TOPK], d.topk, d.topk ? ntopk * 4 : 0);
    put(files[F_SCORES], d.scores, d.scores ? nscores * 4 : 0);
    put(files[F_EXPERTS], d.experts, nexp * 4);
    put(files[F_EW], d.eweights, nexp * 4);
    put(files[F_LAYERS], d.layers, (size_t)d.L * P * d.H * 4);
    put(files[F_ROWS], d.rows, (size_t)d.L * (P + D) * 4);
    tool_outfiles_commit();

    free(logits);
    free(d.topk), free(d.scores), free(d.experts), free(d.eweights), free(d.layers), free(d.rows);
    free(prompt);
    free(dec);
    ds_context_free(ctx);
    ds_model_free(model);
    return EXIT_OK;
}
