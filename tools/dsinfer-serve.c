/* dsinfer-serve — an OpenAI-compatible HTTP server for DeepSeek checkpoints
 * on CPUs.  This file owns the command line, loading the model, tokenizer
 * and engine, the engine thread (the only caller of ds_engine_step, asleep
 * on a condition variable while idle), the shared counters, and the
 * lifecycle: SIGTERM / SIGINT stop accepting connections, let in-flight
 * requests finish, and exit 0.  HTTP lives in serve_http.c, request
 * parsing in serve_api.c, per-request generation state in serve_job.c. */
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
#include "serve.h"

const char *tool_name = "dsinfer-serve";

#ifndef DS_BUILDDIR
#define DS_BUILDDIR "."
#endif
#ifndef DS_SRCDIR
#define DS_SRCDIR "."
#endif

#define DRAIN_SECONDS 30      /* in-flight requests get this long after SIGTERM */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer-serve [--model DIR] [options]\n"
        "\n"
        "Serves a DeepSeek checkpoint over HTTP with an OpenAI-compatible API:\n"
        "POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n"
        "GET /health and GET /metrics (Prometheus).  Requests run together in\n"
        "one continuous-batching engine.  SIGTERM or SIGINT stop accepting\n"
        "connections, finish the requests in flight and exit.\n"
        "Without --model it uses $DSINFER_MODEL, else the embedded default model.\n"
        "\n"
        "  -m, --model DIR            checkpoint directory (HF layout)\n"
        "      --host ADDR            address to listen on (default 127.0.0.1)\n"
        "      --port N               TCP port (default 8080; 0 = any free port)\n"
        "      --parallel N           sequences generated at once (default 4)\n"
        "  -c, --ctx-size N           KV positions per sequence (default 4096,\n"
        "                             capped by the model)\n"
        "      --api-key KEY          require Authorization: Bearer KEY (all\n"
        "                             endpoints but /health)\n"
        "  -t, --threads N            worker threads (default: all cores)\n"
        "      --kv-cache TYPE        fp8 (default), fp8-compact (bf16 rope key) or f32\n"
        TOOL_PRECISION_HELP("          ", "bf16")
        "      --thinking-default on|off\n"
        "                             thinking mode for chat requests that do not\n"
        "                             choose (default off)\n"
        "      --max-queue N          requests that may wait for a free sequence\n"
        "                             before new ones get 503 (default 64)\n"
        "      --max-body BYTES       largest request body (default 8388608)\n"
        "      --model-name NAME      model id in responses and /v1/models\n"
        "                             (default: the directory's name)\n"
        "      --mem-budget SIZE      RAM for routed experts (e.g. 12G); less than the experts\n"
        "                             streams them from disk (default auto: all resident when the\n"
        "                             model fits in memory, else stream in what fits; all: resident)\n"
        "      --io MODE              how streamed experts are read: uring, pread or auto\n"
        TOOL_HELP_NUMA
        "  -q, --quiet                do not log requests\n"
        "  -v, --verbose              describe the model, kernels and expert cache on stderr\n"
        "  -h, --help                 show this help\n"
        "  -V, --version              show the version\n"
        "\n"
        "Exit status: 0 ok (also after SIGTERM), 1 usage, 2 bad model, 3 I/O error\n"
        "(cannot listen), 4 runtime error.\n");
}

double serve_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- shared server state ------------------------------------------------------ */

void server_kick(server *s)
{
    pthread_mutex_lock(&s->mu);
    s->kick = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

void server_count_request(server *s, endpoint ep, int status)
{
    pthread_mutex_lock(&s->mu);
    int k = 0;
    while (k < s->n_status && s->req_status[k] != status)
        k++;
    if (k == s->n_status && k < SERVE_MAX_STATUS_KINDS)
        s->req_status[s->n_status++] = status;
    if (k < SERVE_MAX_STATUS_KINDS)
        s->req_count[ep][k]++;
    pthread_mutex_unlock(&s->mu);
}

/* Generated tokens per second, measured over windows of at least a second. */
static void update_rate(server *s)
{
    ds_engine_stats st;
    ds_engine_get_stats(s->engine, &st);
    double t = serve_now();
    pthread_mutex_lock(&s->mu);
    if (t - s->win_t0 >= 1.0) {
        s->tps = (double)(st.generated_tokens - s->win_gen0) / (t - s->win_t0);
        s->win_t0 = t;
        s->win_gen0 = st.generated_tokens;
    }
    pthread_mutex_unlock(&s->mu);
}

/* The engine thread: steps while anything is queued or running, then sleeps
 * until a submit (or cancel) kicks it. */
static void *engine_main(void *arg)
{
    server *s = arg;
    /* omp_set_num_threads is per thread: the loader set it on main only */
    if (s->cfg.threads > 0)
        omp_set_num_threads(s->cfg.threads);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->kick && !s->quit)
            pthread_cond_wait(&s->wake, &s->mu);
        int stop = s->quit && !s->kick;
        s->kick = 0;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        for (;;) {
            ds_error err;
            jobs_cancel_gone(s);
            int left = ds_engine_step(s->engine, &err);
            update_rate(s);
            if (left < 0 && !s->cfg.quiet)
                fprintf(stderr, "%s: engine step failed: %s\n", tool_name, err.msg);
            if (left == 0)
                break;
        }
    }
    return NULL;
}

/* ---- loading -------------------------------------------------------------------- */

/* The directory's last component ("models/tiny/" -> "tiny"). */
static char *dir_name(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    char *name = strndup(dir + b, n - b);
    if (!name)
        tool_die(EXIT_RUNTIME, "out of memory");
    return name;
}

/* TESTING ONLY.  A random-weight test model never writes a tool call, and
 * no request parameter can make a model emit a chosen token sequence
 * (logit_bias is the same at every position), so the tool-call path of the
 * server (detokenizer, chat parser, tool_calls deltas and message) could
 * not be exercised end to end over HTTP.  With DSINFER_TEST_FORCED_COMPLETION
 * naming a file, the tokens of its text replace the sampled tokens of every
 * chat completion, one for one, after the engine: the model still runs and
 * everything downstream is the ordinary code.  The completion ends after
 * the file's last token (or at max_tokens). */
static void load_forced(server *s)
{
    const char *path = getenv("DSINFER_TEST_FORCED_COMPLETION");
    size_t len;
    ds_error err;
    if (!path || !*path)
        return;
    char *text = tool_read_file(path, &len);
    if (!text)
        tool_die(EXIT_IO, "DSINFER_TEST_FORCED_COMPLETION: cannot read %s: %s", path, strerror(errno));
    if (ds_tokenizer_encode(s->tok, text, len, 1, &s->forced, &s->n_forced, &err) != DS_OK)
        tool_die(EXIT_INPUT, "DSINFER_TEST_FORCED_COMPLETION: %s: %s", path, err.msg);
    free(text);
    if (s->n_forced == 0)
        tool_die(EXIT_INPUT, "DSINFER_TEST_FORCED_COMPLETION: %s is empty", path);
    fprintf(stderr, "%s: TESTING ONLY: every chat completion is replaced by the %d tokens of %s "
            "(DSINFER_TEST_FORCED_COMPLETION)\n", tool_name, s->n_forced, path);
}

static void load(server *s)
{
    ds_error err;
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.threads = s->cfg.threads;
    lp.expert_budget = s->cfg.mem_budget;
    lp.io = s->cfg.io;
    lp.numa = s->cfg.numa;
    s->tok = tool_load_tokenizer(s->cfg.model_dir, &err);
    if (!s->tok || ds_json_vocab_create(s->tok, &s->json_vocab, &err) != DS_OK)
        tool_die_err(&err);
    s->model = tool_load_model(s->cfg.model_dir, &lp);
    s->info = ds_model_get_info(s->model);
    load_forced(s);
    s->chat_fmt = ds_chat_format_for_model(s->info->model_type);
    int32_t eos = ds_tokenizer_eos_id(s->tok);
    s->extra_eos = eos >= 0 && eos != s->info->eos_token_id && eos < s->info->vocab_size ? eos : -1;
    ds_engine_params ep;
    ds_engine_params_init(&ep);
    ep.max_seqs = s->cfg.parallel;
    ep.ctx_size = s->cfg.ctx_size;
    ep.kv_type = s->cfg.kv;
    ep.precision = s->cfg.precision;
    tool_info_precision(ep.precision);
    if (ds_engine_create(s->model, &ep, &s->engine, &err) != DS_OK)
        tool_die_err(&err);
    ds_engine_stats st;
    ds_engine_get_stats(s->engine, &st);
    s->ctx_size = st.kv_capacity / (st.slots ? st.slots : 1);
}

/* ---- command line ----------------------------------------------------------------- */

static void parse_args(int argc, char **argv, serve_config *cfg)
{
    enum { O_HOST = 256, O_PORT, O_PARALLEL, O_KEY, O_KV, O_THINK, O_QUEUE, O_BODY, O_NAME, O_BUDGET, O_IO, O_NUMA, O_PREC };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT}, {"parallel", required_argument, 0, O_PARALLEL},
        {"ctx-size", required_argument, 0, 'c'}, {"api-key", required_argument, 0, O_KEY},
        {"threads", required_argument, 0, 't'}, {"kv-cache", required_argument, 0, O_KV},
        {"precision", required_argument, 0, O_PREC},
        {"thinking-default", required_argument, 0, O_THINK}, {"max-queue", required_argument, 0, O_QUEUE},
        {"max-body", required_argument, 0, O_BODY}, {"model-name", required_argument, 0, O_NAME},
        {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'}, {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
        {"mem-budget", required_argument, 0, O_BUDGET}, {"io", required_argument, 0, O_IO},
        {"numa", required_argument, 0, O_NUMA},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:c:t:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': cfg->model_dir = optarg; break;
        case O_HOST: cfg->host = optarg; break;
        case O_PORT: cfg->port = (int)tool_parse_long("--port", optarg, 0, 65535); break;
        case O_PARALLEL: cfg->parallel = (int)tool_parse_long("--parallel", optarg, 1, 256); break;
        case 'c': cfg->ctx_size = (int)tool_parse_long("--ctx-size", optarg, 2, 1 << 24); break;
        case O_KEY:
            if (!*optarg)
                tool_die(EXIT_USAGE, "invalid value for --api-key: the key is empty");
            cfg->api_key = optarg;
            break;
        case 't': cfg->threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case O_KV: cfg->kv = tool_parse_kv("--kv-cache", optarg); break;
        case O_PREC: cfg->precision = tool_parse_precision("--precision", optarg); break;
        case O_THINK:
            if (strcmp(optarg, "on") == 0 || strcmp(optarg, "off") == 0)
                cfg->thinking_default = strcmp(optarg, "on") == 0;
            else
                tool_die(EXIT_USAGE, "invalid value for --thinking-default: '%s' (expected on or off)", optarg);
            break;
        case O_QUEUE: cfg->max_queue = (int)tool_parse_long("--max-queue", optarg, 0, 1 << 20); break;
        case O_BODY: cfg->max_body = (size_t)tool_parse_long("--max-body", optarg, 1024, 1L << 30); break;
        case O_NAME:
            if (!*optarg)
                tool_die(EXIT_USAGE, "invalid value for --model-name: the name is empty");
            cfg->model_name = optarg;
            break;
        case O_BUDGET: cfg->mem_budget = tool_parse_budget("--mem-budget", optarg); break;
        case O_IO: cfg->io = tool_parse_io("--io", optarg); break;
        case O_NUMA: cfg->numa = tool_parse_numa("--numa", optarg); break;
        case 'q': cfg->quiet = 1, tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); exit(EXIT_OK);
        case 'V': tool_print_version();
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static int in_flight(server *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Waits up to seconds for in-flight requests to end; a second signal cuts
 * the wait short.  Returns the requests still in flight. */
static int wait_drained(server *s, const sigset_t *sigs, double seconds)
{
    double end = serve_now() + seconds;
    struct timespec tick = {0, 20 * 1000 * 1000};
    while (in_flight(s) > 0 && serve_now() < end)
        if (sigtimedwait(sigs, NULL, &tick) > 0)
            break;
    return in_flight(s);
}

static void drain_and_stop(server *s, const sigset_t *sigs)
{
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
    http_quiesce(s);
    if (!s->cfg.quiet)
        fprintf(stderr, "%s: stopping: finishing %d request(s) in flight\n", tool_name, in_flight(s));
    if (wait_drained(s, sigs, DRAIN_SECONDS) > 0) {
        jobs_cancel_all(s);
        wait_drained(s, sigs, 5);
    }
    /* stopping the daemon with a suspended connection is not allowed: when a
     * request is stuck, leave the daemon to process exit */
    if (in_flight(s) == 0)
        http_stop(s);
    pthread_mutex_lock(&s->mu);
    s->quit = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->engine_thread, NULL);
}

int main(int argc, char **argv)
{
    static server srv;
    server *s = &srv;
    serve_config *cfg = &s->cfg;
    cfg->host = "127.0.0.1";
    cfg->port = 8080;
    cfg->parallel = 4;
    cfg->ctx_size = 4096;
    cfg->max_queue = 64;
    cfg->max_body = 8u << 20;
    cfg->kv = DS_KV_FP8;
    cfg->numa = DS_NUMA_ON;
    cfg->precision = DS_PRECISION_BF16;
    parse_args(argc, argv, cfg);
    if (!cfg->model_dir)
        cfg->model_dir = tool_default_model();
    char *name = cfg->model_name ? NULL : dir_name(cfg->model_dir);
    if (name)
        cfg->model_name = name;

    /* Signals go to sigwait in main only: block them before any thread starts
     * (threads inherit the mask).  Writes to closed sockets must not kill us. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    json_object_seed(0);           /* jansson's hash seed, before threads use it */

    load(s);
    s->started = time(NULL);
    s->win_t0 = serve_now();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    if (pthread_create(&s->engine_thread, NULL, engine_main, s) != 0)
        tool_die(EXIT_RUNTIME, "cannot start the engine thread: %s", strerror(errno));
    char msg[256];
    if (http_start(s, msg, sizeof msg) < 0)
        tool_die(EXIT_IO, "%s", msg);
    if (!cfg->quiet)
        fprintf(stderr, "%s: listening on http://%s%s%s:%d/ (model %s, %d sequences x %d positions, chat format %s)\n",
                tool_name, strchr(cfg->host, ':') ? "[" : "", cfg->host, strchr(cfg->host, ':') ? "]" : "",
                http_port(s), cfg->model_name,
                cfg->parallel, s->ctx_size, ds_chat_format_name(s->chat_fmt));

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    drain_and_stop(s, &sigs);
    /* Stopping is decided: a late signal (still pending, or racing the exit)
     * must not turn the clean exit into death by signal. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (!cfg->quiet)
        fprintf(stderr, "%s: stopped (%s)\n", tool_name, sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (!s->daemon) {
        ds_engine_free(s->engine);
        ds_model_free(s->model);
        ds_tokenizer_free(s->tok);
        free(s->forced);
        ds_json_vocab_free(s->json_vocab);
    }
    free(name);
    return EXIT_OK;
}
