/* batch_progress.c — progress and summary output of dsinfer-batch (see
 * batch_progress.h).  Everything goes to stderr: stdout stays free, and
 * the results are in the output file anyway. */
#include <stdio.h>
#include "batch_progress.h"
#include "common.h"
#include "batch_util.h"

#define TTY_PERIOD_S 0.25
#define JSON_PERIOD_S 1.0

void batch_progress_init(batch_progress *p, batch_progress_mode mode, int quiet)
{
    *p = (batch_progress){.mode = quiet ? BATCH_PROGRESS_NONE : mode, .quiet = quiet};
    p->t0 = p->last = tool_now();
}

static long done_of(const batch_counts *c)
{
    return c->resumed + c->ok + c->errors;
}

/* Seconds to go at this run's pace; -1 when unknown. */
static double eta_s(const batch_counts *c, double elapsed)
{
    long finished = c->ok + c->errors, left = c->total - done_of(c);
    if (finished == 0 || elapsed <= 0)
        return left == 0 ? 0 : -1;
    return left * (elapsed / finished);
}

static void format_duration(char *buf, size_t n, double s)
{
    if (s < 0)
        snprintf(buf, n, "?");
    else if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, n, "%dh%02dm", (int)s / 3600, (int)s / 60 % 60);
}

static void show_tty(batch_progress *p, const batch_counts *c, double elapsed)
{
    char eta[32];
    format_duration(eta, sizeof eta, eta_s(c, elapsed));
    fprintf(stderr, "\r%ld/%ld (%.0f%%) done, %ld running, %ld errors, %.1f tok/s, ETA %s\033[K", done_of(c), c->total,
            c->total ? 100.0 * done_of(c) / c->total : 100.0, c->in_flight, c->errors, elapsed > 0 ? c->generated_tokens / elapsed : 0.0, eta);
    fflush(stderr);
    p->line_shown = 1;
}

static void show_json(const batch_counts *c, double elapsed)
{
    fprintf(stderr,
            "{\"event\":\"progress\",\"done\":%ld,\"total\":%ld,\"resumed\":%ld,\"ok\":%ld,\"errors\":%ld,"
            "\"in_flight\":%ld,\"generated_tokens\":%llu,\"tokens_per_s\":%.2f,\"elapsed_s\":%.2f,\"eta_s\":%.1f}\n",
            done_of(c), c->total, c->resumed, c->ok, c->errors, c->in_flight,
            (unsigned long long)c->generated_tokens, elapsed > 0 ? c->generated_tokens / elapsed : 0.0, elapsed,
            eta_s(c, elapsed));
    fflush(stderr);
}

void batch_progress_update(batch_progress *p, const batch_counts *c, int force)
{
    double now = tool_now();
    if (p->mode == BATCH_PROGRESS_NONE)
        return;
    if (!force && now - p->last < (p->mode == BATCH_PROGRESS_TTY ? TTY_PERIOD_S : JSON_PERIOD_S))
        return;
    p->last = now;
    if (p->mode == BATCH_PROGRESS_TTY)
        show_tty(p, c, now - p->t0);
    else
        show_json(c, now - p->t0);
}

void batch_progress_clear(batch_progress *p)
{
    if (p->line_shown) {
        fputs("\r\033[K", stderr);
        p->line_shown = 0;
    }
}

void batch_progress_summary(batch_progress *p, const batch_counts *c, int interrupted)
{
    double wall = tool_now() - p->t0;
    double tps = wall > 0 ? c->generated_tokens / wall : 0, dps = wall > 0 ? (c->ok + c->errors) / wall : 0;
    batch_progress_clear(p);
    if (p->quiet)
        return;
    if (p->mode == BATCH_PROGRESS_JSON) {
        fprintf(stderr,
                "{\"event\":\"summary\",\"status\":\"%s\",\"total\":%ld,\"resumed\":%ld,\"ok\":%ld,\"errors\":%ld,"
                "\"remaining\":%ld,\"prompt_tokens\":%llu,\"completion_tokens\":%llu,\"wall_s\":%.2f,"
                "\"tokens_per_s\":%.2f,\"documents_per_s\":%.3f}\n",
                interrupted ? "interrupted" : "complete", c->total, c->resumed, c->ok, c->errors,
                c->total - done_of(c), (unsigned long long)c->prompt_tokens,
                (unsigned long long)c->completion_tokens, wall, tps, dps);
        return;
    }
    fprintf(stderr,
            "dsinfer-batch: %s: %ld documents written (%ld ok, %ld errors), %ld already done, %ld left of %ld; "
            "tokens in %llu, out %llu; %.1f s, %.1f tok/s, %.2f documents/s\n",
            interrupted ? "interrupted" : "complete", c->ok + c->errors, c->ok, c->errors, c->resumed,
            c->total - done_of(c), c->total, (unsigned long long)c->prompt_tokens,
            (unsigned long long)c->completion_tokens, wall, tps, dps);
}
