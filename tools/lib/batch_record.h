/* batch_record.h — the JSON records dsinfer-batch writes: OpenAI Batch API
 * output lines (chat.completion or text_completion bodies), plain result
 * lines, and error records of either style. */
#ifndef DS_BATCH_RECORD_H
#define DS_BATCH_RECORD_H

#include <jansson.h>
#include "batch_input.h"

/* {"id": ..., "error": {"code", "message"}} for plain lines;
 * {"id": "batch_req_...", "custom_id": ..., "response": null, "error": {...}}
 * for Batch API lines. */
json_t *batch_record_error(const batch_ident *id, const char *code, const char *message);

/* What a finished generation produced. */
typedef struct batch_result {
    const batch_request *req;
    const char *text;        /* the generated text (special tokens kept for chat) */
    size_t len;
    int prompt_tokens, completion_tokens;
    int length_limited;      /* stopped by max_tokens or the context, not by EOS / a stop string */
    const char *model_name;  /* when the request names none */
    ds_chat_format fmt;      /* how chat completions write tool calls (DSML or V3 tokens) */
} batch_result;

/* The success record of a request; NULL with *why set when the completion
 * cannot be parsed (then the caller writes an error record). */
json_t *batch_record_result(const batch_result *res, char *why, size_t why_len);

#endif
