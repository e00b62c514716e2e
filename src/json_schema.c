/* json_schema.c — compiles a JSON Schema (jansson) into the tree of js_node
 * that src/json_match.c walks: checks every keyword (an unsupported one is
 * an error naming it and where it is), resolves "type" lists, enum / const
 * into sorted literal sets, anyOf / oneOf into first-byte unions, and the
 * free-form "any JSON value" family.  Owns ds_json_schema. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "json_schema.h"

const js_node js_plain_string = {.kind = JS_STRING, .max_len = -1, .max_items = -1};

typedef struct compiler {
    ds_json_schema *s;
    ds_error *err;
    const js_node *any;        /* the "any value" union, built on first use */
    char path[256];            /* where in the schema we are, for messages */
} compiler;

/* ---- nodes --------------------------------------------------------------- */
static void free_node(js_node *n)
{
    for (int i = 0; i < n->n_props; i++)
        free(n->keys[i]);
    for (int i = 0; i < n->n_lits; i++)
        free(n->lits[i]);
    free(n->keys);
    free(n->key_len);
    free(n->props);
    free(n->lits);
    free(n->lit_len);
    free(n->alts);
    free(n);
}

void ds_json_schema_free(ds_json_schema *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_nodes; i++)
        free_node(s->nodes[i]);
    free(s->nodes);
    free(s);
}

static js_node *new_node(compiler *c, js_kind kind)
{
    ds_json_schema *s = c->s;
    if (s->n_nodes == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        js_node **n = realloc(s->nodes, sizeof *n * (size_t)cap);
        if (!n)
            return NULL;
        s->nodes = n;
        s->cap = cap;
    }
    js_node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->kind = kind;
    n->max_len = -1;
    n->max_items = -1;
    s->nodes[s->n_nodes++] = n;
    return n;
}

static void set_first(js_node *n, unsigned char b) { n->first[b >> 3] |= (uint8_t)(1u << (b & 7)); }
static int has_first(const js_node *n, unsigned char b) { return n->first[b >> 3] >> (b & 7) & 1; }

static void set_number_first(js_node *n)
{
    set_first(n, '-');
    for (unsigned char d = '0'; d <= '9'; d++)
        set_first(n, d);
}

/* ---- errors -------------------------------------------------------------- */
static ds_status fail_at(compiler *c, const char *what)
{
    return ds_fail(c->err, DS_ERR_UNSUPPORTED, "JSON schema at %s: %s", c->path[0] ? c->path : "/", what);
}

static ds_status oom(compiler *c) { return ds_fail(c->err, DS_ERR_NOMEM, "JSON schema: out of memory"); }

/* Appends "/seg" to the path; returns the old length to restore. */
static size_t path_push(compiler *c, const char *seg)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "/%s", seg);
    return old;
}

static void path_pop(compiler *c, size_t old) { c->path[old] = 0; }

/* ---- literals (enum, const, boolean, null) -------------------------------- */
static int lit_cmp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    return strcmp(x, y);    /* compact JSON holds no NUL byte (it is escaped) */
}

/* A literal node over the compact JSON texts of values[0..n). */
static ds_status literal_node(compiler *c, json_t *const *values, int n, const js_node **out)
{
    js_node *nd = new_node(c, JS_LITERALS);
    if (!nd || !(nd->lits = calloc((size_t)n, sizeof(char *))) || !(nd->lit_len = calloc((size_t)n, sizeof(uint32_t))))
        return oom(c);
    for (int i = 0; i < n; i++) {
        nd->lits[i] = json_dumps(values[i], JSON_COMPACT | JSON_ENCODE_ANY);
        if (!nd->lits[i])
            return oom(c);
        nd->n_lits = i + 1;
    }
    qsort(nd->lits, (size_t)n, sizeof(char *), lit_cmp);
    int k = 0;
    for (int i = 0; i < n; i++) {            /* drop repeats */
        if (k > 0 && strcmp(nd->lits[k - 1], nd->lits[i]) == 0) {
            free(nd->lits[i]);
            continue;
        }
        nd->lits[k++] = nd->lits[i];
    }
    nd->n_lits = k;
    for (int i = 0; i < k; i++) {
        nd->lit_len[i] = (uint32_t)strlen(nd->lits[i]);
        set_first(nd, (unsigned char)nd->lits[i][0]);
    }
    *out = nd;
    return DS_OK;
}

static ds_status words_node(compiler *c, const char *a, const char *b, const js_node **out)
{
    json_t *v[2] = {json_loads(a, JSON_DECODE_ANY, NULL), b ? json_loads(b, JSON_DECODE_ANY, NULL) : NULL};
    ds_status st = v[0] && (!b || v[1]) ? literal_node(c, v, b ? 2 : 1, out) : oom(c);
    json_decref(v[0]);
    json_decref(v[1]);
    return st;
}

/* ---- the "any value" family ---------------------------------------------- */
static ds_status union_node(compiler *c, const js_node **alts, int n, const js_node **out);

static ds_status any_node(compiler *c, const js_node **out)
{
    if (c->any) {
        *out = c->any;
        return DS_OK;
    }
    js_node *u = new_node(c, JS_UNION), *map = new_node(c, JS_MAP), *arr = new_node(c, JS_ARRAY);
    js_node *str = new_node(c, JS_STRING), *num = new_node(c, JS_NUMBER);
    const js_node *words;
    if (!u || !map || !arr || !str || !num)
        return oom(c);
    json_t *vals[3] = {json_true(), json_false(), json_null()};
    ds_status st = literal_node(c, vals, 3, &words);
    if (st != DS_OK)
        return st;
    map->items = u;
    set_first(map, '{');
    arr->items = u;
    set_first(arr, '[');
    set_first(str, '"');
    set_number_first(num);
    if (!(u->alts = calloc(5, sizeof *u->alts)))
        return oom(c);
    const js_node *alts[5] = {map, arr, str, num, words};
    for (int i = 0; i < 5; i++) {
        u->alts[i] = alts[i];
        for (int b = 0; b < 32; b++)
            u->first[b] |= alts[i]->first[b];
    }
    u->n_alts = 5;
    c->any = u;
    *out = u;
    return DS_OK;
}

/* A union of alternatives that start with pairwise different bytes. */
static ds_status union_node(compiler *c, const js_node **alts, int n, const js_node **out)
{
    if (n == 1) {
        *out = alts[0];
        return DS_OK;
    }
    js_node *u = new_node(c, JS_UNION);
    if (!u || !(u->alts = calloc((size_t)n, sizeof *u->alts)))
        return oom(c);
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < 256; b++)
            if (has_first(alts[i], (unsigned char)b) && has_first(u, (unsigned char)b))
                return fail_at(c, "alternatives (anyOf / oneOf / a type list) that can start with the same "
                                  "character are not supported");
        for (int b = 0; b < 32; b++)
            u->first[b] |= alts[i]->first[b];
        u->alts[i] = alts[i];
    }
    u->n_alts = n;
    *out = u;
    return DS_OK;
}

/* ---- keywords ------------------------------------------------------------ */
static const char *const annotations[] = {"title", "description", "default", "examples", "$schema", "$id",
                                          "$comment", "readOnly", "writeOnly", "deprecated", NULL};
static const char *const known[] = {"type", "enum", "const", "anyOf", "oneOf", "properties", "required",
                                    "additionalProperties", "items", "minItems", "maxItems", "minLength",
                                    "maxLength", NULL};

static int in_list(const char *k, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(k, list[i]) == 0)
            return 1;
    return 0;
}

static ds_status check_keywords(compiler *c, const json_t *s)
{
    const char *k;
    const json_t *v;
    char msg[200];
    json_object_foreach((json_t *)s, k, v) {
        if (in_list(k, annotations) || in_list(k, known))
            continue;
        snprintf(msg, sizeof msg, "unsupported keyword \"%.100s\"", k);
        return fail_at(c, msg);
    }
    return DS_OK;
}

/* A non-negative integer keyword; *out keeps its value when absent. */
static ds_status count_kw(compiler *c, const json_t *s, const char *key, int *out)
{
    const json_t *v = json_object_get(s, key);
    char msg[160];
    if (!v)
        return DS_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24)) {
        snprintf(msg, sizeof msg, "\"%s\" must be a non-negative integer", key);
        return fail_at(c, msg);
    }
    *out = (int)json_integer_value(v);
    return DS_OK;
}

/* Bit set of the type names a schema allows ("type" absent: inferred from
 * the keywords present, or every type). */
enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOLEAN = 32, T_NULL = 64 };
static const char *const type_names[] = {"object", "array", "string", "number", "integer", "boolean", "null"};

static ds_status type_bit(compiler *c, const json_t *v, unsigned *bits)
{
    char msg[160];
    for (int i = 0; json_is_string(v) && i < 7; i++)
        if (strcmp(json_string_value(v), type_names[i]) == 0) {
            *bits |= 1u << i;
            return DS_OK;
        }
    snprintf(msg, sizeof msg, "\"type\" must be one of object, array, string, number, integer, boolean, null%s%.60s",
             json_is_string(v) ? "; got " : "", json_is_string(v) ? json_string_value(v) : "");
    return fail_at(c, msg);
}

static ds_status type_bits(compiler *c, const json_t *s, unsigned *bits)
{
    const json_t *t = json_object_get(s, "type"), *e;
    size_t i;
    *bits = 0;
    if (json_is_array(t)) {
        json_array_foreach(t, i, e) {
            ds_status st = type_bit(c, e, bits);
            if (st != DS_OK)
                return st;
        }
        if (!*bits)
            return fail_at(c, "\"type\" is an empty list");
    } else if (t) {
        return type_bit(c, t, bits);
    } else {
        if (json_object_get(s, "properties") || json_object_get(s, "required") ||
            json_object_get(s, "additionalProperties"))
            *bits |= T_OBJECT;
        if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems"))
            *bits |= T_ARRAY;
        if (json_object_get(s, "minLength") || json_object_get(s, "maxLength"))
            *bits |= T_STRING;
    }
    if ((*bits & T_NUMBER) && (*bits & T_INTEGER))
        *bits &= ~(unsigned)T_INTEGER;          /* every integer is a number */
    return DS_OK;
}

/* ---- per-type nodes ------------------------------------------------------- */
static ds_status compile_schema(compiler *c, const json_t *s, int depth, const js_node **out);

static ds_status string_node(compiler *c, const json_t *s, const js_node **out)
{
    js_node *n = new_node(c, JS_STRING);
    if (!n)
        return oom(c);
    ds_status st = count_kw(c, s, "minLength", &n->min_len);
    if (st == DS_OK)
        st = count_kw(c, s, "maxLength", &n->max_len);
    if (st == DS_OK && n->max_len >= 0 && n->min_len > n->max_len)
        st = fail_at(c, "minLength is greater than maxLength");
    set_first(n, '"');
    *out = n;
    return st;
}

static ds_status number_node(compiler *c, int integer, const js_node **out)
{
    js_node *n = new_node(c, JS_NUMBER);
    if (!n)
        return oom(c);
    n->integer = integer;
    set_number_first(n);
    *out = n;
    return DS_OK;
}

static ds_status array_node(compiler *c, const json_t *s, int depth, const js_node **out)
{
    js_node *n = new_node(c, JS_ARRAY);
    const json_t *items = json_object_get(s, "items");
    ds_status st;
    if (!n)
        return oom(c);
    if ((st = count_kw(c, s, "minItems", &n->min_items)) != DS_OK ||
        (st = count_kw(c, s, "maxItems", &n->max_items)) != DS_OK)
        return st;
    if (n->max_items >= 0 && n->min_items > n->max_items)
        return fail_at(c, "minItems is greater than maxItems");
    if (json_is_array(items))
        return fail_at(c, "\"items\" as a list (tuple validation) is not supported");
    size_t old = path_push(c, "items");
    st = items ? compile_schema(c, items, depth + 1, &n->items) : any_node(c, &n->items);
    path_pop(c, old);
    set_first(n, '[');
    *out = n;
    return st;
}

/* The quoted compact JSON spelling of a property name. */
static char *quoted_key(const char *name)
{
    json_t *s = json_string(name);
    char *q = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    json_decref(s);
    return q;
}

static ds_status required_bits(compiler *c, const json_t *s, const js_node *n, const json_t *props)
{
    const json_t *req = json_object_get(s, "required"), *e;
    size_t i;
    char msg[200];
    if (!req)
        return DS_OK;
    if (!json_is_array(req))
        return fail_at(c, "\"required\" must be a list of property names");
    json_array_foreach(req, i, e) {
        if (!json_is_string(e))
            return fail_at(c, "\"required\" must be a list of property names");
        int at = -1, k = 0;
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)props, key, v) {
            if (strcmp(key, json_string_value(e)) == 0)
                at = k;
            k++;
        }
        if (at < 0) {
            snprintf(msg, sizeof msg, "required property \"%.100s\" is not in \"properties\"", json_string_value(e));
            return fail_at(c, msg);
        }
        ((js_node *)n)->required |= 1ull << at;
    }
    return DS_OK;
}

static ds_status property_nodes(compiler *c, js_node *n, const json_t *props, int depth)
{
    const char *key;
    const json_t *v;
    size_t np = json_object_size(props);
    if (np > JS_MAX_PROPS)
        return fail_at(c, "more than 64 properties in one object are not supported");
    n->keys = calloc(np + 1, sizeof *n->keys);
    n->key_len = calloc(np + 1, sizeof *n->key_len);
    n->props = calloc(np + 1, sizeof *n->props);
    if (!n->keys || !n->key_len || !n->props)
        return oom(c);
    json_object_foreach((json_t *)props, key, v) {
        int i = n->n_props;
        if (!(n->keys[i] = quoted_key(key)))
            return oom(c);
        n->key_len[i] = (uint32_t)strlen(n->keys[i]);
        n->n_props++;
        size_t old = path_push(c, "properties");
        size_t old2 = path_push(c, key);
        ds_status st = compile_schema(c, v, depth + 1, &n->props[i]);
        path_pop(c, old2);
        path_pop(c, old);
        if (st != DS_OK)
            return st;
    }
    return DS_OK;
}

static ds_status object_node(compiler *c, const json_t *s, int depth, const js_node **out)
{
    const json_t *props = json_object_get(s, "properties");
    const json_t *extra = json_object_get(s, "additionalProperties");
    ds_status st;
    if (props && !json_is_object(props))
        return fail_at(c, "\"properties\" must be an object");
    if (extra && !json_is_boolean(extra) && !json_is_object(extra))
        return fail_at(c, "\"additionalProperties\" must be a boolean or a schema");
    if (!props && !json_is_false(extra)) {
        /* free-form: any keys, values of additionalProperties (any by default) */
        js_node *m = new_node(c, JS_MAP);
        if (!m)
            return oom(c);
        if (json_object_get(s, "required"))
            return fail_at(c, "\"required\" without \"properties\" is not supported");
        size_t old = path_push(c, "additionalProperties");
        st = json_is_object(extra) ? compile_schema(c, extra, depth + 1, &m->items) : any_node(c, &m->items);
        path_pop(c, old);
        set_first(m, '{');
        *out = m;
        return st;
    }
    /* declared properties only: additional ones are allowed or not, but never generated */
    js_node *n = new_node(c, JS_OBJECT);
    if (!n)
        return oom(c);
    set_first(n, '{');
    *out = n;
    if (!props)
        return json_object_get(s, "required") ? fail_at(c, "\"required\" without \"properties\" is not supported")
                                              : DS_OK;
    if ((st = property_nodes(c, n, props, depth)) != DS_OK)
        return st;
    return required_bits(c, s, n, props);
}

/* ---- enum / const --------------------------------------------------------- */
static int value_has_type(const json_t *v, unsigned bits)
{
    if (!bits)
        return 1;
    switch (json_typeof(v)) {
    case JSON_OBJECT: return (bits & T_OBJECT) != 0;
    case JSON_ARRAY: return (bits & T_ARRAY) != 0;
    case JSON_STRING: return (bits & T_STRING) != 0;
    case JSON_INTEGER: return (bits & (T_NUMBER | T_INTEGER)) != 0;
    case JSON_REAL: return (bits & T_NUMBER) != 0;
    case JSON_TRUE:
    case JSON_FALSE: return (bits & T_BOOLEAN) != 0;
    default: return (bits & T_NULL) != 0;
    }
}

/* enum / const as a literal set, keeping only values of the allowed types. */
static ds_status enum_node(compiler *c, const json_t *s, unsigned bits, const js_node **out)
{
    const json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    if (en && cn)
        return fail_at(c, "\"enum\" together with \"const\" is not supported");
    if (en && (!json_is_array(en) || json_array_size(en) == 0))
        return fail_at(c, "\"enum\" must be a non-empty list");
    size_t n = en ? json_array_size(en) : 1;
    json_t **vals = calloc(n, sizeof *vals);
    int k = 0;
    if (!vals)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        json_t *v = en ? json_array_get(en, i) : (json_t *)cn;
        if (value_has_type(v, bits))
            vals[k++] = v;
    }
    ds_status st = k ? literal_node(c, vals, k, out) : fail_at(c, "no \"enum\" / \"const\" value has the allowed type");
    free(vals);
    return st;
}

/* ---- anyOf / oneOf ---------------------------------------------------------- */
static ds_status alternatives(compiler *c, const json_t *s, int depth, const js_node **out)
{
    const char *kw = json_object_get(s, "anyOf") ? "anyOf" : "oneOf";
    const json_t *list = json_object_get(s, kw), *e;
    size_t i;
    char msg[120];
    if (json_object_get(s, "anyOf") && json_object_get(s, "oneOf"))
        return fail_at(c, "\"anyOf\" together with \"oneOf\" is not supported");
    for (const char *const *k = known; *k; k++)
        if (strcmp(*k, kw) != 0 && json_object_get(s, *k)) {
            snprintf(msg, sizeof msg, "\"%s\" beside \"%s\" is not supported (put it in each alternative)", *k, kw);
            return fail_at(c, msg);
        }
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > 16)
        return fail_at(c, "\"anyOf\" / \"oneOf\" must be a list of 1 to 16 schemas");
    const js_node *alts[16];
    json_array_foreach(list, i, e) {
        char seg[40];
        snprintf(seg, sizeof seg, "%s/%zu", kw, i);
        size_t old = path_push(c, seg);
        ds_status st = compile_schema(c, e, depth + 1, &alts[i]);
        path_pop(c, old);
        if (st != DS_OK)
            return st;
    }
    return union_node(c, alts, (int)json_array_size(list), out);
}

/* ---- one schema ------------------------------------------------------------ */
static ds_status typed_node(compiler *c, const json_t *s, int type_index, int depth, const js_node **out)
{
    switch (1u << type_index) {
    case T_OBJECT: return object_node(c, s, depth, out);
    case T_ARRAY: return array_node(c, s, depth, out);
    case T_STRING: return string_node(c, s, out);
    case T_NUMBER: return number_node(c, 0, out);
    case T_INTEGER: return number_node(c, 1, out);
    case T_BOOLEAN: return words_node(c, "true", "false", out);
    default: return words_node(c, "null", NULL, out);
    }
}

static ds_status compile_schema(compiler *c, const json_t *s, int depth, const js_node **out)
{
    unsigned bits;
    ds_status st;
    if (depth > JS_MAX_SCHEMA_DEPTH)
        return fail_at(c, "the schema nests more than 24 levels");
    if (json_is_true(s))
        return any_node(c, out);
    if (!json_is_object(s))
        return fail_at(c, json_is_false(s) ? "the schema false matches nothing" : "a schema must be an object");
    if ((st = check_keywords(c, s)) != DS_OK)
        return st;
    if (json_object_get(s, "anyOf") || json_object_get(s, "oneOf"))
        return alternatives(c, s, depth, out);
    if ((st = type_bits(c, s, &bits)) != DS_OK)
        return st;
    if (json_object_get(s, "enum") || json_object_get(s, "const"))
        return enum_node(c, s, bits, out);
    if (!bits)
        return any_node(c, out);
    const js_node *alts[7];
    int n = 0;
    for (int i = 0; i < 7; i++)
        if (bits >> i & 1)
            if ((st = typed_node(c, s, i, depth, &alts[n++])) != DS_OK)
                return st;
    return union_node(c, alts, n, out);
}

ds_status ds_json_schema_compile(const char *schema_json, size_t len, ds_json_schema **out, ds_error *err)
{
    json_error_t jerr;
    ds_error_clear(err);
    if (!schema_json || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_json_schema_compile: NULL argument");
    json_t *root = json_loadb(schema_json, len, JSON_DECODE_ANY, &jerr);
    if (!root)
        return ds_fail(err, DS_ERR_FORMAT, "JSON schema: not JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                       jerr.column);
    compiler c = {.err = err};
    c.s = calloc(1, sizeof *c.s);
    ds_status st = c.s ? compile_schema(&c, root, 0, &c.s->root) : oom(&c);
    json_decref(root);
    if (st != DS_OK) {
        ds_json_schema_free(c.s);
        return st;
    }
    *out = c.s;
    return DS_OK;
}
