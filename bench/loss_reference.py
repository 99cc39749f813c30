"""PyTorch eager counterparts of tchcv's losses, timed on the same tensors as `tchcv bench loss`.

The SSD loss is torchcv's `SSDLoss` (double-sort hard negative mining, sum over the batch,
divided by the batch positives) with the minimal modern-torch fixes; the focal loss is the
torchvision `sigmoid_focal_loss` formula used by a RetinaNet head (one-hot targets without the
background column, ignored anchors dropped). Both written for this project.

    python bench/loss_reference.py --case CASE.safetensors --loss ssd --device cpu --repeat 20

prints one JSON line: {"median_ms": ..., "total": ..., "op_calls": [[name, [children]], ...]},
the last being the operators one more forward + backward dispatches (bench/op_count.py).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from op_count import count_ops
from safetensors.torch import load_file


def positives_and_loc_loss(loc_preds, loc_targets, cls_targets):
    """torchcv's first lines: pos [N,A], the batch's num_pos (a Python int) and the Smooth-L1
    sum over the positives."""
    pos = cls_targets > 0
    mask = pos.unsqueeze(2).expand_as(loc_preds)
    loc_loss = F.smooth_l1_loss(loc_preds[mask], loc_targets[mask], reduction="sum")
    return pos, pos.sum().item(), loc_loss


def ssd_loss(loc_preds, loc_targets, cls_preds, cls_targets):
    """torchcv SSDLoss.forward: [N,A,4], [N,A,4], [N,A,C], [N,A] -> scalar."""
    loc_loss, cls_loss, num_pos = ssd_loss_parts(loc_preds, loc_targets, cls_preds, cls_targets)
    return (loc_loss + cls_loss) / max(1, num_pos)


def ssd_loss_parts(loc_preds, loc_targets, cls_preds, cls_targets):
    """torchcv SSDLoss.forward before its division: (loc_loss sum, cls_loss sum, num_pos), the
    parts torchcv's training loop printed per positive."""
    pos, num_pos, loc_loss = positives_and_loc_loss(loc_preds, loc_targets, cls_targets)
    n, a, c = cls_preds.shape
    cls_loss = F.cross_entropy(cls_preds.view(-1, c), cls_targets.view(-1), reduction="none",
                               ignore_index=-1).view(n, a)
    cls_loss[cls_targets < 0] = 0
    # _hard_negative_mining
    with torch.no_grad():
        tmp = cls_loss * (pos.float() - 1)
        _, idx = tmp.sort(1)
        _, rank = idx.sort(1)
        num_neg = 3 * pos.sum(1)
        neg = rank < num_neg[:, None]
    cls_loss = cls_loss[pos | neg].sum()
    return loc_loss, cls_loss, num_pos


def focal_loss(loc_preds, loc_targets, cls_preds, cls_targets, alpha=0.25, gamma=2.0):
    """RetinaNet sigmoid focal loss (torchvision formula), normalised by the batch positives."""
    pos, num_pos, loc_loss = positives_and_loc_loss(loc_preds, loc_targets, cls_targets)
    valid = cls_targets > -1
    c = cls_preds.shape[-1]
    x = cls_preds[valid]
    t = F.one_hot(cls_targets[valid], c + 1)[:, 1:].to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return (loc_loss + loss.sum()) / max(1, num_pos)


def softmax_focal_loss(loc_preds, loc_targets, cls_preds, cls_targets, gamma=2.0):
    """Softmax focal loss without class weights, normalised by the batch positives."""
    pos, num_pos, loc_loss = positives_and_loc_loss(loc_preds, loc_targets, cls_targets)
    valid = cls_targets > -1
    c = cls_preds.shape[-1]
    x = cls_preds[valid].view(-1, c)
    y = cls_targets[valid]
    log_pt = F.log_softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    return (loc_loss + loss.sum()) / max(1, num_pos)


LOSSES = {"ssd": ssd_loss, "focal": focal_loss, "softmax_focal": softmax_focal_loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", required=True)
    parser.add_argument("--loss", choices=sorted(LOSSES), default="ssd")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t = {k: v.to(device) for k, v in load_file(args.case).items()}
    loc_preds = t["loc_preds"].requires_grad_(True)
    cls_preds = t["cls_preds"].requires_grad_(True)
    fn = LOSSES[args.loss]

    def step():
        loss = fn(loc_preds, t["loc_targets"], cls_preds, t["cls_targets"])
        torch.autograd.grad(loss, [loc_preds, cls_preds])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    for _ in range(args.warmup):
        loss = step()
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    op_calls, _ = count_ops(step)
    print(json.dumps({"median_ms": statistics.median(times), "total": float(loss.detach()),
                      "op_calls": op_calls}))


if __name__ == "__main__":
    main()
