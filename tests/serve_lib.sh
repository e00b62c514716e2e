# serve_lib.sh — sourced by the dsinfer-serve tests: their scratch directory
# and reporters, start a server on a free loopback port, stop it, wait for
# its exit.  Needs B (the tools directory) set by the caller.

# serve_test_init: a scratch directory T removed on exit with the server PID
# (killed if still running), and ok / bad, which count failures in fails.
serve_test_init() {
    T=$(mktemp -d)
    PID=
    trap serve_test_cleanup EXIT
    trap 'exit 1' INT TERM HUP
    fails=0
}
serve_test_cleanup() {
    [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null
    rm -rf "$T"
}
# need_python_and_model MODEL: skip the test (exit 77) without python3 or
# without the embedded model MODEL.
need_python_and_model() {
    if ! command -v python3 >/dev/null 2>&1; then
        echo "SKIP: no python3"
        exit 77
    fi
    if [ ! -f "$1/config.json" ]; then
        echo "SKIP: no embedded model at $1 (run make)"
        exit 77
    fi
}
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server MODEL LOG ARGS...: a server on a free port (another try when
# the port was taken meanwhile); sets PID and URL, 0 once /health answers.
start_server() {
    model=$1
    log=$2
    shift 2
    for try in 1 2 3 4 5; do
        port=$(free_port)
        OMP_NUM_THREADS=2 "$B/dsinfer-serve" -m "$model" --host 127.0.0.1 --port "$port" \
            --parallel 2 "$@" >"$log" 2>&1 &
        PID=$!
        URL="http://127.0.0.1:$port"
        i=0
        while [ $i -lt 300 ] && kill -0 "$PID" 2>/dev/null; do
            python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' \
                "$URL" 2>/dev/null && return 0
            sleep 0.1
            i=$((i + 1))
        done
        stop_server
        grep -q "cannot listen" "$log" || break
    done
    return 1
}

# stop_server: SIGTERM, then SIGKILL after 15 s; clears PID.
stop_server() {
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null
    i=0
    while kill -0 "$PID" 2>/dev/null && [ $i -lt 150 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=
}

# wait_exit SECONDS: RC = the server's exit status, or 124 when it is still
# running after SECONDS (then it is killed).
wait_exit() {
    i=0
    while kill -0 "$PID" 2>/dev/null && [ $i -lt $(($1 * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
        RC=124
    else
        wait "$PID"
        RC=$?
    fi
    PID=
}
