#!/usr/bin/env bash
# On a GPU machine with python3 (torch 2.11.0+cu130, numpy, safetensors) and no Rust: the CUDA
# parity tests, then every benchmark with --device cuda, using the binaries scripts/gpu-prepare.sh
# put in .gpu/. Output goes to stdout and to $OUT (or gpu-out/): gpu-bench.log (all of it),
# tests/<name>.log (each test binary's whole output), bench/ (JSON rows, chart).
#
# Time: the device tool allows 600 s a command and 15 minutes a session, machine start
# included. The timeouts below add up to at most 60 + 7 x 35 + 3 x 30 + 190 = 585 s, and a normal run
# takes far less (the tests some seconds each, the benchmarks about two minutes); TIME_SCALE=2
# doubles them all for a slower machine.
# scripts/gpu-rehearse.sh runs this here first, on the CPU (GPU_BENCH_DEVICE=cpu BENCH_QUICK=1).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-out}
mkdir -p "$out/tests"
exec > >(tee "$out/gpu-bench.log") 2>&1
scale=${TIME_SCALE:-1}
python=$(command -v python3) || { echo "!! python3 is not on PATH"; exit 1; }
export LD_LIBRARY_PATH="$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TCHCV_PYTHON="$python" TCHCV_REPO="$PWD" TCHCV_BIN="$PWD/.gpu/tchcv" TCHCV_BENCH_DIR="$PWD/bench"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
.gpu/tchcv info

device=${GPU_BENCH_DEVICE:-cuda}
status=0

# test_run NAME SECONDS FILTER...: one test binary, its whole output in $out/tests/NAME.log and
# its last lines here.
test_run() {
    local name=$1 seconds=$(($2 * scale))
    shift 2
    echo "-- $name $*"
    timeout "$seconds" ".gpu/test_$name" --test-threads 1 "$@" > "$out/tests/$name.log" 2>&1
    local rc=$?
    grep -E '^test |SKIPPED|panicked|test result' "$out/tests/$name.log" | tail -n 30
    if [ "$rc" != 0 ]; then
        echo "!! test_$name FAILED (exit $rc$([ "$rc" = 124 ] && echo ": ran past ${seconds} s"))"
        status=1
    fi
}

echo "== the Python reference from these binaries (CPU cases)"
test_run box_parity 60 nms_matches_reference_greedy_cpu
echo "== CUDA parity (without a GPU these tests print SKIPPED with the reason)"
for t in cuda_linkage loss_parity box_parity models_parity device data_loader; do
    test_run "$t" 35 cuda
done
echo "-- dist (NCCL, world size 1)"
test_run dist 35 nccl
echo "-- the RPN's loss and proposals on CUDA"
test_run rpn_parity 30 cuda
echo "-- the second stage on CUDA: RoIAlign, MultiScaleRoIAlign, fastrcnn_loss, the box head"
test_run roi_parity 30 cuda
echo "-- the whole Faster R-CNN (ResNet-50-FPN) against torchvision's, eval mode, on CUDA"
test_run faster_rcnn 30 cuda

echo "== benchmarks on $device"
# The end-to-end training rows at a throughput size (their mAP says nothing at this length): the
# full accuracy row (3 seeds x 1500 iterations) does not fit the device's minutes.
export BENCH_TRAIN_ITERS_SMALL=${BENCH_TRAIN_ITERS_SMALL:-100} BENCH_TRAIN_SEEDS=${BENCH_TRAIN_SEEDS:-0}
export BENCH_TRAIN_ITERS_SSD300=${BENCH_TRAIN_ITERS_SSD300:-30}
TCHCV_BIN="$PWD/.gpu/tchcv" BENCH_OUT="$out/bench" timeout $((190 * scale)) scripts/bench.sh "$device"
rc=$?
[ "$rc" = 124 ] && echo "!! scripts/bench.sh ran past its $((190 * scale)) s and was stopped"
[ "$rc" = 0 ] || status=1
echo "== gpu-bench: $([ $status = 0 ] && echo ok || echo 'something FAILED (above)')"
exit $status
