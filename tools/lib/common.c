/* common.c — shared tool helpers (see common.h). */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

int tool_verbosity;

/* At exit: a report that could not be written (a full disk, /dev/full)
 * must not end in status 0.  Registered first, so it runs after the other
 * handlers (outfiles.c's clean-up). */
static void check_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "%s: cannot write standard output: %s\n", tool_name, strerror(errno ? errno : EIO));
        _exit(EXIT_IO);
    }
}

/* Before main.  An absurd OMP_NUM_THREADS (more than 8 per CPU, see
 * ds_default_threads) would start that many threads in every parallel
 * region and exhaust memory; the tools that never load a model
 * (dsinfer-quantize's converters) go through no ds_model_load to catch it. */
__attribute__((constructor)) static void tool_start(void)
{
    atexit(check_stdout);
    const int n = ds_default_threads();
    if (n != omp_get_max_threads())
        omp_set_num_threads(n);
}

/* "NAME: message\n" on stderr. */
static void say(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tool_info(const char *fmt, ...)
{
    if (tool_verbosity < 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
}

double tool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void tool_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    exit(code);
}

int tool_exit_code(ds_status s)
{
    switch (s) {
    case DS_OK: return EXIT_OK;
    case DS_ERR_INVALID_ARG: return EXIT_USAGE;
    case DS_ERR_IO: return EXIT_IO;
    case DS_ERR_FORMAT:
    case DS_ERR_UNSUPPORTED:
    case DS_ERR_INPUT: return EXIT_INPUT;
    default: return EXIT_RUNTIME;
    }
}

void tool_die_err(const ds_error *err)
{
    tool_die(tool_exit_code(err->code), "%s", err->msg[0] ? err->msg : ds_status_str(err->code));
}

void tool_print_version(void)
{
    printf("%s (dsinfer) %s\n", tool_name, ds_version());
    exit(EXIT_OK);
}

long tool_parse_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected an integer in [%ld, %ld])",
                 opt, s, lo, hi);
    return v;
}

double tool_parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a number in [%g, %g])",
                 opt, s, lo, hi);
    return v;
}

uint64_t tool_parse_u64(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    /* strtoull skips blanks, then takes "-1" as 2^64 - 1 */
    if (*s < '0' || *s > '9')
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a non-negative integer)", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a non-negative integer)", opt, s);
    return (uint64_t)v;
}

char *tool_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            if (ferror(f)) {
                free(buf);
                buf = NULL;
                errno = EIO;
            }
            break;
        }
        char *nb = realloc(buf, cap * 2 + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len)
            *len = n;
    }
    return buf;
}

int32_t *tool_parse_ids(const char *opt, const char *s, int *n)
{
    int cap = 16, cnt = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    const char *p = s;
    if (!ids)
        tool_die(EXIT_RUNTIME, "out of memory");
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX)
            tool_die(EXIT_USAGE, "invalid token id list for %s near '%.20s'", opt, p);
        if (cnt == cap) {
            cap *= 2;
            ids = realloc(ids, sizeof(int32_t) * cap);
            if (!ids)
                tool_die(EXIT_RUNTIME, "out of memory");
        }
        ids[cnt++] = (int32_t)v;
        p = end;
    }
    *n = cnt;
    return ids;
}

int64_t tool_parse_size(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1.0;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B')
        end += *end == 'i' ? (end[1] == 'B' ? 2 : 1) : 1;
    if (errno || end == s || *end || !(v >= 0) || v * mul > 9.0e18)
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected a size such as 512M or 12G)", opt, s);
    return (int64_t)(v * mul);
}

int64_t tool_parse_budget(const char *opt, const char *s)
{
    if (strcmp(s, "auto") == 0)
        return 0;
    if (strcmp(s, "all") == 0)
        return DS_EXPERT_BUDGET_ALL;
    if (*s < '0' || *s > '9')
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected auto, all or a size such as 12G)", opt, s);
    const int64_t v = tool_parse_size(opt, s);
    if (v <= 0)   /* 0 is the API's "auto": a budget of nothing is a mistake, not a request for it */
        tool_die(EXIT_USAGE, "invalid value for %s: '%s' (a budget of 0 bytes; auto is the default)", opt, s);
    return v;
}

ds_kv_type tool_parse_kv(const char *opt, const char *s)
{
    if (strcmp(s, "fp8") == 0)
        return DS_KV_FP8;
    if (strcmp(s, "f32") == 0 || strcmp(s, "fp32") == 0)
        return DS_KV_F32;
    if (strcmp(s, "fp8-compact") == 0)
        return DS_KV_FP8_COMPACT;
    tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected fp8, fp8-compact or f32)", opt, s);
}

ds_precision tool_parse_precision(const char *opt, const char *s)
{
    if (strcmp(s, "f32") == 0 || strcmp(s, "fp32") == 0)
        return DS_PRECISION_F32;
    if (strcmp(s, "bf16") == 0)
        return DS_PRECISION_BF16;
    tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected f32 or bf16)", opt, s);
}

void tool_info_precision(ds_precision p)
{
    if (p == DS_PRECISION_BF16 && !ds_precision_bf16_native())
        tool_info("precision bf16 (activations rounded; this CPU or kernel level has no AVX512_BF16: no speed-up)");
    else if (p == DS_PRECISION_BF16)
        tool_info("precision bf16 (activations rounded; AVX512_BF16 for products of >= %d tokens)", DS_BF16_MIN_TOKENS);
    else
        tool_info("precision f32 (exact)");
}

ds_io_mode tool_parse_io(const char *opt, const char *s)
{
    if (strcmp(s, "uring") == 0 || strcmp(s, "io_uring") == 0)
        return DS_IO_MODE_URING;
    if (strcmp(s, "pread") == 0)
        return DS_IO_MODE_PREAD;
    if (strcmp(s, "auto") == 0)
        return DS_IO_MODE_AUTO;
    tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected uring, pread or auto)", opt, s);
}

int tool_parse_numa(const char *opt, const char *s)
{
    if (strcmp(s, "on") == 0 || strcmp(s, "auto") == 0)
        return DS_NUMA_ON;
    if (strcmp(s, "off") == 0)
        return DS_NUMA_OFF;
    if (strcmp(s, "replicate") == 0)
        return DS_NUMA_REPLICATE;
    tool_die(EXIT_USAGE, "invalid value for %s: '%s' (expected on, off or replicate)", opt, s);
}

const char *tool_default_model(void)
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

ds_tokenizer *tool_load_tokenizer(const char *model_dir, ds_error *err)
{
    char path[4096];
    ds_tokenizer *t = NULL;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", model_dir) >= sizeof path) {
        snprintf(err->msg, sizeof err->msg, "path too long: %s", model_dir);
        err->code = DS_ERR_INVALID_ARG;
        return NULL;
    }
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/tokenizer-v32.json", DS_DATADIR);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/data/tokenizer-v32.json", DS_SRCDIR);
    return ds_tokenizer_load(path, &t, err) == DS_OK ? t : NULL;
}

void tool_check_kv_locked(const ds_context *c)
{
    if (tool_verbosity < 0 || !c || ds_context_kv_locked(c))
        return;
    fprintf(stderr, "%s: warning: the %.1f MiB KV cache is not locked in RAM (RLIMIT_MEMLOCK too low; "
            "`ulimit -l %zu` or more allows it); continuing unpinned\n", tool_name,
            (double)ds_context_kv_bytes(c) / 1048576.0, (ds_context_kv_bytes(c) + 1023) / 1024);
}

ds_model *tool_load_model(const char *dir, const ds_load_params *lp)
{
    ds_error err;
    ds_model *m;
    /* The forward pass allocates its activations per layer (megabytes each
     * at prefill) and frees them again.  With glibc's defaults those come
     * from fresh mmaps or from heap top that free() has just trimmed, so
     * every layer page-faults its buffers in again: a quarter of a 512-token
     * prefill on one thread went to zeroing new pages.  Keeping buffers up
     * to 64 MiB on the heap and the freed memory in the process (the tools
     * run one model for their whole life) makes them reused. */
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    double t0 = tool_now();
    if (ds_model_load(dir, lp, &m, &err) != DS_OK)
        tool_die_err(&err);
    const ds_model_info *mi = ds_model_get_info(m);
    if (lp->numa == DS_NUMA_REPLICATE && mi->numa_nodes > 1 && mi->numa_replicas < 2)
        fprintf(stderr, "%s: warning: --numa replicate: %d copies of the dense weights do not fit in half of the "
                "available memory; one copy is shared by all nodes\n", tool_name, mi->numa_nodes);
    if (tool_verbosity < 1)
        return m;
    tool_info("loaded %s in %.2f s: %s, %d layers (%d dense), hidden %d, %d heads, vocab %d",
              dir, tool_now() - t0, mi->model_type, mi->num_layers, mi->first_dense_layers,
              mi->hidden_size, mi->num_heads, mi->vocab_size);
    tool_info("experts: %d routed (%d per token) + %d shared; indexer: %s",
              mi->n_routed_experts, mi->experts_per_token, mi->n_shared_experts,
              mi->has_indexer ? "yes (DSA)" : "no (dense MLA)");
    tool_info("weights: %.1f MiB in %lld tensors, %.1f MiB routed experts, %.1f MiB read per token",
              (double)mi->weight_bytes / 1048576.0, (long long)mi->n_tensors,
              (double)mi->expert_bytes / 1048576.0, (double)mi->active_bytes_per_token / 1048576.0);
    ds_expert_stats st;
    ds_model_expert_stats(m, &st);
    if (st.streaming)
        tool_info("expert cache: %d slabs of %.1f MiB, streamed with %s", st.slots,
                  (double)st.slab_bytes / 1048576.0, st.io_backend);
    else
        tool_info("expert cache: every expert resident");
    tool_info("kernels: %s; threads: %ld; NUMA nodes: %d; dense weight copies: %d (%.1f MiB each)",
              ds_kernel_isa(), lp->threads > 0 ? (long)lp->threads : sysconf(_SC_NPROCESSORS_ONLN),
              mi->numa_nodes, mi->numa_replicas, (double)mi->replica_bytes / 1048576.0);
    return m;
}

void tool_info_experts(ds_model *m)
{
    if (tool_verbosity < 1 || !m)
        return;
    ds_expert_stats st;
    ds_model_expert_stats(m, &st);
    if (!st.streaming)
        return;
    uint64_t look = st.hits + st.misses;
    tool_info("expert cache: %llu hits, %llu misses (hit rate %.3f), %.1f MiB read, %.2f s stalled, "
              "prefetch %llu/%llu used, prediction %llu/%llu right",
              (unsigned long long)st.hits, (unsigned long long)st.misses,
              look ? (double)st.hits / (double)look : 0.0, (double)st.bytes_read / 1048576.0,
              st.stall_seconds, (unsigned long long)st.prefetch_used,
              (unsigned long long)st.prefetched, (unsigned long long)st.predicted_right,
              (unsigned long long)st.predicted);
}
