/* dsinfer-bench — speed of a checkpoint on this machine, as one JSON object:
 * load time, prefill tokens/s, decode tokens/s at a context depth, peak RSS,
 * weight bytes read per decoded token, the achieved bandwidth and its share
 * of the memory-bandwidth roofline the tool measures itself.  --compare runs
 * another benchmark command in the same invocation for a side-by-side ratio. */
#define _GNU_SOURCE   /* O_DIRECT */
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
#include "internal.h"   /* ds_context_fill_synthetic */

const char *tool_name = "dsinfer-bench";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer-bench --model DIR [options]\n"
        "\n"
        "Measures prefill and decode speed and prints one JSON object.\n"
        "\n"
        "  -m, --model DIR        checkpoint directory (HF layout)\n"
        "  -p, --prompt-len N     prefill test: tokens prefilled at once (default 512; 0 = skip)\n"
        "  -n, --gen N            decode test: tokens decoded one at a time (default 128; 0 = skip)\n"
        "  -d, --depth N          context depth before the decode test (default 0)\n"
        "      --depth-fill MODE  how the context reaches that depth: prefill (default: evaluate\n"
        "                         random tokens) or synthetic (fill the KV and indexer caches with\n"
        "                         seeded random entries, no forward pass; for deep contexts whose\n"
        "                         prefill would take too long)\n"
        "  -b, --batch N          also decode N sequences together (one batched step per\n"
        "                         token, as the server and dsinfer-batch do) and report the\n"
        "                         aggregate tokens/s and its gain over one sequence\n"
        "  -r, --repeat N         repetitions of each test; the median is reported (default 1)\n"
        "      --layer-times      also time each block of one more decode run and report its\n"
        "                         bytes read, GB/s and time over its bandwidth-bound time\n"
        "  -t, --threads N        worker threads (default: all cores)\n"
        "      --kv-cache TYPE    fp8 (default), fp8-compact (bf16 rope key) or f32\n"
        TOOL_PRECISION_HELP("      ", "bf16")
        "      --membw-mb N       size of the bandwidth probe buffer in MiB (default 1024; 0 = skip)\n"
        "      --compare CMD      run CMD through the shell after the tests; if it prints JSON\n"
        "                         objects with pp_tps / tg_tps (llama-bench style), report the ratios\n"
        "  -s, --seed N           seed of the random token ids (default 1)\n"
        "      --mem-budget SIZE    RAM for routed experts (e.g. 12G); smaller than the experts\n"
        "                           streams them from disk through an expert cache (default auto: all resident\n"
        "                           when the model fits in memory, else stream in what fits; all: resident)\n"
        "      --io MODE            how streamed experts are read: uring, pread or auto (default)\n"
        TOOL_HELP_NUMA
        "  -q, --quiet            print errors only\n"
        "  -v, --verbose          describe the model, kernels and expert cache on stderr\n"
        "  -h, --help             show this help\n"
        "  -V, --version          show the version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad model, 3 I/O error, 4 runtime error.\n");
}


static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Sum of a chunk with 8 independent SSE2-width accumulators, so the probe
 * is limited by memory, not by a chain of dependent additions. */
typedef double v2d __attribute__((vector_size(16)));
static double sum_chunk(const double *a, size_t n)
{
    v2d acc[8] = {{0}};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 8; k++) {
            v2d v;
            memcpy(&v, a + i + 2 * k, sizeof v);
            acc[k] += v;
        }
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += acc[k][0] + acc[k][1];
    for (; i < n; i++)
        s += a[i];
    return s;
}

/* The same with 256-bit loads where the CPU has AVX2 (chosen at run time). */
typedef double v4d __attribute__((vector_size(32)));
__attribute__((target("avx2"))) static double sum_chunk_avx2(const double *a, size_t n)
{
    v4d acc[8] = {{0}};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 8; k++) {
            v4d v;
            memcpy(&v, a + i + 4 * k, sizeof v);
            acc[k] += v;
        }
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += acc[k][0] + acc[k][1] + acc[k][2] + acc[k][3];
    for (; i < n; i++)
        s += a[i];
    return s;
}

/* Best of several read passes over a large buffer with all threads: the
 * bandwidth roofline decode speed is measured against. */
static double measure_membw(size_t mib)
{
    size_t n = mib * 1024 * 1024 / sizeof(double);
    double *a = malloc(n * sizeof(double));
    if (!a)
        return 0.0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = (double)(i & 1023);
    double best = 0.0, sink = 0.0;
    for (int pass = 0; pass < 8; pass++) {
        double t0 = tool_now(), s = 0.0;
#pragma omp parallel reduction(+ : s)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            size_t lo = n * (size_t)t / (size_t)nt, hi = n * (size_t)(t + 1) / (size_t)nt;
            s += __builtin_cpu_supports("avx2") ? sum_chunk_avx2(a + lo, hi - lo) : sum_chunk(a + lo, hi - lo);
        }
        double dt = tool_now() - t0;
        sink += s;
        if (dt > 0 && n * sizeof(double) / dt > best)
            best = n * sizeof(double) / dt;
    }
    free(a);
    return sink >= 0 ? best / 1e9 : 0.0;
}

static void random_ids(int32_t *ids, int n, int vocab, uint64_t *state)
{
    for (int i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((*state >> 33) % (uint64_t)vocab);
    }
}

typedef struct bench_opts {
    int prompt_len, gen, depth, repeat, batch, layer_times;
    int synthetic;      /* --depth-fill synthetic */
    ds_kv_type kv;
    uint64_t seed;
} bench_opts;

static ds_precision bench_precision = DS_PRECISION_BF16;

static ds_context *new_context(ds_model *m, int size, ds_kv_type kv)
{
    ds_error err;
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.ctx_size = size;
    cp.kv_type = kv;
    cp.precision = bench_precision;
    ds_context *c;
    if (ds_context_create(m, &cp, &c, &err) != DS_OK)
        tool_die_err(&err);
    static int checked;
    if (!checked++)
        tool_check_kv_locked(c);
    return c;
}

static double bench_prefill(ds_model *m, const bench_opts *o, float *logits)
{
    const ds_model_info *mi = ds_model_get_info(m);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)o->prompt_len);
    double *t = malloc(sizeof(double) * (size_t)o->repeat);
    uint64_t st = o->seed;
    if (!ids || !t)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int r = 0; r < o->repeat; r++) {
        ds_error err;
        ds_context *c = new_context(m, o->prompt_len, o->kv);
        random_ids(ids, o->prompt_len, mi->vocab_size, &st);
        double t0 = tool_now();
        if (ds_eval(c, ids, o->prompt_len, logits, 0, &err) != DS_OK)
            tool_die_err(&err);
        t[r] = o->prompt_len / (tool_now() - t0);
        ds_context_free(c);
    }
    double v = median(t, o->repeat);
    free(ids);
    free(t);
    return v;
}

/* Brings c to depth o->depth: prefills ids[0, depth) in chunks, or fills
 * the caches synthetically (seeded by seed). */
static void reach_depth(ds_context *c, const bench_opts *o, const int32_t *ids, uint64_t seed)
{
    ds_error err;
    if (o->synthetic) {
        if (ds_context_fill_synthetic(c, o->depth, seed, &err) != DS_OK)
            tool_die_err(&err);
        return;
    }
    const int chunk = 2048;
    for (int s = 0; s < o->depth; s += chunk) {
        int n = o->depth - s < chunk ? o->depth - s : chunk;
        if (ds_eval(c, ids + s, n, NULL, 0, &err) != DS_OK)
            tool_die_err(&err);
    }
}

/* Also adds to *read the expert bytes the timed decode steps read from disk. */
static double bench_decode(ds_model *m, const bench_opts *o, float *logits, uint64_t *read)
{
    const ds_model_info *mi = ds_model_get_info(m);
    int total = o->depth + o->gen;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(total ? total : 1));
    double *t = malloc(sizeof(double) * (size_t)o->repeat);
    uint64_t st = o->seed + 1;
    if (!ids || !t)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int r = 0; r < o->repeat; r++) {
        ds_error err;
        ds_context *c = new_context(m, total, o->kv);
        random_ids(ids, total, mi->vocab_size, &st);
        reach_depth(c, o, ids, o->seed + (uint64_t)r);
        ds_expert_stats es0, es1;
        ds_model_expert_stats(m, &es0);
        double t0 = tool_now();
        for (int k = 0; k < o->gen; k++)
            if (ds_eval(c, ids + o->depth + k, 1, logits, 0, &err) != DS_OK)
                tool_die_err(&err);
        t[r] = o->gen / (tool_now() - t0);
        ds_model_expert_stats(m, &es1);
        *read += es1.bytes_read - es0.bytes_read;
        ds_context_free(c);
    }
    double v = median(t, o->repeat);
    free(ids);
    free(t);
    return v;
}

/* Per-block decode times (--layer-times): one more decode of o->gen tokens
 * with a trace hook that stamps the end of every block; a block's time is
 * the gap since the previous stamp (block 0: since the step began), and
 * the head's is what remains of the step.  Run apart from the timed test
 * so the hook never touches the headline figure. */
typedef struct layer_clock {
    double step_start, last;
    double *sum;               /* [layers + 1] seconds */
} layer_clock;

static void stamp_layer(void *user, ds_trace_kind kind, int layer, int pos, const void *data, int n)
{
    (void)pos, (void)data, (void)n;
    layer_clock *lc = user;
    if (kind != DS_TRACE_LAYER_OUT)
        return;
    double now = tool_now();
    lc->sum[layer] += now - (layer == 0 ? lc->step_start : lc->last);
    lc->last = now;
}

static json_t *bench_layers(ds_model *m, const bench_opts *o, float *logits, double bw)
{
    const ds_model_info *mi = ds_model_get_info(m);
    const int L = mi->num_layers, total = o->depth + o->gen;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)total);
    layer_clock lc = {0, 0, calloc((size_t)L + 1, sizeof(double))};
    uint64_t st = o->seed + 2;
    if (!ids || !lc.sum)
        tool_die(EXIT_RUNTIME, "out of memory");
    ds_error err;
    ds_context *c = new_context(m, total, o->kv);
    random_ids(ids, total, mi->vocab_size, &st);
    reach_depth(c, o, ids, o->seed + 2);
    ds_context_set_trace(c, stamp_layer, &lc);
    for (int k = 0; k < o->gen; k++) {
        lc.step_start = tool_now();
        if (ds_eval(c, ids + o->depth + k, 1, logits, 0, &err) != DS_OK)
            tool_die_err(&err);
        lc.sum[L] += tool_now() - lc.last;
    }
    ds_context_free(c);
    json_t *arr = json_array();
    for (int l = 0; l <= L; l++) {
        json_t *e = json_object();
        const double s = lc.sum[l] / o->gen, bytes = (double)ds_model_layer_bytes(m, l);
        if (l < L)
            json_object_set_new(e, "layer", json_integer(l));
        else
            json_object_set_new(e, "layer", json_string("head"));
        json_object_set_new(e, "ms", json_real(s * 1e3));
        json_object_set_new(e, "bytes", json_integer((json_int_t)bytes));
        json_object_set_new(e, "GBps", json_real(s > 0 ? bytes / s / 1e9 : 0.0));
        if (bw > 0 && bytes > 0)   /* time over the bandwidth-bound time: 1 = at the roofline */
            json_object_set_new(e, "roofline_ratio", json_real(s / (bytes / (bw * 1e9))));
        json_array_append_new(arr, e);
    }
    free(ids);
    free(lc.sum);
    return arr;
}

/* Batched decode: o->batch sequences, each at o->depth, decoded together
 * one token each per ds_eval_batch step, each with its logits as the
 * server's and dsinfer-batch's steps (the head is part of a step's
 * cost); aggregate tokens/s (median).  *experts: the routed experts the
 * timed steps read, all MoE layers, per step (one expert cache access
 * each: a step reads each chosen expert once, whatever its tokens). */
static double bench_batch_decode(ds_model *m, const bench_opts *o, double *experts)
{
    const ds_model_info *mi = ds_model_get_info(m);
    const int B = o->batch, total = o->depth + o->gen;
    ds_context **ctx = calloc((size_t)B, sizeof *ctx);
    ds_batch_item *items = calloc((size_t)B, sizeof *items);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * (size_t)(total ? total : 1));
    double *t = malloc(sizeof(double) * (size_t)o->repeat);
    float *logits = malloc(sizeof(float) * (size_t)B * (size_t)mi->vocab_size);
    uint64_t st = o->seed + 2, accesses = 0;
    if (!ctx || !items || !ids || !t || !logits)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int r = 0; r < o->repeat; r++) {
        ds_error err;
        random_ids(ids, B * total, mi->vocab_size, &st);
        for (int b = 0; b < B; b++) {
            ctx[b] = new_context(m, total, o->kv);
            reach_depth(ctx[b], o, ids + (size_t)b * total, o->seed + (uint64_t)r * 4096 + (uint64_t)b);
        }
        ds_expert_stats es0, es1;
        ds_model_expert_stats(m, &es0);
        double t0 = tool_now();
        for (int k = 0; k < o->gen; k++) {
            for (int b = 0; b < B; b++)
                items[b] = (ds_batch_item){ctx[b], ids + (size_t)b * total + o->depth + k, 1,
                                           logits + (size_t)b * mi->vocab_size, 0};
            if (ds_eval_batch(items, B, &err) != DS_OK)
                tool_die_err(&err);
        }
        t[r] = (double)B * o->gen / (tool_now() - t0);
        ds_model_expert_stats(m, &es1);
        accesses += (es1.hits + es1.misses) - (es0.hits + es0.misses);
        for (int b = 0; b < B; b++)
            ds_context_free(ctx[b]);
    }
    *experts = (double)accesses / ((double)o->repeat * o->gen);
    double v = median(t, o->repeat);
    free(logits);
    free(ctx);
    free(items);
    free(ids);
    free(t);
    return v;
}

/* What a batched step reads, from the experts it used: the dense weights
 * once (the token's active bytes less its routed experts) and each chosen
 * expert once.  B sequences decoded one at a time read B tokens' active
 * bytes, so at equal bandwidth the batch gains B * active / step bytes:
 * batch_gain_bound, the most it can gain where decode is bound by memory
 * bandwidth.  The batch's other embedding rows (a few KiB) are not
 * counted. */
static void add_batch_bytes(json_t *j, const ds_model_info *mi, int B, double btg, double experts, double bw)
{
    const int moe_layers = mi->num_layers - mi->first_dense_layers;
    if (moe_layers <= 0 || mi->n_routed_experts <= 0)
        return;
    const double per_expert = (double)mi->expert_bytes / ((double)moe_layers * mi->n_routed_experts);
    const double dense = (double)mi->active_bytes_per_token - per_expert * mi->experts_per_token * moe_layers;
    const double step = dense + per_expert * experts, gbps = btg / B * step / 1e9;
    json_object_set_new(j, "batch_experts_per_step", json_real(experts));
    json_object_set_new(j, "batch_bytes_per_step", json_integer((json_int_t)(step + 0.5)));
    json_object_set_new(j, "batch_gain_bound", json_real((double)B * (double)mi->active_bytes_per_token / step));
    json_object_set_new(j, "batch_achieved_GBps", json_real(gbps));
    if (bw > 0)
        json_object_set_new(j, "batch_roofline_pct", json_real(100.0 * gbps / bw));
}

/* Sequential read bandwidth of the disk holding the checkpoint: up to mib
 * MiB of its largest .safetensors file read with O_DIRECT in 4 MiB requests,
 * eight at a time (buffered, and so possibly from the page cache, where the filesystem
 * refuses O_DIRECT; *how says which).  The streaming decode is compared
 * with the limit this bandwidth sets.  0 when nothing can be read. */
static double measure_disk(const char *dir, size_t mib, const char **how)
{
    char best[4096] = "", path[4096];
    off_t best_size = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        struct stat st;
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && st.st_size > best_size) {
            best_size = st.st_size;
            snprintf(best, sizeof best, "%s", path);
        }
    }
    if (d)
        closedir(d);
    *how = "O_DIRECT";
    int fd = best[0] ? open(best, O_RDONLY | O_DIRECT) : -1;
    if (fd < 0 && best[0]) {
        *how = "buffered";
        fd = open(best, O_RDONLY);
    }
    if (fd < 0)
        return 0.0;
    /* eight readers in parallel: NVMe needs requests in flight, as the
     * io_uring expert reader keeps them, to reach its bandwidth */
    const size_t req = 4u << 20, want = mib << 20;
    const int nr = 8;
    size_t total = 0;
    double t0 = tool_now();
#pragma omp parallel num_threads(nr) reduction(+ : total)
    {
        void *buf = NULL;
        if (posix_memalign(&buf, 4096, req) == 0) {
            for (size_t off = (size_t)omp_get_thread_num() * req; off < want; off += (size_t)nr * req) {
                ssize_t n = pread(fd, buf, req, (off_t)off);
                if (n <= 0)
                    break;
                total += (size_t)n;
            }
            free(buf);
        }
    }
    double dt = tool_now() - t0;
    close(fd);
    return total && dt > 0 ? (double)total / dt / 1e9 : 0.0;
}

/* Runs the comparison command; returns its JSON lines' last pp_tps / tg_tps. */
static json_t *run_compare(const char *cmd, double pp, double tg)
{
    json_t *res = json_object();
    json_object_set_new(res, "command", json_string(cmd));
    FILE *p = popen(cmd, "r");
    if (!p) {
        json_object_set_new(res, "error", json_string("cannot run the command"));
        return res;
    }
    char line[65536];
    double opp = 0, otg = 0;
    json_t *outputs = json_array();
    while (fgets(line, sizeof line, p)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!json_is_object(j)) {
            json_decref(j);
            continue;
        }
        json_t *v;
        if ((v = json_object_get(j, "pp_tps")) && json_is_number(v) && json_number_value(v) > 0)
            opp = json_number_value(v);
        if ((v = json_object_get(j, "tg_tps")) && json_is_number(v) && json_number_value(v) > 0)
            otg = json_number_value(v);
        json_array_append_new(outputs, j);
    }
    int rc = pclose(p);
    json_object_set_new(res, "exit_status", json_integer(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1));
    json_object_set_new(res, "outputs", outputs);
    if (opp > 0) {
        json_object_set_new(res, "pp_tps", json_real(opp));
        if (pp > 0)
            json_object_set_new(res, "prefill_ratio", json_real(pp / opp));
    }
    if (otg > 0) {
        json_object_set_new(res, "tg_tps", json_real(otg));
        if (tg > 0)
            json_object_set_new(res, "decode_ratio", json_real(tg / otg));
    }
    return res;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *compare = NULL;
    bench_opts o = {.prompt_len = 512, .gen = 128, .repeat = 1, .kv = DS_KV_FP8, .seed = 1};
    int threads = 0;
    int64_t mem_budget = 0;
    ds_io_mode io_mode = DS_IO_MODE_AUTO;
    int numa = DS_NUMA_ON;
    long membw_mb = 1024;
    enum { O_KV = 256, O_MEMBW, O_COMPARE, O_BUDGET, O_IO, O_NUMA, O_LAYERS, O_PREC, O_FILL };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt-len", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'n'}, {"depth", required_argument, 0, 'd'},
        {"depth-fill", required_argument, 0, O_FILL},
        {"repeat", required_argument, 0, 'r'}, {"batch", required_argument, 0, 'b'}, {"threads", required_argument, 0, 't'},
        {"kv-cache", required_argument, 0, O_KV}, {"precision", required_argument, 0, O_PREC}, {"membw-mb", required_argument, 0, O_MEMBW},
        {"compare", required_argument, 0, O_COMPARE}, {"seed", required_argument, 0, 's'},
        {"mem-budget", required_argument, 0, O_BUDGET}, {"io", required_argument, 0, O_IO},
        {"numa", required_argument, 0, O_NUMA}, {"layer-times", no_argument, 0, O_LAYERS},
        {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:d:r:b:t:s:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': o.prompt_len = (int)tool_parse_long("--prompt-len", optarg, 0, 1 << 22); break;
        case 'n': o.gen = (int)tool_parse_long("--gen", optarg, 0, 1 << 22); break;
        case 'd': o.depth = (int)tool_parse_long("--depth", optarg, 0, 1 << 22); break;
        case O_FILL:
            if (strcmp(optarg, "synthetic") == 0)
                o.synthetic = 1;
            else if (strcmp(optarg, "prefill") == 0)
                o.synthetic = 0;
            else
                tool_die(EXIT_USAGE, "--depth-fill: '%s' is neither prefill nor synthetic", optarg);
            break;
        case 'b': o.batch = (int)tool_parse_long("--batch", optarg, 0, 4096); break;
        case 'r': o.repeat = (int)tool_parse_long("--repeat", optarg, 1, 1000); break;
        case 't': threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case O_KV: o.kv = tool_parse_kv("--kv-cache", optarg); break;
        case O_PREC: bench_precision = tool_parse_precision("--precision", optarg); break;
        case O_MEMBW: membw_mb = tool_parse_long("--membw-mb", optarg, 0, 1 << 20); break;
        case O_COMPARE: compare = optarg; break;
        case 's': o.seed = tool_parse_u64("--seed", optarg); break;
        case O_BUDGET: mem_budget = tool_parse_budget("--mem-budget", optarg); break;
        case O_IO: io_mode = tool_parse_io("--io", optarg); break;
        case O_NUMA: numa = tool_parse_numa("--numa", optarg); break;
        case O_LAYERS: o.layer_times = 1; break;
        case 'q': tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': tool_print_version();
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!model_dir)
        tool_die(EXIT_USAGE, "--model is required (see --help)");
    if (threads > 0)
        omp_set_num_threads(threads);

    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.threads = threads;
    lp.expert_budget = mem_budget;
    lp.io = io_mode;
    lp.numa = numa;
    double t0 = tool_now();
    ds_model *m = tool_load_model(model_dir, &lp);
    tool_info_precision(bench_precision);
    double load_s = tool_now() - t0;
    const ds_model_info *mi = ds_model_get_info(m);
    float *logits = malloc(sizeof(float) * (size_t)mi->vocab_size);
    if (!logits)
        tool_die(EXIT_RUNTIME, "out of memory");
    double pp = o.prompt_len ? bench_prefill(m, &o, logits) : 0.0;
    uint64_t decode_read = 0;
    double tg = o.gen ? bench_decode(m, &o, logits, &decode_read) : 0.0;
    ds_expert_stats es1;
    ds_model_expert_stats(m, &es1);
    const char *disk_how = NULL;
    double disk = es1.streaming && o.gen ? measure_disk(model_dir, 1024, &disk_how) : 0.0;
    double batch_experts = 0.0;
    double btg = o.gen && o.batch > 0 ? bench_batch_decode(m, &o, &batch_experts) : 0.0;
    double bw = membw_mb ? measure_membw((size_t)membw_mb) : 0.0;
    json_t *layers = o.layer_times && o.gen ? bench_layers(m, &o, logits, bw) : NULL;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);

    json_t *j = json_object();
    json_object_set_new(j, "tool", json_string("dsinfer-bench"));
    json_object_set_new(j, "version", json_string(ds_version()));
    json_object_set_new(j, "model", json_string(model_dir));
    json_object_set_new(j, "model_type", json_string(mi->model_type));
    json_object_set_new(j, "cpu_isa", json_string(ds_kernel_isa()));
    json_object_set_new(j, "threads", json_integer(omp_get_max_threads()));
    json_object_set_new(j, "kv_cache", json_string(o.kv == DS_KV_F32 ? "f32" : o.kv == DS_KV_FP8 ? "fp8" : "fp8-compact"));
    json_object_set_new(j, "precision", json_string(ds_precision_name(bench_precision)));
    json_object_set_new(j, "bf16_native", json_boolean(bench_precision == DS_PRECISION_BF16 && ds_precision_bf16_native()));
    json_object_set_new(j, "kv_bytes_per_token_layer", json_integer((json_int_t)ds_kv_bytes_per_position_layer(m, o.kv)));
    json_object_set_new(j, "weight_bytes", json_integer(mi->weight_bytes));
    json_object_set_new(j, "load_s", json_real(load_s));
    json_object_set_new(j, "prompt_len", json_integer(o.prompt_len));
    json_object_set_new(j, "prefill_tps", json_real(pp));
    json_object_set_new(j, "depth", json_integer(o.depth));
    json_object_set_new(j, "depth_fill", json_string(o.synthetic ? "synthetic" : "prefill"));
    json_object_set_new(j, "gen", json_integer(o.gen));
    json_object_set_new(j, "decode_tps", json_real(tg));
    if (o.batch > 0) {
        json_object_set_new(j, "batch", json_integer(o.batch));
        json_object_set_new(j, "batch_decode_tps", json_real(btg));
        if (tg > 0)
            json_object_set_new(j, "batch_gain", json_real(btg / tg));
        if (btg > 0)
            add_batch_bytes(j, mi, o.batch, btg, batch_experts, bw);
    }
    json_object_set_new(j, "repeat", json_integer(o.repeat));
    json_object_set_new(j, "peak_rss_mib", json_real(ru.ru_maxrss / 1024.0));
    json_object_set_new(j, "active_bytes_per_token", json_integer(mi->active_bytes_per_token));
    double gbps = tg * (double)mi->active_bytes_per_token / 1e9;
    json_object_set_new(j, "achieved_GBps", json_real(gbps));
    json_object_set_new(j, "membw_GBps", json_real(bw));
    if (bw > 0) {
        json_object_set_new(j, "roofline_decode_tps", json_real(bw * 1e9 / (double)mi->active_bytes_per_token));
        json_object_set_new(j, "roofline_pct", json_real(100.0 * gbps / bw));
    }
    ds_expert_stats es;
    ds_model_expert_stats(m, &es);
    json_t *ej = json_object();
    json_object_set_new(ej, "streaming", json_boolean(es.streaming));
    json_object_set_new(ej, "io", json_string(es.io_backend ? es.io_backend : "mmap"));
    json_object_set_new(ej, "slots", json_integer(es.slots));
    json_object_set_new(ej, "slab_bytes", json_integer(es.slab_bytes));
    json_object_set_new(ej, "hits", json_integer((json_int_t)es.hits));
    json_object_set_new(ej, "misses", json_integer((json_int_t)es.misses));
    json_object_set_new(ej, "hit_rate", json_real(es.hits + es.misses ? (double)es.hits / (double)(es.hits + es.misses) : 1.0));
    json_object_set_new(ej, "bytes_read", json_integer((json_int_t)es.bytes_read));
    json_object_set_new(ej, "stall_s", json_real(es.stall_seconds));
    json_object_set_new(ej, "prefetched", json_integer((json_int_t)es.prefetched));
    json_object_set_new(ej, "prefetch_used", json_integer((json_int_t)es.prefetch_used));
    json_object_set_new(ej, "io_requests", json_integer((json_int_t)es.io_requests));
    json_object_set_new(ej, "dense_copied_bytes", json_integer(mi->dense_copy_bytes));
    json_object_set_new(ej, "prediction_accuracy",
                        json_real(es.predicted ? (double)es.predicted_right / (double)es.predicted : 0.0));
    if (es1.streaming && o.gen) {
        /* what the decode test read from disk per token, against the disk's limit */
        double per_tok = (double)decode_read / ((double)o.gen * o.repeat);
        json_object_set_new(ej, "decode_bytes_read_per_token", json_real(per_tok));
        json_object_set_new(ej, "disk_GBps", json_real(disk));
        json_object_set_new(ej, "disk_probe", json_string(disk_how ? disk_how : "none"));
        if (disk > 0 && per_tok > 0) {
            json_object_set_new(ej, "disk_bound_tps", json_real(disk * 1e9 / per_tok));
            json_object_set_new(ej, "disk_bound_pct", json_real(100.0 * tg * per_tok / (disk * 1e9)));
        }
    }
    json_object_set_new(j, "expert_cache", ej);
    if (layers)
        json_object_set_new(j, "layers", layers);
    json_t *nj = json_object();
    json_object_set_new(nj, "nodes", json_integer(mi->numa_nodes));
    json_object_set_new(nj, "dense_copies", json_integer(mi->numa_replicas));
    json_object_set_new(nj, "copy_bytes", json_integer(mi->replica_bytes));
    json_object_set_new(nj, "expert_bytes_bound", json_integer(es.numa_bound_bytes));
    json_object_set_new(j, "numa", nj);
    if (compare)
        json_object_set_new(j, "compare", run_compare(compare, pp, tg));
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    if (!s)
        tool_die(EXIT_RUNTIME, "out of memory");
    puts(s);
    free(s);
    json_decref(j);
    free(logits);
    ds_model_free(m);
    return EXIT_OK;
}
