/* json_match.c — the byte-level pushdown matcher of grammar-constrained JSON
 * generation and its token masks.  A matcher state is a stack of frames,
 * one per open value (the root frame at the bottom); each byte goes to the
 * top frame, which consumes it, rejects it, or hands it on (a union picks
 * its alternative, a container pushes a child, a number that ends pops and
 * gives the byte to its parent).  The vocabulary is a byte trie over every
 * plain token; a mask is a depth-first walk of the trie carrying copies of
 * the state, so a shared token prefix is checked once.  Owns ds_json_vocab
 * and ds_json_matcher.  The grammar is compact JSON: no whitespace outside
 * strings, \u escapes other than surrogates and \u0000, numbers of bounded
 * length (json_schema.h). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "json_schema.h"
#include "tokenizer_internal.h"

typedef struct js_frame {
    const js_node *node;       /* NULL: the root frame */
    uint32_t phase;
    uint32_t n;                /* chars / items / digits / literal or key position */
    uint32_t lo, hi;           /* literal range; object: next property, chosen property */
    uint64_t mask;             /* object: candidate keys */
    uint8_t utf_left, utf_lo, utf_hi, hex;   /* string: UTF-8 continuation, \u digits */
    uint32_t hexval;
} js_frame;

typedef struct js_state {
    int depth;
    js_frame f[JS_MAX_DEPTH];
} js_state;

enum { R_REJECT, R_CONSUMED, R_REFEED };
enum { ROOT_VALUE, ROOT_DONE };   /* the root frame's value is pushed at the start */
enum { S_OPEN, S_BODY, S_ESCAPE, S_HEX, S_UTF8 };
enum { N_START, N_MINUS, N_INT, N_ZERO, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
enum { C_OPEN, C_FIRST, C_KEY, C_COLON, C_VALUE, C_AFTER, C_NEXT };   /* objects, maps, arrays */

/* ---- the stack ----------------------------------------------------------- */
static js_frame *top(js_state *s) { return &s->f[s->depth - 1]; }

static int push(js_state *s, const js_node *n)
{
    if (s->depth >= JS_MAX_DEPTH)
        return 0;
    js_frame *f = &s->f[s->depth++];
    memset(f, 0, sizeof *f);
    f->node = n;
    return 1;
}

/* The top value is complete: pop it and move its parent on. */
static void child_done(js_state *s)
{
    s->depth--;
    js_frame *p = top(s);
    if (!p->node) {
        p->phase = ROOT_DONE;
        return;
    }
    if (p->node->kind == JS_ARRAY)
        p->n++;
    if (p->node->kind == JS_MAP && p->phase == C_KEY)
        p->phase = C_COLON;
    else
        p->phase = C_AFTER;
}

static void copy_state(js_state *dst, const js_state *src)
{
    dst->depth = src->depth;
    memcpy(dst->f, src->f, sizeof(js_frame) * (size_t)src->depth);
}

/* ---- strings --------------------------------------------------------------- */
static int hex_digit(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A UTF-8 lead byte: the continuation bytes it needs and the range of the
 * first one (no overlong forms, no surrogates, nothing past U+10FFFF). */
static int utf8_lead(js_frame *f, uint8_t c)
{
    f->utf_lo = 0x80;
    f->utf_hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        f->utf_left = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        f->utf_left = 2;
        f->utf_lo = c == 0xe0 ? 0xa0 : 0x80;
        f->utf_hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        f->utf_left = 3;
        f->utf_lo = c == 0xf0 ? 0x90 : 0x80;
        f->utf_hi = c == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0;
    return 1;
}

static int string_room(const js_frame *f) { return f->node->max_len < 0 || f->n < (uint32_t)f->node->max_len; }

static int string_body(js_state *s, js_frame *f, uint8_t c)
{
    if (c == '"') {
        if (f->n < (uint32_t)f->node->min_len)
            return R_REJECT;
        child_done(s);
        return R_CONSUMED;
    }
    if (c < 0x20 || !string_room(f))
        return R_REJECT;
    f->n++;
    if (c == '\\')
        f->phase = S_ESCAPE;
    else if (c >= 0x80) {
        if (!utf8_lead(f, c))
            return R_REJECT;
        f->phase = S_UTF8;
    }
    return R_CONSUMED;
}

static int string_hex(js_frame *f, uint8_t c)
{
    int d = hex_digit(c);
    if (d < 0)
        return R_REJECT;
    f->hexval = f->hexval * 16 + (uint32_t)d;
    f->hex++;
    if (f->hex == 2 && f->hexval >= 0xd8 && f->hexval <= 0xdf)
        return R_REJECT;                     /* surrogates: write the character as UTF-8 */
    if (f->hex == 4) {
        if (f->hexval == 0)
            return R_REJECT;                 /* \u0000 (jansson refuses NUL in strings) */
        f->phase = S_BODY;
    }
    return R_CONSUMED;
}

static int step_string(js_state *s, js_frame *f, uint8_t c)
{
    switch (f->phase) {
    case S_OPEN:
        if (c != '"')
            return R_REJECT;
        f->phase = S_BODY;
        return R_CONSUMED;
    case S_BODY:
        return string_body(s, f, c);
    case S_ESCAPE:
        if (c == 'u') {
            f->phase = S_HEX;
            f->hex = 0;
            f->hexval = 0;
            return R_CONSUMED;
        }
        if (!strchr("\"\\/bfnrt", c) || c == 0)
            return R_REJECT;
        f->phase = S_BODY;
        return R_CONSUMED;
    case S_HEX:
        return string_hex(f, c);
    default:                                 /* S_UTF8 */
        if (c < f->utf_lo || c > f->utf_hi)
            return R_REJECT;
        f->utf_lo = 0x80;
        f->utf_hi = 0xbf;
        if (--f->utf_left == 0)
            f->phase = S_BODY;
        return R_CONSUMED;
    }
}

/* ---- numbers ------------------------------------------------------------------ */
static int number_accepting(uint32_t phase)
{
    return phase == N_INT || phase == N_ZERO || phase == N_FRAC || phase == N_EXP;
}

/* The byte continues the number: the next phase, or -1. */
static int number_next(const js_frame *f, uint8_t c)
{
    int digit = c >= '0' && c <= '9', integer = f->node->integer;
    switch (f->phase) {
    case N_START:
        if (c == '-')
            return N_MINUS;
        /* fall through */
    case N_MINUS:
        return c == '0' ? N_ZERO : digit ? N_INT : -1;
    case N_INT:
        if (digit)
            return f->n < JS_MAX_INT_DIGITS ? N_INT : -1;
        /* fall through */
    case N_ZERO:
        return integer ? -1 : c == '.' ? N_DOT : c == 'e' || c == 'E' ? N_E : -1;
    case N_DOT:
        return digit ? N_FRAC : -1;
    case N_FRAC:
        if (digit)
            return f->n < JS_MAX_FRAC_DIGITS ? N_FRAC : -1;
        return c == 'e' || c == 'E' ? N_E : -1;
    case N_E:
        if (c == '+' || c == '-')
            return N_ESIGN;
        /* fall through */
    case N_ESIGN:
        return digit ? N_EXP : -1;
    default:                                 /* N_EXP */
        return digit && f->n < JS_MAX_EXP_DIGITS ? N_EXP : -1;
    }
}

static int step_number(js_state *s, js_frame *f, uint8_t c)
{
    int next = number_next(f, c);
    if (next < 0) {
        if (!number_accepting(f->phase))
            return R_REJECT;
        child_done(s);                       /* the number ended: the byte is the parent's */
        return R_REFEED;
    }
    f->n = (uint32_t)next == f->phase ? f->n + 1 : 1;
    f->phase = (uint32_t)next;
    return R_CONSUMED;
}

/* ---- literals ----------------------------------------------------------------- */
/* Candidates share the first n bytes; sorted, they form the range [lo, hi),
 * a literal equal to the prefix (only numbers can be one) first. */
static int step_literals(js_state *s, js_frame *f, uint8_t c)
{
    const js_node *nd = f->node;
    if (f->phase == 0) {
        f->lo = 0;
        f->hi = (uint32_t)nd->n_lits;
        f->phase = 1;
    }
    uint32_t pos = f->n, a = f->lo, b;
    if (nd->lit_len[a] == pos)
        a++;
    while (a < f->hi && (uint8_t)nd->lits[a][pos] < c)
        a++;
    for (b = a; b < f->hi && (uint8_t)nd->lits[b][pos] == c;)
        b++;
    if (a == b) {
        if (pos == 0 || nd->lit_len[f->lo] != pos)
            return R_REJECT;
        child_done(s);                       /* a complete number literal: the byte is the parent's */
        return R_REFEED;
    }
    f->lo = a;
    f->hi = b;
    f->n = pos + 1;
    if (b - a == 1 && nd->lit_len[a] == pos + 1)
        child_done(s);
    return R_CONSUMED;
}

/* ---- objects with declared properties --------------------------------------------- */
/* Properties that may come next: from `from` up to the first required one. */
static uint64_t key_window(const js_node *nd, uint32_t from)
{
    uint64_t m = 0;
    for (uint32_t i = from; i < (uint32_t)nd->n_props; i++) {
        m |= 1ull << i;
        if (nd->required >> i & 1)
            break;
    }
    return m;
}

static int required_left(const js_node *nd, uint32_t from) { return from < 64 && (nd->required >> from) != 0; }

static int object_key(js_frame *f, uint8_t c)
{
    const js_node *nd = f->node;
    uint32_t pos = f->n;
    uint64_t m = 0;
    for (int i = 0; i < nd->n_props; i++)
        if ((f->mask >> i & 1) && nd->key_len[i] > pos && (uint8_t)nd->keys[i][pos] == c)
            m |= 1ull << i;
    if (!m)
        return R_REJECT;
    f->mask = m;
    f->n = pos + 1;
    for (int i = 0; i < nd->n_props; i++)
        if ((m >> i & 1) && nd->key_len[i] == pos + 1) {    /* the closing quote: one key at most */
            f->hi = (uint32_t)i;
            f->lo = (uint32_t)i + 1;
            f->phase = C_COLON;
        }
    return R_CONSUMED;
}

static int step_object(js_state *s, js_frame *f, uint8_t c)
{
    const js_node *nd = f->node;
    switch (f->phase) {
    case C_OPEN:
        if (c != '{')
            return R_REJECT;
        f->phase = C_FIRST;
        return R_CONSUMED;
    case C_FIRST:
    case C_NEXT:
        if (c == '}' && f->phase == C_FIRST && !required_left(nd, f->lo)) {
            child_done(s);
            return R_CONSUMED;
        }
        if (c != '"' || !(f->mask = key_window(nd, f->lo)))
            return R_REJECT;
        f->n = 1;
        f->phase = C_KEY;
        return R_CONSUMED;
    case C_KEY:
        return object_key(f, c);
    case C_COLON:
        if (c != ':')
            return R_REJECT;
        f->phase = C_VALUE;
        return R_CONSUMED;
    case C_VALUE:
        return push(s, nd->props[f->hi]) ? R_REFEED : R_REJECT;
    default:                                 /* C_AFTER */
        if (c == ',' && key_window(nd, f->lo)) {
            f->phase = C_NEXT;
            return R_CONSUMED;
        }
        if (c == '}' && !required_left(nd, f->lo)) {
            child_done(s);
            return R_CONSUMED;
        }
        return R_REJECT;
    }
}

/* ---- free-form objects ----------------------------------------------------------- */
static int step_map(js_state *s, js_frame *f, uint8_t c)
{
    switch (f->phase) {
    case C_OPEN:
        if (c != '{')
            return R_REJECT;
        f->phase = C_FIRST;
        return R_CONSUMED;
    case C_FIRST:
    case C_NEXT:
        if (c == '}' && f->phase == C_FIRST) {
            child_done(s);
            return R_CONSUMED;
        }
        if (c != '"')
            return R_REJECT;
        f->phase = C_KEY;                    /* the key string's end moves on to C_COLON */
        return push(s, &js_plain_string) ? R_REFEED : R_REJECT;
    case C_COLON:
        if (c != ':')
            return R_REJECT;
        f->phase = C_VALUE;
        return R_CONSUMED;
    case C_VALUE:
        return push(s, f->node->items) ? R_REFEED : R_REJECT;
    default:                                 /* C_AFTER */
        if (c == ',') {
            f->phase = C_NEXT;
            return R_CONSUMED;
        }
        if (c == '}') {
            child_done(s);
            return R_CONSUMED;
        }
        return R_REJECT;
    }
}

/* ---- arrays --------------------------------------------------------------------- */
static int step_array(js_state *s, js_frame *f, uint8_t c)
{
    const js_node *nd = f->node;
    int more = nd->max_items < 0 || f->n < (uint32_t)nd->max_items;
    switch (f->phase) {
    case C_OPEN:
        if (c != '[')
            return R_REJECT;
        f->phase = C_FIRST;
        return R_CONSUMED;
    case C_FIRST:
        if (c == ']' && nd->min_items == 0) {
            child_done(s);
            return R_CONSUMED;
        }
        /* fall through */
    case C_NEXT:
        if (!more)
            return R_REJECT;
        f->phase = C_VALUE;
        return push(s, nd->items) ? R_REFEED : R_REJECT;
    default:                                 /* C_AFTER */
        if (c == ',' && more) {
            f->phase = C_NEXT;
            return R_CONSUMED;
        }
        if (c == ']' && f->n >= (uint32_t)nd->min_items) {
            child_done(s);
            return R_CONSUMED;
        }
        return R_REJECT;
    }
}

/* ---- dispatch ---------------------------------------------------------------------- */
static int step_union(js_frame *f, uint8_t c)
{
    const js_node *nd = f->node;
    for (int i = 0; i < nd->n_alts; i++)
        if (nd->alts[i]->first[c >> 3] >> (c & 7) & 1) {
            f->node = nd->alts[i];
            return R_REFEED;
        }
    return R_REJECT;
}

static int step(js_state *s, uint8_t c)
{
    js_frame *f = top(s);
    if (!f->node)
        return R_REJECT;                     /* the root: its value is complete, nothing may follow */
    switch (f->node->kind) {
    case JS_UNION: return step_union(f, c);
    case JS_OBJECT: return step_object(s, f, c);
    case JS_MAP: return step_map(s, f, c);
    case JS_ARRAY: return step_array(s, f, c);
    case JS_STRING: return step_string(s, f, c);
    case JS_NUMBER: return step_number(s, f, c);
    default: return step_literals(s, f, c);
    }
}

static int feed_byte(js_state *s, uint8_t c)
{
    for (int guard = 0; guard < 4 * JS_MAX_DEPTH; guard++) {
        int r = step(s, c);
        if (r != R_REFEED)
            return r == R_CONSUMED;
    }
    return 0;
}

static int state_can_end(const js_state *s)
{
    const js_frame *f = &s->f[s->depth - 1];
    if (s->depth == 1)
        return f->phase == ROOT_DONE;
    if (s->depth != 2)
        return 0;
    if (f->node->kind == JS_NUMBER)
        return number_accepting(f->phase);
    if (f->node->kind == JS_LITERALS)
        return f->phase == 1 && f->n > 0 && f->node->lit_len[f->lo] == f->n;
    return 0;
}

/* ---- the vocabulary trie ------------------------------------------------------------ */
typedef struct js_tnode {
    int32_t child, sibling;    /* first child, next sibling; -1 = none */
    int32_t tok;               /* first token whose bytes end here; -1 = none */
    uint8_t byte;
} js_tnode;

struct ds_json_vocab {
    int n_ids;
    js_tnode *nodes;           /* node 0 is the root */
    int32_t n_nodes, cap;
    int32_t *tok_next;         /* [n_ids]: next token with the same bytes */
    uint32_t *off, *len;       /* [n_ids]: bytes in text; len 0 = not allowed in JSON */
    char *text;
    int max_len;
};

void ds_json_vocab_free(ds_json_vocab *v)
{
    if (!v)
        return;
    free(v->nodes);
    free(v->tok_next);
    free(v->off);
    free(v->len);
    free(v->text);
    free(v);
}

static int32_t trie_node(ds_json_vocab *v, uint8_t byte)
{
    if (v->n_nodes == v->cap) {
        int32_t cap = v->cap ? 2 * v->cap : 1 << 16;
        js_tnode *n = realloc(v->nodes, sizeof *n * (size_t)cap);
        if (!n)
            return -1;
        v->nodes = n;
        v->cap = cap;
    }
    v->nodes[v->n_nodes] = (js_tnode){-1, -1, -1, byte};
    return v->n_nodes++;
}

/* The child of node for byte, created when missing; -1 when out of memory. */
static int32_t trie_child(ds_json_vocab *v, int32_t node, uint8_t byte)
{
    for (int32_t c = v->nodes[node].child; c >= 0; c = v->nodes[c].sibling)
        if (v->nodes[c].byte == byte)
            return c;
    int32_t c = trie_node(v, byte);
    if (c < 0)
        return -1;
    v->nodes[c].sibling = v->nodes[node].child;
    v->nodes[node].child = c;
    return c;
}

static int trie_add(ds_json_vocab *v, int32_t id, const uint8_t *b, size_t n)
{
    int32_t node = 0;
    for (size_t i = 0; i < n && node >= 0; i++)
        node = trie_child(v, node, b[i]);
    if (node < 0)
        return -1;
    v->tok_next[id] = v->nodes[node].tok;
    v->nodes[node].tok = id;
    return 0;
}

/* A token may appear inside JSON: a plain vocabulary token with bytes. */
static int plain_token(const ds_tokenizer *t, int32_t id)
{
    return (t->flags[id] & TK_PRESENT) && !(t->flags[id] & (TK_ADDED | TK_SPECIAL)) && t->bytes_len[id] > 0;
}

static int vocab_fill(ds_json_vocab *v, const ds_tokenizer *t)
{
    size_t total = 0, at = 0;
    for (int32_t id = 0; id < t->n_ids; id++)
        total += plain_token(t, id) ? t->bytes_len[id] : 0;
    if (!(v->text = malloc(total + 1)) || trie_node(v, 0) < 0)
        return -1;
    for (int32_t id = 0; id < t->n_ids; id++) {
        v->tok_next[id] = -1;
        if (!plain_token(t, id))
            continue;
        const uint8_t *b = (const uint8_t *)t->text + t->bytes_off[id];
        memcpy(v->text + at, b, t->bytes_len[id]);
        v->off[id] = (uint32_t)at;
        v->len[id] = t->bytes_len[id];
        at += t->bytes_len[id];
        if ((int)v->len[id] > v->max_len)
            v->max_len = (int)v->len[id];
        if (trie_add(v, id, b, t->bytes_len[id]) != 0)
            return -1;
    }
    return 0;
}

ds_status ds_json_vocab_create(const ds_tokenizer *t, ds_json_vocab **out, ds_error *err)
{
    ds_error_clear(err);
    if (!t || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_json_vocab_create: NULL argument");
    ds_json_vocab *v = ds_calloc(1, sizeof *v, err);
    if (!v)
        return DS_ERR_NOMEM;
    v->n_ids = t->n_ids;
    v->tok_next = calloc((size_t)t->n_ids + 1, sizeof *v->tok_next);
    v->off = calloc((size_t)t->n_ids + 1, sizeof *v->off);
    v->len = calloc((size_t)t->n_ids + 1, sizeof *v->len);
    if (!v->tok_next || !v->off || !v->len || vocab_fill(v, t) != 0) {
        ds_json_vocab_free(v);
        return ds_fail(err, DS_ERR_NOMEM, "JSON vocabulary: out of memory");
    }
    *out = v;
    return DS_OK;
}

const char *js_vocab_bytes(const ds_json_vocab *v, int32_t id, size_t *len)
{
    if (id < 0 || id >= v->n_ids || v->len[id] == 0)
        return NULL;
    *len = v->len[id];
    return v->text + v->off[id];
}

/* ---- the matcher ----------------------------------------------------------------------- */
struct ds_json_matcher {
    js_state st;
    js_state *walk;            /* [walk_cap]: one state per trie level */
    int walk_cap;
    uint8_t *allowed;          /* the mask being filled */
    int n_allowed, limit;
    const ds_json_vocab *v;
};

ds_status ds_json_matcher_create(const ds_json_schema *s, ds_json_matcher **out, ds_error *err)
{
    ds_error_clear(err);
    if (!s || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_json_matcher_create: NULL argument");
    ds_json_matcher *m = ds_calloc(1, sizeof *m, err);
    if (!m)
        return DS_ERR_NOMEM;
    m->st.depth = 1;                         /* the root frame, phase ROOT_VALUE */
    push(&m->st, s->root);
    *out = m;
    return DS_OK;
}

void ds_json_matcher_free(ds_json_matcher *m)
{
    if (!m)
        return;
    free(m->walk);
    free(m);
}

ds_status ds_json_matcher_clone(const ds_json_matcher *m, ds_json_matcher **out, ds_error *err)
{
    ds_error_clear(err);
    if (!m || !out)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_json_matcher_clone: NULL argument");
    ds_json_matcher *c = ds_calloc(1, sizeof *c, err);
    if (!c)
        return DS_ERR_NOMEM;
    copy_state(&c->st, &m->st);
    *out = c;
    return DS_OK;
}

int ds_json_matcher_feed(ds_json_matcher *m, const char *bytes, size_t len)
{
    if (!m || (!bytes && len))
        return 0;
    js_state s;
    copy_state(&s, &m->st);
    for (size_t i = 0; i < len; i++)
        if (!feed_byte(&s, (uint8_t)bytes[i]))
            return 0;
    copy_state(&m->st, &s);
    return 1;
}

int ds_json_matcher_can_end(const ds_json_matcher *m) { return m && state_can_end(&m->st); }

int ds_json_matcher_done(const ds_json_matcher *m) { return m && m->st.depth == 1 && m->st.f[0].phase == ROOT_DONE; }

/* Marks every token under the trie node's children reachable from walk[level]. */
static void walk_trie(ds_json_matcher *m, int32_t first, int level)
{
    const js_tnode *nodes = m->v->nodes;
    js_state *here = &m->walk[level], *next = &m->walk[level + 1];
    for (int32_t c = first; c >= 0; c = nodes[c].sibling) {
        copy_state(next, here);
        if (!feed_byte(next, nodes[c].byte))
            continue;
        for (int32_t t = nodes[c].tok; t >= 0; t = m->v->tok_next[t])
            if (t < m->limit) {
                m->allowed[t] = 1;
                m->n_allowed++;
            }
        if (nodes[c].child >= 0)
            walk_trie(m, nodes[c].child, level + 1);
    }
}

int ds_json_matcher_allowed(ds_json_matcher *m, const ds_json_vocab *v, int32_t eos_id, uint8_t *allowed, int n)
{
    if (!m || !v || !allowed || n <= 0)
        return 0;
    memset(allowed, 0, (size_t)n);
    m->allowed = allowed;
    m->n_allowed = 0;
    m->limit = n;
    m->v = v;
    if (m->walk_cap < v->max_len + 2) {
        js_state *w = realloc(m->walk, sizeof *w * (size_t)(v->max_len + 2));
        if (!w)
            return 0;
        m->walk = w;
        m->walk_cap = v->max_len + 2;
    }
    if (!ds_json_matcher_done(m)) {
        copy_state(&m->walk[0], &m->st);
        walk_trie(m, v->nodes[0].child, 0);
    }
    if (eos_id >= 0 && eos_id < n && state_can_end(&m->st) && !allowed[eos_id]) {
        allowed[eos_id] = 1;
        m->n_allowed++;
    }
    return m->n_allowed;
}
