/* test_chat.c — unit tests of the chat encoding (src/chat.c): DeepSeek's
 * official V3.2 fixture rendered byte for byte and parsed back, the SPEC
 * 8.1 token vector, chat vs thinking mode, drop_thinking, the V3 template,
 * Python-compatible JSON, and the streaming completion parser at every
 * byte boundary and in random chunkings, including truncated and
 * malformed DSML, and the same for the legacy V3 / V3.1 tool-call tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "chat_internal.h"
#include "dsinfer.h"

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define DSML "｜DSML｜"

static int fails, checks;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        checks++;                                                   \
        if (!(cond)) {                                              \
            fails++;                                                \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);             \
            printf(__VA_ARGS__);                                    \
            printf("\n");                                           \
        }                                                           \
    } while (0)

static const char *srcdir(void)
{
    const char *d = getenv("top_srcdir");
    return d && *d ? d : ".";
}

static char *slurp(const char *rel, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", srcdir(), rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("FAIL cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        exit(1);
    buf[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Renders conv (a JSON string) and returns the prompt (free it), or NULL. */
static char *render(ds_chat_format fmt, const char *conv, int thinking, int drop, int bos, int genp)
{
    ds_chat_options o;
    ds_error err;
    char *out;
    size_t len;
    ds_chat_options_init(&o);
    o.thinking = thinking;
    o.drop_thinking = drop;
    o.add_bos = bos;
    o.add_generation_prompt = genp;
    if (ds_chat_render(fmt, conv, strlen(conv), &o, &out, &len, &err) != DS_OK) {
        printf("render error: %s\n", err.msg);
        return NULL;
    }
    if (strlen(out) != len)
        printf("FAIL render length mismatch\n");
    return out;
}

static void expect_render(const char *name, ds_chat_format fmt, const char *conv, int thinking,
                          int drop, int bos, int genp, const char *want)
{
    char *got = render(fmt, conv, thinking, drop, bos, genp);
    CHECK(got && strcmp(got, want) == 0, "%s:\n got  [%s]\n want [%s]", name, got ? got : "(error)", want);
    free(got);
}

/* ---- rendering ------------------------------------------------------------- */

static void test_official_fixture(void)
{
    size_t ilen, olen;
    char *in = slurp("tests/data/chat/test_input.json", &ilen);
    char *want = slurp("tests/data/chat/test_output.txt", &olen);
    while (olen && want[olen - 1] == '\n')   /* the contract strips the file's final newline */
        want[--olen] = 0;
    char *got = render(DS_CHAT_V32, in, 1, 1, 1, 1);
    size_t i = 0;
    while (got && got[i] && got[i] == want[i])
        i++;
    CHECK(got && strcmp(got, want) == 0, "official fixture differs at byte %zu: got [%.60s] want [%.60s]", i,
          got ? got + i : "(error)", want + i);
    free(got);
    free(in);
    free(want);
}

static void test_spec_vector(void)
{
    static const int32_t want[] = { 0, 128803, 33310, 128804, 128799, 19923, 3, 342, 1030, 22651, 4374,
                                    1465, 16, 1, 128803, 19, 13, 19, 127252, 128804, 128798 };
    const char *conv = "[{\"role\": \"user\", \"content\": \"hello\"},"
                       " {\"role\": \"assistant\", \"content\": \"Hello! I am DeepSeek.\", \"reasoning_content\": \"hmm\"},"
                       " {\"role\": \"user\", \"content\": \"1+1=?\"}]";
    char *p = render(DS_CHAT_V32, conv, 1, 1, 1, 1);
    const char *text = BOS "<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek." EOS
                           "<｜User｜>1+1=?<｜Assistant｜><think>";
    CHECK(p && strcmp(p, text) == 0, "SPEC 8.1 prompt: [%s]", p ? p : "(error)");
    char path[4096];
    ds_tokenizer *t;
    ds_error err;
    snprintf(path, sizeof path, "%s/data/tokenizer-v32.json", srcdir());
    if (p && ds_tokenizer_load(path, &t, &err) == DS_OK) {
        int32_t *ids;
        int n;
        CHECK(ds_tokenizer_encode(t, p, strlen(p), 1, &ids, &n, &err) == DS_OK, "encode: %s", err.msg);
        CHECK(n == 21 && memcmp(ids, want, sizeof want) == 0, "SPEC 8.1 ids differ (n=%d)", n);
        free(ids);
        ds_tokenizer_free(t);
    } else {
        CHECK(0, "cannot load %s", path);
    }
    free(p);
}

static void test_v32_modes(void)
{
    const char *one = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    expect_render("v3.2 chat", DS_CHAT_V32, one, 0, 1, 1, 1, BOS "<｜User｜>hi<｜Assistant｜></think>");
    expect_render("v3.2 thinking", DS_CHAT_V32, one, 1, 1, 1, 1, BOS "<｜User｜>hi<｜Assistant｜><think>");
    expect_render("v3.2 no bos", DS_CHAT_V32, one, 1, 1, 0, 1, "<｜User｜>hi<｜Assistant｜><think>");
    const char *ans = "[{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"q\"},"
                      " {\"role\": \"assistant\", \"content\": \"A\", \"reasoning_content\": \"R\"}]";
    expect_render("v3.2 answer, chat", DS_CHAT_V32, ans, 0, 1, 1, 1,
                  BOS "S<｜User｜>q<｜Assistant｜></think>A" EOS);
    expect_render("v3.2 answer, thinking", DS_CHAT_V32, ans, 1, 1, 1, 1,
                  BOS "S<｜User｜>q<｜Assistant｜><think>R</think>A" EOS);
    /* tool results after the last user message reopen thinking only in thinking mode */
    const char *tools = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"},"
                        " {\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"R\", \"tool_calls\":"
                        " [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\":"
                        " \"{\\\"n\\\": 2.0, \\\"s\\\": \\\"é\\\\n\\\", \\\"l\\\": [1, {\\\"k\\\": null}]}\"}}]},"
                        " {\"role\": \"tool\", \"content\": \"out\"}]}";
    const char *calls = "\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\">\n"
                        "<" DSML "parameter name=\"n\" string=\"false\">2.0</" DSML "parameter>\n"
                        "<" DSML "parameter name=\"s\" string=\"true\">é\n</" DSML "parameter>\n"
                        "<" DSML "parameter name=\"l\" string=\"false\">[1, {\"k\": null}]</" DSML "parameter>\n"
                        "</" DSML "invoke>\n</" DSML "function_calls>";
    char want[2048];
    snprintf(want, sizeof want, "%s<｜User｜>q<｜Assistant｜><think>R</think>%s%s%s", BOS, calls, EOS,
             "\n\n<function_results>\n<result>out</result>\n</function_results>\n\n<think>");
    expect_render("v3.2 tool round, thinking", DS_CHAT_V32, tools, 1, 1, 1, 1, want);
    snprintf(want, sizeof want, "%s<｜User｜>q<｜Assistant｜></think>%s%s%s", BOS, calls, EOS,
             "\n\n<function_results>\n<result>out</result>\n</function_results>\n\n</think>");
    expect_render("v3.2 tool round, chat", DS_CHAT_V32, tools, 0, 1, 1, 1, want);
}

static void test_v32_system_extras(void)
{
    /* conversation-level tools with no system message: a leading system
     * message with empty content carries them */
    const char *conv = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}],"
                       " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"t\", \"parameters\": {}}}],"
                       " \"response_format\": {\"type\": \"json_object\"}}";
    char *p = render(DS_CHAT_V32, conv, 0, 1, 1, 1);
    CHECK(p && strncmp(p, BOS "\n\n## Tools\n\nYou have access", strlen(BOS "\n\n## Tools\n\nYou have access")) == 0,
          "tools block start: [%.80s]",
          p ? p : "");
    CHECK(p && strstr(p, "<functions>\n{\"name\": \"t\", \"parameters\": {}}\n</functions>\n\n\n## Response Format:\n\n"
                         "You MUST strictly adhere to the following schema to reply:\n{\"type\": \"json_object\"}"
                         "<｜User｜>q<｜Assistant｜></think>"),
          "tools + response format: [%s]", p ? p : "");
    free(p);
    /* developer messages carry their own extras before the user's message */
    const char *dev = "[{\"role\": \"developer\", \"content\": \"find\", \"response_format\": {\"a\": 1}}]";
    expect_render("developer", DS_CHAT_V32, dev, 1, 1, 1, 1,
                  BOS "<｜User｜>\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                      "{\"a\": 1}\n\n# The user's message is: find<｜Assistant｜><think>");
}

static void test_drop_thinking(void)
{
    const char *conv = "[{\"role\": \"developer\", \"content\": \"d\"}, {\"role\": \"assistant\", \"content\": \"a\","
                       " \"reasoning_content\": \"old\"}, {\"role\": \"user\", \"content\": \"u\"}]";
    /* the reference's drop pass removes developer turns before the last user turn */
    expect_render("drop_thinking on", DS_CHAT_V32, conv, 1, 1, 1, 1,
                  BOS "a" EOS "<｜User｜>u<｜Assistant｜><think>");
    expect_render("drop_thinking off", DS_CHAT_V32, conv, 1, 0, 1, 1,
                  BOS "<｜User｜>\n\n# The user's message is: d<｜Assistant｜></think>a" EOS
                      "<｜User｜>u<｜Assistant｜><think>");
    expect_render("chat mode never drops", DS_CHAT_V32, conv, 0, 1, 1, 1,
                  BOS "<｜User｜>\n\n# The user's message is: d<｜Assistant｜></think>a" EOS
                      "<｜User｜>u<｜Assistant｜></think>");
}

static void test_v3_template(void)
{
    expect_render("v3 system + user", DS_CHAT_V3,
                  "[{\"role\": \"system\", \"content\": \"S1\"}, {\"role\": \"user\", \"content\": \"hi\"},"
                  " {\"role\": \"system\", \"content\": \"S2\"}]",
                  0, 1, 1, 1, BOS "S1\n\nS2<｜User｜>hi<｜Assistant｜>");
    const char *multi = "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"},"
                        " {\"role\": \"user\", \"content\": \"c\"}]";
    expect_render("v3 multi-turn", DS_CHAT_V3, multi, 0, 1, 1, 1,
                  BOS "<｜User｜>a<｜Assistant｜>b" EOS "<｜User｜>c<｜Assistant｜>");
    expect_render("v3 no generation prompt, no bos", DS_CHAT_V3, multi, 0, 1, 0, 0,
                  "<｜User｜>a<｜Assistant｜>b" EOS "<｜User｜>c");
    expect_render("v3.1 thinking tokens", DS_CHAT_V3, multi, 1, 1, 1, 1,
                  BOS "<｜User｜>a<｜Assistant｜></think>b" EOS "<｜User｜>c<｜Assistant｜><think>");
    const char *tools = "[{\"role\": \"user\", \"content\": \"w\"},"
                        " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": ["
                        "{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}},"
                        "{\"type\": \"function\", \"function\": {\"name\": \"g\", \"arguments\": \"{}\"}}]},"
                        " {\"role\": \"tool\", \"content\": \"r1\"}, {\"role\": \"tool\", \"content\": \"r2\"},"
                        " {\"role\": \"assistant\", \"content\": \"done\"}]";
    expect_render("v3 tool calls", DS_CHAT_V3, tools, 0, 1, 1, 1,
                  BOS "<｜User｜>w<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n"
                      "```json\n{\"a\": 1}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n"
                      "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>" EOS
                      "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r1<｜tool▁output▁end｜>\n"
                      "<｜tool▁output▁begin｜>r2<｜tool▁output▁end｜><｜tool▁outputs▁end｜>done" EOS "<｜Assistant｜>");
    expect_render("v3 ends on tool output", DS_CHAT_V3,
                  "[{\"role\": \"user\", \"content\": \"w\"}, {\"role\": \"tool\", \"content\": \"r\"}]", 0, 1, 1, 1,
                  BOS "<｜User｜>w<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r<｜tool▁output▁end｜>"
                      "<｜tool▁outputs▁end｜>");
    CHECK(ds_chat_format_for_model("deepseek_v32") == DS_CHAT_V32 && ds_chat_format_for_model("deepseek_v3") == DS_CHAT_V3 &&
              ds_chat_format_for_model(NULL) == DS_CHAT_V32,
          "ds_chat_format_for_model");
}

static void test_render_errors(void)
{
    ds_error err;
    char *out;
    size_t len;
    static const char *bad[] = { "[{\"role\": \"user\"", "{\"msgs\": []}", "[{\"role\": \"robot\", \"content\": \"x\"}]",
                                 "[3]",
                                 "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": \"[1]\"}}]}]" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ds_status st = ds_chat_render(DS_CHAT_V32, bad[i], strlen(bad[i]), NULL, &out, &len, &err);
        CHECK(st == DS_ERR_INPUT && err.msg[0], "bad conversation %zu accepted (%d)", i, (int)st);
    }
}

static void expect_py(const char *json, const char *want)
{
    json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);
    char *out = NULL;
    size_t len;
    CHECK(v && ds_chat_json_dumps_py(v, &out, &len, NULL) == DS_OK && strcmp(out, want) == 0, "json %s -> %s (want %s)",
          json, out ? out : "(error)", want);
    free(out);
    json_decref(v);
}

static void test_python_json(void)
{
    expect_py("1.0", "1.0");
    expect_py("0.1", "0.1");
    expect_py("-0.0", "-0.0");
    expect_py("0.0001", "0.0001");
    expect_py("0.00001", "1e-05");
    expect_py("1e15", "1000000000000000.0");
    expect_py("1e16", "1e+16");
    expect_py("123456789012345678.0", "1.2345678901234568e+17");
    expect_py("2.5e-300", "2.5e-300");
    expect_py("3.141592653589793", "3.141592653589793");
    expect_py("-42", "-42");
    expect_py("{\"b\": [true, false, null], \"a\": {}}", "{\"b\": [true, false, null], \"a\": {}}");
    expect_py("\"q\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u007f é 日\"", "\"q\\\"\\\\\\n\\r\\t\\b\\f\\u0001\x7f é 日\"");
}

/* ---- completion parsing ---------------------------------------------------- */

/* The format the parse helpers below use (V3.2 unless a test sets it). */
static ds_chat_format parse_fmt = DS_CHAT_V32;

typedef struct parsed {
    char *content, *reasoning;
    json_t *calls;   /* [[name, arguments-string], ...] */
} parsed;

static void parsed_free(parsed *p)
{
    free(p->content);
    free(p->reasoning);
    json_decref(p->calls);
}

static void append(char **s, size_t *n, const char *p, size_t len)
{
    *s = realloc(*s, *n + len + 1);
    memcpy(*s + *n, p, len);
    *n += len;
    (*s)[*n] = 0;
}

static void gather(parsed *r, size_t *cn, size_t *rn, const ds_chat_event *ev, size_t nev)
{
    for (size_t i = 0; i < nev; i++) {
        if (ev[i].kind == DS_CHAT_EV_CONTENT)
            append(&r->content, cn, ev[i].text, ev[i].len);
        else if (ev[i].kind == DS_CHAT_EV_REASONING)
            append(&r->reasoning, rn, ev[i].text, ev[i].len);
        else
            json_array_append_new(r->calls, json_pack("[s,s]", ev[i].name, ev[i].arguments));
    }
}

/* Feeds text to a stream in the chunks given by cuts (ascending offsets). */
static parsed stream_parse(const char *text, size_t len, int thinking, const size_t *cuts, size_t ncuts)
{
    parsed r = { calloc(1, 1), calloc(1, 1), json_array() };
    size_t cn = 0, rn = 0, at = 0, nev;
    ds_chat_stream *s = ds_chat_stream_create_for(parse_fmt, thinking);
    const ds_chat_event *ev;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : len;
        if (ds_chat_stream_push(s, text + at, end - at, &ev, &nev, NULL) == DS_OK)
            gather(&r, &cn, &rn, ev, nev);
        at = end;
    }
    if (ds_chat_stream_finish(s, &ev, &nev, NULL) == DS_OK)
        gather(&r, &cn, &rn, ev, nev);
    ds_chat_stream_free(s);
    return r;
}

/* The one-shot parse as the same triple, via its JSON. */
static parsed oneshot(const char *text, size_t len, int thinking, json_t **msg_out)
{
    parsed r = { NULL, NULL, json_array() };
    char *js;
    ds_error err;
    if (ds_chat_parse_completion_for(parse_fmt, text, len, thinking, &js, &err) != DS_OK) {
        printf("FAIL parse: %s\n", err.msg);
        fails++;
        r.content = strdup("");
        r.reasoning = strdup("");
        return r;
    }
    json_t *m = json_loads(js, 0, NULL);
    free(js);
    const char *rc = json_string_value(json_object_get(m, "reasoning_content"));
    r.content = strdup(json_string_value(json_object_get(m, "content")));
    r.reasoning = strdup(rc ? rc : "");
    json_t *calls = json_object_get(m, "tool_calls");
    for (size_t i = 0; i < json_array_size(calls); i++) {
        json_t *fn = json_object_get(json_array_get(calls, i), "function");
        json_array_append_new(r.calls, json_pack("[O,O]", json_object_get(fn, "name"), json_object_get(fn, "arguments")));
    }
    if (msg_out)
        *msg_out = m;
    else
        json_decref(m);
    return r;
}

static int same(const parsed *a, const parsed *b)
{
    return strcmp(a->content, b->content) == 0 && strcmp(a->reasoning, b->reasoning) == 0 &&
           json_equal(a->calls, b->calls);
}

/* Every two-piece split, one byte at a time, and random chunkings all
 * give the one-shot result. */
static void check_streaming(const char *name, const char *text, size_t len, int thinking)
{
    parsed ref = oneshot(text, len, thinking, NULL);
    int bad = 0;
    for (size_t k = 0; k <= len && !bad; k++) {
        parsed p = stream_parse(text, len, thinking, &k, 1);
        if (!same(&p, &ref)) {
            bad = 1;
            CHECK(0, "%s: split at byte %zu: content [%s] vs [%s]", name, k, p.content, ref.content);
        }
        parsed_free(&p);
    }
    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    for (size_t k = 0; k < len; k++)
        cuts[k] = k + 1;
    parsed p1 = stream_parse(text, len, thinking, cuts, len);
    CHECK(same(&p1, &ref), "%s: byte-at-a-time differs", name);
    parsed_free(&p1);
    srand(7);
    for (int round = 0; round < 200 && !bad; round++) {
        size_t n = 0, at = 0;
        while (at < len) {
            at += 1 + (size_t)rand() % 13;
            if (at < len)
                cuts[n++] = at;
        }
        parsed p = stream_parse(text, len, thinking, cuts, n);
        if (!same(&p, &ref)) {
            bad = 1;
            CHECK(0, "%s: random chunking %d differs", name, round);
        }
        parsed_free(&p);
    }
    checks++;
    free(cuts);
    parsed_free(&ref);
}

/* Splits test_output.txt into assistant turns: each runs from the token
 * that opens it to its end-of-sentence; turns opened by <think> carry
 * reasoning (thinking mode), the others were rendered without it. */
static void test_parse_fixture(void)
{
    static const char *openers[] = { "<｜Assistant｜></think>", "<｜Assistant｜><think>",
                                     "</function_results>\n\n</think>", "</function_results>\n\n<think>" };
    size_t olen, ilen;
    char *out = slurp("tests/data/chat/test_output.txt", &olen);
    char *in = slurp("tests/data/chat/test_input.json", &ilen);
    json_t *root = json_loads(in, 0, NULL), *msgs = json_object_get(root, "messages");
    int last_user = -1, turns = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(msgs, i), "role")), "user") == 0)
            last_user = (int)i;
    const char *pos = out;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        if (strcmp(json_string_value(json_object_get(m, "role")), "assistant") != 0)
            continue;
        const char *eos = strstr(pos, EOS), *start = NULL;
        int thinking = 0;
        for (int k = 0; k < 4; k++) {
            const char *f = pos, *last = NULL;
            while ((f = strstr(f, openers[k])) && f < eos)
                last = f++;
            if (last && (!start || last + strlen(openers[k]) > start)) {
                start = last + strlen(openers[k]);
                thinking = k % 2;
            }
        }
        CHECK(eos && start, "assistant turn %zu not found", i);
        if (!eos || !start)
            break;
        size_t len = (size_t)(eos - start) + strlen(EOS);
        json_t *msg = NULL;
        parsed p = oneshot(start, len, thinking, &msg);
        const char *want_c = json_string_value(json_object_get(m, "content"));
        const char *want_r = (int)i > last_user ? json_string_value(json_object_get(m, "reasoning_content")) : "";
        CHECK(thinking == ((int)i > last_user), "turn %zu: opener", i);
        CHECK(strcmp(p.content, want_c ? want_c : "") == 0, "turn %zu content: [%s]", i, p.content);
        CHECK(strcmp(p.reasoning, want_r ? want_r : "") == 0, "turn %zu reasoning: [%s]", i, p.reasoning);
        json_t *want_calls = json_object_get(m, "tool_calls");
        CHECK(json_array_size(want_calls) == json_array_size(p.calls), "turn %zu: %zu calls", i, json_array_size(p.calls));
        for (size_t k = 0; k < json_array_size(want_calls) && k < json_array_size(p.calls); k++) {
            json_t *wf = json_object_get(json_array_get(want_calls, k), "function");
            json_t *got = json_array_get(p.calls, k);
            json_t *wa = json_loads(json_string_value(json_object_get(wf, "arguments")), 0, NULL);
            json_t *ga = json_loads(json_string_value(json_array_get(got, 1)), 0, NULL);
            CHECK(json_equal(json_object_get(wf, "name"), json_array_get(got, 0)) && wa && json_equal(wa, ga),
                  "turn %zu call %zu differs", i, k);
            json_decref(wa);
            json_decref(ga);
        }
        json_decref(msg);
        char name[64];
        snprintf(name, sizeof name, "fixture turn %zu", i);
        check_streaming(name, start, len, thinking);
        parsed_free(&p);
        pos = eos + strlen(EOS);
        turns++;
    }
    CHECK(turns == 5, "found %d assistant turns", turns);
    json_decref(root);
    free(out);
    free(in);
}

#define CALL_A "<" DSML "invoke name=\"get\">\n<" DSML "parameter name=\"q\" string=\"true\">a <b> \"c\"</" DSML "parameter>\n" \
               "<" DSML "parameter name=\"n\" string=\"false\">{\"k\": [1, 2.5]}</" DSML "parameter>\n</" DSML "invoke>"
#define BLOCK "\n\n<" DSML "function_calls>\n" CALL_A "\n" CALL_A "\n</" DSML "function_calls>"

static void test_parse_cases(void)
{
    const char *good = "let me think</think>Sure.é" BLOCK EOS "ignored";
    parsed p = oneshot(good, strlen(good), 1, NULL);
    CHECK(strcmp(p.reasoning, "let me think") == 0 && strcmp(p.content, "Sure.é") == 0, "good: [%s] [%s]", p.reasoning,
          p.content);
    CHECK(json_array_size(p.calls) == 2 &&
              strcmp(json_string_value(json_array_get(json_array_get(p.calls, 0), 1)),
                     "{\"q\": \"a <b> \\\"c\\\"\", \"n\": {\"k\": [1, 2.5]}}") == 0,
          "good: calls");
    parsed_free(&p);
    check_streaming("good", good, strlen(good), 1);
    check_streaming("good, chat mode", good, strlen(good), 0);

    /* chat mode: no reasoning field; thinking without </think>: all reasoning */
    json_t *m = NULL;
    p = oneshot("hello" EOS, strlen("hello" EOS), 0, &m);
    CHECK(strcmp(p.content, "hello") == 0 && !json_object_get(m, "reasoning_content") && !json_object_get(m, "tool_calls"),
          "chat mode message");
    json_decref(m);
    parsed_free(&p);
    p = oneshot("<think>still thinking </thi", 27, 1, NULL);
    CHECK(strcmp(p.reasoning, "still thinking </thi") == 0 && !p.content[0], "unfinished reasoning: [%s]", p.reasoning);
    parsed_free(&p);

    /* every truncation of a completion with a block: while the block is not
     * closed the text after </think> is plain content, never a crash */
    size_t glen = strlen(good), head = strlen("let me think</think>");
    const char *close = strstr(good, "</" DSML "function_calls>") + strlen("</" DSML "function_calls>");
    size_t close_at = (size_t)(close - good), eos_end = close_at + strlen(EOS);
    for (size_t k = head; k <= glen; k++) {
        if (k < glen && ((unsigned char)good[k] & 0xC0) == 0x80)
            continue;   /* cut inside a character: covered by the U+FFFD case below */
        p = oneshot(good, k, 1, NULL);
        if (k < close_at) {
            CHECK(strncmp(p.content, good + head, k - head) == 0 && strlen(p.content) == k - head &&
                      json_array_size(p.calls) == 0,
                  "truncated at %zu: [%s]", k, p.content);
        } else {
            /* a partial end-of-sentence token at the very end is text */
            size_t tail = k < eos_end ? k - close_at : 0;
            CHECK(strncmp(p.content, "Sure.é", 7) == 0 && strlen(p.content) == 7 + tail &&
                      strncmp(p.content + 7, close, tail) == 0 && json_array_size(p.calls) == 2,
                  "complete at %zu: [%s]", k, p.content);
        }
        parsed_free(&p);
    }
    p = oneshot("Sure.\xc3", 6, 0, NULL);
    CHECK(strcmp(p.content, "Sure.\xEF\xBF\xBD") == 0, "cut character becomes U+FFFD: [%s]", p.content);
    parsed_free(&p);

    static const char *malformed[] = {
        "x\n\n<" DSML "function_calls>\n<" DSML "invoke nam=\"f\">\n</" DSML "invoke>\n</" DSML "function_calls>" EOS,
        "x\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\">\n<" DSML "parameter name=\"a\">1</" DSML
        "parameter>\n</" DSML "invoke>\n</" DSML "function_calls>" EOS,
        "x\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\">\n<" DSML "parameter name=\"a\" string=\"true\">1" EOS,
        "x\n\n<" DSML "function_calls>\n</" DSML "function_calls>" EOS,
        "x\n\n<" DSML "function_calls>junk" EOS,
        "x\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\n\">",
        "x\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\">\n<" DSML "parameter name=\"a\" string=\"maybe\">1</" DSML
        "parameter>\n</" DSML "invoke>\n</" DSML "function_calls>",
    };
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++) {
        const char *t = malformed[i];
        size_t n = strlen(t);
        const char *e = strstr(t, EOS);
        size_t want = e ? (size_t)(e - t) : n;
        p = oneshot(t, n, 0, NULL);
        CHECK(json_array_size(p.calls) == 0 && strlen(p.content) == want && strncmp(p.content, t, want) == 0,
              "malformed %zu: [%s]", i, p.content);
        parsed_free(&p);
        char name[32];
        snprintf(name, sizeof name, "malformed %zu", i);
        check_streaming(name, t, n, 0);
    }
    /* a malformed block followed by a good one: the good one still counts */
    const char *mixed = "a\n\n<" DSML "function_calls>oops" BLOCK EOS;
    p = oneshot(mixed, strlen(mixed), 0, NULL);
    CHECK(json_array_size(p.calls) == 2 && strcmp(p.content, "a\n\n<" DSML "function_calls>oops") == 0, "mixed: [%s]",
          p.content);
    parsed_free(&p);
    check_streaming("mixed", mixed, strlen(mixed), 0);
    /* string="false" that is not JSON is kept as the raw string */
    const char *raw = "\n\n<" DSML "function_calls>\n<" DSML "invoke name=\"f\">\n<" DSML
                      "parameter name=\"a\" string=\"false\">not json</" DSML "parameter>\n</" DSML "invoke>\n</" DSML
                      "function_calls>";
    p = oneshot(raw, strlen(raw), 0, NULL);
    CHECK(json_array_size(p.calls) == 1 &&
              strcmp(json_string_value(json_array_get(json_array_get(p.calls, 0), 1)), "{\"a\": \"not json\"}") == 0,
          "raw fallback");
    parsed_free(&p);
    /* streams hold back split UTF-8 and marker prefixes */
    ds_chat_stream *s = ds_chat_stream_create(0);
    const ds_chat_event *ev;
    size_t nev;
    ds_chat_stream_push(s, "ab\xc3", 3, &ev, &nev, NULL);
    CHECK(nev == 1 && ev[0].len == 2, "utf-8 hold-back");
    ds_chat_stream_push(s, "\xa9\n\n<", 4, &ev, &nev, NULL);
    CHECK(nev == 1 && ev[0].len == 2 && memcmp(ev[0].text, "é", 2) == 0, "marker hold-back");
    ds_chat_stream_push(s, EOS "more", strlen(EOS) + 4, &ev, &nev, NULL);
    CHECK(nev == 1 && strcmp(ev[0].text, "\n\n<") == 0 && ds_chat_stream_stopped(s), "eos stop");
    ds_chat_stream_free(s);
}

/* ---- V3 / V3.1 legacy tool calls ------------------------------------------- */

#define TCS "<｜tool▁calls▁begin｜>"
#define TCE "<｜tool▁calls▁end｜>"
#define TB "<｜tool▁call▁begin｜>"
#define TE "<｜tool▁call▁end｜>"
#define TSEP "<｜tool▁sep｜>"
#define V3_CALL(name, args) TB "function" TSEP name "\n```json\n" args "\n```" TE
#define V31_CALL(name, args) TB name TSEP args TE

/* p has the calls named in names (NULL-terminated) with arguments args. */
static int has_calls(const parsed *p, const char *const *names, const char *const *args)
{
    size_t n = 0;
    while (names[n])
        n++;
    if (json_array_size(p->calls) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(p->calls, i);
        if (strcmp(json_string_value(json_array_get(c, 0)), names[i]) != 0 ||
            strcmp(json_string_value(json_array_get(c, 1)), args[i]) != 0)
            return 0;
    }
    return 1;
}

static void test_parse_v3(void)
{
    static const char *const names2[] = { "get_weather", "lookup", NULL };
    static const char *const args2[] = { "{\"city\": \"Paris\", \"days\": [1, 2.5]}", "{\"q\": \"a <b> \\\"c\\\"\"}", NULL };
    parse_fmt = DS_CHAT_V3;

    /* V3: what the template renders for an assistant turn with two calls,
     * after some content */
    const char *v3 = "Let me check.é" TCS V3_CALL("get_weather", "{\"city\": \"Paris\", \"days\": [1, 2.5]}") "\n"
                     V3_CALL("lookup", "{\"q\": \"a <b> \\\"c\\\"\"}") TCE EOS "ignored";
    parsed p = oneshot(v3, strlen(v3), 0, NULL);
    CHECK(strcmp(p.content, "Let me check.é") == 0 && has_calls(&p, names2, args2), "v3: [%s] %zu calls", p.content,
          json_array_size(p.calls));
    parsed_free(&p);
    check_streaming("v3", v3, strlen(v3), 0);

    /* V3.1: name before the separator, bare JSON; thinking mode first */
    const char *v31 = "hmm, weather</think>" TCS V31_CALL("get_weather", "{\"city\":\"Paris\",\"days\":[1,2.5]}")
                      V31_CALL("lookup", " {\"q\": \"a <b> \\\"c\\\"\"}\n") TCE EOS;
    json_t *m = NULL;
    p = oneshot(v31, strlen(v31), 1, &m);
    CHECK(strcmp(p.reasoning, "hmm, weather") == 0 && !p.content[0] && has_calls(&p, names2, args2),
          "v3.1: [%s] [%s] %zu calls", p.reasoning, p.content, json_array_size(p.calls));
    CHECK(json_array_size(json_object_get(m, "tool_calls")) == 2 &&
              strcmp(json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(m, "tool_calls"), 0),
                                                                      "function"), "name")), "get_weather") == 0,
          "v3.1: message tool_calls");
    json_decref(m);
    parsed_free(&p);
    check_streaming("v3.1", v31, strlen(v31), 1);
    check_streaming("v3.1, chat mode", v31, strlen(v31), 0);

    /* a completion rendered by our own V3 template parses back */
    const char *conv = "[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": null, "
                       "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": "
                       "\"{\\\"x\\\": 1}\"}}]}]";
    char *prompt = render(DS_CHAT_V3, conv, 0, 1, 0, 0);
    const char *at = prompt ? strstr(prompt, TCS) : NULL;
    CHECK(at != NULL, "v3 render has a calls block");
    if (at) {
        static const char *const n1[] = { "f", NULL }, *const a1[] = { "{\"x\": 1}", NULL };
        /* the first call of a conversation is left open by the template */
        char *full = malloc(strlen(at) + strlen(TCE EOS) + 1);
        sprintf(full, "%s%s", at, TCE EOS);
        p = oneshot(full, strlen(full), 0, NULL);
        CHECK(!p.content[0] && has_calls(&p, n1, a1), "v3 render round trip: [%s]", p.content);
        parsed_free(&p);
        free(full);
    }
    free(prompt);

    /* every truncation: plain content until the block is closed */
    size_t glen = strlen(v3), head = strlen("Let me check.é");
    const char *close = strstr(v3, TCE) + strlen(TCE);
    size_t close_at = (size_t)(close - v3);
    for (size_t k = head; k <= glen; k++) {
        if (k < glen && ((unsigned char)v3[k] & 0xC0) == 0x80)
            continue;
        p = oneshot(v3, k, 0, NULL);
        if (k < close_at)
            CHECK(strlen(p.content) == k && strncmp(p.content, v3, k) == 0 && json_array_size(p.calls) == 0,
                  "v3 truncated at %zu: [%s]", k, p.content);
        else {
            /* a partial end-of-sentence token at the very end is text */
            size_t tail = k < close_at + strlen(EOS) ? k - close_at : 0;
            CHECK(strlen(p.content) == head + tail && strncmp(p.content, v3, head) == 0 &&
                      strncmp(p.content + head, close, tail) == 0 && json_array_size(p.calls) == 2,
                  "v3 complete at %zu: [%s]", k, p.content);
        }
        parsed_free(&p);
    }

    static const char *malformed[] = {
        "x" TCS V3_CALL("f", "{\"a\": 1") TCE EOS,                     /* bad JSON */
        "x" TCS V3_CALL("f", "[1, 2]") TCE EOS,                        /* not an object */
        "x" TCS TB "function" TSEP "f\n```json\n{}" TE TCE EOS,        /* no closing fence */
        "x" TCS TB "function" TSEP "f\n```\n{}\n```" TE TCE EOS,       /* wrong fence */
        "x" TCS TB "method" TSEP "f\n```json\n{}\n```" TE TCE EOS,     /* V3 form, not a function */
        "x" TCS TB "f g\n" TSEP "{}" TE TCE EOS,                       /* newline in the name */
        "x" TCS TB TSEP "{}" TE TCE EOS,                               /* empty name */
        "x" TCS TCE EOS,                                               /* no calls */
        "x" TCS "junk" EOS,
        "x" TCS V31_CALL("f", "{\"a\": ") EOS,                         /* cut off by the end */
        "x" TCS V31_CALL("f", "{}") EOS,                               /* calls never closed */
        "x" TCS V31_CALL("f", "{\"a\": \"\xff\"}") TCE EOS,            /* not UTF-8 */
        "x" TCS TB "f\xc3(" TSEP "{}" TE TCE EOS,                      /* name not UTF-8 */
    };
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++) {
        const char *t = malformed[i];
        size_t n = strlen(t);
        const char *e = strstr(t, EOS);
        size_t want = e ? (size_t)(e - t) : n;
        p = oneshot(t, n, 0, NULL);
        /* invalid UTF-8 comes back repaired, so compare lengths only when valid */
        json_t *chk = json_stringn(t, want);
        CHECK(json_array_size(p.calls) == 0 && (!chk || (strlen(p.content) == want && strncmp(p.content, t, want) == 0)),
              "v3 malformed %zu: [%s]", i, p.content);
        parsed_free(&p);
        char name[32];
        snprintf(name, sizeof name, "v3 malformed %zu", i);
        if (chk)   /* streams pass bytes on unrepaired, so only valid text compares */
            check_streaming(name, t, n, 0);
        json_decref(chk);
    }
    /* a malformed block followed by a good one */
    const char *mixed = "a" TCS "oops" TCS V31_CALL("lookup", "{\"q\": 1}") TCE EOS;
    p = oneshot(mixed, strlen(mixed), 0, NULL);
    CHECK(json_array_size(p.calls) == 1 && strcmp(p.content, "a" TCS "oops") == 0, "v3 mixed: [%s]", p.content);
    parsed_free(&p);
    check_streaming("v3 mixed", mixed, strlen(mixed), 0);
    /* DSML is plain text to the V3 parser, and V3 tokens to the V3.2 one */
    const char *dsml = "x" BLOCK EOS;
    p = oneshot(dsml, strlen(dsml), 0, NULL);
    CHECK(json_array_size(p.calls) == 0 && strlen(p.content) == strlen(dsml) - strlen(EOS), "v3 ignores DSML");
    parsed_free(&p);
    parse_fmt = DS_CHAT_V32;
    p = oneshot(v3, strlen(v3), 0, NULL);
    CHECK(json_array_size(p.calls) == 0 && strncmp(p.content, v3, strlen(p.content)) == 0 &&
              strlen(p.content) == (size_t)(strstr(v3, EOS) - v3),
          "v3.2 ignores V3 calls");
    parsed_free(&p);
}

int main(void)
{
    test_official_fixture();
    test_spec_vector();
    test_v32_modes();
    test_v32_system_extras();
    test_drop_thinking();
    test_v3_template();
    test_render_errors();
    test_python_json();
    test_parse_fixture();
    test_parse_cases();
    test_parse_v3();
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
