"""PyTorch side of `tchcv bench train`: the ordinary PyTorch training script for the same
detector, end to end, written for this project.

- the network: tests/reference/ssd_net.py `build(spec, classes)` (the small SSD, SSD300; the
  module names are tchcv's variable names, so `--init` loads tchcv's initial weights and
  `--save` writes weights tchcv evaluates);
- the data: a `torch.utils.data.DataLoader` (shuffle, `--workers` worker processes with one torch
  thread each, persistent, pinned memory on CUDA) over a Dataset that decodes with PIL, runs
  torchcv's SSD augmentation (bench/data_reference.py `augment`: distort, zoom out, min-IoU
  crop, resize, flip, normalise; tchcv's AugmentConfig keys from `--augment`) and encodes with
  torchcv's SSDBoxCoder (tests/reference/box_coder.py `encode`, the spec's anchors);
- the loss: torchcv's SSDLoss (bench/loss_reference.py: double-sort hard negative mining 3:1,
  Smooth-L1 on positives, divided by the batch's positives);
- the optimizer: torch.optim.SGD / Adam / AdamW with their defaults (zero_grad set_to_none; on
  the CPU torch 2.11 picks the for-loop implementation, on CUDA foreach: what a user gets), the
  learning rate set every iteration from tchcv's schedule (linear warm-up from
  `warmup_factor * lr`, then constant, cosine or steps: src/train/schedule.rs);
- one log line per `--log-every` iterations (loc and cls loss per positive, as torchcv printed);
- `--channels-last`: the model and the images in `torch.channels_last`;
- `--snapshot-every K`: the weights every K iterations (their saving outside the step times, as
  `tchcv train --snapshot-every`), for the bench's mAP over training time.

    python bench/train_reference.py --spec models/ssd_small.json --list IMAGES.json \
        --iters 100 --batch 32 --workers 1 --threads 2 [--init W.safetensors] [--save OUT.safetensors] \
        [--snapshot-every K --snapshot-dir DIR]

IMAGES.json: {"classes": [...], "images": [{"path", "boxes": [[x0, y0, x1, y1], ...] (0-based
pixels, difficult objects left out), "labels": [0-based class ids]}]}; `tchcv bench train`
writes it from tchcv's own reading of the VOC folder, so both sides train on the same list.
`--voc ROOT --sets trainval` reads a single VOC folder itself instead (tests/reference/voc_eval.py).

Prints `train: ...` just before the loop starts (the bench times start-up as the process's start
to that line), then the log lines, then one JSON line: per step `[images, seconds, data wait
seconds, learning rate]` (`steps`), the parameters, peak memory (the training process's peak RSS; the peak of
its RSS plus its data workers' private memory, sampled every 0.2 s; on CUDA
`torch.cuda.max_memory_allocated`), and the last step's loss.
"""

import argparse
import json
import math
import random
import resource
import sys
import threading
import time
from pathlib import Path

SCRIPT_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent / "tests" / "reference"))
sys.path.insert(0, str(here))
import box_coder  # noqa: E402
import ssd_net  # noqa: E402
from data_reference import augment, load_item  # noqa: E402
from loss_reference import ssd_loss_parts  # noqa: E402


class Detection(torch.utils.data.Dataset):
    """Images decoded, augmented and encoded into (x [3, H, W], loc [A, 4], cls [A])."""

    def __init__(self, images, spec, augment_cfg):
        self.images, self.spec, self.augment_cfg = images, spec, augment_cfg
        self.size = tuple(spec["input_size"])
        self.anchors = box_coder.anchors_for(spec)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x, boxes, labels = augment(*load_item(self.images[i]), self.size, self.augment_cfg)
        loc, cls, _ = box_coder.encode(self.spec, self.anchors, boxes, labels)
        return x, loc, cls


def read_voc_folder(root, sets):
    """{"classes", "images"} of a single VOC folder (non-difficult objects, 0-based boxes)."""
    import voc_eval
    classes, ground_truth = voc_eval.read_voc(root, sets.split(","))
    images = []
    for g in ground_truth:
        keep = [j for j, d in enumerate(g["difficult"]) if not d]
        images.append({"path": str(Path(root) / "JPEGImages" / f"{g['image_id']}.jpg"),
                       "boxes": [[b[0] - 1, b[1] - 1, b[2], b[3]] for b in (g["boxes"][j] for j in keep)],
                       "labels": [g["labels"][j] for j in keep]})
    return {"classes": classes, "images": images}


def learning_rate(it, args, total):
    """tchcv's Schedule.lr (src/train/schedule.rs) at 0-based iteration `it`."""
    kind, _, rest = args.lr_schedule.partition(":")
    if kind == "constant":
        lr = args.lr
    elif kind == "cosine":
        low = float(rest) if rest else 0.0
        cos = 0.5 * (1.0 + math.cos(math.pi * min(it / max(total, 1), 1.0)))
        lr = args.lr * (low + (1.0 - low) * cos)
    elif kind == "step":
        milestones, _, gamma = rest.partition(":")
        passed = sum(it >= int(m) for m in milestones.split(","))
        lr = args.lr * (float(gamma) if gamma else 0.1) ** passed
    else:
        sys.exit(f"--lr-schedule {args.lr_schedule!r}: expected constant, cosine[:MIN] or step:...")
    if it < args.warmup:
        alpha = it / args.warmup
        lr *= args.warmup_factor * (1.0 - alpha) + alpha
    return lr


def memory_format(args):
    return torch.channels_last if args.channels_last else torch.contiguous_format


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, nesterov=args.nesterov)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)


class MemorySampler:
    """The peak over time (sampled every 0.2 s) of the memory the run occupies: this process's
    RSS plus its data workers' private memory (forked workers share the parent's pages until
    they write them; counting only their private pages counts shared ones once, as the RSS of
    tchcv's one process does)."""

    def __init__(self):
        self.pids, self.peak_kib, self.stop = [], 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def kib(pid, fields):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                return sum(int(line.split()[1]) for line in f if line.split(":")[0] in fields)
        except OSError:
            return 0

    def sample(self):
        total = self.kib("self", ("Rss",))
        total += sum(self.kib(p, ("Private_Clean", "Private_Dirty")) for p in list(self.pids))
        self.peak_kib = max(self.peak_kib, total)

    def run(self):
        while not self.stop.wait(0.2):
            self.sample()

    def finish(self):
        self.sample()
        self.stop.set()
        return self.peak_kib / 1024.0


def build(args, data, device):
    """The model (with --init's weights), its optimizer and the loader."""
    spec = box_coder.load_spec(args.spec)
    model = ssd_net.build(json.loads(Path(args.spec).read_text()), len(data["classes"]))
    if args.init:
        missing, unexpected = model.load_state_dict(load_file(args.init), strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            sys.exit(f"--init {args.init}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.to(device).to(memory_format=memory_format(args)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(args, params)
    cfg = json.loads(args.augment) if args.augment else None
    loader = torch.utils.data.DataLoader(
        Detection(data["images"], spec, cfg), batch_size=args.batch, shuffle=True,
        num_workers=args.workers, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0, drop_last=False,
        generator=torch.Generator().manual_seed(args.seed))
    return model, params, optimizer, loader


def batches(loader, memory):
    """Batches over as many epochs as asked for (a new epoch when one ends, as tchcv's loop)."""
    while True:
        it = iter(loader)
        memory.pids = [w.pid for w in getattr(it, "_workers", [])]
        yield from it


def train(args, model, optimizer, loader, device, memory):
    """The loop: per step [images, seconds since the previous step, seconds waiting for data,
    learning rate]."""
    steps, last = [], None
    tick = time.perf_counter()
    stream = batches(loader, memory)
    for it in range(args.iters):
        lr = learning_rate(it, args, args.iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        wait_start = time.perf_counter()
        images, loc_targets, cls_targets = next(stream)
        wait = time.perf_counter() - wait_start
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format(args))
        loc_targets = loc_targets.to(device, non_blocking=True)
        cls_targets = cls_targets.to(device, non_blocking=True)
        loc_preds, cls_preds = model(images)
        loc_loss, cls_loss, num_pos = ssd_loss_parts(loc_preds, loc_targets, cls_preds, cls_targets)
        loss = (loc_loss + cls_loss) / max(1, num_pos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        d = max(1, num_pos)
        last = {"loc_per_pos": loc_loss.item() / d, "cls_per_pos": cls_loss.item() / d,
                "total": loss.item(), "num_pos": num_pos}
        now = time.perf_counter()
        seconds, tick = now - tick, now
        steps.append([images.size(0), seconds, wait, lr])
        if (it + 1) % args.log_every == 0 or it + 1 == args.iters:
            print(f"iter {it + 1}/{args.iters} | loc_loss {last['loc_per_pos']:.3f} | cls_loss "
                  f"{last['cls_per_pos']:.3f} | pos {num_pos} | lr {lr:.2e} | "
                  f"{images.size(0) / seconds:.1f} img/s", flush=True)
        if args.snapshot_every and (it + 1) % args.snapshot_every == 0:
            saving = time.perf_counter()
            save_weights(model, Path(args.snapshot_dir) / f"iter-{it + 1:06}.safetensors")
            tick += time.perf_counter() - saving  # outside the step times, as tchcv's snapshots
    return steps, last


def save_weights(model, path):
    """The model's state under tchcv's variable names, as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = ssd_net.tchcv_names(model.state_dict())
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--list", help="IMAGES.json (see above)")
    p.add_argument("--voc", help="a single VOC folder, instead of --list")
    p.add_argument("--sets", default="trainval")
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--warmup-factor", type=float, default=0.001)
    p.add_argument("--lr-schedule", default="constant")
    p.add_argument("--augment", help="tchcv AugmentConfig as JSON")
    p.add_argument("--channels-last", action="store_true", help="model and images channels-last")
    p.add_argument("--init", help="initial weights (tchcv names)")
    p.add_argument("--save", help="write the trained weights here (tchcv names)")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also save the weights every K iterations, as SNAPSHOT_DIR/iter-K.safetensors")
    p.add_argument("--snapshot-dir")
    args = p.parse_args()
    if not (args.list or args.voc) or args.iters < 1 or args.batch < 1 or args.workers < 0:
        p.error("give --list or --voc, --iters >= 1, --batch >= 1, --workers >= 0")
    if args.snapshot_every < 0 or (args.snapshot_every and not args.snapshot_dir):
        p.error("--snapshot-every K needs K >= 0 and --snapshot-dir")
    return args


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as tchcv train on CUDA
    data = json.loads(Path(args.list).read_text()) if args.list else read_voc_folder(args.voc, args.sets)
    memory = MemorySampler()
    model, params, optimizer, loader = build(args, data, device)
    startup = time.perf_counter() - SCRIPT_START
    print(f"train: {Path(args.spec).stem} | {len(data['images'])} images | {args.iters} iterations | "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads", flush=True)
    steps, last = train(args, model, optimizer, loader, device, memory)
    if device.type == "cuda":
        torch.cuda.synchronize()
    report = {"steps": steps, "last": last, "startup_seconds_in_script": startup,
              "parameters": sum(p.numel() for p in params), "workers": args.workers,
              "threads": torch.get_num_threads(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "peak_with_workers_mib": memory.finish()}
    if device.type == "cuda":
        report["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.save:
        save_weights(model, Path(args.save))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
