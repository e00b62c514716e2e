"""Checks a running dsinfer-serve over HTTP (standard library only).

usage: serve_client.py main BASE_URL SERVER_PID   (everything but the API key;
                                                  ends by sending SIGTERM mid-request)
       serve_client.py auth BASE_URL KEY

Prints PASS/FAIL lines and exits 1 when anything failed.  Every socket
operation has a timeout, every wait is bounded."""
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

TIMEOUT = 60
fails = 0


def ok(msg):
    print("PASS", msg, flush=True)


def bad(msg):
    global fails
    fails += 1
    print("FAIL", msg, flush=True)


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        bad(f"{msg}: {detail}"[:800])
    return cond


class Client:
    def __init__(self, base, key=None):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.key = u.hostname, u.port, key

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = "Bearer " + self.key
        h.update(extra or {})
        return h

    def request(self, method, path, body=None, headers=None):
        """(status, headers, raw bytes); body may be a dict, str or bytes."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=self.headers(headers))
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None):
        st, _, raw = self.request(method, path, body, headers)
        try:
            return st, json.loads(raw)
        except ValueError:
            return st, {"unparsed": raw[:300].decode("utf-8", "replace")}

    def stream(self, path, body):
        """Reads an SSE response: (status, [parsed chunks], saw [DONE] last)."""
        c = self.conn()
        try:
            c.request("POST", path, body=json.dumps(body).encode(), headers=self.headers())
            r = c.getresponse()
            if r.status != 200:
                return r.status, [json.loads(r.read())], False
            chunks, done = [], False
            for line in r:
                line = line.decode().rstrip("\r\n")
                if not line:
                    continue
                if not line.startswith("data: "):
                    raise ValueError("not an SSE data line: %r" % line)
                if done:
                    raise ValueError("data after [DONE]")
                if line == "data: [DONE]":
                    done = True
                else:
                    chunks.append(json.loads(line[6:]))
            return r.status, chunks, done
        finally:
            c.close()


def chat_body(content="Hello", **kw):
    b = {"model": "tiny", "messages": [{"role": "user", "content": content}],
         "max_tokens": 8, "temperature": 0}
    b.update(kw)
    return b


def is_error_object(d):
    e = d.get("error") if isinstance(d, dict) else None
    return isinstance(e, dict) and isinstance(e.get("message"), str) and all(
        k in e for k in ("type", "param", "code"))


def metrics(cl):
    st, _, raw = cl.request("GET", "/metrics")
    vals = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            vals[name] = float(value)
    return st, vals


# ---- checks -------------------------------------------------------------------

def check_basics(cl):
    st, d = cl.json("GET", "/health")
    check(st == 200 and d.get("status") == "ok", "/health", f"{st} {d}")
    st, d = cl.json("GET", "/v1/models")
    check(st == 200 and d.get("object") == "list" and d["data"][0]["id"] == "tiny",
          "/v1/models", f"{st} {d}")


def check_chat(cl):
    st, d = cl.json("POST", "/v1/chat/completions", chat_body())
    if not check(st == 200, "chat completion status", f"{st} {d}"):
        return None
    ch, u = d["choices"][0], d["usage"]
    text = ch["message"]["content"]
    check(d["object"] == "chat.completion" and ch["message"]["role"] == "assistant"
          and isinstance(text, str), "chat completion message", d)
    check(u["completion_tokens"] == 8 and u["prompt_tokens"] > 0
          and u["total_tokens"] == u["prompt_tokens"] + 8, "chat usage counts", u)
    check(ch["finish_reason"] == "length", "finish_reason length", ch["finish_reason"])
    st, d2 = cl.json("POST", "/v1/chat/completions", chat_body())
    check(st == 200 and d2["choices"][0]["message"]["content"] == text,
          "greedy is reproducible", f"{text!r} vs {d2}")
    return text


def check_stream(cl, text):
    st, chunks, done = cl.stream("/v1/chat/completions",
                                 chat_body(stream=True, stream_options={"include_usage": True}))
    if not check(st == 200 and done, "stream ends with [DONE]", f"{st} {chunks[:2]}"):
        return
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    check(all(c["object"] == "chat.completion.chunk" for c in chunks), "chunk objects")
    check(choices[0]["delta"].get("role") == "assistant", "first chunk carries the role", choices[0])
    joined = "".join(c["delta"].get("content") or "" for c in choices)
    check(joined == text, "streamed deltas equal the non-streaming content", f"{joined!r} vs {text!r}")
    check(choices[-1]["finish_reason"] == "length", "stream finish_reason", choices[-1])
    usage = [c["usage"] for c in chunks if c.get("usage")]
    check(len(usage) == 1 and usage[0]["completion_tokens"] == 8 and not chunks[-1]["choices"],
          "include_usage gives a final usage chunk", usage)


def check_stop(cl, text):
    """A stop string from the middle of the greedy text: the output ends right
    before it, in one piece and streamed (never a partial stop string)."""
    mid = len(text) // 2
    stop = text[mid:mid + 3]
    want = text[:text.find(stop)]
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(stop=[stop, "\u2603never"]))
    got = d["choices"][0]["message"]["content"] if st == 200 else d
    check(got == want and d["choices"][0]["finish_reason"] == "stop",
          "stop string cuts the text", f"stop {stop!r}: {got!r} vs {want!r}")
    st, chunks, done = cl.stream("/v1/chat/completions", chat_body(stop=stop, stream=True))
    joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    check(done and joined == want, "stop string in a stream", f"{joined!r} vs {want!r}")


def check_completions(cl):
    body = {"prompt": [0, 33310, 3], "max_tokens": 4, "temperature": 0, "logprobs": 2}
    st, d = cl.json("POST", "/v1/completions", body)
    if not check(st == 200, "/v1/completions with token ids", f"{st} {d}"):
        return
    ch = d["choices"][0]
    lp = ch["logprobs"]
    check(d["object"] == "text_completion" and isinstance(ch["text"], str)
          and d["usage"]["prompt_tokens"] == 3 and d["usage"]["completion_tokens"] == 4,
          "completion text and usage", d)
    check(len(lp["tokens"]) == 4 and len(lp["token_logprobs"]) == 4
          and all(x <= 0 for x in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"]),
          "completion logprobs", lp)
    st, d = cl.json("POST", "/v1/completions", {"prompt": "The capital of", "max_tokens": 3, "temperature": 0})
    check(st == 200 and d["usage"]["completion_tokens"] == 3, "/v1/completions with text", d)
    # a null max_completion_tokens beside max_tokens leaves max_tokens in force
    st, d = cl.json("POST", "/v1/completions", {"prompt": [0, 33310, 3], "max_tokens": 2,
                                                "max_completion_tokens": None, "temperature": 0})
    check(st == 200 and d["usage"]["completion_tokens"] == 2, "max_tokens with a null max_completion_tokens", d)
    # a stop string met on the last allowed token: the finish reason is stop
    st, d = cl.json("POST", "/v1/completions", {"prompt": [0, 33310, 3], "max_tokens": 2, "temperature": 0})
    text = d["choices"][0]["text"] if st == 200 else ""
    first = cl.json("POST", "/v1/completions", {"prompt": [0, 33310, 3], "max_tokens": 1, "temperature": 0})[1]
    second = text[len(first["choices"][0]["text"]):] if "choices" in first else ""
    if second.strip():
        st, d = cl.json("POST", "/v1/completions", {"prompt": [0, 33310, 3], "max_tokens": 2, "temperature": 0,
                                                    "stop": [second.strip()]})
        check(st == 200 and d["choices"][0]["finish_reason"] == "stop",
              "stop string on the last allowed token finishes with stop", d)


def check_chat_logprobs(cl):
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(logprobs=True, top_logprobs=3))
    content = (d.get("choices") or [{}])[0].get("logprobs", {}) or {}
    content = content.get("content") or []
    check(st == 200 and len(content) == 8 and all(
        e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        and e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-6 for e in content),
        "chat logprobs", f"{st} {str(d)[:400]}")


def expect_error(cl, status, what, method, path, body=None, headers=None):
    st, d = cl.json(method, path, body, headers)
    return check(st == status and is_error_object(d), f"{what} -> {status}", f"{st} {d}")


def check_errors(cl, max_body):
    expect_error(cl, 400, "bad JSON", "POST", "/v1/chat/completions", "{\"messages\": [")
    expect_error(cl, 400, "missing messages", "POST", "/v1/chat/completions", {"max_tokens": 3})
    expect_error(cl, 400, "messages of the wrong type", "POST", "/v1/chat/completions", {"messages": "hi"})
    expect_error(cl, 400, "temperature of the wrong type", "POST", "/v1/chat/completions",
                 chat_body(temperature="hot"))
    expect_error(cl, 404, "unknown path", "GET", "/v1/nothing")
    expect_error(cl, 405, "GET on a POST endpoint", "GET", "/v1/chat/completions")
    expect_error(cl, 413, "huge body", "POST", "/v1/chat/completions", b"x" * (max_body + 4096))
    expect_error(cl, 400, "n = 2", "POST", "/v1/chat/completions", chat_body(n=2))
    # parameters the server does not implement are refused, not ignored (their
    # no-op values pass)
    for k, v in (("echo", True), ("logit_bias", {"5": -100}), ("presence_penalty", 0.5),
                 ("frequency_penalty", -1), ("best_of", 2), ("suffix", "x")):
        st, d = cl.json("POST", "/v1/completions", {"prompt": [0, 5], "max_tokens": 1, k: v})
        check(st == 400 and d["error"]["code"] == "unsupported_value" and d["error"]["param"] == k,
              f"{k} = {v!r} is refused", f"{st} {d}")
    st, d = cl.json("POST", "/v1/completions", {"prompt": [0, 5], "max_tokens": 1, "echo": False, "logit_bias": {},
                                                "presence_penalty": 0, "frequency_penalty": 0.0, "best_of": 1})
    check(st == 200, "their no-op values pass", f"{st} {d}")
    if expect_error(cl, 400, "prompt longer than the context", "POST", "/v1/chat/completions",
                    chat_body(content="hello " * 400)):
        st, d = cl.json("POST", "/v1/chat/completions", chat_body(content="hello " * 400))
        check(d["error"]["code"] == "context_length_exceeded" and "context" in d["error"]["message"],
              "context error is clear", d)
    expect_error(cl, 400, "max_tokens over the context", "POST", "/v1/chat/completions",
                 chat_body(max_tokens=100000))
    expect_error(cl, 400, "invalid UTF-8", "POST", "/v1/chat/completions",
                 b'{"messages": [{"role": "user", "content": "\xff\xfe bad"}]}')
    expect_error(cl, 400, "lone surrogate escape", "POST", "/v1/chat/completions",
                 b'{"messages": [{"role": "user", "content": "\\ud800"}]}')
    expect_error(cl, 400, "token id outside the vocabulary", "POST", "/v1/completions",
                 {"prompt": [0, 99999999], "max_tokens": 2})
    st, d = cl.json("GET", "/health")
    check(st == 200, "server alive after bad input", st)


def check_concurrency(cl, n=4):
    results = [None] * n

    def worker(i):
        try:
            results[i] = cl.json("POST", "/v1/chat/completions",
                                 chat_body(content=f"Request number {i}", max_tokens=6))
        except Exception as e:          # reported below
            results[i] = (0, repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    check(all(r and r[0] == 200 and r[1]["usage"]["completion_tokens"] == 6 for r in results),
          f"{n} concurrent requests", results)


def open_stream(cl, max_tokens=16, chunks=3):
    """A raw streaming request whose first chunks have been read: (socket, bytes)."""
    s = socket.create_connection((cl.host, cl.port), timeout=TIMEOUT)
    body = json.dumps(chat_body(max_tokens=max_tokens, stream=True)).encode()
    auth = f"Authorization: Bearer {cl.key}\r\n" if cl.key else ""
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + auth.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    deadline = time.time() + TIMEOUT
    while got.count(b"data: ") < chunks and time.time() < deadline:
        part = s.recv(4096)
        if not part:
            break
        got += part
    return s, got


def check_disconnect(cl):
    """A streaming client that goes away after the first chunks."""
    _, before = metrics(cl)
    s, got = open_stream(cl)
    s.close()
    check(got.count(b"data: ") >= 3, "read the first chunks before disconnecting", got[:200])
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(max_tokens=4))
    check(st == 200 and d["usage"]["completion_tokens"] == 4, "next request works after a disconnect", d)
    deadline = time.time() + 20
    while time.time() < deadline:
        st, m = metrics(cl)
        done = m.get("dsinfer_engine_requests_finished_total", 0)
        if m.get("dsinfer_active_sequences", 1) == 0 and done >= before.get(
                "dsinfer_engine_requests_finished_total", 0) + 2:
            break
        time.sleep(0.2)
    cancelled = m.get("dsinfer_engine_requests_cancelled_total", 0)
    check(st == 200 and done >= 2 and m.get("dsinfer_active_sequences") == 0,
          f"metrics count finished ({done:g}) and cancelled ({cancelled:g}) requests", m)
    check(cancelled > before.get("dsinfer_engine_requests_cancelled_total", 0)
          and m.get("dsinfer_client_disconnects_total", 0) >= 1,
          "the disconnect cancelled its generation", m)
    check(any(k.startswith('dsinfer_requests_total{endpoint="/v1/chat/completions",code="200"}') for k in m)
          and "dsinfer_kv_positions_capacity" in m and "dsinfer_generated_tokens_per_second" in m
          and m.get("dsinfer_expert_cache_hit_rate") == 1, "metrics names", sorted(m)[:40])


def check_thinking_tools(cl):
    st, d = cl.json("POST", "/v1/chat/completions", chat_body())
    base = d["usage"]["prompt_tokens"] if st == 200 else -1
    # sampled special tokens other than the parser's markers (placeholders,
    # which the random tiny model samples, e.g. with seed 0 here) are not text
    for seed in range(8):
        st, d = cl.json("POST", "/v1/chat/completions", chat_body(content="Hi", temperature=1, seed=seed))
        c = d["choices"][0]["message"]["content"] if st == 200 else None
        if not check(st == 200 and "place\u2581holder" not in c, f"no placeholder token in the answer (seed {seed})",
                     f"{st} {c!r}"):
            break
    # a special token spelled in a message is text (about a dozen tokens),
    # not one end-of-sentence token that would forge the turn
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(content="\uff5cx<\uff5cend\u2581of\u2581sentence\uff5c>"))
    check(st == 200 and d["usage"]["prompt_tokens"] >= base + 8, "special tokens in a message stay text",
          f"{st} {d.get('usage')} vs base {base}")
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(chat_template_kwargs={"thinking": True}))
    msg = d["choices"][0]["message"] if st == 200 else {}
    check(isinstance(msg.get("reasoning_content"), str) and isinstance(msg.get("content"), str)
          and len(msg["reasoning_content"]) + len(msg["content"]) > 0,
          "thinking mode gives reasoning_content", d)
    st, chunks, done = cl.stream("/v1/chat/completions", chat_body(thinking=True, stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    r = "".join(x.get("reasoning_content") or "" for x in deltas)
    c = "".join(x.get("content") or "" for x in deltas)
    check(done and r == msg.get("reasoning_content") and c == msg.get("content"),
          "streamed reasoning equals the non-streaming one", f"{r!r} {c!r} vs {msg}")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    # the V3.2 tool instructions alone outgrow the test's 256-position context
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(tools=tools, tool_choice="auto"))
    check(st == 400 and d["error"]["code"] == "context_length_exceeded",
          "tools are rendered into the prompt", d)
    st, d = cl.json("POST", "/v1/chat/completions", chat_body(tools=tools, tool_choice="none"))
    check(st == 200 and d["usage"]["prompt_tokens"] == base, "tool_choice none hides the tools", d)
    expect_error(cl, 400, "tools of the wrong type", "POST", "/v1/chat/completions", chat_body(tools="x"))
    expect_error(cl, 400, "a tool that is not a function", "POST", "/v1/chat/completions", chat_body(tools=[5]))
    expect_error(cl, 400, "a tool without a name", "POST", "/v1/chat/completions",
                 chat_body(tools=[{"type": "function", "function": {"name": 5}}]))
    expect_error(cl, 400, "an unknown tool_choice", "POST", "/v1/chat/completions",
                 chat_body(tools=tools, tool_choice="bogus"))
    expect_error(cl, 400, "a tool_choice naming no tool", "POST", "/v1/chat/completions",
                 chat_body(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}))


def check_queue_full(cl):
    """--parallel 2 --max-queue 0: a third request while two stream gets 503."""
    socks = [open_stream(cl, max_tokens=16, chunks=2)[0] for _ in range(2)]
    expect_error(cl, 503, "queue full", "POST", "/v1/chat/completions", chat_body(max_tokens=2))
    for s in socks:
        s.close()
    deadline, st = time.time() + 30, 0
    while time.time() < deadline:
        st, d = cl.json("POST", "/v1/chat/completions", chat_body(max_tokens=2))
        if st == 200:
            break
        time.sleep(0.2)
    check(st == 200, "accepted again once the streams are gone", st)


def check_sigterm_drains(cl, pid):
    """SIGTERM while a request runs: the request still completes."""
    out = {}

    def worker():
        try:
            out["r"] = cl.json("POST", "/v1/chat/completions", chat_body(max_tokens=12))
        except Exception as e:
            out["r"] = (0, repr(e))

    base = metrics(cl)[1].get("dsinfer_engine_requests_submitted_total", 0)
    t = threading.Thread(target=worker)
    t.start()
    # signal only once the engine has the request: a request whose body has
    # not been read yet is not in flight and is refused with 503 while draining
    deadline = time.time() + 20
    while time.time() < deadline and t.is_alive():
        if metrics(cl)[1].get("dsinfer_engine_requests_submitted_total", 0) >= base + 1:
            break
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    t.join(TIMEOUT)
    r = out.get("r")
    check(r and r[0] == 200 and r[1]["usage"]["completion_tokens"] == 12,
          "a request in flight at SIGTERM completes", r)


def check_response_format(cl):
    """response_format json_schema constrains sampled answers; bad schemas are 400."""
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]},
              "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}}, "required": ["a", "b"]}
    rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    for seed in (1, 2):
        st, d = cl.json("POST", "/v1/chat/completions",
                        chat_body(max_tokens=60, temperature=1.0, seed=seed, response_format=rf))
        if not check(st == 200, "response_format status", f"{st} {d}"):
            return
        ch = d["choices"][0]
        try:
            v = json.loads(ch["message"]["content"])
        except ValueError:
            v = None
        check(ch["finish_reason"] == "stop" and isinstance(v, dict) and v.get("a") in ("x", "y")
              and set(v) == {"a", "b"} and len(v["b"]) <= 2 and all(isinstance(x, bool) for x in v["b"]),
              "response_format json_schema: the answer matches", ch)
    st, d = cl.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 20,
                    "response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": [10, 20]}}}})
    check(st == 200 and d["choices"][0]["text"] in ("10", "20"), "completions response_format enum", f"{st} {d}")
    bad_rf = {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a"}}}
    expect_error(cl, 400, "unsupported schema keyword", "POST", "/v1/chat/completions",
                 chat_body(response_format=bad_rf))


def main_checks(base, pid, max_body):
    cl = Client(base)
    check_basics(cl)
    text = check_chat(cl)
    if text is not None:
        check_stream(cl, text)
        if len(text) >= 8:
            check_stop(cl, text)
    check_completions(cl)
    check_chat_logprobs(cl)
    check_thinking_tools(cl)
    check_response_format(cl)
    check_errors(cl, max_body)
    check_concurrency(cl)
    check_disconnect(cl)
    check_sigterm_drains(cl, pid)


def auth_checks(base, key):
    anon, wrong, good = Client(base), Client(base, key + "x"), Client(base, key)
    expect_error(anon, 401, "no API key", "GET", "/v1/models")
    expect_error(wrong, 401, "wrong API key", "POST", "/v1/chat/completions", chat_body(max_tokens=2))
    st, d = good.json("GET", "/v1/models")
    check(st == 200, "right API key -> 200", f"{st} {d}")
    st, d = good.json("POST", "/v1/chat/completions", chat_body(max_tokens=2))
    check(st == 200 and d["usage"]["completion_tokens"] == 2, "chat with the API key", f"{st} {d}")
    st, d = anon.json("GET", "/health")
    check(st == 200, "/health needs no key", st)
    check_queue_full(good)


if __name__ == "__main__":
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "main":
        main_checks(base, int(sys.argv[3]), int(sys.argv[4]))
    else:
        auth_checks(base, sys.argv[3])
    print(f"{fails} failed", flush=True)
    sys.exit(1 if fails else 0)
