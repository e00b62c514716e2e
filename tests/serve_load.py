"""Loopback load test of a running dsinfer-serve (standard library only):
issue #7's acceptance run, and a short form of it in make check.

usage: serve_load.py BASE_URL [--pid PID] [--single-seconds S] [--clients N]
                     [--seconds S] [--prompt-len L] [--max-tokens M]
                     [--same-prompt] [--vocab V] [--seed N] [--out FILE]

Two phases: one streaming client for --single-seconds, then --clients
concurrent ones for --seconds.  Every client sends /v1/completions requests
back to back (token-id prompts of --prompt-len ids drawn from [100, vocab),
the same for every request with --same-prompt, --max-tokens tokens with
ignore_eos, temperature 0.7, a seed per request, stream with usage) and
checks each answer: status 200, SSE chunks, usage, data: [DONE].  With --pid
the server's resident memory is sampled during the second phase.  Prints
one JSON object: per phase the requests, errors, completion tokens,
aggregate tokens/s and the p50 / p99 time to first token and inter-token
gap; the gain (second phase's tokens/s over the first's); the RSS samples;
whether /health answered at the end.  Exits 1 when any request failed or
the server was not healthy at the end, 2 on bad arguments.  Speed is
reported, never judged."""
import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

TIMEOUT = 120


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def one_request(host, port, body):
    """Sends one streamed completion; returns (tokens, ttft, gaps) or raises."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        t0 = time.time()
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {resp.read(300)!r}")
        first = last = None
        gaps, usage, done = [], None, False
        while True:
            line = resp.fp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                now = time.time()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
        if not done:
            raise RuntimeError("stream ended without data: [DONE]")
        if not usage or "completion_tokens" not in usage:
            raise RuntimeError("no usage chunk (stream_options.include_usage)")
        return usage["completion_tokens"], (first - t0) if first else None, gaps
    finally:
        conn.close()


def run_phase(url, clients, seconds, args):
    u = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    st = {"requests": 0, "errors": 0, "tokens": 0, "ttft": [], "itl": [], "err_detail": []}
    fixed = random.Random(args.seed).sample(range(100, args.vocab), args.prompt_len) if args.same_prompt else None
    deadline = time.time() + seconds

    def client(i):
        rng = random.Random(args.seed * 1000 + i + 1)
        while time.time() < deadline:
            prompt = fixed or [rng.randrange(100, args.vocab) for _ in range(args.prompt_len)]
            body = json.dumps({"model": "dsinfer", "prompt": prompt, "max_tokens": args.max_tokens,
                               "ignore_eos": True, "temperature": 0.7, "seed": rng.randrange(1 << 30),
                               "stream": True, "stream_options": {"include_usage": True}})
            try:
                n, ttft, gaps = one_request(u.hostname, u.port, body)
                with lock:
                    st["requests"] += 1
                    st["tokens"] += n
                    if ttft is not None:
                        st["ttft"].append(ttft)
                    st["itl"].extend(gaps)
            except Exception as e:       # every failure is counted, the run goes on
                with lock:
                    st["errors"] += 1
                    if len(st["err_detail"]) < 5:
                        st["err_detail"].append(str(e)[:300])
                time.sleep(0.05)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    return threads, st, t0


def finish_phase(threads, st, t0, clients):
    for t in threads:
        t.join()
    el = time.time() - t0
    return {"clients": clients, "seconds": el, "requests": st["requests"], "errors": st["errors"],
            "completion_tokens": st["tokens"], "tok_s": st["tokens"] / el if el > 0 else 0.0,
            "ttft_p50": percentile(st["ttft"], .5), "ttft_p99": percentile(st["ttft"], .99),
            "itl_p50": percentile(st["itl"], .5), "itl_p99": percentile(st["itl"], .99),
            "err_detail": st["err_detail"]}


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def healthy(url):
    u = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description="loopback load test of dsinfer-serve")
    ap.add_argument("url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--single-seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--prompt-len", type=int, default=41)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--same-prompt", action="store_true")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rss-every", type=float, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.prompt_len < 1 or args.vocab <= 100 + args.prompt_len or args.clients < 1 or args.max_tokens < 1:
        ap.error("need --prompt-len >= 1, --vocab > 100 + prompt-len, --clients >= 1, --max-tokens >= 1")
    if not (args.seconds > 0 and args.single_seconds >= 0 and args.rss_every > 0):
        ap.error("need --seconds > 0, --single-seconds >= 0 (0 skips that phase), --rss-every > 0")
    try:
        u = urllib.parse.urlsplit(args.url)
        if u.scheme != "http" or not u.hostname or u.port is None:
            raise ValueError("not http://HOST:PORT")
    except ValueError as e:
        ap.error(f"bad server URL {args.url!r} ({e}): want http://HOST:PORT")
    if not healthy(args.url):
        print(f"serve_load.py: no healthy server at {args.url}", file=sys.stderr)
        return 1
    res = {"url": args.url, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
           "same_prompt": args.same_prompt}
    if args.single_seconds > 0:
        res["single"] = finish_phase(*run_phase(args.url, 1, args.single_seconds, args), 1)
    threads, st, t0 = run_phase(args.url, args.clients, args.seconds, args)
    samples = []
    while any(t.is_alive() for t in threads):
        if args.pid:
            r = rss_kb(args.pid)
            if r is not None:
                samples.append(r)
        end = time.time() + args.rss_every
        while time.time() < end and any(t.is_alive() for t in threads):
            time.sleep(0.05)
    res["multi"] = finish_phase(threads, st, t0, args.clients)
    if args.pid and (r := rss_kb(args.pid)) is not None:
        samples.append(r)
    if "single" in res and res["single"]["tok_s"] > 0:
        res["gain"] = res["multi"]["tok_s"] / res["single"]["tok_s"]
    res["rss_kb"] = samples
    if samples:
        res["rss_growth_kb"] = samples[-1] - samples[0]
    res["healthy_after"] = healthy(args.url)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    phases = [res[k] for k in ("single", "multi") if k in res]
    failed = any(p["errors"] for p in phases) or any(p["requests"] == 0 for p in phases) or not res["healthy_after"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
