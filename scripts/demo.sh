#!/usr/bin/env bash
# `make demo`: synthetic VOC data -> train the small SSD on CPU -> evaluate (VOC mAP) -> plots
# and pictures. Everything lands in $DEMO_OUT (default demo/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=target/release/tchcv
out=${DEMO_OUT:-demo}
iters=${DEMO_ITERS:-1500}
start=$(date +%s)
rm -rf "$out/run" "$out/detections"
mkdir -p "$out"

echo "== tchcv info"
"$bin" info

echo "== the loss core, checked against the PyTorch reference's numbers for a committed case"
"$bin" loss --input tests/fixtures/losses/ssd_basic.safetensors --loss ssd
python - <<'PY'
import json
e = json.load(open("tests/fixtures/losses/ssd_basic.json"))["expected"]
print("PyTorch reference:", json.dumps({k: e[k] for k in ("total", "loc_per_pos", "cls_per_pos", "num_pos", "num_neg")}))
PY

echo "== synthetic VOC data: 2000 train + 200 test images of 5 shape classes"
"$bin" synth --out "$out/data" --train 2000 --test 200 --seed 0
"$bin" check-data --data "$out/data" --sets trainval,test --headers-only | head -n 20

echo "== train the small SSD (models/ssd_small.json) on CPU: $iters iterations of 32 images"
"$bin" train --data "$out/data" --sets trainval --test-sets test --model models/ssd_small.json \
    --iters "$iters" --batch 32 --optimizer adam --lr 0.004 --weight-decay 0 --warmup 100 \
    --lr-schedule cosine --no-augment zoom-out --device cpu --seed 0 --out "$out/run" --log-every 50

echo "== evaluate the best checkpoint on the test split (VOC devkit AP)"
"$bin" eval --data "$out/data" --sets test --checkpoint "$out/run/best.safetensors" \
    --out "$out/run/detections" --json "$out/run/eval-test.json"

echo "== draw detections on a few test images"
images=$(head -n 6 "$out/data/ImageSets/Main/test.txt" | sed "s|^|$out/data/JPEGImages/|; s|$|.jpg|")
# shellcheck disable=SC2086
"$bin" detect --checkpoint "$out/run/best.safetensors" $images --out "$out/detections" --score 0.4

python - "$out/run/eval-test.json" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["map_voc07"]
print(f"\nVOC07 mAP@0.5 on the synthetic test split: {m:.4f} (area: {r['map_area']:.4f}); "
      f"target >= 0.5: {'met' if m >= 0.5 else 'MISSED'}; demo took {sys.argv[2]} s")
PY
echo "loss plot: $out/run/loss.png | PR curves: $out/run/pr.png | pictures: $out/detections/"
