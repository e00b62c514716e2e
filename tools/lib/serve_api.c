/* serve_api.c — the OpenAI request schema of dsinfer-serve: parsing and
 * validating /v1/chat/completions and /v1/completions bodies into job
 * parameters (sampling, stop strings, logprobs, streaming options, the
 * DeepSeek thinking switch, tools), rendering and tokenizing the prompt,
 * the up-front context-length check, and OpenAI-style error objects. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "serve.h"

#define MAX_STOP_STRINGS 16
#define MAX_TOP_LOGPROBS 20

void api_set_error(api_error *e, int status, const char *type, const char *param, const char *code,
                   const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->param = param;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Offset of the first byte that is not valid UTF-8; len when all is. */
static size_t utf8_invalid_at(const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq((const unsigned char *)s + i, len - i);
        if (!k)
            return i;
        i += k;
    }
    return len;
}

json_t *api_json_text(const char *s, size_t len)
{
    json_t *v = json_stringn(s ? s : "", s ? len : 0);
    if (v)
        return v;
    /* not UTF-8 (a token that is part of a character): replace bad bytes */
    sbuf b = {0};
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq((const unsigned char *)s + i, len - i);
        if (k)
            sbuf_add(&b, s + i, k);
        else
            sbuf_add(&b, "\xef\xbf\xbd", 3);
        i += k ? k : 1;
    }
    v = json_stringn(b.p ? b.p : "", b.len);
    sbuf_free(&b);
    return v ? v : json_string("");
}

char *api_error_json(const api_error *e)
{
    json_t *o = json_pack("{s:{s:o, s:s, s:s?, s:s?}}", "error", "message", api_json_text(e->msg, strlen(e->msg)),
                          "type", e->type ? e->type : "invalid_request_error", "param", e->param, "code",
                          e->code);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

/* ---- typed optional fields: 1 present, 0 absent or null, -1 invalid ---- */

static int opt_number(json_t *o, const char *key, double lo, double hi, double *out, api_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi)) {
        api_set_error(e, 400, "invalid_request_error", key, "invalid_value",
                      "'%s' must be a number in [%g, %g]", key, lo, hi);
        return -1;
    }
    *out = json_number_value(v);
    return 1;
}

static int opt_int(json_t *o, const char *key, long long lo, long long hi, long long *out, api_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        api_set_error(e, 400, "invalid_request_error", key, "invalid_value",
                      "'%s' must be an integer in [%lld, %lld]", key, lo, hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 1;
}

static int opt_bool(json_t *o, const char *key, int *out, api_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        api_set_error(e, 400, "invalid_request_error", key, "invalid_type", "'%s' must be a boolean", key);
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

/* ---- shared parameters -------------------------------------------------- */

/* top_p as the sampler takes it, in (0, 1].  The check above is on the
 * double; a positive value under FLT_TRUE_MIN (1e-300) still rounds to 0.0f,
 * which the sampler rejects, and the request failed with a 500 at submit.
 * 0 and such underflows both mean "only the most likely token". */
static float top_p_value(double d)
{
    float f = (float)d;
    return f > 0 ? f : 1e-6f;
}

static int parse_sampling(json_t *root, job_params *p, api_error *e)
{
    static uint64_t seeds;
    double d;
    long long ll;
    int rc;
    ds_sampler_params_init(&p->sp);
    p->sp.temperature = 1.0f;      /* OpenAI's default; greedy needs temperature 0 */
    if ((rc = opt_number(root, "temperature", 0, 2, &d, e)) < 0)
        return -1;
    if (rc)
        p->sp.temperature = (float)d;
    if ((rc = opt_number(root, "top_p", 0, 1, &d, e)) < 0)
        return -1;
    if (rc)
        p->sp.top_p = top_p_value(d);
    if ((rc = opt_int(root, "top_k", 0, 1 << 24, &ll, e)) < 0)
        return -1;
    if (rc)
        p->sp.top_k = (int)ll;
    json_t *seed = json_object_get(root, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed)) {
            api_set_error(e, 400, "invalid_request_error", "seed", "invalid_type", "'seed' must be an integer");
            return -1;
        }
        p->sp.seed = (uint64_t)json_integer_value(seed);
    } else {
        /* no seed: a different stream for every request */
        p->sp.seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^
                     __atomic_add_fetch(&seeds, 1, __ATOMIC_RELAXED) * 0xbf58476d1ce4e5b9ull;
    }
    return 0;
}

static int parse_stop(json_t *root, job_params *p, api_error *e)
{
    json_t *v = json_object_get(root, "stop");
    json_t *one[1];
    json_t **list = one;
    size_t n = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        one[0] = v;
        n = 1;
    } else if (json_is_array(v) && json_array_size(v) <= MAX_STOP_STRINGS) {
        n = json_array_size(v);
        list = NULL;
    } else {
        api_set_error(e, 400, "invalid_request_error", "stop", "invalid_type",
                      "'stop' must be a string or an array of at most %d strings", MAX_STOP_STRINGS);
        return -1;
    }
    p->stop = calloc(n ? n : 1, sizeof *p->stop);
    if (!p->stop)
        return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *s = list ? list[i] : json_array_get(v, i);
        if (!json_is_string(s) || json_string_length(s) == 0 || strlen(json_string_value(s)) != json_string_length(s)) {
            api_set_error(e, 400, "invalid_request_error", "stop", "invalid_value",
                          "every stop sequence must be a non-empty string");
            return -1;
        }
        p->stop[p->n_stop++] = strdup(json_string_value(s));
    }
    return 0;
}

/* Parameters this server does not implement are refused unless they hold
 * their no-op value, so no answer silently ignores what a client asked for
 * (n = 1 is checked with the others below). */
static int refuse_unsupported(json_t *root, api_error *e)
{
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < sizeof zero / sizeof *zero; i++) {
        const json_t *v = json_object_get(root, zero[i]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0)) {
            api_set_error(e, 400, "invalid_request_error", zero[i], "unsupported_value", "'%s' is not supported (0 only)",
                          zero[i]);
            return -1;
        }
    }
    const json_t *echo = json_object_get(root, "echo"), *bias = json_object_get(root, "logit_bias"),
                 *best = json_object_get(root, "best_of"), *suffix = json_object_get(root, "suffix");
    const char *what = NULL;
    if (echo && !json_is_null(echo) && !json_is_false(echo))
        what = "echo";
    else if (bias && !json_is_null(bias) && !(json_is_object(bias) && json_object_size(bias) == 0))
        what = "logit_bias";
    else if (best && !json_is_null(best) && !(json_is_integer(best) && json_integer_value(best) == 1))
        what = "best_of";
    else if (suffix && !json_is_null(suffix) && !(json_is_string(suffix) && json_string_length(suffix) == 0))
        what = "suffix";
    if (what) {
        api_set_error(e, 400, "invalid_request_error", what, "unsupported_value", "'%s' is not supported", what);
        return -1;
    }
    return 0;
}

static int parse_common(server *s, json_t *root, job_params *p, api_error *e)
{
    long long ll;
    int rc;
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_string(model) && !json_is_null(model)) {
        api_set_error(e, 400, "invalid_request_error", "model", "invalid_type", "'model' must be a string");
        return -1;
    }
    if (refuse_unsupported(root, e) < 0 || (rc = opt_int(root, "n", 1, 1 << 20, &ll, e)) < 0)
        return -1;
    if (rc && ll != 1) {
        api_set_error(e, 400, "invalid_request_error", "n", "unsupported_value",
                      "only n = 1 is supported (one choice per request)");
        return -1;
    }
    if (opt_bool(root, "stream", &p->stream, e) < 0 || opt_bool(root, "ignore_eos", &p->ignore_eos, e) < 0)
        return -1;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            api_set_error(e, 400, "invalid_request_error", "stream_options", "invalid_type",
                          "'stream_options' must be an object");
            return -1;
        }
        if (opt_bool(so, "include_usage", &p->include_usage, e) < 0)
            return -1;
        p->include_usage &= p->stream;
    }
    /* max_completion_tokens when given (a null one is not given: clients
     * send it so beside max_tokens) */
    const json_t *mct = json_object_get(root, "max_completion_tokens");
    const char *mt = mct && !json_is_null(mct) ? "max_completion_tokens" : "max_tokens";
    if ((rc = opt_int(root, mt, 1, 1 << 30, &ll, e)) < 0)
        return -1;
    p->max_tokens = rc ? (int)ll : 0;   /* checked against the context later */
    if (parse_sampling(root, p, e) < 0 || parse_stop(root, p, e) < 0)
        return -1;
    return 0;
}

/* ---- chat ------------------------------------------------------------------ */

static int check_messages(json_t *msgs, api_error *e)
{
    static const char *roles[] = {"system", "user", "assistant", "developer", "tool"};
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        api_set_error(e, 400, "invalid_request_error", "messages", msgs ? "invalid_type" : "missing_required_parameter",
                      "'messages' must be a non-empty array of messages");
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        size_t r = 0;
        while (role && r < sizeof roles / sizeof *roles && strcmp(role, roles[r]) != 0)
            r++;
        if (!json_is_object(m) || !role || r == sizeof roles / sizeof *roles) {
            api_set_error(e, 400, "invalid_request_error", "messages", "invalid_value",
                          "messages[%zu] must be an object with a role of system, user, assistant, developer or tool", i);
            return -1;
        }
        json_t *c = json_object_get(m, "content"), *part;
        size_t k;
        if (c && !json_is_null(c) && !json_is_string(c) && !json_is_array(c)) {
            api_set_error(e, 400, "invalid_request_error", "messages", "invalid_type",
                          "messages[%zu].content must be a string, an array of text parts or null", i);
            return -1;
        }
        json_array_foreach(c, k, part) {
            const char *type = json_string_value(json_object_get(part, "type"));
            if (!type || strcmp(type, "text") != 0 || !json_is_string(json_object_get(part, "text"))) {
                api_set_error(e, 400, "invalid_request_error", "messages", "unsupported_value",
                              "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts are supported", i, k);
                return -1;
            }
        }
    }
    return 0;
}

/* chat_template_kwargs.thinking (or enable_thinking), else a top-level
 * "thinking": true/false or {"type": "enabled"|"disabled"}. */
static int parse_thinking(server *s, json_t *root, int *thinking, api_error *e)
{
    json_t *kw = json_object_get(root, "chat_template_kwargs");
    *thinking = s->cfg.thinking_default;
    if (kw && !json_is_null(kw)) {
        if (!json_is_object(kw)) {
            api_set_error(e, 400, "invalid_request_error", "chat_template_kwargs", "invalid_type",
                          "'chat_template_kwargs' must be an object");
            return -1;
        }
        if (opt_bool(kw, "thinking", thinking, e) < 0 || opt_bool(kw, "enable_thinking", thinking, e) < 0)
            return -1;
    }
    json_t *t = json_object_get(root, "thinking");
    const char *type = json_string_value(json_object_get(t, "type"));
    if (json_is_object(t) && type && (!strcmp(type, "enabled") || !strcmp(type, "disabled")))
        *thinking = strcmp(type, "enabled") == 0;
    else if (!json_is_object(t) && opt_bool(root, "thinking", thinking, e) < 0)
        return -1;
    else if (json_is_object(t)) {
        api_set_error(e, 400, "invalid_request_error", "thinking", "invalid_value",
                      "'thinking' must be a boolean or {\"type\": \"enabled\" | \"disabled\"}");
        return -1;
    }
    return 0;
}

/* Each tool a function with a name; tool_choice none, auto, required or
 * one of those functions. */
static int check_tools(const json_t *tools, const json_t *choice, api_error *e)
{
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *f = json_object_get(t, "function"), *type = json_object_get(t, "type");
        if (!json_is_object(t) || (type && !(json_is_string(type) && strcmp(json_string_value(type), "function") == 0)) ||
            !json_is_string(json_object_get(f, "name"))) {
            api_set_error(e, 400, "invalid_request_error", "tools", "invalid_value",
                          "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", i);
            return -1;
        }
    }
    if (json_is_string(choice)) {
        const char *c = json_string_value(choice);
        if (strcmp(c, "none") && strcmp(c, "auto") && strcmp(c, "required")) {
            api_set_error(e, 400, "invalid_request_error", "tool_choice", "invalid_value",
                          "'tool_choice' must be none, auto, required or a function");
            return -1;
        }
    } else if (json_is_object(choice)) {
        const json_t *name = json_object_get(json_object_get(choice, "function"), "name");
        int found = 0;
        json_array_foreach(tools, i, t) found |= json_is_string(name) &&
                                                 json_equal(name, json_object_get(json_object_get(t, "function"), "name"));
        if (!found) {
            api_set_error(e, 400, "invalid_request_error", "tool_choice", "invalid_value",
                          "'tool_choice' names no function of 'tools'");
            return -1;
        }
    }
    return 0;
}

/* {"messages", "tools", "response_format"} for ds_chat_render. */
static json_t *conversation(json_t *root, api_error *e)
{
    json_t *tools = json_object_get(root, "tools"), *choice = json_object_get(root, "tool_choice");
    json_t *rf = json_object_get(root, "response_format");
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        api_set_error(e, 400, "invalid_request_error", "tools", "invalid_type", "'tools' must be an array");
        return NULL;
    }
    if (choice && !json_is_null(choice) && !json_is_string(choice) && !json_is_object(choice)) {
        api_set_error(e, 400, "invalid_request_error", "tool_choice", "invalid_type",
                      "'tool_choice' must be a string or an object");
        return NULL;
    }
    if (check_tools(tools, choice, e) < 0)
        return NULL;
    json_t *conv = json_pack("{s:O}", "messages", json_object_get(root, "messages"));
    /* tool_choice "none" hides the tools; any other choice offers them (the
     * model decides whether to call one) */
    int none = json_is_string(choice) && strcmp(json_string_value(choice), "none") == 0;
    if (json_array_size(tools) && !none)
        json_object_set(conv, "tools", tools);
    if (json_is_object(rf))
        json_object_set(conv, "response_format", rf);
    return conv;
}

static int render_chat(server *s, json_t *root, job_params *p, api_error *e)
{
    if (check_messages(json_object_get(root, "messages"), e) < 0 || parse_thinking(s, root, &p->thinking, e) < 0)
        return -1;
    if (opt_bool(root, "logprobs", &p->logprobs, e) < 0)
        return -1;
    long long k = 0;
    if (opt_int(root, "top_logprobs", 0, MAX_TOP_LOGPROBS, &k, e) < 0)
        return -1;
    if (k && !p->logprobs) {
        api_set_error(e, 400, "invalid_request_error", "top_logprobs", "invalid_value",
                      "'top_logprobs' requires 'logprobs': true");
        return -1;
    }
    p->top_logprobs = (int)k;
    json_t *conv = conversation(root, e);
    if (!conv)
        return -1;
    char *text = json_dumps(conv, JSON_COMPACT);
    json_decref(conv);
    ds_chat_options co;
    ds_chat_options_init(&co);
    co.thinking = p->thinking;
    ds_error err;
    int rc = 0;
    /* message text never becomes a control token (a forged turn) */
    if (!text || ds_chat_encode(s->tok, s->chat_fmt, text, strlen(text), &co, &p->prompt, &p->n_prompt, NULL, NULL,
                                &err) != DS_OK) {
        api_set_error(e, 400, "invalid_request_error", "messages", NULL, "%s",
                      text ? err.msg : "the messages could not be serialised");
        rc = -1;
    }
    free(text);
    return rc;
}

/* ---- completions ----------------------------------------------------------- */

static int prompt_ids(server *s, json_t *arr, job_params *p, api_error *e)
{
    size_t n = json_array_size(arr), i;
    json_t *v;
    p->prompt = malloc(sizeof *p->prompt * (n ? n : 1));
    if (!p->prompt)
        return -1;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= s->info->vocab_size) {
            api_set_error(e, 400, "invalid_request_error", "prompt", "invalid_value",
                          "prompt[%zu] is not a token id in [0, %d)", i, s->info->vocab_size);
            return -1;
        }
        p->prompt[i] = (int32_t)json_integer_value(v);
    }
    p->n_prompt = (int)n;
    return 0;
}

/* Plain text with BOS first, as Hugging Face tokenizers do for generation. */
static int prompt_text(server *s, json_t *str, job_params *p, api_error *e)
{
    ds_error err;
    int32_t *ids;
    int n;
    if (ds_tokenizer_encode(s->tok, json_string_value(str), json_string_length(str), 1, &ids, &n, &err) != DS_OK) {
        api_set_error(e, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg);
        return -1;
    }
    int32_t bos = ds_tokenizer_bos_id(s->tok);
    int add = bos >= 0 && (n == 0 || ids[0] != bos);
    p->prompt = malloc(sizeof *ids * (size_t)(n + add + 1));
    if (!p->prompt) {
        free(ids);
        return -1;
    }
    if (add)
        p->prompt[0] = bos;
    memcpy(p->prompt + add, ids, sizeof *ids * (size_t)n);
    p->n_prompt = n + add;
    free(ids);
    return 0;
}

static int parse_prompt(server *s, json_t *root, job_params *p, api_error *e)
{
    json_t *pr = json_object_get(root, "prompt");
    long long lp = 0;
    int rc = opt_int(root, "logprobs", 0, 5, &lp, e);
    if (rc < 0)
        return -1;
    p->logprobs = rc;
    p->top_logprobs = (int)lp;
    if (json_is_string(pr))
        return prompt_text(s, pr, p, e);
    if (json_is_array(pr) && json_array_size(pr) == 1 && (json_is_string(json_array_get(pr, 0)) ||
                                                            json_is_array(json_array_get(pr, 0))))
        pr = json_array_get(pr, 0);        /* a batch of one prompt */
    if (json_is_string(pr))
        return prompt_text(s, pr, p, e);
    if (json_is_array(pr) && json_array_size(pr) > 0 && json_is_integer(json_array_get(pr, 0)))
        return prompt_ids(s, pr, p, e);
    if (json_is_array(pr) && json_array_size(pr) > 1)
        api_set_error(e, 400, "invalid_request_error", "prompt", "unsupported_value",
                      "only one prompt per request is supported");
    else
        api_set_error(e, 400, "invalid_request_error", "prompt", pr ? "invalid_value" : "missing_required_parameter",
                      "'prompt' must be a non-empty string or an array of token ids");
    return -1;
}

/* ---- response_format ---------------------------------------------------------- */
/* OpenAI's {"type": "json_schema", "json_schema": {"schema": {...}}} or
 * {"type": "json_object"} (any object) constrain the output; "text" does not. */
static int parse_response_format(json_t *root, job_params *p, api_error *e)
{
    json_t *rf = json_object_get(root, "response_format");
    const char *type = json_string_value(json_object_get(rf, "type"));
    ds_error err;
    char *text;
    if (!rf || json_is_null(rf) || (type && strcmp(type, "text") == 0))
        return 0;
    if (type && strcmp(type, "json_object") == 0)
        text = strdup("{\"type\":\"object\"}");
    else if (type && strcmp(type, "json_schema") == 0) {
        json_t *sc = json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!sc) {
            api_set_error(e, 400, "invalid_request_error", "response_format", "missing_required_parameter",
                          "'response_format.json_schema.schema' is missing");
            return -1;
        }
        text = json_dumps(sc, JSON_COMPACT | JSON_ENCODE_ANY);
    } else {
        api_set_error(e, 400, "invalid_request_error", "response_format", "invalid_value",
                      "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
        return -1;
    }
    if (!text)
        return -1;                          /* out of memory: e already says so */
    ds_status st = ds_json_schema_compile(text, strlen(text), &p->schema, &err);
    free(text);
    if (st == DS_ERR_NOMEM)
        return -1;
    if (st != DS_OK) {
        api_set_error(e, 400, "invalid_request_error", "response_format", "invalid_value", "%s", err.msg);
        return -1;
    }
    if (p->thinking) {
        api_set_error(e, 400, "invalid_request_error", "response_format", "unsupported_value",
                      "a JSON response_format constrains the whole answer: it cannot be combined with thinking mode");
        return -1;
    }
    return 0;
}

/* ---- entry point ------------------------------------------------------------ */

static int check_context(server *s, const job_params *p, api_error *e)
{
    if (p->n_prompt == 0) {
        api_set_error(e, 400, "invalid_request_error", p->kind == JOB_CHAT ? "messages" : "prompt", NULL,
                      "the prompt is empty");
        return -1;
    }
    int need = p->n_prompt + (p->max_tokens ? p->max_tokens : 1);
    if (need > s->ctx_size) {
        api_set_error(e, 400, "invalid_request_error", p->max_tokens ? "max_tokens" : (p->kind == JOB_CHAT ? "messages" : "prompt"),
                      "context_length_exceeded",
                      "this model's context holds %d tokens, but the request needs %d "
                      "(%d in the prompt, %d for the completion); shorten the prompt or lower max_tokens",
                      s->ctx_size, need, p->n_prompt, need - p->n_prompt);
        return -1;
    }
    return 0;
}

int api_parse_request(server *s, job_kind kind, const char *body, size_t len, job_params *p, api_error *e)
{
    json_error_t je;
    memset(p, 0, sizeof *p);
    p->kind = kind;
    size_t bad = utf8_invalid_at(body, len);
    if (bad < len) {
        api_set_error(e, 400, "invalid_request_error", NULL, "invalid_utf8",
                      "the request body is not valid UTF-8 (byte %zu)", bad);
        return -1;
    }
    json_t *root = json_loadb(body ? body : "", len, 0, &je);
    if (!root) {
        int utf8 = strstr(je.text, "UTF-8") || strstr(je.text, "nicode");
        api_set_error(e, 400, "invalid_request_error", NULL, utf8 ? "invalid_utf8" : "invalid_json",
                      utf8 ? "the request body is not valid UTF-8 (%s, line %d column %d)"
                           : "the request body is not valid JSON (%s, line %d column %d)",
                      je.text, je.line, je.column);
        return -1;
    }
    int rc = -1;
    api_set_error(e, 500, "server_error", NULL, NULL, "out of memory");
    if (!json_is_object(root))
        api_set_error(e, 400, "invalid_request_error", NULL, "invalid_type", "the request body must be a JSON object");
    else if (parse_common(s, root, p, e) == 0 &&
             (kind == JOB_CHAT ? render_chat(s, root, p, e) : parse_prompt(s, root, p, e)) == 0 &&
             parse_response_format(root, p, e) == 0)
        rc = check_context(s, p, e);
    json_decref(root);
    if (rc < 0)
        job_params_free(p);
    return rc;
}
