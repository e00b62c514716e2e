/* dsinfer-inspect — loads and validates a checkpoint and prints its
 * configuration, tensor count, bytes by dtype and routed-expert bytes per
 * layer. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

const char *tool_name = "dsinfer-inspect";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dsinfer-inspect [--model] DIR [--tensors] [--json]\n"
        "\n"
        "Validates a DeepSeek checkpoint directory and prints its configuration,\n"
        "tensor count, bytes by dtype and routed-expert bytes per layer.\n"
        "\n"
        "  -m, --model DIR   checkpoint directory (HF layout)\n"
        "      --tensors     also list every tensor (name, dtype, shape, bytes, file)\n"
        "      --json        print one JSON object instead of text\n"
        "      --mem-budget SIZE  validate with this expert-cache budget (as the runtime would load it)\n"
        "      --io MODE     uring, pread or auto: how a streaming load reads experts\n"
        TOOL_HELP_NUMA
        "  -q, --quiet       nothing on stderr but errors (the report still goes to stdout)\n"
        "  -v, --verbose     describe the model, kernels and expert cache on stderr\n"
        "  -h, --help        show this help\n"
        "  -V, --version     show the version\n"
        "\n"
        "Exit status: 0 valid, 1 usage, 2 invalid model, 3 I/O error.\n");
}

#define MAX_DT 16

/* s as a JSON string; a path or message that is not UTF-8 (a directory
 * named in another encoding) has its bytes above 0x7f shown as '?', so
 * the report is still printed. */
static json_t *text_json(const char *s)
{
    json_t *j = json_string(s);
    if (j)
        return j;
    char *a = strdup(s);
    if (!a)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (char *p = a; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(a);
    free(a);
    return j;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int list = 0, json = 0;
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.weights_in_ram = 0;     /* validation only: no need to copy the weights */
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tensors", no_argument, 0, 'T'},
        {"json", no_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {"mem-budget", required_argument, 0, 'B'}, {"io", required_argument, 0, 'I'}, {"numa", required_argument, 0, 'N'},
        {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:qvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'T': list = 1; break;
        case 'j': json = 1; break;
        case 'B': lp.expert_budget = tool_parse_budget("--mem-budget", optarg); break;
        case 'I': lp.io = tool_parse_io("--io", optarg); break;
        case 'N': lp.numa = tool_parse_numa("--numa", optarg); break;
        case 'q': tool_verbosity = -1; break;
        case 'v': tool_verbosity = 1; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': tool_print_version();
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (!dir && optind < argc)
        dir = argv[optind++];
    if (optind < argc)
        tool_die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!dir)
        tool_die(EXIT_USAGE, "no checkpoint directory given (see --help)");

    ds_error err;
    ds_model *m;
    if (ds_model_load(dir, &lp, &m, &err) != DS_OK) {
        if (json) {
            json_t *j = json_pack("{s:o, s:b, s:o}", "model", text_json(dir), "valid", 0, "error", text_json(err.msg));
            char *txt = j ? json_dumps(j, JSON_PRESERVE_ORDER) : NULL;
            if (txt)
                puts(txt);
            free(txt);
            json_decref(j);
        } else
            printf("validation: FAILED\n");
        tool_die_err(&err);
    }
    const ds_model_info *i = ds_model_get_info(m);
    const char *dt_name[MAX_DT];
    uint64_t dt_bytes[MAX_DT];
    int ndt = 0;
    int L = i->num_layers;
    uint64_t *expert_bytes = calloc((size_t)L + 1, sizeof(uint64_t));
    if (!expert_bytes)
        tool_die(EXIT_RUNTIME, "out of memory");
    int n = ds_model_tensor_count(m);
    for (int k = 0; k < n; k++) {
        ds_tensor_info t;
        ds_model_tensor_info(m, k, &t, NULL);
        int d = 0;
        while (d < ndt && strcmp(dt_name[d], t.dtype) != 0)
            d++;
        if (d == ndt && ndt < MAX_DT) {
            dt_name[ndt] = t.dtype;
            dt_bytes[ndt++] = 0;
        }
        if (d < ndt)
            dt_bytes[d] += t.nbytes;
        int layer, off = 0;
        if (sscanf(t.name, "model.layers.%d.mlp.experts.%n", &layer, &off) == 1 && off > 0 &&
            layer >= 0 && layer < L)
            expert_bytes[layer] += t.nbytes;
        if (list && !json) {
            printf("%-64s %-8s [", t.name, t.dtype);
            for (int s = 0; s < t.ndim; s++)
                printf(s ? ", %lld" : "%lld", (long long)t.shape[s]);
            printf("] %llu %s\n", (unsigned long long)t.nbytes, t.file);
        }
    }
    if (json) {
        json_t *j = json_object();
        json_object_set_new(j, "model", text_json(dir));
        json_object_set_new(j, "valid", json_true());
        json_object_set_new(j, "model_type", json_string(i->model_type));
        json_object_set_new(j, "vocab_size", json_integer(i->vocab_size));
        json_object_set_new(j, "hidden_size", json_integer(i->hidden_size));
        json_object_set_new(j, "num_layers", json_integer(i->num_layers));
        json_object_set_new(j, "first_dense_layers", json_integer(i->first_dense_layers));
        json_object_set_new(j, "num_heads", json_integer(i->num_heads));
        json_object_set_new(j, "q_lora_rank", json_integer(i->q_lora_rank));
        json_object_set_new(j, "kv_lora_rank", json_integer(i->kv_lora_rank));
        json_object_set_new(j, "n_routed_experts", json_integer(i->n_routed_experts));
        json_object_set_new(j, "n_shared_experts", json_integer(i->n_shared_experts));
        json_object_set_new(j, "experts_per_token", json_integer(i->experts_per_token));
        json_object_set_new(j, "has_indexer", json_boolean(i->has_indexer));
        json_object_set_new(j, "index_n_heads", json_integer(i->index_n_heads));
        json_object_set_new(j, "index_topk", json_integer(i->index_topk));
        json_object_set_new(j, "scale_fmt", json_string(i->scale_ue8m0 ? "ue8m0" : "none"));
        json_object_set_new(j, "tensors", json_integer(n));
        json_object_set_new(j, "bytes", json_integer(i->weight_bytes));
        json_object_set_new(j, "active_bytes_per_token", json_integer(i->active_bytes_per_token));
        json_t *by = json_object();
        for (int d = 0; d < ndt; d++)
            json_object_set_new(by, dt_name[d], json_integer((json_int_t)dt_bytes[d]));
        json_object_set_new(j, "bytes_by_dtype", by);
        json_t *eb = json_array();
        for (int l = 0; l < L; l++)
            json_array_append_new(eb, json_integer((json_int_t)expert_bytes[l]));
        json_object_set_new(j, "expert_bytes_per_layer", eb);
        char *txt = json_dumps(j, JSON_PRESERVE_ORDER);
        if (!txt)
            tool_die(EXIT_RUNTIME, "out of memory");
        puts(txt);
        free(txt);
        json_decref(j);
    } else {
        printf("model:        %s\n", dir);
        printf("model_type:   %s%s\n", i->model_type, i->has_indexer ? " (DSA lightning indexer)" : " (dense MLA)");
        printf("vocab:        %d\nhidden:       %d\nlayers:       %d (%d dense)\n", i->vocab_size,
               i->hidden_size, i->num_layers, i->first_dense_layers);
        printf("attention:    %d heads, q_lora %d, kv_lora %d, nope %d, rope %d, v %d\n", i->num_heads,
               i->q_lora_rank, i->kv_lora_rank, i->qk_nope_dim, i->qk_rope_dim, i->v_head_dim);
        printf("experts:      %d routed (%d groups, %d kept, %d per token), %d shared\n",
               i->n_routed_experts, i->n_group, i->topk_group, i->experts_per_token, i->n_shared_experts);
        if (i->has_indexer)
            printf("indexer:      %d heads x %d, top-k %d\n", i->index_n_heads, i->index_head_dim, i->index_topk);
        printf("scale_fmt:    %s\n", i->scale_ue8m0 ? "ue8m0" : "none");
        printf("tensors:      %d, %lld bytes\n", n, (long long)i->weight_bytes);
        for (int d = 0; d < ndt; d++)
            printf("  %-10s  %llu bytes\n", dt_name[d], (unsigned long long)dt_bytes[d]);
        printf("routed expert bytes per layer:\n");
        for (int l = 0; l < L; l++)
            if (expert_bytes[l])
                printf("  layer %-4d  %llu\n", l, (unsigned long long)expert_bytes[l]);
        printf("validation:   OK\n");
    }
    free(expert_bytes);
    ds_model_free(m);
    return EXIT_OK;
}
