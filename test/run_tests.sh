#!/bin/sh
# Runs the unit tests and the end-to-end suite; prints the combined count.
#   --unit "CMD"   how to run the unit tests (default ./test/unit; "" skips them)
#   --bin FILE     the server binary for the end-to-end suite (default ./mailsrv)
#   --run "PREFIX" command prefix for the server, e.g. an emulator
#   --logs DIR     where sanitizer (san.PID) or valgrind (vg.PID) reports go: emptied first; each
#                  report is a failure (e2e.py names the test it came from: vg.PID.TEST)
#   -k SUBSTRING   only the end-to-end tests whose name contains it (repeatable)
#   --shard I/N    only every Nth end-to-end test, from the Ith (0-based)
#   --san          binaries built with SAN=1: ASan/UBSan/LSan report into the --logs folder
#                  (default: a temporary one, kept only if it holds a report) and abort
cd "$(dirname "$0")/.." || exit 1
unit=./test/unit bin=./mailsrv run= logs= san=0 filter=
while [ $# -gt 0 ]; do
    case $1 in
        --unit) unit=$2; shift 2;;
        --bin) bin=$2; shift 2;;
        --run) run=$2; shift 2;;
        --logs) logs=$2; shift 2;;
        --san) san=1; shift;;
        -k) filter="$filter -k $2"; shift 2;;
        --shard) filter="$filter --shard $2"; shift 2;;
        *) echo "usage: $0 [--unit CMD] [--bin FILE] [--run PREFIX] [--logs DIR] [--san] [-k SUBSTRING] [--shard I/N]" >&2; exit 2;;
    esac
done
out=$(mktemp)
tmplogs=
trap 'rm -f "$out"; [ -n "$tmplogs" ] && rmdir "$tmplogs" 2>/dev/null' EXIT
if [ $san = 1 ] && [ -z "$logs" ]; then tmplogs=$(mktemp -d); logs=$tmplogs; fi
if [ -n "$logs" ]; then
    mkdir -p "$logs" && logs=$(cd "$logs" && pwd) || exit 1
    rm -f "$logs"/san.* "$logs"/vg.*
    export MAILSRV_TEST_SANLOG="$logs"
fi
if [ $san = 1 ]; then
    # The same log_path for both: clang's runtime takes UBSAN_OPTIONS' one for every report, gcc's
    # ASAN_OPTIONS' one for ASan/LSan (gcc's UBSan writes to stderr: the tests look there too).
    # abort_on_error: a report ends the process, not just the test's expectations.
    export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:log_path=$logs/san${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$logs/san${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
fi
# the lines that say what a report is about (sanitizer, valgrind)
SUMMARY_RE='^\(from |ERROR: |SUMMARY: |runtime error:|^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination|Argument |[0-9,]+ (\([^)]*\) )?bytes in [0-9,]+ blocks are (definitely|indirectly) lost)'
# is_report FILE: a sanitizer report, or a valgrind log with errors (valgrind logs every process;
# one SIGKILLed has no ERROR SUMMARY, only the errors it met before)
is_report() {
    case ${1##*/} in
        vg.*) grep -q 'ERROR SUMMARY: [1-9]' "$1" || { ! grep -q 'ERROR SUMMARY:' "$1" &&
              grep -qE '^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination|Argument )' "$1"; };;
        *) true;;
    esac
}
# names the reports of the unit tests (san.PID -> san.PID.unit); prints how many there were
unit_reports() {
    n=0
    for f in "$logs"/san.* "$logs"/vg.*; do
        case ${f##*/} in san.*.*|vg.*.*|'san.*'|'vg.*') continue;; esac
        [ -f "$f" ] || continue
        is_report "$f" && n=$((n + 1))
        mv "$f" "$f.unit"
    done
    echo $n
}
total_p=0; total_f=0; total_s=0
count() { # adds the "N passed, N failed" line of the last run
    line=$(tr -d '\r' < "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then echo "($1 printed no result line)"; total_f=$((total_f + 1)); return; fi
    p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
    case $line in *skipped*) s=${line##*failed, }; s=${s%% skipped*};; *) s=0;; esac
    total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
}
if [ -n "$unit" ]; then
    echo "== unit tests ($unit)"
    $unit > "$out" 2>&1; cat "$out"
    f0=$total_f
    count unit
    if [ -n "$logs" ]; then
        n=$(unit_reports)
        if [ $san = 1 ] && grep -q 'runtime error:' "$out"; then n=$((n + 1)); fi
        if [ "$n" -gt 0 ]; then
            echo "unit tests: $n sanitizer/valgrind report(s) (in $logs, *.unit)"
            [ $total_f = $f0 ] && total_f=$((total_f + 1))
        fi
    fi
fi
echo "== end-to-end tests ($run${run:+ }$bin)"
# the HTTP API's client test drives the pinned mailpit-api npm package (test/npm): installed once
# from the npm registry where npm is (http_mailpit_api_client is skipped without it; CI installs it)
if [ ! -d test/npm/node_modules ] && command -v npm >/dev/null 2>&1; then
    (cd test/npm && npm ci --no-audit --no-fund >/dev/null 2>&1) || echo "(npm ci in test/npm failed: the mailpit-api client test will be skipped)"
fi
set -f  # -k values may hold brackets (pop3_in_use[maildir])
python3 test/e2e.py --bin "$bin" ${run:+--run "$run"} $filter > "$out" 2>&1; cat "$out"
set +f
count e2e
if [ -n "$logs" ]; then
    # e2e.py names each report after its test (san.PID.TEST) and fails that test; a report it did
    # not see (written after it looked) counts here. Then the list of them all.
    reports=0
    for f in "$logs"/san.* "$logs"/vg.*; do
        [ -f "$f" ] && is_report "$f" || continue
        reports=$((reports + 1))
        case ${f##*/} in
            san.*.*|vg.*.*) echo "report: $f";;
            *) echo "report: $f (not seen by any test)"; total_f=$((total_f + 1));;
        esac
        grep -m 3 -E "$SUMMARY_RE" "$f" | sed 's/^/    /'
    done
    if [ $reports -gt 0 ]; then
        echo "$reports sanitizer/valgrind report(s) in $logs"
        tmplogs=
    fi
fi
if [ "$total_s" -gt 0 ]; then echo "$total_p passed, $total_f failed, $total_s skipped"
else echo "$total_p passed, $total_f failed"; fi
[ "$total_f" -eq 0 ]
