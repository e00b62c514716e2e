/* dsinfer-tokenize.c — command-line front end of the tokenizer: encodes
 * text to token ids, decodes ids to text, and tokenizes a JSON list of
 * strings in one run (the interface of the golden tokenizer tests). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "common.h"

#ifndef DS_DATADIR
#define DS_DATADIR "/usr/local/share/dsinfer"
#endif

const char *tool_name = "dsinfer-tokenize";

typedef struct opts {
    const char *tokenizer, *model, *text, *file, *decode, *batch;
    int ids_only, json, no_special;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: %s [--tokenizer FILE_OR_DIR | --model DIR] [--text STR | --file F]\n"
        "       [--decode IDS] [--batch-json FILE] [--ids-only] [--json] [--no-special]\n"
        "Encodes text (from --text, --file or standard input) to DeepSeek token ids,\n"
        "or decodes ids back to text.\n"
        "  --tokenizer FILE_OR_DIR  tokenizer.json, or a directory holding it\n"
        "                           (default: " DS_DATADIR "/tokenizer.json)\n"
        "  --model DIR              take DIR/tokenizer.json when --tokenizer is not given\n"
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
        "  --help                   print this help and exit\n"
        "  --version                print the version and exit\n"
        "Exit status: 0 ok, 1 usage error, 2 bad input, 3 I/O error.\n",
        tool_name);
}

static void parse_args(int argc, char **argv, opts *o)
{
    enum { O_TOK = 256, O_MODEL, O_TEXT, O_FILE, O_DECODE, O_BATCH, O_IDS, O_JSON, O_NOSPEC,
           O_HELP, O_VERSION };
    static const struct option lo[] = {
        { "tokenizer", required_argument, 0, O_TOK }, { "model", required_argument, 0, O_MODEL },
        { "text", required_argument, 0, O_TEXT }, { "file", required_argument, 0, O_FILE },
        { "decode", required_argument, 0, O_DECODE }, { "batch-json", required_argument, 0, O_BATCH },
        { "ids-only", no_argument, 0, O_IDS }, { "json", no_argument, 0, O_JSON },
        { "no-special", no_argument, 0, O_NOSPEC }, { "help", no_argument, 0, O_HELP },
        { "version", no_argument, 0, O_VERSION }, { 0, 0, 0, 0 }
    };
    int c;
    memset(o, 0, sizeof *o);
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_TOK: o->tokenizer = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_TEXT: o->text = optarg; break;
        case O_FILE: o->file = optarg; break;
        case O_DECODE: o->decode = optarg; break;
        case O_BATCH: o->batch = optarg; break;
        case O_IDS: o->ids_only = 1; break;
        case O_JSON: o->json = 1; break;
        case O_NOSPEC: o->no_special = 1; break;
        case O_HELP: usage(stdout); exit(EXIT_OK);
        case O_VERSION: tool_print_version();
        default:
            tool_die(EXIT_USAGE, "unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if ((o->text != NULL) + (o->file != NULL) + (o->decode != NULL) + (o->batch != NULL) > 1)
        tool_die(EXIT_USAGE, "--text, --file, --decode and --batch-json exclude each other");
    if (o->ids_only && o->json)
        tool_die(EXIT_USAGE, "--ids-only and --json exclude each other");
}

static ds_tokenizer *load_tokenizer(const opts *o)
{
    ds_tokenizer *t;
    ds_error err = { 0 };
    const char *path = o->tokenizer ? o->tokenizer : o->model ? o->model : DS_DATADIR "/tokenizer.json";
    if (ds_tokenizer_load(path, &t, &err))
        tool_die_err(&err);
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

static void do_batch(const ds_tokenizer *t, const opts *o)
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
    putchar('[');
    for (size_t i = 0; i < json_array_size(root); i++) {
        if (i)
            putchar(',');
        batch_one(t, o, json_array_get(root, i), i);
    }
    printf("]\n");
    json_decref(root);
}

int main(int argc, char **argv)
{
    opts o;
    parse_args(argc, argv, &o);
    ds_tokenizer *t = load_tokenizer(&o);
    if (o.batch)
        do_batch(t, &o);
    else if (o.decode)
        do_decode(t, &o);
    else
        do_encode(t, &o);
    ds_tokenizer_free(t);
    if (fflush(stdout) != 0 || ferror(stdout))
        tool_die(EXIT_IO, "error writing standard output: %s", strerror(errno));
    return EXIT_OK;
}
