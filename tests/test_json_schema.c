/* test_json_schema.c — the JSON Schema matcher of constrained decoding:
 * hand-written accept / reject texts for every supported keyword, load-time
 * errors that name unsupported keywords, random byte walks and random token
 * walks (the real tokenizer's masks) that must always end in JSON that
 * jansson parses and that an independent validator in this file accepts,
 * and agreement of the trie mask with feeding each token's bytes. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dsinfer.h"

static int failures;
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

static const char *srcdir(void)
{
    const char *d = getenv("top_srcdir");
#ifdef DS_SRCDIR
    if (!d)
        d = DS_SRCDIR;
#endif
    return d ? d : ".";
}

static ds_json_schema *compile(const char *schema)
{
    ds_json_schema *s = NULL;
    ds_error err;
    if (ds_json_schema_compile(schema, strlen(schema), &s, &err) != DS_OK) {
        CHECK(0, "schema %s does not compile: %s", schema, err.msg);
        return NULL;
    }
    return s;
}

/* 1 when the whole text is accepted and forms a complete value. */
static int matches(const ds_json_schema *s, const char *text)
{
    ds_json_matcher *m;
    if (ds_json_matcher_create(s, &m, NULL) != DS_OK)
        return -1;
    int ok = ds_json_matcher_feed(m, text, strlen(text)) && ds_json_matcher_can_end(m);
    ds_json_matcher_free(m);
    return ok;
}

/* Every text of yes[] matches, none of no[] does (NULL-terminated lists). */
static void expect(const char *schema, const char *const *yes, const char *const *no)
{
    ds_json_schema *s = compile(schema);
    if (!s)
        return;
    for (int i = 0; yes[i]; i++)
        CHECK(matches(s, yes[i]) == 1, "%s should accept %s", schema, yes[i]);
    for (int i = 0; no[i]; i++)
        CHECK(matches(s, no[i]) == 0, "%s should reject %s", schema, no[i]);
    ds_json_schema_free(s);
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_keywords(void)
{
    expect("{\"type\":\"boolean\"}", L("true", "false"), L("tru", "True", "1", "\"true\"", "true ", " true", "null"));
    expect("{\"type\":\"null\"}", L("null"), L("nul", "nulll", "false"));
    expect("{\"type\":\"integer\"}", L("0", "-0", "7", "-42", "123456789012345"),
           L("01", "1.5", "1e3", "-", "+1", "1234567890123456", "", "--1"));
    expect("{\"type\":\"number\"}", L("0", "-1.25", "3e10", "2E-3", "0.5e+7", "10"),
           L("1.", ".5", "1e", "1e+", "00", "-.1", "1.2.3", "0x1", "1e123", "NaN", "Infinity"));
    expect("{\"type\":\"string\"}",
           L("\"\"", "\"abc\"", "\"a\\\"b\"", "\"\\\\\"", "\"\\u00e9\"", "\"\\n\\t\\/\"", "\"caf\xc3\xa9\"",
             "\"\xe2\x82\xac\"", "\"\xf0\x9f\x98\x80\""),
           L("\"abc", "abc", "\"a\nb\"", "\"\\x\"", "\"\\u12\"", "\"\\ud800\\udc00\"", "\"\\u0000\"",
             "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xe0\x80\xaf\"",
             "\"a\" "));
    expect("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
           L("\"ab\"", "\"abc\"", "\"\\u00e9\\n\"", "\"\xc3\xa9\xc3\xa9\xc3\xa9\""),
           L("\"a\"", "\"abcd\"", "\"\"", "\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\""));
    expect("{\"enum\":[\"red\",\"green\",1,12,null,[1,2],{\"a\":true}]}",
           L("\"red\"", "\"green\"", "1", "12", "null", "[1,2]", "{\"a\":true}"),
           L("\"re\"", "\"blue\"", "2", "121", "[1]", "{\"a\":false}", "\"redd\""));
    expect("{\"type\":\"string\",\"enum\":[\"x\",3]}", L("\"x\""), L("3"));
    expect("{\"const\":\"only\"}", L("\"only\""), L("\"onl\"", "\"other\""));
    expect("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}",
           L("[1]", "[1,2]", "[1,-2,30]", "[0]"), L("[]", "[1,2,3,4]", "[1,]", "[,1]", "[1.5]", "[1 ]", "[\"a\"]"));
    expect("{\"type\":\"array\"}", L("[]", "[1,\"a\",null,[],{}]", "[[[true]]]"), L("[", "[1,]", "{}"));
    expect("{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":2}",
           L("[1,2]", "[1.5,-0]"), L("[1,2,3]", "[1 ,2]"));
    const char *obj = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                      "\"age\":{\"type\":\"integer\"},\"ok\":{\"type\":\"boolean\"}},\"required\":[\"age\"]}";
    expect(obj, L("{\"age\":3}", "{\"name\":\"x\",\"age\":3}", "{\"age\":3,\"ok\":true}", "{\"name\":\"\",\"age\":-1,\"ok\":false}"),
           L("{}", "{\"name\":\"x\"}", "{\"age\":3,\"name\":\"x\"}", "{\"age\":\"3\"}", "{\"age\":3,}", "{\"age\":3,\"extra\":1}",
             "{\"age\" :3}", "{\"age\":3,\"age\":4}", "{\"ag\":3}"));
    expect("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"null\"},\"ab\":{\"type\":\"null\"}}}",
           L("{}", "{\"a\":null}", "{\"ab\":null}", "{\"a\":null,\"ab\":null}"), L("{\"ab\":null,\"a\":null}", "{\"abc\":null}"));
    expect("{\"type\":\"object\"}", L("{}", "{\"k\":1}", "{\"k\":{\"n\":[1,{}]},\"z\":\"\"}"), L("[]", "{\"k\"}", "{k:1}", "{\"k\":1,}"));
    expect("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", L("{}", "{\"a\":1,\"b\":2}"),
           L("{\"a\":\"x\"}"));
    expect("{\"type\":\"object\",\"additionalProperties\":false}", L("{}"), L("{\"a\":1}"));
    expect("{\"type\":[\"string\",\"null\"],\"maxLength\":1}", L("null", "\"a\""), L("\"ab\"", "1"));
    expect("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"array\",\"items\":{\"const\":true}}]}",
           L("5", "[true]", "[]"), L("[false]", "\"5\""));
    expect("{}", L("1", "\"s\"", "{\"a\":[null,true,false,1.5e3]}", "[]"), L("", "nul", "{\"a\"}"));
    expect("true", L("0", "[]"), L("]"));
    expect("{\"type\":\"object\",\"properties\":{\"p\":{\"title\":\"x\",\"description\":\"y\",\"default\":1}},\"$schema\":\"s\"}",
           L("{\"p\":\"anything\"}", "{}"), L("{\"q\":1}"));
}

/* Compilation fails, with a message holding `word`. */
static void expect_error(const char *schema, const char *word)
{
    ds_json_schema *s = NULL;
    ds_error err;
    ds_status st = ds_json_schema_compile(schema, strlen(schema), &s, &err);
    CHECK(st != DS_OK && strstr(err.msg, word), "%s: status %d, message '%s' (wanted '%s')", schema, st,
          st != DS_OK ? err.msg : "", word);
    ds_json_schema_free(s);
}

static void test_errors(void)
{
    expect_error("{\"$ref\":\"#/x\"}", "$ref");
    expect_error("{\"type\":\"string\",\"pattern\":\"^a\"}", "pattern");
    expect_error("{\"type\":\"string\",\"format\":\"date\"}", "format");
    expect_error("{\"type\":\"integer\",\"minimum\":3}", "minimum");
    expect_error("{\"properties\":{\"a\":{\"allOf\":[]}}}", "/properties/a");
    expect_error("{\"properties\":{\"a\":{\"allOf\":[]}}}", "allOf");
    expect_error("{\"type\":\"object\",\"properties\":{},\"required\":[\"x\"]}", "\"x\"");
    expect_error("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}", "same character");
    expect_error("{\"type\":\"strin\"}", "type");
    expect_error("{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}", "minLength");
    expect_error("{\"type\":\"array\",\"items\":[{}]}", "items");
    expect_error("false", "false");
    expect_error("{\"enum\":[]}", "enum");
    expect_error("not json", "not JSON");
}

/* ---- an independent validator ------------------------------------------------ */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

static int valid(const json_t *sc, const json_t *v);

static int type_ok(const char *t, const json_t *v)
{
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    return json_is_null(v);
}

static int valid_type(const json_t *sc, const json_t *v)
{
    const json_t *t = json_object_get(sc, "type"), *e;
    size_t i;
    if (!t)
        return 1;
    if (json_is_string(t))
        return type_ok(json_string_value(t), v);
    json_array_foreach(t, i, e)
        if (type_ok(json_string_value(e), v))
            return 1;
    return 0;
}

static int valid_enum(const json_t *sc, const json_t *v)
{
    const json_t *en = json_object_get(sc, "enum"), *e;
    size_t i;
    if (json_object_get(sc, "const") && !json_equal(json_object_get(sc, "const"), (json_t *)v))
        return 0;
    if (!en)
        return 1;
    json_array_foreach(en, i, e)
        if (json_equal((json_t *)e, (json_t *)v))
            return 1;
    return 0;
}

static int valid_object(const json_t *sc, const json_t *v)
{
    const json_t *props = json_object_get(sc, "properties"), *extra = json_object_get(sc, "additionalProperties");
    const json_t *req = json_object_get(sc, "required"), *e;
    const char *k;
    size_t i;
    json_array_foreach(req, i, e)
        if (!json_object_get(v, json_string_value(e)))
            return 0;
    json_object_foreach((json_t *)v, k, e) {
        const json_t *p = json_object_get(props, k);
        if (p ? !valid(p, e) : json_is_false(extra) || (json_is_object(extra) && !valid(extra, e)))
            return 0;
    }
    return 1;
}

static int valid_array(const json_t *sc, const json_t *v)
{
    const json_t *items = json_object_get(sc, "items"), *e;
    const json_t *mn = json_object_get(sc, "minItems"), *mx = json_object_get(sc, "maxItems");
    size_t i;
    if ((mn && json_array_size(v) < (size_t)json_integer_value(mn)) || (mx && json_array_size(v) > (size_t)json_integer_value(mx)))
        return 0;
    json_array_foreach(v, i, e)
        if (items && !valid(items, e))
            return 0;
    return 1;
}

static int valid_string(const json_t *sc, const json_t *v)
{
    const json_t *mn = json_object_get(sc, "minLength"), *mx = json_object_get(sc, "maxLength");
    size_t n = utf8_chars(json_string_value(v), json_string_length(v));
    return !(mn && n < (size_t)json_integer_value(mn)) && !(mx && n > (size_t)json_integer_value(mx));
}

static int valid(const json_t *sc, const json_t *v)
{
    const json_t *alts = json_object_get(sc, "anyOf") ? json_object_get(sc, "anyOf") : json_object_get(sc, "oneOf"), *e;
    size_t i;
    if (json_is_true(sc))
        return 1;
    if (alts) {
        int n = 0;
        json_array_foreach(alts, i, e)
            n += valid(e, v);
        return json_object_get(sc, "oneOf") ? n == 1 : n >= 1;
    }
    if (!valid_type(sc, v) || !valid_enum(sc, v))
        return 0;
    if (json_is_object(v))
        return valid_object(sc, v);
    if (json_is_array(v))
        return valid_array(sc, v);
    if (json_is_string(v))
        return valid_string(sc, v);
    return 1;
}

/* ---- random walks ----------------------------------------------------------- */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const char *const walk_schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},"
    "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",\"ab\"]},\"maxItems\":3},"
    "\"score\":{\"type\":\"number\"},\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"ok\"]}",
    "{\"type\":\"array\",\"items\":{\"type\":[\"integer\",\"null\",\"string\"],\"maxLength\":3},\"minItems\":2,\"maxItems\":4}",
    "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"x\":{\"const\":[1,{\"y\":null}]}},\"required\":[\"x\"]},"
    "{\"enum\":[1,12,123,\"s\"]}]}",
    "{\"type\":\"object\",\"additionalProperties\":{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"maxItems\":2}}",
    "{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":4}},\"required\":[\"v\"]}",
    "{}",
    NULL};

/* Bytes that close things, picked more often so walks end. */
static int preferred(int b) { return b == '"' || b == ']' || b == '}' || b == ',' || (b >= '0' && b <= '9'); }

static int pick_byte(const ds_json_matcher *m, int *n_ok)
{
    int ok[256], n = 0, pref[256], np = 0;
    for (int b = 0; b < 256; b++) {
        ds_json_matcher *c;
        char ch = (char)b;
        if (ds_json_matcher_clone(m, &c, NULL) != DS_OK)
            continue;
        if (ds_json_matcher_feed(c, &ch, 1)) {
            ok[n++] = b;
            if (preferred(b))
                pref[np++] = b;
        }
        ds_json_matcher_free(c);
    }
    *n_ok = n;
    if (n == 0)
        return -1;
    if (np && rnd() % 3)
        return pref[rnd() % (uint64_t)np];
    return ok[rnd() % (uint64_t)n];
}

/* The text parses and validates against the schema. */
static void check_output(const char *schema, const char *text, size_t len, const char *how)
{
    json_error_t jerr;
    json_t *sc = json_loads(schema, JSON_DECODE_ANY, NULL);
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    CHECK(v != NULL, "%s walk output %.*s does not parse: %s", how, (int)len, text, jerr.text);
    if (v)
        CHECK(valid(sc, v), "%s walk output %.*s does not match %s", how, (int)len, text, schema);
    json_decref(v);
    json_decref(sc);
}

static void byte_walks(void)
{
    for (int si = 0; walk_schemas[si]; si++) {
        ds_json_schema *s = compile(walk_schemas[si]);
        if (!s)
            continue;
        for (int w = 0; w < 60; w++) {
            ds_json_matcher *m;
            char buf[4096];
            size_t len = 0;
            ds_json_matcher_create(s, &m, NULL);
            for (;;) {
                int n_ok, b;
                if (ds_json_matcher_done(m) || (ds_json_matcher_can_end(m) && rnd() % 4 == 0))
                    break;
                b = pick_byte(m, &n_ok);
                CHECK(b >= 0 || ds_json_matcher_can_end(m), "dead end after %.*s", (int)len, buf);
                if (b < 0 || len + 1 >= sizeof buf)
                    break;
                buf[len++] = (char)b;
                CHECK(ds_json_matcher_feed(m, buf + len - 1, 1), "an allowed byte was refused");
            }
            if (len + 1 < sizeof buf)
                check_output(walk_schemas[si], buf, len, "byte");
            ds_json_matcher_free(m);
        }
        ds_json_schema_free(s);
    }
}

/* ---- token walks with the real tokenizer ------------------------------------------ */
/* The mask equals feeding each token's bytes to a copy (sampled ids). */
static void check_mask(const ds_json_matcher *m, const ds_tokenizer *t, const uint8_t *allowed, int n)
{
    for (int k = 0; k < 300; k++) {
        int32_t id = (int32_t)(rnd() % (uint64_t)n);
        size_t len;
        const char *b = ds_tokenizer_token_bytes(t, id, &len);
        ds_json_matcher *c;
        if (!b || len == 0 || ds_tokenizer_is_special(t, id) || ds_tokenizer_eos_id(t) == id)
            continue;
        ds_json_matcher_clone(m, &c, NULL);
        int fed = ds_json_matcher_feed(c, b, len);
        ds_json_matcher_free(c);
        if (allowed[id] != fed && !(fed && !allowed[id] && ds_tokenizer_token_str(t, id)[0] == '<'))
            CHECK(0, "token %d (%s): mask %d, feeding its bytes %d", id, ds_tokenizer_token_str(t, id), allowed[id], fed);
    }
}

static void token_walks(void)
{
    char path[1024];
    ds_tokenizer *t;
    ds_json_vocab *v;
    ds_error err;
    snprintf(path, sizeof path, "%s/data", srcdir());
    if (ds_tokenizer_load(path, &t, &err) != DS_OK) {
        CHECK(0, "tokenizer: %s", err.msg);
        return;
    }
    CHECK(ds_json_vocab_create(t, &v, &err) == DS_OK, "vocab: %s", err.msg);
    int n = ds_tokenizer_vocab_size(t);
    int32_t eos = ds_tokenizer_eos_id(t);
    uint8_t *allowed = malloc((size_t)n);
    int32_t *ids = malloc(sizeof *ids * (size_t)n);
    double mask_s = 0;
    long masks = 0;
    for (int si = 0; walk_schemas[si]; si++) {
        ds_json_schema *s = compile(walk_schemas[si]);
        for (int w = 0; s && w < 6; w++) {
            ds_json_matcher *m;
            char buf[8192];
            size_t len = 0;
            ds_json_matcher_create(s, &m, NULL);
            for (int steps = 0; steps < 400 && !ds_json_matcher_done(m); steps++) {
                struct timespec a, b;
                clock_gettime(CLOCK_MONOTONIC, &a);
                int na = ds_json_matcher_allowed(m, v, eos, allowed, n);
                clock_gettime(CLOCK_MONOTONIC, &b);
                mask_s += (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
                masks++;
                CHECK(na > 0, "no token allowed after %.*s", (int)len, buf);
                CHECK(!allowed[eos] || ds_json_matcher_can_end(m), "EOS allowed before the end");
                if (w == 0 && steps < 6)
                    check_mask(m, t, allowed, n);
                int k = 0;
                for (int i = 0; i < n; i++)
                    if (allowed[i] && i != eos)
                        ids[k++] = i;
                if (na == 0 || (allowed[eos] && (k == 0 || rnd() % 3 == 0)))
                    break;
                /* half of the time a one-byte token, mostly a closing one, so walks end */
                int32_t id = ids[rnd() % (uint64_t)k], shortest[256];
                int ns = 0, np = 0, pref[256];
                for (int i = 0; i < k && ns < 256; i++) {
                    size_t l1;
                    const char *b1 = ds_tokenizer_token_bytes(t, ids[i], &l1);
                    if (l1 == 1) {
                        if (preferred((unsigned char)b1[0]))
                            pref[np++] = ids[i];
                        shortest[ns++] = ids[i];
                    }
                }
                if (ns && rnd() % 2)
                    id = np && rnd() % 3 ? pref[rnd() % (uint64_t)np] : shortest[rnd() % (uint64_t)ns];
                size_t tl;
                const char *tb = ds_tokenizer_token_bytes(t, id, &tl);
                if (len + tl >= sizeof buf)
                    break;
                CHECK(ds_json_matcher_feed(m, tb, tl), "allowed token %d refused", id);
                memcpy(buf + len, tb, tl);
                len += tl;
            }
            if (ds_json_matcher_can_end(m))
                check_output(walk_schemas[si], buf, len, "token");
            if (w == 0) {   /* misuse is refused, not a crash or a 2^64-byte memset */
                CHECK(ds_json_matcher_allowed(m, v, eos, allowed, -1) == 0 &&
                          ds_json_matcher_allowed(m, NULL, eos, allowed, n) == 0 &&
                          ds_json_matcher_allowed(NULL, v, eos, allowed, n) == 0,
                      "allowed with n -1 or NULL");
                CHECK(!ds_json_matcher_feed(NULL, "1", 1) && !ds_json_matcher_done(NULL) &&
                          !ds_json_matcher_can_end(NULL),
                      "NULL matcher");
            }
            ds_json_matcher_free(m);
        }
        ds_json_schema_free(s);
    }
    printf("token masks: %ld, %.2f ms each on average\n", masks, masks ? 1e3 * mask_s / (double)masks : 0.0);
    free(allowed);
    free(ids);
    ds_json_vocab_free(v);
    ds_tokenizer_free(t);
}

int main(void)
{
    test_keywords();
    test_errors();
    byte_walks();
    token_walks();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("test_json_schema: ok\n");
    return 0;
}
