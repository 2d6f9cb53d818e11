#!/usr/bin/env bash
# One call on the lent GPU machine: times several builds of mhc side by side, in turn, ROUNDS
# times (separate processes; alternating shows how far a number moves between processes).
# Usage: OPS="pre-backward post-backward" bash scripts/device-compare.sh .dev/mhc-a .dev/mhc-b
# Expects the Vulkan loader's .deb files in .gl/ (see docs/PERFORMANCE.md). Prints one table
# of medians (us) per operator and shape, a column per build and round; the log goes to $OUT.
# OPS: operators (default: all); ROUNDS (default 2); ITERS: timed runs (default 50);
# BENCH_ARGS: more options of `mhc bench` (e.g. --shape 4096,4,2560); STOP_AFTER_S (default
# 480): no new run starts once this script has run that long, so the table is printed before
# a device call's 600 s limit (a bench of three operators takes about 45 s on an H200).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
source "$(dirname "$0")/device-env.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ops=()
for op in ${OPS:-}; do ops+=(--op "$op"); done
log="$OUT/compare.log"
: >"$log"
for round in $(seq "${ROUNDS:-2}"); do
    for bin in "$@"; do
        if [ "$SECONDS" -ge "${STOP_AFTER_S:-480}" ]; then
            echo "device-compare: stopped at ${SECONDS} s, before $(basename "$bin") round $round" >&2
            break 2
        fi
        echo "== $(basename "$bin") round $round" >>"$log"
        "$bin" bench "${ops[@]}" --iters "${ITERS:-50}" ${BENCH_ARGS:-} >>"$log" 2>&1 || echo "== failed: $bin" >>"$log"
    done
done
# Rows of `mhc bench` start with the operator name and T,n,D; the time is the third column.
awk '
    /^== failed/ { print; next }
    /^== / { col = $2 "#" $4; if (!(col in seen)) { seen[col] = 1; cols[++nc] = col } next }
    $2 ~ /^[0-9]+,[0-9]+,[0-9]+$/ && $3 ~ /^[0-9.]+$/ {
        key = $1 " " $2
        if (!(key in known)) { known[key] = 1; keys[++nk] = key }
        t[key, col] = $3
    }
    END {
        printf "%-36s", "operator T,n,D"
        for (c = 1; c <= nc; c++) printf " %14s", cols[c]
        printf "\n"
        for (k = 1; k <= nk; k++) {
            printf "%-36s", keys[k]
            for (c = 1; c <= nc; c++) printf " %14s", ((keys[k], cols[c]) in t) ? t[keys[k], cols[c]] : "-"
            printf "\n"
        }
    }' "$log" | tee "$OUT/compare.txt"
