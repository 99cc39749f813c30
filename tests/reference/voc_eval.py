#!/usr/bin/env python3
"""Independent reference for tchcv's VOC evaluation (numpy only), written for this project.

It follows the VOC devkit's VOCevaldet.m loop: a class's detections over all images sorted by
score (numpy stable sort: ties keep input order), each compared with the image's objects of the
class; true positive when the best IoU >= threshold and the object is not difficult and not yet
taken; ignored when the object is difficult; false positive otherwise. The AP rules are
ChainerCV's calc_detection_voc_ap (11-point over np.arange(0, 1.1, 0.1), and the area under the
precision envelope), the mAP np.nanmean over classes.

Usage:
  voc_eval.py case CASE.json
      CASE = {"classes": [...], "ground_truth": [{"image_id", "boxes", "labels", "difficult"}],
              "detections": [{"image_id", "class", "score", "bbox"}], "configs": [...]}
  voc_eval.py voc ROOT SETS RESULTS_DIR PREFIX CONFIGS_JSON
      reads ROOT/ImageSets/Main/<set>.txt and ROOT/Annotations/<id>.xml itself (SETS comma
      separated), and the devkit results files RESULTS_DIR/<PREFIX><class>.txt
  voc_eval.py make-fixture SEED     prints a small random case (with two configs)
  voc_eval.py selftest              hand-checked cases

A config is {"iou_threshold": float, "legacy_plus_one": bool, "matching": "devkit"|"unmatched"}.
Prints {"results": [one result per config]}, NaN written as null.
"""

import json
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np

VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()


def overlaps(det, gts, one):
    """IoU of one xyxy box with each row of gts [M, 4] (f64), the +1 added to x2, y2 first."""
    dx2, dy2 = det[2] + one, det[3] + one
    gx2, gy2 = gts[:, 2] + one, gts[:, 3] + one
    iw = np.minimum(gx2, dx2) - np.maximum(gts[:, 0], det[0])
    ih = np.minimum(gy2, dy2) - np.maximum(gts[:, 1], det[1])
    inter = iw * ih
    union = (dx2 - det[0]) * (dy2 - det[1]) + (gx2 - gts[:, 0]) * (gy2 - gts[:, 1]) - inter
    valid = (iw > 0) & (ih > 0) & (union > 0)
    return np.where(valid, inter / np.where(valid, union, 1.0), 0.0)


def ap_voc07(prec, rec):
    prec = np.nan_to_num(prec)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        reached = rec >= t
        p = np.max(prec[reached]) if reached.any() else 0.0
        ap += p / 11
    return float(ap)


def ap_area(prec, rec):
    mpre = np.concatenate(([0.0], np.nan_to_num(prec), [0.0]))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_class(c, ground_truth, detections, config):
    one = 1.0 if config["legacy_plus_one"] else 0.0
    records = {}
    n_gt = n_difficult = 0
    for g in ground_truth:
        keep = [j for j, label in enumerate(g["labels"]) if label == c]
        boxes = np.array([g["boxes"][j] for j in keep], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([bool(g["difficult"][j]) for j in keep], dtype=bool)
        records[g["image_id"]] = {"boxes": boxes, "difficult": difficult,
                                  "taken": np.zeros(len(keep), dtype=bool)}
        n_difficult += int(difficult.sum())
        n_gt += int((~difficult).sum())

    mine = [d for d in detections if d["class"] == c]
    scores = np.array([d["score"] for d in mine], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(mine))
    fp = np.zeros(len(mine))
    for rank, k in enumerate(order):
        d = mine[k]
        rec = records[d["image_id"]]
        box = np.array(d["bbox"], dtype=np.float64)
        if config["matching"] == "devkit":
            candidate = np.ones(len(rec["boxes"]), dtype=bool)
        else:
            candidate = ~rec["taken"] | rec["difficult"]
        best, best_iou = -1, -np.inf
        if candidate.any():
            iou = np.where(candidate, overlaps(box, rec["boxes"], one), -np.inf)
            best = int(np.argmax(iou))
            best_iou = iou[best]
        if best_iou >= config["iou_threshold"]:
            if rec["difficult"][best]:
                continue
            if rec["taken"][best]:
                fp[rank] = 1
            else:
                tp[rank] = 1
                rec["taken"][best] = True
        else:
            fp[rank] = 1

    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp_cum / (tp_cum + fp_cum)
    if n_gt > 0:
        rec = tp_cum / n_gt
        aps = (ap_voc07(prec, rec), ap_area(prec, rec))
    else:
        rec = None
        aps = (float("nan"), float("nan"))
    return {
        "n_gt": n_gt,
        "n_difficult": n_difficult,
        "n_det": len(mine),
        "n_tp": int(tp.sum()),
        "ap_voc07": aps[0],
        "ap_area": aps[1],
        "precision": prec.tolist(),
        "recall": None if rec is None else rec.tolist(),
    }


def evaluate(classes, ground_truth, detections, config):
    per_class = []
    for c, name in enumerate(classes):
        r = evaluate_class(c, ground_truth, detections, config)
        r["class"] = name
        per_class.append(r)

    def nanmean(values):
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    return {
        "config": config,
        "classes": per_class,
        "map_voc07": nanmean([r["ap_voc07"] for r in per_class]),
        "map_area": nanmean([r["ap_area"] for r in per_class]),
    }


def nan_to_null(x):
    if isinstance(x, float) and np.isnan(x):
        return None
    if isinstance(x, list):
        return [nan_to_null(v) for v in x]
    if isinstance(x, dict):
        return {k: nan_to_null(v) for k, v in x.items()}
    return x


def read_voc(root, sets):
    images = []
    for s in sets:
        with open(os.path.join(root, "ImageSets", "Main", s + ".txt")) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        for image_id in ids:
            tree = ET.parse(os.path.join(root, "Annotations", image_id + ".xml"))
            objects = []
            for obj in tree.getroot().findall("object"):
                name = obj.find("name").text.strip()
                flag = obj.find("difficult")
                difficult = flag is not None and flag.text is not None and int(flag.text) == 1
                bb = obj.find("bndbox")
                box = [float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
                objects.append((name, box, difficult))
            images.append((image_id, objects))
    names = sorted({o[0] for _, objects in images for o in objects})
    classes = list(VOC_CLASSES) if all(n in VOC_CLASSES for n in names) else names
    ground_truth = [{
        "image_id": image_id,
        "boxes": [o[1] for o in objects],
        "labels": [classes.index(o[0]) for o in objects],
        "difficult": [o[2] for o in objects],
    } for image_id, objects in images]
    return classes, ground_truth


def read_results(directory, prefix, classes):
    detections = []
    for c, name in enumerate(classes):
        path = os.path.join(directory, prefix + name + ".txt")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                detections.append({"image_id": fields[0], "class": c, "score": float(fields[1]),
                                   "bbox": [float(v) for v in fields[2:6]]})
    return detections


def make_fixture(seed):
    """A small random case: 4 classes (class 3 has no objects), difficult objects, duplicates,
    tied scores, near-threshold boxes on an integer grid."""
    rng = np.random.default_rng(seed)
    classes = ["cat", "dog", "bird", "unicorn"]
    ground_truth, detections = [], []
    for i in range(6):
        image_id = "img%02d" % i
        m = int(rng.integers(0, 5))
        boxes, labels, difficult = [], [], []
        for _ in range(m):
            x, y = rng.integers(0, 80, size=2)
            w, h = rng.integers(5, 40, size=2)
            boxes.append([float(x), float(y), float(x + w), float(y + h)])
            labels.append(int(rng.integers(0, 3)))
            difficult.append(bool(rng.random() < 0.25))
        ground_truth.append({"image_id": image_id, "boxes": boxes, "labels": labels,
                             "difficult": difficult})
        for b, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.integers(-4, 5, size=4)
                detections.append({"image_id": image_id, "class": label,
                                   "score": float(rng.integers(1, 10)) / 10,
                                   "bbox": [float(v) for v in np.array(b) + jitter]})
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.integers(0, 80, size=2)
            detections.append({"image_id": image_id, "class": int(rng.integers(0, 4)),
                               "score": float(rng.integers(1, 10)) / 10,
                               "bbox": [float(x), float(y), float(x + 20), float(y + 20)]})
    order = rng.permutation(len(detections))
    detections = [detections[k] for k in order]
    configs = [
        {"iou_threshold": 0.5, "legacy_plus_one": True, "matching": "devkit"},
        {"iou_threshold": 0.6, "legacy_plus_one": False, "matching": "unmatched"},
    ]
    return {"classes": classes, "ground_truth": ground_truth, "detections": detections,
            "configs": configs}


def selftest():
    cfg = {"iou_threshold": 0.5, "legacy_plus_one": True, "matching": "devkit"}
    gt = [{"image_id": "a", "boxes": [[0, 0, 9, 9], [20, 20, 29, 29]], "labels": [0, 0],
           "difficult": [False, False]}]
    # TP, duplicate (FP), TP: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    dets = [{"image_id": "a", "class": 0, "score": s, "bbox": b}
            for s, b in [(0.9, [0, 0, 9, 9]), (0.8, [0, 0, 9, 9]), (0.7, [20, 20, 29, 29])]]
    r = evaluate(["x"], gt, dets, cfg)["classes"][0]
    assert abs(r["ap_voc07"] - 28 / 33) < 1e-12, r
    assert abs(r["ap_area"] - 5 / 6) < 1e-12, r
    # +1: [0,0,9,4] vs [0,0,9,9] is IoU 50/100 = 0.5 (TP); without it 36/81 (FP).
    one = [{"image_id": "a", "class": 0, "score": 1.0, "bbox": [0, 0, 9, 4]}]
    assert evaluate(["x"], gt, one, cfg)["classes"][0]["n_tp"] == 1
    cfg0 = dict(cfg, legacy_plus_one=False)
    assert evaluate(["x"], gt, one, cfg0)["classes"][0]["n_tp"] == 0
    print("voc_eval.py selftest: ok")


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "case":
        with open(sys.argv[2]) as f:
            case = json.load(f)
        results = [evaluate(case["classes"], case["ground_truth"], case["detections"], c)
                   for c in case["configs"]]
    elif cmd == "voc":
        root, sets, results_dir, prefix, configs = sys.argv[2:7]
        classes, ground_truth = read_voc(root, sets.split(","))
        detections = read_results(results_dir, prefix, classes)
        results = [evaluate(classes, ground_truth, detections, c) for c in json.loads(configs)]
        for r in results:
            r["n_images"] = len(ground_truth)
    elif cmd == "make-fixture":
        print(json.dumps(make_fixture(int(sys.argv[2])), indent=1))
        return
    elif cmd == "selftest":
        selftest()
        return
    else:
        sys.exit(__doc__)
    print(json.dumps({"results": nan_to_null(results)}, allow_nan=False))


if __name__ == "__main__":
    main()
