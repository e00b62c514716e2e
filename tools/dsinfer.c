/* dsinfer — generate tokens from a prompt with a DeepSeek checkpoint:
 * the prompt is token ids, plain text or a chat message rendered with the
 * model's chat encoding; prefill, then greedy or temperature / top-k /
 * top-p sampling, printing the generated text (through the streaming
 * detokenizer) or ids on stdout and the speed on stderr. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

const char *tool_name = "dsinfer";

#ifndef DS_BUILDDIR
#define DS_BUILDDIR "."
#endif
#ifndef DS_SRCDIR
#define DS_SRCDIR "."
#endif

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer [--model DIR] --prompt-ids IDS [options]\n"
        "       dsinfer [--model DIR] --prompt TEXT [options]\n"
        "       dsinfer [--model DIR] --chat TEXT [--system TEXT] [--thinking] [options]\n"
        "\n"
        "Generates tokens after a prompt and prints them: as text for --prompt and\n"
        "--chat, as ids for --prompt-ids.  Text is encoded with DIR/tokenizer.json,\n"
        "else the tokenizer shipped with dsinfer.\n"
        "Without --model it uses $DSINFER_MODEL, else the embedded default model\n"
        "(the tiny checkpoint built by `make`, or installed in " DS_DATADIR "/models/tiny).\n"
        "\n"
        "  -m, --model DIR        checkpoint directory (HF layout)\n"
        "  -p, --prompt-ids IDS   prompt token ids, comma or space separated\n"
        "      --prompt TEXT      plain text prompt (a BOS token is put first)\n"
        "      --chat TEXT        one user message, rendered with the model's chat\n"
        "                         encoding (V3.2 for deepseek_v32, else V3)\n"
        "      --system TEXT      with --chat: a system prompt before the message\n"
        "      --thinking         with --chat: thinking mode (the answer starts with\n"
        "                         its reasoning)\n"
        "      --no-thinking      with --chat: chat mode (the default)\n"
        "      --print-ids        print the generated ids, not text\n"
        "  -n, --max-tokens N     tokens to generate (default 16)\n"
        "      --temperature T    0 = greedy (default 0)\n"
        "      --top-p P          nucleus sampling threshold in (0, 1] (default 1)\n"
        "      --top-k K          sample among the K most likely tokens (default 0 = off)\n"
        "  -s, --seed N           sampling seed (default 24301)\n"
        "      --ignore-eos       do not stop at the end-of-sequence token\n"
        "  -c, --ctx-size N       KV cache positions (default: prompt + max-tokens)\n"
        "      --kv-cache TYPE    fp8 (default), fp8-compact (bf16 rope key) or f32\n"
        TOOL_PRECISION_HELP("      ", "bf16")
        "  -t, --threads N        worker threads (default: all cores)\n"
        "  -q, --quiet            do not print the speed line\n"
        "  -v, --verbose          also describe the model, kernels and expert cache\n"
        "      --mem-budget SIZE  RAM for routed experts (e.g. 12G); less than the experts\n"
        "                         streams them from disk (default auto: all resident when the\n"
        "                         model fits in memory, else stream in what fits; all: resident)\n"
        "      --io MODE          how streamed experts are read: uring, pread or auto\n"
        TOOL_HELP_NUMA
        "  -h, --help             show this help\n"
        "  -V, --version          show the version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad model or input, 3 I/O error, 4 runtime error.\n");
}

static void join_path(char *buf, size_t size, const char *dir, const char *name)
{
    if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size)
        tool_die(EXIT_USAGE, "path too long: %s/%s", dir, name);
}

/* Plain text: BOS first, as Hugging Face tokenizers do for generation. */
static int32_t *encode_text(const ds_tokenizer *t, const char *text, int *n)
{
    int32_t *ids;
    ds_error err;
    if (ds_tokenizer_encode(t, text, strlen(text), 1, &ids, n, &err) != DS_OK)
        tool_die_err(&err);
    int32_t bos = ds_tokenizer_bos_id(t);
    if (bos < 0)
        return ids;
    int32_t *with = malloc(sizeof *with * (size_t)(*n + 1));
    if (!with)
        tool_die(EXIT_RUNTIME, "out of memory");
    with[0] = bos;
    memcpy(with + 1, ids, sizeof *ids * (size_t)*n);
    free(ids);
    (*n)++;
    return with;
}

/* model_type from DIR/config.json ("" when unreadable: ds_model_load will
 * report the problem). */
static ds_chat_format model_chat_format(const char *model_dir)
{
    char path[4096];
    struct stat st;
    join_path(path, sizeof path, model_dir, "config.json");
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))   /* a FIFO would block json_load_file */
        return ds_chat_format_for_model(NULL);
    json_t *cfg = json_load_file(path, 0, NULL);
    ds_chat_format f = ds_chat_format_for_model(json_string_value(json_object_get(cfg, "model_type")));
    json_decref(cfg);
    return f;
}

/* One user message (and an optional system prompt) through the chat
 * encoding; the rendered text carries its own BOS. */
static int32_t *encode_chat(const ds_tokenizer *t, const char *model_dir, const char *system,
                            const char *user, int thinking, int *n)
{
    ds_error err;
    ds_chat_options co;
    char *conv;
    int32_t *ids;
    json_t *msgs = json_array();
    /* json_pack refuses text that is not UTF-8 (NULL, which an append would
     * skip: the message would be dropped, not refused) */
    if (system && json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content", system)) != 0)
        tool_die(EXIT_INPUT, "--system: the text is not valid UTF-8");
    if (json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", user)) != 0)
        tool_die(EXIT_INPUT, "--chat: the text is not valid UTF-8");
    conv = json_dumps(msgs, JSON_COMPACT);
    json_decref(msgs);
    if (!conv)
        tool_die(EXIT_RUNTIME, "out of memory");
    ds_chat_options_init(&co);
    co.thinking = thinking;
    /* message text never becomes a control token (a forged turn) */
    if (ds_chat_encode(t, model_chat_format(model_dir), conv, strlen(conv), &co, &ids, n, NULL, NULL, &err) != DS_OK)
        tool_die_err(&err);
    free(conv);
    return ids;
}

/* Prints the text of one generated id (id < 0 with flush: what the
 * detokenizer still holds). */
static void print_piece(ds_detok *dt, int32_t id, int flush)
{
    char *s;
    size_t len;
    ds_error err;
    if ((flush ? ds_detok_flush(dt, &s, &len, &err) : ds_detok_push(dt, id, &s, &len, &err)) != DS_OK)
        tool_die_err(&err);
    fwrite(s, 1, len, stdout);
    free(s);
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *ids_arg = NULL, *text_arg = NULL, *chat_arg = NULL, *system_arg = NULL;
    int max_tokens = 16, threads = 0, ctx_size = 0, ignore_eos = 0;
    int64_t mem_budget = 0;
    ds_io_mode io_mode = DS_IO_MODE_AUTO;
    int numa = DS_NUMA_ON;
    int thinking = 0, thinking_set = 0, print_ids = 0;
    ds_kv_type kv = DS_KV_FP8;
    ds_precision precision = DS_PRECISION_BF16;
    ds_sampler_params sp;
    ds_sampler_params_init(&sp);
    sp.seed = 24301;
    enum { O_TEMP = 256, O_TOPP, O_TOPK, O_KV, O_EOS, O_PROMPT, O_CHAT, O_SYSTEM, O_THINK, O_NOTHINK,
           O_PRINTIDS, O_BUDGET, O_IO, O_NUMA, O_PREC };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt-ids", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, O_TEMP},
        {"top-p", required_argument, 0, O_TOPP}, {"top-k", required_argument, 0, O_TOPK},
        {"seed", required_argument, 0, 's'}, {"ignore-eos", no_argument, 0, O_EOS},
        {"ctx-size", required_argument, 0, 'c'}, {"kv-cache", required_argument, 0, O_KV},
        {"precision", required_argument, 0, O_PREC},
        {"threads", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
        {"mem-budget", required_argument, 0, O_BUDGET}, {"io", required_argument, 0, O_IO},
        {"numa", required_argument, 0, O_NUMA},
        {"prompt", required_argument, 0, O_PROMPT}, {"chat", required_argument, 0, O_CHAT},
        {"system", required_argument, 0, O_SYSTEM}, {"thinking", no_argument, 0, O_THINK},
        {"no-thinking", no_argument, 0, O_NOTHINK}, {"print-ids", no_argument, 0, O_PRINTIDS},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:s:c:t:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': ids_arg = optarg; break;
        case O_PROMPT: text_arg = optarg; break;
        case O_CHAT: chat_arg = optarg; break;
        case O_SYSTEM: system_arg = optarg; break;
        case O_THINK: thinking = 1, thinking_set = 1; break;
        case O_NOTHINK: thinking = 0, thinking_set = 1; break;
        case O_PRINTIDS: print_ids = 1; break;
        case 'n': max_tokens = (int)tool_parse_long("--max-tokens", optarg, 0, 1 << 24); break;
        case O_TEMP: sp.temperature = (float)tool_parse_double("--temperature", optarg, 0, 100); break;
        case O_TOPP: sp.top_p = (float)tool_parse_double("--top-p", optarg, 1e-6, 1); break;
        case O_TOPK: sp.top_k = (int)tool_parse_long("--top-k", optarg, 0, 1 << 24); break;
        case 's': sp.seed = tool_parse_u64("--seed", optarg); break;
        case O_EOS: ignore_eos = 1; break;
        case 'c': ctx_size = (int)tool_parse_long("--ctx-size", optarg, 1, 1 << 24); break;
        case O_KV: kv = tool_parse_kv("--kv-cache", optarg); break;
        case O_PREC: precision = tool_parse_precision("--precision", optarg); break;
        case 't': threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case 'q': tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case O_BUDGET: mem_budget = tool_parse_budget("--mem-budget", optarg); break;
        case O_IO: io_mode = tool_parse_io("--io", optarg); break;
        case O_NUMA: numa = tool_parse_numa("--numa", optarg); break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': tool_print_version();
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if ((ids_arg != NULL) + (text_arg != NULL) + (chat_arg != NULL) != 1)
        tool_die(EXIT_USAGE, "give exactly one of --prompt-ids, --prompt and --chat (see --help)");
    if ((system_arg || thinking_set) && !chat_arg)
        tool_die(EXIT_USAGE, "--system, --thinking and --no-thinking go with --chat");
    if (!model_dir)
        model_dir = tool_default_model();
    int P;
    int32_t *prompt;
    ds_tokenizer *tok = NULL;
    if (ids_arg) {
        prompt = tool_parse_ids("--prompt-ids", ids_arg, &P);
    } else {
        ds_error terr;
        tok = tool_load_tokenizer(model_dir, &terr);
        if (!tok)
            tool_die_err(&terr);
        prompt = text_arg ? encode_text(tok, text_arg, &P)
                          : encode_chat(tok, model_dir, system_arg, chat_arg, thinking, &P);
    }
    if (P == 0)
        tool_die(EXIT_USAGE, "%s: the prompt is empty", ids_arg ? "--prompt-ids" : "--prompt");

    ds_error err;
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.threads = threads;
    lp.expert_budget = mem_budget;
    lp.io = io_mode;
    lp.numa = numa;
    double t0 = tool_now();
    ds_model *model = tool_load_model(model_dir, &lp);
    const ds_model_info *mi = ds_model_get_info(model);
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.kv_type = kv;
    cp.precision = precision;
    tool_info_precision(precision);
    cp.threads = threads;
    cp.ctx_size = ctx_size ? ctx_size : P + max_tokens;
    ds_context *ctx;
    ds_sampler *smp;
    if (ds_context_create(model, &cp, &ctx, &err) != DS_OK || ds_sampler_create(&sp, &smp, &err) != DS_OK)
        tool_die_err(&err);
    tool_check_kv_locked(ctx);
    float *logits = malloc(sizeof(float) * (size_t)mi->vocab_size);
    if (!logits)
        tool_die(EXIT_RUNTIME, "out of memory");
    double t1 = tool_now();
    if (ds_eval(ctx, prompt, P, logits, 0, &err) != DS_OK)
        tool_die_err(&err);
    double t2 = tool_now();
    int generated = 0;
    ds_detok *dt = NULL;
    if (tok && !print_ids && !(dt = ds_detok_create(tok, 1)))
        tool_die(EXIT_RUNTIME, "out of memory");
    for (; generated < max_tokens; generated++) {
        /* with a tokenizer, never sample the checkpoint's padding ids (they have no text) */
        int nv = tok && ds_tokenizer_vocab_size(tok) < mi->vocab_size ? ds_tokenizer_vocab_size(tok) : mi->vocab_size;
        int32_t id = ds_sampler_sample(smp, logits, nv);
        if (id < 0)
            tool_die(EXIT_RUNTIME, "the logits of step %d are NaN: a weight of %s holds NaN or Inf", generated,
                     model_dir);
        int eos = id == mi->eos_token_id && !ignore_eos;
        if (dt)
            print_piece(dt, id, 0);
        else
            printf(generated ? " %d" : "%d", id);
        fflush(stdout);
        if (eos) {
            generated++;
            break;
        }
        if (generated + 1 < max_tokens && ds_eval(ctx, &id, 1, logits, 0, &err) != DS_OK)
            tool_die_err(&err);
    }
    if (dt) {
        print_piece(dt, -1, 1);
        ds_detok_free(dt);
    }
    printf("\n");
    if (fflush(stdout) != 0 || ferror(stdout))
        tool_die(EXIT_IO, "error writing standard output: %s", strerror(errno));
    double t3 = tool_now();
    if (tool_verbosity >= 0)
        fprintf(stderr, "%s: load %.2f s, prefill %d tokens %.1f tok/s, generated %d tokens %.1f tok/s\n",
                tool_name, t1 - t0, P, P / (t2 - t1 > 0 ? t2 - t1 : 1e-9), generated,
                generated > 1 ? (generated - 1) / (t3 - t2 > 0 ? t3 - t2 : 1e-9) : 0.0);
    tool_info_experts(model);
    free(logits);
    free(prompt);
    ds_tokenizer_free(tok);
    ds_sampler_free(smp);
    ds_context_free(ctx);
    ds_model_free(model);
    return EXIT_OK;
}
