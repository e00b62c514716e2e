/* dsinfer — generate tokens from a prompt with a DeepSeek checkpoint:
 * prefill, then greedy or temperature / top-k / top-p sampling, printing
 * the generated ids on stdout and the speed on stderr. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

const char *tool_name = "dsinfer";

#ifndef DS_BUILDDIR
#define DS_BUILDDIR "."
#endif

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer [--model DIR] --prompt-ids IDS [options]\n"
        "\n"
        "Generates tokens after a prompt of token ids and prints the new ids.\n"
        "Without --model it uses $DSINFER_MODEL, else the embedded default model\n"
        "(the tiny checkpoint built by `make`, or installed in " DS_DATADIR "/models/tiny).\n"
        "\n"
        "  -m, --model DIR        checkpoint directory (HF layout)\n"
        "  -p, --prompt-ids IDS   prompt token ids, comma or space separated\n"
        "  -n, --max-tokens N     tokens to generate (default 16)\n"
        "      --temperature T    0 = greedy (default 0)\n"
        "      --top-p P          nucleus sampling threshold in (0, 1] (default 1)\n"
        "      --top-k K          sample among the K most likely tokens (default 0 = off)\n"
        "  -s, --seed N           sampling seed (default 24301)\n"
        "      --ignore-eos       do not stop at the end-of-sequence token\n"
        "  -c, --ctx-size N       KV cache positions (default: prompt + max-tokens)\n"
        "      --kv-cache TYPE    fp8 (default) or f32\n"
        "  -t, --threads N        worker threads (default: all cores)\n"
        "  -q, --quiet            do not print the speed line\n"
        "  -h, --help             show this help\n"
        "  -V, --version          show the version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad model or input, 3 I/O error, 4 runtime error.\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *default_model(void)
{
    static char path[4096];
    const char *env = getenv("DSINFER_MODEL");
    if (env && *env)
        return env;
    snprintf(path, sizeof path, "%s/models/tiny", DS_BUILDDIR);
    if (access(path, R_OK) == 0)
        return path;
    snprintf(path, sizeof path, "%s/models/tiny", DS_DATADIR);
    return path;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *ids_arg = NULL;
    int max_tokens = 16, threads = 0, ctx_size = 0, quiet = 0, ignore_eos = 0;
    ds_kv_type kv = DS_KV_FP8;
    ds_sampler_params sp;
    ds_sampler_params_init(&sp);
    sp.seed = 24301;
    enum { O_TEMP = 256, O_TOPP, O_TOPK, O_KV, O_EOS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt-ids", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, O_TEMP},
        {"top-p", required_argument, 0, O_TOPP}, {"top-k", required_argument, 0, O_TOPK},
        {"seed", required_argument, 0, 's'}, {"ignore-eos", no_argument, 0, O_EOS},
        {"ctx-size", required_argument, 0, 'c'}, {"kv-cache", required_argument, 0, O_KV},
        {"threads", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:s:c:t:qhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': ids_arg = optarg; break;
        case 'n': max_tokens = (int)tool_parse_long("--max-tokens", optarg, 0, 1 << 24); break;
        case O_TEMP: sp.temperature = (float)tool_parse_double("--temperature", optarg, 0, 100); break;
        case O_TOPP: sp.top_p = (float)tool_parse_double("--top-p", optarg, 1e-6, 1); break;
        case O_TOPK: sp.top_k = (int)tool_parse_long("--top-k", optarg, 0, 1 << 24); break;
        case 's': sp.seed = tool_parse_u64("--seed", optarg); break;
        case O_EOS: ignore_eos = 1; break;
        case 'c': ctx_size = (int)tool_parse_long("--ctx-size", optarg, 1, 1 << 24); break;
        case O_KV:
            if (strcmp(optarg, "fp8") == 0)
                kv = DS_KV_FP8;
            else if (strcmp(optarg, "f32") == 0 || strcmp(optarg, "fp32") == 0)
                kv = DS_KV_F32;
            else
                tool_die(EXIT_USAGE, "invalid value for --kv-cache: '%s' (expected fp8 or f32)", optarg);
            break;
        case 't': threads = (int)tool_parse_long("--threads", optarg, 1, 4096); break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': tool_print_version();
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!ids_arg)
        tool_die(EXIT_USAGE, "--prompt-ids is required (see --help)");
    int P;
    int32_t *prompt = tool_parse_ids("--prompt-ids", ids_arg, &P);
    if (P == 0)
        tool_die(EXIT_USAGE, "--prompt-ids: the prompt is empty");
    if (!model_dir)
        model_dir = default_model();

    ds_error err;
    ds_model *model;
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.threads = threads;
    double t0 = now_s();
    if (ds_model_load(model_dir, &lp, &model, &err) != DS_OK)
        tool_die_err(&err);
    const ds_model_info *mi = ds_model_get_info(model);
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.kv_type = kv;
    cp.threads = threads;
    cp.ctx_size = ctx_size ? ctx_size : P + max_tokens;
    ds_context *ctx;
    ds_sampler *smp;
    if (ds_context_create(model, &cp, &ctx, &err) != DS_OK || ds_sampler_create(&sp, &smp, &err) != DS_OK)
        tool_die_err(&err);
    float *logits = malloc(sizeof(float) * (size_t)mi->vocab_size);
    if (!logits)
        tool_die(EXIT_RUNTIME, "out of memory");
    double t1 = now_s();
    if (ds_eval(ctx, prompt, P, logits, 0, &err) != DS_OK)
        tool_die_err(&err);
    double t2 = now_s();
    int generated = 0;
    for (; generated < max_tokens; generated++) {
        int32_t id = ds_sampler_sample(smp, logits, mi->vocab_size);
        printf(generated ? " %d" : "%d", id);
        fflush(stdout);
        if (id == mi->eos_token_id && !ignore_eos) {
            generated++;
            break;
        }
        if (generated + 1 < max_tokens && ds_eval(ctx, &id, 1, logits, 0, &err) != DS_OK)
            tool_die_err(&err);
    }
    printf("\n");
    double t3 = now_s();
    if (!quiet)
        fprintf(stderr, "%s: load %.2f s, prefill %d tokens %.1f tok/s, generated %d tokens %.1f tok/s\n",
                tool_name, t1 - t0, P, P / (t2 - t1 > 0 ? t2 - t1 : 1e-9), generated,
                generated > 1 ? (generated - 1) / (t3 - t2 > 0 ? t3 - t2 : 1e-9) : 0.0);
    free(logits);
    free(prompt);
    ds_sampler_free(smp);
    ds_context_free(ctx);
    ds_model_free(model);
    return EXIT_OK;
}
