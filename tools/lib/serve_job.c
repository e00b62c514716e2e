/* serve_job.c — one generation job of dsinfer-serve: the engine's token
 * callback and everything it drives on the engine thread (streaming
 * detokenizer, text-level stop strings with hold-back, the chat completion
 * parser that splits reasoning / content / tool calls (DSML or the legacy
 * V3 tokens, by the model's chat format), log-softmax logprobs), the SSE
 * chunks of a streaming response, the final
 * chat.completion / text_completion object, and the hand-over of all that
 * to the HTTP thread (mutex, suspend / resume of the connection). */
#define _GNU_SOURCE          /* memmem */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include "serve.h"

/* ---- byte buffers ------------------------------------------------------ */

int sbuf_add(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int sbuf_addf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof tmp)
        return sbuf_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sbuf_add(b, big, (size_t)n);
    free(big);
    return rc;
}

void sbuf_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- the job ------------------------------------------------------------ */

struct job {
    server *srv;
    job_params p;
    char id[48];
    long long created;
    uint64_t eid;                 /* engine request id */
    pthread_mutex_t mu;           /* guards refs, conn, suspended, detached, done, sse */
    int refs;
    struct MHD_Connection *conn;
    int suspended, detached, done;
    int gone;                     /* the client was seen to close its socket */
    struct job *prev, *next;      /* server's live list (under srv->mu) */

    /* engine-thread state: touched only by the token callback */
    ds_detok *dt;
    ds_chat_stream *cs;
    sbuf hold;                    /* text held back as a possible stop-string prefix */
    size_t max_stop;
    int stop_hit;
    int n_gen;
    size_t text_off;              /* completion bytes so far (legacy text_offset) */
    json_t *lp_pending;           /* logprob entries not yet attached to a chunk */

    /* results, read by the HTTP thread once done is set */
    sbuf content, reasoning;
    json_t *tool_calls;
    json_t *logprobs;             /* every entry, chat layout */
    ds_finish_reason why;
    char err[256];

    /* streaming output not yet taken by the connection */
    sbuf sse;
    size_t sse_off;
};

void job_params_free(job_params *p)
{
    free(p->prompt);
    ds_json_schema_free(p->schema);
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    memset(p, 0, sizeof *p);
}

job *job_create(server *s, job_params *p)
{
    static uint64_t counter;
    job *j = calloc(1, sizeof *j);
    if (!j) {
        job_params_free(p);
        return NULL;
    }
    j->srv = s;
    j->p = *p;
    memset(p, 0, sizeof *p);
    j->refs = 1;
    j->created = (long long)time(NULL);
    uint64_t n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    snprintf(j->id, sizeof j->id, "%s-%08llx%08llx", j->p.kind == JOB_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(s->started & 0xffffffff), (unsigned long long)n);
    pthread_mutex_init(&j->mu, NULL);
    for (int i = 0; i < j->p.n_stop; i++)
        if (strlen(j->p.stop[i]) > j->max_stop)
            j->max_stop = strlen(j->p.stop[i]);
    /* chat keeps special tokens: the parser needs </think>, DSML and EOS markers */
    j->dt = ds_detok_create(s->tok, j->p.kind != JOB_CHAT);
    j->cs = j->p.kind == JOB_CHAT ? ds_chat_stream_create_for(s->chat_fmt, j->p.thinking) : NULL;
    j->tool_calls = json_array();
    j->logprobs = json_array();
    j->lp_pending = json_array();
    if (!j->dt || (j->p.kind == JOB_CHAT && !j->cs) || !j->tool_calls || !j->logprobs || !j->lp_pending) {
        job_unref(j);
        return NULL;
    }
    return j;
}

void job_unref(job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left > 0)
        return;
    job_params_free(&j->p);
    ds_detok_free(j->dt);
    ds_chat_stream_free(j->cs);
    sbuf_free(&j->hold);
    sbuf_free(&j->content);
    sbuf_free(&j->reasoning);
    sbuf_free(&j->sse);
    json_decref(j->tool_calls);
    json_decref(j->logprobs);
    json_decref(j->lp_pending);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

int job_prompt_tokens(const job *j) { return j->p.n_prompt; }

int job_completion_tokens(job *j)
{
    pthread_mutex_lock(&j->mu);
    int n = j->done ? j->n_gen : -1;     /* n_gen belongs to the engine thread until done */
    pthread_mutex_unlock(&j->mu);
    return n;
}

/* ---- logprobs ------------------------------------------------------------ */

/* {"token", "logprob", "bytes"} of one token. */
static json_t *token_json(const server *s, int32_t id, double lp)
{
    size_t len = 0;
    const char *b = ds_tokenizer_token_bytes(s->tok, id, &len);
    json_t *bytes = json_array();
    if (!isfinite(lp))
        lp = -9999.0;              /* JSON has no infinity; OpenAI uses -9999 for "impossible" */
    for (size_t i = 0; b && i < len; i++)
        json_array_append_new(bytes, json_integer((unsigned char)b[i]));
    return json_pack("{s:o, s:f, s:o}", "token", api_json_text(b ? b : "", b ? len : 0),
                     "logprob", lp, "bytes", bytes);
}

/* log-softmax of the raw logits at the sampled token, and the top_logprobs
 * most likely alternatives (k <= 20: one pass keeping a small sorted list). */
static json_t *logprob_entry(const job *j, int32_t tok, const float *logits)
{
    const server *s = j->srv;
    int V = s->info->vocab_size;
    float mx = logits[0];
    for (int i = 1; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    json_t *e = token_json(s, tok, tok < V ? logits[tok] - lse : -INFINITY);
    int k = j->p.top_logprobs < V ? j->p.top_logprobs : V, n = 0;
    int top[32];
    k = k < 32 ? k : 32;
    for (int i = 0; i < V && k > 0; i++) {
        if (n == k && logits[i] <= logits[top[n - 1]])
            continue;
        int at = n < k ? n++ : n - 1;           /* drop the smallest when full */
        while (at > 0 && logits[top[at - 1]] < logits[i]) {
            top[at] = top[at - 1];
            at--;
        }
        top[at] = i;
    }
    json_t *arr = json_array();
    for (int r = 0; r < n; r++)
        json_array_append_new(arr, token_json(s, top[r], logits[top[r]] - lse));
    json_object_set_new(e, "top_logprobs", arr);
    return e;
}

/* The legacy /v1/completions layout of some chat-layout entries. */
static json_t *legacy_logprobs(json_t *entries, size_t *text_off)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        json_array_append(tokens, json_object_get(e, "token"));
        json_array_append(lps, json_object_get(e, "logprob"));
        json_t *m = json_object(), *t;
        size_t k;
        json_array_foreach(json_object_get(e, "top_logprobs"), k, t)
            json_object_set(m, json_string_value(json_object_get(t, "token")), json_object_get(t, "logprob"));
        json_array_append_new(tops, m);
        json_array_append_new(offs, json_integer((json_int_t)*text_off));
        *text_off += json_array_size(json_object_get(e, "bytes"));
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

/* ---- SSE chunks ----------------------------------------------------------- */

static json_t *usage_json(const job *j)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", j->p.n_prompt, "completion_tokens", j->n_gen,
                     "total_tokens", j->p.n_prompt + j->n_gen);
}

/* Appends "data: {chunk}\n\n" with one choice (choice is stolen). */
static void emit_chunk(job *j, sbuf *out, json_t *choice)
{
    int chat = j->p.kind == JOB_CHAT;
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", j->id, "object",
                          chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)j->created, "model", j->srv->cfg.model_name, "choices", choice);
    if (!c)
        return;
    if (j->p.include_usage)
        json_object_set_new(c, "usage", json_null());
    char *s = json_dumps(c, JSON_COMPACT);
    if (s) {
        sbuf_addf(out, "data: %s\n\n", s);
        free(s);
    }
    json_decref(c);
}

/* Takes the pending logprob entries for the next chunk (json null when off). */
static json_t *take_logprobs(job *j)
{
    if (!j->p.logprobs)
        return json_null();
    json_t *e = j->lp_pending;
    j->lp_pending = json_array();
    if (j->p.kind == JOB_CHAT)
        return json_pack("{s:o}", "content", e);
    json_t *l = legacy_logprobs(e, &j->text_off);
    json_decref(e);
    return l;
}

static void emit_delta(job *j, sbuf *out, json_t *delta, const char *finish)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    emit_chunk(j, out, json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs",
                                 take_logprobs(j), "finish_reason", fin));
}

static void emit_text(job *j, sbuf *out, const char *text, size_t len, const char *finish)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    emit_chunk(j, out, json_pack("{s:o, s:i, s:o, s:o}", "text", api_json_text(text, len), "index", 0,
                                 "logprobs", take_logprobs(j), "finish_reason", fin));
}

/* ---- the text pipeline (engine thread) ------------------------------------ */

static void add_tool_call(job *j, sbuf *out, const char *name, const char *args)
{
    size_t index = json_array_size(j->tool_calls);
    char id[64];
    snprintf(id, sizeof id, "call_%s_%zu", strchr(j->id, '-') + 1, index);
    json_t *fn = json_pack("{s:s, s:s}", "name", name ? name : "", "arguments", args ? args : "{}");
    json_t *call = json_pack("{s:s, s:s, s:o}", "id", id, "type", "function", "function", fn);
    if (!call)
        return;
    json_array_append(j->tool_calls, call);
    if (j->p.stream) {
        json_t *delta_call = json_deep_copy(call);
        json_object_set_new(delta_call, "index", json_integer((json_int_t)index));
        emit_delta(j, out, json_pack("{s:[o]}", "tool_calls", delta_call), NULL);
    }
    json_decref(call);
}

/* Text that passed the stop filter: parsed into the message (chat) or
 * appended as completion text. */
static void deliver(job *j, sbuf *out, const char *text, size_t len, int finish)
{
    if (j->p.kind == JOB_COMPLETION) {
        if (!len)
            return;
        sbuf_add(&j->content, text, len);
        if (j->p.stream)
            emit_text(j, out, text, len, NULL);
        return;
    }
    const ds_chat_event *ev;
    size_t n = 0;
    ds_error err;
    ds_status st = finish ? ds_chat_stream_finish(j->cs, &ev, &n, &err)
                          : ds_chat_stream_push(j->cs, text, len, &ev, &n, &err);
    if (st != DS_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        if (ev[i].kind == DS_CHAT_EV_TOOL_CALL) {
            add_tool_call(j, out, ev[i].name, ev[i].arguments);
            continue;
        }
        if (!ev[i].len)
            continue;
        int reasoning = ev[i].kind == DS_CHAT_EV_REASONING;
        sbuf_add(reasoning ? &j->reasoning : &j->content, ev[i].text, ev[i].len);
        if (j->p.stream)
            emit_delta(j, out, json_pack("{s:o}", reasoning ? "reasoning_content" : "content",
                                         api_json_text(ev[i].text, ev[i].len)), NULL);
    }
}

/* Earliest occurrence of any stop string in b; -1 if none. */
static long find_stop(const job *j, const char *b, size_t len)
{
    long best = -1;
    for (int i = 0; i < j->p.n_stop; i++) {
        const char *hit = memmem(b, len, j->p.stop[i], strlen(j->p.stop[i]));
        if (hit && (best < 0 || hit - b < best))
            best = hit - b;
    }
    return best;
}

/* Length of the longest tail of b that is a proper prefix of a stop string:
 * that much must wait, since the next token may complete the stop string. */
static size_t stop_prefix_tail(const job *j, const char *b, size_t len)
{
    size_t k = j->max_stop ? j->max_stop - 1 : 0;
    for (k = k < len ? k : len; k > 0; k--)
        for (int i = 0; i < j->p.n_stop; i++)
            if (strlen(j->p.stop[i]) > k && memcmp(b + len - k, j->p.stop[i], k) == 0)
                return k;
    return 0;
}

/* Adds new text; passes on what can no longer be part of a stop string.
 * Returns 1 once a stop string is found (the text before it is passed on,
 * the rest dropped). */
static int stop_filter(job *j, sbuf *out, const char *text, size_t len, int final)
{
    if (!j->p.n_stop) {
        deliver(j, out, text, len, 0);
        return 0;
    }
    sbuf_add(&j->hold, text, len);
    long at = find_stop(j, j->hold.p ? j->hold.p : "", j->hold.len);
    if (at >= 0) {
        deliver(j, out, j->hold.p, (size_t)at, 0);
        j->hold.len = 0;
        j->stop_hit = 1;
        return 1;
    }
    size_t keep = final ? 0 : stop_prefix_tail(j, j->hold.p ? j->hold.p : "", j->hold.len);
    size_t pass = j->hold.len - keep;
    if (pass) {
        deliver(j, out, j->hold.p, pass, 0);
        memmove(j->hold.p, j->hold.p + pass, keep);
        j->hold.len = keep;
    }
    return 0;
}

static const char *finish_reason(const job *j)
{
    /* a stop string met on the last token max_tokens allowed is a stop */
    if (j->why == DS_FINISH_LENGTH && !j->stop_hit)
        return "length";
    return json_array_size(j->tool_calls) ? "tool_calls" : "stop";
}

/* Hands streamed bytes to the connection, resuming it if it waits. */
static void publish(job *j, const sbuf *out, int done)
{
    struct MHD_Connection *resume = NULL;
    pthread_mutex_lock(&j->mu);
    if (out->len && !j->detached)
        sbuf_add(&j->sse, out->p, out->len);
    if (done)
        j->done = 1;
    if (j->suspended && j->conn && (out->len || done)) {
        j->suspended = 0;
        resume = j->conn;
    }
    pthread_mutex_unlock(&j->mu);
    /* Outside the lock: a suspended connection cannot complete, so conn stays
     * valid until this resume, and only the side that cleared suspended resumes. */
    if (resume)
        MHD_resume_connection(resume);
}

static int is_detached(job *j)
{
    pthread_mutex_lock(&j->mu);
    int d = j->detached;
    pthread_mutex_unlock(&j->mu);
    return d;
}

static void on_new_token(job *j, sbuf *out, int32_t tok, const float *logits)
{
    j->n_gen++;
    if (j->stop_hit)
        return;
    if (j->p.logprobs && logits) {
        json_t *e = logprob_entry(j, tok, logits);
        json_array_append(j->logprobs, e);
        json_array_append_new(j->lp_pending, e);
    }
    char *piece = NULL;
    size_t len = 0;
    ds_error err;
    /* the chat detokenizer keeps special tokens for the parser's markers;
     * any other (a placeholder) has no place in the answer's text */
    size_t tl = 0;
    if (j->p.kind == JOB_CHAT && ds_tokenizer_is_special(j->srv->tok, tok) &&
        !ds_chat_is_marker(ds_tokenizer_token_bytes(j->srv->tok, tok, &tl), tl))
        return;
    if (ds_detok_push(j->dt, tok, &piece, &len, &err) == DS_OK)
        stop_filter(j, out, piece, len, 0);
    free(piece);
}

static void on_finish(job *j, sbuf *out, ds_finish_reason why)
{
    j->why = why;
    if (why == DS_FINISH_ERROR) {
        snprintf(j->err, sizeof j->err, "the engine failed while generating");
        if (j->p.stream) {
            api_error e;
            api_set_error(&e, 500, "server_error", NULL, NULL, "%s", j->err);
            char *s = api_error_json(&e);
            sbuf_addf(out, "data: %s\n\ndata: [DONE]\n\n", s ? s : "{}");
            free(s);
        }
        return;
    }
    if (!j->stop_hit) {
        char *tail = NULL;
        size_t len = 0;
        ds_error err;
        if (ds_detok_flush(j->dt, &tail, &len, &err) == DS_OK)
            stop_filter(j, out, tail, len, 0);
        free(tail);
        if (!j->stop_hit)
            stop_filter(j, out, "", 0, 1);
    }
    if (j->p.kind == JOB_CHAT)
        deliver(j, out, NULL, 0, 1);
    if (!j->p.stream)
        return;
    if (j->p.kind == JOB_CHAT)
        emit_delta(j, out, json_object(), finish_reason(j));
    else
        emit_text(j, out, "", 0, finish_reason(j));
    if (j->p.include_usage) {
        json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", j->id, "object",
                              j->p.kind == JOB_CHAT ? "chat.completion.chunk" : "text_completion",
                              "created", (json_int_t)j->created, "model", j->srv->cfg.model_name,
                              "choices", "usage", usage_json(j));
        char *s = json_dumps(c, JSON_COMPACT);
        if (s)
            sbuf_addf(out, "data: %s\n\n", s);
        free(s);
        json_decref(c);
    }
    sbuf_add(out, "data: [DONE]\n\n", 14);
}

static void unlink_job(job *j)
{
    server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    if (j->prev)
        j->prev->next = j->next;
    else if (s->jobs == j)
        s->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
    s->live_jobs--;
    if (j->stop_hit)
        s->stop_string_hits++;
    if (j->why == DS_FINISH_ERROR)
        s->engine_errors++;
    pthread_mutex_unlock(&s->mu);
}

/* A non-streamed job's connection stays suspended until the answer is
 * ready, and libmicrohttpd does not watch suspended sockets: a client that
 * sent its request and went away held its sequence until max_tokens or the
 * end of the context, and only then was seen to be gone.  So the engine
 * thread peeks at the socket: end of file or an error means the client is
 * gone (bytes waiting, e.g. a pipelined request, do not).  conn is valid
 * while suspended is set, under j->mu (held by the callers). */
static int conn_closed(job *j)
{
    if (j->gone || !j->suspended || !j->conn)
        return 0;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(j->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char c;
    ssize_t n = ci ? recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) : 1;
    j->gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    return j->gone;
}

static int client_gone(job *j)
{
    pthread_mutex_lock(&j->mu);
    const int gone = !j->p.stream && conn_closed(j);
    pthread_mutex_unlock(&j->mu);
    if (gone) {
        pthread_mutex_lock(&j->srv->mu);
        j->srv->disconnects++;
        pthread_mutex_unlock(&j->srv->mu);
    }
    return gone;
}

/* Between engine steps (engine thread): a prefill produces no token, so a
 * client gone while its prompt is read, or while it waits in the queue, is
 * found here, streaming or not (a suspended connection is not watched by
 * libmicrohttpd), and its request cancelled instead of holding its slot
 * through the prefill.  The list holds only jobs the engine still has. */
void jobs_cancel_gone(server *s)
{
    pthread_mutex_lock(&s->mu);
    for (job *j = s->jobs; j; j = j->next) {
        pthread_mutex_lock(&j->mu);
        const int gone = conn_closed(j);
        pthread_mutex_unlock(&j->mu);
        if (gone) {
            ds_engine_cancel(s->engine, j->eid);
            s->disconnects++;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

/* The engine's ds_token_fn (engine thread).  Non-zero asks the engine to
 * stop the sequence: a stop string was reached or the client is gone. */
static int on_token(void *user, uint64_t id, int32_t token, const float *logits, ds_finish_reason why)
{
    job *j = user;
    sbuf out = {0};
    (void)id;
    if (token >= 0) {
        /* testing only: the forced completion replaces the sampled tokens
         * (see load_forced in dsinfer-serve.c) */
        int forced_end = 0;
        if (j->srv->n_forced && j->p.kind == JOB_CHAT) {
            token = j->srv->forced[j->n_gen < j->srv->n_forced ? j->n_gen : j->srv->n_forced - 1];
            forced_end = j->n_gen + 1 >= j->srv->n_forced;
        }
        on_new_token(j, &out, token, logits);
        publish(j, &out, 0);
        sbuf_free(&out);
        return j->stop_hit || forced_end || is_detached(j) || client_gone(j);
    }
    on_finish(j, &out, why);
    publish(j, &out, 1);
    sbuf_free(&out);
    unlink_job(j);
    job_unref(j);                  /* the engine's reference */
    return 0;
}

ds_status job_submit(job *j, struct MHD_Connection *conn, ds_error *err)
{
    server *s = j->srv;
    ds_request rq;
    int32_t stop_ids[1];
    memset(&rq, 0, sizeof rq);
    rq.prompt = j->p.prompt;
    rq.n_prompt = j->p.n_prompt;
    rq.max_tokens = j->p.max_tokens;
    rq.sampling = j->p.sp;
    /* a forced completion (testing only) ends by itself, not at the model's EOS */
    rq.ignore_eos = j->p.ignore_eos || (s->n_forced && j->p.kind == JOB_CHAT);
    if (s->extra_eos >= 0 && !rq.ignore_eos) {
        stop_ids[0] = s->extra_eos;
        rq.stop_ids = stop_ids;
        rq.n_stop_ids = 1;
    }
    rq.on_token = on_token;
    rq.sample_vocab = ds_tokenizer_vocab_size(s->tok);
    rq.json_schema = j->p.schema;
    rq.json_vocab = s->json_vocab;
    rq.user = j;
    if (j->p.stream && j->p.kind == JOB_CHAT) {
        /* the role comes first, before the engine can add anything */
        emit_delta(j, &j->sse, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
    }
    j->conn = conn;
    j->refs++;                     /* the engine's, released by the final callback */
    pthread_mutex_lock(&s->mu);
    j->next = s->jobs;
    if (s->jobs)
        s->jobs->prev = j;
    s->jobs = j;
    s->live_jobs++;
    /* Under s->mu so a final callback (which unlinks under s->mu) cannot run
     * before the job is fully linked. */
    ds_status st = ds_engine_submit(s->engine, &rq, &j->eid, err);
    if (st != DS_OK) {
        if (j->next)
            j->next->prev = NULL;
        s->jobs = j->next;
        j->next = NULL;
        s->live_jobs--;
        j->refs--;
        j->conn = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (st == DS_OK)
        server_kick(s);
    return st;
}

void job_detach(job *j)
{
    pthread_mutex_lock(&j->mu);
    j->conn = NULL;
    j->suspended = 0;
    j->detached = 1;
    int running = !j->done && j->eid != 0 && !j->gone;   /* gone: cancelled and counted already */
    pthread_mutex_unlock(&j->mu);
    if (running) {
        ds_engine_cancel(j->srv->engine, j->eid);
        pthread_mutex_lock(&j->srv->mu);
        j->srv->disconnects++;
        pthread_mutex_unlock(&j->srv->mu);
        server_kick(j->srv);
    }
}

void jobs_cancel_all(server *s)
{
    pthread_mutex_lock(&s->mu);
    for (job *j = s->jobs; j; j = j->next)
        ds_engine_cancel(s->engine, j->eid);
    pthread_mutex_unlock(&s->mu);
    server_kick(s);
}

int job_wait_done(job *j, struct MHD_Connection *conn)
{
    pthread_mutex_lock(&j->mu);
    int done = j->done;
    if (!done) {
        j->conn = conn;
        j->suspended = 1;
        MHD_suspend_connection(conn);
    }
    pthread_mutex_unlock(&j->mu);
    return done;
}

ssize_t job_sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    job *j = cls;
    ssize_t n;
    (void)pos;
    pthread_mutex_lock(&j->mu);
    size_t avail = j->sse.len - j->sse_off;
    if (avail) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(buf, j->sse.p + j->sse_off, (size_t)n);
        j->sse_off += (size_t)n;
        if (j->sse_off == j->sse.len)
            j->sse_off = j->sse.len = 0;
    } else if (j->done) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* nothing yet: park the connection until the engine has more */
        j->suspended = 1;
        MHD_suspend_connection(j->conn);
        n = 0;
    }
    pthread_mutex_unlock(&j->mu);
    return n;
}

char *job_result_json(job *j, int *status)
{
    if (j->why == DS_FINISH_ERROR) {
        api_error e;
        api_set_error(&e, 500, "server_error", NULL, NULL, "%s", j->err);
        *status = 500;
        return api_error_json(&e);
    }
    json_t *choice, *lp = json_null();
    if (j->p.logprobs)
        lp = j->p.kind == JOB_CHAT ? json_pack("{s:O}", "content", j->logprobs)
                                   : legacy_logprobs(j->logprobs, &(size_t){0});
    if (j->p.kind == JOB_CHAT) {
        int has_calls = json_array_size(j->tool_calls) > 0;
        json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content",
                                has_calls && !j->content.len ? json_null()
                                                             : api_json_text(j->content.p, j->content.len));
        if (j->p.thinking)
            json_object_set_new(msg, "reasoning_content", api_json_text(j->reasoning.p, j->reasoning.len));
        if (has_calls)
            json_object_set(msg, "tool_calls", j->tool_calls);
        choice = json_pack("{s:i, s:o, s:o, s:s}", "index", 0, "message", msg, "logprobs", lp,
                           "finish_reason", finish_reason(j));
    } else {
        choice = json_pack("{s:i, s:o, s:o, s:s}", "index", 0, "text",
                           api_json_text(j->content.p, j->content.len), "logprobs", lp,
                           "finish_reason", finish_reason(j));
    }
    json_t *r = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", j->id, "object",
                          j->p.kind == JOB_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)j->created, "model", j->srv->cfg.model_name, "choices", choice,
                          "usage", usage_json(j));
    char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    *status = s ? 200 : 500;
    return s;
}
