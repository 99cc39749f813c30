#!/usr/bin/env bash
# Every benchmark, tchcv and its PyTorch counterpart side by side in one run on this machine:
#   scripts/bench.sh [cpu|cuda]
# Prints each row (both timings and the ratio), writes the JSON rows and a bar chart of the
# speed-ups to $BENCH_OUT (default bench-out/<device>/). The binary is target/release/tchcv, or
# $TCHCV_BIN (the GPU run uses a prebuilt one). A benchmark that fails does not stop the others:
# each failure, and each benchmark skipped with its reason, is listed at the end, and the exit
# status is 1 when one failed. BENCH_QUICK=1 runs every benchmark once at a small size (a check
# of the script, not a measurement).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
device=${1:-cpu}
bin=${TCHCV_BIN:-target/release/tchcv}
out=${BENCH_OUT:-bench-out/$device}
mkdir -p "$out"
rm -f "$out"/*.json

# The project venv's Python when there is one (as `tchcv bench` itself looks for it).
default_python=python3
[ -x .venv/bin/python ] && default_python=$PWD/.venv/bin/python
python=${TCHCV_PYTHON:-$default_python}
failed=()
skipped=()

run() {
    local name=$1
    shift
    echo "-- $name: tchcv bench $*"
    if ! "$bin" bench "$@" --device "$device" --json "$out/$name.json"; then
        echo "!! $name FAILED"
        failed+=("$name")
    fi
}

skip() {
    echo "-- $1: SKIPPED ($2)"
    skipped+=("$1: $2")
}

if [ "$device" = cuda ]; then big=32; step_batch=32; repeat=20; else big=32; step_batch=4; repeat=10; fi
small_batch=32
variant_model=models/ssd300.json
step_repeat=(--repeat 3 --warmup 1)
small_repeat=(--repeat 5 --warmup 2)
if [ -n "${BENCH_QUICK:-}" ]; then
    big=4; step_batch=2; small_batch=4; repeat=1
    variant_model=models/ssd_small.json  # bf16 is emulated on most CPUs: SSD300 takes minutes
    step_repeat=(--repeat 1 --warmup 0)
    small_repeat=(--repeat 1 --warmup 0)
fi

echo "== machine: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
"$bin" info | sed -n '1,8p'

echo "== losses: forward + backward, default options (check_finite on, as a library user gets them)"
run loss_ssd_a8732_n32 loss --loss ssd --n "$big" --a 8732 --c 21 --repeat "$repeat"
run loss_focal_retina512_n8 loss --loss focal --n 8 --a 49104 --c 20 --repeat "$repeat"
run loss_softmax_focal_a8732_n32 loss --loss softmax-focal --n "$big" --a 8732 --c 21 --repeat "$repeat"
echo "== the same with check_finite off (the training loop's setting): the check's cost"
run loss_ssd_a8732_n32_unchecked loss --loss ssd --n "$big" --a 8732 --c 21 --repeat "$repeat" --no-check-finite
run loss_focal_retina512_n8_unchecked loss --loss focal --n 8 --a 49104 --c 20 --repeat "$repeat" --no-check-finite
run loss_softmax_focal_a8732_n32_unchecked loss --loss softmax-focal --n "$big" --a 8732 --c 21 --repeat "$repeat" --no-check-finite
echo "== SSD loss: growth with A and N"
if [ -z "${BENCH_QUICK:-}" ]; then
    run loss_ssd_a24564_n32 loss --loss ssd --n "$big" --a 24564 --c 21 --repeat "$repeat"
    run loss_ssd_a76725_n8 loss --loss ssd --n 8 --a 76725 --c 21 --repeat "$repeat"
    run loss_ssd_a8732_n8 loss --loss ssd --n 8 --a 8732 --c 21 --repeat "$repeat"
    run loss_ssd_a8732_n64 loss --loss ssd --n 64 --a 8732 --c 21 --repeat "$repeat"
fi

echo "== target encoding: 32 images x up to 20 boxes, SSD300 anchors"
run encode_ssd300 encode --model models/ssd300.json --images 32 --max-boxes 20

echo "== data pipeline: decode + augment + encode at 300x300 (CPU work on every machine)"
if "$python" -c 'import PIL' 2>/dev/null; then
    run data_ssd300 data --model models/ssd300.json --workers "$(nproc)" \
        ${BENCH_QUICK:+--images 8}
else
    skip data_ssd300 "its PyTorch side decodes with PIL, which $python cannot import"
fi

echo "== COCO box evaluation: 5000 images x 100 detections, tchcv and pycocotools on one thread each"
if "$python" -c 'import pycocotools' 2>/dev/null; then
    if [ -n "${BENCH_QUICK:-}" ]; then
        run coco_eval_5000x100 coco-eval --images 50 --detections 20 --repeat 1
    else
        run coco_eval_5000x100 coco-eval --images 5000 --detections 100
    fi
else
    skip coco_eval_5000x100 "its reference is pycocotools, which $python cannot import"
fi

echo "== training step: forward + SSD loss + backward + SGD"
run train_step_ssd300 train-step --model models/ssd300.json --batch "$step_batch" "${step_repeat[@]}"
if [ "$device" = cuda ] || [ -n "${BENCH_QUICK:-}" ]; then
    # The H200's variants: bf16 autocast, channels-last, both, cuDNN's autotuner.
    run train_step_ssd300_bf16 train-step --model "$variant_model" --batch "$step_batch" \
        --autocast bf16 "${step_repeat[@]}"
    run train_step_ssd300_channels_last train-step --model "$variant_model" \
        --batch "$step_batch" --channels-last "${step_repeat[@]}"
    run train_step_ssd300_bf16_channels_last train-step --model "$variant_model" \
        --batch "$step_batch" --autocast bf16 --channels-last "${step_repeat[@]}"
    # cuDNN's autotuner, which tchcv train turns on for CUDA (both sides; off in the rows above).
    run train_step_ssd300_cudnn_benchmark train-step --model "$variant_model" \
        --batch "$step_batch" --cudnn-benchmark "${step_repeat[@]}"
fi
run train_step_ssd_small train-step --model models/ssd_small.json --batch "$small_batch" "${small_repeat[@]}"
echo "== Faster R-CNN training step: both stages' matching, sampling and losses, against torchvision's FasterRCNN"
if "$python" -c 'import torchvision' 2>/dev/null; then
    run train_step_faster_rcnn_small train-step --model models/faster_rcnn_small.json --classes 5 \
        --batch "$small_batch" "${small_repeat[@]}"
else
    skip train_step_faster_rcnn_small "its reference is torchvision's FasterRCNN, which $python cannot import"
fi
if [ "$device" = cpu ]; then
    # On the CPU the variants are timed on the small SSD (SSD300 takes seconds per step).
    run train_step_ssd_small_bf16 train-step --model models/ssd_small.json --batch "$small_batch" \
        --autocast bf16 "${small_repeat[@]}"
    run train_step_ssd_small_channels_last train-step --model models/ssd_small.json \
        --batch "$small_batch" --channels-last "${small_repeat[@]}"
fi

echo "== training end to end: tchcv train against the ordinary PyTorch script on the same synthetic"
echo "   VOC data (images/s, start-up, data wait, peak memory, VOC07 mAP after equal iterations)"
if "$python" -c 'import PIL' 2>/dev/null; then
    train_data="$out/train-data"
    if [ -n "${BENCH_QUICK:-}" ]; then
        "$bin" synth --out "$train_data" --train 16 --test 8 --size 128x96 --seed 0 >/dev/null
        e2e_small=(--batch 4 --iters 2 --seeds 0 --probe-iters 1 --snapshot-every 1)
        e2e_300=(--batch 2 --iters 2 --seeds 0 --probe-iters 1)
    else
        # make demo's data and recipe; BENCH_TRAIN_* shorten the runs (SSD300 takes seconds a step).
        "$bin" synth --out "$train_data" --train 2000 --test 200 --seed 0 >/dev/null
        small_iters=${BENCH_TRAIN_ITERS_SMALL:-1500}
        # Ten snapshots a run: the mAP over training time, and the time to reach it.
        e2e_small=(--batch 32 --iters "$small_iters" --seeds "${BENCH_TRAIN_SEEDS:-0,1,2}"
            --snapshot-every "$(( small_iters >= 10 ? small_iters / 10 : 1 ))")
        e2e_300=(--batch 8 --iters "${BENCH_TRAIN_ITERS_SSD300:-300}" --seeds "${BENCH_TRAIN_SEEDS_SSD300:-0}")
    fi
    run train_e2e_ssd_small train --model models/ssd_small.json --data "$train_data" "${e2e_small[@]}" \
        --curve-chart "$out/time-to-map-ssd_small.png"
    run train_e2e_ssd300 train --model models/ssd300.json --data "$train_data" "${e2e_300[@]}"
    # Where one tchcv iteration's time goes (no PyTorch side, so no bar in the chart).
    run train_profile_ssd_small train --profile --model models/ssd_small.json --data "$train_data" \
        "${e2e_small[@]:0:4}" ${BENCH_QUICK:+--profile-iters 1}
else
    skip train_e2e "its PyTorch side decodes with PIL, which $python cannot import"
fi

shopt -s nullglob
reports=("$out"/*.json)
if [ ${#reports[@]} -gt 0 ]; then
    "$bin" bench chart "${reports[@]}" --out "$out/speedup.png" \
        --title "tchcv vs PyTorch eager ($device, $(date -u +%Y-%m-%d))" || failed+=(chart)
fi
echo "reports and chart in $out/"
for s in ${skipped[@]+"${skipped[@]}"}; do echo "skipped: $s"; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
