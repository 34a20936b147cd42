#!/bin/sh
# Runs each libFuzzer harness for SECONDS on a copy of its seed corpus
# (build/fuzz/corpus/NAME), then prints per harness: exec/s and crashed or not.
# Usage: test/fuzz/run.sh SECONDS NAME...   (from the top of the tree; `make fuzz`)
# Exits 1 if any harness crashed (a sanitizer report, a failed assert, a leak or
# a timeout); the reproducer is build/fuzz/NAME-crash-*, the log build/fuzz/NAME.log.
secs=$1; shift
out=build/fuzz
crashed=0
start=$(date +%s)
summary=""
for name in "$@"; do
    rm -rf "$out/corpus/$name" && mkdir -p "$out/corpus/$name"
    cp test/fuzz/corpus/$name/* "$out/corpus/$name/" 2>/dev/null
    echo "fuzz $name: $secs s"
    UBSAN_OPTIONS=print_stacktrace=1 "./$out/$name" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$out/$name-" "$out/corpus/$name" >"$out/$name.log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$name.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$name.log")
    if [ $rc -ne 0 ]; then
        crashed=1
        result="CRASHED (rc $rc; see $out/$name.log)"
        grep -m1 -E 'ERROR: |runtime error|Assertion|SUMMARY' "$out/$name.log" | sed 's/^/    /'
    else
        result="ok"
    fi
    summary="$summary$(printf '%-14s %10s exec/s %12s runs  %s' "$name" "${rate:-?}" "${runs:-?}" "$result")
"
done
echo "---- fuzzing summary ($# harnesses, $secs s each, $(( $(date +%s) - start )) s in total) ----"
printf '%s' "$summary"
exit $crashed
