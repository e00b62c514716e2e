/* batch_input.c — reading and interpreting dsinfer-batch input lines (see
 * batch_input.h).  Every rejection here becomes an error record, never an
 * exit: one bad line must not stop an overnight job. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "batch_input.h"
#include "batch_util.h"
#include "common.h"

/* ---- the file ----------------------------------------------------------- */
static int read_all_fd(int fd, batch_input *in)
{
    batch_buf b = {0};
    char chunk[1 << 16];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            batch_buf_free(&b);
            return -1;
        }
        if (r == 0)
            break;
        batch_buf_append(&b, chunk, (size_t)r);
    }
    in->data = b.data ? b.data : batch_xstrdup("");
    in->size = b.len;
    in->mapped = 0;
    return 0;
}

int batch_input_open(const char *path, batch_input *in)
{
    int fd = strcmp(path, "-") == 0 ? dup(STDIN_FILENO) : open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    int rc = -1;
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0)
        goto out;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto out;
    }
    /* A regular file is mapped: a large job's input need not fit in memory
     * twice, and lines are read again after the identifying pre-pass. */
    if (S_ISREG(st.st_mode) && st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            in->data = p;
            in->size = (size_t)st.st_size;
            in->mapped = 1;
            rc = 0;
            goto out;
        }
    }
    rc = read_all_fd(fd, in);
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

void batch_input_close(batch_input *in)
{
    if (in->mapped)
        munmap((void *)in->data, in->size);
    else
        free((void *)in->data);
    *in = (batch_input){0};
}

int batch_input_next(const batch_input *in, size_t *pos, const char **line, size_t *len, long *lineno)
{
    if (*pos >= in->size)
        return 0;
    const char *s = in->data + *pos;
    const char *nl = memchr(s, '\n', in->size - *pos);
    size_t n = nl ? (size_t)(nl - s) : in->size - *pos;
    *pos += n + (nl != NULL);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    *line = s;
    *len = n;
    (*lineno)++;
    return 1;
}

int batch_line_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
            return 0;
    return 1;
}

/* ---- identity ----------------------------------------------------------- */
static int is_openai_line(const json_t *o)
{
    return json_object_get(o, "custom_id") || json_object_get(o, "body") || json_object_get(o, "url") ||
           json_object_get(o, "method");
}

/* The key of an id value: a non-empty string as is, an integer in decimal;
 * NULL for anything else. */
static char *key_of_value(const json_t *v)
{
    char num[32];
    if (json_is_string(v) && json_string_length(v) > 0 && !memchr(json_string_value(v), 0, json_string_length(v)))
        return batch_xstrdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return batch_xstrdup(num);
    }
    return NULL;
}

static int has_valid_key(const json_t *v)
{
    char *k = key_of_value(v);
    int ok = k != NULL;
    free(k);
    return ok;
}

static void ident_from_object(const json_t *o, long lineno, batch_ident *out)
{
    char fallback[32];
    const json_t *v;
    out->style = is_openai_line(o) ? BATCH_STYLE_OPENAI : BATCH_STYLE_PLAIN;
    v = json_object_get(o, out->style == BATCH_STYLE_OPENAI ? "custom_id" : "id");
    out->key = key_of_value(v);
    if (out->key) {
        out->id_value = json_deep_copy(v);
        return;
    }
    snprintf(fallback, sizeof fallback, "line-%ld", lineno);
    out->key = batch_xstrdup(fallback);
    out->id_value = json_string(fallback);
}

/* Parses the line as a JSON object; NULL when it is not one. */
static json_t *load_object(const char *line, size_t len, json_error_t *jerr)
{
    if (!batch_utf8_valid(line, len))
        return NULL;
    json_t *o = json_loadb(line, len, 0, jerr);
    if (o && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

void batch_identify(const char *line, size_t len, long lineno, batch_ident *out)
{
    json_error_t jerr;
    json_t *o = load_object(line, len, &jerr);
    json_t *empty = o ? NULL : json_object();
    ident_from_object(o ? o : empty, lineno, out);
    json_decref(o);
    json_decref(empty);
}

void batch_ident_free(batch_ident *id)
{
    free(id->key);
    json_decref(id->id_value);
    *id = (batch_ident){0};
}

/* ---- the request -------------------------------------------------------- */
static int fail(batch_request *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(batch_request *r, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_msg, sizeof r->err_msg, fmt, ap);
    va_end(ap);
    r->err_code = code;
    return -1;
}

/* Sampling and length overrides of a body (OpenAI) or a plain line. */
static int parse_params(const json_t *o, batch_request *r)
{
    const json_t *v;
    if ((v = json_object_get(o, "max_completion_tokens")) || (v = json_object_get(o, "max_tokens"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
            return fail(r, "invalid_request", "max_tokens must be an integer in [1, 16777216]");
        r->max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(o, "temperature")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)
            return fail(r, "invalid_request", "temperature must be a number in [0, 100]");
        r->sampling.temperature = (float)json_number_value(v);
    }
    if ((v = json_object_get(o, "top_p")) && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) || json_number_value(v) > 1)
            return fail(r, "invalid_request", "top_p must be a number in (0, 1]");
        r->sampling.top_p = (float)json_number_value(v);
    }
    if ((v = json_object_get(o, "top_k")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24))
            return fail(r, "invalid_request", "top_k must be a non-negative integer");
        r->sampling.top_k = (int)json_integer_value(v);
    }
    if ((v = json_object_get(o, "seed")) && !json_is_null(v)) {
        if (!json_is_integer(v))
            return fail(r, "invalid_request", "seed must be an integer");
        r->sampling.seed = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(o, "n")) && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return fail(r, "invalid_request", "n must be 1 (one completion per request)");
    if ((v = json_object_get(o, "thinking")) && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return fail(r, "invalid_request", "thinking must be true or false");
        r->thinking = json_is_true(v);
    }
    /* vLLM / SGLang spelling of the same switch */
    v = json_object_get(json_object_get(o, "chat_template_kwargs"), "thinking");
    if (v && json_is_boolean(v))
        r->thinking = json_is_true(v);
    return 0;
}

static int parse_stop(const json_t *o, batch_request *r)
{
    const json_t *v = json_object_get(o, "stop");
    size_t i;
    const json_t *s;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) > 0)
            r->stop[r->n_stop++] = batch_xstrdup(json_string_value(v));
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) > BATCH_MAX_STOP)
        return fail(r, "invalid_request", "stop must be a string or an array of at most %d strings",
                    BATCH_MAX_STOP);
    json_array_foreach(v, i, s) {
        if (!json_is_string(s))
            return fail(r, "invalid_request", "stop must be a string or an array of strings");
        if (json_string_length(s) > 0)
            r->stop[r->n_stop++] = batch_xstrdup(json_string_value(s));
    }
    return 0;
}

/* The schema a response_format asks for: {"type": "json_schema", "json_schema":
 * {"schema": {...}}} or {"type": "json_object"} (any object); "text" or
 * none leaves the output free. */
static int parse_response_format(batch_request *r, const json_t *o)
{
    const json_t *rf = json_object_get(o, "response_format");
    const json_t *type = json_object_get(rf, "type");
    ds_error err;
    char *text;
    if (!rf || json_is_null(rf))
        return 0;
    if (!json_is_object(rf) || !json_is_string(type))
        return fail(r, "invalid_request", "response_format must be an object with a \"type\"");
    const char *t = json_string_value(type);
    if (strcmp(t, "text") == 0)
        return 0;
    if (strcmp(t, "json_object") == 0)
        text = batch_xstrdup("{\"type\":\"object\"}");
    else if (strcmp(t, "json_schema") == 0) {
        const json_t *sc = json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!sc)
            return fail(r, "invalid_request", "response_format.json_schema.schema is missing");
        text = json_dumps(sc, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
            tool_die(EXIT_RUNTIME, "out of memory");
    } else
        return fail(r, "invalid_request", "response_format.type must be \"text\", \"json_object\" or \"json_schema\"");
    ds_status st = ds_json_schema_compile(text, strlen(text), &r->schema, &err);
    free(text);
    if (st == DS_ERR_NOMEM)
        tool_die(EXIT_RUNTIME, "out of memory");
    return st == DS_OK ? 0 : fail(r, "invalid_request", "response_format: %s", err.msg);
}

/* response_format telling the model a --json-schema (V3.2 prompts show it). */
static json_t *default_response_format(const json_t *schema)
{
    return json_pack("{s:s, s:{s:s, s:O}}", "type", "json_schema", "json_schema", "name", "output", "schema", schema);
}

/* {"messages": [...], "tools"?, "response_format"?} for ds_chat_render. */
static int set_conversation(batch_request *r, const json_t *messages, const json_t *from, const batch_defaults *d)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return fail(r, "invalid_request", "messages must be a non-empty array");
    json_t *conv = json_object();
    json_object_set(conv, "messages", (json_t *)messages);
    const json_t *tools = json_object_get(from, "tools");
    const json_t *rf = json_object_get(from, "response_format");
    if (tools && !json_is_null(tools))
        json_object_set(conv, "tools", (json_t *)tools);
    if (rf && !json_is_null(rf))
        json_object_set(conv, "response_format", (json_t *)rf);
    else if (d->json_schema)
        json_object_set_new(conv, "response_format", default_response_format(d->json_schema));
    r->conversation = json_dumps(conv, JSON_COMPACT);
    json_decref(conv);
    if (!r->conversation)
        tool_die(EXIT_RUNTIME, "out of memory");
    r->kind = BATCH_KIND_CHAT;
    return 0;
}

/* The template with every {{text}} and {{id}} replaced (one pass: text that
 * itself contains "{{id}}" is not substituted again). */
static char *apply_template(const char *tmpl, const char *text, const char *id)
{
    batch_buf b = {0};
    const char *p = tmpl;
    for (;;) {
        const char *t = strstr(p, "{{text}}"), *i = strstr(p, "{{id}}");
        const char *next = t && (!i || t < i) ? t : i;
        if (!next) {
            batch_buf_append(&b, p, strlen(p));
            break;
        }
        batch_buf_append(&b, p, (size_t)(next - p));
        if (next == t) {
            batch_buf_append(&b, text, strlen(text));
            p = next + 8;
        } else {
            batch_buf_append(&b, id, strlen(id));
            p = next + 6;
        }
    }
    return b.data ? b.data : batch_xstrdup("");
}

/* A plain prompt line: the (templated) text as one user message, after an
 * optional "system" string. */
static int plain_prompt(batch_request *r, const json_t *o, const json_t *text, const batch_defaults *d)
{
    const json_t *sys = json_object_get(o, "system");
    if (!json_is_string(text))
        return fail(r, "invalid_request", "prompt must be a string");
    if (sys && !json_is_string(sys))
        return fail(r, "invalid_request", "system must be a string");
    char *content = apply_template(d->template_text ? d->template_text : "{{text}}",
                                   json_string_value(text), r->ident.key);
    json_t *msgs = json_array();
    if (sys)
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "system", "content", sys));
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", content));
    free(content);
    int rc = set_conversation(r, msgs, o, d);
    json_decref(msgs);
    return rc;
}

static int parse_plain(batch_request *r, const json_t *o, const batch_defaults *d)
{
    const json_t *prompt = json_object_get(o, "prompt"), *text = json_object_get(o, "text");
    const json_t *msgs = json_object_get(o, "messages");
    const json_t *id = json_object_get(o, "id");
    if (id && !has_valid_key(id))
        return fail(r, "invalid_request", "id must be a non-empty string or an integer");
    if ((prompt != NULL) + (text != NULL) + (msgs != NULL) != 1)
        return fail(r, "invalid_request", "a line needs exactly one of \"prompt\", \"text\" and \"messages\"");
    if (parse_params(o, r) || parse_stop(o, r) || parse_response_format(r, o))
        return -1;
    return msgs ? set_conversation(r, msgs, o, d) : plain_prompt(r, o, prompt ? prompt : text, d);
}

static int parse_completion_body(batch_request *r, const json_t *body)
{
    const json_t *p = json_object_get(body, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1)
        p = json_array_get(p, 0);       /* a batch of one prompt */
    if (!json_is_string(p))
        return fail(r, "invalid_request", "body.prompt must be a string");
    r->prompt = batch_xstrdup(json_string_value(p));
    if (strlen(r->prompt) != json_string_length(p))
        return fail(r, "invalid_request", "body.prompt contains a NUL character");
    r->kind = BATCH_KIND_COMPLETION;
    return 0;
}

static int parse_openai(batch_request *r, const json_t *o, const batch_defaults *d)
{
    const json_t *method = json_object_get(o, "method"), *url = json_object_get(o, "url");
    const json_t *body = json_object_get(o, "body");
    if (!has_valid_key(json_object_get(o, "custom_id")))
        return fail(r, "invalid_request", "custom_id must be a non-empty string");
    if (method && !(json_is_string(method) && strcmp(json_string_value(method), "POST") == 0))
        return fail(r, "invalid_request", "method must be \"POST\"");
    if (!json_is_string(url))
        return fail(r, "invalid_request", "url is missing (\"/v1/chat/completions\" or \"/v1/completions\")");
    if (!json_is_object(body))
        return fail(r, "invalid_request", "body must be an object");
    const json_t *model = json_object_get(body, "model");
    if (json_is_string(model))
        r->model = batch_xstrdup(json_string_value(model));
    if (parse_params(body, r) || parse_stop(body, r) || parse_response_format(r, body))
        return -1;
    if (strcmp(json_string_value(url), "/v1/chat/completions") == 0)
        return set_conversation(r, json_object_get(body, "messages"), body, d);
    if (strcmp(json_string_value(url), "/v1/completions") == 0)
        return parse_completion_body(r, body);
    return fail(r, "invalid_request", "unsupported url \"%.100s\" (expected /v1/chat/completions or /v1/completions)",
                json_string_value(url));
}

static void request_defaults(batch_request *r, const batch_defaults *d)
{
    r->sampling = d->sampling;
    /* Each line samples from its own seed derived from its id, so the text
     * of a line does not depend on its position, shard or --parallel. */
    r->sampling.seed = d->sampling.seed ^ batch_fnv1a64(r->ident.key, strlen(r->ident.key));
    r->max_tokens = d->max_tokens;
    r->thinking = d->thinking;
}

int batch_parse_request(const char *line, size_t len, long lineno, const batch_defaults *d, batch_request *r)
{
    json_error_t jerr;
    *r = (batch_request){0};
    if (!batch_utf8_valid(line, len)) {
        batch_identify(line, len, lineno, &r->ident);
        return fail(r, "invalid_utf8", "line %ld is not valid UTF-8", lineno);
    }
    json_t *o = json_loadb(line, len, 0, &jerr);
    if (!json_is_object(o)) {
        batch_identify(line, len, lineno, &r->ident);
        if (o) {
            json_decref(o);
            return fail(r, "invalid_request", "line %ld is not a JSON object", lineno);
        }
        char *msg = batch_utf8_sanitize(jerr.text);
        fail(r, "invalid_json", "line %ld: %s (column %d)", lineno, msg, jerr.column);
        free(msg);
        return -1;
    }
    ident_from_object(o, lineno, &r->ident);
    request_defaults(r, d);
    int rc = r->ident.style == BATCH_STYLE_OPENAI ? parse_openai(r, o, d) : parse_plain(r, o, d);
    if (rc == 0 && r->kind == BATCH_KIND_CHAT && r->thinking && (r->schema || d->json_schema))
        rc = fail(r, "invalid_request", "a JSON schema constrains the whole answer: it cannot be combined with thinking mode");
    json_decref(o);
    return rc;
}

void batch_request_free(batch_request *r)
{
    batch_ident_free(&r->ident);
    free(r->conversation);
    free(r->prompt);
    free(r->model);
    ds_json_schema_free(r->schema);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    *r = (batch_request){0};
}
