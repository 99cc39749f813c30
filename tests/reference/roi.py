#!/usr/bin/env python
"""torchvision reference for tchcv's second-stage (RoI) pieces (tests/roi_parity.rs).

Everything here runs torchvision's own code: torchvision.ops.roi_align, MultiScaleRoIAlign,
RoIHeads (add_gt_proposals, assign_targets_to_proposals with Matcher(0.5, 0.5, False), its
BoxCoder((10, 10, 5, 5)), fg_bg_sampler counts, postprocess_detections), fastrcnn_loss and
torchvision.ops.nms. The cases are written by the Rust test (tchcv's random draws) and read here.

Commands (each reads <case>.safetensors and <case>.json, writes <out>/<command>.safetensors and
<out>/<command>.json):

    roi.py align      --case CASE --out DIR [--device cpu|cuda]
    roi.py multiscale --case CASE --out DIR [--device cpu|cuda]
    roi.py match      --case CASE --out DIR
    roi.py loss       --case CASE --out DIR [--device cpu|cuda]
    roi.py post       --case CASE --out DIR [--device cpu|cuda]
    roi.py ohem       --case CASE --out DIR
    roi.py heads      --case CASE --out DIR [--device cpu|cuda]
"""

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, nms, roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ReferenceError, exact_batched_nms, read_tensors,  # noqa: E402
                    resolve_device, run_cli, write_case)


def load_case(path):
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return read_tensors(path.with_suffix(".safetensors")), meta


def roi_heads(meta):
    """torchvision's RoIHeads with Faster R-CNN's defaults (the pooler and head are not used)."""
    heads = RoIHeads(
        box_roi_pool=None, box_head=None, box_predictor=None,
        fg_iou_thresh=meta.get("fg_iou", 0.5), bg_iou_thresh=meta.get("bg_iou", 0.5),
        batch_size_per_image=meta.get("batch_size_per_image", 512),
        positive_fraction=meta.get("positive_fraction", 0.25), bbox_reg_weights=None,
        score_thresh=meta.get("score_thresh", 0.05), nms_thresh=meta.get("nms_thresh", 0.5),
        detections_per_img=meta.get("detections_per_img", 100))
    return heads


def cmd_align(args):
    """roi_align values, and the gradient of sum(out * grad) with respect to the features."""
    device = resolve_device(args.device)
    t, meta = load_case(args.case)
    out = {}
    for i, c in enumerate(meta["configs"]):
        x = t[f"c{i}.features"].to(device).requires_grad_(True)
        rois = t[f"c{i}.rois"].to(device)
        y = roi_align(x, rois, output_size=tuple(c["output_size"]),
                      spatial_scale=c["spatial_scale"], sampling_ratio=c["sampling_ratio"],
                      aligned=c["aligned"])
        (y * t[f"c{i}.grad"].to(device)).sum().backward()
        out[f"c{i}.out"] = y.detach()
        out[f"c{i}.grad_features"] = x.grad
    write_case(args.out, "align", out, {"device": args.device, "cases": len(meta["configs"])})


def cmd_multiscale(args):
    """MultiScaleRoIAlign(['0', '1', ...], 7, 2) on the case's maps, with its level mapper."""
    device = resolve_device(args.device)
    t, meta = load_case(args.case)
    levels, images = meta["levels"], meta["images"]
    feats = OrderedDict((str(l), t[f"feature{l}"].to(device).requires_grad_(True))
                        for l in range(levels))
    boxes = [t[f"boxes{i}"].to(device) for i in range(images)]
    shapes = [tuple(s) for s in meta["image_shapes"]]  # (h, w)
    pool = MultiScaleRoIAlign(list(feats), output_size=meta["output_size"],
                              sampling_ratio=meta["sampling_ratio"])
    y = pool(feats, boxes, shapes)
    (y * t["grad"].to(device)).sum().backward()
    out = {"out": y.detach()}
    for l, f in feats.items():
        out[f"grad{l}"] = f.grad
    if pool.map_levels is not None:
        out["levels"] = pool.map_levels(boxes)
    write_case(args.out, "multiscale", out, {"device": args.device, "scales": pool.scales})


def cmd_match(args):
    """add_gt_proposals + assign_targets_to_proposals + encode; the sampler's counts."""
    t, meta = load_case(args.case)
    heads = roi_heads(meta)
    n = meta["images"]
    proposals = [t[f"proposals{i}"] for i in range(n)]
    gt_boxes = [t[f"gt_boxes{i}"] for i in range(n)]
    gt_labels = [t[f"gt_labels{i}"] for i in range(n)]
    with_gt = heads.add_gt_proposals(proposals, gt_boxes)
    matched, labels = heads.assign_targets_to_proposals(with_gt, gt_boxes, gt_labels)
    torch.manual_seed(0)
    pos, neg = heads.fg_bg_sampler(labels)
    out, counts = {}, []
    for i in range(n):
        gt = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros(1, 4)
        targets = heads.box_coder.encode_single(gt[matched[i].clamp(min=0)], with_gt[i])
        out[f"proposals{i}"] = with_gt[i]
        out[f"labels{i}"] = labels[i].to(torch.long)
        out[f"matched{i}"] = matched[i]
        out[f"targets{i}"] = targets
        counts.append({"pos": int(pos[i].sum()), "neg": int(neg[i].sum())})
    write_case(args.out, "match", out, {"counts": counts})


def cmd_loss(args):
    """fastrcnn_loss on the given (sampled) rows, and its gradients."""
    device = resolve_device(args.device)
    t, _ = load_case(args.case)
    logits = t["class_logits"].to(device).requires_grad_(True)
    regression = t["box_regression"].to(device).requires_grad_(True)
    labels = t["labels"].to(device)
    targets = t["regression_targets"].to(device)
    cls, box = fastrcnn_loss(logits, regression, [labels], [targets])
    (cls + box).backward()
    out = {"loss_classifier": cls.detach().double(), "loss_box_reg": box.detach().double(),
           "grad_class_logits": logits.grad, "grad_box_regression": regression.grad}
    write_case(args.out, "loss", out, {"device": args.device})


def cmd_post(args):
    device = resolve_device(args.device)
    t, meta = load_case(args.case)
    heads = roi_heads(meta)
    n = meta["images"]
    proposals = [t[f"proposals{i}"].to(device) for i in range(n)]
    shapes = [tuple(s) for s in meta["image_shapes"]]  # (h, w)
    with exact_batched_nms():
        boxes, scores, labels = heads.postprocess_detections(
            t["class_logits"].to(device), t["box_regression"].to(device), proposals, shapes)
    out = {}
    for i in range(n):
        out[f"boxes{i}"], out[f"scores{i}"], out[f"labels{i}"] = boxes[i], scores[i], labels[i]
    write_case(args.out, "post", out, {"device": args.device,
                                       "counts": [int(b.size(0)) for b in boxes]})


def cmd_ohem(args):
    """Per image: nms(boxes, loss, 0.7)[:B], the hard examples in loss order."""
    t, meta = load_case(args.case)
    out = {}
    for i in range(meta["images"]):
        keep = nms(t[f"boxes{i}"], t[f"loss{i}"], meta["nms_threshold"])
        out[f"keep{i}"] = keep[: meta["per_image"]]
    write_case(args.out, "ohem", out, {})


def cmd_heads(args):
    """RoIHeads (MultiScaleRoIAlign(7, 2), TwoMLPHead, FastRCNNPredictor) in eval mode with the
    case's weights (names `roi_heads.*`), on the case's maps and proposals."""
    device = resolve_device(args.device)
    t, meta = load_case(args.case)
    levels, n = meta["levels"], meta["images"]
    channels, rep, classes = meta["channels"], meta["representation"], meta["num_classes"]
    heads = RoIHeads(
        MultiScaleRoIAlign([str(l) for l in range(levels)], 7, 2),
        TwoMLPHead(channels * 7 * 7, rep), FastRCNNPredictor(rep, classes),
        0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    prefix = "roi_heads."
    state = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}
    heads.load_state_dict(state, strict=True)
    heads.to(device).eval()
    feats = OrderedDict((str(l), t[f"feature{l}"].to(device)) for l in range(levels))
    proposals = [t[f"boxes{i}"].to(device) for i in range(n)]
    shapes = [tuple(s) for s in meta["image_shapes"]]  # (h, w)
    with exact_batched_nms():
        detections, _ = heads(feats, proposals, shapes)
    out = {}
    for i, d in enumerate(detections):
        out[f"boxes{i}"], out[f"scores{i}"], out[f"labels{i}"] = d["boxes"], d["scores"], d["labels"]
    write_case(args.out, "heads", out, {"device": args.device,
                                        "counts": [int(d["boxes"].size(0)) for d in detections]})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    commands = {"align": cmd_align, "multiscale": cmd_multiscale, "match": cmd_match,
                "loss": cmd_loss, "post": cmd_post, "ohem": cmd_ohem, "heads": cmd_heads}
    for name in commands:
        s = sub.add_parser(name)
        s.add_argument("--case", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.cmd in ("match", "ohem") and args.device != "cpu":
        raise ReferenceError(f"{args.cmd} runs on the CPU only")
    torch.set_grad_enabled(args.cmd in ("align", "multiscale", "loss"))
    commands[args.cmd](args)


if __name__ == "__main__":
    run_cli(main)
