#!/usr/bin/env bash
# On a GPU machine with python3 (torch 2.11.0+cu130, numpy, safetensors) and no Rust: the CUDA
# parity tests, then every benchmark with --device cuda, using the binaries scripts/gpu-prepare.sh
# put in .gpu/. Meant to finish within 5 minutes. Output goes to stdout and $OUT (or gpu-out/).
# scripts/gpu-rehearse.sh runs it here first, on the CPU (GPU_BENCH_DEVICE=cpu BENCH_QUICK=1).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TCHCV_PYTHON=python3 TCHCV_REPO="$PWD" TCHCV_BIN="$PWD/.gpu/tchcv" TCHCV_BENCH_DIR="$PWD/bench"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
.gpu/tchcv info

device=${GPU_BENCH_DEVICE:-cuda}
status=0
echo "== CUDA parity (without a GPU these tests print SKIPPED with the reason)"
for t in cuda_linkage loss_parity box_parity models_parity device; do
    echo "-- $t"
    timeout 120 ".gpu/test_$t" --test-threads 1 cuda 2>&1 | tail -n 25
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "!! test_$t FAILED (exit $rc; 124: timed out)"; status=1; }
done
echo "-- dist (NCCL, world size 1)"
timeout 60 .gpu/test_dist --test-threads 1 nccl 2>&1 | tail -n 10
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || { echo "!! test_dist FAILED (exit $rc)"; status=1; }

echo "== benchmarks on $device"
TCHCV_BIN="$PWD/.gpu/tchcv" BENCH_OUT="$out/bench" timeout 240 scripts/bench.sh "$device" 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "!! scripts/bench.sh ran past its 240 s and was stopped"
[ "$rc" = 0 ] || status=1
echo "== gpu-bench: $([ $status = 0 ] && echo ok || echo 'something FAILED (above)')"
exit $status
