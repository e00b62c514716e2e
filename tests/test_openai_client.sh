#!/bin/sh
# dsinfer-serve checked with the official OpenAI Node client (npm package
# `openai`, tests/openai_client.mjs) on the embedded tiny model: a streamed
# thinking-mode chat against the unstreamed one, a conversation holding a
# tool round, and, on servers whose completions are forced to a tool-call
# block (DSINFER_TEST_FORCED_COMPLETION, testing only), the client's parsing
# of tool_calls deltas and its own tool loop: DSML with the V3.2 tiny model,
# V3.1's legacy tokens with a tiny model whose model_type is deepseek_v3.
# Skips (77) without node or the package, which is looked for in
# $DSINFER_NODE_MODULES, else $HOME/.cache/dsinfer-npm/node_modules (where
# .ci/run installs it).  Every wait is bounded; servers are always killed.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools"
MODEL="$top_builddir/models/tiny"
CLIENT="$top_srcdir/tests/openai_client.mjs"
if ! command -v node >/dev/null 2>&1; then
    echo "SKIP: node is not installed"
    exit 77
fi
NM=${DSINFER_NODE_MODULES:-${HOME:-/nonexistent}/.cache/dsinfer-npm/node_modules}
if [ ! -f "$NM/openai/package.json" ]; then
    echo "SKIP: the npm package openai is not in $NM (npm install --prefix \$HOME/.cache/dsinfer-npm openai@4)"
    exit 77
fi
if [ ! -f "$MODEL/config.json" ]; then
    echo "SKIP: no embedded model at $MODEL (run make)"
    exit 77
fi
DSINFER_NODE_MODULES=$(cd "$NM" && pwd)
NODE_PATH=$DSINFER_NODE_MODULES
export DSINFER_NODE_MODULES NODE_PATH
. "$top_srcdir/tests/serve_lib.sh"
serve_test_init


# ---- the tiny model as it is ---------------------------------------------------
# f32: the client compares a streamed answer with an unstreamed one to the same
# request, the second prefilled after a reused prefix; bf16 rounding can turn
# that different grouping into a different sample (dsinfer-serve(1) --precision)
if start_server "$MODEL" "$T/plain.log" --ctx-size 512 --precision f32; then
    ok "server up at $URL"
    timeout 300 node "$CLIENT" plain "$URL" || bad "openai client, plain server (see FAIL lines above)"
    stop_server
else
    bad "the server did not start: $(tail -5 "$T/plain.log")"
fi

# ---- completions forced to a tool-call block (testing only) --------------------
# forced FMT MODEL: a server on MODEL whose chat completions are the client's
# FORCED[FMT] text, checked by the client
forced() {
    node "$CLIENT" forced-text "$1" >"$T/forced-$1.txt"
    DSINFER_TEST_FORCED_COMPLETION="$T/forced-$1.txt"
    export DSINFER_TEST_FORCED_COMPLETION
    if start_server "$2" "$T/forced-$1.log" --ctx-size 1024; then
        grep -q "TESTING ONLY" "$T/forced-$1.log" && ok "$1: forced server says it is for testing" ||
            bad "$1: no TESTING ONLY line"
        grep -q "chat format $1)" "$T/forced-$1.log" && ok "$1: chat format" ||
            bad "$1: wrong chat format: $(tail -1 "$T/forced-$1.log")"
        timeout 300 node "$CLIENT" forced "$URL" "$1" || bad "openai client, forced $1 server (see FAIL lines above)"
        stop_server
    else
        bad "the forced $1 server did not start: $(tail -5 "$T/forced-$1.log")"
    fi
    unset DSINFER_TEST_FORCED_COMPLETION
}
forced v3.2 "$MODEL"
# the same random model, declared a V3 one, with the V3 tokenizer
if "$B/dsinfer-mkmodel" --preset tiny --seed 1 --set model_type=deepseek_v3 \
        --tokenizer "$top_srcdir/data/tokenizer.json" --out "$T/v3" -q 2>"$T/mk.log"; then
    forced v3 "$T/v3"
else
    bad "dsinfer-mkmodel for the V3 model: $(tail -3 "$T/mk.log")"
fi

echo "$fails failed"
[ "$fails" = 0 ]
