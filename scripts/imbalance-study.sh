#!/usr/bin/env bash
# The imbalance cures on one dataset, one model, one schedule and the same seeds, then compared:
#
#   scripts/imbalance-study.sh DATA --sets SETS --test-sets SETS --model SPEC [--iters K]
#       [--seeds 0,1,2] [--out DIR] [--cures a,b,...] [--two-stage-model SPEC]
#       [-- more tchcv train flags]
#
# Cures (each an ordinary `tchcv train` in DIR/<cure>/seed-<s>, so an interrupted study resumes
# where it stopped, and a finished cure is not trained again):
#   ssd-hard              SSD loss, hard negative mining 3:1 (torchcv, SSD paper)
#   ssd-random            SSD loss, 3:1 negatives drawn at random
#   ssd-all               SSD loss, every negative (no mining)
#   sigmoid-focal         sigmoid focal loss, alpha 0.25, gamma 2, with RetinaNet's recipe: the
#                         spec's loss "focal" (no background column; the class bias starts at the
#                         prior 0.01) and max-IoU matching 0.5 / 0.4 (the spec is derived here)
#   softmax-focal-dataset softmax focal loss, gamma 2, class weights from the training set's
#                         histogram (background = foreground sum / 3)
#   softmax-focal-batch   softmax focal loss, gamma 2, class weights from each batch
# and, asked for with --cures, Faster R-CNN (--two-stage-model SPEC, default
# models/faster_rcnn_small.json) with torchvision's RPN sampler and, on the second stage:
#   frcnn-random          torchvision's RoI sampler (up to 25% foreground), cross entropy
#   frcnn-ohem            OHEM: the hardest RoIs after NMS 0.7, cross entropy
#   frcnn-all-focal       every proposal, softmax focal loss (gamma 2)
# Then `tchcv compare` of every run writes DIR/compare.md, compare.json and the pictures (the
# two-stage runs, another network, in DIR/two-stage/).
# Schedule defaults (a CPU study): batch 16, Adam lr 3e-3, no weight decay, warm-up 100, cosine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${TCHCV_BIN:-target/release/tchcv}
python=${TCHCV_PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${TCHCV_PYTHON:-}" ] && python=.venv/bin/python

usage() { sed -n '2,7p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
data=$1; shift
sets=trainval; test_sets=test; model=; iters=1000; seeds=0,1,2; out=; extra=()
two_stage_model=models/faster_rcnn_small.json
cures=ssd-hard,ssd-random,ssd-all,sigmoid-focal,softmax-focal-dataset,softmax-focal-batch
while [ $# -gt 0 ]; do
    case $1 in
        --sets) sets=$2; shift 2 ;;
        --test-sets) test_sets=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --cures) cures=$2; shift 2 ;;
        --two-stage-model) two_stage_model=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "imbalance-study: unknown flag $1" >&2; usage ;;
    esac
done
[ -n "$model" ] || { echo "imbalance-study: --model SPEC is required" >&2; usage; }
[ -d "$data" ] || { echo "imbalance-study: $data: not a folder" >&2; exit 2; }
out=${out:-runs/study-$(basename "$data")}
mkdir -p "$out/specs"

# The sigmoid focal loss's spec: the same network, loss "focal", RetinaNet's matching.
focal_spec="$out/specs/$(basename "$model" .json)-focal.json"
"$python" - "$model" "$focal_spec" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["name"] = spec["name"] + "_focal"
spec["loss"] = "focal"
spec["matching"] = {"rule": "max_iou", "pos_iou": 0.5, "neg_iou": 0.4, "band": "torchvision",
                    "allow_low_quality": False}
spec.pop("num_anchors", None)
json.dump(spec, open(sys.argv[2], "w"), indent=2)
PY

common=(--data "$data" --sets "$sets" --test-sets "$test_sets" --iters "$iters" --batch 16
        --optimizer adam --lr 0.003 --weight-decay 0 --warmup 100 --lr-schedule cosine
        --device cpu --log-every 100)

cure_flags() {
    case $1 in
        ssd-hard) echo "--model $model --loss ssd --neg-mining hard --neg-pos-ratio 3" ;;
        ssd-random) echo "--model $model --loss ssd --neg-mining random --neg-pos-ratio 3" ;;
        ssd-all) echo "--model $model --loss ssd --neg-mining all" ;;
        sigmoid-focal) echo "--model $focal_spec --loss focal" ;;
        softmax-focal-dataset) echo "--model $model --loss softmax-focal --class-weights dataset" ;;
        softmax-focal-batch) echo "--model $model --loss softmax-focal --class-weights batch" ;;
        frcnn-random) echo "--model $two_stage_model --roi-sampler random --roi-loss cross-entropy" ;;
        frcnn-ohem) echo "--model $two_stage_model --roi-sampler ohem --roi-loss cross-entropy" ;;
        frcnn-all-focal) echo "--model $two_stage_model --roi-sampler all --roi-loss softmax-focal" ;;
        *) echo "imbalance-study: unknown cure $1" >&2; return 2 ;;
    esac
}

runs=(); two_stage_runs=()
IFS=, read -ra cure_list <<<"$cures"
IFS=, read -ra seed_list <<<"$seeds"
for cure in "${cure_list[@]}"; do
    flags=$(cure_flags "$cure")
    for s in "${seed_list[@]}"; do
        case $cure in
            frcnn-*) two_stage_runs+=("$out/$cure/seed-$s") ;;
            *) runs+=("$out/$cure/seed-$s") ;;
        esac
    done
    if [ -f "$out/$cure/compare.md" ]; then
        echo "== $cure: done before ($out/$cure)"
        continue
    fi
    resume=()
    ls "$out/$cure"/seed-*/last.safetensors >/dev/null 2>&1 && resume=(--resume)
    echo "== $cure: $flags, seeds $seeds${resume:+ (resumed)}"
    # shellcheck disable=SC2086
    "$bin" train "${common[@]}" $flags --seeds "$seeds" --out "$out/$cure" "${resume[@]}" "${extra[@]}"
done

if [ ${#runs[@]} -gt 0 ]; then
    echo "== compare"
    "$bin" compare "${runs[@]}" --out "$out"
fi
if [ ${#two_stage_runs[@]} -gt 0 ]; then
    echo "== compare the two-stage cures"
    "$bin" compare "${two_stage_runs[@]}" --out "$out/two-stage"
fi
