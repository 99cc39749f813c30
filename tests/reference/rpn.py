#!/usr/bin/env python
"""torchvision reference for tchcv's region proposal network pieces (tests/rpn_parity.rs).

Everything here runs torchvision's own modules (torchvision.models.detection): AnchorGenerator,
RegionProposalNetwork (assign_targets_to_anchors with its Matcher, its BoxCoder((1, 1, 1, 1)),
compute_loss, filter_proposals). The only glue: the spec is read independently from the JSON,
and compute_loss is given a fixed sample (tchcv's) by replacing the module's fg_bg_sampler.

Commands (each writes <out>/<command>.safetensors and <out>/<command>.json):

    rpn.py anchors   --spec SPEC.json --out DIR
    rpn.py label     --spec SPEC.json --seed S --out DIR
    rpn.py coder     --spec SPEC.json --seed S --out DIR
    rpn.py loss      --spec SPEC.json --case CASE.safetensors --out DIR [--device cpu|cuda]
    rpn.py proposals --spec SPEC.json --seed S --out DIR [--device cpu|cuda] [--images N]
                     [--train]
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ReferenceError, case_generator, exact_batched_nms,  # noqa: E402
                    read_tensors, resolve_device, run_cli, write_case)

# ---------------------------------------------------------------------------------------------
# The spec (read from the JSON, defaults of docs/box.md for the "torchvision" style)
# ---------------------------------------------------------------------------------------------


def _pair(v):
    return (v, v) if isinstance(v, (int, float)) else (v[0], v[1])


def load_spec(path):
    spec = json.loads(Path(path).read_text())
    a = spec["anchors"]
    if a["style"] != "torchvision":
        raise ReferenceError(f"{path}: anchors.style is {a['style']!r}, rpn.py reads 'torchvision'")
    width, height = spec["input_size"]
    maps = [_pair(g) for g in a["feature_maps"]]  # (h, w)
    a["feature_maps"] = maps
    if "strides" in a:
        a["strides"] = [tuple(int(x) for x in _pair(s)) for s in a["strides"]]  # (y, x)
    else:
        a["strides"] = [(height // h, width // w) for h, w in maps]
    a["sizes"] = [tuple(s) if isinstance(s, list) else (s,) for s in a["sizes"]]
    ratios = a["aspect_ratios"]
    if not isinstance(ratios[0], list):
        ratios = [ratios] * len(maps)
    a["aspect_ratios"] = [tuple(r) for r in ratios]
    m = spec.setdefault("matching", {"rule": "max_iou"})
    if m["rule"] != "max_iou" or m.get("band", "torchvision") != "torchvision":
        raise ReferenceError(f"{path}: torchvision's RPN matches by max IoU with its own band")
    m.setdefault("pos_iou", 0.7)
    m.setdefault("neg_iou", 0.3)
    m.setdefault("allow_low_quality", True)
    coder = spec.setdefault("coder", {})
    if coder.get("variances") is not None:
        raise ReferenceError(f"{path}: torchvision's RPN codes boxes with weights (1, 1, 1, 1)")
    rpn = spec.setdefault("rpn", {})
    defaults = {
        "batch_size_per_image": 256, "positive_fraction": 0.5,
        "pre_nms_top_n": {"train": 2000, "test": 1000},
        "post_nms_top_n": {"train": 2000, "test": 1000},
        "nms_threshold": 0.7, "score_threshold": 0.0, "min_size": 1e-3,
    }
    for k, v in defaults.items():
        rpn.setdefault(k, v)
    return spec


def anchor_generator(spec):
    a = spec["anchors"]
    return AnchorGenerator(sizes=tuple(a["sizes"]), aspect_ratios=tuple(a["aspect_ratios"]))


def spec_anchors(spec, device="cpu"):
    """[A, 4] xyxy f32 and the anchors per level, from torchvision's AnchorGenerator."""
    a = spec["anchors"]
    width, height = spec["input_size"]
    gen = anchor_generator(spec)
    maps = [torch.zeros(1, 1, h, w, device=device) for h, w in a["feature_maps"]]
    default = [(height // h, width // w) for h, w in a["feature_maps"]]
    if a["strides"] == default:
        images = ImageList(torch.zeros(1, 3, height, width, device=device), [(height, width)])
        anchors = gen(images, maps)[0]
    else:  # strides the spec sets: torchvision's grid_anchors with them
        gen.set_cell_anchors(torch.float32, torch.device(device))
        strides = [[torch.tensor(sy, device=device), torch.tensor(sx, device=device)]
                   for sy, sx in a["strides"]]
        anchors = torch.cat(gen.grid_anchors([list(m) for m in a["feature_maps"]], strides))
    per_level = [h * w * n for (h, w), n in zip(a["feature_maps"], gen.num_anchors_per_location())]
    return anchors, per_level


def build_rpn(spec, training):
    """torchvision's RegionProposalNetwork with the spec's settings (its head is not used)."""
    m, r = spec["matching"], spec["rpn"]
    gen = anchor_generator(spec)
    rpn = RegionProposalNetwork(
        gen, RPNHead(1, gen.num_anchors_per_location()[0]),
        fg_iou_thresh=m["pos_iou"], bg_iou_thresh=m["neg_iou"],
        batch_size_per_image=r["batch_size_per_image"], positive_fraction=r["positive_fraction"],
        pre_nms_top_n={"training": r["pre_nms_top_n"]["train"], "testing": r["pre_nms_top_n"]["test"]},
        post_nms_top_n={"training": r["post_nms_top_n"]["train"],
                        "testing": r["post_nms_top_n"]["test"]},
        nms_thresh=r["nms_threshold"], score_thresh=r["score_threshold"],
    )
    rpn.min_size = r["min_size"]
    if not m["allow_low_quality"]:
        rpn.proposal_matcher.allow_low_quality_matches = False
    rpn.train(training)
    return rpn


# ---------------------------------------------------------------------------------------------
# Random ground truth (boxes that overlap some anchor: inside the input)
# ---------------------------------------------------------------------------------------------


def random_boxes(g, count, width, height, lo=0.1, hi=0.6):
    """count xyxy boxes of side lo..hi of the input, aspect 1/2..2, inside the input."""
    out = []
    for _ in range(count):
        u = torch.rand(4, generator=g).tolist()
        side = (lo + (hi - lo) * u[0]) * min(width, height)
        ratio = math.exp((u[1] * 2 - 1) * 0.69)
        w = min(side * math.sqrt(ratio), width - 1)
        h = min(side / math.sqrt(ratio), height - 1)
        x = u[2] * (width - w)
        y = u[3] * (height - h)
        out.append([x, y, x + w, y + h])
    return torch.tensor(out, dtype=torch.float32).view(-1, 4)


def label_cases(seed, width, height):
    """(name, boxes [G, 4]) pairs: random sets and edge cases."""
    cases = []
    for i in range(10):
        g = case_generator(seed, i)
        count = int(torch.randint(1, 21, (1,), generator=g))
        cases.append((f"random{i}", random_boxes(g, count, width, height)))
    g = case_generator(seed, 100)
    cases.append(("empty", torch.zeros(0, 4)))
    cases.append(("full_image", torch.tensor([[0.0, 0.0, float(width), float(height)]])))
    cases.append(("tiny", random_boxes(g, 6, width, height, 0.02, 0.05)))
    cases.append(("large", random_boxes(g, 3, width, height, 0.8, 0.95)))
    two = random_boxes(g, 2, width, height)
    cases.append(("duplicates", torch.cat([two, two, two[:1]])))
    border = torch.tensor([[0.0, 0.0, 30.0, 25.0], [width - 40.0, height - 20.0, width, height],
                           [0.0, height - 50.0, 45.0, float(height)]])
    cases.append(("border", border))
    cases.append(("many", random_boxes(g, 60, width, height, 0.05, 0.3)))
    return cases


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_anchors(args):
    spec = load_spec(args.spec)
    anchors, per_level = spec_anchors(spec)
    tensors = {"anchors": anchors, "per_level": torch.tensor(per_level, dtype=torch.long)}
    write_case(args.out, "anchors", tensors, {"spec": spec["name"], "count": anchors.size(0)})


def torchvision_targets(rpn, anchors, boxes):
    """assign_targets_to_anchors + box_coder.encode for one image: labels [A] f32 (1, 0, -1),
    regression targets [A, 4]."""
    labels, matched = rpn.assign_targets_to_anchors([anchors], [{"boxes": boxes}])
    targets = rpn.box_coder.encode(matched, [anchors])[0]
    return labels[0], targets


def cmd_label(args):
    spec = load_spec(args.spec)
    width, height = spec["input_size"]
    anchors, _ = spec_anchors(spec)
    rpn = build_rpn(spec, training=True)
    tensors, names = {}, []
    for name, boxes in label_cases(args.seed, width, height):
        labels, targets = torchvision_targets(rpn, anchors, boxes)
        if boxes.numel():
            max_iou = box_iou(boxes, anchors).max(dim=0).values
        else:
            max_iou = torch.zeros(anchors.size(0))
        tensors[f"{name}.boxes"] = boxes
        tensors[f"{name}.labels"] = labels.to(torch.long)
        tensors[f"{name}.max_iou"] = max_iou
        tensors[f"{name}.targets"] = targets
        names.append({"name": name, "num_pos": int((labels == 1).sum()),
                      "num_ignored": int((labels == -1).sum())})
    write_case(args.out, "label", tensors, {"seed": args.seed, "cases": names})


def cmd_coder(args):
    """BoxCoder((1, 1, 1, 1)): encode random boxes against the spec's anchors; decode random
    deltas (some past the dw/dh clamp)."""
    spec = load_spec(args.spec)
    width, height = spec["input_size"]
    anchors, _ = spec_anchors(spec)
    rpn = build_rpn(spec, training=True)
    g = case_generator(args.seed, 0)
    a = anchors.size(0)
    gt = random_boxes(g, a, width, height, 0.03, 0.9)
    encoded = rpn.box_coder.encode_single(gt, anchors)
    deltas = torch.randn(a, 4, generator=g) * 0.7
    deltas[::97, 2:] = 6.0 + 4.0 * torch.rand(deltas[::97, 2:].shape, generator=g)  # past the clamp
    decoded = rpn.box_coder.decode_single(deltas, anchors)
    tensors = {"gt": gt, "encoded": encoded, "deltas": deltas, "decoded": decoded}
    write_case(args.out, "coder", tensors, {"seed": args.seed,
                                            "clamp": rpn.box_coder.bbox_xform_clip})


class FixedSampler:
    """Stands in for BalancedPositiveNegativeSampler: returns a given sample."""

    def __init__(self, sampled):
        self.sampled = sampled  # [N, A] i64: 1, 0, -1

    def __call__(self, labels):
        pos, neg = [], []
        for s, lab in zip(self.sampled, labels):
            if bool(((s == 1) & (lab != 1)).any()) or bool(((s == 0) & (lab != 0)).any()):
                raise ReferenceError("the given sample picks anchors outside their labels")
            pos.append((s == 1).to(torch.uint8))
            neg.append((s == 0).to(torch.uint8))
        return pos, neg


def cmd_loss(args):
    """compute_loss on tchcv's sample; labels and targets from torchvision itself."""
    spec = load_spec(args.spec)
    device = resolve_device(args.device)
    case = read_tensors(args.case, ["objectness", "deltas", "sampled"])
    anchors, _ = spec_anchors(spec, device)
    rpn = build_rpn(spec, training=True).to(device)
    n = case["objectness"].size(0)
    labels, targets = [], []
    for i in range(n):
        lab, tgt = torchvision_targets(rpn, anchors, case[f"boxes{i}"].to(device))
        labels.append(lab)
        targets.append(tgt)
    sampled = case["sampled"].to(device)
    rpn.fg_bg_sampler = FixedSampler(sampled)
    objectness = case["objectness"].to(device).requires_grad_(True)
    deltas = case["deltas"].to(device).requires_grad_(True)
    # compute_loss takes the head's layout: objectness [N*A, 1], deltas [N*A, 4].
    obj_loss, box_loss = rpn.compute_loss(objectness.reshape(-1, 1), deltas.reshape(-1, 4),
                                          labels, targets)
    (obj_loss + box_loss).backward()
    tensors = {
        "loss_objectness": obj_loss.detach().double(), "loss_rpn_box_reg": box_loss.detach().double(),
        "grad_objectness": objectness.grad, "grad_deltas": deltas.grad,
        "labels": torch.stack(labels).to(torch.long), "regression_targets": torch.stack(targets),
    }
    write_case(args.out, "loss", tensors, {
        "device": args.device, "num_sampled": int((sampled >= 0).sum()),
        "loss_objectness": float(obj_loss), "loss_rpn_box_reg": float(box_loss)})


def cmd_proposals(args):
    spec = load_spec(args.spec)
    device = resolve_device(args.device)
    training = args.train
    width, height = spec["input_size"]
    anchors, per_level = spec_anchors(spec, device)
    rpn = build_rpn(spec, training=training).to(device)
    g = case_generator(args.seed, 1)
    a, n = anchors.size(0), args.images
    # Distinct logits 12 / A apart (in random order): no two proposals tie in score, so the
    # order is unique (torchvision's sorts are not stable, tchcv's are).
    grid = torch.linspace(-6.0, 6.0, a)
    objectness = torch.stack([grid[torch.randperm(a, generator=g)] for _ in range(n)]).to(device)
    deltas = torch.randn(n, a, 4, generator=g) * 0.5
    deltas[:, ::53, 2:] = 8.0  # past the clamp
    deltas[:, 7::61, 2:] = -10.0  # under min_size after decoding
    deltas = deltas.to(device)
    proposals = rpn.box_coder.decode(deltas.reshape(-1, 4), [anchors] * n).view(n, -1, 4)
    shapes = [(height, width)] * n
    with exact_batched_nms():
        boxes, scores = rpn.filter_proposals(proposals, objectness, shapes, per_level)
    as_is, _ = rpn.filter_proposals(proposals, objectness, shapes, per_level)
    tensors = {"objectness": objectness, "deltas": deltas, "decoded": proposals}
    images = []
    for i in range(n):
        tensors[f"image{i}.boxes"] = boxes[i]
        tensors[f"image{i}.scores"] = scores[i]
        same = as_is[i].shape == boxes[i].shape and bool((as_is[i] == boxes[i]).all())
        ties = scores[i].unique().numel() != scores[i].numel()
        images.append({"count": boxes[i].size(0), "offset_nms_agrees": same, "score_ties": ties})
    write_case(args.out, "proposals", tensors, {
        "seed": args.seed, "device": args.device, "training": training,
        "per_level": per_level, "images": images})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["anchors", "label", "coder", "loss", "proposals"]:
        s = sub.add_parser(name)
        s.add_argument("--spec", required=True)
        s.add_argument("--out", required=True)
        if name in ("label", "coder", "proposals"):
            s.add_argument("--seed", type=int, required=True)
        if name in ("loss", "proposals"):
            s.add_argument("--device", default="cpu")
        if name == "loss":
            s.add_argument("--case", required=True)
        if name == "proposals":
            s.add_argument("--images", type=int, default=2)
            s.add_argument("--train", action="store_true")
    args = p.parse_args()
    torch.set_grad_enabled(args.cmd == "loss")
    {"anchors": cmd_anchors, "label": cmd_label, "coder": cmd_coder, "loss": cmd_loss,
     "proposals": cmd_proposals}[args.cmd](args)


if __name__ == "__main__":
    run_cli(main)
