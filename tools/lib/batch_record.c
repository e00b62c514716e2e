/* batch_record.c — building dsinfer-batch's output records (see
 * batch_record.h).  Ids derived here are hashes of the line's key, so a
 * re-run produces the same ids for the same lines. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "batch_record.h"
#include "batch_util.h"
#include "common.h"

static json_t *hashed_id(const char *prefix, const char *key)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s%016" PRIx64, prefix, batch_fnv1a64(key, strlen(key)));
    return json_string(buf);
}

/* The start of every Batch API record: its own id, then the custom_id. */
static json_t *openai_record(const batch_ident *id)
{
    json_t *rec = json_object();
    json_object_set_new(rec, "id", hashed_id("batch_req_", id->key));
    json_object_set(rec, "custom_id", id->id_value);
    return rec;
}

json_t *batch_record_error(const batch_ident *id, const char *code, const char *message)
{
    char *msg = batch_utf8_sanitize(message);
    json_t *err = json_pack("{s:s, s:s}", "code", code, "message", msg);
    json_t *rec;
    free(msg);
    if (id->style == BATCH_STYLE_OPENAI) {
        rec = openai_record(id);
        json_object_set_new(rec, "response", json_null());
    } else {
        rec = json_object();
        json_object_set(rec, "id", id->id_value);
    }
    json_object_set_new(rec, "error", err);
    return rec;
}

static json_t *usage_object(const batch_result *res)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", res->prompt_tokens, "completion_tokens",
                     res->completion_tokens, "total_tokens", res->prompt_tokens + res->completion_tokens);
}

/* The assistant message parsed from a chat completion, with OpenAI-style
 * ids on its tool calls. */
static json_t *parse_message(const batch_result *res, char *why, size_t why_len)
{
    char *mj;
    ds_error err;
    if (ds_chat_parse_completion_for(res->fmt, res->text, res->len, res->req->thinking, &mj, &err) != DS_OK) {
        snprintf(why, why_len, "cannot parse the completion: %s", err.msg);
        return NULL;
    }
    json_t *msg = json_loads(mj, 0, NULL);
    free(mj);
    if (!json_is_object(msg)) {
        json_decref(msg);
        snprintf(why, why_len, "cannot parse the completion: the parser returned no message");
        return NULL;
    }
    if (!json_object_get(msg, "content"))
        json_object_set_new(msg, "content", json_string(""));
    size_t i;
    json_t *call;
    json_array_foreach(json_object_get(msg, "tool_calls"), i, call) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "call_%zu_", i);
        json_object_set_new(call, "id", hashed_id(prefix, res->req->ident.key));
    }
    return msg;
}

static const char *finish_reason(const batch_result *res, const json_t *msg)
{
    if (res->length_limited)
        return "length";
    return json_array_size(json_object_get(msg, "tool_calls")) > 0 ? "tool_calls" : "stop";
}

static json_t *completion_body(const batch_result *res, const char *object, json_t *choice)
{
    const batch_request *r = res->req;
    json_t *body = json_object();
    json_object_set_new(body, "id", hashed_id(r->kind == BATCH_KIND_CHAT ? "chatcmpl-" : "cmpl-", r->ident.key));
    json_object_set_new(body, "object", json_string(object));
    json_object_set_new(body, "created", json_integer((json_int_t)time(NULL)));
    json_object_set_new(body, "model", json_string(r->model ? r->model : res->model_name));
    json_object_set_new(body, "choices", json_pack("[o]", choice));
    json_object_set_new(body, "usage", usage_object(res));
    return body;
}

static json_t *openai_result(const batch_result *res, json_t *body)
{
    json_t *rec = openai_record(&res->req->ident);
    json_t *resp = json_object();
    json_object_set_new(resp, "status_code", json_integer(200));
    json_object_set_new(resp, "request_id", hashed_id("req_", res->req->ident.key));
    json_object_set_new(resp, "body", body);
    json_object_set_new(rec, "response", resp);
    json_object_set_new(rec, "error", json_null());
    return rec;
}

/* {"id", "content", "reasoning_content", "tool_calls"?, "finish_reason", "usage"} */
static json_t *plain_result(const batch_result *res, json_t *msg)
{
    json_t *rec = json_object();
    json_t *rc = json_object_get(msg, "reasoning_content");
    json_t *calls = json_object_get(msg, "tool_calls");
    json_object_set(rec, "id", res->req->ident.id_value);
    json_object_set(rec, "content", json_object_get(msg, "content"));
    json_object_set_new(rec, "reasoning_content", rc ? json_incref(rc) : json_null());
    if (calls)
        json_object_set(rec, "tool_calls", calls);
    json_object_set_new(rec, "finish_reason", json_string(finish_reason(res, msg)));
    json_object_set_new(rec, "usage", usage_object(res));
    json_decref(msg);
    return rec;
}

json_t *batch_record_result(const batch_result *res, char *why, size_t why_len)
{
    const batch_request *r = res->req;
    if (r->kind == BATCH_KIND_COMPLETION) {
        json_t *choice = json_pack("{s:i, s:s%, s:n, s:s}", "index", 0, "text", res->text, res->len,
                                   "logprobs", "finish_reason", res->length_limited ? "length" : "stop");
        if (!choice) {
            snprintf(why, why_len, "the completion is not valid UTF-8");
            return NULL;
        }
        return openai_result(res, completion_body(res, "text_completion", choice));
    }
    json_t *msg = parse_message(res, why, why_len);
    if (!msg)
        return NULL;
    if (r->ident.style == BATCH_STYLE_PLAIN)
        return plain_result(res, msg);
    const char *fr = finish_reason(res, msg);
    json_t *choice = json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "message", msg, "logprobs", "finish_reason", fr);
    return openai_result(res, completion_body(res, "chat.completion", choice));
}
