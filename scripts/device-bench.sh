#!/usr/bin/env bash
# One call on the lent GPU machine: correctness on the real adapter, then mhc bench and the
# PyTorch peers on the same card. Expects the binary in .dev/mhc, the peers in .dev/, and the
# Vulkan loader's .deb files in .gl/ (see docs/PERFORMANCE.md). Writes logs and JSON to $OUT.
# ITERS: timed runs an operator (default 100); PEERS=0 skips PyTorch; BENCH_ARGS: more options.
# Then the bench again by stage, and the tensor-core path of mhc_pre forward (MHC_COOP=1):
# check and bench by stage.
set -uo pipefail
source "$(dirname "$0")/device-env.sh"
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
./.dev/mhc info 2>&1 | tee "$OUT/info.txt"
./.dev/mhc check --quick 2>&1 | tail -3 | tee "$OUT/check.txt"
./.dev/mhc bench --iters "${ITERS:-100}" --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
# Where each operator's time goes: every entry point timed inside the pass.
./.dev/mhc bench --stages --iters "${ITERS:-100}" --json "$OUT/bench-stages.json" ${BENCH_ARGS:-} 2>&1 |
    tee "$OUT/bench-stages.txt"
MHC_COOP=1 ./.dev/mhc check --quick 2>&1 | tail -3 | tee "$OUT/check-coop.txt"
MHC_COOP=1 ./.dev/mhc bench --stages --op pre-forward --iters "${ITERS:-100}" --json "$OUT/bench-coop.json" ${BENCH_ARGS:-} 2>&1 |
    tee "$OUT/bench-coop.txt"
if [ "${PEERS:-1}" = 1 ]; then
    python3 .dev/torch_mhc.py --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt"
fi
