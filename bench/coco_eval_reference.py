#!/usr/bin/env python
"""The Python side of `tchcv bench coco-eval`: pycocotools' COCOeval (iouType "bbox", default
parameters) on an instances file and a results file. Loading both (COCO(), loadRes) is not
timed; evaluate() + accumulate() + summarize() is, on one thread. Prints one JSON line:
{"median_ms": ..., "stats": [12 numbers], "pycocotools": version, "threads": 1}.

    coco_eval_reference.py --gt INSTANCES.json --results RESULTS.json [--repeat R]
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gt", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        gt = COCO(args.gt)
        dt = gt.loadRes(args.results)
    times = []
    stats = None
    for _ in range(max(1, args.repeat)):
        with contextlib.redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            times.append((time.perf_counter() - t0) * 1e3)
        stats = [float(s) for s in ev.stats]
    print(json.dumps({"median_ms": statistics.median(times), "stats": stats,
                      "pycocotools": importlib.metadata.version("pycocotools"), "threads": 1}))


if __name__ == "__main__":
    main()
