"""Proposal recall as COCO's AR for proposals, for tests/eval_recall.rs.

    python tests/reference/proposal_recall.py --case CASE.safetensors --limits 100,300,1000

CASE.safetensors holds `proposals [P, 4]` and `objects [G, 4]` (float32 xyxy, every image's
rows one after the other; proposals best first within an image) and `proposal_counts [N]`,
`object_counts [N]` (int64). Prints one JSON line: `found[limit][threshold]` (objects taken by
the first `limit` proposals of their image, summed over the images), `objects`, `recall` and
`average_recall` per limit.

IoU is torchvision.ops.box_iou (float32). Matching follows pycocotools' COCOeval.evaluateImg for
one category, every area, no ignored or crowd objects: proposals in order; each takes, among the
objects no proposal has taken, the one whose IoU is >= the running best (starting at
min(t, 1 - 1e-10)), so the last of equal IoUs wins. IoU thresholds: np.linspace(.5, .95, 10).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceError, run_cli  # noqa: E402

THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)


def taken_by(iou, threshold):
    """COCOeval's greedy matching of one image at one threshold: for each object, the index
    of the proposal that took it, or -1."""
    n_props, n_objs = iou.shape
    taken = np.full(n_objs, -1)
    for d in range(n_props):
        best, m = min(threshold, 1 - 1e-10), -1
        for g in range(n_objs):
            if taken[g] >= 0:
                continue
            if iou[d, g] < best:
                continue
            best, m = iou[d, g], g
        if m >= 0:
            taken[m] = d
    return taken


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', required=True)
    parser.add_argument('--limits', default='100,300,1000')
    args = parser.parse_args()
    limits = [int(x) for x in args.limits.split(',')]
    t = load_file(args.case)
    for key in ('proposals', 'objects', 'proposal_counts', 'object_counts'):
        if key not in t:
            raise ReferenceError(f'{args.case}: no {key!r}')
    props = torch.split(t['proposals'], t['proposal_counts'].tolist())
    objs = torch.split(t['objects'], t['object_counts'].tolist())
    found = np.zeros((len(limits), len(THRESHOLDS)), dtype=np.int64)
    for p, o in zip(props, objs):
        p = p[:max(limits)]
        iou = box_iou(p.float(), o.float()).numpy().astype(np.float64)
        for ti, thr in enumerate(THRESHOLDS):
            taken = taken_by(iou, float(thr))
            for li, limit in enumerate(limits):
                found[li, ti] += int(((taken >= 0) & (taken < limit)).sum())
    objects = int(t['object_counts'].sum())
    recall = found / max(objects, 1)
    print(json.dumps({
        'limits': limits,
        'thresholds': THRESHOLDS.tolist(),
        'objects': objects,
        'found': found.tolist(),
        'recall': recall.tolist(),
        'average_recall': recall.mean(axis=1).tolist(),
    }))


if __name__ == '__main__':
    run_cli(main)
