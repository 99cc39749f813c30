#!/usr/bin/env bash
# `make demo`: what tchcv does, end to end, on this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/release/tchcv
out=${DEMO_OUT:-demo}
mkdir -p "$out"

echo "== tchcv info"
"$bin" info

echo "== the loss core on a committed fixture (SSD hard negative mining, 3:1)"
"$bin" loss --input tests/fixtures/losses/ssd_basic.safetensors --loss ssd --grads "$out/ssd_grads.safetensors"
echo "   the PyTorch reference says:"
python - <<'PY'
import json
e = json.load(open("tests/fixtures/losses/ssd_basic.json"))["expected"]
print("  ", json.dumps({k: e[k] for k in ("total", "loc_per_pos", "cls_per_pos", "num_pos", "num_neg")}))
PY
echo "== sigmoid focal loss (RetinaNet) and softmax focal loss with histogram class weights"
"$bin" loss --input tests/fixtures/losses/focal_default.safetensors --loss focal
"$bin" loss --input tests/fixtures/losses/sfocal_none.safetensors --loss softmax-focal --class-weights batch --background-weight fg-sum-over-3

echo "== speed: SSD loss forward+backward, N=32 A=8732 C=21, against torchcv's double sort in PyTorch"
"$bin" bench loss --loss ssd --repeat 10
