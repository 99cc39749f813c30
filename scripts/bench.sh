#!/usr/bin/env bash
# Every benchmark, tchcv and its PyTorch counterpart side by side in one run on this machine:
#   scripts/bench.sh [cpu|cuda]
# Prints each row (both timings and the ratio), writes the JSON rows and a bar chart of the
# speed-ups to $BENCH_OUT (default bench-out/<device>/). The binary is target/release/tchcv, or
# $TCHCV_BIN (the GPU run uses a prebuilt one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
device=${1:-cpu}
bin=${TCHCV_BIN:-target/release/tchcv}
out=${BENCH_OUT:-bench-out/$device}
mkdir -p "$out"
rm -f "$out"/*.json

run() {
    local name=$1
    shift
    echo "-- $name: tchcv bench $*"
    "$bin" bench "$@" --device "$device" --json "$out/$name.json"
}

if [ "$device" = cuda ]; then big=32; step_batch=32; repeat=20; else big=32; step_batch=4; repeat=10; fi

echo "== machine: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
"$bin" info | sed -n '1,8p'

echo "== losses: forward + backward"
run loss_ssd_a8732_n32 loss --loss ssd --n "$big" --a 8732 --c 21 --repeat "$repeat"
run loss_focal_retina512_n8 loss --loss focal --n 8 --a 49104 --c 20 --repeat "$repeat"
run loss_softmax_focal_a8732_n32 loss --loss softmax-focal --n "$big" --a 8732 --c 21 --repeat "$repeat"
echo "== SSD loss: growth with A and N"
run loss_ssd_a24564_n32 loss --loss ssd --n "$big" --a 24564 --c 21 --repeat "$repeat"
run loss_ssd_a76725_n8 loss --loss ssd --n 8 --a 76725 --c 21 --repeat "$repeat"
run loss_ssd_a8732_n8 loss --loss ssd --n 8 --a 8732 --c 21 --repeat "$repeat"
run loss_ssd_a8732_n64 loss --loss ssd --n 64 --a 8732 --c 21 --repeat "$repeat"

echo "== target encoding: 32 images x up to 20 boxes, SSD300 anchors"
run encode_ssd300 encode --model models/ssd300.json --images 32 --max-boxes 20

echo "== data pipeline: decode + augment + encode at 300x300"
run data_ssd300 data --model models/ssd300.json --workers "$(nproc)"

echo "== training step: forward + SSD loss + backward + SGD"
run train_step_ssd300 train-step --model models/ssd300.json --batch "$step_batch" --repeat 3 --warmup 1
run train_step_ssd_small train-step --model models/ssd_small.json --batch 32 --repeat 5 --warmup 2

"$bin" bench chart "$out"/*.json --out "$out/speedup.png" --title "tchcv vs PyTorch eager ($device, $(date -u +%Y-%m-%d))"
echo "reports and chart in $out/"
