// openai_client.mjs — checks dsinfer-serve with the official OpenAI Node
// client (the npm `openai` package, v4): a streamed chat in thinking mode
// against the same request unstreamed, and tool calls end to end.
//
// usage: node openai_client.mjs plain URL    (a server running the tiny model)
//        node openai_client.mjs forced URL FMT  (a server started with
//                                             DSINFER_TEST_FORCED_COMPLETION
//                                             naming a file with FORCED[FMT])
//        node openai_client.mjs forced-text FMT (prints FORCED[FMT])
// FMT is the model's chat format: v3.2 (DSML) or v3 (the legacy tokens).
// The package is loaded from $DSINFER_NODE_MODULES (a node_modules folder).
// Prints PASS/FAIL lines; exits 1 when anything failed.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

// What a forced server generates for every chat completion (written to a
// file by test_openai_client.sh): reasoning, content, then two tool calls
// in the model's format (V3.2: a DSML block; V3: V3.1's legacy tokens), then
// the end-of-sentence token.
const V32_FORCED =
    "The user wants the weather.</think>Let me check.\n\n<｜DSML｜function_calls>\n" +
    '<｜DSML｜invoke name="get_weather">\n' +
    '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n' +
    '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n' +
    "</｜DSML｜invoke>\n" +
    '<｜DSML｜invoke name="get_time">\n' +
    '<｜DSML｜parameter name="zone" string="true">Europe/Paris</｜DSML｜parameter>\n' +
    "</｜DSML｜invoke>\n" +
    "</｜DSML｜function_calls><｜end▁of▁sentence｜>";
const V3_FORCED =
    "The user wants the weather.</think>Let me check.<｜tool▁calls▁begin｜>" +
    '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "days": 3}<｜tool▁call▁end｜>\n' +
    '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"zone": "Europe/Paris"}<｜tool▁call▁end｜>' +
    "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
const FORCED = { "v3.2": V32_FORCED, v3: V3_FORCED };

let fails = 0;
function check(cond, msg, detail = "") {
    if (cond) console.log("PASS", msg);
    else {
        fails++;
        console.log("FAIL", `${msg}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`.slice(0, 800));
    }
    return cond;
}

async function loadOpenAI() {
    const nm = process.env.DSINFER_NODE_MODULES;
    if (!nm) throw new Error("DSINFER_NODE_MODULES is not set");
    // NODE_PATH does not apply to ESM imports: resolve the package by path.
    const req = createRequire(join(nm, "_resolve.js"));
    const cjs = req.resolve("openai");     // the package's "require" entry
    const esm = join(dirname(cjs), "index.mjs");
    const entry = existsSync(esm) ? esm : cjs;
    const mod = await import(pathToFileURL(entry).href);
    return mod.default?.default ?? mod.default ?? mod.OpenAI;
}

const TOOLS = [
    {
        type: "function",
        function: {
            name: "get_weather",
            description: "Weather forecast for a city",
            parameters: {
                type: "object",
                properties: { city: { type: "string" }, days: { type: "integer" } },
                required: ["city"],
            },
        },
    },
    {
        type: "function",
        function: {
            name: "get_time",
            description: "Current time in a time zone",
            parameters: { type: "object", properties: { zone: { type: "string" } }, required: ["zone"] },
        },
    },
];

// Reads a chat stream: checks every chunk's shape and gathers the deltas.
async function collect(stream, label) {
    const out = { content: "", reasoning: "", finish: null, usage: null, calls: [], chunks: 0, ids: new Set(), role: null };
    let shapeOk = true, afterFinish = false;
    for await (const chunk of stream) {
        out.chunks++;
        out.ids.add(chunk.id);
        if (chunk.object !== "chat.completion.chunk" || !Array.isArray(chunk.choices) || typeof chunk.created !== "number" ||
            typeof chunk.model !== "string") {
            shapeOk = false;
            check(false, `${label}: chunk shape`, chunk);
        }
        if (chunk.usage) out.usage = chunk.usage;
        if (chunk.choices.length === 0) {
            if (!chunk.usage) check(false, `${label}: a chunk without choices carries usage`, chunk);
            continue;
        }
        const ch = chunk.choices[0];
        if (ch.index !== 0 || typeof ch.delta !== "object") {
            shapeOk = false;
            check(false, `${label}: choice shape`, chunk);
        }
        if (afterFinish) {
            shapeOk = false;
            check(false, `${label}: a choice after finish_reason`, chunk);
        }
        const d = ch.delta || {};
        if (d.role) out.role = d.role;
        if (typeof d.content === "string") out.content += d.content;
        if (typeof d.reasoning_content === "string") out.reasoning += d.reasoning_content;
        for (const tc of d.tool_calls || []) {
            const slot = (out.calls[tc.index] ??= { id: "", type: "", name: "", arguments: "" });
            if (tc.id) slot.id = tc.id;
            if (tc.type) slot.type = tc.type;
            if (tc.function?.name) slot.name += tc.function.name;
            if (tc.function?.arguments) slot.arguments += tc.function.arguments;
        }
        if (ch.finish_reason) {
            out.finish = ch.finish_reason;
            afterFinish = true;
        }
    }
    check(shapeOk && out.chunks > 0, `${label}: ${out.chunks} well-formed chunks`);
    check(out.ids.size === 1, `${label}: one id for all chunks`, [...out.ids]);
    check(out.role === "assistant", `${label}: role assistant first`, String(out.role));
    return out;
}

async function plain(client) {
    const models = await client.models.list();
    const model = models.data[0]?.id;
    check(typeof model === "string", "models.list", models.data);

    // (a) thinking on, greedy: the stream's deltas add up to the unstreamed message
    const req = {
        model,
        messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 2?" }],
        temperature: 0,
        seed: 7,
        max_tokens: 24,
        chat_template_kwargs: { thinking: true },
    };
    const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    const s = await collect(stream, "thinking stream");
    check(s.finish === "stop" || s.finish === "length", "thinking stream: finish_reason", String(s.finish));
    check(s.usage && s.usage.completion_tokens > 0 && s.usage.total_tokens === s.usage.prompt_tokens + s.usage.completion_tokens,
          "thinking stream: usage with include_usage", s.usage);
    const r = await client.chat.completions.create(req);
    const m = r.choices[0].message;
    check(r.object === "chat.completion" && m.role === "assistant", "thinking: unstreamed completion", r);
    check(typeof m.reasoning_content === "string", "thinking: message has reasoning_content", m);
    check(s.reasoning === m.reasoning_content && s.content === (m.content ?? ""),
          "thinking: streamed deltas equal the unstreamed message", { stream: [s.reasoning, s.content], message: m });
    check(s.reasoning.length + s.content.length > 0, "thinking: some text was generated");
    check(r.choices[0].finish_reason === s.finish && r.usage.completion_tokens === s.usage.completion_tokens,
          "thinking: same finish_reason and token count", { stream: [s.finish, s.usage], message: [r.choices[0].finish_reason, r.usage] });

    // thinking off: no reasoning in the stream
    const off = await collect(await client.chat.completions.create({ ...req, chat_template_kwargs: { thinking: false }, stream: true }),
                              "chat-mode stream");
    check(off.reasoning === "" && off.usage === null, "chat mode: no reasoning deltas, no usage unless asked");

    // (b) a conversation that already holds a tool round: assistant tool_calls
    // then the tool's result; the server must render it and answer
    const conv = {
        model,
        tools: TOOLS,
        temperature: 0,
        max_tokens: 8,
        messages: [
            { role: "user", content: "Weather in Paris?" },
            {
                role: "assistant",
                content: null,
                tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }],
            },
            { role: "tool", tool_call_id: "call_1", content: '{"temp_c": 21}' },
        ],
    };
    const t = await client.chat.completions.create(conv);
    check(t.choices[0].message.role === "assistant" && ["stop", "length", "tool_calls"].includes(t.choices[0].finish_reason),
          "tool round: conversation with tool_calls and a tool result is answered", t);
    const ts = await collect(await client.chat.completions.create({ ...conv, stream: true }), "tool round stream");
    check(ts.content === (t.choices[0].message.content ?? ""), "tool round: streamed equals unstreamed", [ts.content, t.choices[0].message]);
    try {
        await client.chat.completions.create({ ...conv, tools: "nope" });
        check(false, "bad tools: rejected");
    } catch (e) {
        check(e.status === 400 && e instanceof client.constructor.BadRequestError, "bad tools: 400 as BadRequestError", String(e));
    }
}

function sameCalls(calls) {
    return calls.length === 2 && calls[0].type === "function" && calls[0].name === "get_weather" &&
        JSON.stringify(JSON.parse(calls[0].arguments)) === JSON.stringify({ city: "Paris", days: 3 }) &&
        calls[1].name === "get_time" && JSON.parse(calls[1].arguments).zone === "Europe/Paris" &&
        calls.every((c) => typeof c.id === "string" && c.id.length > 0) && calls[0].id !== calls[1].id;
}

async function forced(client, fmt) {
    const model = (await client.models.list()).data[0].id;
    const req = {
        model,
        tools: TOOLS,
        temperature: 0,
        max_tokens: 300,
        chat_template_kwargs: { thinking: true },
        messages: [{ role: "user", content: "What is the weather in Paris, and the time there?" }],
    };
    // streamed: tool_calls deltas
    const s = await collect(await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }),
                            `${fmt} forced stream`);
    check(s.reasoning === "The user wants the weather." && s.content === "Let me check.", `${fmt} forced stream: reasoning and content`,
          [s.reasoning, s.content]);
    check(sameCalls(s.calls), `${fmt} forced stream: two tool calls from the deltas`, s.calls);
    check(s.finish === "tool_calls" && s.usage && s.usage.completion_tokens > 0, `${fmt} forced stream: finish_reason tool_calls, usage`,
          [s.finish, s.usage]);
    // unstreamed: the message's tool_calls
    const r = await client.chat.completions.create(req);
    const m = r.choices[0].message;
    const mc = (m.tool_calls || []).map((c) => ({ id: c.id, type: c.type, name: c.function.name, arguments: c.function.arguments }));
    check(sameCalls(mc) && r.choices[0].finish_reason === "tool_calls", `${fmt} forced: message.tool_calls`, m);
    check(m.content === s.content && m.reasoning_content === s.reasoning, `${fmt} forced: message text equals the stream`, m);
    check(JSON.stringify(mc.map((c) => [c.name, c.arguments])) === JSON.stringify(s.calls.map((c) => [c.name, c.arguments])),
          `${fmt} forced: streamed calls equal the unstreamed ones`);

    // the client's own tool loop: the SDK assembles the streamed calls, runs
    // the functions, sends their results back and asks again (the forced
    // server calls the tools again, so the loop is capped at two rounds)
    const seen = [];
    const runner = client.beta.chat.completions.runTools({
        model,
        temperature: 0,
        max_tokens: 300,
        stream: true,
        messages: [{ role: "user", content: "Weather and time in Paris?" }],
        tools: [
            { type: "function", function: { ...TOOLS[0].function, function: (a) => (seen.push(["get_weather", a]), { temp_c: 21 }), parse: JSON.parse } },
            { type: "function", function: { ...TOOLS[1].function, function: (a) => (seen.push(["get_time", a]), "12:00"), parse: JSON.parse } },
        ],
    }, { maxChatCompletions: 2 });
    let runErr = null;
    try {
        await runner.done();
    } catch (e) {
        runErr = e;
    }
    check(runErr === null, `${fmt} runTools: the SDK's tool loop ran`, String(runErr));
    const msgs = runner.messages;
    const roles = msgs.map((x) => x.role).join(",");
    check(seen.length >= 2 && seen[0][0] === "get_weather" && seen[0][1].city === "Paris" && seen[0][1].days === 3 &&
          seen[1][0] === "get_time" && seen[1][1].zone === "Europe/Paris",
          `${fmt} runTools: the tools were called with the parsed arguments`, seen);
    check(/^user,assistant,tool,tool,assistant/.test(roles), `${fmt} runTools: results went back and the server answered them`, roles);
}

const [mode, url, fmt = "v3.2"] = process.argv.slice(2);
if (mode === "forced-text") {
    process.stdout.write(FORCED[url]);
    process.exit(0);
}
try {
    const OpenAI = await loadOpenAI();
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", timeout: 120000, maxRetries: 0 });
    if (mode === "forced") await forced(client, fmt);
    else await plain(client);
} catch (e) {
    check(false, "unexpected exception", e && e.stack ? e.stack : String(e));
}
console.log(`${fails} failed`);
process.exit(fails ? 1 : 0);
