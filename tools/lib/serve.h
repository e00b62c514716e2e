/* serve.h — what the parts of dsinfer-serve share: the server state (model,
 * tokenizer, engine, engine thread, counters), one generation job (the
 * bridge between an HTTP request and an engine request), request parsing
 * and the HTTP front end.
 *
 * Threads: libmicrohttpd's threads run the HTTP handlers (parse, tokenize,
 * submit); one engine thread drives ds_engine_step() and, through the token
 * callback, turns tokens into text, chunks and results inside the job.  A
 * job's output is handed over under the job's mutex. */
#ifndef DS_SERVE_H
#define DS_SERVE_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include "dsinfer.h"

/* A growable byte buffer (always NUL-terminated when non-empty). */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;
int sbuf_add(sbuf *b, const char *s, size_t n);    /* 0 ok, -1 out of memory */
int sbuf_addf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(sbuf *b);

typedef struct serve_config {
    const char *model_dir, *host, *api_key, *model_name;
    int port, parallel, ctx_size, threads, thinking_default, max_queue, quiet;
    size_t max_body;
    ds_kv_type kv;
    ds_precision precision;
    int64_t mem_budget;           /* routed-expert RAM budget (0 = all resident) */
    ds_io_mode io;
    int numa;                  /* DS_NUMA_* (--numa) */
} serve_config;

/* The endpoints, for routing and the request counters of /metrics. */
typedef enum endpoint {
    EP_CHAT, EP_COMPLETIONS, EP_MODELS, EP_HEALTH, EP_METRICS, EP_UNKNOWN, EP_COUNT
} endpoint;

#define SERVE_MAX_STATUS_KINDS 32

typedef struct server {
    serve_config cfg;
    ds_model *model;
    ds_tokenizer *tok;
    ds_engine *engine;
    ds_json_vocab *json_vocab;    /* token table for response_format constraints */
    const ds_model_info *info;
    ds_chat_format chat_fmt;
    int ctx_size;                 /* positions per slot, as the engine resolved it */
    int32_t extra_eos;            /* tokenizer EOS when it differs from the model's, else -1 */
    int32_t *forced;              /* TESTING ONLY: the tokens that replace every chat
                                   * completion's (DSINFER_TEST_FORCED_COMPLETION) */
    int n_forced;
    struct MHD_Daemon *daemon;
    time_t started;

    pthread_t engine_thread;
    pthread_mutex_t mu;           /* guards everything below */
    pthread_cond_t wake;          /* the engine thread sleeps here when idle */
    int kick, quit;
    int draining;                 /* SIGTERM seen: no new generation requests */
    int in_flight;                /* HTTP requests between first call and completion */
    int live_jobs;                /* jobs submitted and not yet finished by the engine */
    struct job *jobs;             /* live jobs (to cancel them when draining times out) */
    /* counters for /metrics */
    uint64_t req_count[EP_COUNT][SERVE_MAX_STATUS_KINDS];
    int req_status[SERVE_MAX_STATUS_KINDS];
    int n_status;
    uint64_t disconnects, stop_string_hits, engine_errors;
    double tps, win_t0;           /* generated tokens/s over the last window */
    uint64_t win_gen0;
} server;

void server_kick(server *s);
void server_count_request(server *s, endpoint ep, int status);
double serve_now(void);

/* ---- jobs (serve_job.c) ---------------------------------------------- */
typedef enum job_kind { JOB_CHAT, JOB_COMPLETION } job_kind;

/* What a request asks for, after validation. */
typedef struct job_params {
    job_kind kind;
    int stream, include_usage;
    int32_t *prompt;
    int n_prompt;
    int max_tokens;               /* 0 = until the context is full */
    ds_sampler_params sp;
    int ignore_eos;
    char **stop;                  /* text-level stop strings */
    int n_stop;
    int logprobs, top_logprobs;   /* logprobs: 0 off, 1 on */
    int thinking;
    ds_json_schema *schema;       /* response_format json_schema / json_object; NULL = free text */
} job_params;
void job_params_free(job_params *p);

typedef struct job job;

/* A new job owning p (its fields are moved in); one reference for the
 * caller.  NULL when out of memory (p is then freed). */
job *job_create(server *s, job_params *p);
void job_unref(job *j);
/* Submits to the engine (the engine takes its own reference).  The
 * connection is resumed whenever output arrives while it is suspended. */
ds_status job_submit(job *j, struct MHD_Connection *conn, ds_error *err);
/* The HTTP side is gone (request completed or aborted): never touch conn
 * again, and cancel the generation when it is still running. */
void job_detach(job *j);
/* Non-zero once the engine has finished the job; otherwise suspends conn
 * (to be resumed when it finishes) and returns 0. */
int job_wait_done(job *j, struct MHD_Connection *conn);
/* Streaming body reader for MHD_create_response_from_callback. */
ssize_t job_sse_reader(void *cls, uint64_t pos, char *buf, size_t max);
/* The finished job as a response body (chat.completion / text_completion
 * object), or an error: *status is 200, or 500 with an error object. */
char *job_result_json(job *j, int *status);
int job_prompt_tokens(const job *j);
int job_completion_tokens(job *j);      /* -1 until the job is done */
/* Cancels every live job (draining ran out of time). */
void jobs_cancel_all(server *s);
/* Cancels the requests whose client closed its connection (engine thread,
 * between steps). */
void jobs_cancel_gone(server *s);

/* ---- request parsing (serve_api.c) ------------------------------------ */
typedef struct api_error {
    int status;
    const char *type, *param, *code;
    char msg[512];
} api_error;

/* Parses and validates a request body for kind; 0 on success, else -1 with e. */
int api_parse_request(server *s, job_kind kind, const char *body, size_t len, job_params *p,
                      api_error *e);
/* {"error": {...}} as a malloc'ed string. */
char *api_error_json(const api_error *e);
void api_set_error(api_error *e, int status, const char *type, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A JSON string value for text that should be UTF-8 (invalid bytes become U+FFFD). */
json_t *api_json_text(const char *s, size_t len);

/* ---- HTTP front end (serve_http.c) ------------------------------------ */
/* Starts libmicrohttpd on cfg.host:cfg.port; 0 ok, else -1 with a message in msg. */
int http_start(server *s, char *msg, size_t msg_size);
int http_port(server *s);
/* Stops accepting new connections (the listening socket is closed). */
void http_quiesce(server *s);
void http_stop(server *s);

#endif
