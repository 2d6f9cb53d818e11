#!/usr/bin/env bash
# On the lent GPU machine: runs test binaries (built here with `cargo test --release --no-run`
# and carried) RUNS times each, in turn, and catches a run that stops making progress: the
# driver deadlock of the sixteenth session (docs/perf-history.md) showed only as a binary
# that never ended. A run still going after HANG_S seconds (default 40; the suites take 3-12 s
# on an H200) is reported with its threads' backtraces when gdb is carried (GDB_TAR: a
# tar.xz of `g/` (gdb, its libraries and ld-linux), `py/` (PYTHONHOME) and `gdbdata/`), then
# killed. Runs start in a scratch folder with core dumps on, so a run that crashes (the
# seventeenth session's driver segfault) leaves a core there, read with gdb when carried
# (where the kernel's core_pattern is a plain file name, as on the lent machines). Prints one
# line per run and a summary; logs and backtraces go to $OUT.
# Usage: RUNS=10 bash scripts/device-tests.sh .dev/gpu_forward .dev/gpu_backward .dev/layer
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TEST_BINARY..." >&2; exit 2; }
source "$(dirname "$0")/device-env.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
gdb=()
if [ -n "${GDB_TAR:-}" ]; then
    mkdir -p /tmp/gdb-carried && tar xJf "$GDB_TAR" -C /tmp/gdb-carried
    g=/tmp/gdb-carried
    gdb=(env PYTHONHOME=$g/py $g/g/ld-linux-x86-64.so.2 --library-path $g/g $g/g/gdb -nx --data-directory=$g/gdbdata)
fi
ulimit -c unlimited 2>/dev/null || echo "device-tests: core dumps stay off (ulimit)"
cores=$(mktemp -d)
passed=0 failed=0 hung=0
for bin in "$@"; do
    bin=$(realpath "$bin")
    for run in $(seq "${RUNS:-3}"); do
        name="$(basename "$bin")-$run"
        (cd "$cores" && exec "$bin") >"$OUT/$name.log" 2>&1 &
        pid=$!
        s=0
        while kill -0 $pid 2>/dev/null && [ $s -lt "${HANG_S:-40}" ]; do sleep 1; s=$((s + 1)); done
        if kill -0 $pid 2>/dev/null; then
            hung=$((hung + 1))
            echo "$name: HUNG after ${s} s (GPU $(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader 2>/dev/null))"
            if [ ${#gdb[@]} -gt 0 ]; then
                timeout 60 "${gdb[@]}" -p $pid -batch -ex "thread apply all bt 40" >"$OUT/bt-$name.txt" 2>&1
                echo "  backtraces: $OUT/bt-$name.txt"
            fi
            kill -9 $pid
            wait $pid 2>/dev/null
            continue
        fi
        if wait $pid; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
        fi
        echo "$name: $(grep -E '^test result' "$OUT/$name.log" || echo 'no test result')"
        grep -E '^---- |panicked' -A3 "$OUT/$name.log" | head -12
        for core in "$cores"/core*; do
            [ -e "$core" ] || continue
            if [ ${#gdb[@]} -gt 0 ]; then
                timeout 120 "${gdb[@]}" -batch -ex "thread apply all bt 40" "$bin" "$core" >"$OUT/bt-$name.txt" 2>&1
                rm -f "$core"
                echo "  crashed; backtraces of its core: $OUT/bt-$name.txt"
            else
                mv "$core" "$OUT/core-$name"
                echo "  crashed; its core: $OUT/core-$name (carry gdb with GDB_TAR to read it here)"
            fi
        done
    done
done
rm -rf "$cores"
echo "device-tests: $passed passed, $failed failed, $hung hung"
