#!/usr/bin/env bash
# GPU acceptance check (issue 7): the CUDA-marked tests, then every benchmark's --quick
# mode on the CPU and on CUDA, then one table (benchmark, size, CPU ratio, CUDA time,
# CUDA ratio). Built to finish in under 8 minutes on one H200 machine.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT or /tmp/thermanopt-gpu-check
#
# Knobs (environment): OUT (results folder), BENCH_TIMEOUT (s per benchmark run, 25),
# TEST_TIMEOUT (s for the CUDA tests, 90), TOTAL_BUDGET (s for all the runs, 440;
# runs that would start past it are skipped and shown as such in the table).
# A failed or timed-out run never stops the script: its exit status is written to
# $OUT_DIR/<name>.<cpu|cuda>.rc and reported. The script exits non-zero when the
# CUDA tests failed (or timed out); benchmark failures are reported, not fatal.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=${OUT:-/tmp/thermanopt-gpu-check}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-25}
TEST_TIMEOUT=${TEST_TIMEOUT:-90}
TOTAL_BUDGET=${TOTAL_BUDGET:-440}
START=$SECONDS
mkdir -p "$OUT_DIR" || exit 2

echo "== thermanopt GPU check $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $ROOT"
echo "== results: $OUT_DIR"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
else
    echo "nvidia-smi: not found"
fi
python -c 'import torch; print("torch", torch.__version__, "cuda available:",
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'

echo
echo "== CUDA-marked tests: python -m pytest -q -m cuda (timeout ${TEST_TIMEOUT}s)"
timeout -k 5 "$TEST_TIMEOUT" python -m pytest -q -m cuda
TEST_RC=$?
case $TEST_RC in
    0) echo "CUDA tests: passed (or skipped: see above)" ;;
    124|137) echo "CUDA tests: TIMED OUT after ${TEST_TIMEOUT}s" ;;
    5) echo "CUDA tests: none collected (exit 5)" ;;
    *) echo "CUDA tests: FAILED (exit $TEST_RC)" ;;
esac
echo "$TEST_RC" > "$OUT_DIR/pytest-cuda.rc"

FAILED_RUNS=()
for script in benchmarks/bench_*.py; do
    name=$(basename "$script" .py)
    name=${name#bench_}
    for side in cpu cuda; do
        json="$OUT_DIR/$name.$side.json"
        rm -f "$json" "$OUT_DIR/$name.$side.rc"
        left=$(( TOTAL_BUDGET - (SECONDS - START) ))
        if (( left < 5 )); then
            echo "== $name --device $side: SKIPPED (total budget ${TOTAL_BUDGET}s spent)"
            echo "skipped" > "$OUT_DIR/$name.$side.rc"
            FAILED_RUNS+=("$name/$side:skipped")
            continue
        fi
        limit=$(( left < BENCH_TIMEOUT ? left : BENCH_TIMEOUT ))
        echo
        echo "== $script --quick --device $side --json $json (timeout ${limit}s)"
        t0=$SECONDS
        timeout -k 5 "$limit" python "$script" --quick --device "$side" --json "$json"
        rc=$?
        echo "$rc" > "$OUT_DIR/$name.$side.rc"
        if (( rc != 0 )); then
            if (( rc == 124 || rc == 137 )); then
                echo "!! $name --device $side: TIMED OUT after ${limit}s"
            else
                echo "!! $name --device $side: FAILED (exit $rc)"
            fi
            FAILED_RUNS+=("$name/$side:$rc")
        else
            echo "-- $name --device $side: ok in $(( SECONDS - t0 ))s"
        fi
    done
done

echo
echo "== table"
python benchmarks/gpu_table.py --markdown "$OUT_DIR"
TABLE_RC=$?

echo
echo "== summary after $(( SECONDS - START ))s"
echo "CUDA tests exit status: $TEST_RC"
if (( ${#FAILED_RUNS[@]} )); then
    echo "benchmark runs without results (name/side:exit): ${FAILED_RUNS[*]}"
else
    echo "all benchmark runs succeeded"
fi
(( TABLE_RC == 0 )) || echo "gpu_table.py failed (exit $TABLE_RC)"
if (( TEST_RC != 0 )); then
    exit 1
fi
exit 0
