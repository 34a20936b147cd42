#!/bin/sh
# Runs the unit tests and the end-to-end suite; prints the combined count.
#   --unit "CMD"   how to run the unit tests (default ./test/unit; "" skips them)
#   --bin FILE     the server binary for the end-to-end suite (default ./mailsrv)
#   --run "PREFIX" command prefix for the server, e.g. an emulator
cd "$(dirname "$0")/.." || exit 1
unit=./test/unit bin=./mailsrv run=
while [ $# -gt 0 ]; do
    case $1 in
        --unit) unit=$2; shift 2;;
        --bin) bin=$2; shift 2;;
        --run) run=$2; shift 2;;
        *) echo "usage: $0 [--unit CMD] [--bin FILE] [--run PREFIX]" >&2; exit 2;;
    esac
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
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
    count unit
fi
echo "== end-to-end tests ($run${run:+ }$bin)"
python3 test/e2e.py --bin "$bin" ${run:+--run "$run"} > "$out" 2>&1; cat "$out"
count e2e
if [ "$total_s" -gt 0 ]; then echo "$total_p passed, $total_f failed, $total_s skipped"
else echo "$total_p passed, $total_f failed"; fi
[ "$total_f" -eq 0 ]
