/* dsinfer-batch — offline batch generation over a JSONL file of requests
 * (OpenAI Batch API lines or plain prompt / messages lines), many at once
 * through the continuous-batching engine, with a crash-safe, resumable
 * output.  This file owns the command line, the model / tokenizer / engine
 * set-up, the selection of lines (shard, already done, duplicates), the
 * stepping loop that turns finished generations into records, and signals.
 * Line parsing is in batch_input.c, records in batch_record.c, the output
 * file in batch_output.c, progress in batch_progress.c. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "batch_input.h"
#include "batch_output.h"
#include "batch_progress.h"
#include "batch_record.h"
#include "batch_util.h"
#include "common.h"
#include "outfiles.h"

const char *tool_name = "dsinfer-batch";

#ifndef DS_SRCDIR
#define DS_SRCDIR "."
#endif

#define EXIT_INTERRUPTED 130

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer-batch --model DIR --input FILE --output FILE [options]\n"
        "\n"
        "Runs every request of a JSONL file (OpenAI Batch API lines for /v1/chat/completions\n"
        "and /v1/completions, or plain {\"id\", \"prompt\"} / {\"id\", \"messages\"} lines) through\n"
        "the model, several at once, and appends one JSON record per line to the output in\n"
        "completion order.  Re-running with the same arguments resumes: lines whose id\n"
        "already has a complete record are skipped.\n"
        "\n"
        "  -m, --model DIR        checkpoint directory (HF layout)\n"
        "  -i, --input FILE       requests, one JSON object a line ('-' = standard input)\n"
        "  -o, --output FILE      results, appended (JSONL)\n"
        "  -j, --parallel N       sequences generated at once (default 4)\n"
        "  -c, --ctx-size N       KV positions per sequence (default 4096, capped by the model)\n"
        "  -n, --max-tokens N     tokens to generate when a line gives no max_tokens (default 1024)\n"
        "      --temperature T    default temperature, 0 = greedy (default 0)\n"
        "      --top-p P          default nucleus threshold in (0, 1] (default 1)\n"
        "      --top-k K          default top-k, 0 = off (default 0)\n"
        "  -s, --seed N           base sampling seed, mixed with each line's id (default 24301)\n"
        "      --template FILE    prompt template for plain prompt lines: {{text}} is\n"
        "                         replaced by the line's text, {{id}} by its id\n"
        "      --json-schema FILE constrain every answer to JSON matching the JSON Schema in\n"
        "                         FILE (compact JSON; see the man page for the keywords)\n"
        "      --thinking         thinking mode by default (reasoning_content in results)\n"
        "      --no-thinking      chat mode by default (the default)\n"
        "      --shard I/N        process only the lines whose id hashes to I modulo N\n"
        "      --progress MODE    auto (default), tty, json or none\n"
        "  -t, --threads N        worker threads (default: all cores)\n"
        "      --mem-budget SIZE  RAM for routed experts (e.g. 12G); less than the experts\n"
        "                         streams them from disk (default auto: all resident when the\n"
        "                         model fits in memory, else stream in what fits; all: resident)\n"
        "      --io MODE          how streamed experts are read: uring, pread or auto\n"
        TOOL_HELP_NUMA
        "      --kv-cache TYPE    fp8 (default), fp8-compact (bf16 rope key) or f32\n"
        TOOL_PRECISION_HELP("      ", "f32 (resumed runs reproduce uninterrupted ones)")
        "  -q, --quiet            no progress and no summary\n"
        "  -v, --verbose          more detail on stderr (model, each error record, resume details)\n"
        "  -h, --help             show this help\n"
        "  -V, --version          show the version\n"
        "\n"
        "SIGINT / SIGTERM: finish the requests in flight, write them and exit 0;\n"
        "a second signal abandons them and exits 130.\n"
        "Exit status: 0 ok (error records included), 1 usage, 2 bad model or schema, 3 I/O error,\n"
        "4 runtime error, 130 aborted by a second signal.\n");
}

/* ---- options ----------------------------------------------------------- */
typedef struct options {
    const char *model_dir, *input, *output, *template_path, *schema_path;
    int parallel, ctx_size, threads, verbose, quiet;
    int64_t mem_budget;
    ds_io_mode io;
    int numa;
    long shard_i, shard_n;
    batch_progress_mode progress;
    ds_kv_type kv;
    ds_precision precision;
    batch_defaults defaults;
} options;

static void parse_shard(const char *s, options *o)
{
    char *end;
    errno = 0;
    long i = strtol(s, &end, 10);
    if (errno || end == s || *end != '/')
        tool_die(EXIT_USAGE, "invalid value for --shard: '%s' (expected I/N)", s);
    const char *ns = end + 1;
    long n = strtol(ns, &end, 10);
    if (errno || end == ns || *end || n < 1 || i < 0 || i >= n)
        tool_die(EXIT_USAGE, "invalid value for --shard: '%s' (expected I/N with 0 <= I < N)", s);
    o->shard_i = i;
    o->shard_n = n;
}

static batch_progress_mode parse_progress(const char *s)
{
    if (strcmp(s, "auto") == 0)
        return isatty(STDERR_FILENO) ? BATCH_PROGRESS_TTY : BATCH_PROGRESS_NONE;
    if (strcmp(s, "tty") == 0)
        return BATCH_PROGRESS_TTY;
    if (strcmp(s, "json") == 0)
        return BATCH_PROGRESS_JSON;
    if (strcmp(s, "none") == 0)
        return BATCH_PROGRESS_NONE;
    tool_die(EXIT_USAGE, "invalid value for --progress: '%s' (expected auto, tty, json or none)", s);
}

static void parse_options(int argc, char **argv, options *o)
{
    enum { O_TEMP = 256, O_TOPP, O_TOPK, O_TEMPLATE, O_THINK, O_NOTHINK, O_SHARD, O_PROGRESS, O_KV, O_BUDGET, O_IO, O_SCHEMA, O_NUMA, O_PREC };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"input", required_argument, 0, 'i'},
        {"output", required_argument, 0, 'o'}, {"parallel", required_argument, 0, 'j'},
        {"ctx-size", required_argument, 0, 'c'}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, O_TEMP}, {"top-p", required_argument, 0, O_TOPP},
        {"top-k", required_argument, 0, O_TOPK}, {"seed", required_argument, 0, 's'},
        {"template", required_argument, 0, O_TEMPLATE}, {"thinking", no_argument, 0, O_THINK},
        {"no-thinking", no_argument, 0, O_NOTHINK}, {"shard", required_argument, 0, O_SHARD},
        {"progress", required_argument, 0, O_PROGRESS}, {"threads", required_argument, 0, 't'},
        {"kv-cache", required_argument, 0, O_KV}, {"precision", required_argument, 0, O_PREC}, {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'}, {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
        {"mem-budget", required_argument, 0, O_BUDGET}, {"io", required_argument, 0, O_IO},
        {"numa", required_argument, 0, O_NUMA},
        {"json-schema", required_argument, 0, O_SCHEMA},
        {0, 0, 0, 0}};
    int c;
    *o = (options){.parallel = 4, .shard_n = 1, .kv = DS_KV_FP8, .numa = DS_NUMA_ON, .precision = DS_PRECISION_F32};
    o->progress = parse_progress("auto");
    ds_sampler_params_init(&o->defaults.sampling);
    o->defaults.sampling.seed = 24301;
    o->defaults.max_tokens = 1024;
    while ((c = getopt_long(argc, argv, "m:i:o:j:c:n:s:t:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case 'j': o->parallel = (int)tool_parse_long("--parallel", optarg, 1, 4096); break;
        case 'c': o->ctx_size = (int)tool_parse_long("--ctx-size", optarg, 2, 1 << 24); break;
        case 'n': o->defaults.max_tokens = (int)tool_parse_long("--max-tokens", optarg, 1, 1 << 24); break;
        case O_TEMP: o->defaults.sampling.temperature = (float)tool_parse_double("--temperature", optarg, 0, 100); break;
        case O_TOPP: o->defaults.sampling.top_p = (float)tool_parse_double("--top-p", optarg, 1e-6, 1); break;
        case O_TOPK: o->defaults.sampling.top_k = (int)tool_parse_long("--top-k", optarg, 0, 1 << 24); break;
        case 's': o->defaults.sampling.seed = tool_parse_u64("--seed", optarg); break;
        case O_TEMPLATE: o->template_path = optarg; break;
        case O_SCHEMA: o->schema_path = optarg; break;
        case O_THINK: o->defaults.thinking = 1; break;
        case O_NOTHINK: o->defaults.thinking = 0; break;
        case O_SHARD: parse_shard(optarg, o); break;
        case O_PROGRESS: o->progress = parse_progress(optarg); break;
        case 't': o->threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case O_BUDGET: o->mem_budget = tool_parse_budget("--mem-budget", optarg); break;
        case O_IO: o->io = tool_parse_io("--io", optarg); break;
        case O_NUMA: o->numa = tool_parse_numa("--numa", optarg); break;
        case O_KV: o->kv = tool_parse_kv("--kv-cache", optarg); break;
        case O_PREC: o->precision = tool_parse_precision("--precision", optarg); break;
        case 'q': o->quiet = 1, tool_verbosity = -1; break;
        case 'v': o->verbose = 1, tool_verbosity = 1; break;
        case 'h': usage(stdout); exit(EXIT_OK);
        case 'V': tool_print_version();
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->model_dir || !o->input || !o->output)
        tool_die(EXIT_USAGE, "--model, --input and --output are required (see --help)");
    if (o->schema_path && o->defaults.thinking)
        tool_die(EXIT_USAGE, "--json-schema constrains the whole answer: it cannot be combined with --thinking");
}

/* The template file, less one trailing newline (editors add it; it is not
 * meant to end every prompt). */
static char *load_template(const char *path)
{
    size_t len;
    char *t = tool_read_file(path, &len);
    if (!t)
        tool_die(EXIT_IO, "cannot read %s: %s", path, strerror(errno));
    if (strlen(t) != len || !batch_utf8_valid(t, len))
        tool_die(EXIT_USAGE, "--template %s: not UTF-8 text", path);
    if (len > 0 && t[len - 1] == '\n')
        t[--len] = 0;
    if (!strstr(t, "{{text}}"))
        tool_die(EXIT_USAGE, "--template %s: no {{text}} placeholder", path);
    return t;
}

/* The --json-schema file, compiled; its JSON goes to *json (for prompts).
 * A schema that does not compile is a bad input (exit 2). */
static ds_json_schema *load_schema(const char *path, json_t **json)
{
    size_t len;
    ds_error err;
    ds_json_schema *s;
    char *text = tool_read_file(path, &len);
    if (!text)
        tool_die(EXIT_IO, "cannot read %s: %s", path, strerror(errno));
    if (ds_json_schema_compile(text, len, &s, &err) != DS_OK)
        tool_die(err.code == DS_ERR_NOMEM ? EXIT_RUNTIME : EXIT_INPUT, "--json-schema %s: %s", path, err.msg);
    *json = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    free(text);
    return s;
}

/* Appending to the file being read would feed results back as requests. */
/* The output is none of the files the run reads (nor the checkpoint's). */
static void check_distinct_files(const options *o)
{
    const char *const outs[1] = {o->output}, *const opts[1] = {"--output"};
    const char *const ins[3] = {strcmp(o->input, "-") ? o->input : NULL, o->template_path, o->schema_path};
    tool_check_outputs(outs, opts, 1, ins, 3, o->model_dir);
}

/* ---- model ------------------------------------------------------------- */
/* The name echoed in OpenAI bodies when a line names no model: the
 * checkpoint directory's last component. */
static char *model_name_of(const char *dir)
{
    char *name = batch_xstrdup(dir);
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        name[--n] = 0;
    char *slash = strrchr(name, '/');
    if (slash && slash[1]) {
        char *base = batch_xstrdup(slash + 1);
        free(name);
        return base;
    }
    return name;
}

/* ---- the run ----------------------------------------------------------- */
/* A line selected for this run: where it is, and whether it repeats an
 * earlier id (then it only gets a duplicate_id record). */
typedef struct todo_line {
    size_t off, len;
    long lineno;
    int duplicate;
} todo_line;

typedef struct job job;

typedef struct batch_run {
    const options *opt;
    char *template_text;
    ds_model *model;
    ds_tokenizer *tok;
    ds_engine *engine;
    ds_chat_format fmt;
    ds_json_schema *schema;  /* --json-schema, compiled; NULL = none */
    json_t *schema_json;
    ds_json_vocab *json_vocab;   /* built when some line is constrained */
    int ctx_size;            /* per sequence, as the engine sized it */
    char *model_name;
    batch_input in;
    batch_output out;
    todo_line *todo;
    size_t n_todo, next_todo;
    job *jobs;               /* in flight */
    int n_jobs;
    batch_counts counts;
    batch_progress progress;
} batch_run;

/* One request in the engine. */
struct job {
    batch_run *run;
    batch_request req;
    uint64_t engine_id;
    long lineno;
    int n_prompt, generated;
    ds_detok *detok;
    batch_buf text;
    int stop_matched;        /* a stop string was found (the text is cut there) */
    ds_finish_reason why;    /* DS_FINISH_NONE while running */
    job *next;
};

static volatile sig_atomic_t signals_seen;

static void on_signal(int sig)
{
    (void)sig;
    signals_seen++;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;    /* a record's write() must never be cut short */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void note(batch_run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(batch_run *run, const char *fmt, ...)
{
    va_list ap;
    batch_progress_clear(&run->progress);
    fprintf(stderr, "%s: ", tool_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int in_shard(const options *o, const char *key)
{
    return o->shard_n == 1 || (long)(batch_fnv1a64(key, strlen(key)) % (uint64_t)o->shard_n) == o->shard_i;
}

static void push_todo(batch_run *run, size_t *cap, todo_line t)
{
    if (run->n_todo == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        todo_line *n = realloc(run->todo, *cap * sizeof *n);
        if (!n)
            tool_die(EXIT_RUNTIME, "out of memory");
        run->todo = n;
    }
    run->todo[run->n_todo++] = t;
}

/* The pre-pass: identifies every line, keeps this shard's, and leaves out
 * the ones the output already answers.  The n-th repeat of an id is done
 * when the output holds n duplicate_id records for it, so repeats are
 * neither lost nor written twice across restarts either. */
static void select_lines(batch_run *run)
{
    batch_strmap *seen = batch_strmap_new();
    size_t pos = 0, cap = 0, len;
    const char *line;
    long lineno = 0;
    while (batch_input_next(&run->in, &pos, &line, &len, &lineno)) {
        batch_ident id;
        if (batch_line_blank(line, len))
            continue;
        batch_identify(line, len, lineno, &id);
        if (in_shard(run->opt, id.key)) {
            int nth = batch_strmap_add(seen, id.key, 1);
            int done = nth == 1 ? batch_strmap_get(run->out.done, id.key) > 0
                                : nth - 1 <= batch_strmap_get(run->out.dups, id.key);
            run->counts.total++;
            if (done)
                run->counts.resumed++;
            else
                push_todo(run, &cap, (todo_line){(size_t)(line - run->in.data), len, lineno, nth > 1});
        }
        batch_ident_free(&id);
    }
    batch_strmap_free(seen);
}

static void write_record(batch_run *run, json_t *rec, int is_error)
{
    batch_output_append(&run->out, rec);
    json_decref(rec);
    if (is_error)
        run->counts.errors++;
    else
        run->counts.ok++;
}

static void write_error(batch_run *run, const batch_ident *id, long lineno, const char *code, const char *msg)
{
    if (run->opt->verbose)
        note(run, "line %ld (id %s): %s: %s", lineno, id->key, code, msg);
    write_record(run, batch_record_error(id, code, msg), 1);
}

/* ---- generation callbacks ---------------------------------------------- */
/* Cuts the text at the first stop string that now appears in it; only the
 * part that the new piece could complete is searched. */
static void check_stop(job *j, size_t old_len)
{
    for (int k = 0; k < j->req.n_stop; k++) {
        size_t sl = strlen(j->req.stop[k]);
        size_t from = old_len >= sl ? old_len - sl + 1 : 0;
        if (from > j->text.len)
            continue;
        char *hit = strstr(j->text.data + from, j->req.stop[k]);
        if (hit) {
            j->text.len = (size_t)(hit - j->text.data);
            j->text.data[j->text.len] = 0;
            j->stop_matched = 1;   /* later stop strings still search the cut text: the earliest wins */
        }
    }
}

static void append_piece(job *j, char *s, size_t len)
{
    size_t old = j->text.len;
    if (!j->stop_matched)        /* nothing goes after a stop string, not even the flushed tail */
        batch_buf_append(&j->text, s, len);
    free(s);
    if (j->req.n_stop > 0 && len > 0)
        check_stop(j, old);
}

/* Runs on the stepping thread (ours) inside ds_engine_step. */
static int on_token(void *user, uint64_t id, int32_t token, const float *logits, ds_finish_reason reason)
{
    job *j = user;
    char *s;
    size_t len;
    ds_error err;
    (void)id, (void)logits;
    if (token < 0) {
        j->why = reason;
        return 0;
    }
    j->generated++;
    if (j->stop_matched)
        return 1;
    /* chat keeps special tokens for the parser's markers, no other */
    size_t tl = 0;
    if (j->req.kind == BATCH_KIND_CHAT && ds_tokenizer_is_special(j->run->tok, token) &&
        !ds_chat_is_marker(ds_tokenizer_token_bytes(j->run->tok, token, &tl), tl))
        return 0;
    if (ds_detok_push(j->detok, token, &s, &len, &err) != DS_OK) {
        /* The model's vocabulary is padded past the tokenizer's: an id
         * with no text becomes U+FFFD rather than failing the request. */
        if (err.code != DS_ERR_INPUT)
            tool_die(EXIT_RUNTIME, "detokenizer: %s", err.msg);
        s = batch_xstrdup("\xef\xbf\xbd");
        len = 3;
    }
    append_piece(j, s, len);
    return j->stop_matched;     /* a stop string ends the request */
}

/* ---- admission --------------------------------------------------------- */
/* A raw completion prompt starts with BOS, as Hugging Face tokenizers do
 * for generation (the chat encoding writes its own). */
static int32_t *prepend_bos(const ds_tokenizer *t, int32_t *ids, int *n)
{
    int32_t bos = ds_tokenizer_bos_id(t);
    if (bos < 0)
        return ids;
    int32_t *with = batch_xmalloc(sizeof *with * (size_t)(*n + 1));
    with[0] = bos;
    memcpy(with + 1, ids, sizeof *ids * (size_t)*n);
    free(ids);
    (*n)++;
    return with;
}

/* Prompt token ids of a parsed request, or NULL with *code / msg set. */
static int32_t *encode_request(batch_run *run, const batch_request *r, int *n, const char **code, char *msg,
                               size_t msg_len)
{
    ds_error err;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t len;
    if (r->kind == BATCH_KIND_CHAT) {
        ds_chat_options co;
        ds_chat_options_init(&co);
        co.thinking = r->thinking;
        /* message text never becomes a control token (a forged turn) */
        const ds_status st = ds_chat_encode(run->tok, run->fmt, r->conversation, strlen(r->conversation), &co, &ids,
                                            n, NULL, NULL, &err);
        if (st != DS_OK) {
            *code = err.code == DS_ERR_NOMEM ? "tokenizer_error" : "invalid_request";
            snprintf(msg, msg_len, "%s", err.msg);
            return NULL;
        }
        return ids;
    }
    text = batch_xstrdup(r->prompt);
    len = strlen(text);
    if (ds_tokenizer_encode(run->tok, text, len, 1, &ids, n, &err) != DS_OK) {
        *code = err.code == DS_ERR_INPUT ? "invalid_request" : "tokenizer_error";
        snprintf(msg, msg_len, "%s", err.msg);
        ids = NULL;
    }
    free(text);
    if (ids && r->kind == BATCH_KIND_COMPLETION)
        ids = prepend_bos(run->tok, ids, n);
    return ids;
}

static job *new_job(batch_run *run, batch_request *r, long lineno, int n_prompt)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        tool_die(EXIT_RUNTIME, "out of memory");
    j->run = run;
    j->req = *r;
    *r = (batch_request){0};
    j->n_prompt = n_prompt;
    j->lineno = lineno;
    j->detok = ds_detok_create(run->tok, j->req.kind == BATCH_KIND_COMPLETION);
    if (!j->detok)
        tool_die(EXIT_RUNTIME, "out of memory");
    batch_buf_append(&j->text, "", 0);
    return j;
}

static void free_job(job *j)
{
    batch_request_free(&j->req);
    ds_detok_free(j->detok);
    batch_buf_free(&j->text);
    free(j);
}

/* The token table of constrained decoding, built on first use. */
static const ds_json_vocab *json_vocab(batch_run *run)
{
    ds_error err;
    if (!run->json_vocab && ds_json_vocab_create(run->tok, &run->json_vocab, &err) != DS_OK)
        tool_die(EXIT_RUNTIME, "%s", err.msg);
    return run->json_vocab;
}

/* Submits a parsed request, or writes its error record. */
static void submit(batch_run *run, batch_request *r, long lineno)
{
    char msg[600];
    const char *code = NULL;
    int n;
    ds_error err;
    int32_t *ids = encode_request(run, r, &n, &code, msg, sizeof msg);
    if (!ids) {
        write_error(run, &r->ident, lineno, code, msg);
        return;
    }
    if (n >= run->ctx_size) {
        snprintf(msg, sizeof msg, "the prompt has %d tokens; the context holds %d (see --ctx-size)", n, run->ctx_size);
        free(ids);
        write_error(run, &r->ident, lineno, "context_length_exceeded", msg);
        return;
    }
    job *j = new_job(run, r, lineno, n);
    ds_request rq = {.prompt = ids, .n_prompt = n, .max_tokens = j->req.max_tokens, .sampling = j->req.sampling,
                     .sample_vocab = ds_tokenizer_vocab_size(run->tok), .on_token = on_token, .user = j};
    rq.json_schema = j->req.schema ? j->req.schema : run->schema;
    if (rq.json_schema)
        rq.json_vocab = json_vocab(run);
    ds_status st = ds_engine_submit(run->engine, &rq, &j->engine_id, &err);
    free(ids);
    if (st == DS_ERR_INPUT || st == DS_ERR_INVALID_ARG) {
        write_error(run, &j->req.ident, lineno, "invalid_request", err.msg);
        free_job(j);
        return;
    }
    if (st != DS_OK)
        tool_die(tool_exit_code(st), "cannot submit line %ld: %s", lineno, err.msg);
    j->next = run->jobs;
    run->jobs = j;
    run->n_jobs++;
}

static void admit_line(batch_run *run, const todo_line *t)
{
    const char *line = run->in.data + t->off;
    batch_request r;
    if (t->duplicate) {
        batch_ident id;
        char msg[300];
        batch_identify(line, t->len, t->lineno, &id);
        snprintf(msg, sizeof msg, "line %ld repeats an id that an earlier line has; it was not run", t->lineno);
        write_error(run, &id, t->lineno, BATCH_DUPLICATE_CODE, msg);
        batch_ident_free(&id);
        return;
    }
    if (batch_parse_request(line, t->len, t->lineno, &run->opt->defaults, &r) != 0)
        write_error(run, &r.ident, t->lineno, r.err_code, r.err_msg);
    else
        submit(run, &r, t->lineno);
    batch_request_free(&r);
}

/* Keeps exactly --parallel requests in the engine: none waits in its queue,
 * so on a stop signal everything submitted is already running. */
static void admit(batch_run *run)
{
    while (run->n_jobs < run->opt->parallel && run->next_todo < run->n_todo && !signals_seen)
        admit_line(run, &run->todo[run->next_todo++]);
}

/* ---- completion --------------------------------------------------------- */
static void finish_job(batch_run *run, job *j)
{
    char *s, why[600];
    size_t len;
    ds_error err;
    if (ds_detok_flush(j->detok, &s, &len, &err) != DS_OK)
        tool_die(EXIT_RUNTIME, "detokenizer: %s", err.msg);
    append_piece(j, s, len);
    if (j->why == DS_FINISH_ERROR) {
        write_error(run, &j->req.ident, j->lineno, "generation_error", "the engine failed on this request");
        return;
    }
    batch_result res = {.req = &j->req, .text = j->text.data, .len = j->text.len, .prompt_tokens = j->n_prompt,
                        .completion_tokens = j->generated,
                        .length_limited = j->why == DS_FINISH_LENGTH && !j->stop_matched,
                        .model_name = run->model_name, .fmt = run->fmt};
    json_t *rec = batch_record_result(&res, why, sizeof why);
    if (!rec) {
        write_error(run, &j->req.ident, j->lineno, "generation_error", why);
        return;
    }
    write_record(run, rec, 0);
    run->counts.prompt_tokens += (uint64_t)j->n_prompt;
    run->counts.completion_tokens += (uint64_t)j->generated;
}

/* Writes every request that ended in the last step, in the order the
 * engine finished them (list order is irrelevant: each is one record). */
static void collect_finished(batch_run *run)
{
    for (job **pp = &run->jobs; *pp;) {
        job *j = *pp;
        if (j->why == DS_FINISH_NONE) {
            pp = &j->next;
            continue;
        }
        *pp = j->next;
        run->n_jobs--;
        finish_job(run, j);
        free_job(j);
    }
}

/* Second signal: drop the requests in flight without writing anything
 * (a re-run redoes them) and exit 130. */
static void abort_run(batch_run *run)
{
    ds_error err;
    for (job *j = run->jobs; j; j = j->next)
        ds_engine_cancel(run->engine, j->engine_id);
    ds_engine_step(run->engine, &err);
    run->counts.in_flight = 0;
    batch_progress_summary(&run->progress, &run->counts, 1);
    batch_output_close(&run->out);
    exit(EXIT_INTERRUPTED);
}

static void update_progress(batch_run *run, int force)
{
    ds_engine_stats st;
    ds_engine_get_stats(run->engine, &st);
    run->counts.generated_tokens = st.generated_tokens;
    run->counts.in_flight = run->n_jobs;
    batch_progress_update(&run->progress, &run->counts, force);
}

static void run_loop(batch_run *run)
{
    int announced = 0;
    ds_error err;
    for (;;) {
        admit(run);
        if (signals_seen && !announced) {
            announced = 1;
            if (!run->opt->quiet)
                note(run, "stopping: finishing %d request%s in flight (signal again to abandon them)", run->n_jobs,
                     run->n_jobs == 1 ? "" : "s");
        }
        if (run->n_jobs == 0)
            break;
        if (ds_engine_step(run->engine, &err) < 0)
            tool_die(EXIT_RUNTIME, "engine: %s (the requests in flight were not written; re-run to redo them)",
                     err.msg);
        collect_finished(run);
        if (signals_seen >= 2)
            abort_run(run);
        update_progress(run, 0);
    }
}

/* ---- set-up ------------------------------------------------------------ */
static void open_files(batch_run *run)
{
    const options *o = run->opt;
    check_distinct_files(o);
    if (batch_input_open(o->input, &run->in) != 0)
        tool_die(EXIT_IO, "cannot read %s: %s", o->input, strerror(errno));
    if (o->template_path)
        run->template_text = load_template(o->template_path);
    if (o->schema_path)
        run->schema = load_schema(o->schema_path, &run->schema_json);
    batch_output_open(o->output, &run->out);
}

static void load_model(batch_run *run)
{
    const options *o = run->opt;
    ds_error err;
    ds_load_params lp;
    ds_engine_params ep;
    ds_engine_stats st;
    ds_load_params_init(&lp);
    lp.threads = o->threads;
    lp.expert_budget = o->mem_budget;
    lp.io = o->io;
    lp.numa = o->numa;
    run->model = tool_load_model(o->model_dir, &lp);
    run->tok = tool_load_tokenizer(o->model_dir, &err);
    if (!run->tok)
        tool_die_err(&err);
    run->fmt = ds_chat_format_for_model(ds_model_get_info(run->model)->model_type);
    ds_engine_params_init(&ep);
    ep.max_seqs = o->parallel;
    ep.ctx_size = o->ctx_size;
    ep.kv_type = o->kv;
    ep.precision = o->precision;
    tool_info_precision(ep.precision);
    if (ds_engine_create(run->model, &ep, &run->engine, &err) != DS_OK)
        tool_die(err.code == DS_ERR_NOMEM ? EXIT_RUNTIME : EXIT_USAGE, "cannot create the engine: %s", err.msg);
    ds_engine_get_stats(run->engine, &st);
    run->ctx_size = st.kv_capacity / st.slots;
    run->model_name = model_name_of(o->model_dir);
}

static void report_start(batch_run *run)
{
    const batch_output *out = &run->out;
    if (out->torn_bytes && !run->opt->quiet)
        note(run, "%s: cut off a partial last line (%zu bytes) left by an interrupted run", out->path, out->torn_bytes);
    if (run->counts.resumed && !run->opt->quiet)
        note(run, "resuming: %ld of %ld requests already have a record in %s", run->counts.resumed,
             run->counts.total, out->path);
    if (run->opt->verbose)
        note(run, "model %s (%s chat encoding), %d sequences of %d positions, %zu requests to run%s", run->model_name,
             ds_chat_format_name(run->fmt), run->opt->parallel, run->ctx_size, run->n_todo,
             run->opt->shard_n > 1 ? " in this shard" : "");
}

int main(int argc, char **argv)
{
    options opt;
    batch_run run = {0};
    parse_options(argc, argv, &opt);
    run.opt = &opt;
    open_files(&run);
    opt.defaults.template_text = run.template_text;
    opt.defaults.json_schema = run.schema_json;
    select_lines(&run);
    load_model(&run);
    batch_progress_init(&run.progress, opt.progress, opt.quiet);
    report_start(&run);
    install_signals();
    update_progress(&run, 1);
    run_loop(&run);
    update_progress(&run, 1);
    batch_progress_summary(&run.progress, &run.counts, signals_seen > 0);
    batch_output_close(&run.out);
    batch_input_close(&run.in);
    ds_engine_free(run.engine);
    ds_json_vocab_free(run.json_vocab);
    ds_json_schema_free(run.schema);
    json_decref(run.schema_json);
    ds_tokenizer_free(run.tok);
    ds_model_free(run.model);
    free(run.todo);
    free(run.template_text);
    free(run.model_name);
    return EXIT_OK;
}
