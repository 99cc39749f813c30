"""The PyTorch side of `tchcv bench`: the same work in PyTorch eager, one module per benchmark.

    python bench/reference.py loss|encode|data|train-step|coco-eval|train [ARGS...]

Each prints one JSON line with `median_ms` (and benchmark-specific numbers). `tchcv bench <work>`
runs this script itself on the same inputs and reports both timings and the ratio.

| work | module | what it times |
|---|---|---|
| loss | loss_reference.py | torchcv SSDLoss (double sort), torchvision-style sigmoid focal loss, softmax focal |
| encode | encode_reference.py | torchcv SSDBoxCoder.encode / RetinaBoxCoder.encode per image |
| data | data_reference.py | PIL decode + torchcv SSD transforms + encode, torch DataLoader workers |
| train-step | train_step_reference.py | detector forward + SSD loss + backward + torch.optim.SGD step |
| coco-eval | coco_eval_reference.py | pycocotools COCOeval (bbox): evaluate + accumulate + summarize, one thread |
| train | train_reference.py | a whole training run: DataLoader workers, augmentation, encoding, SSD, SSDLoss, optimizer |
"""

import runpy
import sys
from pathlib import Path

MODULES = {
    "loss": "loss_reference.py",
    "encode": "encode_reference.py",
    "data": "data_reference.py",
    "train-step": "train_step_reference.py",
    "coco-eval": "coco_eval_reference.py",
    "train": "train_reference.py",
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in MODULES:
        sys.exit(f"usage: reference.py {{{'|'.join(MODULES)}}} [ARGS...]")
    work = sys.argv[1]
    path = Path(__file__).resolve().parent / MODULES[work]
    sys.argv = [str(path)] + sys.argv[2:]
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
