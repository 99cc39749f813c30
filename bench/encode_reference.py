#!/usr/bin/env python
"""The PyTorch side of `tchcv bench encode`: torchcv-style per-image encode
(tests/reference/box_coder.py) of a batch of ground-truth sets, then torch.stack as the default
collate does. Prints one JSON line: {"median_ms": ..., "num_pos": ...}.

    encode_reference.py --spec models/ssd300.json --case CASE.safetensors [--repeat R] [--threads T]

CASE holds boxes [T,4] f32 (xyxy, model-input pixels), labels [T] i64 and counts [N] i64.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
import box_coder  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    spec = box_coder.load_spec(args.spec)
    anchors = box_coder.anchors_for(spec)
    case = load_file(args.case)
    images = []
    start = 0
    for n in case["counts"].tolist():
        images.append((case["boxes"][start:start + n], case["labels"][start:start + n]))
        start += n

    def encode_batch():
        locs, clss = [], []
        for boxes, labels in images:
            loc, cls, _ = box_coder.encode(spec, anchors, boxes, labels)
            locs.append(loc)
            clss.append(cls)
        return torch.stack(locs), torch.stack(clss)

    for _ in range(2):
        _, cls = encode_batch()
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        encode_batch()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times), "num_pos": int((cls > 0).sum()),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
