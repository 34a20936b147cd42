#!/bin/sh
# Runs the unit tests and the end-to-end suite; prints the combined count.
# RUN="prefix" (e.g. an emulator) is passed to the end-to-end suite.
cd "$(dirname "$0")/.." || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
total_p=0; total_f=0
count() { # adds the "N passed, N failed" line of the last run
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
    if [ -z "$line" ]; then echo "($1 printed no result line)"; total_f=$((total_f + 1)); return; fi
    p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
    total_p=$((total_p + p)); total_f=$((total_f + f))
}
echo "== unit tests"
./test/unit 2>&1 | tee "$out"
count unit
echo "== end-to-end tests"
python3 test/e2e.py ${RUN:+--run "$RUN"} 2>&1 | tee "$out"
count e2e
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
