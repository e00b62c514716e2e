"""A seeded fuzz / garbage run against a running dsinfer-serve (standard
library only: raw sockets, and http.client through tests/serve_client.py).

usage: serve_fuzz.py BASE_URL [--seed S] [--count N] [--workers W]
                     [--max-body BYTES] [--pid PID] [--api-key KEY]
                     [--timeout SECONDS] [--only INDEX] [--kinds K1,K2]

Request i of a run is drawn from its own generator seeded with (S, i), so
`--seed S --only i` replays exactly the request a failure names.  Every
request kind asserts on its answer:

  * dsinfer-serve's own answers: a status from the kind's allowed set; 4xx
    and 5xx carry application/json {"error": {"message", "type", "param",
    "code"}} (401 with WWW-Authenticate, 405 with Allow, 503 with
    Retry-After); 200 bodies are well-formed completions / SSE streams;
    503 (queue full) is allowed for every generation request, no other 5xx.
  * requests that are broken at the HTTP level are refused by libmicrohttpd
    before dsinfer-serve sees them: those kinds also accept its plain-HTML
    400 / 413 / 414 / 431 (505 for an unknown HTTP version) or a closed
    connection.
  * no answer may take longer than --timeout (a hang is a failure); after an
    abrupt disconnect the server must answer /health at once.

After the run: /health is ok, a chat completion and a streamed one succeed,
/metrics shows no request still in flight and no sequence or queue entry
left behind, and (with --pid) the process is alive and its open descriptors
are back to where they started.  Prints counts by kind and status and exits
1 on any violation, naming the seed and request index."""
import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict

sys.dont_write_bytecode = True         # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_client  # noqa: E402  (the helpers of the end-to-end checks)
from serve_client import Client, is_error_object  # noqa: E402

CHAT, COMPL = "/v1/chat/completions", "/v1/completions"
BUSY = {429, 503}                      # allowed for any generation request
MHD_REFUSALS = {400, 413, 414, 431}    # libmicrohttpd's own answers to broken HTTP


class Violation(Exception):
    pass


class Env:
    def __init__(self, args):
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port = u.hostname, u.port
        self.key, self.max_body, self.timeout = args.api_key, args.max_body, args.timeout
        self.client = Client(args.url, args.api_key)

    def auth(self):
        return b"Authorization: Bearer %s\r\n" % self.key.encode() if self.key else b""


# ---- raw HTTP ------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self):
        return f"{self.status} {self.body[:300]!r}"


class Reader:
    """Buffered reads from a socket, all bounded by one deadline."""

    def __init__(self, sock, deadline):
        self.s, self.buf, self.deadline, self.eof = sock, b"", deadline, False

    def fill(self):
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Violation("no answer within the timeout (hang)")
        self.s.settimeout(left)
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            raise Violation("no answer within the timeout (hang)")
        except (ConnectionResetError, BrokenPipeError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def line(self):
        while b"\r\n" not in self.buf:
            if not self.fill():
                raise Violation(f"connection closed inside a response header: {self.buf[:200]!r}")
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise Violation(f"connection closed inside a response body ({len(self.buf)} of {n} bytes)")
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def rest(self):
        while self.fill():
            pass
        d, self.buf = self.buf, b""
        return d


def read_response(rd, method="POST"):
    """The next response (1xx skipped), or None when the server closed the
    connection before sending anything."""
    while True:
        if not rd.buf and not rd.fill():
            return None
        st = rd.line().split(b" ", 2)
        if len(st) < 2 or not st[0].startswith(b"HTTP/1.") or not st[1].isdigit():
            raise Violation(f"not an HTTP status line: {st!r}")
        status, headers = int(st[1]), {}
        while True:
            h = rd.line()
            if not h:
                break
            k, _, v = h.partition(b":")
            headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        if 100 <= status < 200:
            continue
        if method == "HEAD" or status in (204, 304):
            return Resp(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(rd.line().split(b";")[0], 16)
                if size == 0:
                    while rd.line():
                        pass
                    return Resp(status, headers, body)
                body += rd.exact(size)
                rd.exact(2)
        if "content-length" in headers:
            return Resp(status, headers, rd.exact(int(headers["content-length"])))
        return Resp(status, headers, rd.rest())


def connect(env):
    return socket.create_connection((env.host, env.port), timeout=env.timeout)


def exchange(env, data, method="POST", n_resp=1, shut=False):
    """Sends raw bytes and reads up to n_resp responses (a list; None for a
    connection closed before an answer).  shut: half-close after sending, for
    junk after which the server may wait for more input: it must then see the
    end and answer or close at once.  (Not for requests that should be
    answered: libmicrohttpd takes the end of a client's input before the
    answer is ready for a client that went away, and the generation is
    cancelled.)"""
    s = connect(env)
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass                       # the server answered and closed early
        rd = Reader(s, time.monotonic() + env.timeout)
        out = []
        for _ in range(n_resp):
            r = read_response(rd, method)
            out.append(r)
            if r is None:
                break
        return out
    finally:
        s.close()


def request_bytes(env, method, path, body=b"", headers=None, ctype=b"application/json", cl=None):
    h = b"%s %s HTTP/1.1\r\nHost: fuzz\r\n" % (method.encode(), path.encode() if isinstance(path, str) else path)
    if ctype is not None:
        h += b"Content-Type: " + ctype + b"\r\n"
    h += env.auth()
    for k, v in (headers or {}).items():
        h += k.encode() + b": " + v.encode() + b"\r\n"
    if cl is not False and (body or method in ("POST", "PUT", "PATCH")):
        h += b"Content-Length: %s\r\n" % (str(len(body) if cl is None else cl).encode())
    return h + b"\r\n" + body


def post(env, body, path=CHAT, **kw):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return exchange(env, request_bytes(env, "POST", path, body, **kw))[0]


# ---- assertions ----------------------------------------------------------------

_ANY = object()


def check_app(r, allowed, param=_ANY, code=_ANY):
    """An answer of dsinfer-serve itself; returns the parsed body (None for an
    empty one)."""
    if r is None:
        raise Violation(f"connection closed without an answer (expected {sorted(allowed)})")
    if r.status not in allowed:
        raise Violation(f"status {r.status}, expected one of {sorted(allowed)}: {r.body[:400]!r}")
    if r.status < 400:
        return r.json()
    if not r.headers.get("content-type", "").startswith("application/json"):
        raise Violation(f"{r.status} without a JSON content type: {r.headers} {r.body[:200]!r}")
    need = {401: "www-authenticate", 405: "allow", 503: "retry-after"}.get(r.status)
    if need and need not in r.headers:
        raise Violation(f"{r.status} without the {need} header")
    if not r.body:                     # HEAD
        return None
    d = r.json()
    if not is_error_object(d) or not isinstance(d["error"].get("type"), str):
        raise Violation(f"{r.status} body is not an OpenAI error object: {r.body[:300]!r}")
    if r.status == 400 and param is not _ANY and d["error"]["param"] != param:
        raise Violation(f"400 names param {d['error']['param']!r}, expected {param!r}: {d}")
    if r.status == 400 and code is not _ANY and d["error"]["code"] != code:
        raise Violation(f"400 has code {d['error']['code']!r}, expected {code!r}: {d}")
    return d


def check_http_refusal(r, allowed_app, extra_mhd=()):
    """Broken HTTP: dsinfer-serve's own answer from allowed_app, or
    libmicrohttpd's refusal, or a closed connection."""
    if r is None:
        return
    if r.headers.get("content-type", "").startswith("application/json") or r.status not in MHD_REFUSALS | set(extra_mhd):
        check_app(r, allowed_app)


def check_usage(d, max_tokens):
    u = d.get("usage") or {}
    if not (isinstance(u.get("prompt_tokens"), int) and u["prompt_tokens"] > 0
            and isinstance(u.get("completion_tokens"), int) and 0 <= u["completion_tokens"] <= max_tokens
            and u.get("total_tokens") == u["prompt_tokens"] + u["completion_tokens"]):
        raise Violation(f"bad usage for max_tokens {max_tokens}: {u}")


def check_chat_result(d, max_tokens):
    try:
        ch = d["choices"][0]
        msg = ch["message"]
        ok = (d["object"] == "chat.completion" and len(d["choices"]) == 1 and msg["role"] == "assistant"
              and (isinstance(msg["content"], str) or (msg["content"] is None and msg.get("tool_calls")))
              and ch["finish_reason"] in ("stop", "length", "tool_calls") and isinstance(d["id"], str))
    except (KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise Violation(f"malformed chat.completion: {str(d)[:400]}")
    check_usage(d, max_tokens)


def check_completion_result(d, max_tokens):
    try:
        ch = d["choices"][0]
        ok = (d["object"] == "text_completion" and isinstance(ch["text"], str)
              and ch["finish_reason"] in ("stop", "length"))
    except (KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise Violation(f"malformed text_completion: {str(d)[:400]}")
    check_usage(d, max_tokens)


def check_result(r, path, max_tokens, stream=False):
    """A valid generation request: 200 with a well-formed body (or busy)."""
    d = check_app(r, {200} | BUSY)
    if r.status != 200:
        return
    if stream:
        check_sse(r.body, path)
    elif path == CHAT:
        check_chat_result(d, max_tokens)
    else:
        check_completion_result(d, max_tokens)


def check_sse(body, path):
    if not body.endswith(b"data: [DONE]\n\n"):
        raise Violation(f"stream does not end with [DONE]: {body[-200:]!r}")
    events = [e for e in body.split(b"\n\n") if e]
    obj = "chat.completion.chunk" if path == CHAT else "text_completion"
    for e in events[:-1]:
        if not e.startswith(b"data: "):
            raise Violation(f"not an SSE data event: {e[:200]!r}")
        try:
            c = json.loads(e[6:])
        except ValueError:
            raise Violation(f"SSE event is not JSON: {e[:200]!r}")
        if c.get("object") != obj:
            raise Violation(f"SSE chunk of the wrong object: {e[:200]!r}")


def check_alive(env):
    """After an abrupt disconnect: the server answers /health at once."""
    r = exchange(env, request_bytes(env, "GET", "/health", ctype=None))[0]
    if r is None or r.status != 200:
        raise Violation(f"/health after a disconnect: {r}")


# ---- value generators ------------------------------------------------------------

WORDS = ["hello", "Hello, world", "What is 2+2?", "日本語のテキスト", "Ünïcödé ✓", "emoji 😀🎉",
         "tab\tnew\nline", "quote \" back \\ slash", "<｜end▁of▁sentence｜>", "<think>x</think>",
         "<｜User｜>hi<｜Assistant｜>", "｜DSML｜", "\u200b\ufeff", "\U0010fffd", "a" * 40, "", " ", "{}"]


def text(rng):
    return rng.choice(WORDS) if rng.random() < 0.7 else "".join(
        chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0xd7ff), rng.randint(0xe000, 0xfffd),
                        rng.randint(0x10000, 0x10ffff)])) for _ in range(rng.randint(0, 12)))


def scalar(rng, t=None):
    t = t or rng.choice(["str", "int", "float", "bool", "null"])
    if t == "str":
        return rng.choice(["", "x", "true", "1", "null", "[]", text(rng)])
    if t == "int":
        return rng.choice([0, 1, -1, 7, 2 ** 31, -2 ** 31, 2 ** 63 - 1, -2 ** 63])
    if t == "float":
        return rng.choice([0.5, -0.5, 1.5, 1e-300, -1e300, 3.25, 1e20])
    if t == "bool":
        return rng.random() < 0.5
    return None


def value_of(rng, t, depth=0):
    if t == "arr":
        return [value_of(rng, rng.choice(TYPES[:5]), depth + 1) for _ in range(rng.randint(0, 3))]
    if t == "obj":
        return {text(rng)[:8] or "k": value_of(rng, rng.choice(TYPES[:5]), depth + 1) for _ in range(rng.randint(0, 3))}
    return scalar(rng, t)


TYPES = ["str", "int", "float", "bool", "null", "arr", "obj"]

# field -> (endpoints, accepted JSON types besides null, the param a 400 names, where it goes)
FIELDS = {
    "model": ("both", {"str"}, "model", None),
    "messages": ("chat", {"arr"}, "messages", None),
    "prompt": ("compl", {"str", "arr"}, "prompt", None),
    "max_tokens": ("both", {"int"}, "max_tokens", None),
    "max_completion_tokens": ("both", {"int"}, "max_completion_tokens", None),
    "temperature": ("both", {"int", "float"}, "temperature", None),
    "top_p": ("both", {"int", "float"}, "top_p", None),
    "top_k": ("both", {"int"}, "top_k", None),
    "seed": ("both", {"int"}, "seed", None),
    "stop": ("both", {"str", "arr"}, "stop", None),
    "n": ("both", {"int"}, "n", None),
    "logprobs": ("chat", {"bool"}, "logprobs", None),
    "logprobs ": ("compl", {"int"}, "logprobs", None),        # the legacy integer form
    "top_logprobs": ("chat", {"int"}, "top_logprobs", None),
    "stream": ("both", {"bool"}, "stream", None),
    "stream_options": ("both", {"obj"}, "stream_options", None),
    "include_usage": ("both", {"bool"}, "include_usage", "stream_options"),
    "ignore_eos": ("both", {"bool"}, "ignore_eos", None),
    "tools": ("chat", {"arr"}, "tools", None),
    "tool_choice": ("chat", {"str", "obj"}, "tool_choice", None),
    "response_format": ("both", set(), "response_format", None),   # an object, checked for its type
    "chat_template_kwargs": ("chat", {"obj"}, "chat_template_kwargs", None),
    "thinking": ("chat", {"bool"}, "thinking", "chat_template_kwargs"),
    "thinking ": ("chat", {"bool", "obj"}, "thinking", None),
}


def base_body(rng, path, max_tokens=None):
    mt = max_tokens or rng.randint(1, 4)
    if path == CHAT:
        b = {"messages": [{"role": "user", "content": text(rng)}]}
    else:
        b = {"prompt": text(rng) if rng.random() < 0.7 else [rng.randint(0, 1000) for _ in range(rng.randint(1, 6))]}
    b["max_tokens"] = mt
    if rng.random() < 0.5:
        b["model"] = "tiny"
    if rng.random() < 0.5:
        b["temperature"] = rng.choice([0, 0.7, 1.0])
    if rng.random() < 0.2:
        b["seed"] = rng.randint(-2 ** 63, 2 ** 63 - 1)
    return b


def raw_json(obj, extra):
    """obj as JSON text with some raw members added (text that json.dumps
    cannot make: NaN, 1e309, -0, bad escapes, broken UTF-8)."""
    s = json.dumps(obj).encode()
    for k, v in extra:
        s = s[:-1] + b', "' + k.encode() + b'": ' + v + b"}"
    return s


# ---- request kinds: each sends, and raises Violation on a wrong answer -------------

def k_valid_chat(env, rng):
    b = base_body(rng, CHAT)
    extra = rng.random()
    if extra < 0.15:
        b["stop"] = [text(rng) or "x" for _ in range(rng.randint(1, 4))]
    elif extra < 0.3:
        b.update(logprobs=True, top_logprobs=rng.randint(0, 20))
    elif extra < 0.4:
        b["messages"] = [{"role": r, "content": text(rng)} for r in
                         rng.sample(["system", "user", "assistant", "developer"], rng.randint(1, 4))] + b["messages"]
    elif extra < 0.5:
        b["response_format"] = {"type": "json_object"}
    elif extra < 0.55:
        b["chat_template_kwargs"] = {"thinking": True}
    r = post(env, b)
    check_result(r, CHAT, b["max_tokens"])
    return r


def k_valid_stream(env, rng):
    path = rng.choice([CHAT, COMPL])
    b = base_body(rng, path)
    b["stream"] = True
    if rng.random() < 0.4:
        b["stream_options"] = {"include_usage": True}
    if rng.random() < 0.3:
        b["logprobs"] = True if path == CHAT else 2
    r = post(env, b, path)
    check_result(r, path, b["max_tokens"], stream=True)
    return r


def k_valid_completion(env, rng):
    b = base_body(rng, COMPL)
    if rng.random() < 0.3:
        b["logprobs"] = rng.randint(0, 5)
    if rng.random() < 0.2:
        b["prompt"] = [b["prompt"]] if isinstance(b["prompt"], str) else [b["prompt"]]
    r = post(env, b, COMPL)
    check_result(r, COMPL, b["max_tokens"])
    return r


def k_valid_http_client(env, rng):
    """The same through http.client (keep-alive framing, the library's headers)."""
    path = rng.choice([CHAT, COMPL])
    b = base_body(rng, path)
    st, hdrs, raw = env.client.request("POST", path, b)
    r = Resp(st, {k.lower(): v for k, v in hdrs.items()}, raw)
    check_result(r, path, b["max_tokens"])
    return r


def k_get_endpoints(env, rng):
    path = rng.choice(["/health", "/v1/health", "/v1/models", "/metrics", "/health?x=1", "/v1/models?a=%ff"])
    method = rng.choice(["GET", "GET", "HEAD"])
    r = exchange(env, request_bytes(env, method, path, ctype=None), method)[0]
    d = check_app(r, {200})
    if method == "GET" and path.startswith("/v1/models") and not (isinstance(d, dict) and d.get("object") == "list"):
        raise Violation(f"/v1/models: {r}")
    return r


def k_malformed_json(env, rng):
    good = json.dumps(base_body(rng, CHAT)).encode()
    m = rng.randint(0, 12)
    if m == 0:
        body = good[:rng.randint(0, len(good) - 1)]                     # truncated
    elif m == 1:
        body = good + rng.choice([b"x", b"}", b"{}", b",", b"\x00", b" []", b"\n\n{\"a\":1}"])
    elif m == 2:
        n = rng.choice([3000, 20000, 100000])
        body = b"[" * n if rng.random() < 0.5 else b"[" * n + b"]" * n
    elif m == 3:
        n = rng.randint(2100, 6000)
        body = good[:-1] + b', "metadata": ' + b'{"a":' * n + b"1" + b"}" * n + b"}"
    elif m == 4:
        body = good[:-1] + b', "temperature": ' + rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"]) + b"}"
    elif m == 5:
        body = rng.choice([b"{'messages': []}", b"{messages: []}", b'{"messages": [],}', b'{"a": 1 /* c */}',
                           b'{"a" 1}', b'{"a": tru}', b'{"a": 01}', b'{"a": .5}', b'{"a": 1.}', b'{"a": +1}',
                           b'{"a": "x\ny"}', b"\xef\xbb\xbf" + good, b'{"a": 1}}', b"{{}}"])
    elif m == 6:
        body = rng.choice([b"", b" ", b"null", b"[]", b"123", b'"str"', b"true", b"[{}]", b"{}"])
        if body == b"{}":
            check_app(post(env, body), {400} | BUSY, "messages")
            return None
    elif m == 7:
        body = good[:-1] + b', "max_tokens": 1e309}'
    elif m == 8:
        body = good[:-1] + b', "seed": 18446744073709551616}'
    elif m == 9:
        body = good[:-1] + b', "max_tokens": 1' + b"0" * rng.randint(20, 50000) + b"}"
    elif m == 10:   # duplicate keys: jansson keeps the last one, so this is valid
        b = json.loads(good)
        body = json.dumps(b).encode()[:-1] + b', "max_tokens": 999999, "max_tokens": %d}' % b["max_tokens"]
        check_result(post(env, body), CHAT, b["max_tokens"])
        return None
    elif m == 11:
        body = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 300)))
    else:
        body = b"{" + b'"k":1,' * rng.randint(1, 20000) + b'"messages": [}'
    path = rng.choice([CHAT, COMPL])
    r = post(env, body, path)
    if len(body) > env.max_body:
        check_app(r, {413} | BUSY)
    else:
        check_app(r, {400} | BUSY)
    return r


def wrong_value(rng, accepted):
    t = rng.choice([t for t in TYPES if t not in accepted and t != "null"])
    if t == "float" and "int" in accepted:
        return rng.choice([1.5, 2.0, -0.5, 1e10])          # a real where an integer is needed
    return value_of(rng, t)


def k_wrong_type(env, rng):
    name = rng.choice(sorted(FIELDS))
    where, accepted, param, parent = FIELDS[name]
    path = {"chat": CHAT, "compl": COMPL, "both": rng.choice([CHAT, COMPL])}[where]
    b = base_body(rng, path)
    key = name.strip()
    v = wrong_value(rng, accepted)
    if name == "response_format" and isinstance(v, dict):
        v["type"] = rng.choice([5, None, "xml", "JSON_OBJECT", ["text"]])
    if parent:
        b[parent] = {key: v}
        if parent == "stream_options":
            b["stream"] = True
    else:
        b[key] = v
    if key == "top_logprobs":
        b["logprobs"] = True
    r = post(env, b, path)
    check_app(r, {400} | BUSY, param)
    return r


# (endpoint, field, raw JSON value, expected statuses, param of a 400)
RANGES = [
    (CHAT, "max_tokens", b"0", {400}, "max_tokens"), (CHAT, "max_tokens", b"-1", {400}, "max_tokens"),
    (CHAT, "max_tokens", b"-0", {400}, "max_tokens"), (COMPL, "max_tokens", b"1073741825", {400}, "max_tokens"),
    (CHAT, "max_tokens", b"2147483648", {400}, "max_tokens"), (CHAT, "max_tokens", b"9223372036854775807", {400}, "max_tokens"),
    (CHAT, "max_tokens", b"100000", {400}, "max_tokens"), (CHAT, "max_tokens", b"-9223372036854775808", {400}, "max_tokens"),
    (CHAT, "max_tokens", b"1e309", {400}, None), (CHAT, "max_tokens", b"-1e309", {400}, None),
    (CHAT, "max_completion_tokens", b"0", {400}, "max_completion_tokens"),
    (CHAT, "max_completion_tokens", b"3", {200}, None),
    (CHAT, "temperature", b"-0.001", {400}, "temperature"), (CHAT, "temperature", b"2.0000001", {400}, "temperature"),
    (CHAT, "temperature", b"1e308", {400}, "temperature"), (CHAT, "temperature", b"-1e308", {400}, "temperature"),
    (CHAT, "temperature", b"-0.0", {200}, None), (CHAT, "temperature", b"-0", {200}, None),
    (COMPL, "temperature", b"2", {200}, None), (CHAT, "temperature", b"5e-324", {200}, None),
    (CHAT, "temperature", b"1e-310", {200}, None),
    (CHAT, "top_p", b"-0.1", {400}, "top_p"), (CHAT, "top_p", b"1.0000001", {400}, "top_p"),
    (CHAT, "top_p", b"0", {200}, None), (CHAT, "top_p", b"1", {200}, None),
    (CHAT, "top_p", b"1e-300", {200}, None), (COMPL, "top_p", b"5e-324", {200}, None),   # below FLT_TRUE_MIN
    (CHAT, "top_p", b"1e-45", {200}, None), (CHAT, "top_p", b"-0.0", {200}, None),
    (CHAT, "top_k", b"-1", {400}, "top_k"), (CHAT, "top_k", b"16777217", {400}, "top_k"),
    (CHAT, "top_k", b"4611686018427387904", {400}, "top_k"), (CHAT, "top_k", b"0", {200}, None),
    (CHAT, "top_k", b"16777216", {200}, None), (CHAT, "top_k", b"1", {200}, None),
    (CHAT, "seed", b"-9223372036854775808", {200}, None), (CHAT, "seed", b"9223372036854775807", {200}, None),
    (CHAT, "seed", b"0", {200}, None), (CHAT, "seed", b"9223372036854775808", {400}, None),
    (CHAT, "seed", b"1.0", {400}, "seed"),
    (CHAT, "n", b"0", {400}, "n"), (CHAT, "n", b"2", {400}, "n"), (COMPL, "n", b"-1", {400}, "n"),
    (CHAT, "n", b"1099511627776", {400}, "n"), (CHAT, "n", b"1", {200}, None),
    (CHAT, "top_logprobs", b"21", {400}, "top_logprobs"), (CHAT, "top_logprobs", b"-1", {400}, "top_logprobs"),
    (COMPL, "logprobs", b"6", {400}, "logprobs"), (COMPL, "logprobs", b"-1", {400}, "logprobs"),
    (COMPL, "logprobs", b"5", {200}, None), (COMPL, "logprobs", b"0", {200}, None),
    (CHAT, "stop", b"[" + b",".join([b'"s"'] * 17) + b"]", {400}, "stop"),
    (CHAT, "stop", b"[" + b",".join([b'"s%d"' % i for i in range(16)]) + b"]", {200}, None),
    (CHAT, "stop", b'[""]', {400}, "stop"), (CHAT, "stop", b'""', {400}, "stop"),
    (CHAT, "stop", b'"' + b"z" * 20000 + b'"', {200}, None), (CHAT, "stop", b"[]", {200}, None),
    (COMPL, "prompt", b"[-1]", {400}, "prompt"), (COMPL, "prompt", b"[99999999]", {400}, "prompt"),
    (COMPL, "prompt", b"[1099511627776]", {400}, "prompt"), (COMPL, "prompt", b"[1, 2.5]", {400}, "prompt"),
    (COMPL, "prompt", b"[[]]", {400}, "prompt"), (COMPL, "prompt", b"[]", {400}, "prompt"),
    (COMPL, "prompt", b'["a", "b"]', {400}, "prompt"), (COMPL, "prompt", b'[""]', {200}, None),
    (COMPL, "prompt", b'""', {200}, None), (COMPL, "prompt", b"[0]", {200}, None),
    (CHAT, "messages", b"[]", {400}, "messages"), (CHAT, "messages", b"[{}]", {400}, "messages"),
    (CHAT, "messages", b'[{"role": "robot", "content": "x"}]', {400}, "messages"),
    (CHAT, "messages", b'[{"role": "user", "content": 5}]', {400}, "messages"),
    (CHAT, "messages", b'[{"role": "user", "content": [{"type": "image_url"}]}]', {400}, "messages"),
    (CHAT, "messages", b'[{"role": "user", "content": [{"type": "text", "text": 1}]}]', {400}, "messages"),
    (CHAT, "messages", b'[{"role": "user", "content": null}]', {200}, None),
    (CHAT, "messages", b'[{"role": "user", "content": []}]', {200}, None),
    (CHAT, "messages", b'[{"role": "assistant", "content": null, "tool_calls": [{"function": 5}]}]', {400}, "messages"),
    (CHAT, "messages", b'[{"role": "assistant", "content": "x", "tool_calls": "junk", "prefix": 1}]', {200, 400}, _ANY),
    (CHAT, "messages", b'[{"role": "tool", "content": "x", "tool_call_id": [1]}]', {200, 400}, _ANY),
    (CHAT, "messages", b'[{"role": "user", "content": "x", "name": {"a": 1}, "reasoning_content": 7}]', {200, 400}, _ANY),
    (CHAT, "thinking", b'{"type": "maybe"}', {400}, "thinking"), (CHAT, "thinking", b'{}', {400}, "thinking"),
    (CHAT, "thinking", b'{"type": "disabled"}', {200}, None),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {"schema": {"enum": []}}}', {400}, "response_format"),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {"schema": false}}', {400}, "response_format"),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {"schema": true}}', {200}, None),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {}}', {400}, "response_format"),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {"schema": {"type": "string", "minLength": 9, "maxLength": 2}}}', {400}, "response_format"),
    (CHAT, "response_format", b'{"type": "json_schema", "json_schema": {"schema": {"type": "array", "items": ' * 30 + b"{}" + b"}}}" * 30, {400}, "response_format"),
    (COMPL, "response_format", b'{"type": "json_schema", "json_schema": {"schema": {"const": null}}}', {200}, None),
    (CHAT, "response_format", b'{"type": "text"}', {200}, None),
    (CHAT, "tool_choice", b'{"type": "function", "function": {"name": 5}}', {200, 400}, _ANY),
    (CHAT, "tool_choice", b'"none"', {200}, None),
]


def k_out_of_range(env, rng):
    path, field, raw, expect, param = rng.choice(RANGES)
    b = base_body(rng, path)
    b.pop(field, None)
    if field in ("max_tokens", "max_completion_tokens"):
        b.pop("max_tokens", None)
    if field in ("top_logprobs", "messages", "prompt"):
        b.pop(field, None)
        if field == "top_logprobs":
            b["logprobs"] = True
    body = raw_json(b, [(field, raw)])
    r = post(env, body, path)
    d = check_app(r, expect | BUSY, param if 400 in expect else _ANY)
    if r.status == 200:
        mt = b.get("max_tokens", 3 if field == "max_completion_tokens" else None)
        if mt:
            (check_chat_result if path == CHAT else check_completion_result)(d, mt)
    return r


def k_huge(env, rng):
    m = rng.randint(0, 6)
    mb = env.max_body
    if m == 0:       # over the limit
        body = json.dumps({"messages": [{"role": "user", "content": "x" * (mb + rng.randint(1, 2 * mb))}]}).encode()
        r = post(env, body)
        check_app(r, {413} | BUSY)
    elif m == 1:     # over the limit, refused before the body with Expect: 100-continue
        n = mb + rng.randint(1, 1 << 30)
        s = connect(env)
        try:
            s.sendall(request_bytes(env, "POST", CHAT, headers={"Expect": "100-continue"}, cl=n))
            r = read_response(Reader(s, time.monotonic() + env.timeout))
        finally:
            s.close()
        check_app(r, {413} | BUSY)
    elif m == 2:     # big, under the limit: tokenized, then too long for the context
        body = json.dumps({"messages": [{"role": "user", "content": "word " * rng.randint(1000, (mb - 200) // 5)}],
                           "max_tokens": 1}).encode()
        r = post(env, body)
        check_app(r, {400} | BUSY, "max_tokens", "context_length_exceeded")
    elif m == 3:     # many messages
        n = rng.randint(500, max(501, (mb - 100) // 40))
        body = json.dumps({"messages": [{"role": "user", "content": "x"}] * n, "max_tokens": 1}).encode()
        r = post(env, body)
        check_app(r, ({413} if len(body) > mb else {400}) | BUSY)
    elif m == 4:     # many unknown members are ignored
        b = base_body(rng, CHAT)
        for i in range(rng.randint(100, 3000)):
            b["x%d" % i] = i
        r = post(env, b)
        check_result(r, CHAT, b["max_tokens"])
    elif m == 5:     # one long key, long model name
        b = base_body(rng, CHAT)
        b["k" * rng.randint(1000, min(30000, mb // 4))] = 1
        b["model"] = "m" * rng.randint(1000, min(30000, mb // 4))
        r = post(env, b)
        check_result(r, CHAT, b["max_tokens"])
    else:            # a huge stop list
        b = base_body(rng, CHAT)
        b["stop"] = ["s"] * rng.randint(17, 5000)
        r = post(env, b)
        check_app(r, {400} | BUSY, "stop")
    return r


BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
            b"\xe2\x82", b"\x80", b"\xbf", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xf0\x9f\x98", b"\xc1\xbf"]


def k_broken_utf8(env, rng):
    bad = rng.choice(BAD_UTF8) if rng.random() < 0.8 else bytes(rng.randint(0x80, 0xff) for _ in range(rng.randint(1, 8)))
    try:
        bad.decode("utf-8")
        bad = b"\xff" + bad               # random high bytes that happen to be UTF-8
    except UnicodeDecodeError:
        pass
    good = json.dumps(base_body(rng, CHAT), ensure_ascii=False).encode()
    m = rng.randint(0, 3)
    if m == 0:       # inside the content string
        i = good.index(b'"content": "') + 12
        body = good[:i] + bad + good[i:]
    elif m == 1:     # in a key
        body = good[:-1] + b', "k' + bad + b'": 1}'
    elif m == 2:     # between tokens
        body = good[:1] + bad + good[1:]
    else:            # cut inside a multi-byte character at the end of a string
        body = good[:-1] + b', "stop": "\xe6\x97"}'
    r = post(env, body, rng.choice([CHAT, COMPL]))
    check_app(r, {400} | BUSY, None, "invalid_utf8")
    return r


def k_bad_escape(env, rng):
    esc = rng.choice([b"\\ud800", b"\\udfff", b"\\ud800\\ud800", b"\\ud800x", b"\\udc00\\ud800", b"\\x41", b"\\u12",
                      b"\\uZZZZ", b"\\u0000", b"\\a", b"\\'", b"\\", b"\\u00", b"\\U0001F600", b"\\u12G4"])
    b = base_body(rng, CHAT)
    good = json.dumps(b).encode()
    # at the end of the content string, so that no following character can
    # complete the escape
    i = good.index(b'"content": ') + 11 + len(json.dumps(b["messages"][0]["content"])) - 1
    r = post(env, good[:i] + esc + good[i:])
    check_app(r, {400} | BUSY, None)
    return r


def k_good_escape(env, rng):
    """Escapes that are valid JSON: a surrogate pair, control characters."""
    esc = rng.choice([b"\\ud83d\\ude00", b"\\u0001\\u001f", b"\\/\\b\\f\\n\\r\\t", b"\\uFFFF\\uFFFE", b"\\udbff\\udfff"])
    b = base_body(rng, CHAT)
    good = json.dumps(b).encode()
    i = good.index(b'"content": "') + 12
    r = post(env, good[:i] + esc + good[i:])
    check_result(r, CHAT, b["max_tokens"])
    return r


def k_bad_method(env, rng):
    if rng.random() < 0.5:
        path, method = rng.choice([CHAT, COMPL]), rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "get"])
    else:
        path, method = rng.choice(["/health", "/v1/models", "/metrics"]), rng.choice(["POST", "PUT", "DELETE", "PATCH", "TRACE", "post"])
    body = json.dumps(base_body(rng, CHAT)).encode() if rng.random() < 0.5 and method != "HEAD" else b""
    r = exchange(env, request_bytes(env, method, path, body), method)[0]
    check_app(r, {405})
    return r


def k_bad_path(env, rng):
    path = rng.choice([b"/", b"/v1", b"/v1/", b"/v1/chat", b"/v1/chat/completions/", b"//v1/models", b"/V1/MODELS",
                       b"/v2/chat/completions", b"/v1/embeddings", b"/../../etc/passwd", b"/%2e%2e/%2e%2e",
                       b"/x%00y", b"/%ff%fe", b"/\xc3\xa9t\xc3\xa9", b"/\xff\xfe", b"/x" + b"a" * rng.randint(10, 4000),
                       b"/health/", b"/metrics.json", b"*"])
    method = rng.choice(["GET", "POST"])
    body = json.dumps(base_body(rng, CHAT)).encode() if method == "POST" else b""
    r = exchange(env, request_bytes(env, method, path, body), method)[0]
    if path == b"*":
        check_http_refusal(r, {404})
    else:
        check_app(r, {404})
    return r


def k_content_type(env, rng):
    """dsinfer-serve reads the body as JSON whatever Content-Type says."""
    ct = rng.choice([b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                     b"application/json; charset=latin-1", b"", b"\xff\xfe", None, b"a" * 3000])
    path = rng.choice([CHAT, COMPL])
    b = base_body(rng, path)
    r = exchange(env, request_bytes(env, "POST", path, json.dumps(b).encode(), ctype=ct))[0]
    check_result(r, path, b["max_tokens"])
    return r


def k_content_length(env, rng):
    body = json.dumps(base_body(rng, CHAT)).encode()
    m = rng.randint(0, 5)
    if m == 0:       # shorter than the body: a cut-off JSON, then junk as the next request
        n = rng.randint(0, len(body) - 1)
        rs = exchange(env, request_bytes(env, "POST", CHAT, body, cl=n), n_resp=2, shut=True)
        check_app(rs[0], {400} | BUSY)
        if len(rs) > 1:
            check_http_refusal(rs[1], set())
        return rs[0]
    if m == 1:       # longer than the body, then the client gives up
        s = connect(env)
        s.sendall(request_bytes(env, "POST", CHAT, body, cl=len(body) + rng.randint(1, 1000)))
        time.sleep(0.05)
        s.close()
        check_alive(env)
        return None
    if m == 2:       # not a number
        v = rng.choice(["-1", "-0", "abc", "1e3", "0x10", " ", "1 2", "+5", "18446744073709551616",
                        "99999999999999999999999999", "%d, %d" % (len(body), len(body) + 1)])
        r = exchange(env, request_bytes(env, "POST", CHAT, body, cl=v), shut=True)[0]
        check_http_refusal(r, {400, 413} | BUSY)
        return r
    if m == 3:       # two Content-Length headers
        raw = request_bytes(env, "POST", CHAT, body)
        raw = raw.replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n" % rng.randint(0, len(body) + 5), 1)
        r = exchange(env, raw, shut=True)[0]
        check_http_refusal(r, {200, 400} | BUSY)
        return r
    if m == 4:       # no Content-Length on a POST with a body: no body at all
        r = exchange(env, request_bytes(env, "POST", CHAT, body, cl=False), n_resp=2, shut=True)[0]
        check_http_refusal(r, {400} | BUSY)
        return r
    # huge, over --max-body, then gone
    s = connect(env)
    s.sendall(request_bytes(env, "POST", CHAT, body, cl=env.max_body + rng.randint(1, 10 ** 12)))
    s.close()
    check_alive(env)
    return None


def chunked(body, rng, ext=False):
    out, i = b"", 0
    while i < len(body):
        n = min(rng.randint(1, max(1, len(body) // 3)), len(body) - i)
        out += b"%x%s\r\n" % (n, b";x=y" if ext else b"") + body[i:i + n] + b"\r\n"
        i += n
    return out + b"0\r\n\r\n"


def k_chunked(env, rng):
    path = rng.choice([CHAT, COMPL])
    b = base_body(rng, path)
    body = json.dumps(b).encode()
    m = rng.randint(0, 3)
    head = lambda: request_bytes(env, "POST", path, headers={"Transfer-Encoding": "chunked"}, cl=False)  # noqa: E731
    if m == 0:       # valid
        r = exchange(env, head() + chunked(body, rng, rng.random() < 0.3))[0]
        check_result(r, path, b["max_tokens"])
    elif m == 1:     # over --max-body in many chunks
        big = json.dumps({"messages": [{"role": "user", "content": "y" * (env.max_body + 10)}]}).encode()
        r = exchange(env, head() + chunked(big, rng))[0]
        check_app(r, {413} | BUSY)
    elif m == 2:     # malformed framing
        bad = rng.choice([b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{}\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nab\r\n",
                          b"-1\r\nx\r\n0\r\n\r\n", b"3\r\n{}", b"\r\n\r\n", b"0\r\nTrailer: x" * 500])
        r = exchange(env, head() + bad, shut=True)[0]
        check_http_refusal(r, {400, 413} | BUSY)
    else:            # chunked and a Content-Length together
        raw = request_bytes(env, "POST", path, headers={"Transfer-Encoding": "chunked"}, cl=len(body))
        r = exchange(env, raw + chunked(body, rng), shut=True)[0]
        check_http_refusal(r, {200, 400} | BUSY)
    return r


def k_pipelined(env, rng):
    """Several requests in one write, answered in order; junk may follow."""
    reqs, checks = b"", []
    for _ in range(rng.randint(2, 5)):
        c = rng.randint(0, 2)
        if c == 0:
            reqs += request_bytes(env, "GET", "/health", ctype=None)
            checks.append(lambda r: check_app(r, {200}))
        elif c == 1:
            b = base_body(rng, CHAT, rng.randint(1, 2))
            reqs += request_bytes(env, "POST", CHAT, json.dumps(b).encode())
            checks.append(lambda r, mt=b["max_tokens"]: check_result(r, CHAT, mt))
        else:
            reqs += request_bytes(env, "POST", COMPL, b'{"prompt": ')
            checks.append(lambda r: check_app(r, {400} | BUSY))
    junk = rng.choice([b"", b"", b"GARBAGE\r\n\r\n", b"\x00\xff\xfe\r\n\r\n", b"GET /health HTTP/1.1\r\nHo"])
    rs = exchange(env, reqs + junk, "POST", n_resp=len(checks))   # what the junk gets is not read
    for i, chk in enumerate(checks):
        if i >= len(rs) or rs[i] is None:
            raise Violation(f"pipelined request {i} of {len(checks)} got no answer")
        chk(rs[i])
    return rs[0]


def k_bad_request_line(env, rng):
    line = rng.choice([b"GET /health HTTP/2.0", b"GET /health HTTP/1.2", b"GET /health HTTPS/1.1", b"GET /health HTTP/11",
                       b"GET /health", b"GET  /health  HTTP/1.1", b"GET\t/health\tHTTP/1.1", b"/health HTTP/1.1",
                       b"GET /health HTTP/1.1 extra", b"\x00\xff\xfe garbage", b"GET /he\x00alth HTTP/1.1",
                       bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 200))), b"", b" "])
    r = exchange(env, line + b"\r\nHost: x\r\n\r\n", "GET", shut=True)[0]
    check_http_refusal(r, {200, 400, 404, 405}, {505})
    return r


def k_headers(env, rng):
    m = rng.randint(0, 3)
    if m == 0:       # a flood past the connection's memory
        h = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * rng.randint(10, 200)) for i in range(rng.randint(500, 3000)))
    elif m == 1:     # one huge header
        h = b"X-Big: " + b"b" * rng.randint(70000, 300000) + b"\r\n"
    elif m == 2:     # many small headers under the limit
        h = b"".join(b"X-S%d: v\r\n" % i for i in range(rng.randint(1, 100)))
    else:            # odd header syntax
        h = rng.choice([b"NoColon\r\n", b": empty-name\r\n", b"X-A : spaced\r\n", b"X-Fold: a\r\n  folded\r\n",
                        b"X-Bin: \xff\xfe\x00\r\n", b"Authorization: Bearer \xff\r\n"])
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\n" + h + b"\r\n"
    r = exchange(env, raw, "GET", shut=True)[0]
    if m == 2:
        check_app(r, {200})
    else:
        check_http_refusal(r, {200, 400, 401})
    return r


def k_disconnect(env, rng):
    """An abrupt disconnect at a random point; then the server must answer."""
    path = rng.choice([CHAT, COMPL])
    b = base_body(rng, path, rng.randint(1, 16))
    m = rng.randint(0, 5)
    if m == 4:
        b["stream"] = True
    full = request_bytes(env, "POST", path, json.dumps(b).encode())
    s = connect(env)
    if rng.random() < 0.3:       # RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        hdr_end = full.index(b"\r\n\r\n") + 4
        if m == 0:               # mid-headers
            s.sendall(full[:rng.randint(1, hdr_end - 1)])
        elif m == 1:             # mid-body
            s.sendall(full[:rng.randint(hdr_end, len(full) - 1)])
        elif m == 2:             # the whole request, not waiting for the answer
            s.sendall(full)
        elif m == 3:             # nothing at all
            pass
        elif m == 4:             # mid-stream: read the first events, then go
            s.sendall(full)
            rd = Reader(s, time.monotonic() + env.timeout)
            want = rng.randint(0, 3)
            while rd.buf.count(b"data: ") < want and rd.fill():
                pass
        else:                    # the whole request, gone after a moment
            s.sendall(full)
            time.sleep(rng.random() * 0.05)
    finally:
        s.close()
    check_alive(env)
    return None


SCHEMA_KEYS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "minLength",
               "maxLength", "minItems", "maxItems", "additionalProperties", "pattern", "format", "$ref", "not"]


def rand_schema(rng, depth=0):
    """Schema-like objects, often odd: the compiler must say 400 or accept."""
    if depth > 3 or rng.random() < 0.2:
        return value_of(rng, rng.choice(TYPES))
    sc = {}
    for _ in range(rng.randint(0, 4)):
        k = rng.choice(SCHEMA_KEYS)
        if k == "type":
            v = rng.choice(["string", "number", "integer", "boolean", "null", "object", "array", "bogus",
                            ["string", "null"], [], 5])
        elif k in ("properties",):
            v = {text(rng)[:6] or "p": rand_schema(rng, depth + 1) for _ in range(rng.randint(0, 3))}
        elif k in ("items", "additionalProperties", "not"):
            v = rand_schema(rng, depth + 1)
        elif k in ("anyOf", "oneOf"):
            v = [rand_schema(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        elif k in ("enum",):
            v = [value_of(rng, rng.choice(TYPES)) for _ in range(rng.randint(0, 4))]
        elif k == "required":
            v = rng.choice([[], ["a"], "a", [1]])
        else:
            v = value_of(rng, rng.choice(["int", "int", "str", "float", "null"]))
        sc[k] = v
    return sc


def mutate(rng, v, depth=0):
    """v with one node somewhere replaced by a random value."""
    if depth > 6 or not isinstance(v, (dict, list)) or not v or rng.random() < 0.3:
        return value_of(rng, rng.choice(TYPES))
    v = dict(v) if isinstance(v, dict) else list(v)
    k = rng.choice(list(v)) if isinstance(v, dict) else rng.randrange(len(v))
    v[k] = mutate(rng, v[k], depth + 1)
    return v


def k_structure(env, rng):
    """Whole requests with random shapes: odd response_format schemas, odd
    messages (tool calls, names, content parts), one node of a rich valid
    request replaced.  Any 200 or 400 is fine, as long as it is well formed."""
    path = CHAT if rng.random() < 0.8 else COMPL
    b = base_body(rng, path)
    m = rng.randint(0, 2)
    if m == 0:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": rand_schema(rng)}}
    else:
        if path == CHAT:
            b["messages"] = [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": text(rng)}]},
                {"role": "assistant", "content": None, "reasoning_content": "r",
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": text(rng)}]
            b["tool_choice"] = "none"
            b["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
            b["chat_template_kwargs"] = {"thinking": rng.random() < 0.5}
        b["stop"] = ["\n\n"]
        mt = b["max_tokens"]
        b = mutate(rng, b)
        if not isinstance(b, dict):
            b = {"x": b}
        elif b.get("max_tokens") is None:
            b["max_tokens"] = mt       # not a generation to the end of the context (slow)
    mt = b.get("max_tokens") if isinstance(b.get("max_tokens"), int) and b["max_tokens"] >= 1 else 1 << 30
    r = post(env, b, path)
    d = check_app(r, {200, 400} | BUSY)
    if r.status == 200:
        if b.get("stream") is True:
            check_sse(r.body, path)
        else:
            (check_chat_result if path == CHAT else check_completion_result)(d, mt)
    return r


def k_bad_key(env, rng):
    """Only with --api-key: wrong or missing keys get 401, /health needs none."""
    if not env.key:
        return k_get_endpoints(env, rng)
    auth = rng.choice([None, "Bearer", "Bearer ", "Bearer " + env.key + "x", "Bearer " + env.key[:-1],
                       "Basic " + env.key, "Bearer  " + env.key + " ", env.key, "Bearer " + "k" * 5000])
    path, method = rng.choice([(CHAT, "POST"), (COMPL, "POST"), ("/v1/models", "GET"), ("/metrics", "GET"), ("/nothing", "GET")])
    body = json.dumps(base_body(rng, CHAT)).encode() if method == "POST" else b""
    raw = (b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % (method.encode(), path.encode())
           + (b"Authorization: " + auth.encode() + b"\r\n" if auth else b"")
           + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)
    r = exchange(env, raw, method)[0]
    check_app(r, {401})
    return r


KINDS = {   # name: (function, weight)
    "valid_chat": (k_valid_chat, 8), "valid_stream": (k_valid_stream, 4), "valid_completion": (k_valid_completion, 4),
    "valid_http_client": (k_valid_http_client, 2), "get_endpoints": (k_get_endpoints, 3),
    "malformed_json": (k_malformed_json, 10), "wrong_type": (k_wrong_type, 12), "out_of_range": (k_out_of_range, 12),
    "huge": (k_huge, 3), "broken_utf8": (k_broken_utf8, 5), "bad_escape": (k_bad_escape, 4),
    "good_escape": (k_good_escape, 2), "bad_method": (k_bad_method, 3), "bad_path": (k_bad_path, 3),
    "content_type": (k_content_type, 2), "content_length": (k_content_length, 4), "chunked": (k_chunked, 4),
    "pipelined": (k_pipelined, 3), "bad_request_line": (k_bad_request_line, 3), "headers": (k_headers, 3),
    "disconnect": (k_disconnect, 6), "bad_key": (k_bad_key, 2), "structure": (k_structure, 6),
}


# ---- the server process ----------------------------------------------------------

def proc_stat(pid):
    """(RSS in kB, open descriptors) of the server, or (None, None)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), None)
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None


def wait_fds(pid, limit, seconds):
    deadline = time.monotonic() + seconds
    while True:
        n = proc_stat(pid)[1]
        if n is None or n <= limit or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def metrics(env):
    st, _, raw = env.client.request("GET", "/metrics")
    vals = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            vals[name] = float(value)
    return st, vals


def regressions(env, pid, report):
    """Fixed bugs, checked before the random run."""
    b = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "top_p": 1e-300}
    try:
        check_result(post(env, b), CHAT, 2)
    except Violation as e:
        report("regression", -1, f"top_p 1e-300 (rounds to 0.0f): {e}")
    # a non-streamed request whose client left at once: its generation is
    # cancelled (the suspended connection was not watched, so the sequence
    # ran to max_tokens before the server noticed)
    try:
        m0 = metrics(env)[1]
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                           "ignore_eos": True}).encode()
        s = connect(env)
        s.sendall(request_bytes(env, "POST", CHAT, body))
        s.close()
        key = "dsinfer_engine_requests_finished_total"
        deadline, m = time.monotonic() + 60, m0
        while time.monotonic() < deadline and not (m.get(key, 0) > m0.get(key, 0) and m.get("dsinfer_active_sequences") == 0):
            time.sleep(0.05)
            m = metrics(env)[1]
        gen = m["dsinfer_generated_tokens_total"] - m0["dsinfer_generated_tokens_total"]
        gone = m["dsinfer_client_disconnects_total"] - m0["dsinfer_client_disconnects_total"]
        if gen >= 200 or gone < 1:
            report("regression", -1, f"a client gone before its non-streamed answer: {gen:g} tokens generated "
                   f"of 200, {gone:g} disconnects counted")
    except (OSError, KeyError, ValueError) as e:
        report("regression", -1, f"the gone-client check failed: {e!r}")
    if pid:
        # partial requests closed at once: libmicrohttpd's epoll loop missed
        # the FIN and kept each descriptor for the 120 s connection timeout
        base = proc_stat(pid)[1]
        for i in range(40):
            s = connect(env)
            s.sendall([b"GET /health HTTP/1.1\r\nHo", b"POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{",
                       b"\x00\xff garbage\r\n\r\n", b"GET /hea"][i % 4])
            s.close()
        n = wait_fds(pid, base, 5)
        if n is not None and n > base + 2:
            report("regression", -1, f"40 half-sent requests closed by the client: {n - base} descriptors still open after 5 s")


def final_checks(env, pid, report):
    try:
        st, d = env.client.json("GET", "/health")
        if st != 200 or d.get("status") != "ok":
            report("final", -1, f"/health: {st} {d}")
        b = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
        st, hdrs, raw = env.client.request("POST", CHAT, b)
        check_result(Resp(st, {k.lower(): v for k, v in hdrs.items()}, raw), CHAT, 4)
        if st != 200:
            report("final", -1, f"chat completion after the run: {st} {raw[:300]!r}")
        b["stream"] = True
        st, chunks, done = env.client.stream(CHAT, b)
        if st != 200 or not done:
            report("final", -1, f"streamed chat after the run: {st} done={done}")
        # nothing left behind: no request in flight but this one, no sequence, no queue
        deadline, m = time.monotonic() + 15, {}
        while time.monotonic() < deadline:
            st, m = metrics(env)
            if (m.get("dsinfer_http_requests_in_flight") == 1 and m.get("dsinfer_active_sequences") == 0
                    and m.get("dsinfer_queue_depth") == 0):
                break
            time.sleep(0.2)
        else:
            report("final", -1, "left behind after the run: in flight %s, active %s, queued %s" % (
                m.get("dsinfer_http_requests_in_flight"), m.get("dsinfer_active_sequences"), m.get("dsinfer_queue_depth")))
        return m
    except (Violation, OSError, ValueError, KeyError) as e:
        report("final", -1, f"final checks: {e!r}")
        return {}


# ---- driver ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-body", type=int, default=8 << 20, help="the server's --max-body")
    ap.add_argument("--pid", type=int, default=0, help="the server's process id (liveness, RSS, descriptors)")
    ap.add_argument("--api-key")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds any one answer may take")
    ap.add_argument("--only", type=int, default=-1, help="replay request INDEX alone")
    ap.add_argument("--kinds", default="", help="comma-separated kinds to draw from (default all)")
    args = ap.parse_args()
    serve_client.TIMEOUT = args.timeout
    env = Env(args)
    kinds = [k for k in KINDS if not args.kinds or k in args.kinds.split(",")]
    weights = [KINDS[k][1] for k in kinds]
    if not kinds:
        sys.exit(f"no such kind: {args.kinds}")

    violations, lock = [], threading.Lock()
    counts = defaultdict(Counter)

    def report(kind, i, msg):
        with lock:
            violations.append((i, kind, msg))
            where = f"request {i}" if i >= 0 else "check"
            print(f"FAIL seed {args.seed} {where} ({kind}): {msg}"[:1500], flush=True)
            if i >= 0:
                print(f"     replay: {sys.argv[0]} {args.url} --seed {args.seed} --only {i}"
                      + (f" --max-body {args.max_body}" if args.max_body != 8 << 20 else ""), flush=True)

    def run_one(i):
        rng = random.Random(f"{args.seed}/{i}")
        kind = rng.choices(kinds, weights)[0]
        try:
            r = KINDS[kind][0](env, rng)
            st = "-" if r is None else r.status
        except Violation as e:
            st = "violation"
            report(kind, i, str(e))
        except Exception as e:         # a socket error, or an answer that broke the parser
            st = "violation"
            report(kind, i, f"{type(e).__name__}: {e!r}")
        with lock:
            counts[kind][st] += 1

    rss0, fds0 = proc_stat(args.pid) if args.pid else (None, None)
    t0 = time.monotonic()
    if args.only >= 0:
        run_one(args.only)
    else:
        regressions(env, args.pid, report)
        nxt = iter(range(args.count))

        def worker():
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                run_one(i)
                if args.pid and i % 200 == 0:
                    try:
                        os.kill(args.pid, 0)
                    except OSError:
                        report("liveness", i, "the server process is gone")
                        return

        threads = [threading.Thread(target=worker) for _ in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.monotonic() - t0
    m = final_checks(env, args.pid, report)
    rss1 = fds1 = None
    if args.pid:
        try:
            os.kill(args.pid, 0)
        except OSError:
            report("liveness", -1, "the server process is gone after the run")
        fds1 = wait_fds(args.pid, fds0 or 0, 10)
        rss1 = proc_stat(args.pid)[0]
        if fds0 is not None and fds1 is not None and fds1 > fds0 + 2:
            report("descriptors", -1, f"{fds1} open descriptors after the run, {fds0} before")

    n = sum(sum(c.values()) for c in counts.values())
    print(f"serve_fuzz: seed {args.seed}, {n} requests in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f}/s), "
          f"{args.workers} workers, {len(violations)} violations")
    total = Counter()
    for k in sorted(counts):
        total.update(counts[k])
        print(f"  {k:18s} {sum(counts[k].values()):6d}  " + "  ".join(
            f"{s}:{c}" for s, c in sorted(counts[k].items(), key=lambda x: str(x[0]))))
    print(f"  {'all':18s} {n:6d}  " + "  ".join(f"{s}:{c}" for s, c in sorted(total.items(), key=lambda x: str(x[0]))))
    if args.pid:
        print(f"  server pid {args.pid}: RSS {rss0} kB -> {rss1} kB, descriptors {fds0} -> {fds1}")
    if m:
        print("  server counted: " + ", ".join(f"{k.split('{')[1].rstrip('}')}={v:g}" for k, v in sorted(m.items())
                                              if k.startswith("dsinfer_requests_total")))
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
