#!/bin/sh
# dsinfer-serve end to end on the embedded tiny model: --help / --version /
# man page, then a server on a free loopback port checked by
# tests/serve_client.py (health, models, chat and completions, streaming,
# stop strings, logprobs, error statuses, concurrency, client disconnects,
# metrics, draining on SIGTERM), and a second server with --api-key.
# Every wait is bounded and the server is always killed on exit.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools"
MODEL="$top_builddir/models/tiny"
CLIENT="$top_srcdir/tests/serve_client.py"
MAX_BODY=65536
. "$top_srcdir/tests/serve_lib.sh"
serve_test_init

# ---- command line and man page ---------------------------------------------
"$B/dsinfer-serve" --help >"$T/help" 2>&1 && grep -qi usage "$T/help" && ok "--help" || bad "--help"
"$B/dsinfer-serve" --version | grep -q "^dsinfer-serve (dsinfer) [0-9]" && ok "--version" || bad "--version"
man="$top_srcdir/man/dsinfer-serve.1"
if command -v mandoc >/dev/null 2>&1; then
    mandoc -Tlint -W warning "$man" >"$T/lint" 2>&1 && ok "man page lint" || bad "man page lint: $(cat "$T/lint")"
fi
sed 's/\\-/-/g' "$man" >"$T/man.txt"
for flag in $(grep -o -- '--[a-z][a-z0-9-]*' "$T/help" | sort -u); do
    grep -q -- "$flag" "$T/man.txt" || bad "$flag is in --help but not in dsinfer-serve.1"
done
"$B/dsinfer-serve" --bogus >/dev/null 2>&1
[ $? = 1 ] && ok "unknown option -> 1" || bad "unknown option: wrong exit status"
"$B/dsinfer-serve" --thinking-default maybe >/dev/null 2>"$T/err"
[ $? = 1 ] && grep -q thinking-default "$T/err" && ok "bad --thinking-default -> 1" || bad "bad --thinking-default"
"$B/dsinfer-serve" -m "$T/nonexistent" --port 0 -q >/dev/null 2>"$T/err"
rc=$?
[ "$rc" = 2 ] || [ "$rc" = 3 ] && ok "missing model -> $rc" || bad "missing model -> $rc: $(cat "$T/err")"

if [ ! -f "$MODEL/config.json" ]; then
    echo "SKIP: no embedded model at $MODEL (run make)"
    [ "$fails" = 0 ] && exit 77
    exit 1
fi


# ---- the main server: the client ends by sending SIGTERM mid-request ----------
if start_server "$MODEL" "$T/serve.log" --ctx-size 256 --max-body $MAX_BODY; then
    ok "server up at $URL"
    if ! timeout 300 python3 "$CLIENT" main "$URL" "$PID" $MAX_BODY; then
        bad "client checks (see FAIL lines above)"
        kill -TERM "$PID" 2>/dev/null     # the client may have stopped before its SIGTERM
    fi
    wait_exit 15
    [ "$RC" = 0 ] && ok "SIGTERM: drained and exited 0" || bad "SIGTERM: exit status $RC"
    grep -q "stopped (SIGTERM)" "$T/serve.log" && ok "shutdown logged" || bad "no shutdown line in the log"
    [ "$fails" = 0 ] || tail -20 "$T/serve.log"
else
    bad "the server did not start: $(tail -5 "$T/serve.log")"
fi

# ---- --api-key, a full queue (--max-queue 0), and SIGINT ------------------------------------------------------
if start_server "$MODEL" "$T/auth.log" --ctx-size 256 --api-key sekrit --max-queue 0 -q; then
    timeout 120 python3 "$CLIENT" auth "$URL" sekrit || bad "API key checks (see FAIL lines above)"
    kill -INT "$PID"
    wait_exit 15
    [ "$RC" = 0 ] && ok "SIGINT: exit 0" || bad "SIGINT: exit status $RC"
else
    bad "the server with --api-key did not start: $(tail -5 "$T/auth.log")"
fi

echo "$fails failed"
[ "$fails" = 0 ]
