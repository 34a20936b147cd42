#!/bin/sh
# Runs each libFuzzer harness for SECONDS on a copy of its seed corpus
# (build/fuzz/corpus/NAME), FUZZ_JOBS at a time (default 2: one per core of
# the CI machine), then prints per harness: exec/s and crashed or not.
# Usage: test/fuzz/run.sh SECONDS NAME...   (from the top of the tree; `make fuzz`)
# Exits 1 if any harness crashed (a sanitizer report, a failed assert, a leak or
# a timeout); the reproducer is build/fuzz/NAME-crash-*, the log build/fuzz/NAME.log.
secs=$1; shift
out=build/fuzz
jobs=${FUZZ_JOBS:-2}
start=$(date +%s)

one() { # one NAME: fuzz it, leave "rc" in build/fuzz/NAME.rc
    rm -rf "$out/corpus/$1" && mkdir -p "$out/corpus/$1"
    cp test/fuzz/corpus/$1/* "$out/corpus/$1/" 2>/dev/null
    UBSAN_OPTIONS=print_stacktrace=1 "./$out/$1" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$out/$1-" "$out/corpus/$1" >"$out/$1.log" 2>&1
    echo $? > "$out/$1.rc"
}

running=0
for name in "$@"; do
    echo "fuzz $name: $secs s"
    one "$name" &
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then wait; running=0; fi
done
wait

crashed=0
summary=""
for name in "$@"; do
    rc=$(cat "$out/$name.rc" 2>/dev/null || echo 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$name.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$name.log")
    if [ "$rc" -ne 0 ]; then
        crashed=1
        result="CRASHED (rc $rc; see $out/$name.log)"
        grep -m1 -E 'ERROR: |runtime error|Assertion|SUMMARY' "$out/$name.log" | sed 's/^/    /'
    else
        result="ok"
    fi
    summary="$summary$(printf '%-14s %10s exec/s %12s runs  %s' "$name" "${rate:-?}" "${runs:-?}" "$result")
"
done
echo "---- fuzzing summary ($# harnesses, $secs s each, $jobs at a time, $(( $(date +%s) - start )) s in total) ----"
printf '%s' "$summary"
exit $crashed
