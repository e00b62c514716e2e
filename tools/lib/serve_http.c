/* serve_http.c — the HTTP front end of dsinfer-serve on libmicrohttpd
 * (internal polling threads in a small pool, suspend / resume so that no
 * handler ever blocks on generation): routing, API-key check, body
 * accumulation with the size limit, the queue limit, JSON / SSE responses,
 * /health, /v1/models, /metrics, and the request-completed hook that
 * cancels generation for clients that went away. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "serve.h"

#define POOL_THREADS 4

static const char *const ep_path[EP_COUNT] = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "other"
};

/* Per-request state, MHD's con_cls. */
typedef struct conn_ctx {
    endpoint ep;
    sbuf body;
    int too_big;
    job *job;
    double t0;
    int status;
    char method[16], path[96];
} conn_ctx;

static endpoint route(const char *url)
{
    for (int e = 0; e < EP_UNKNOWN; e++)
        if (strcmp(url, ep_path[e]) == 0)
            return (endpoint)e;
    if (strcmp(url, "/v1/health") == 0)
        return EP_HEALTH;
    return EP_UNKNOWN;
}

static int is_post_endpoint(endpoint ep) { return ep == EP_CHAT || ep == EP_COMPLETIONS; }

static int method_allowed(endpoint ep, const char *method)
{
    if (is_post_endpoint(ep))
        return strcmp(method, "POST") == 0;
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* ---- responses -------------------------------------------------------------- */

/* Queues body (malloc'ed, taken; NULL means out of memory) with status. */
static enum MHD_Result reply(server *s, struct MHD_Connection *c, conn_ctx *cx, int status,
                             const char *ctype, char *body)
{
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    struct MHD_Response *r;
    if (body) {
        r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    } else {
        status = 500;
        ctype = "application/json";
        r = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    }
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, is_post_endpoint(cx->ep) ? "POST" : "GET, HEAD");
    if (status == 503)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    cx->status = status;
    server_count_request(s, cx->ep, status);
    return rc;
}

static enum MHD_Result reply_error(server *s, struct MHD_Connection *c, conn_ctx *cx, const api_error *e)
{
    return reply(s, c, cx, e->status, "application/json", api_error_json(e));
}

static enum MHD_Result reply_json(server *s, struct MHD_Connection *c, conn_ctx *cx, int status, json_t *v)
{
    char *body = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return reply(s, c, cx, status, "application/json", body);
}

/* ---- simple endpoints --------------------------------------------------------- */

static enum MHD_Result handle_health(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    pthread_mutex_lock(&s->mu);
    int draining = s->draining;
    pthread_mutex_unlock(&s->mu);
    return reply_json(s, c, cx, draining ? 503 : 200, json_pack("{s:s}", "status", draining ? "draining" : "ok"));
}

static enum MHD_Result handle_models(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    return reply_json(s, c, cx, 200,
                      json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id",
                                s->cfg.model_name, "object", "model", "created", (json_int_t)s->started,
                                "owned_by", "dsinfer", "max_model_len", s->ctx_size));
}

static void metric(sbuf *b, const char *name, const char *type, const char *help, double v)
{
    sbuf_addf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

static char *metrics_text(server *s)
{
    ds_engine_stats st;
    ds_engine_get_stats(s->engine, &st);
    sbuf b = {0};
    pthread_mutex_lock(&s->mu);
    sbuf_addf(&b, "# HELP dsinfer_requests_total HTTP requests answered, by endpoint and status code.\n"
                  "# TYPE dsinfer_requests_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        for (int k = 0; k < s->n_status; k++)
            if (s->req_count[e][k])
                sbuf_addf(&b, "dsinfer_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n", ep_path[e],
                          s->req_status[k], (unsigned long long)s->req_count[e][k]);
    double t = serve_now(), dt = t - s->win_t0;
    /* a window older than a second (idle engine) is measured up to now */
    double tps = dt >= 1.0 ? (double)(st.generated_tokens - s->win_gen0) / dt : s->tps;
    int in_flight = s->in_flight;
    uint64_t disc = s->disconnects, stops = s->stop_string_hits, errs = s->engine_errors;
    pthread_mutex_unlock(&s->mu);
    metric(&b, "dsinfer_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", (double)st.prompt_tokens);
    metric(&b, "dsinfer_prompt_tokens_reused_total", "counter", "Prompt tokens served from cached prefixes.",
           (double)st.reused_prompt_tokens);
    metric(&b, "dsinfer_generated_tokens_total", "counter", "Generated tokens.", (double)st.generated_tokens);
    metric(&b, "dsinfer_engine_requests_submitted_total", "counter", "Requests submitted to the engine.",
           (double)st.submitted);
    metric(&b, "dsinfer_engine_requests_finished_total", "counter", "Requests the engine finished (any reason).",
           (double)st.finished);
    metric(&b, "dsinfer_engine_requests_cancelled_total", "counter",
           "Requests cancelled (client gone, stop string reached, shutdown).", (double)st.cancelled);
    metric(&b, "dsinfer_client_disconnects_total", "counter", "Clients that left before their generation ended.",
           (double)disc);
    metric(&b, "dsinfer_stop_string_hits_total", "counter", "Generations ended by a stop string.", (double)stops);
    metric(&b, "dsinfer_engine_errors_total", "counter", "Generations ended by an engine error.", (double)errs);
    metric(&b, "dsinfer_engine_steps_total", "counter", "Batched engine steps.", (double)st.steps);
    metric(&b, "dsinfer_queue_depth", "gauge", "Requests waiting for a slot.", st.waiting);
    metric(&b, "dsinfer_active_sequences", "gauge", "Sequences holding a slot.", st.active);
    metric(&b, "dsinfer_slots", "gauge", "Sequence slots (--parallel).", st.slots);
    metric(&b, "dsinfer_http_requests_in_flight", "gauge", "HTTP requests being handled.", in_flight);
    metric(&b, "dsinfer_generated_tokens_per_second", "gauge", "Generation speed over the last second or more.", tps);
    metric(&b, "dsinfer_kv_positions_used", "gauge", "KV cache positions held by active sequences.", st.kv_used);
    metric(&b, "dsinfer_kv_positions_capacity", "gauge", "KV cache positions of all slots.", st.kv_capacity);
    ds_expert_stats es;
    ds_model_expert_stats(s->model, &es);
    metric(&b, "dsinfer_expert_cache_hit_rate", "gauge", "Fraction of expert lookups served from RAM.",
           es.hits + es.misses ? (double)es.hits / (double)(es.hits + es.misses) : 1.0);
    metric(&b, "dsinfer_expert_cache_bytes_read_total", "counter", "Bytes of expert slabs read from disk.",
           (double)es.bytes_read);
    metric(&b, "dsinfer_expert_cache_stall_seconds_total", "counter", "Time the forward pass waited for expert reads.",
           es.stall_seconds);
    metric(&b, "dsinfer_uptime_seconds", "gauge", "Seconds since the server started.",
           (double)(time(NULL) - s->started));
    return b.p;
}

static enum MHD_Result handle_metrics(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    return reply(s, c, cx, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(s));
}

/* ---- generation ----------------------------------------------------------------- */

static int queue_full(server *s)
{
    pthread_mutex_lock(&s->mu);
    int full = s->live_jobs >= s->cfg.parallel + s->cfg.max_queue;
    pthread_mutex_unlock(&s->mu);
    return full;
}

static int is_draining(server *s)
{
    pthread_mutex_lock(&s->mu);
    int d = s->draining;
    pthread_mutex_unlock(&s->mu);
    return d;
}

static enum MHD_Result reply_result(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    int status;
    char *body = job_result_json(cx->job, &status);
    return reply(s, c, cx, status, "application/json", body);
}

static enum MHD_Result start_stream(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, job_sse_reader,
                                                               cx->job, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    cx->status = 200;
    server_count_request(s, cx->ep, 200);
    return rc;
}

static enum MHD_Result handle_generate(server *s, struct MHD_Connection *c, conn_ctx *cx)
{
    api_error e;
    job_params p;
    if (is_draining(s)) {
        api_set_error(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        return reply_error(s, c, cx, &e);
    }
    if (queue_full(s)) {
        api_set_error(&e, 503, "server_error", NULL, "server_busy",
                      "the request queue is full (%d running + %d queued); retry later", s->cfg.parallel,
                      s->cfg.max_queue);
        return reply_error(s, c, cx, &e);
    }
    if (api_parse_request(s, cx->ep == EP_CHAT ? JOB_CHAT : JOB_COMPLETION, cx->body.p, cx->body.len, &p, &e) < 0)
        return reply_error(s, c, cx, &e);
    int stream = p.stream;
    job *j = job_create(s, &p);
    if (!j)
        return reply(s, c, cx, 500, "application/json", NULL);
    ds_error err;
    if (job_submit(j, c, &err) != DS_OK) {
        job_unref(j);
        api_set_error(&e, err.code == DS_ERR_INPUT ? 400 : 500,
                      err.code == DS_ERR_INPUT ? "invalid_request_error" : "server_error", NULL, NULL, "%s", err.msg);
        return reply_error(s, c, cx, &e);
    }
    cx->job = j;
    if (stream)
        return start_stream(s, c, cx);
    if (job_wait_done(j, c))
        return reply_result(s, c, cx);
    return MHD_YES;                 /* suspended; called again once the job is done */
}

/* ---- the access handler ---------------------------------------------------------- */

/* Authorization: Bearer KEY, compared in constant time. */
static int authorized(server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *key = s->cfg.api_key;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h), m = strlen(key);
    unsigned diff = n != m;
    for (size_t i = 0; i < m; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static enum MHD_Result dispatch(server *s, struct MHD_Connection *c, conn_ctx *cx, const char *method)
{
    api_error e;
    if (cx->ep != EP_HEALTH && s->cfg.api_key && !authorized(s, c)) {
        api_set_error(&e, 401, "authentication_error", NULL, "invalid_api_key",
                      "missing or wrong API key (send the header Authorization: Bearer KEY)");
        return reply_error(s, c, cx, &e);
    }
    if (cx->ep == EP_UNKNOWN) {
        api_set_error(&e, 404, "invalid_request_error", NULL, "not_found", "no such endpoint: %s %s", method, cx->path);
        return reply_error(s, c, cx, &e);
    }
    if (!method_allowed(cx->ep, method)) {
        api_set_error(&e, 405, "invalid_request_error", NULL, "method_not_allowed", "%s is not allowed on %s (use %s)",
                      method, cx->path, is_post_endpoint(cx->ep) ? "POST" : "GET");
        return reply_error(s, c, cx, &e);
    }
    if (cx->too_big) {
        api_set_error(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "the request body is larger than %zu bytes (--max-body)", s->cfg.max_body);
        return reply_error(s, c, cx, &e);
    }
    switch (cx->ep) {
    case EP_HEALTH: return handle_health(s, c, cx);
    case EP_MODELS: return handle_models(s, c, cx);
    case EP_METRICS: return handle_metrics(s, c, cx);
    default: return handle_generate(s, c, cx);
    }
}

static conn_ctx *begin_request(server *s, struct MHD_Connection *c, const char *url, const char *method)
{
    conn_ctx *cx = calloc(1, sizeof *cx);
    if (!cx)
        return NULL;
    cx->ep = route(url);
    cx->t0 = serve_now();
    snprintf(cx->method, sizeof cx->method, "%s", method);
    snprintf(cx->path, sizeof cx->path, "%s", url);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body)
        cx->too_big = 1;
    pthread_mutex_lock(&s->mu);
    s->in_flight++;
    pthread_mutex_unlock(&s->mu);
    return cx;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    server *s = cls;
    conn_ctx *cx = *con_cls;
    (void)version;
    if (!cx) {
        if (!(cx = begin_request(s, c, url, method)))
            return MHD_NO;
        *con_cls = cx;
        /* A client waiting for "100 Continue" gets the 413 before sending the
         * body; others have their body read and dropped (answering early
         * would reset a connection still sending). */
        const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
        if (cx->too_big && expect && strcasecmp(expect, "100-continue") == 0)
            return dispatch(s, c, cx, method);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cx->too_big && cx->body.len + *upload_size > s->cfg.max_body) {
            cx->too_big = 1;
            sbuf_free(&cx->body);
        }
        if (!cx->too_big && sbuf_add(&cx->body, upload, *upload_size) < 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (cx->job)                    /* resumed: the non-streaming job should be done */
        return job_wait_done(cx->job, c) ? reply_result(s, c, cx) : MHD_YES;
    return dispatch(s, c, cx, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    conn_ctx *cx = *con_cls;
    (void)c;
    if (!cx)
        return;
    int prompt = -1, completion = -1;
    if (cx->job) {
        job_detach(cx->job);
        prompt = job_prompt_tokens(cx->job);
        completion = job_completion_tokens(cx->job);
        job_unref(cx->job);
    }
    if (!s->cfg.quiet) {
        char tokens[64] = "";
        if (prompt >= 0 && completion >= 0)
            snprintf(tokens, sizeof tokens, " prompt=%d completion=%d", prompt, completion);
        else if (prompt >= 0)
            snprintf(tokens, sizeof tokens, " prompt=%d (generation cancelled)", prompt);
        fprintf(stderr, "dsinfer-serve: %s %s %d %.3fs%s%s\n", cx->method, cx->path, cx->status,
                serve_now() - cx->t0, tokens, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
    }
    sbuf_free(&cx->body);
    free(cx);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    pthread_mutex_unlock(&s->mu);
}

/* ---- daemon ---------------------------------------------------------------------- */

static struct sockaddr_storage bind_addr;

static int resolve(const serve_config *cfg, int *family, char *msg, size_t msg_size)
{
    struct addrinfo hints, *res;
    char port[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%d", cfg->port);
    int rc = getaddrinfo(cfg->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(msg, msg_size, "cannot resolve --host '%s': %s", cfg->host, gai_strerror(rc));
        return -1;
    }
    memcpy(&bind_addr, res->ai_addr, res->ai_addrlen);
    *family = res->ai_family;
    freeaddrinfo(res);
    return 0;
}

/* poll(), not epoll: libmicrohttpd 0.9.75 in epoll (edge-triggered) mode
 * misses the end of file of a client that sends part of a request and
 * closes at once (the bytes and the FIN arrive together, one recv takes the
 * bytes, no new edge comes for the FIN).  Such connections then sat in
 * CLOSE_WAIT for the whole connection timeout, and a burst of abrupt
 * disconnects could use up the connection limit.  poll() is level-triggered
 * and sees the FIN on the next round; tests/serve_fuzz.py checks that the
 * descriptors are released. */
#define DAEMON_LOOP MHD_USE_POLL_INTERNAL_THREAD

int http_start(server *s, char *msg, size_t msg_size)
{
    int family;
    if (resolve(&s->cfg, &family, msg, msg_size) < 0)
        return -1;
    unsigned flags = DAEMON_LOOP | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    if (!s->cfg.quiet)
        flags |= MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(flags, (uint16_t)s->cfg.port, NULL, NULL, on_access, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&bind_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned)POOL_THREADS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                                 MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(msg, msg_size, "cannot listen on %s port %d (address in use or not available)", s->cfg.host,
                 s->cfg.port);
        return -1;
    }
    return 0;
}

int http_port(server *s)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return i && i->port ? i->port : s->cfg.port;
}

void http_quiesce(server *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void http_stop(server *s)
{
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
