"""PyTorch eager counterpart of `tchcv bench train-step`: the same detector (built from the spec
with the parity reference's modules, tests/reference/ssd_net.py), torchcv's SSD loss
(bench/loss_reference.py) and torch.optim.SGD, one training step timed on the images and
targets tchcv wrote.

    python bench/train_step_reference.py --spec models/ssd300.json --batch-file B.safetensors

prints one JSON line: {"median_ms": ..., "parameters": ..., "peak_rss_mib": ...} (and on CUDA
"peak_cuda_allocated_mib", the allocator's peak over the warm-up and timed steps).

A two-stage spec (`head: "faster_rcnn"`) builds torchvision's `FasterRCNN` around the same
network (the reference's RPN modules as its backbone and rpn.head, torchvision's AnchorGenerator,
RegionProposalNetwork, MultiScaleRoIAlign, TwoMLPHead, FastRCNNPredictor and RoIHeads with the
spec's settings, the transform an identity at the spec's input size); the batch file then holds
`images` and per image `boxes_{i}` (xyxy) and `labels_{i}` (0-based), and the step is
`sum(model(images, targets).values())`: both stages' matching, sampling and losses inside it
(torchvision's second stage: its random sampler and cross entropy, as tchcv's side times).

--autocast bf16 runs the forward pass and the loss under torch.autocast (backward and the update
outside it, as the PyTorch AMP recipe does); --channels-last converts the model and the images
with memory_format=torch.channels_last; --cudnn-benchmark sets torch.backends.cudnn.benchmark.
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent / "tests" / "reference"))
sys.path.insert(0, str(here))
import ssd_net  # noqa: E402
from loss_reference import ssd_loss  # noqa: E402


def faster_rcnn(spec, classes):
    """torchvision's FasterRCNN with the reference RPN network of `spec` as backbone + rpn.head."""
    from collections import OrderedDict
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    rpn_net = ssd_net.build(dict(spec, head="rpn"), classes)
    roi = spec.get("roi_heads") or {}
    pool, sampler = roi.get("pool") or {}, roi.get("sampler") or {}

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = rpn_net
            self.out_channels = 0  # FasterRCNN requires it; every module it would size is given

        def forward(self, x):
            return OrderedDict((str(i), m) for i, m in enumerate(self.net.maps(x)))

    class PerLevelHeads(torch.nn.Module):
        """RPNHead per map (the small backbone's maps differ in width), or the shared one."""
        def __init__(self, heads):
            super().__init__()
            self.heads = heads

        def forward(self, maps):
            if isinstance(self.heads, torch.nn.ModuleList):
                outs = [h([m]) for h, m in zip(self.heads, maps)]
                return [o[0][0] for o in outs], [o[1][0] for o in outs]
            return self.heads(maps)

    backbone = Backbone()
    a = spec["anchors"]
    n = len(a["feature_maps"])
    sizes = tuple(tuple(s if isinstance(s, list) else [s]) for s in a["sizes"])
    ratios = a["aspect_ratios"]
    ratios = tuple(tuple(r) for r in ratios) if isinstance(ratios[0], list) else (tuple(ratios),) * n
    channels = [m.shape[1] for m in rpn_net.maps(torch.zeros(1, 3, spec["input_size"][1],
                                                             spec["input_size"][0]))]
    maps = pool.get("maps") or list(range(n))
    out = pool.get("output_size", [7, 7])
    width = roi.get("representation_size", 1024)
    rpn = dict(spec.get("rpn") or {})
    matching = spec.get("matching") or {}
    tt = lambda k, d: dict(d, **(rpn.get(k) or {}))  # noqa: E731
    w, h = spec["input_size"]
    model = FasterRCNN(
        backbone, num_classes=None, min_size=h, max_size=max(w, h),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_head=PerLevelHeads(rpn_net.rpn.head),
        rpn_pre_nms_top_n_train=tt("pre_nms_top_n", {"train": 2000})["train"],
        rpn_pre_nms_top_n_test=tt("pre_nms_top_n", {"test": 1000})["test"],
        rpn_post_nms_top_n_train=tt("post_nms_top_n", {"train": 2000})["train"],
        rpn_post_nms_top_n_test=tt("post_nms_top_n", {"test": 1000})["test"],
        rpn_nms_thresh=rpn.get("nms_threshold", 0.7),
        rpn_batch_size_per_image=rpn.get("batch_size_per_image", 256),
        rpn_positive_fraction=rpn.get("positive_fraction", 0.5),
        rpn_score_thresh=rpn.get("score_threshold", 0.0),
        rpn_fg_iou_thresh=matching.get("pos_iou", 0.7),
        rpn_bg_iou_thresh=matching.get("neg_iou", 0.3),
        box_roi_pool=MultiScaleRoIAlign([str(i) for i in maps], out, pool.get("sampling_ratio", 2)),
        box_head=TwoMLPHead(channels[maps[0]] * out[0] * out[1], width),
        box_predictor=FastRCNNPredictor(width, classes + 1),
        box_batch_size_per_image=sampler.get("batch_size_per_image", 512),
        box_positive_fraction=sampler.get("positive_fraction", 0.25),
        box_fg_iou_thresh=sampler.get("fg_iou", 0.5), box_bg_iou_thresh=sampler.get("bg_iou_hi", 0.5))
    # torchvision pads to a multiple of 32: not here (the images are the spec's input size).
    model.transform.size_divisible = 1
    if sampler.get("bg_iou_lo", 0.0) > 0:
        raise SystemExit("torchvision's RoIHeads has no bg_iou_lo band")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch-file", required=True)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--autocast", choices=("bf16", "f16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.loads(Path(args.spec).read_text())
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    two_stage = spec["head"] == "faster_rcnn"
    build = faster_rcnn if two_stage else ssd_net.build
    model = build(spec, args.classes).to(device).train()
    model = model.to(memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    batch = {k: v.to(device) for k, v in load_file(args.batch_file).items()}
    images = batch["images"].contiguous(memory_format=memory_format)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.autocast)

    targets = [{"boxes": batch[f"boxes_{i}"], "labels": batch[f"labels_{i}"] + 1}
               for i in range(images.shape[0])] if two_stage else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if two_stage:
                loss = sum(model(list(images), targets).values())
            else:
                loc, cls = model(images)
                loss = ssd_loss(loc, batch["loc_targets"], cls, batch["cls_targets"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    report = {"median_ms": statistics.median(times),
              "parameters": sum(p.numel() for p in params),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        report["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(report))


if __name__ == "__main__":
    main()
