#!/bin/sh
# The load test of dsinfer-serve (issue #7's acceptance run: one stream,
# then 8 concurrent streaming clients for 5 minutes) in a short form on the
# embedded tiny model: tests/serve_load.py must finish with no failed
# request, count exactly the tokens the requests asked for, report ordered
# latency percentiles and RSS samples, and leave the server healthy; and it
# must report failures (ids outside the vocabulary, no server) with exit 1.
# Its speed figures are printed, never judged.  The acceptance run is
#   serve_load.py URL --pid PID --same-prompt   (against -m mid --parallel 8)
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools"
MODEL="$top_builddir/models/tiny"
LOAD="$top_srcdir/tests/serve_load.py"
. "$top_srcdir/tests/serve_lib.sh"
serve_test_init

need_python_and_model "$MODEL"

if start_server "$MODEL" "$T/serve.log" --ctx-size 256 --parallel 4 -q; then
    ok "server up at $URL"
else
    bad "server did not start: $(tail -c 500 "$T/serve.log")"
    exit 1
fi

python3 "$LOAD" "$URL" --pid "$PID" --single-seconds 2 --clients 4 --seconds 4 --prompt-len 12 \
    --max-tokens 6 --rss-every 0.5 --out "$T/load.json" >"$T/load.out" 2>&1 &&
    ok "load run: no failed request" || bad "load run failed: $(tail -c 800 "$T/load.out")"
python3 - "$T/load.json" <<'PY' 2>"$T/check.err" && ok "load report: counts, percentiles, RSS" || bad "load report: $(tail -c 600 "$T/check.err")"
import json, sys
d = json.load(open(sys.argv[1]))
for k, clients in (("single", 1), ("multi", 4)):
    p = d[k]
    assert p["clients"] == clients and p["requests"] >= 1 and p["errors"] == 0, p
    # ignore_eos: every request streams exactly max_tokens tokens (usage counts them)
    assert p["completion_tokens"] == 6 * p["requests"], p
    assert 0 < p["ttft_p50"] <= p["ttft_p99"] and 0 < p["itl_p50"] <= p["itl_p99"], p
    assert abs(p["tok_s"] - p["completion_tokens"] / p["seconds"]) < 1e-6 * p["tok_s"], p
assert abs(d["gain"] - d["multi"]["tok_s"] / d["single"]["tok_s"]) < 1e-9, d
assert len(d["rss_kb"]) >= 4 and min(d["rss_kb"]) > 0, d["rss_kb"]
assert d["rss_growth_kb"] == d["rss_kb"][-1] - d["rss_kb"][0] and d["healthy_after"] is True, d
PY
# the server counted the same requests
python3 - "$URL" "$T/load.json" <<'PY' && ok "/metrics agrees with the report" || bad "/metrics disagrees"
import json, sys, urllib.request
d = json.load(open(sys.argv[2]))
m = urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10).read().decode()
n = sum(int(float(l.split()[-1])) for l in m.splitlines()
        if l.startswith('dsinfer_requests_total{endpoint="/v1/completions",code="200"}'))
assert n == d["single"]["requests"] + d["multi"]["requests"], (n, d)
PY

# failures are reported, not hidden: ids beyond the vocabulary are refused (400)
python3 "$LOAD" "$URL" --single-seconds 0 --clients 2 --seconds 1 --vocab 100000000 >"$T/bad.out" 2>&1
rc=$?
[ $rc = 1 ] && grep -q '"errors": [1-9]' "$T/bad.out" && grep -q "status 400" "$T/bad.out" &&
    ok "refused requests: exit 1, errors counted" || bad "refused requests: rc $rc $(tail -c 500 "$T/bad.out")"
stop_server
python3 "$LOAD" "127.0.0.1:8080" >"$T/url.out" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "bad server URL" "$T/url.out" && ok "URL without http:// -> 2" ||
    bad "bad URL: rc $rc $(cat "$T/url.out")"
python3 "$LOAD" "$URL" --single-seconds 1 --seconds 1 >"$T/none.out" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "no healthy server" "$T/none.out" && ok "no server: exit 1" ||
    bad "no server: rc $rc $(cat "$T/none.out")"
[ $fails = 0 ]
