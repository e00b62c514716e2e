/* chat.c — chat encoding: renders OpenAI-style conversations into DeepSeek
 * prompt text (the V3.2 encoding of SPEC 8.2 and the V3/V3.1 Jinja chat
 * template of tokenizer_config.json, both written by hand), and parses
 * completions back into assistant messages, one-shot or streaming: V3.2's
 * DSML tool calls and the legacy V3 / V3.1 tool-call tokens, in one state
 * machine.
 *
 * The V3.2 prompt embeds JSON produced by Python's json.dumps, so this file
 * also owns a serializer that reproduces Python's formatting byte for byte. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memmem */
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "chat_internal.h"
#include "dsinfer.h"
#include "internal.h"

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define USER "<｜User｜>"
#define ASSISTANT "<｜Assistant｜>"
#define THINK_BEGIN "<think>"
#define THINK_END "</think>"
#define DSML "｜DSML｜"
/* Where tool calls start inside a completion: the block always follows the
 * content after a blank line, so the "\n\n" is part of the marker. */
#define CALLS_MARK "\n\n<" DSML "function_calls"
#define CALLS_CLOSE "</" DSML "function_calls>"
#define INVOKE_OPEN "<" DSML "invoke name=\""
#define INVOKE_CLOSE "</" DSML "invoke>"
#define PARAM_OPEN "<" DSML "parameter name=\""
#define PARAM_CLOSE "</" DSML "parameter>"
/* The legacy tool-call tokens of V3 / V3.1 (tokenizer ids 128806-128814).
 * V3 writes a call as CALL_BEGIN "function" SEP NAME "\n```json\n" ARGS
 * "\n```" CALL_END, V3.1 as CALL_BEGIN NAME SEP ARGS CALL_END; the calls
 * sit between V3_CALLS_BEGIN and V3_CALLS_END. */
#define V3_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define V3_CALLS_END "<｜tool▁calls▁end｜>"
#define V3_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define V3_CALL_END "<｜tool▁call▁end｜>"
#define V3_SEP "<｜tool▁sep｜>"
#define V3_FENCE "\n```json\n"
#define RESPONSE_FORMAT_HEAD \
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"

/* The fixed instruction text of the V3.2 tools block, golden data taken
 * from DeepSeek's fixture (tests/data/chat/test_output.txt); the tool
 * schemas follow it, one JSON object per line, then "\n</functions>\n". */
static const char TOOLS_HEAD[] =
    "## Tools\n"
    "\n"
    "You have access to a set of tools you can use to answer the user's question.\n"
    "You can invoke functions by writing a \"<｜DSML｜function_calls>\" block like the following as part of your reply to the user:\n"
    "<｜DSML｜function_calls>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls>\n"
    "\n"
    "String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The \"string\" attribute should be set to \"true\" for string type parameters and \"false\" for other types (numbers, booleans, arrays, objects).\n"
    "\n"
    "If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:\n"
    "\n"
    "<｜DSML｜function_calls>\n"
    "...\n"
    "</｜DSML｜function_calls>\n"
    "\n"
    "<function_results>\n"
    "...\n"
    "</function_results>\n"
    "\n"
    "<think>...thinking about results</think>\n"
    "\n"
    "Here are the functions available in JSONSchema format:\n"
    "<functions>\n";

/* ---- growable byte buffer ------------------------------------------------
 * Appends never fail loudly: an allocation failure sets oom and later
 * appends are ignored, so the renderers check once at the end. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
    size_t *span;       /* [start, end) byte pairs of message text (add_text) */
    int nspan, capspan;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_adds(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_free(sbuf *b)
{
    free(b->p);
    free(b->span);
    memset(b, 0, sizeof *b);
}

/* Marks [start, b->n) as text a message carried (see ds_chat_encode). */
static void sb_mark(sbuf *b, size_t start)
{
    if (b->oom || b->n == start)
        return;
    if (b->nspan == b->capspan) {
        const int cap = b->capspan ? 2 * b->capspan : 16;
        size_t *sp = realloc(b->span, sizeof(size_t) * 2 * (size_t)cap);
        if (!sp) {
            b->oom = 1;
            return;
        }
        b->span = sp, b->capspan = cap;
    }
    b->span[2 * b->nspan] = start;
    b->span[2 * b->nspan + 1] = b->n;
    b->nspan++;
}

/* Hands the buffer to the caller (an empty string when nothing was added). */
static ds_status sb_finish(sbuf *b, char **out, size_t *len, ds_error *err)
{
    sb_add(b, "", 0);
    if (b->oom) {
        sb_free(b);
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    }
    *out = b->p;
    if (len)
        *len = b->n;
    return DS_OK;
}

/* ---- Python json.dumps ---------------------------------------------------- */

static void pj_string(sbuf *b, const char *s, size_t n)
{
    size_t run = 0;
    sb_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (!esc)
            continue;
        sb_add(b, s + run, i - run);
        sb_adds(b, esc);
        run = i + 1;
    }
    sb_add(b, s + run, n - run);
    sb_add(b, "\"", 1);
}

/* Python's float repr: the shortest digit string that reads back as the
 * same double, written positionally when the decimal exponent is in
 * [-4, 16) and as d.ddde+XX otherwise; integral values keep a ".0". */
static void pj_real(sbuf *b, double d)
{
    char e[40], digits[24], out[64];
    if (isnan(d)) {
        sb_adds(b, "NaN");
        return;
    }
    if (isinf(d)) {
        sb_adds(b, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, d);
        if (strtod(e, NULL) == d)
            break;
    }
    /* e is [-]D[.DDD]e(+|-)XX */
    const char *p = e;
    int neg = *p == '-', nd = 0;
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    char *o = out;
    if (neg)
        *o++ = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            o += sprintf(o, "0.");
            for (int i = -1; i > exp10; i--)
                *o++ = '0';
            o += sprintf(o, "%s", digits);
        } else {
            for (int i = 0; i <= exp10; i++)
                *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > exp10 + 1)
                o += sprintf(o, "%s", digits + exp10 + 1);
            else
                *o++ = '0';
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            o += sprintf(o, "%s", digits + 1);
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
    sb_adds(b, out);
}

static void pj_value(sbuf *b, const json_t *v)
{
    char num[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        sb_add(b, "{", 1);
        /* jansson iterates objects in insertion order, like Python dicts. */
        json_object_foreach((json_t *)v, k, x) {
            if (!first)
                sb_add(b, ", ", 2);
            first = 0;
            pj_string(b, k, strlen(k));
            sb_add(b, ": ", 2);
            pj_value(b, x);
        }
        sb_add(b, "}", 1);
        break;
    }
    case JSON_ARRAY:
        sb_add(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                sb_add(b, ", ", 2);
            pj_value(b, json_array_get(v, i));
        }
        sb_add(b, "]", 1);
        break;
    case JSON_STRING: pj_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sb_adds(b, num);
        break;
    case JSON_REAL: pj_real(b, json_real_value(v)); break;
    case JSON_TRUE: sb_adds(b, "true"); break;
    case JSON_FALSE: sb_adds(b, "false"); break;
    case JSON_NULL: sb_adds(b, "null"); break;
    }
}

ds_status ds_chat_json_dumps_py(const json_t *v, char **out, size_t *len, ds_error *err)
{
    sbuf b = { 0 };
    if (!v || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL argument to the JSON serializer");
    pj_value(&b, v);
    return sb_finish(&b, out, len, err);
}

/* ---- conversation input --------------------------------------------------- */

static const char *role_of(const json_t *m)
{
    const char *r = json_string_value(json_object_get(m, "role"));
    return r ? r : "";
}

static int role_is(const json_t *m, const char *role)
{
    return strcmp(role_of(m), role) == 0;
}

/* Appends a message field as text: null or missing is empty, a list of
 * OpenAI content parts gives the concatenation of their text, any other
 * non-string value its JSON.  The bytes are marked as message text. */
static void add_text_raw(sbuf *b, const json_t *v);
static void add_text(sbuf *b, const json_t *v)
{
    if (!v || json_is_null(v))
        return;
    const size_t start = b->n;
    add_text_raw(b, v);
    sb_mark(b, start);
}

static void add_text_raw(sbuf *b, const json_t *v)
{
    if (json_is_string(v)) {
        sb_add(b, json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *part = json_array_get(v, i);
            const json_t *t = json_is_object(part) ? json_object_get(part, "text") : part;
            if (json_is_string(t))
                sb_add(b, json_string_value(t), json_string_length(t));
        }
    } else {
        pj_value(b, v);
    }
}

static int nonempty_array(const json_t *v)
{
    return json_is_array(v) && json_array_size(v) > 0;
}

/* Puts the conversation-level tools / response_format on the first system
 * message, inserting an empty system message when there is none. */
static ds_status attach_to_system(json_t *msgs, json_t *tools, json_t *rf, ds_error *err)
{
    json_t *sys = NULL;
    int have_tools = nonempty_array(tools), have_rf = rf && !json_is_null(rf);
    if (!have_tools && !have_rf)
        return DS_OK;
    for (size_t i = 0; i < json_array_size(msgs) && !sys; i++)
        if (role_is(json_array_get(msgs, i), "system"))
            sys = json_array_get(msgs, i);
    if (!sys) {
        sys = json_pack("{s:s, s:s}", "role", "system", "content", "");
        if (!sys || json_array_insert_new(msgs, 0, sys))
            return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    }
    if ((have_tools && json_object_set(sys, "tools", tools)) ||
        (have_rf && json_object_set(sys, "response_format", rf)))
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    return DS_OK;
}

/* Parses the conversation into a private, modifiable array of messages and
 * checks what every renderer relies on: objects with a known role. */
static ds_status load_conversation(const char *text, size_t len, int attach, json_t **out,
                                   ds_error *err)
{
    static const char *roles[] = { "system", "user", "assistant", "developer", "tool" };
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je), *msgs;
    if (!root)
        return ds_fail(err, DS_ERR_INPUT, "chat: conversation JSON, line %d column %d: %s", je.line,
                       je.column, je.text);
    if (json_is_array(root)) {
        msgs = json_deep_copy(root);
    } else if (json_is_object(root) && json_is_array(json_object_get(root, "messages"))) {
        msgs = json_deep_copy(json_object_get(root, "messages"));
    } else {
        json_decref(root);
        return ds_fail(err, DS_ERR_INPUT,
                       "chat: the conversation must be a list of messages or an object with a \"messages\" list");
    }
    ds_status st = msgs ? DS_OK : ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    for (size_t i = 0; st == DS_OK && i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        size_t r = 0;
        if (!json_is_object(m)) {
            st = ds_fail(err, DS_ERR_INPUT, "chat: message %zu is not a JSON object", i);
            break;
        }
        while (r < sizeof roles / sizeof *roles && !role_is(m, roles[r]))
            r++;
        if (r == sizeof roles / sizeof *roles)
            st = ds_fail(err, DS_ERR_INPUT,
                         "chat: message %zu has role '%s' (expected system, user, assistant, developer or tool)",
                         i, role_of(m));
    }
    if (st == DS_OK && attach && json_is_object(root))
        st = attach_to_system(msgs, json_object_get(root, "tools"),
                              json_object_get(root, "response_format"), err);
    json_decref(root);
    if (st != DS_OK) {
        json_decref(msgs);
        return st;
    }
    *out = msgs;
    return DS_OK;
}

/* A tool call's arguments as an object (*out is a new reference): OpenAI
 * sends a JSON string ("" is taken as no arguments); an object is accepted
 * as is. */
static ds_status call_arguments(const json_t *fn, size_t msg, json_t **out, ds_error *err)
{
    const json_t *a = json_object_get(fn, "arguments");
    if (json_is_object(a)) {
        *out = json_incref((json_t *)a);
        return DS_OK;
    }
    if (!a || json_is_null(a) || (json_is_string(a) && json_string_length(a) == 0)) {
        *out = json_object();
        return *out ? DS_OK : ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    }
    if (!json_is_string(a))
        return ds_fail(err, DS_ERR_INPUT, "chat: message %zu: tool call arguments must be a JSON string", msg);
    *out = json_loadb(json_string_value(a), json_string_length(a), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!json_is_object(*out)) {
        json_decref(*out);
        return ds_fail(err, DS_ERR_INPUT, "chat: message %zu: tool call arguments are not a JSON object", msg);
    }
    return DS_OK;
}

/* The function object of an OpenAI tool call or tool: {"type": "function",
 * "function": {...}}; a bare function object is accepted too. */
static const json_t *function_of(const json_t *item)
{
    const json_t *fn = json_object_get(item, "function");
    return json_is_object(fn) ? fn : item;
}

/* ---- V3.2 renderer (SPEC 8.2) --------------------------------------------- */

static void v32_tools(sbuf *b, const json_t *tools)
{
    sb_adds(b, TOOLS_HEAD);
    for (size_t i = 0; i < json_array_size(tools); i++) {
        if (i)
            sb_add(b, "\n", 1);
        pj_value(b, function_of(json_array_get(tools, i)));
    }
    sb_adds(b, "\n</functions>\n");
}

static void v32_response_format(sbuf *b, const json_t *rf)
{
    sb_adds(b, RESPONSE_FORMAT_HEAD);
    pj_value(b, rf);
}

/* "\n\n" + tools block and "\n\n" + response format, for whatever the
 * message carries. */
static void v32_extras(sbuf *b, const json_t *m)
{
    const json_t *tools = json_object_get(m, "tools"), *rf = json_object_get(m, "response_format");
    if (nonempty_array(tools)) {
        sb_adds(b, "\n\n");
        v32_tools(b, tools);
    }
    if (rf && !json_is_null(rf)) {
        sb_adds(b, "\n\n");
        v32_response_format(b, rf);
    }
}

static ds_status v32_tool_calls(sbuf *b, const json_t *calls, size_t msg, ds_error *err)
{
    sb_adds(b, "\n\n<" DSML "function_calls>\n");
    for (size_t i = 0; i < json_array_size(calls); i++) {
        const json_t *fn = function_of(json_array_get(calls, i));
        const json_t *name = json_object_get(fn, "name");
        const char *k;
        json_t *v, *args;
        int first = 1;
        if (!json_is_string(name))
            return ds_fail(err, DS_ERR_INPUT, "chat: message %zu: tool call %zu has no function name", msg, i);
        ds_status st = call_arguments(fn, msg, &args, err);
        if (st != DS_OK)
            return st;
        if (i)
            sb_add(b, "\n", 1);
        sb_adds(b, INVOKE_OPEN);
        sb_add(b, json_string_value(name), json_string_length(name));
        sb_adds(b, "\">\n");
        json_object_foreach(args, k, v) {
            if (!first)
                sb_add(b, "\n", 1);
            first = 0;
            sb_adds(b, PARAM_OPEN);
            sb_adds(b, k);
            if (json_is_string(v)) {
                sb_adds(b, "\" string=\"true\">");
                sb_add(b, json_string_value(v), json_string_length(v));
            } else {
                sb_adds(b, "\" string=\"false\">");
                pj_value(b, v);
            }
            sb_adds(b, PARAM_CLOSE);
        }
        sb_adds(b, "\n" INVOKE_CLOSE);
        json_decref(args);
    }
    sb_adds(b, "\n" CALLS_CLOSE);
    return DS_OK;
}

static int last_user_index(const json_t *msgs)
{
    int last = -1;
    for (size_t i = 0; i < json_array_size(msgs); i++)
        if (role_is(json_array_get(msgs, i), "user") || role_is(json_array_get(msgs, i), "developer"))
            last = (int)i;
    return last;
}

/* The reference's drop_thinking pass: messages before the last user or
 * developer message keep only if system, user or tool; assistants lose
 * their reasoning; developers there are dropped (SPEC 8.2's quirk,
 * reproduced for identical bytes).  Replaces *msgs. */
static ds_status v32_drop_thinking(json_t **msgs, ds_error *err)
{
    int last = last_user_index(*msgs);
    json_t *out = json_array();
    if (!out)
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    for (size_t i = 0; i < json_array_size(*msgs); i++) {
        json_t *m = json_array_get(*msgs, i);
        if ((int)i >= last || role_is(m, "system") || role_is(m, "user") || role_is(m, "tool")) {
            json_array_append(out, m);
        } else if (role_is(m, "assistant")) {
            json_t *c = json_copy(m);
            if (c)
                json_object_del(c, "reasoning_content");
            if (!c || json_array_append_new(out, c)) {
                json_decref(out);
                return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
            }
        }
    }
    json_decref(*msgs);
    *msgs = out;
    return DS_OK;
}

static ds_status v32_message(sbuf *b, const json_t *msgs, size_t i, int last_user, int thinking,
                             ds_error *err)
{
    const json_t *m = json_array_get(msgs, i);
    const json_t *content = json_object_get(m, "content");
    /* After the last user turn the model is inside its own answer: the
     * reasoning stays visible and tool results reopen a thinking block. */
    int live = thinking && (int)i > last_user;
    if (role_is(m, "system")) {
        add_text(b, content);
        v32_extras(b, m);
    } else if (role_is(m, "user") || role_is(m, "developer")) {
        sb_adds(b, USER);
        if (role_is(m, "developer")) {
            v32_extras(b, m);
            sb_adds(b, "\n\n# The user's message is: ");
        }
        add_text(b, content);
        sb_adds(b, ASSISTANT);
        sb_adds(b, thinking && (int)i == last_user ? THINK_BEGIN : THINK_END);
    } else if (role_is(m, "assistant")) {
        const json_t *calls = json_object_get(m, "tool_calls");
        if (live) {
            add_text(b, json_object_get(m, "reasoning_content"));
            sb_adds(b, THINK_END);
        }
        add_text(b, content);
        if (nonempty_array(calls)) {
            ds_status st = v32_tool_calls(b, calls, i, err);
            if (st != DS_OK)
                return st;
        }
        sb_adds(b, EOS);
    } else { /* tool */
        size_t n = json_array_size(msgs);
        if (i == 0 || !role_is(json_array_get(msgs, i - 1), "tool"))
            sb_adds(b, "\n\n<function_results>");
        sb_adds(b, "\n<result>");
        add_text(b, content);
        sb_adds(b, "</result>");
        if (i + 1 == n || !role_is(json_array_get(msgs, i + 1), "tool")) {
            sb_adds(b, "\n</function_results>");
            sb_adds(b, live ? "\n\n" THINK_BEGIN : "\n\n" THINK_END);
        }
    }
    return DS_OK;
}

static ds_status render_v32(sbuf *b, json_t **msgs, const ds_chat_options *o, ds_error *err)
{
    ds_status st = DS_OK;
    if (o->thinking && o->drop_thinking && (st = v32_drop_thinking(msgs, err)) != DS_OK)
        return st;
    int last_user = last_user_index(*msgs);
    if (o->add_bos)
        sb_adds(b, BOS);
    for (size_t i = 0; st == DS_OK && i < json_array_size(*msgs); i++)
        st = v32_message(b, *msgs, i, last_user, o->thinking, err);
    return st;
}

/* ---- V3 / V3.1 renderer ----------------------------------------------------
 * Mirrors tokenizer_config.json's Jinja template statement by statement,
 * including its quirks: all system prompts are joined first; the tool-call
 * header is written only for the first call of the whole conversation and
 * every later call closes the call list; the first tool output of the
 * conversation opens the outputs block; an assistant message with content
 * renders its content only.  With thinking on, the V3.1 hybrid tokens are
 * added: past answers open with </think> and the generation prompt ends
 * with <think>. */

static void v3_call(sbuf *b, const json_t *call, int first)
{
    const json_t *fn = function_of(call);
    const json_t *type = json_object_get(call, "type"), *args = json_object_get(fn, "arguments");
    if (first)
        sb_adds(b, ASSISTANT V3_CALLS_BEGIN);
    else
        sb_adds(b, "\n");
    sb_adds(b, V3_CALL_BEGIN);
    add_text(b, type);
    sb_adds(b, V3_SEP);
    add_text(b, json_object_get(fn, "name"));
    sb_adds(b, V3_FENCE);
    add_text(b, args);
    sb_adds(b, "\n```" V3_CALL_END);
    if (!first)
        sb_adds(b, V3_CALLS_END EOS);
}

static ds_status render_v3(sbuf *b, const json_t *msgs, const ds_chat_options *o)
{
    int first_sp = 1, is_first = 0, is_tool = 0, output_first = 1;
    size_t n = json_array_size(msgs);
    if (o->add_bos)
        sb_adds(b, BOS);
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        if (!role_is(m, "system"))
            continue;
        if (!first_sp)
            sb_adds(b, "\n\n");
        add_text(b, json_object_get(m, "content"));
        first_sp = 0;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        const json_t *content = json_object_get(m, "content");
        if (role_is(m, "user")) {
            is_tool = 0;
            sb_adds(b, USER);
            add_text(b, content);
        } else if (role_is(m, "assistant") && (!content || json_is_null(content))) {
            const json_t *calls = json_object_get(m, "tool_calls");
            is_tool = 0;
            for (size_t k = 0; k < json_array_size(calls); k++) {
                v3_call(b, json_array_get(calls, k), !is_first);
                is_first = 1;
            }
        } else if (role_is(m, "assistant")) {
            if (is_tool) {
                sb_adds(b, "<｜tool▁outputs▁end｜>");
            } else {
                sb_adds(b, ASSISTANT);
                if (o->thinking)
                    sb_adds(b, THINK_END);
            }
            add_text(b, content);
            sb_adds(b, EOS);
            is_tool = 0;
        } else if (role_is(m, "tool")) {
            is_tool = 1;
            sb_adds(b, output_first ? "<｜tool▁outputs▁begin｜>" : "\n");
            output_first = 0;
            sb_adds(b, "<｜tool▁output▁begin｜>");
            add_text(b, content);
            sb_adds(b, "<｜tool▁output▁end｜>");
        }
    }
    if (is_tool)
        sb_adds(b, "<｜tool▁outputs▁end｜>");
    if (o->add_generation_prompt && !is_tool) {
        sb_adds(b, ASSISTANT);
        if (o->thinking)
            sb_adds(b, THINK_BEGIN);
    }
    return DS_OK;
}

/* ---- public rendering API ------------------------------------------------- */

void ds_chat_options_init(ds_chat_options *o)
{
    o->thinking = 0;
    o->drop_thinking = 1;
    o->add_bos = 1;
    o->add_generation_prompt = 1;
}

ds_chat_format ds_chat_format_for_model(const char *model_type)
{
    if (!model_type || strcmp(model_type, "deepseek_v32") == 0)
        return DS_CHAT_V32;
    return DS_CHAT_V3;
}

const char *ds_chat_format_name(ds_chat_format f)
{
    switch (f) {
    case DS_CHAT_V3: return "v3";
    case DS_CHAT_V32: return "v3.2";
    default: return "auto";
    }
}

int ds_chat_is_marker(const char *text, size_t len)
{
    static const char *const marks[] = {BOS, EOS, USER, ASSISTANT, THINK_BEGIN, THINK_END, V3_CALLS_BEGIN,
                                        V3_CALLS_END, V3_CALL_BEGIN, V3_CALL_END, V3_SEP};
    if (!text)
        return 0;
    for (size_t i = 0; i < sizeof marks / sizeof *marks; i++)
        if (strlen(marks[i]) == len && memcmp(marks[i], text, len) == 0)
            return 1;
    /* a DSML piece, should a tokenizer give one a token of its own */
    return memmem(text, len, DSML, strlen(DSML)) != NULL;
}

/* The rendered prompt in *b, message text marked. */
static ds_status render(ds_chat_format fmt, const char *conversation_json, size_t len, const ds_chat_options *opt,
                        sbuf *b, ds_error *err)
{
    ds_chat_options defaults;
    json_t *msgs = NULL;
    ds_status st;
    if (fmt != DS_CHAT_AUTO && fmt != DS_CHAT_V3 && fmt != DS_CHAT_V32)
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: unknown chat format %d", (int)fmt);
    if (!opt) {
        ds_chat_options_init(&defaults);
        opt = &defaults;
    }
    if ((st = load_conversation(conversation_json, len, fmt != DS_CHAT_V3, &msgs, err)) != DS_OK)
        return st;
    st = fmt == DS_CHAT_V3 ? render_v3(b, msgs, opt) : render_v32(b, &msgs, opt, err);
    json_decref(msgs);
    if (st == DS_OK && b->oom)
        st = ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    return st;
}

ds_status ds_chat_render(ds_chat_format fmt, const char *conversation_json, size_t len,
                         const ds_chat_options *opt, char **prompt, size_t *prompt_len,
                         ds_error *err)
{
    sbuf b = { 0 };
    if (!conversation_json || !prompt)
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL conversation or output");
    ds_status st = render(fmt, conversation_json, len, opt, &b, err);
    if (st != DS_OK) {
        sb_free(&b);
        return st;
    }
    free(b.span);
    b.span = NULL;
    return sb_finish(&b, prompt, prompt_len, err);
}

/* Whether message text p[0..n) spells an added token: its ids differ
 * with and without added-token matching. */
static ds_status spells_added(const ds_tokenizer *t, const char *p, size_t n, int *yes, ds_error *err)
{
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    ds_status st = ds_tokenizer_encode(t, p, n, 1, &a, &na, err);
    if (st == DS_OK)
        st = ds_tokenizer_encode(t, p, n, -1, &b, &nb, err);
    *yes = st == DS_OK && (na != nb || memcmp(a, b, sizeof(int32_t) * (size_t)na) != 0);
    free(a), free(b);
    return st;
}

/* Appends the ids of p[0..n) encoded with parse_special ps to *ids. */
static ds_status encode_append(const ds_tokenizer *t, const char *p, size_t n, int ps, int32_t **ids, int *nids,
                               ds_error *err)
{
    int32_t *part;
    int np;
    if (!n)
        return DS_OK;
    ds_status st = ds_tokenizer_encode(t, p, n, ps, &part, &np, err);
    if (st != DS_OK)
        return st;
    int32_t *all = realloc(*ids, sizeof(int32_t) * (size_t)(*nids + np + 1));
    if (!all) {
        free(part);
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    }
    memcpy(all + *nids, part, sizeof(int32_t) * (size_t)np);
    *ids = all, *nids += np;
    free(part);
    return DS_OK;
}

ds_status ds_chat_encode(const ds_tokenizer *t, ds_chat_format fmt, const char *conversation_json, size_t len,
                         const ds_chat_options *opt, int32_t **ids, int *n, char **prompt, size_t *prompt_len,
                         ds_error *err)
{
    sbuf b = { 0 };
    if (!t || !conversation_json || !ids || !n)
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL tokenizer, conversation or output");
    *ids = NULL, *n = 0;
    ds_status st = render(fmt, conversation_json, len, opt, &b, err);
    int forged = 0;
    for (int i = 0; st == DS_OK && i < b.nspan && !forged; i++)
        st = spells_added(t, b.p + b.span[2 * i], b.span[2 * i + 1] - b.span[2 * i], &forged, err);
    if (st == DS_OK && !forged) {
        st = ds_tokenizer_encode(t, b.p ? b.p : "", b.n, 1, ids, n, err);
    } else if (st == DS_OK) {
        /* the template between the messages' text with its markers, the text
         * itself recognising no added token */
        size_t at = 0;
        for (int i = 0; st == DS_OK && i <= b.nspan; i++) {
            const size_t s0 = i < b.nspan ? b.span[2 * i] : b.n, s1 = i < b.nspan ? b.span[2 * i + 1] : b.n;
            st = encode_append(t, b.p + at, s0 - at, 1, ids, n, err);
            if (st == DS_OK)
                st = encode_append(t, b.p + s0, s1 - s0, -1, ids, n, err);
            at = s1;
        }
        if (st != DS_OK) {
            free(*ids);
            *ids = NULL, *n = 0;
        }
    }
    if (st != DS_OK || !prompt) {
        sb_free(&b);
        return st;
    }
    free(b.span);
    b.span = NULL;
    st = sb_finish(&b, prompt, prompt_len, err);
    if (st != DS_OK) {
        free(*ids);
        *ids = NULL, *n = 0;
    }
    return st;
}

/* ---- completion parser ------------------------------------------------------
 * One state machine serves both the streaming and the one-shot parse (the
 * latter pushes everything at once), so they agree by construction.  Every
 * decision depends only on bytes already seen, or waits: that is what makes
 * the result independent of how the completion is chunked. */

enum { ST_START, ST_REASONING, ST_CONTENT, ST_TOOLS, ST_DONE };

/* Steps of the DSML block grammar, then of the V3 / V3.1 one, in order of
 * appearance. */
enum {
    D_OPEN, D_ITEM, D_INVOKE_NAME, D_INVOKE_GT, D_PARAM_ITEM, D_PARAM_NAME, D_PARAM_ATTR,
    D_PARAM_BOOL, D_VALUE,
    V_ITEM, V_HEAD, V_AFTER_SEP, V_NAME, V_FENCE, V_ARGS
};
enum { D_NEED, D_BAD, D_COMPLETE };

typedef struct ev_rec {      /* an event with its strings as arena offsets */
    ds_chat_event_kind kind;
    size_t text, len, name, args;
} ev_rec;

struct ds_chat_stream {
    int thinking, state;
    int v3;                  /* legacy V3 / V3.1 tool calls instead of DSML */
    const char *mark;        /* where a tool-call block starts: CALLS_MARK or V3_CALLS_BEGIN */
    sbuf pend;               /* bytes not yet decided, from off on */
    size_t off;
    /* tool-call block parser; offsets are relative to off (the block start) */
    int dstep;
    size_t dcur, dscan, vstart, tok;
    int vstring;             /* DSML: string="true"; V3: the arguments are fenced */
    char *cur_name, *param_name;
    json_t *cur_args, *calls;
    /* events of the current push */
    sbuf arena;
    ev_rec *recs;
    ds_chat_event *events;
    size_t nev, capev;
    int oom;
};

ds_chat_stream *ds_chat_stream_create_for(ds_chat_format fmt, int thinking)
{
    ds_chat_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->thinking = thinking != 0;
    s->v3 = fmt == DS_CHAT_V3;
    s->mark = s->v3 ? V3_CALLS_BEGIN : CALLS_MARK;
    s->state = ST_START;
    return s;
}

ds_chat_stream *ds_chat_stream_create(int thinking)
{
    return ds_chat_stream_create_for(DS_CHAT_V32, thinking);
}

static void dsml_reset(ds_chat_stream *s)
{
    free(s->cur_name);
    free(s->param_name);
    json_decref(s->cur_args);
    json_decref(s->calls);
    s->cur_name = s->param_name = NULL;
    s->cur_args = s->calls = NULL;
    s->dstep = s->v3 ? V_ITEM : D_OPEN;
    s->dcur = strlen(s->mark);
}

void ds_chat_stream_free(ds_chat_stream *s)
{
    if (!s)
        return;
    dsml_reset(s);
    sb_free(&s->pend);
    sb_free(&s->arena);
    free(s->recs);
    free(s->events);
    free(s);
}

int ds_chat_stream_stopped(const ds_chat_stream *s)
{
    return s && s->state == ST_DONE;
}

static ev_rec *new_event(ds_chat_stream *s, ds_chat_event_kind kind)
{
    if (s->nev == s->capev) {
        size_t cap = s->capev ? 2 * s->capev : 8;
        ev_rec *r = realloc(s->recs, cap * sizeof *r);
        if (!r) {
            s->oom = 1;
            return NULL;
        }
        s->recs = r;
        s->capev = cap;
    }
    ev_rec *e = &s->recs[s->nev++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    return e;
}

/* Copies a string into the arena, NUL-terminated; returns its offset. */
static size_t arena_put(ds_chat_stream *s, const char *p, size_t n)
{
    size_t at = s->arena.n;
    sb_add(&s->arena, p, n);
    sb_add(&s->arena, "", 1);
    return at;
}

static void emit_text(ds_chat_stream *s, ds_chat_event_kind kind, const char *p, size_t n)
{
    if (n == 0)
        return;
    /* consecutive pieces of the same kind within one push become one event */
    if (s->nev && s->recs[s->nev - 1].kind == kind && s->recs[s->nev - 1].text + s->recs[s->nev - 1].len + 1 == s->arena.n) {
        ev_rec *e = &s->recs[s->nev - 1];
        s->arena.n--;   /* overwrite the NUL */
        sb_add(&s->arena, p, n);
        sb_add(&s->arena, "", 1);
        e->len += n;
        return;
    }
    ev_rec *e = new_event(s, kind);
    if (!e)
        return;
    e->text = arena_put(s, p, n);
    e->len = n;
}

static void emit_calls(ds_chat_stream *s)
{
    for (size_t i = 0; i < json_array_size(s->calls); i++) {
        const json_t *c = json_array_get(s->calls, i);
        const json_t *name = json_object_get(c, "name");
        sbuf args = { 0 };
        pj_value(&args, json_object_get(c, "arguments"));
        ev_rec *e = new_event(s, DS_CHAT_EV_TOOL_CALL);
        if (args.oom || !e) {
            s->oom = 1;
        } else {
            e->name = arena_put(s, json_string_value(name), json_string_length(name));
            e->args = arena_put(s, args.p, args.n);
            e->text = arena_put(s, "", 0);
        }
        sb_free(&args);
    }
}

/* 2: p starts with lit; 1: p is a proper prefix of lit (undecided); 0: no. */
static int lit_match(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit), m = n < l ? n : l;
    if (memcmp(p, lit, m) != 0)
        return 0;
    return n >= l ? 2 : 1;
}

/* Length of the longest suffix of p[0..n) that is a proper prefix of lit. */
static size_t partial_suffix(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    for (size_t k = (n < l - 1 ? n : l - 1); k > 0; k--)
        if (memcmp(p + n - k, lit, k) == 0)
            return k;
    return 0;
}

/* Moves cut back to the start of a UTF-8 character left incomplete there,
 * so deltas are always whole characters. */
static size_t utf8_cut(const char *p, size_t cut)
{
    size_t i = cut, cont = 0;
    while (i > 0 && cont < 3 && ((unsigned char)p[i - 1] & 0xC0) == 0x80) {
        i--;
        cont++;
    }
    if (i == 0)
        return cut;
    unsigned char lead = (unsigned char)p[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return (lead >= 0xC0 && cont + 1 < need) ? i - 1 : cut;
}

/* Emits text of kind up to the first of two markers.  Returns the index of
 * the marker found (the pending bytes then start at it) or -1 when none is
 * complete yet; bytes that could begin a marker are kept unless final. */
static int scan_text(ds_chat_stream *s, ds_chat_event_kind kind, const char *m0, const char *m1,
                     int final)
{
    const char *p = s->pend.p + s->off;
    size_t n = s->pend.n - s->off;
    const char *f0 = memmem(p, n, m0, strlen(m0)), *f1 = memmem(p, n, m1, strlen(m1));
    if (f0 || f1) {
        int which = (f0 && (!f1 || f0 < f1)) ? 0 : 1;
        size_t at = (size_t)((which ? f1 : f0) - p);
        emit_text(s, kind, p, at);
        s->off += at;
        return which;
    }
    size_t cut = n;
    if (!final) {
        size_t h0 = partial_suffix(p, n, m0), h1 = partial_suffix(p, n, m1);
        cut = utf8_cut(p, n - (h0 > h1 ? h0 : h1));
    }
    emit_text(s, kind, p, cut);
    s->off += cut;
    return -1;
}

/* Skips blanks between DSML tags; 0 when the buffer ends first. */
static int skip_ws(const char *p, size_t n, size_t *cur)
{
    while (*cur < n && p[*cur] && strchr(" \t\r\n", p[*cur]))
        (*cur)++;
    return *cur < n;
}

/* Which of two literals starts at cur: 0 or 1 (cur moves past it), or
 * D_NEED / D_BAD encoded as -1 / -2. */
static int pick(const char *p, size_t n, size_t *cur, const char *a, const char *b)
{
    int ra = lit_match(p + *cur, n - *cur, a), rb = lit_match(p + *cur, n - *cur, b);
    if (ra == 2 || rb == 2) {
        *cur += strlen(ra == 2 ? a : b);
        return ra == 2 ? 0 : 1;
    }
    return (ra == 1 || rb == 1) ? -1 : -2;
}

/* The text from *cur up to the literal end (*cur then points at end):
 * NULL with *bad = 0 when more bytes are needed, *bad = 1 when the text is
 * empty, not UTF-8, or holds a NUL or one of the bytes in reject. */
static char *take_until(const char *p, size_t n, size_t *cur, const char *end, const char *reject,
                        int *bad)
{
    size_t i = *cur;
    int r = 0;
    *bad = 0;
    while (i < n && (r = lit_match(p + i, n - i, end)) == 0) {
        if (p[i] == 0 || strchr(reject, p[i])) {
            *bad = 1;
            return NULL;
        }
        i++;
    }
    if (i == n || r == 1)
        return NULL;
    if (i == *cur) {
        *bad = 1;
        return NULL;
    }
    char *name = strndup(p + *cur, i - *cur);
    json_t *chk = name ? json_string(name) : NULL;   /* NULL unless valid UTF-8 */
    *bad = !chk;
    json_decref(chk);
    if (*bad) {
        free(name);
        return NULL;
    }
    *cur = i;
    return name;
}

/* A name attribute's value up to '"'. */
static char *take_name(const char *p, size_t n, size_t *cur, int *bad)
{
    return take_until(p, n, cur, "\"", "<>\n", bad);
}

/* A parameter value: raw text for string="true"; JSON for string="false",
 * or the raw text when it is not valid JSON.  NULL when not valid UTF-8. */
static json_t *param_value(const char *p, size_t n, int is_string)
{
    if (!is_string) {
        json_t *v = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (v)
            return v;
    }
    return json_stringn(p, n);
}

/* Looks for the literal close from dscan on, an end-of-sentence first
 * meaning the block was cut off: its offset, or -1 with *res = D_NEED
 * (dscan moves on past what cannot hold it) or D_BAD. */
static long find_close(ds_chat_stream *s, const char *p, size_t n, const char *close, int *res)
{
    const char *q = p + s->dscan;
    size_t qn = n - s->dscan;
    const char *c = memmem(q, qn, close, strlen(close));
    const char *eos = memmem(q, qn, EOS, strlen(EOS));
    if (eos && (!c || eos < c)) {
        *res = D_BAD;
        return -1;
    }
    if (!c) {
        size_t keep = strlen(EOS) > strlen(close) ? strlen(EOS) : strlen(close);
        if (n > s->vstart + keep && n - keep > s->dscan)
            s->dscan = n - keep;
        *res = D_NEED;
        return -1;
    }
    return (long)(c - p);
}

/* One step of the block grammar at dcur.  The grammar, blanks allowed
 * between tags:  CALLS_MARK ">" (INVOKE_OPEN name "\">" (PARAM_OPEN name
 * "\" string=\"" ("true"|"false") "\">" value PARAM_CLOSE)* INVOKE_CLOSE)+
 * CALLS_CLOSE.  Returns D_NEED to wait, D_BAD, D_COMPLETE, or -1 to go on. */
static int dsml_step(ds_chat_stream *s)
{
    const char *p = s->pend.p + s->off;
    size_t n = s->pend.n - s->off;
    int r, bad;
    if (s->dstep != D_VALUE && s->dstep != D_INVOKE_NAME && s->dstep != D_PARAM_NAME &&
        s->dcur >= n)
        return D_NEED;
    switch (s->dstep) {
    case D_OPEN:
        if (p[s->dcur] != '>')
            return D_BAD;
        s->dcur++;
        s->dstep = D_ITEM;
        if (!s->calls && !(s->calls = json_array()))
            s->oom = 1;
        return -1;
    case D_ITEM:
        if (!skip_ws(p, n, &s->dcur))
            return D_NEED;
        r = pick(p, n, &s->dcur, INVOKE_OPEN, CALLS_CLOSE);
        if (r < 0)
            return r == -1 ? D_NEED : D_BAD;
        if (r == 1)
            return json_array_size(s->calls) ? D_COMPLETE : D_BAD;
        s->dstep = D_INVOKE_NAME;
        return -1;
    case D_INVOKE_NAME:
    case D_PARAM_NAME: {
        char *name = take_name(p, n, &s->dcur, &bad);
        if (bad) {
            free(name);
            return D_BAD;
        }
        if (!name)
            return D_NEED;
        if (s->dstep == D_INVOKE_NAME) {
            s->cur_name = name;
            s->dstep = D_INVOKE_GT;
        } else {
            s->param_name = name;
            s->dstep = D_PARAM_ATTR;
        }
        return -1;
    }
    case D_INVOKE_GT:
        r = lit_match(p + s->dcur, n - s->dcur, "\">");
        if (r != 2)
            return r ? D_NEED : D_BAD;
        s->dcur += 2;
        if (!(s->cur_args = json_object()))
            s->oom = 1;
        s->dstep = D_PARAM_ITEM;
        return -1;
    case D_PARAM_ITEM:
        if (!skip_ws(p, n, &s->dcur))
            return D_NEED;
        r = pick(p, n, &s->dcur, PARAM_OPEN, INVOKE_CLOSE);
        if (r < 0)
            return r == -1 ? D_NEED : D_BAD;
        if (r == 0) {
            s->dstep = D_PARAM_NAME;
            return -1;
        }
        {
            json_t *call = json_pack("{s:s, s:O}", "name", s->cur_name, "arguments", s->cur_args);
            if (!call || json_array_append_new(s->calls, call))
                s->oom = 1;
        }
        free(s->cur_name);
        json_decref(s->cur_args);
        s->cur_name = NULL;
        s->cur_args = NULL;
        s->dstep = D_ITEM;
        return -1;
    case D_PARAM_ATTR:
        r = lit_match(p + s->dcur, n - s->dcur, "\" string=\"");
        if (r != 2)
            return r ? D_NEED : D_BAD;
        s->dcur += strlen("\" string=\"");
        s->dstep = D_PARAM_BOOL;
        return -1;
    case D_PARAM_BOOL:
        r = pick(p, n, &s->dcur, "true\">", "false\">");
        if (r < 0)
            return r == -1 ? D_NEED : D_BAD;
        s->vstring = r == 0;
        s->vstart = s->dscan = s->dcur;
        s->dstep = D_VALUE;
        return -1;
    case D_VALUE: {
        /* the value ends at PARAM_CLOSE */
        long close = find_close(s, p, n, PARAM_CLOSE, &r);
        if (close < 0)
            return r;
        size_t end = (size_t)close;
        json_t *v = param_value(p + s->vstart, end - s->vstart, s->vstring);
        if (!v)
            return D_BAD;
        if (json_object_set_new(s->cur_args, s->param_name, v))
            s->oom = 1;
        free(s->param_name);
        s->param_name = NULL;
        s->dcur = end + strlen(PARAM_CLOSE);
        s->dstep = D_PARAM_ITEM;
        return -1;
    }
    }
    return D_BAD;
}

/* One step of the V3 / V3.1 grammar at dcur, blanks allowed between calls:
 * V3_CALLS_BEGIN (V3_CALL_BEGIN (V3: "function" V3_SEP name V3_FENCE args
 * "\n```" | V3.1: name V3_SEP args) V3_CALL_END)+ V3_CALLS_END, where args
 * is a JSON object (V3.1's is told apart by its '{' after the separator,
 * blanks allowed; a V3 name never starts with one).
 * Returns like dsml_step. */
static int v3_step(ds_chat_stream *s)
{
    const char *p = s->pend.p + s->off;
    size_t n = s->pend.n - s->off;
    int r, bad;
    switch (s->dstep) {
    case V_ITEM:
        if (!s->calls && !(s->calls = json_array()))
            s->oom = 1;
        if (!skip_ws(p, n, &s->dcur))
            return D_NEED;
        r = pick(p, n, &s->dcur, V3_CALL_BEGIN, V3_CALLS_END);
        if (r < 0)
            return r == -1 ? D_NEED : D_BAD;
        if (r == 1)
            return json_array_size(s->calls) ? D_COMPLETE : D_BAD;
        s->dstep = V_HEAD;
        return -1;
    case V_HEAD:
    case V_NAME: {
        /* V_HEAD: the type (V3) or the name (V3.1) up to the separator;
         * V_NAME: V3's name up to the fence */
        char *name = take_until(p, n, &s->dcur, s->dstep == V_HEAD ? V3_SEP : V3_FENCE, "<\n", &bad);
        if (bad || !name)
            return bad ? D_BAD : D_NEED;
        free(s->cur_name);
        s->cur_name = name;
        if (s->dstep == V_NAME) {
            s->dstep = V_FENCE;
            return -1;
        }
        s->dcur += strlen(V3_SEP);
        s->dstep = V_AFTER_SEP;
        return -1;
    }
    case V_AFTER_SEP: {
        size_t k = s->dcur;
        if (!skip_ws(p, n, &k))
            return D_NEED;
        if (p[k] == '{') {                  /* V3.1: the head was the name */
            s->vstring = 0;
            s->vstart = s->dscan = s->dcur;
            s->dstep = V_ARGS;
            return -1;
        }
        if (strcmp(s->cur_name, "function") != 0)
            return D_BAD;
        s->dstep = V_NAME;
        return -1;
    }
    case V_FENCE:
        r = lit_match(p + s->dcur, n - s->dcur, V3_FENCE);
        if (r != 2)
            return r ? D_NEED : D_BAD;
        s->dcur += strlen(V3_FENCE);
        s->vstring = 1;
        s->vstart = s->dscan = s->dcur;
        s->dstep = V_ARGS;
        return -1;
    case V_ARGS: {
        long end = find_close(s, p, n, V3_CALL_END, &r);
        if (end < 0)
            return r;
        size_t e = (size_t)end;
        if (s->vstring) {               /* the fence closes the arguments */
            while (e > s->vstart && strchr(" \t\r\n", p[e - 1]))
                e--;
            if (e < s->vstart + 3 || memcmp(p + e - 3, "```", 3) != 0)
                return D_BAD;
            e -= 3;
        }
        json_t *args = json_loadb(p + s->vstart, e - s->vstart, 0, NULL);
        if (!json_is_object(args)) {
            json_decref(args);
            return D_BAD;
        }
        json_t *call = json_pack("{s:s, s:o}", "name", s->cur_name, "arguments", args);
        if (!call || json_array_append_new(s->calls, call))
            s->oom = 1;
        free(s->cur_name);
        s->cur_name = NULL;
        s->dcur = (size_t)end + strlen(V3_CALL_END);
        s->dstep = V_ITEM;
        return -1;
    }
    }
    return D_BAD;
}

/* Runs the tool-call block parser of the stream's format as far as the
 * pending bytes allow. */
static int block_run(ds_chat_stream *s)
{
    int r;
    while ((r = s->v3 ? v3_step(s) : dsml_step(s)) == -1 && !s->oom)
        ;
    return s->oom ? D_BAD : r;
}

static void run_machine(ds_chat_stream *s, int final)
{
    for (;;) {
        const char *p = s->pend.p + s->off;
        size_t n = s->pend.n - s->off;
        int r;
        if (s->oom)
            return;
        switch (s->state) {
        case ST_START:
            /* the prompt ends with <think>; a model repeating it is tolerated */
            r = s->thinking ? lit_match(p, n, THINK_BEGIN) : 0;
            if (r == 1 && !final)
                return;
            if (r == 2)
                s->off += strlen(THINK_BEGIN);
            s->state = s->thinking ? ST_REASONING : ST_CONTENT;
            break;
        case ST_REASONING:
            r = scan_text(s, DS_CHAT_EV_REASONING, THINK_END, EOS, final);
            if (r < 0)
                return;
            s->off += strlen(r == 0 ? THINK_END : EOS);
            s->state = r == 0 ? ST_CONTENT : ST_DONE;
            break;
        case ST_CONTENT:
            r = scan_text(s, DS_CHAT_EV_CONTENT, EOS, s->mark, final);
            if (r < 0)
                return;
            if (r == 0) {
                s->off += strlen(EOS);
                s->state = ST_DONE;
            } else {
                dsml_reset(s);
                s->state = ST_TOOLS;
            }
            break;
        case ST_TOOLS:
            r = block_run(s);
            if (r == D_NEED && !final)
                return;
            if (r == D_COMPLETE) {
                emit_calls(s);
                s->off += s->dcur;
            } else {
                /* truncated or malformed: the marker is plain text, and the
                 * rest is scanned again as content */
                emit_text(s, DS_CHAT_EV_CONTENT, s->mark, strlen(s->mark));
                s->off += strlen(s->mark);
            }
            dsml_reset(s);
            s->state = ST_CONTENT;
            break;
        default: /* ST_DONE: text after the end of the message is ignored */
            s->off = s->pend.n;
            return;
        }
    }
}

static ds_status feed(ds_chat_stream *s, const char *bytes, size_t len, int final,
                      const ds_chat_event **events, size_t *n_events, ds_error *err)
{
    s->nev = 0;
    s->arena.n = 0;
    if (s->off > 0) {   /* drop decided bytes; DSML offsets are relative to off */
        memmove(s->pend.p, s->pend.p + s->off, s->pend.n - s->off);
        s->pend.n -= s->off;
        s->off = 0;
    }
    if (s->state != ST_DONE)
        sb_add(&s->pend, bytes, len);
    if (s->pend.oom)
        s->oom = 1;
    run_machine(s, final);
    if (s->oom || s->arena.oom) {
        s->oom = 1;
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory while parsing a completion");
    }
    free(s->events);
    s->events = s->nev ? malloc(s->nev * sizeof *s->events) : NULL;
    if (s->nev && !s->events) {
        s->oom = 1;
        return ds_fail(err, DS_ERR_NOMEM, "chat: out of memory while parsing a completion");
    }
    for (size_t i = 0; i < s->nev; i++) {
        const ev_rec *r = &s->recs[i];
        ds_chat_event *e = &s->events[i];
        e->kind = r->kind;
        e->text = s->arena.p + r->text;
        e->len = r->len;
        e->name = r->kind == DS_CHAT_EV_TOOL_CALL ? s->arena.p + r->name : NULL;
        e->arguments = r->kind == DS_CHAT_EV_TOOL_CALL ? s->arena.p + r->args : NULL;
    }
    if (events)
        *events = s->events;
    if (n_events)
        *n_events = s->nev;
    return DS_OK;
}

ds_status ds_chat_stream_push(ds_chat_stream *s, const char *bytes, size_t len,
                              const ds_chat_event **events, size_t *n_events, ds_error *err)
{
    if (!s || (!bytes && len))
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL stream or bytes");
    if (s->oom)
        return ds_fail(err, DS_ERR_NOMEM, "chat: the stream failed earlier (out of memory)");
    return feed(s, bytes, len, 0, events, n_events, err);
}

ds_status ds_chat_stream_finish(ds_chat_stream *s, const ds_chat_event **events,
                                size_t *n_events, ds_error *err)
{
    if (!s)
        return ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL stream");
    if (s->oom)
        return ds_fail(err, DS_ERR_NOMEM, "chat: the stream failed earlier (out of memory)");
    return feed(s, "", 0, 1, events, n_events, err);
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t need;
    uint32_t cp;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        need = 2, cp = p[0] & 0x1F;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        need = 3, cp = p[0] & 0x0F;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        need = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return need;
}

/* Replaces invalid UTF-8 (a completion cut inside a character) with
 * U+FFFD, so the message is always valid JSON text. */
static void utf8_repair(sbuf *b)
{
    sbuf out = { 0 };
    size_t i = 0;
    while (i < b->n) {
        size_t k = utf8_seq((const unsigned char *)b->p + i, b->n - i);
        if (k) {
            sb_add(&out, b->p + i, k);
            i += k;
        } else {
            sb_adds(&out, "\xEF\xBF\xBD");
            i++;
        }
    }
    if (out.oom) {
        b->oom = 1;
        sb_free(&out);
        return;
    }
    sb_free(b);
    *b = out;
}

/* Adds one push's events to the message being assembled. */
static void collect(const ds_chat_event *ev, size_t n, sbuf *content, sbuf *reasoning, json_t *calls)
{
    for (size_t i = 0; i < n; i++) {
        if (ev[i].kind == DS_CHAT_EV_REASONING) {
            sb_add(reasoning, ev[i].text, ev[i].len);
        } else if (ev[i].kind == DS_CHAT_EV_CONTENT) {
            sb_add(content, ev[i].text, ev[i].len);
        } else {
            json_t *c = json_pack("{s:s, s:{s:s, s:s}}", "type", "function", "function", "name",
                                  ev[i].name, "arguments", ev[i].arguments);
            if (!c || json_array_append_new(calls, c))
                content->oom = 1;
        }
    }
}

ds_status ds_chat_parse_completion(const char *text, size_t len, int thinking,
                                   char **message_json, ds_error *err)
{
    return ds_chat_parse_completion_for(DS_CHAT_V32, text, len, thinking, message_json, err);
}

ds_status ds_chat_parse_completion_for(ds_chat_format fmt, const char *text, size_t len,
                                       int thinking, char **message_json, ds_error *err)
{
    const ds_chat_event *ev;
    size_t nev;
    sbuf content = { 0 }, reasoning = { 0 }, out = { 0 };
    json_t *calls = json_array(), *msg = NULL;
    ds_chat_stream *s = ds_chat_stream_create_for(fmt, thinking);
    ds_status st = DS_OK;
    if (!text || !message_json)
        st = ds_fail(err, DS_ERR_INVALID_ARG, "chat: NULL completion or output");
    else if (!s || !calls)
        st = ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    if (st == DS_OK && (st = ds_chat_stream_push(s, text, len, &ev, &nev, err)) == DS_OK) {
        collect(ev, nev, &content, &reasoning, calls);
        if ((st = ds_chat_stream_finish(s, &ev, &nev, err)) == DS_OK)
            collect(ev, nev, &content, &reasoning, calls);
    }
    ds_chat_stream_free(s);
    utf8_repair(&content);
    utf8_repair(&reasoning);
    if (st == DS_OK && (content.oom || reasoning.oom || !(msg = json_object())))
        st = ds_fail(err, DS_ERR_NOMEM, "chat: out of memory");
    if (st == DS_OK) {
        json_t *c = json_stringn(content.p ? content.p : "", content.n);
        json_t *r = thinking ? json_stringn(reasoning.p ? reasoning.p : "", reasoning.n) : NULL;
        json_object_set_new(msg, "role", json_string("assistant"));
        if (!c || (thinking && !r)) {
            json_decref(c);
            json_decref(r);
            st = ds_fail(err, DS_ERR_INPUT, "chat: the completion is not valid UTF-8");
        } else {
            json_object_set_new(msg, "content", c);
            if (r)
                json_object_set_new(msg, "reasoning_content", r);
            if (json_array_size(calls))
                json_object_set(msg, "tool_calls", calls);
            pj_value(&out, msg);
            st = sb_finish(&out, message_json, NULL, err);
        }
    }
    json_decref(msg);
    json_decref(calls);
    sb_free(&content);
    sb_free(&reasoning);
    return st;
}
