/* common.h — what every dsinfer command-line tool shares: exit codes,
 * --help/--version handling, number parsing and whole-file reads. */
#ifndef DS_TOOLS_COMMON_H
#define DS_TOOLS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include "dsinfer.h"

/* Exit codes, documented in every man page. */
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,     /* bad command line */
    EXIT_INPUT = 2,     /* bad input file or model */
    EXIT_IO = 3,        /* cannot read or write a file */
    EXIT_RUNTIME = 4    /* failure while running (out of memory, context full) */
};

extern const char *tool_name;

/* -q / -v, the same in every tool: -1 quiet (errors only), 0 normal,
 * 1 verbose (model summary, placement, timings, expert cache counters). */
extern int tool_verbosity;
/* Prints "NAME: message" to stderr, only with -v. */
void tool_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Seconds on a monotonic clock. */
double tool_now(void);

/* Prints "NAME: message" to stderr and exits with code. */
void tool_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Maps a library status to an exit code (format/input -> 2, I/O -> 3, ...). */
int tool_exit_code(ds_status s);
/* Dies with the library error's message and the matching exit code. */
void tool_die_err(const ds_error *err) __attribute__((noreturn));
void tool_print_version(void) __attribute__((noreturn));

/* Strict parsers: the whole string must be a number within [lo, hi], else
 * tool_die(EXIT_USAGE, "invalid value for OPT: ..."). */
long tool_parse_long(const char *opt, const char *s, long lo, long hi);
double tool_parse_double(const char *opt, const char *s, double lo, double hi);
uint64_t tool_parse_u64(const char *opt, const char *s);

/* A byte size with an optional K/M/G/T suffix (powers of 1024): "12G". */
int64_t tool_parse_size(const char *opt, const char *s);
/* --mem-budget: a size (see tool_parse_size), "auto" (0: resident when the
 * checkpoint fits in memory, else stream in what fits) or "all"
 * (DS_EXPERT_BUDGET_ALL: every expert resident whatever the memory). */
int64_t tool_parse_budget(const char *opt, const char *s);
/* --kv-cache=fp8|f32 */
ds_kv_type tool_parse_kv(const char *opt, const char *s);
/* --precision=f32|bf16 (ds_precision in dsinfer.h). */
ds_precision tool_parse_precision(const char *opt, const char *s);
/* The --precision lines of every tool's help: PAD (spaces) aligns the text
 * with the tool's other options, DEF is the tool's default. */
#define TOOL_PRECISION_HELP(PAD, DEF)                                                                   \
    "      --precision P" PAD "weight products: bf16 (activations rounded to\n"                      \
    "                   " PAD "bf16, against Q4_K weights to int8 levels; prefill\n"                    \
    "                   " PAD "about twice as fast with AVX512_BF16) or f32\n"                          \
    "                   " PAD "(exact); default " DEF "\n"
/* With -v: the precision asked for and whether this CPU has AVX512_BF16 for it. */
void tool_info_precision(ds_precision p);
/* --io=uring|pread|auto */
ds_io_mode tool_parse_io(const char *opt, const char *s);
/* --numa: on (default; threads and experts placed by node), off, or
 * replicate (also a copy of the dense weights per node). */
int tool_parse_numa(const char *opt, const char *s);
/* Its help line, the same in every tool. */
#define TOOL_HELP_NUMA \
    "      --numa MODE          on (default: threads and experts placed by NUMA node), off,\n" \
    "                           or replicate (also one copy of the dense weights per node)\n"

/* The model used when --model is absent: $DSINFER_MODEL, else the tiny
 * checkpoint built by `make` in the build tree, else its installed copy. */
const char *tool_default_model(void);
/* Loads the checkpoint in dir or dies with the library's message and the
 * matching exit code (missing files 3, bad checkpoint 2); with -v describes
 * what was loaded and how (shapes, kernels, weight placement, load time). */
ds_model *tool_load_model(const char *dir, const ds_load_params *lp);
/* Warns (unless -q) when the context's KV cache could not be locked in RAM,
 * naming the `ulimit -l` that would allow it. */
void tool_check_kv_locked(const ds_context *c);
/* With -v: the expert cache counters (hits, misses, bytes read, stalls). */
void tool_info_experts(ds_model *m);

/* DIR/tokenizer.json, else the installed or source-tree V3.2 tokenizer;
 * NULL with err set when none loads. */
ds_tokenizer *tool_load_tokenizer(const char *model_dir, ds_error *err);

/* Reads a whole file (NUL-terminated, *len excludes the NUL); NULL on error
 * with errno set. */
char *tool_read_file(const char *path, size_t *len);

/* Parses a comma- or space-separated list of integer token ids. Dies on bad input. */
int32_t *tool_parse_ids(const char *opt, const char *s, int *n);

#endif
