#!/bin/sh
# dsinfer-batch on the embedded tiny model: a mixed input (Batch API chat and
# completion lines, templated plain prompts, messages lines, bad lines, a
# repeated id) gives one record per line; greedy runs are reproducible;
# kill -9 plus a torn last line resumes to exactly one record per id without
# touching earlier records; two shards cover every id once; SIGTERM finishes
# cleanly; a second writer is refused; stop strings cut the text;
# --progress=json is JSON; --help, --version, the man page and exit codes.
set -u
: "${top_srcdir:=.}" "${top_builddir:=.}"
B="$top_builddir/tools/dsinfer-batch"
MODEL="$top_builddir/models/tiny"
CHECK="python3 $top_srcdir/tests/batch_check.py"
T=$(mktemp -d)
bgpid=
trap '[ -n "$bgpid" ] && kill -9 "$bgpid" 2>/dev/null; rm -rf "$T"' EXIT
fails=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# every run is bounded; --threads 1 keeps two concurrent tests off each other's cores
run() { timeout 300 "$B" -m "$MODEL" --threads 1 "$@"; }
# expect CODE PATTERN ARGS...: exit code CODE and stderr matching PATTERN
expect() {
    code=$1 pat=$2
    shift 2
    timeout 300 "$B" "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" = "$code" ] && grep -q -- "$pat" "$T/err"; then ok "$* -> $rc"; else
        bad "$* -> $rc (wanted $code, /$pat/): $(head -c 300 "$T/err")"; fi
}
# lines FILE: number of complete lines (0 when missing)
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# wait_lines FILE N: until FILE has N lines or bgpid exits (at most 60 s)
wait_lines() {
    i=0
    while [ "$i" -lt 1200 ] && [ "$(lines "$1")" -lt "$2" ] && kill -0 "$bgpid" 2>/dev/null; do
        sleep 0.05
        i=$((i + 1))
    done
}
# wait_bg: waits for bgpid (at most 120 s, then kills it); sets rc
wait_bg() {
    i=0
    while [ "$i" -lt 2400 ] && kill -0 "$bgpid" 2>/dev/null; do
        sleep 0.05
        i=$((i + 1))
    done
    kill -0 "$bgpid" 2>/dev/null && kill -9 "$bgpid" && bad "pid $bgpid did not exit within 120 s"
    wait "$bgpid"
    rc=$?
    bgpid=
}

if [ ! -f "$MODEL/config.json" ]; then
    echo "SKIP: $MODEL not built"
    exit 77
fi

# --help, --version, the man page (lint-clean, every --help flag documented)
"$B" --help >"$T/help" 2>&1 && grep -qi usage "$T/help" && ok "--help" || bad "--help"
"$B" --version | grep -q "^dsinfer-batch (dsinfer) [0-9]" && ok "--version" || bad "--version"
man="$top_srcdir/man/dsinfer-batch.1"
if command -v mandoc >/dev/null 2>&1; then
    mandoc -Tlint -W warning "$man" >"$T/lint" 2>&1 && ok "man page lint" || bad "man page lint: $(cat "$T/lint")"
fi
sed 's/\\-/-/g' "$man" >"$T/man.txt"
for flag in $(grep -o -- '--[a-z][a-z0-9-]*' "$T/help" | sort -u); do
    grep -q -- "$flag" "$T/man.txt" || bad "$flag is in --help but not in dsinfer-batch.1"
done
for sec in "INPUT FORMAT" "OUTPUT FORMAT" RESUMING SHARDING SIGNALS "EXIT STATUS" Slurm "GNU parallel"; do
    grep -q "$sec" "$man" || bad "the man page has no $sec"
done

# ---- the mixed input ----------------------------------------------------
long=$(python3 -c "print(' '.join(['word'] * 120))")
{
    echo '{"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4}}'
    echo '{"custom_id": "chat-2", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m-x", "messages": [{"role": "user", "content": "Sample this"}], "temperature": 0.8, "seed": 5}}'
    echo '{"custom_id": "cmpl-1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once upon a time", "max_tokens": 3}}'
    echo '{"id": "doc-1", "prompt": "The cat sat on the mat."}'
    echo '{"id": "doc-2", "text": "Another document."}'
    echo '{"id": "msg-1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]}'
    echo '{"id": "think-1", "prompt": "Think about it.", "thinking": true}'
    echo '{"id": "bad-json", "prompt": '
    echo '{"id": "missing"}'
    echo '{"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}'
    echo '{"id": "doc-1", "prompt": "the same id again"}'
    printf '{"id": "utf", "prompt": "\377\376"}\n'
    echo "{\"id\": \"long\", \"prompt\": \"$long\"}"
    echo ''
    echo '{"messages": [{"role": "user", "content": "no id"}]}'
    echo '{"id": 42, "prompt": "numeric id"}'
} >"$T/mixed.jsonl"
printf 'Summarise the following document in one short sentence, please.\nDocument {{id}}:\n{{text}}\n' >"$T/tmpl"
run -i "$T/mixed.jsonl" -o "$T/mixed1.jsonl" --parallel 3 -n 8 -c 64 --template "$T/tmpl" -q &&
    $CHECK mixed "$T/mixed1.jsonl" && ok "mixed input: one record per line, right ids and errors" ||
    bad "mixed input: $(head -c 2000 "$T/mixed1.jsonl")"
run -i "$T/mixed.jsonl" -o "$T/mixed2.jsonl" --parallel 3 -n 8 -c 64 --template "$T/tmpl" -q &&
    $CHECK same "$T/mixed1.jsonl" "$T/mixed2.jsonl" && ok "two runs give the same records" || bad "runs differ"
# a finished job re-run writes nothing
cp "$T/mixed1.jsonl" "$T/again.jsonl"
run -i "$T/mixed.jsonl" -o "$T/again.jsonl" --parallel 3 -n 8 -c 64 --template "$T/tmpl" -q &&
    cmp -s "$T/mixed1.jsonl" "$T/again.jsonl" && ok "re-running a finished job writes nothing" ||
    bad "re-run changed a finished output"

# ---- stop strings cut the greedy text -------------------------------------
for i in 1 2 3 4 5 6; do echo "{\"id\": \"s$i\", \"prompt\": \"Stop test $i\"}"; done >"$T/stop.jsonl"
run -i "$T/stop.jsonl" -o "$T/stop1.jsonl" --parallel 3 -n 8 -q &&
    $CHECK mkstop "$T/stop.jsonl" "$T/stop1.jsonl" "$T/stop2.jsonl" &&
    run -i "$T/stop2.jsonl" -o "$T/stop2.out" --parallel 3 -n 8 -q &&
    $CHECK stopped "$T/stop1.jsonl" "$T/stop2.out" && ok "stop strings" || bad "stop strings"

# ---- resume after kill -9 and a torn write ---------------------------------
for i in $(seq 1 30); do
    echo "{\"id\": \"r$i\", \"prompt\": \"Document $i is about the weather on day $i.\"}"
done >"$T/big.jsonl"
"$B" -m "$MODEL" --threads 1 -i "$T/big.jsonl" -o "$T/res.jsonl" --parallel 3 -n 8 -q &
bgpid=$!
wait_lines "$T/res.jsonl" 5
kill -9 "$bgpid" 2>/dev/null
wait_bg
cp "$T/res.jsonl" "$T/res.before"
n_before=$(lines "$T/res.before")
if [ "$n_before" -ge 30 ]; then
    bad "resume: the job finished before it could be killed"
fi
printf '{"id": "r30", "content": "torn wri' >>"$T/res.jsonl"
run -i "$T/big.jsonl" -o "$T/res.jsonl" --parallel 3 -n 8 2>"$T/res.err" &&
    $CHECK resume "$T/res.jsonl" "$T/res.before" 30 &&
    grep -q "partial last line" "$T/res.err" &&
    ok "resume after kill -9 with $n_before records and a torn line" || bad "resume: $(cat "$T/res.err")"

# ---- an output that is not this tool's is refused, unchanged ---------------
# (a config or model file named by mistake: its last line must not be cut as
# a torn record, nor records appended to it)
printf '{"model": "x", "note": "no newline"}' >"$T/foreign1"
printf '{"id": "r1", "response": null}\nnot a record\n' >"$T/foreign2"
cp "$MODEL/tokenizer.json" "$T/foreign3"
for f in foreign1 foreign2 foreign3; do
    cp "$T/$f" "$T/$f.orig"
    expect 1 "not a dsinfer-batch output" -m "$MODEL" --threads 1 -i "$T/big.jsonl" -o "$T/$f" -n 2 -q
    cmp -s "$T/$f" "$T/$f.orig" && ok "$f left as it was" || bad "$f was changed"
done

# ---- shards ----------------------------------------------------------------
head -n 12 "$T/big.jsonl" >"$T/sh.jsonl"
sed -n '4,12p' "$T/mixed.jsonl" >>"$T/sh.jsonl"
run -i "$T/sh.jsonl" -o "$T/sh_all.jsonl" --parallel 3 -n 4 -q &&
    run -i "$T/sh.jsonl" -o "$T/sh0.jsonl" --parallel 3 -n 4 -q --shard 0/2 &&
    run -i "$T/sh.jsonl" -o "$T/sh1.jsonl" --parallel 3 -n 4 -q --shard 1/2 &&
    $CHECK shard "$T/sh_all.jsonl" "$T/sh0.jsonl" "$T/sh1.jsonl" && ok "--shard 0/2 and 1/2 cover every id once" ||
    bad "shards"
# a line's text does not depend on which other lines share its run
cat "$T/sh0.jsonl" "$T/sh1.jsonl" >"$T/sh_cat.jsonl"
$CHECK same "$T/sh_all.jsonl" "$T/sh_cat.jsonl" && ok "concatenated shards equal the unsharded run" ||
    bad "sharded records differ from the unsharded run"

# ---- SIGTERM: finish in flight, exit 0; a second writer is refused -----------
"$B" -m "$MODEL" --threads 1 -i "$T/big.jsonl" -o "$T/term.jsonl" --parallel 3 -n 8 2>"$T/term.err" &
bgpid=$!
wait_lines "$T/term.jsonl" 1
expect 3 "another dsinfer-batch" -m "$MODEL" -i "$T/big.jsonl" -o "$T/term.jsonl" -q
kill -TERM "$bgpid" 2>/dev/null
wait_bg
[ "$rc" = 0 ] && n=$($CHECK complete "$T/term.jsonl" 1 30) && grep -q "stopping" "$T/term.err" &&
    ok "SIGTERM: exit 0 with $n complete records" || bad "SIGTERM: rc $rc: $(cat "$T/term.err")"
run -i "$T/big.jsonl" -o "$T/term.jsonl" --parallel 3 -n 8 -q && $CHECK complete "$T/term.jsonl" 30 30 >/dev/null &&
    ok "the stopped job completes on a re-run" || bad "re-run after SIGTERM"
# a second signal abandons the requests in flight: exit 130, complete records only
"$B" -m "$MODEL" --threads 1 -i "$T/big.jsonl" -o "$T/abort.jsonl" --parallel 3 -n 8 -q &
bgpid=$!
wait_lines "$T/abort.jsonl" 1
kill -TERM "$bgpid" 2>/dev/null
kill -INT "$bgpid" 2>/dev/null
wait_bg
[ "$rc" = 130 ] && $CHECK complete "$T/abort.jsonl" 1 29 >/dev/null && ok "a second signal exits 130" ||
    bad "second signal: rc $rc"

# ---- --progress=json ---------------------------------------------------------
run -i "$T/stop.jsonl" -o "$T/prog.jsonl" --parallel 3 -n 4 --progress=json 2>"$T/prog.err" &&
    $CHECK progress-json "$T/prog.err" && ok "--progress=json" || bad "--progress=json: $(cat "$T/prog.err")"
run -i "$T/stop.jsonl" -o "$T/quiet.jsonl" --parallel 3 -n 4 -q 2>"$T/quiet.err" && [ ! -s "$T/quiet.err" ] &&
    ok "-q is silent" || bad "-q printed: $(cat "$T/quiet.err")"

# ---- errors and exit codes --------------------------------------------------------
expect 1 "required" -m "$MODEL" -i "$T/stop.jsonl"
expect 1 "unrecognized option\|invalid option" --bogus
expect 1 "shard" -m "$MODEL" -i "$T/stop.jsonl" -o "$T/x.jsonl" --shard 2/2
expect 1 "progress" -m "$MODEL" -i "$T/stop.jsonl" -o "$T/x.jsonl" --progress=loud
echo "no placeholder" >"$T/badtmpl"
expect 1 "{{text}}" -m "$MODEL" -i "$T/stop.jsonl" -o "$T/x.jsonl" --template "$T/badtmpl"
expect 1 "is an input of this run" -m "$MODEL" -i "$T/stop.jsonl" -o "$T/stop.jsonl"
expect 1 "would overwrite a file of the checkpoint" -m "$MODEL" -i "$T/stop.jsonl" -o "$MODEL/config.json"
expect 3 "config.json" -m "$T/nonexistent" -i "$T/stop.jsonl" -o "$T/x.jsonl"
expect 3 "nonexistent.jsonl" -m "$MODEL" -i "$T/nonexistent.jsonl" -o "$T/x.jsonl"
expect 3 "nodir" -m "$MODEL" -i "$T/stop.jsonl" -o "$T/nodir/x.jsonl"

echo "$fails failed"
[ "$fails" = 0 ]
