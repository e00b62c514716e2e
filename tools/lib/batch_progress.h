/* batch_progress.h — what dsinfer-batch tells the operator on stderr: a
 * live line on a terminal, periodic JSON lines for log collectors, and the
 * final summary (text, or one JSON line in JSON mode). */
#ifndef DS_BATCH_PROGRESS_H
#define DS_BATCH_PROGRESS_H

#include <stdint.h>

typedef enum batch_progress_mode {
    BATCH_PROGRESS_NONE = 0,
    BATCH_PROGRESS_TTY,
    BATCH_PROGRESS_JSON
} batch_progress_mode;

/* Counters of one run, owned by the caller. */
typedef struct batch_counts {
    long total;              /* request lines of this shard */
    long resumed;            /* of those, already complete in the output before this run */
    long ok, errors;         /* records written by this run */
    long in_flight;
    uint64_t prompt_tokens, completion_tokens;   /* of the records written */
    uint64_t generated_tokens;                   /* by the engine, in-flight ones included */
} batch_counts;

typedef struct batch_progress {
    batch_progress_mode mode;
    int quiet;               /* no summary either */
    double t0, last;
    int line_shown;          /* a live line is on the terminal */
} batch_progress;

void batch_progress_init(batch_progress *p, batch_progress_mode mode, int quiet);
/* Shows progress when its period has passed (or force). */
void batch_progress_update(batch_progress *p, const batch_counts *c, int force);
/* Clears the live line before other text goes to stderr. */
void batch_progress_clear(batch_progress *p);
/* The final summary; interrupted says the run stopped on a signal. */
void batch_progress_summary(batch_progress *p, const batch_counts *c, int interrupted);

#endif
