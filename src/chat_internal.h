/* chat_internal.h — pieces of the chat encoder (src/chat.c) that the unit
 * tests reach directly: the Python-compatible JSON serializer whose exact
 * bytes the V3.2 prompts depend on. */
#ifndef DS_CHAT_INTERNAL_H
#define DS_CHAT_INTERNAL_H

#include <stddef.h>
#include <jansson.h>
#include "dsinfer.h"

/* Serializes v the way Python's json.dumps(v, ensure_ascii=False) does with
 * its default separators (", " and ": "): object keys in insertion order,
 * floats as Python's repr (shortest round-trip digits, "1.0", "1e-05",
 * "1e+16"), and \uXXXX escapes only for control characters.  *out is
 * malloc'ed and NUL-terminated. */
ds_status ds_chat_json_dumps_py(const json_t *v, char **out, size_t *len, ds_error *err);

#endif
