/* json_schema.h — internals of grammar-constrained JSON generation, shared
 * by src/json_schema.c (compiling a JSON Schema into a tree of js_node),
 * src/json_match.c (the byte-level pushdown matcher and the vocabulary
 * trie that turns it into token masks) and src/engine.c (which applies the
 * masks).  Private to the library. */
#ifndef DS_JSON_SCHEMA_H
#define DS_JSON_SCHEMA_H

#include <stddef.h>
#include <stdint.h>
#include "dsinfer.h"

/* Nesting the matcher's stack holds: the root frame plus this many - 1
 * nested values.  Schemas nest at most JS_MAX_SCHEMA_DEPTH levels; free-form
 * values ({} / "type": "object" without properties) may nest until the
 * stack is full (then they must close). */
#define JS_MAX_DEPTH 32
#define JS_MAX_SCHEMA_DEPTH 24
#define JS_MAX_PROPS 64            /* declared properties of one object */

/* Number lengths the matcher allows, so generation stays bounded. */
#define JS_MAX_INT_DIGITS 15
#define JS_MAX_FRAC_DIGITS 15
#define JS_MAX_EXP_DIGITS 2      /* |exponent| <= 99: 15 digits e99 stays finite */

typedef enum js_kind {
    JS_UNION = 0,   /* one of alts, chosen by the first byte (alternatives start differently) */
    JS_OBJECT,      /* declared properties in declared order */
    JS_MAP,         /* free-form object: any keys, values of `items` */
    JS_ARRAY,       /* values of `items`, min_items .. max_items of them */
    JS_STRING,      /* min_len .. max_len code points */
    JS_NUMBER,      /* integer != 0: no fraction or exponent */
    JS_LITERALS     /* exactly one of lits (compact JSON texts, sorted bytewise) */
} js_kind;

typedef struct js_node js_node;
struct js_node {
    js_kind kind;
    int integer;
    int min_len, max_len;              /* string; max_len -1 = unbounded */
    const js_node *items;              /* array items, map values */
    int min_items, max_items;          /* array; max_items -1 = unbounded */
    int n_props;                       /* object */
    char **keys;                       /* quoted key literals ("\"name\"") */
    uint32_t *key_len;
    const js_node **props;
    uint64_t required;                 /* bit i: property i is required */
    int n_lits;                        /* literals */
    char **lits;
    uint32_t *lit_len;
    int n_alts;                        /* union */
    const js_node **alts;
    uint8_t first[32];                 /* bitset of the bytes a value may start with */
};

struct ds_json_schema {
    const js_node *root;
    js_node **nodes;                   /* every node, for freeing */
    int n_nodes, cap;
};

/* The key of a free-form object: any string. */
extern const js_node js_plain_string;

/* The raw bytes of a token the vocabulary allows inside JSON; NULL for
 * special / added tokens and ids it does not know. */
const char *js_vocab_bytes(const ds_json_vocab *v, int32_t id, size_t *len);

#endif
