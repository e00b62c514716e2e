#!/bin/sh
# The fuzz / garbage acceptance run of dsinfer-serve (issue #7) on the
# embedded tiny model: tests/serve_fuzz.py sends a seeded mix of malformed,
# oversized, mistyped, broken-UTF-8 and broken-HTTP requests, abrupt
# disconnects and valid small requests, and checks every answer; then the
# server must still be healthy, hold no more memory than a little over what
# it held after a warm-up, and exit 0 on SIGTERM.  A second, shorter run
# against a server with --api-key checks the 401s.
# DSINFER_FUZZ_COUNT and DSINFER_FUZZ_SEED change the run (the whole
# acceptance run is DSINFER_FUZZ_COUNT=10000).
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools"
MODEL="$top_builddir/models/tiny"
FUZZ="$top_srcdir/tests/serve_fuzz.py"
MAX_BODY=262144
COUNT=${DSINFER_FUZZ_COUNT:-1500}
SEED=${DSINFER_FUZZ_SEED:-7}
# growth allowed between the warm-up and the end of the run: the tools keep up
# to 1 GiB of freed heap for reuse (tool_load_model's mallopt), so the heap of
# the HTTP and engine threads settles some tens of MiB above the warm-up;
# leaking the bodies (up to 256 KiB each) or a context per request exceeds it
RSS_SLACK_KB=65536
. "$top_srcdir/tests/serve_lib.sh"
serve_test_init

need_python_and_model "$MODEL"


rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

if start_server "$MODEL" "$T/serve.log" --ctx-size 256 --max-body $MAX_BODY -q; then
    ok "server up at $URL"
    # a warm-up (another seed) allocates what the first requests allocate
    # once: buffers, malloc arenas of the HTTP threads, the sampler's tables
    timeout 300 python3 "$FUZZ" "$URL" --seed $((SEED + 1000)) --count 200 --max-body $MAX_BODY \
        >"$T/warmup.out" 2>&1 || { cat "$T/warmup.out"; bad "warm-up run"; }
    rss0=$(rss_kb "$PID")
    if timeout 900 python3 "$FUZZ" "$URL" --seed "$SEED" --count "$COUNT" --max-body $MAX_BODY --pid "$PID"; then
        ok "$COUNT fuzz requests, seed $SEED"
    else
        bad "fuzz run (seed $SEED, see FAIL lines above)"
    fi
    rss1=$(rss_kb "$PID")
    if [ "$rss0" -gt 0 ] && [ "$rss1" -le $((rss0 + RSS_SLACK_KB)) ]; then
        ok "RSS $rss0 kB -> $rss1 kB"
    else
        bad "RSS grew from $rss0 kB to $rss1 kB"
    fi
    kill -TERM "$PID"
    wait_exit 15
    [ "$RC" = 0 ] && ok "SIGTERM after the run: exit 0" || bad "SIGTERM after the run: exit status $RC"
    [ "$fails" = 0 ] || tail -20 "$T/serve.log"
else
    bad "the server did not start: $(tail -5 "$T/serve.log")"
fi

# ---- --api-key: wrong and missing keys among the garbage ------------------------
if start_server "$MODEL" "$T/auth.log" --ctx-size 256 --max-body $MAX_BODY --api-key fuzzkey -q; then
    if timeout 300 python3 "$FUZZ" "$URL" --seed "$SEED" --count 200 --max-body $MAX_BODY --pid "$PID" \
        --api-key fuzzkey --kinds bad_key,valid_chat,valid_stream,malformed_json,wrong_type,bad_path,bad_method,disconnect; then
        ok "fuzz run with --api-key"
    else
        bad "fuzz run with --api-key (see FAIL lines above)"
    fi
    kill -TERM "$PID"
    wait_exit 15
    [ "$RC" = 0 ] && ok "SIGTERM: exit 0" || bad "SIGTERM with --api-key: exit status $RC"
else
    bad "the server with --api-key did not start: $(tail -5 "$T/auth.log")"
fi

echo "$fails failed"
[ "$fails" = 0 ]
