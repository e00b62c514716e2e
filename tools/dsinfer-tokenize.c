/* dsinfer-tokenize.c — command-line front end of the tokenizer: encodes
 * text to token ids, decodes ids to text, tokenizes a JSON list of strings
 * in one run (the interface of the golden tokenizer tests), renders chat
 * conversations into prompts and parses completions back into messages
 * (the interface of the chat encoding checks). */
#include <errno.h>
#include <getopt.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "common.h"

#ifndef DS_DATADIR
#define DS_DATADIR "/usr/local/share/dsinfer"
#endif
#ifndef DS_SRCDIR
#define DS_SRCDIR "."
#endif

const char *tool_name = "dsinfer-tokenize";

typedef struct opts {
    const char *tokenizer, *model, *text, *file, *decode, *batch, *render, *chat_format;
    int ids_only, json, no_special, parse, thinking, no_bos, ids, bench;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: %s [--tokenizer FILE_OR_DIR | --model DIR] [--text STR | --file F]\n"
        "       [--decode IDS] [--batch-json FILE] [--ids-only] [--json] [--no-special]\n"
        "       %s --render-chat FILE [--thinking | --no-thinking] [--no-bos]\n"
        "       [--chat-format auto|v3|v3.2] [--model DIR] [--ids] [--json]\n"
        "       %s --parse-completion [--thinking | --no-thinking]\n"
        "       [--chat-format auto|v3|v3.2] [--model DIR]\n"
        "Encodes text (from --text, --file or standard input) to DeepSeek token ids,\n"
        "or decodes ids back to text; renders chat conversations into prompts and\n"
        "parses generated completions into messages.\n"
        "  --tokenizer FILE_OR_DIR  tokenizer.json, or a directory holding it\n"
        "                           (default: " DS_DATADIR "/tokenizer.json)\n"
        "  -m, --model DIR          take DIR/tokenizer.json when --tokenizer is not given\n"
        "  --text STR               encode STR\n"
        "  --file F                 encode the contents of file F\n"
        "  --decode IDS             decode comma- or space-separated token ids\n"
        "  --batch-json FILE        encode each string of the JSON list in FILE and print\n"
        "                           a JSON list of id lists (with --json: a list of\n"
        "                           {\"ids\", \"decoded\"} objects)\n"
        "  --ids-only               print only the ids, on one line\n"
        "  --json                   print JSON\n"
        "  --no-special             encoding: special tokens in the text are plain text;\n"
        "                           decoding: leave out special tokens\n"
        "  --render-chat FILE       render the conversation in FILE (- = standard input:\n"
        "                           a JSON list of messages or {\"messages\", \"tools\",\n"
        "                           \"response_format\"}) and print the prompt text\n"
        "  --thinking               chat rendering and parsing in thinking mode\n"
        "  --no-thinking            chat mode (the default)\n"
        "  --no-bos                 do not start the prompt with the BOS token\n"
        "  --chat-format FMT        auto (default: from --model DIR's config.json\n"
        "                           model_type, v3.2 without a model), v3 or v3.2\n"
        "  --ids                    with --render-chat: also tokenize the prompt and print\n"
        "                           its ids on a line after it (with --json: one object\n"
        "                           {\"prompt\", \"ids\"})\n"
        "  --parse-completion       parse a completion read from standard input (tool calls\n"
        "                           in DSML for v3.2, in the legacy tokens for v3) and\n"
        "                           print the assistant message as JSON\n"
        "  --bench N                encode the input N times and print one JSON object with\n"
        "                           the throughput (bytes, tokens, MB/s of the first pass\n"
        "                           and the median pass); one thread\n"
        "  -q, --quiet              print errors only\n"
        "  -v, --verbose            say which tokenizer was loaded and how long it took\n"
        "  -h, --help               print this help and exit\n"
        "  -V, --version            print the version and exit\n"
        "Exit status: 0 ok, 1 usage error, 2 bad input, 3 I/O error.\n",
        tool_name, tool_name, tool_name);
}

static void parse_args(int argc, char **argv, opts *o)
{
    enum { O_TOK = 256, O_TEXT, O_FILE, O_DECODE, O_BATCH, O_IDS, O_JSON, O_NOSPEC,
           O_RENDER, O_PARSE, O_THINK, O_NOTHINK, O_NOBOS, O_FORMAT, O_CHATIDS, O_BENCH };
    static const struct option lo[] = {
        { "tokenizer", required_argument, 0, O_TOK }, { "model", required_argument, 0, 'm' },
        { "text", required_argument, 0, O_TEXT }, { "file", required_argument, 0, O_FILE },
        { "decode", required_argument, 0, O_DECODE }, { "batch-json", required_argument, 0, O_BATCH },
        { "ids-only", no_argument, 0, O_IDS }, { "json", no_argument, 0, O_JSON },
        { "no-special", no_argument, 0, O_NOSPEC }, { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' }, { "render-chat", required_argument, 0, O_RENDER },
        { "parse-completion", no_argument, 0, O_PARSE }, { "thinking", no_argument, 0, O_THINK },
        { "no-thinking", no_argument, 0, O_NOTHINK }, { "no-bos", no_argument, 0, O_NOBOS },
        { "chat-format", required_argument, 0, O_FORMAT }, { "ids", no_argument, 0, O_CHATIDS },
        { "bench", required_argument, 0, O_BENCH }, { "quiet", no_argument, 0, 'q' },
        { "verbose", no_argument, 0, 'v' },
        { 0, 0, 0, 0 }
    };
    int c;
    memset(o, 0, sizeof *o);
    int thinking_set = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:qvhV", lo, NULL)) != -1) {
        switch (c) {
        case O_TOK: o->tokenizer = optarg; break;
        case 'm': o->model = optarg; break;
        case O_TEXT: o->text = optarg; break;
        case O_FILE: o->file = optarg; break;
        case O_DECODE: o->decode = optarg; break;
        case O_BATCH: o->batch = optarg; break;
        case O_IDS: o->ids_only = 1; break;
        case O_JSON: o->json = 1; break;
        case O_NOSPEC: o->no_special = 1; break;
        case O_RENDER: o->render = optarg; break;
        case O_PARSE: o->parse = 1; break;
        case O_THINK: o->thinking = 1, thinking_set = 1; break;
        case O_NOTHINK: o->thinking = 0, thinking_set = 1; break;
        case O_NOBOS: o->no_bos = 1; break;
        case O_FORMAT: o->chat_format = optarg; break;
        case O_CHATIDS: o->ids = 1; break;
        case O_BENCH: o->bench = (int)tool_parse_long("--bench", optarg, 1, 100000); break;
        case 'q': tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); exit(EXIT_OK);
        case 'V': tool_print_version();
        default:
            tool_die(EXIT_USAGE, "unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if ((o->text != NULL) + (o->file != NULL) + (o->decode != NULL) + (o->batch != NULL) +
        (o->render != NULL) + o->parse > 1)
        tool_die(EXIT_USAGE,
                 "--text, --file, --decode, --batch-json, --render-chat and --parse-completion exclude each other");
    if (o->ids && !o->render)
        tool_die(EXIT_USAGE, "--ids goes with --render-chat");
    if (o->no_bos && !o->render)
        tool_die(EXIT_USAGE, "--no-bos goes with --render-chat");
    if (o->chat_format && !o->render && !o->parse)
        tool_die(EXIT_USAGE, "--chat-format goes with --render-chat or --parse-completion");
    if (o->ids_only && o->json)
        tool_die(EXIT_USAGE, "--ids-only and --json exclude each other");
    if (thinking_set && !o->render && !o->parse)
        tool_die(EXIT_USAGE, "--thinking and --no-thinking go with --render-chat or --parse-completion");
    if (o->bench && (o->decode || o->batch || o->render || o->parse))
        tool_die(EXIT_USAGE, "--bench encodes --text, --file or standard input");
}

/* The installed tokenizer file NAME, else the source tree's copy (so the
 * tools work uninstalled). */
static const char *shipped_tokenizer(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", DS_DATADIR, name);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/data/%s", DS_SRCDIR, name);
    return path;
}

static ds_tokenizer *load_tokenizer(const opts *o, const char *shipped)
{
    ds_tokenizer *t;
    ds_error err = { 0 };
    const char *path = o->tokenizer ? o->tokenizer : o->model ? o->model : shipped_tokenizer(shipped);
    double t0 = tool_now();
    if (ds_tokenizer_load(path, &t, &err))
        tool_die_err(&err);
    tool_info("loaded the tokenizer from %s in %.3f s: %d tokens", path, tool_now() - t0,
              ds_tokenizer_vocab_size(t));
    return t;
}

/* Writes s as a JSON string literal.  jansson refuses bytes that are not
 * valid UTF-8 (a token may hold part of a character); those strings are
 * written by hand with such bytes as \xNN, a form meant for human display
 * only.  JSON output never needs it: spellings and decoded text are valid. */
static void print_escaped(const char *s, size_t n)
{
    json_t *js = json_stringn(s, n);
    if (js) {
        char *dump = json_dumps(js, JSON_ENCODE_ANY);
        fputs(dump ? dump : "\"\"", stdout);
        free(dump);
        json_decref(js);
        return;
    }
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20 || ch >= 0x80)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void print_ids_array(const int32_t *ids, int n)
{
    putchar('[');
    for (int i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", (int)ids[i]);
    putchar(']');
}

static char *read_input(const opts *o, size_t *len)
{
    if (o->text) {
        *len = strlen(o->text);
        return strdup(o->text);
    }
    char *buf = tool_read_file(o->file ? o->file : "/dev/stdin", len);
    if (!buf)
        tool_die(EXIT_IO, "cannot read %s: %s", o->file ? o->file : "standard input", strerror(errno));
    return buf;
}

static void print_encoding(const ds_tokenizer *t, const opts *o, const int32_t *ids, int n)
{
    if (o->ids_only) {
        for (int i = 0; i < n; i++)
            printf(i ? " %d" : "%d", (int)ids[i]);
        putchar('\n');
        return;
    }
    if (o->json) {
        printf("{\"ids\":");
        print_ids_array(ids, n);
        printf(",\"tokens\":[");
        for (int i = 0; i < n; i++) {
            const char *s = ds_tokenizer_token_str(t, ids[i]);
            if (i)
                putchar(',');
            print_escaped(s, strlen(s));
        }
        printf("]}\n");
        return;
    }
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *b = ds_tokenizer_token_bytes(t, ids[i], &len);
        printf("%d\t", (int)ids[i]);
        print_escaped(b, len);
        putchar('\n');
    }
}

static void do_encode(const ds_tokenizer *t, const opts *o)
{
    size_t len;
    int32_t *ids;
    int n;
    ds_error err = { 0 };
    char *text = read_input(o, &len);
    if (ds_tokenizer_encode(t, text, len, !o->no_special, &ids, &n, &err))
        tool_die_err(&err);
    print_encoding(t, o, ids, n);
    free(ids);
    free(text);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Encode throughput: the first pass and the median of all passes, since
 * the tokenizer caches merges of pre-tokens it has seen. */
static void do_bench(const ds_tokenizer *t, const opts *o)
{
    size_t len;
    int n = 0;
    ds_error err = { 0 };
    char *text = read_input(o, &len);
    double *sec = malloc(sizeof(double) * (size_t)o->bench);
    if (!sec)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (int r = 0; r < o->bench; r++) {
        int32_t *ids;
        double t0 = tool_now();
        if (ds_tokenizer_encode(t, text, len, !o->no_special, &ids, &n, &err))
            tool_die_err(&err);
        sec[r] = tool_now() - t0;
        free(ids);
    }
    double first = sec[0];
    qsort(sec, (size_t)o->bench, sizeof(double), cmp_double);
    double med = sec[o->bench / 2];
    printf("{\"tool\": \"dsinfer-tokenize\", \"bytes\": %zu, \"tokens\": %d, \"repeat\": %d, "
           "\"first_s\": %.6f, \"median_s\": %.6f, \"first_MBps\": %.3f, \"MBps\": %.3f, "
           "\"tokens_per_s\": %.0f, \"threads\": 1}\n",
           len, n, o->bench, first, med, len / 1e6 / (first > 0 ? first : 1e-9), len / 1e6 / (med > 0 ? med : 1e-9),
           n / (med > 0 ? med : 1e-9));
    free(sec);
    free(text);
}

static void do_decode(const ds_tokenizer *t, const opts *o)
{
    int n;
    char *text;
    size_t len;
    ds_error err = { 0 };
    int32_t *ids = tool_parse_ids("--decode", o->decode, &n);
    if (ds_tokenizer_decode(t, ids, n, o->no_special, &text, &len, &err))
        tool_die_err(&err);
    if (o->json) {
        printf("{\"text\":");
        print_escaped(text, len);
        printf("}\n");
    } else {
        fwrite(text, 1, len, stdout);
        putchar('\n');
    }
    free(text);
    free(ids);
}

/* One element of --batch-json output: the ids, or with --json an object
 * that also carries the decoded text (for round-trip checks). */
static void batch_one(const ds_tokenizer *t, const opts *o, const json_t *s, size_t i)
{
    int32_t *ids;
    int n;
    ds_error err = { 0 };
    if (!json_is_string(s))
        tool_die(EXIT_INPUT, "%s: element %zu is not a string", o->batch, i);
    if (ds_tokenizer_encode(t, json_string_value(s), json_string_length(s), !o->no_special, &ids, &n,
                            &err))
        tool_die(tool_exit_code(err.code), "%s: element %zu: %s", o->batch, i, err.msg);
    if (!o->json) {
        print_ids_array(ids, n);
    } else {
        char *text;
        size_t len;
        if (ds_tokenizer_decode(t, ids, n, 0, &text, &len, &err))
            tool_die_err(&err);
        printf("{\"ids\":");
        print_ids_array(ids, n);
        printf(",\"decoded\":");
        print_escaped(text, len);
        putchar('}');
        free(text);
    }
    free(ids);
}

/* The --batch-json list, read before the tokenizer loads (a bad file
 * fails at once, with nothing else held). */
static json_t *load_batch(const opts *o)
{
    json_error_t je;
    FILE *f = fopen(o->batch, "rb");
    if (!f)
        tool_die(EXIT_IO, "cannot open %s: %s", o->batch, strerror(errno));
    /* JSON_ALLOW_NUL: strings may hold \u0000, which the tokenizer accepts. */
    json_t *root = json_loadf(f, JSON_ALLOW_NUL, &je);
    fclose(f);
    if (!root)
        tool_die(EXIT_INPUT, "%s:%d: %s", o->batch, je.line, je.text);
    if (!json_is_array(root))
        tool_die(EXIT_INPUT, "%s: expected a JSON list of strings", o->batch);
    return root;
}

static void do_batch(const ds_tokenizer *t, const opts *o, json_t *root)
{
    putchar('[');
    for (size_t i = 0; i < json_array_size(root); i++) {
        if (i)
            putchar(',');
        batch_one(t, o, json_array_get(root, i), i);
    }
    printf("]\n");
    json_decref(root);
}

/* model_type of DIR/config.json, for --chat-format auto; NULL when absent. */
static char *model_type_of(const char *dir)
{
    char path[4096];
    json_error_t je;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg)
        tool_die(access(path, R_OK) ? EXIT_IO : EXIT_INPUT, "%s: %s", path, je.text);
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    char *copy = mt ? strdup(mt) : NULL;
    json_decref(cfg);
    return copy;
}

static ds_chat_format chat_format(const opts *o)
{
    const char *f = o->chat_format ? o->chat_format : "auto";
    if (strcmp(f, "v3") == 0)
        return DS_CHAT_V3;
    if (strcmp(f, "v3.2") == 0 || strcmp(f, "v32") == 0)
        return DS_CHAT_V32;
    if (strcmp(f, "auto") != 0)
        tool_die(EXIT_USAGE, "invalid value for --chat-format: '%s' (expected auto, v3 or v3.2)", f);
    if (!o->model)
        return DS_CHAT_V32;
    char *mt = model_type_of(o->model);
    ds_chat_format r = ds_chat_format_for_model(mt ? mt : "deepseek_v3");
    free(mt);
    return r;
}

static void do_render(const opts *o)
{
    size_t len, plen;
    char *prompt;
    ds_error err = { 0 };
    ds_chat_options co;
    const char *src = strcmp(o->render, "-") == 0 ? "/dev/stdin" : o->render;
    char *conv = tool_read_file(src, &len);
    if (!conv)
        tool_die(EXIT_IO, "cannot read %s: %s", o->render, strerror(errno));
    ds_chat_options_init(&co);
    co.thinking = o->thinking;
    co.add_bos = !o->no_bos;
    ds_chat_format fmt = chat_format(o);
    if (!o->ids) {
        const ds_status st = ds_chat_render(fmt, conv, len, &co, &prompt, &plen, &err);
        free(conv);     /* before a failure's exit too: LeakSanitizer may not see it on the stack */
        if (st != DS_OK)
            tool_die(tool_exit_code(err.code), "%s: %s", o->render, err.msg);
        fwrite(prompt, 1, plen, stdout);
        free(prompt);
        return;
    }
    /* the ids the runtime feeds: the template's markers as tokens, message
     * text as plain text (ds_chat_encode) */
    ds_tokenizer *t = load_tokenizer(o, fmt == DS_CHAT_V3 ? "tokenizer.json" : "tokenizer-v32.json");
    int32_t *ids;
    int n;
    const ds_status st = ds_chat_encode(t, fmt, conv, len, &co, &ids, &n, &prompt, &plen, &err);
    free(conv);
    if (st != DS_OK) {
        ds_tokenizer_free(t);
        tool_die(tool_exit_code(err.code), "%s: %s", o->render, err.msg);
    }
    if (o->json) {
        printf("{\"prompt\":");
        print_escaped(prompt, plen);
        printf(",\"ids\":");
        print_ids_array(ids, n);
        printf("}\n");
    } else {
        fwrite(prompt, 1, plen, stdout);
        putchar('\n');
        for (int i = 0; i < n; i++)
            printf(i ? " %d" : "%d", (int)ids[i]);
        putchar('\n');
    }
    free(ids);
    free(prompt);
    ds_tokenizer_free(t);
}

static void do_parse(const opts *o)
{
    size_t len;
    char *msg;
    ds_error err = { 0 };
    char *text = tool_read_file("/dev/stdin", &len);
    if (!text)
        tool_die(EXIT_IO, "cannot read standard input: %s", strerror(errno));
    if (ds_chat_parse_completion_for(chat_format(o), text, len, o->thinking, &msg, &err))
        tool_die_err(&err);
    puts(msg);
    free(msg);
    free(text);
}

int main(int argc, char **argv)
{
    opts o;
    parse_args(argc, argv, &o);
    if (o.render || o.parse) {
        if (o.render)
            do_render(&o);
        else
            do_parse(&o);
        if (fflush(stdout) != 0 || ferror(stdout))
            tool_die(EXIT_IO, "error writing standard output: %s", strerror(errno));
        return EXIT_OK;
    }
    json_t *batch = o.batch ? load_batch(&o) : NULL;
    ds_tokenizer *t = load_tokenizer(&o, "tokenizer.json");
    if (o.bench)
        do_bench(t, &o);
    else if (o.batch)
        do_batch(t, &o, batch);
    else if (o.decode)
        do_decode(t, &o);
    else
        do_encode(t, &o);
    ds_tokenizer_free(t);
    if (fflush(stdout) != 0 || ferror(stdout))
        tool_die(EXIT_IO, "error writing standard output: %s", strerror(errno));
    return EXIT_OK;
}
