#!/usr/bin/env python3
"""pycocotools as the reference for tchcv's COCO box metric (tests/coco_parity.rs).

It runs pycocotools' own COCOeval (iouType "bbox", default parameters) with two additions
that the Rust side documents:
  - an annotation without `area` gets `bbox[2] * bbox[3]` and one without `iscrowd` gets 0
    (pycocotools needs both fields; tchcv reads them as optional);
  - an annotation's `ignore` field is honoured: after pycocotools' `_prepare` has set
    `ignore = iscrowd`, the subclass below sets `ignore = iscrowd or ignore` (how tchcv brings
    VOC's difficult objects in). Files without `ignore` are evaluated by pycocotools unchanged.
An empty results list (which pycocotools' loadRes cannot take) becomes a results COCO with no
annotations. Per-class AP follows detectron2's recipe: the mean of precision[:, :, k, 0, -1]
over its entries > -1, and -1 (not NaN) when there are none.

Usage:
  coco_eval.py case CASE.json [--summary-only]
      CASE = {"ground_truth": {"images", "annotations", "categories"}, "detections": [...]}
  coco_eval.py files INSTANCES.json RESULTS.json [--summary-only]
  coco_eval.py make-fixture SEED DIR  writes a small random case: DIR/small_instances.json and
                                      DIR/small_results.json
  coco_eval.py selftest               hand-checked cases

Prints one JSON object: the parameters (thresholds exactly as numpy made them), sorted
category ids, the precision [T,R,K,A,M] and recall [T,K,A,M] tables flattened in C order
(left out with --summary-only), the twelve stats, the twelve printed lines and per-class AP.
"""

import contextlib
import copy
import importlib.metadata
import io
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


class COCOevalWithIgnore(COCOeval):
    """COCOeval that keeps an annotation's own `ignore` flag (pycocotools overwrites it)."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                g["ignore"] = int(bool(g["ignore"]) or bool(g.get("tchcv_ignore", 0)))


def quiet():
    """pycocotools prints progress on stdout: send it to stderr."""
    return contextlib.redirect_stdout(sys.stderr)


def ground_truth(dataset):
    dataset = copy.deepcopy(dataset)
    for a in dataset["annotations"]:
        if a.get("area") is None:
            a["area"] = a["bbox"][2] * a["bbox"][3]
        a.setdefault("iscrowd", 0)
        a["iscrowd"] = int(a["iscrowd"])
        a["tchcv_ignore"] = int(a.get("ignore", 0))
    gt = COCO()
    gt.dataset = dataset
    with quiet():
        gt.createIndex()
    return gt


def results(gt, detections):
    if not detections:
        dt = COCO()
        dt.dataset = {"images": list(gt.dataset["images"]),
                      "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
        with quiet():
            dt.createIndex()
        return dt
    with quiet():
        return gt.loadRes(copy.deepcopy(detections))


def mean_defined(p):
    p = p[p > -1]
    return float(np.mean(p)) if p.size else -1.0


def evaluate(dataset, detections, summary_only=False):
    gt = ground_truth(dataset)
    dt = results(gt, detections)
    ev = COCOevalWithIgnore(gt, dt, "bbox")
    with quiet():
        ev.evaluate()
        ev.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ev.summarize()
    p = ev.params
    precision = ev.eval["precision"]
    t50 = np.where(p.iouThrs == 0.5)[0]
    t75 = np.where(p.iouThrs == 0.75)[0]
    classes = [{"category_id": int(cid),
                "ap": mean_defined(precision[:, :, k, 0, -1]),
                "ap50": mean_defined(precision[t50, :, k, 0, -1]),
                "ap75": mean_defined(precision[t75, :, k, 0, -1])}
               for k, cid in enumerate(p.catIds)]
    out = {
        "pycocotools": importlib.metadata.version("pycocotools"),
        "numpy": np.__version__,
        "iou_thresholds": p.iouThrs.tolist(),
        "recall_thresholds": p.recThrs.tolist(),
        "max_detections": list(p.maxDets),
        "area_ranges": [list(map(float, a)) for a in p.areaRng],
        "category_ids": [int(c) for c in p.catIds],
        "shape": list(precision.shape),
        "stats": [float(s) for s in ev.stats],
        "lines": printed.getvalue().splitlines(),
        "classes": classes,
        "recall": ev.eval["recall"].ravel().tolist(),
    }
    if not summary_only:
        out["precision"] = precision.ravel().tolist()
    return out


def make_fixture(seed):
    """A small random case: crowd and ignored objects, every area range (and its edges),
    120 detections of one category in one image, tied scores, non-contiguous shuffled ids."""
    rng = np.random.default_rng(seed)
    cat_ids = [3, 1, 12, 7]
    categories = [{"id": c, "name": f"cat{c}"} for c in cat_ids]
    image_ids = rng.choice(np.arange(1, 1000), size=10, replace=False).tolist()
    images = [{"id": int(i), "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in image_ids]
    annotations, detections = [], []
    ann_id = 1
    for n, img in enumerate(image_ids):
        for _ in range(int(rng.integers(0, 7))):
            side = float(np.exp(rng.uniform(np.log(3), np.log(300))))
            w = round(side * rng.uniform(0.6, 1.6) * 4) / 4
            h = round(side * rng.uniform(0.6, 1.6) * 4) / 4
            if rng.random() < 0.1:
                w, h = (32.0, 32.0) if rng.random() < 0.5 else (96.0, 96.0)
            x = round(rng.uniform(0, 640 - w) * 4) / 4 if w < 640 else 0.0
            y = round(rng.uniform(0, 480 - h) * 4) / 4 if h < 480 else 0.0
            cat = int(rng.choice(cat_ids[:3]))
            a = {"id": ann_id, "image_id": int(img), "category_id": cat, "bbox": [x, y, w, h],
                 "iscrowd": int(rng.random() < 0.1)}
            if rng.random() < 0.1:
                a["ignore"] = 1
            if rng.random() < 0.5:
                a["area"] = float(w * h * rng.uniform(0.4, 1.0))
            annotations.append(a)
            ann_id += 1
            for _ in range(int(rng.integers(0, 3))):
                jit = rng.uniform(-0.15, 0.15, 4) * [w, h, w, h]
                detections.append({"image_id": int(img), "category_id": cat,
                                   "bbox": [x + jit[0], y + jit[1], max(0.0, w + jit[2]),
                                            max(0.0, h + jit[3])],
                                   "score": float(rng.integers(1, 21)) / 20})
        count = 120 if n == 0 else int(rng.integers(0, 4))
        for _ in range(count):
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            detections.append({"image_id": int(img), "category_id": int(rng.choice(cat_ids)),
                               "bbox": [x, y, float(rng.uniform(2, 150)), float(rng.uniform(2, 150))],
                               "score": float(rng.integers(1, 21)) / 20})
    order = rng.permutation(len(detections))
    return {"ground_truth": {"images": images, "annotations": annotations, "categories": categories},
            "detections": [detections[i] for i in order]}


def selftest():
    def check(name, got, want, tol=1e-12):
        if abs(got - want) > tol:
            raise SystemExit(f"selftest {name}: got {got!r}, want {want!r}")

    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    images = [{"id": 1}, {"id": 2}]
    one = {"images": images, "categories": cats, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}]}
    hit = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    # One object found exactly: every precision entry is 1 / (1 + eps); AP and AR 1.
    r = evaluate(one, hit)
    check("perfect AP", r["stats"][0], 1.0)
    check("perfect AR100", r["stats"][8], 1.0)
    check("perfect, no small objects", r["stats"][3], -1.0)
    check("perfect, medium", r["stats"][4], 1.0)
    # A false positive ranked first: precision 1/2 at recall 1, for every threshold.
    miss = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.95}] + hit
    check("FP first", evaluate(one, miss)["stats"][0], 0.5)
    # Detections inside a crowd region are ignored, not false positives.
    crowd = copy.deepcopy(one)
    crowd["annotations"].append({"id": 2, "image_id": 2, "category_id": 1,
                                 "bbox": [0, 0, 300, 300], "iscrowd": 1})
    check("crowd absorbs", evaluate(crowd, miss)["stats"][0], 1.0)
    # The ignore flag is honoured: the only object ignored leaves the category undefined.
    ignored = copy.deepcopy(one)
    ignored["annotations"][0]["ignore"] = 1
    check("ignored only", evaluate(ignored, hit)["stats"][0], -1.0)
    # No detections at all: AP 0 where there is ground truth.
    check("no detections", evaluate(one, [])["stats"][0], 0.0)
    print("coco_eval.py selftest: ok")


def main():
    args = [a for a in sys.argv[1:] if a != "--summary-only"]
    summary_only = "--summary-only" in sys.argv
    cmd = args[0] if args else ""
    if cmd == "case" and len(args) == 2:
        with open(args[1]) as f:
            case = json.load(f)
        out = evaluate(case["ground_truth"], case["detections"], summary_only)
    elif cmd == "files" and len(args) == 3:
        with open(args[1]) as f:
            dataset = json.load(f)
        with open(args[2]) as f:
            detections = json.load(f)
        out = evaluate(dataset, detections, summary_only)
    elif cmd == "make-fixture" and len(args) == 3:
        case = make_fixture(int(args[1]))
        for name, value in [("small_instances.json", case["ground_truth"]),
                            ("small_results.json", case["detections"])]:
            with open(f"{args[2]}/{name}", "w") as f:
                json.dump(value, f, indent=1)
                f.write("\n")
        return
    elif cmd == "selftest":
        selftest()
        return
    else:
        sys.exit(__doc__)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
