/* batch_input.h — the input side of dsinfer-batch: the JSONL file as lines,
 * each line's identity (the id used for sharding, resume and duplicate
 * checks) and its interpretation as a generation request (OpenAI Batch API
 * lines for /v1/chat/completions and /v1/completions, plain prompt or
 * messages lines, the --template substitution). */
#ifndef DS_BATCH_INPUT_H
#define DS_BATCH_INPUT_H

#include <jansson.h>
#include <stddef.h>
#include "dsinfer.h"

/* The whole input, mapped (regular files) or read into memory (pipes). */
typedef struct batch_input {
    const char *data;
    size_t size;
    int mapped;
} batch_input;

/* 0 on success; -1 with errno set when the file cannot be read. */
int batch_input_open(const char *path, batch_input *in);
void batch_input_close(batch_input *in);
/* Iterates lines: *pos starts at 0; returns 0 at the end.  The line
 * excludes its '\n' (and a '\r' before it); *lineno counts from 1. */
int batch_input_next(const batch_input *in, size_t *pos, const char **line, size_t *len, long *lineno);
/* Non-zero for a line of only blanks (skipped: it is no request). */
int batch_line_blank(const char *line, size_t len);

typedef enum batch_style {
    BATCH_STYLE_PLAIN = 0,   /* {"id", "prompt" | "text" | "messages", ...} */
    BATCH_STYLE_OPENAI       /* {"custom_id", "method", "url", "body"} */
} batch_style;

/* Who a line is: its key ("line-N" when it names none or cannot be read),
 * the id value to echo in its record, and the record style. */
typedef struct batch_ident {
    char *key;
    json_t *id_value;        /* string or integer; a "line-N" string for keyless lines */
    batch_style style;
} batch_ident;

void batch_identify(const char *line, size_t len, long lineno, batch_ident *out);
void batch_ident_free(batch_ident *id);

typedef enum batch_kind {
    BATCH_KIND_CHAT = 0,     /* messages rendered with the chat encoding */
    BATCH_KIND_COMPLETION    /* raw text after BOS (/v1/completions) */
} batch_kind;

/* Defaults from the command line that a line may override. */
typedef struct batch_defaults {
    ds_sampler_params sampling;
    int max_tokens;
    int thinking;
    const char *template_text;   /* with {{text}} and optionally {{id}}; NULL = "{{text}}" */
    const json_t *json_schema;   /* --json-schema: told to the model as response_format in chat
                                    prompts of lines that give none; NULL = none */
} batch_defaults;

#define BATCH_MAX_STOP 16

typedef struct batch_request {
    batch_ident ident;
    batch_kind kind;
    char *conversation;      /* chat: JSON {"messages", "tools"?, "response_format"?} */
    char *prompt;            /* completion: the text */
    char *model;             /* body.model, echoed in OpenAI bodies; NULL when absent */
    ds_sampler_params sampling;
    int max_tokens;
    int thinking;
    char *stop[BATCH_MAX_STOP];
    int n_stop;
    ds_json_schema *schema;  /* the line's response_format (json_schema / json_object); NULL = none */
    /* when parsing fails: a code for the error record and its message */
    const char *err_code;
    char err_msg[512];
} batch_request;

/* Interprets one line; 0 on success, else -1 with err_code / err_msg set
 * (the identity is filled in either case). */
int batch_parse_request(const char *line, size_t len, long lineno, const batch_defaults *d,
                        batch_request *r);
void batch_request_free(batch_request *r);

#endif
