#!/usr/bin/env python
"""PyTorch reference for tchcv's detection losses (the yardstick of tests/loss_parity.rs).

Three losses, each with the same Smooth-L1 box term:

* ssd_loss            torchcv `SSDLoss` (softmax CE + hard negative mining, double sort), with
                      ignore labels, min_negatives, a clamped normaliser and 'all' / external masks.
* focal_loss          RetinaNet sigmoid focal loss with fvcore / torchvision semantics
                      (NOT torchcv HEAD's one_hot(y-1) background bug).
* softmax_focal_loss  softmax focal loss over [bg, fg...] logits with optional class weights
                      1/ln(1.10 + f_c) from a histogram (static or per batch).

Commands:

    losses.py gen --seed S --out DIR [--device cpu|cuda] [--set full|small]
    losses.py check-mask --case CASE.safetensors --options JSON --neg-mask MASK.safetensors --out OUT.safetensors
    losses.py selftest

See tests/reference/README.md for the file formats.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import ReferenceError  # noqa: E402

LOSSES = ("ssd", "focal", "softmax_focal")

DEFAULT_OPTIONS = {
    "ssd": {
        "neg_pos_ratio": 3.0,
        "mining": "hard",            # "hard" | "all" | "random" (random: mask given from outside)
        "min_negatives": 0,
        "normalizer_min": 1.0,
        "beta": 1.0,
    },
    "focal": {
        "alpha": 0.25,               # None disables the alpha weighting (fvcore's alpha=-1)
        "gamma": 2.0,
        "normalizer_min": 1.0,
        "beta": 1.0,
    },
    "softmax_focal": {
        "gamma": 2.0,
        "class_weights": "none",     # "none" | "static" | "batch"
        "background_weight": "histogram",   # "histogram" | "fg_sum_over_3"
        "reduction": "per_positive",        # "per_positive" | "mean"
        "normalizer_min": 1.0,
        "beta": 1.0,
    },
}

CHOICES = {
    "mining": ("hard", "all", "random"),
    "class_weights": ("none", "static", "batch"),
    "background_weight": ("histogram", "fg_sum_over_3"),
    "reduction": ("per_positive", "mean"),
}


# --------------------------------------------------------------------------------------------
# Loss pieces
# --------------------------------------------------------------------------------------------

def smooth_l1_on_positives(loc_preds, loc_targets, pos, beta=1.0):
    """Smooth-L1 summed over the positive anchors only (torchcv's masked selection).

    Args:
      loc_preds:   [N,A,4] predicted offsets.
      loc_targets: [N,A,4] encoded targets (may hold inf on non-positive anchors: never read).
      pos:         [N,A] bool, positive anchors.
      beta:        Smooth-L1 threshold: 0.5*d^2/beta if |d| < beta, else |d| - 0.5*beta.
    Returns:
      0-d tensor, the sum over the 4*num_pos selected coordinates.
    """
    mask = pos.unsqueeze(2).expand_as(loc_preds)
    return F.smooth_l1_loss(loc_preds[mask], loc_targets[mask], reduction="sum", beta=beta)


def normalizer(num_pos, normalizer_min=1.0):
    """D = max(normalizer_min, num_pos), num_pos being the batch total of positives."""
    return max(float(normalizer_min), float(num_pos))


def num_hard_negatives(cls_targets, neg_pos_ratio=3.0, min_negatives=0):
    """k_i = min(#candidates_i, max(floor(neg_pos_ratio * num_pos_i), min_negatives)).

    Args:
      cls_targets: [N,A] int64, 0 = background (a negative candidate), >0 positive, <0 ignored.
    Returns:
      k: [N] int64 (floor taken in float64).
    """
    num_pos = (cls_targets > 0).sum(1)
    num_candidates = (cls_targets == 0).sum(1)
    k = torch.floor(num_pos.double() * float(neg_pos_ratio)).long()
    k = k.clamp(min=int(min_negatives))
    return torch.minimum(k, num_candidates)


def hard_negative_mining(cls_loss, cls_targets, k):
    """torchcv's double sort: the k_i negative candidates with the largest CE, per image.

    Candidates score -CE; positives and ignored anchors score +inf so they sort last.
    Both sorts are stable, so equal CE values are taken lower anchor index first.

    Args:
      cls_loss:    [N,A] per-anchor cross entropy.
      cls_targets: [N,A] int64.
      k:           [N] int64, number of negatives per image (k_i <= #candidates_i).
    Returns:
      neg: [N,A] bool.
    """
    with torch.no_grad():
        candidates = cls_targets == 0
        score = torch.where(candidates, -cls_loss, torch.full_like(cls_loss, math.inf))
        _, idx = score.sort(dim=1, stable=True)     # hardest negatives first
        _, rank = idx.sort(dim=1, stable=True)      # each anchor's position in that order
        return rank < k.unsqueeze(1)


def mining_has_ties(cls_loss, cls_targets, k):
    """True when some image's k_i-th and (k_i+1)-th largest candidate CE are equal,
    i.e. the hard-negative mask is not unique (only the loss value is).

    Args: cls_loss [N,A], cls_targets [N,A] int64, k [N] int64.
    """
    with torch.no_grad():
        for i in range(cls_loss.size(0)):
            ce = cls_loss[i][cls_targets[i] == 0]
            ki = int(k[i])
            if 0 < ki < ce.numel():
                ordered = ce.sort(descending=True).values
                if bool(ordered[ki - 1] == ordered[ki]):
                    return True
    return False


def ssd_loss(loc_preds, loc_targets, cls_preds, cls_targets, neg_pos_ratio=3.0, mining="hard",
             min_negatives=0, normalizer_min=1.0, beta=1.0, neg_mask=None):
    """torchcv SSDLoss.forward, with ignore labels and tchcv's extensions.

    Args:
      loc_preds:   [N,A,4] float.
      loc_targets: [N,A,4] float.
      cls_preds:   [N,A,C] float logits, column 0 = background.
      cls_targets: [N,A] int64: 0 = background, 1..C-1 = class, -1 = ignore.
      mining:      'hard' (double sort), 'all' (every candidate), 'random' (use neg_mask).
      neg_mask:    [N,A] bool, required for mining='random'; must select candidates only.
    Returns:
      dict with 0-d tensors total, loc_sum, cls_sum, loc_per_pos, cls_per_pos; ints num_pos,
      num_neg; neg_mask [N,A] bool; k [N] int64 (None unless mining='hard'); has_ties bool.
    """
    N, A, C = cls_preds.shape
    pos = cls_targets > 0
    candidates = cls_targets == 0
    num_pos = int(pos.sum())

    loc_sum = smooth_l1_on_positives(loc_preds, loc_targets, pos, beta)

    cls_loss = F.cross_entropy(cls_preds.reshape(-1, C), cls_targets.reshape(-1),
                               reduction="none", ignore_index=-1).view(N, A)

    k, has_ties = None, False
    if mining == "hard":
        k = num_hard_negatives(cls_targets, neg_pos_ratio, min_negatives)
        neg = hard_negative_mining(cls_loss.detach(), cls_targets, k)
        has_ties = mining_has_ties(cls_loss.detach(), cls_targets, k)
    elif mining == "all":
        neg = candidates
    elif mining == "random":
        if neg_mask is None:
            raise ReferenceError("mining='random' needs a neg_mask given from outside")
        neg = neg_mask.to(device=cls_targets.device, dtype=torch.bool)
    else:
        raise ReferenceError(f"unknown mining {mining!r}")

    cls_sum = cls_loss[pos | neg].sum()
    D = normalizer(num_pos, normalizer_min)
    return {
        "total": (loc_sum + cls_sum) / D,
        "loc_sum": loc_sum,
        "cls_sum": cls_sum,
        "num_pos": num_pos,
        "num_neg": int(neg.sum()),
        "loc_per_pos": loc_sum / D,
        "cls_per_pos": cls_sum / D,
        "neg_mask": neg,
        "k": k,
        "has_ties": has_ties,
    }


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0):
    """Elementwise sigmoid focal loss (fvcore / torchvision.ops), reduction 'none'.

    Args:
      inputs:  [V,C] logits.
      targets: [V,C] float 0/1.
      alpha:   weight of the positives (1-alpha on negatives); None = no weighting.
      gamma:   focusing exponent; the gradient flows through (1 - p_t)**gamma.
    Returns:
      [V,C] loss.
    """
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha is not None:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = loss * alpha_t
    return loss


def focal_loss(loc_preds, loc_targets, cls_preds, cls_targets, alpha=0.25, gamma=2.0,
               normalizer_min=1.0, beta=1.0):
    """RetinaNet FocalLoss.forward (torchcv before 41dcece, = fvcore semantics).

    Args:
      loc_preds, loc_targets: [N,A,4].
      cls_preds:   [N,A,C] logits, NO background column.
      cls_targets: [N,A] int64: 0 = background, k in 1..C = column k-1, -1 = ignore.
    Returns:
      dict with 0-d tensors total, loc_sum, cls_sum, loc_per_pos, cls_per_pos; ints num_pos,
      num_neg (valid anchors with target 0).
    """
    C = cls_preds.size(2)
    pos = cls_targets > 0
    valid = cls_targets > -1
    num_pos = int(pos.sum())

    loc_sum = smooth_l1_on_positives(loc_preds, loc_targets, pos, beta)

    x = cls_preds[valid]                                            # [V,C]
    t = F.one_hot(cls_targets[valid], C + 1)[:, 1:].to(x.dtype)     # [V,C], background = all 0
    cls_sum = sigmoid_focal_loss(x, t, alpha, gamma).sum()

    D = normalizer(num_pos, normalizer_min)
    return {
        "total": (loc_sum + cls_sum) / D,
        "loc_sum": loc_sum,
        "cls_sum": cls_sum,
        "num_pos": num_pos,
        "num_neg": int((cls_targets == 0).sum()),
        "loc_per_pos": loc_sum / D,
        "cls_per_pos": cls_sum / D,
    }


def class_weights_from_histogram(hist, background_weight="histogram"):
    """w_c = 1 / ln(1.10 + f_c), f_c = h_c / sum(h).

    Args:
      hist: [C] class counts (index 0 = background), any real or integer dtype.
      background_weight: 'histogram' keeps w_0; 'fg_sum_over_3' sets w_0 = sum(w_1..w_{C-1}) / 3.
    Returns:
      [C] weights in hist's float dtype (float32 for integer counts).
    """
    h = hist if hist.is_floating_point() else hist.float()
    f = h / h.sum()
    w = 1.0 / torch.log(1.10 + f)
    if background_weight == "fg_sum_over_3":
        w = w.clone()
        w[0] = w[1:].sum() / 3
    elif background_weight != "histogram":
        raise ReferenceError(f"unknown background_weight {background_weight!r}")
    return w


def softmax_focal_term(x, y, weights, gamma=2.0):
    """Elementwise softmax focal loss, -w[y] * (1 - p_t)**gamma * log p_t.

    Args:
      x: [V,C] logits (column 0 = background).  y: [V] int64 in 0..C-1.
      weights: [C] class weights.  gamma: focusing exponent (0 = weighted cross entropy).
    Returns:
      [V] loss.
    """
    log_p = F.log_softmax(x, dim=1)
    log_pt = log_p.gather(1, y.unsqueeze(1)).squeeze(1)
    p_t = log_pt.exp()
    return -weights[y] * (1 - p_t) ** gamma * log_pt


def softmax_focal_loss(loc_preds, loc_targets, cls_preds, cls_targets, gamma=2.0,
                       class_weights="none", background_weight="histogram",
                       reduction="per_positive", normalizer_min=1.0, beta=1.0, class_counts=None):
    """Softmax focal loss + Smooth-L1 (tchcv extension; torchcv's old focal_loss_softmax + weights).

    Args:
      loc_preds, loc_targets: [N,A,4].
      cls_preds:    [N,A,C] logits, column 0 = background.
      cls_targets:  [N,A] int64: 0 = background, 1..C-1 = class, -1 = ignore.
      class_weights: 'none' (ones), 'static' (from class_counts [C]), 'batch' (this batch's
                     histogram of valid targets).
      reduction:    'per_positive': total = (loc_sum + cls_sum) / D;
                    'mean':         total = loc_sum / D + cls_sum / max(1, V).
    Returns:
      dict as focal_loss, plus 'weights' [C].
    """
    C = cls_preds.size(2)
    pos = cls_targets > 0
    valid = cls_targets > -1
    num_pos = int(pos.sum())

    loc_sum = smooth_l1_on_positives(loc_preds, loc_targets, pos, beta)

    x = cls_preds[valid]            # [V,C]
    y = cls_targets[valid]          # [V]
    V = y.numel()

    with torch.no_grad():
        if class_weights == "none":
            w = torch.ones(C, dtype=x.dtype, device=x.device)
        elif class_weights == "static":
            if class_counts is None:
                raise ReferenceError("class_weights='static' needs class_counts [C]")
            if class_counts.numel() != C:
                raise ReferenceError(f"class_counts has {class_counts.numel()} entries, expected C={C}")
            w = class_weights_from_histogram(class_counts.to(device=x.device, dtype=x.dtype),
                                             background_weight)
        elif class_weights == "batch":
            hist = torch.bincount(y, minlength=C).to(x.dtype)
            w = class_weights_from_histogram(hist, background_weight)
        else:
            raise ReferenceError(f"unknown class_weights {class_weights!r}")

    cls_sum = softmax_focal_term(x, y, w, gamma).sum()

    D = normalizer(num_pos, normalizer_min)
    if reduction == "per_positive":
        total = (loc_sum + cls_sum) / D
    elif reduction == "mean":
        total = loc_sum / D + cls_sum / max(1, V)
    else:
        raise ReferenceError(f"unknown reduction {reduction!r}")
    return {
        "total": total,
        "loc_sum": loc_sum,
        "cls_sum": cls_sum,
        "num_pos": num_pos,
        "num_neg": int((y == 0).sum()),
        "loc_per_pos": loc_sum / D,
        "cls_per_pos": cls_sum / D,
        "weights": w,
    }


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

def full_options(loss, options):
    """Defaults for `loss` overridden by `options`; checks names, types and choices."""
    if loss not in LOSSES:
        raise ReferenceError(f"unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
    defaults = DEFAULT_OPTIONS[loss]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ReferenceError(f"unknown {loss} option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(defaults)}")
    opts = dict(defaults)
    opts.update(options)
    for key, value in opts.items():
        if key in CHOICES:
            if value not in CHOICES[key]:
                raise ReferenceError(f"option {key}={value!r}: expected one of {', '.join(CHOICES[key])}")
        elif key == "alpha":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ReferenceError(f"option alpha={value!r}: expected a number or null")
            if value is not None:
                opts[key] = float(value)
        elif key == "min_negatives":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ReferenceError(f"option min_negatives={value!r}: expected an integer >= 0")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ReferenceError(f"option {key}={value!r}: expected a finite number")
            opts[key] = float(value)
    return opts


def compute_loss(loss, loc_preds, loc_targets, cls_preds, cls_targets, opts, class_counts=None,
                 neg_mask=None):
    """Dispatch to the loss named `loss` with full options `opts`."""
    if loss == "ssd":
        return ssd_loss(loc_preds, loc_targets, cls_preds, cls_targets, neg_mask=neg_mask, **opts)
    if loss == "focal":
        return focal_loss(loc_preds, loc_targets, cls_preds, cls_targets, **opts)
    return softmax_focal_loss(loc_preds, loc_targets, cls_preds, cls_targets,
                              class_counts=class_counts, **opts)


def check_inputs(loc_preds, loc_targets, cls_preds, cls_targets, loss):
    """Shapes and dtypes of the four loss inputs."""
    if cls_preds.dim() != 3:
        raise ReferenceError(f"cls_preds must be [N,A,C], got {list(cls_preds.shape)}")
    N, A, C = cls_preds.shape
    for name, t in (("loc_preds", loc_preds), ("loc_targets", loc_targets)):
        if list(t.shape) != [N, A, 4]:
            raise ReferenceError(f"{name} must be [N,A,4] = {[N, A, 4]}, got {list(t.shape)}")
        if t.dtype != torch.float32:
            raise ReferenceError(f"{name} must be float32, got {t.dtype}")
    if cls_preds.dtype != torch.float32:
        raise ReferenceError(f"cls_preds must be float32, got {cls_preds.dtype}")
    if list(cls_targets.shape) != [N, A] or cls_targets.dtype != torch.int64:
        raise ReferenceError(f"cls_targets must be int64 [N,A] = {[N, A]}, "
                             f"got {cls_targets.dtype} {list(cls_targets.shape)}")
    top = C if loss == "focal" else C - 1
    if cls_targets.numel() and (int(cls_targets.min()) < -1 or int(cls_targets.max()) > top):
        raise ReferenceError(f"cls_targets must lie in -1..{top} for {loss} with C={C}")


def run_loss(loss, inputs, opts, device, neg_mask=None):
    """Compute a loss on `device` and its gradients; everything returned on CPU.

    inputs: dict of CPU tensors loc_preds, loc_targets, cls_preds, cls_targets [, class_counts].
    """
    loc_preds = inputs["loc_preds"].detach().to(device, copy=True).requires_grad_(True)
    cls_preds = inputs["cls_preds"].detach().to(device, copy=True).requires_grad_(True)
    loc_targets = inputs["loc_targets"].to(device)
    cls_targets = inputs["cls_targets"].to(device)
    class_counts = inputs.get("class_counts")
    out = compute_loss(loss, loc_preds, loc_targets, cls_preds, cls_targets, opts,
                       class_counts=class_counts, neg_mask=neg_mask)
    out["total"].backward()
    out["grad_loc_preds"] = loc_preds.grad.detach().cpu()
    out["grad_cls_preds"] = cls_preds.grad.detach().cpu()
    for key in ("total", "loc_sum", "cls_sum", "loc_per_pos", "cls_per_pos", "neg_mask", "k", "weights"):
        if out.get(key) is not None:
            out[key] = out[key].detach().cpu()
    for key in ("total", "loc_sum", "cls_sum", "grad_loc_preds", "grad_cls_preds"):
        if not bool(torch.isfinite(out[key]).all()):
            raise ReferenceError(f"{loss}: {key} is not finite")
    return out


# --------------------------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------------------------

@dataclass
class CaseSpec:
    """How to build one case's inputs.  A = anchors per image, C = cls_preds columns."""
    name: str
    loss: str
    n: int
    a: int
    c: int
    about: str
    options: dict = field(default_factory=dict)
    pos_frac: tuple = (0.001, 0.05)   # per-image positive fraction, log-uniform in this range
    no_pos_images: tuple = ()         # image indices without positives; "all" for the batch
    ignore_frac: float = 0.02         # fraction of non-positive anchors labelled -1
    extreme_frac: float = 0.003       # fraction of rows with +-100 logits
    inf_loc_targets: bool = False     # images without positives get -inf w,h targets (E8)
    tie: bool = False                 # deliberate ties in the mining scores
    zero_count_class: bool = False    # static histogram with one empty foreground class


def _u(g, lo=0.0, hi=1.0):
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g, lo, hi):
    """Integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (), generator=g))


def place_positives(g, labels, n_pos, num_fg):
    """Put n_pos positives into labels [A] (in place) as small clusters of consecutive anchors
    (the anchors of one feature-map cell, like real matches), one class per cluster."""
    A = labels.numel()
    placed, tries = 0, 0
    while placed < n_pos and tries < 100 * n_pos + 100:
        tries += 1
        size = _randint(g, 1, 9)
        start = _randint(g, 0, A)
        idx = torch.arange(start, min(start + size, A))
        free = idx[labels[idx] == 0][: n_pos - placed]
        labels[free] = _randint(g, 1, num_fg + 1)
        placed += free.numel()


def generate_inputs(spec, g):
    """Build the CPU input tensors of `spec` from generator g (loc [N,A,4], logits [N,A,C],
    targets [N,A] int64, and class_counts [C] for static softmax weights)."""
    N, A, C = spec.n, spec.a, spec.c
    num_fg = C if spec.loss == "focal" else C - 1
    no_pos = range(N) if spec.no_pos_images == "all" else spec.no_pos_images

    # --- targets: clustered positives, a few % ignored
    cls_targets = torch.zeros(N, A, dtype=torch.int64)
    for i in range(N):
        if i not in no_pos:
            lo, hi = spec.pos_frac
            frac = math.exp(_u(g, math.log(lo), math.log(hi)))
            place_positives(g, cls_targets[i], max(1, round(frac * A)), num_fg)
    ignore = (torch.rand(N, A, generator=g) < spec.ignore_frac) & (cls_targets == 0)
    cls_targets[ignore] = -1
    pos = cls_targets > 0

    # --- logits: continuous, with a confident background and a bump on the true class
    if spec.loss == "focal":
        cls_preds = torch.randn(N, A, C, generator=g) * 1.5 - 2.5
        bump = torch.zeros(N, A, C)
        cols = (cls_targets - 1).clamp(min=0).unsqueeze(2)
        bump.scatter_(2, cols, 3.0 * torch.rand(N, A, 1, generator=g))
        cls_preds += bump * pos.unsqueeze(2)
    else:
        cls_preds = torch.randn(N, A, C, generator=g) * 1.5
        cls_preds[:, :, 0] += 1.5
        bump = torch.zeros(N, A, C)
        cols = cls_targets.clamp(min=0).unsqueeze(2)
        bump.scatter_(2, cols, 2.0 * torch.rand(N, A, 1, generator=g))
        cls_preds += bump * pos.unsqueeze(2)

    # --- rows with +-100 logits.  For SSD negative candidates only one column is set, so their
    # CE stays continuous (except exact 0 when the background is +100) and mining sees no ties.
    n_ext = round(spec.extreme_frac * A)
    if n_ext > 0:
        for i in range(N):
            rows = torch.randperm(A, generator=g)[:n_ext]
            signs = torch.where(torch.rand(n_ext, C, generator=g) < 0.5, -100.0, 100.0)
            one_col = torch.randint(0, C, (n_ext,), generator=g)
            for j, r in enumerate(rows.tolist()):
                if spec.loss == "ssd" and cls_targets[i, r] == 0:
                    cls_preds[i, r, one_col[j]] = signs[j, 0]
                else:
                    cls_preds[i, r] = signs[j]

    if spec.tie:
        # image 0: half of the candidates share one hard row (CE ~ 8): the k-th and (k+1)-th
        # hardest negatives are equal.  Image 1: all logits 0, every CE = ln C.
        cand = (cls_targets[0] == 0).nonzero().squeeze(1)
        same = cand[torch.randperm(cand.numel(), generator=g)[: cand.numel() // 2]]
        row = torch.randn(C, generator=g)
        row[0], row[1] = -4.0, 4.0
        cls_preds[0, same] = row
        if N > 1:
            cls_preds[1] = 0.0

    # --- boxes: targets ~ N(0,1), preds = targets + noise, ~15% with |diff| > 1
    loc_targets = torch.randn(N, A, 4, generator=g)
    noise = torch.randn(N, A, 4, generator=g) * 0.4
    far = torch.rand(N, A, 4, generator=g) < 0.15
    jump = (1.0 + 2.0 * torch.rand(N, A, 4, generator=g)) * torch.sign(noise)
    loc_preds = loc_targets + noise + jump * far
    if spec.inf_loc_targets:
        # a degenerate ground truth [0,0,0,0]: log(0/d) = -inf in the w,h targets (E8)
        for i in no_pos:
            loc_targets[i, :, 2:] = -math.inf

    inputs = {
        "loc_preds": loc_preds.contiguous(),
        "loc_targets": loc_targets.contiguous(),
        "cls_preds": cls_preds.contiguous(),
        "cls_targets": cls_targets.contiguous(),
    }
    if spec.loss == "softmax_focal" and spec.options.get("class_weights") == "static":
        counts = torch.randint(500, 50_000, (C,), generator=g).float()
        counts[0] = float(torch.randint(2_000_000, 8_000_000, (), generator=g))
        if spec.zero_count_class and C > 2:
            counts[_randint(g, 1, C)] = 0.0
        inputs["class_counts"] = counts
    return inputs


def _ssd(name, n, a, c, about, **kw):
    return CaseSpec(name, "ssd", n, a, c, about, **kw)


def _focal(name, n, a, c, about, **kw):
    return CaseSpec(name, "focal", n, a, c, about, **kw)


def _sfocal(name, n, a, c, about, **kw):
    return CaseSpec(name, "softmax_focal", n, a, c, about, **kw)


FULL_SET = [
    _ssd("ssd_voc_n32_a8732_c21", 32, 8732, 21,
         "SSD300 VOC batch: 0.1-5% clustered positives, image 5 without positives, 2% ignore, +-100 rows",
         no_pos_images=(5,)),
    _ssd("ssd_n1_a8732_c2", 1, 8732, 2, "binary SSD (C=2), one image"),
    _ssd("ssd_n2_a24564_c81", 2, 24564, 81, "SSD512 anchors, COCO classes (C=81)"),
    _ssd("ssd_n4_a300_c21_crowded", 4, 300, 21,
         "25-40% positives: 3*num_pos > #negatives, k = all candidates", pos_frac=(0.25, 0.4)),
    _ssd("ssd_n2_a8732_c21_nopos_batch", 2, 8732, 21,
         "no positives in the batch (total 0, D = normalizer_min), -inf w,h loc targets",
         no_pos_images="all", inf_loc_targets=True),
    _ssd("ssd_n4_a8732_c21_min_negatives", 4, 8732, 21,
         "min_negatives=64, image 1 without positives (-inf loc targets), few positives elsewhere",
         options={"min_negatives": 64}, pos_frac=(0.001, 0.003), no_pos_images=(1,),
         inf_loc_targets=True),
    _ssd("ssd_n2_a8732_c21_mining_all", 2, 8732, 21, "mining 'all': every candidate is a negative",
         options={"mining": "all"}),
    _ssd("ssd_n4_a8732_c21_ratio_1_5", 4, 8732, 21, "neg_pos_ratio 1.5 (floor of odd counts)",
         options={"neg_pos_ratio": 1.5}),
    _ssd("ssd_n2_a8732_c21_ratio_10", 2, 8732, 21, "neg_pos_ratio 10", options={"neg_pos_ratio": 10.0}),
    _ssd("ssd_n2_a8732_c21_beta_0_5", 2, 8732, 21, "Smooth-L1 beta 0.5", options={"beta": 0.5}),
    _ssd("ssd_n2_a300_c21_normalizer_min", 2, 300, 21,
         "normalizer_min 16 above the 2-6 positives: D = 16",
         options={"normalizer_min": 16.0}, pos_frac=(0.004, 0.01)),
    _ssd("ssd_n2_a300_c21_ties", 2, 300, 21,
         "deliberate ties: image 0 half its candidates identical rows, image 1 all logits 0 (has_ties)",
         tie=True, extreme_frac=0.0, pos_frac=(0.03, 0.04)),
    _focal("focal_n2_a24564_c80", 2, 24564, 80, "RetinaNet-style, COCO C=80, alpha 0.25, gamma 2"),
    _focal("focal_n4_a8732_c20_alpha_none", 4, 8732, 20, "alpha None (fvcore default), gamma 2",
           options={"alpha": None}),
    _focal("focal_n2_a8732_c20_gamma0", 2, 8732, 20, "gamma 0: alpha-balanced BCE",
           options={"gamma": 0.0}),
    _focal("focal_n1_a300_c1", 1, 300, 1, "single class (C=1)", pos_frac=(0.01, 0.05)),
    _focal("focal_n2_a8732_c20_nopos_batch", 2, 8732, 20, "no positives in the batch (D = 1)",
           no_pos_images="all"),
    _focal("focal_n1_a8732_c80_bce_beta_0_5", 1, 8732, 80,
           "alpha None + gamma 0 (plain BCE sum), beta 0.5, 5% rows of +-100 logits",
           options={"alpha": None, "gamma": 0.0, "beta": 0.5}, extreme_frac=0.05),
    _sfocal("sfocal_n2_a8732_c21_none", 2, 8732, 21, "no class weights, per_positive, gamma 2"),
    _sfocal("sfocal_n2_a8732_c21_static_histogram", 2, 8732, 21,
            "static histogram weights, background from histogram, per_positive, gamma 2",
            options={"class_weights": "static"}),
    _sfocal("sfocal_n2_a8732_c21_static_fg3_mean", 2, 8732, 21,
            "static weights (one empty class), w0 = sum(fg)/3, mean reduction, gamma 2",
            options={"class_weights": "static", "background_weight": "fg_sum_over_3",
                     "reduction": "mean"}, zero_count_class=True),
    _sfocal("sfocal_n2_a24564_c81_batch_histogram_mean_g0", 2, 24564, 81,
            "batch histogram weights, mean reduction, gamma 0 (weighted CE)",
            options={"class_weights": "batch", "reduction": "mean", "gamma": 0.0}),
    _sfocal("sfocal_n4_a8732_c21_batch_fg3", 4, 8732, 21,
            "batch weights, w0 = sum(fg)/3, per_positive, gamma 2",
            options={"class_weights": "batch", "background_weight": "fg_sum_over_3"}),
    _sfocal("sfocal_n1_a300_c2_none_g0_mean", 1, 300, 2, "C=2, no weights, gamma 0 (plain CE), mean",
            options={"gamma": 0.0, "reduction": "mean"}, pos_frac=(0.01, 0.05)),
    _sfocal("sfocal_n2_a300_c21_nopos_batch_fg3", 2, 300, 21,
            "no positives: batch histogram is background only, w0 = sum(fg)/3",
            options={"class_weights": "batch", "background_weight": "fg_sum_over_3"},
            no_pos_images="all"),
]

SMALL_SET = [
    _ssd("ssd_basic", 3, 300, 21,
         "hard mining 3:1, clustered positives, image 2 without positives, ignore, +-100 rows",
         no_pos_images=(2,), extreme_frac=0.01),
    _ssd("ssd_c2", 2, 300, 2, "binary SSD (C=2)", extreme_frac=0.01),
    _ssd("ssd_c81", 1, 300, 81, "C=81", extreme_frac=0.01),
    _ssd("ssd_crowded", 2, 300, 21, "3*num_pos > #negatives", pos_frac=(0.25, 0.4)),
    _ssd("ssd_nopos_batch", 2, 300, 21, "no positives in the batch, -inf w,h loc targets",
         no_pos_images="all", inf_loc_targets=True),
    _ssd("ssd_min_negatives", 3, 300, 21, "min_negatives=20 (> 3*num_pos), image 1 without positives",
         options={"min_negatives": 20}, pos_frac=(0.005, 0.02), no_pos_images=(1,),
         inf_loc_targets=True),
    _ssd("ssd_mining_all", 2, 300, 21, "mining 'all'", options={"mining": "all"}),
    _ssd("ssd_ratio_1_5_beta_0_5", 2, 300, 21, "neg_pos_ratio 1.5, beta 0.5",
         options={"neg_pos_ratio": 1.5, "beta": 0.5}),
    _ssd("ssd_ratio_10_normalizer_min", 2, 300, 21, "neg_pos_ratio 10, normalizer_min 16 (D = 16)",
         options={"neg_pos_ratio": 10.0, "normalizer_min": 16.0}, pos_frac=(0.004, 0.01)),
    _ssd("ssd_ties", 2, 300, 21, "deliberate ties (has_ties = true)",
         tie=True, extreme_frac=0.0, pos_frac=(0.03, 0.04)),
    _focal("focal_default", 2, 300, 20, "alpha 0.25, gamma 2, C=20", extreme_frac=0.01),
    _focal("focal_c1_alpha_none", 2, 600, 1, "C=1, alpha None", options={"alpha": None},
           pos_frac=(0.01, 0.05), extreme_frac=0.01),
    _focal("focal_c80_gamma0_beta_0_5", 1, 300, 80, "C=80, gamma 0, beta 0.5",
           options={"gamma": 0.0, "beta": 0.5}, extreme_frac=0.02),
    _focal("focal_nopos_batch", 2, 300, 20, "no positives in the batch", no_pos_images="all"),
    _sfocal("sfocal_none", 2, 300, 21, "no weights, per_positive, gamma 2", extreme_frac=0.01),
    _sfocal("sfocal_static_histogram_mean", 2, 300, 21, "static weights, histogram w0, mean, gamma 2",
            options={"class_weights": "static", "reduction": "mean"}),
    _sfocal("sfocal_static_fg3_g0", 2, 300, 21, "static weights (one empty class), w0 = sum(fg)/3, gamma 0",
            options={"class_weights": "static", "background_weight": "fg_sum_over_3", "gamma": 0.0},
            zero_count_class=True),
    _sfocal("sfocal_batch_histogram_c2_g0", 2, 300, 2, "C=2, batch weights, histogram w0, gamma 0",
            options={"class_weights": "batch", "gamma": 0.0}, pos_frac=(0.01, 0.05)),
    _sfocal("sfocal_batch_fg3_mean_c81", 1, 300, 81, "C=81, batch weights, w0 = sum(fg)/3, mean, gamma 2",
            options={"class_weights": "batch", "background_weight": "fg_sum_over_3", "reduction": "mean"},
            extreme_frac=0.01),
    _sfocal("sfocal_nopos_batch", 2, 300, 21, "no positives, batch weights",
            options={"class_weights": "batch"}, no_pos_images="all"),
]

# With A <= 600 the realistic 0.1% would leave no positive at all: the small cases use 1-5%
# unless they say otherwise.
SMALL_SET = [replace(s, pos_frac=(0.01, 0.05)) if s.pos_frac == CaseSpec.pos_frac else s
             for s in SMALL_SET]

SETS = {"full": FULL_SET, "small": SMALL_SET}


def build_case(spec, seed, index, device):
    """Generate the inputs of `spec` (CPU, seeded) and compute the loss on `device`.

    Returns (tensors to save, JSON sidecar dict, raw loss output).
    """
    g = common.case_generator(seed, index)
    inputs = generate_inputs(spec, g)
    opts = full_options(spec.loss, spec.options)
    out = run_loss(spec.loss, inputs, opts, device)
    if spec.tie and not out["has_ties"]:
        raise ReferenceError(f"{spec.name}: the deliberate tie case has no tie at the k-th negative")

    tensors = dict(inputs)
    tensors["grad_loc_preds"] = out["grad_loc_preds"]
    tensors["grad_cls_preds"] = out["grad_cls_preds"]
    if spec.loss == "ssd":
        tensors["neg_mask"] = out["neg_mask"]
    sidecar = {
        "name": spec.name,
        "loss": spec.loss,
        "options": opts,
        "has_ties": bool(out["has_ties"]) if spec.loss == "ssd" else False,
        "device": device.type,
        "seed": seed,
        "expected": expected_scalars(out),
    }
    return tensors, sidecar, out


def expected_scalars(out):
    return {
        "total": common.to_py_float(out["total"]),
        "loc_sum": common.to_py_float(out["loc_sum"]),
        "cls_sum": common.to_py_float(out["cls_sum"]),
        "num_pos": int(out["num_pos"]),
        "num_neg": int(out["num_neg"]),
        "loc_per_pos": common.to_py_float(out["loc_per_pos"]),
        "cls_per_pos": common.to_py_float(out["cls_per_pos"]),
    }


def cmd_gen(args):
    device = common.resolve_device(args.device)
    specs = SETS[args.set]
    start = time.perf_counter()
    total_bytes = 0
    for index, spec in enumerate(specs):
        tensors, sidecar, out = build_case(spec, args.seed, index, device)
        st_path, _ = common.write_case(args.out, spec.name, tensors, sidecar)
        size = st_path.stat().st_size
        total_bytes += size
        e = sidecar["expected"]
        ties = "yes" if sidecar["has_ties"] else "no"
        print(f"{spec.name:48s} {spec.loss:13s} N={spec.n:<2d} A={spec.a:<5d} C={spec.c:<2d} "
              f"total={e['total']:.6g} num_pos={e['num_pos']} num_neg={e['num_neg']} "
              f"ties={ties} {size / 1e6:.2f}MB", flush=True)
        if sidecar["has_ties"] and not spec.tie:
            print(f"warning: {spec.name}: unexpected tie at the k-th negative (mask not unique)",
                  file=sys.stderr)
    print(f"{len(specs)} cases, {total_bytes / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s "
          f"(set {args.set}, seed {args.seed}, device {device.type}) -> {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# check-mask: SSD loss with an external neg mask (random mining)
# --------------------------------------------------------------------------------------------

def cmd_check_mask(args):
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        raise ReferenceError(f"--options is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise ReferenceError("--options must be a JSON object")
    # tchcv's random mining takes a seed; the mask here is already drawn, so it is not used.
    seed = options.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ReferenceError(f"option seed={seed!r}: expected an integer")
    opts = full_options("ssd", options)
    opts["mining"] = "random"      # the given mask is used whatever mining was asked

    inputs = common.read_tensors(args.case, ("loc_preds", "loc_targets", "cls_preds", "cls_targets"))
    inputs = {k: inputs[k] for k in ("loc_preds", "loc_targets", "cls_preds", "cls_targets")}
    check_inputs(inputs["loc_preds"], inputs["loc_targets"], inputs["cls_preds"],
                 inputs["cls_targets"], "ssd")
    mask = common.read_tensors(args.neg_mask, ("neg_mask",))["neg_mask"]
    cls_targets = inputs["cls_targets"]
    if list(mask.shape) != list(cls_targets.shape):
        raise ReferenceError(f"{args.neg_mask}: neg_mask has shape {list(mask.shape)}, "
                             f"expected [N,A] = {list(cls_targets.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ReferenceError(f"{args.neg_mask}: neg_mask must be bool (or integer 0/1), got {mask.dtype}")
        mask = mask.bool()
    stray = mask & (cls_targets != 0)
    if bool(stray.any()):
        n_pos = int((stray & (cls_targets > 0)).sum())
        n_ign = int((stray & (cls_targets < 0)).sum())
        raise ReferenceError(f"neg_mask selects {n_pos} positive and {n_ign} ignored anchor(s); "
                             f"negatives must have target 0")

    out = run_loss("ssd", inputs, opts, torch.device("cpu"), neg_mask=mask)
    scalars = {
        "total": float(out["total"]),
        "loc_sum": float(out["loc_sum"]),
        "cls_sum": float(out["cls_sum"]),
        "num_pos": out["num_pos"],
        "num_neg": out["num_neg"],
    }
    tensors = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in scalars.items()}
    tensors["grad_loc_preds"] = out["grad_loc_preds"]
    tensors["grad_cls_preds"] = out["grad_cls_preds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file(common.cpu_contiguous(tensors), str(args.out))
    print(json.dumps(scalars, allow_nan=False))
    return 0


# --------------------------------------------------------------------------------------------
# selftest
# --------------------------------------------------------------------------------------------

def _random_batch(seed, N=4, A=2000, C=21, loss="ssd", ignore=True, every_image_pos=True,
                  dtype=torch.float32):
    spec = CaseSpec("selftest", loss, N, A, C, "", ignore_frac=0.02 if ignore else 0.0,
                    extreme_frac=0.003, no_pos_images=())
    inputs = generate_inputs(spec, common.case_generator(seed, 0))
    if every_image_pos:
        assert bool(((inputs["cls_targets"] > 0).sum(1) > 0).all())
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def _close(a, b, rtol=1e-6, atol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), rtol=rtol, atol=atol)


def _grads(fn, *tensors):
    """Gradients of fn(*leaves) w.r.t. fresh leaf copies of `tensors`."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    fn(*leaves).backward()
    return [leaf.grad for leaf in leaves]


def selftest_ssd_topk():
    """SSD loss = a direct computation with torchvision-style topk mining (no ties)."""
    b = _random_batch(1)
    lp, lt, cp, ct = b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"]
    out = ssd_loss(lp, lt, cp, ct)
    assert not out["has_ties"]

    def direct(lp, cp):
        N, A, C = cp.shape
        ce = F.cross_entropy(cp.reshape(-1, C), ct.clamp(min=0).reshape(-1), reduction="none").view(N, A)
        ce = ce * (ct >= 0)
        pos = ct > 0
        neg = torch.zeros_like(pos)
        for i in range(N):
            score = torch.where(ct[i] == 0, ce[i].detach(), torch.tensor(-math.inf))
            k = min(3 * int(pos[i].sum()), int((ct[i] == 0).sum()))
            neg[i, score.topk(k).indices] = True
        diff = (lp - lt)[pos].abs()
        loc = torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum()
        cls = ce[pos].sum() + ce[neg].sum()
        return (loc + cls) / max(1, int(pos.sum())), neg

    total, neg = direct(lp, cp)
    assert torch.equal(neg, out["neg_mask"]), "masks differ"
    assert _close(out["total"], total), (float(out["total"]), float(total))
    g1 = _grads(lambda a, c: ssd_loss(a, lt, c, ct)["total"], lp, cp)
    g2 = _grads(lambda a, c: direct(a, c)[0], lp, cp)
    for x, y in zip(g1, g2):
        assert _close(x, y, atol=1e-7), float((x - y).abs().max())
    return f"total {float(total):.6f}, {int(neg.sum())} negatives, grads equal"


def selftest_ssd_torchcv():
    """Without ignore labels and with positives in every image, = torchcv SSDLoss (fixed)."""
    b = _random_batch(2, ignore=False)
    lp, lt, cp, ct = b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"]
    # torchcv/loss/ssd_loss.py, with size_average/reduce spelled the modern way
    N, A, C = cp.shape
    pos = ct > 0
    num_pos = pos.sum().item()
    mask = pos.unsqueeze(2).expand_as(lp)
    loc_loss = F.smooth_l1_loss(lp[mask], lt[mask], reduction="sum")
    cls_loss = F.cross_entropy(cp.view(-1, C), ct.view(-1), reduction="none").view(N, -1)
    tmp = cls_loss * (pos.float() - 1)
    _, idx = tmp.sort(1)
    _, rank = idx.sort(1)
    neg = rank < 3 * pos.long().sum(1, keepdim=True)
    cls_loss = cls_loss[pos | neg].sum()
    torchcv = (loc_loss + cls_loss) / num_pos
    out = ssd_loss(lp, lt, cp, ct)
    assert _close(out["total"], torchcv, rtol=1e-6), (float(out["total"]), float(torchcv))
    return f"total {float(torchcv):.6f} (ours {float(out['total']):.6f})"


def selftest_ssd_crowded():
    """3*num_pos > #negatives: the negatives are all candidates, cls = CE over all valid (E4)."""
    spec = CaseSpec("t", "ssd", 2, 300, 21, "", pos_frac=(0.3, 0.4))
    b = generate_inputs(spec, common.case_generator(3, 0))
    out = ssd_loss(b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"])
    ct = b["cls_targets"]
    assert torch.equal(out["neg_mask"], ct == 0)
    ce = F.cross_entropy(b["cls_preds"].view(-1, 21), ct.view(-1), reduction="sum", ignore_index=-1)
    assert _close(out["cls_sum"], ce, rtol=1e-6)
    return f"num_neg {out['num_neg']} = #candidates, cls_sum {float(ce):.4f}"


def selftest_ssd_zero_positives():
    """No positives: total 0 by default; min_negatives m takes the top-m CE per image; finite
    gradients with -inf w,h loc targets."""
    spec = CaseSpec("t", "ssd", 2, 300, 21, "", no_pos_images="all", inf_loc_targets=True)
    b = generate_inputs(spec, common.case_generator(4, 0))
    lt, ct = b["loc_targets"], b["cls_targets"]
    out = run_loss("ssd", b, full_options("ssd", {}), torch.device("cpu"))
    assert float(out["total"]) == 0.0 and out["num_neg"] == 0
    assert float(out["grad_cls_preds"].abs().sum()) == 0.0
    out = run_loss("ssd", b, full_options("ssd", {"min_negatives": 7, "normalizer_min": 2.0}),
                   torch.device("cpu"))
    ce = F.cross_entropy(b["cls_preds"].view(-1, 21), ct.view(-1), reduction="none",
                         ignore_index=-1).view(2, -1)
    top = sum(ce[i][ct[i] == 0].topk(7).values.sum() for i in range(2))
    assert out["num_neg"] == 14 and _close(out["cls_sum"], top)
    assert _close(out["total"], top / 2.0)
    assert torch.isinf(lt).any()
    return f"total 0; with min_negatives 7: cls_sum {float(top):.4f}, D = normalizer_min 2"


def selftest_ssd_ties():
    """Tie case: flagged, lower index first, and the value equals that of the opposite
    tie-break (E6)."""
    spec = CaseSpec("t", "ssd", 2, 300, 21, "", tie=True, extreme_frac=0.0, pos_frac=(0.03, 0.04))
    b = generate_inputs(spec, common.case_generator(5, 0))
    lp, lt, cp, ct = b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"]
    out = ssd_loss(lp, lt, cp, ct)
    assert out["has_ties"]
    # the mask picks, among equal CE, the lowest indices: in image 1 (all CE equal) the first k
    cand1 = (ct[1] == 0).nonzero().squeeze(1)
    assert torch.equal(out["neg_mask"][1].nonzero().squeeze(1), cand1[: int(out["k"][1])])
    # opposite tie-break: flip the anchor axis, mine, flip back
    flipped = ssd_loss(lp.flip(1), lt.flip(1), cp.flip(1), ct.flip(1))
    assert not torch.equal(flipped["neg_mask"].flip(1), out["neg_mask"])
    assert _close(flipped["total"], out["total"], rtol=1e-6)
    # no false alarms on continuous logits
    assert not ssd_loss(*[_random_batch(6)[k] for k in ("loc_preds", "loc_targets", "cls_preds",
                                                         "cls_targets")])["has_ties"]
    return f"has_ties, masks differ, totals equal ({float(out['total']):.5f})"


def selftest_ssd_external_mask():
    """mining='random' with the hard mask reproduces mining='hard' bit for bit; 'all' = all
    candidates."""
    b = _random_batch(7)
    args = (b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"])
    hard = ssd_loss(*args)
    ext = ssd_loss(*args, mining="random", neg_mask=hard["neg_mask"])
    assert torch.equal(hard["total"], ext["total"]) and hard["num_neg"] == ext["num_neg"]
    every = ssd_loss(*args, mining="all")
    assert every["num_neg"] == int((b["cls_targets"] == 0).sum())
    return "bitwise equal"


def selftest_focal_formulas():
    """Sigmoid focal loss = torchvision.ops formula (inline) and the textbook formula in float64
    on foreground-only rows; = torchcv pre-41dcece with background rows; torchcv HEAD's
    one_hot(y-1) differs as soon as background rows are present (E14)."""
    g = common.case_generator(8, 0)
    V, C = 500, 20
    x = torch.randn(V, C, generator=g) * 3
    y = torch.randint(1, C + 1, (V,), generator=g)              # foreground only
    ct = y.view(1, V)
    zeros = torch.zeros(1, V, 4)
    ours = focal_loss(zeros, zeros, x.view(1, V, C), ct)["cls_sum"]

    # torchvision.ops.sigmoid_focal_loss(reduction="sum"), written out
    t = torch.zeros(V, C)
    t[torch.arange(V), y - 1] = 1.0
    p = torch.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce_loss * ((1 - p_t) ** 2)
    alpha_t = 0.25 * t + (1 - 0.25) * (1 - t)
    tv = (alpha_t * loss).sum()
    assert _close(ours, tv, rtol=1e-6), (float(ours), float(tv))

    # textbook FL = -alpha_t (1-p_t)^gamma log p_t, float64
    xd, td = x.double(), t.double()
    pd = 1 / (1 + torch.exp(-xd))
    ptd = torch.where(td > 0, pd, 1 - pd)
    atd = torch.where(td > 0, 0.25, 0.75)
    book = (-atd * (1 - ptd) ** 2 * torch.log(ptd)).sum()
    assert _close(ours, book, rtol=1e-5), (float(ours), float(book))

    # torchcv HEAD (eye(C)[y-1]) agrees on foreground rows ...
    def torchcv_head(x, y):
        t = torch.eye(C)[y - 1]
        p = x.sigmoid()
        pt = torch.where(t > 0, p, 1 - p)
        w = (1 - pt).pow(2)
        w = torch.where(t > 0, 0.25 * w, 0.75 * w)
        return F.binary_cross_entropy_with_logits(x, t, w.detach(), reduction="sum")

    def torchcv_old(x, y):   # before 41dcece: one_hot(y, 1+C)[:, 1:]
        t = torch.eye(C + 1)[y][:, 1:]
        p = x.sigmoid()
        pt = p * t + (1 - p) * (1 - t)
        w = 0.25 * t + 0.75 * (1 - t)
        w = w * (1 - pt).pow(2)
        return F.binary_cross_entropy_with_logits(x, t, w.detach(), reduction="sum")

    assert _close(torchcv_head(x, y), ours, rtol=1e-6)
    # ... but not with background rows
    yb = y.clone()
    yb[::3] = 0
    ours_b = focal_loss(zeros, zeros, x.view(1, V, C), yb.view(1, V))["cls_sum"]
    assert _close(torchcv_old(x, yb), ours_b, rtol=1e-6)
    assert not _close(torchcv_head(x, yb), ours_b, rtol=1e-3)
    return (f"fg-only {float(ours):.4f} = torchvision {float(tv):.4f} = textbook {float(book):.4f}; "
            f"with bg {float(ours_b):.4f} = torchcv pre-41dcece, HEAD {float(torchcv_head(x, yb)):.4f}")


def selftest_focal_extremes():
    """+-100 logits (E16): BCE-with-logits values 75 / 25 with alpha 0.25, gamma 0; finite
    gradients for gamma 0 and 2 even where 1 - p_t is exactly 0."""
    x = torch.tensor([[100.0], [-100.0], [30.0], [-100.0], [100.0]])
    t = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]])
    l0 = sigmoid_focal_loss(x, t, 0.25, 0.0)
    assert float(l0[0, 0]) == 75.0 and float(l0[1, 0]) == 25.0, l0.flatten().tolist()
    l2 = sigmoid_focal_loss(x, t, 0.25, 2.0)
    assert float(l2[2, 0]) < 1e-20
    for gamma in (0.0, 2.0):
        for alpha in (None, 0.25):
            (gx,) = _grads(lambda z: sigmoid_focal_loss(z, t, alpha, gamma).sum(), x)
            assert bool(torch.isfinite(gx).all()), (gamma, alpha, gx.flatten().tolist())
    ct = torch.tensor([[0, 0, 1, 1]])
    xs = torch.tensor([[[100.0, -100.0, 0.5], [-100.0, 100.0, 0.2],
                        [-100.0, 100.0, 100.0], [100.0, -100.0, -100.0]]])
    for gamma in (0.0, 2.0):
        (gx,) = _grads(lambda z: softmax_focal_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), z, ct,
                                                    gamma=gamma)["total"], xs)
        assert bool(torch.isfinite(gx).all())
    return f"gamma 0: {l0.flatten().tolist()}; gamma 2 at x=30,t=1: {float(l2[2, 0]):.3g}"


def selftest_softmax_focal():
    """gamma 0 = F.cross_entropy (sum, with and without weight=); gamma 2 = float64 textbook
    formula; 'mean' divides cls by V; 'batch' = 'static' with the batch histogram."""
    b = _random_batch(9, loss="softmax_focal")
    lp, lt, cp, ct = b["loc_preds"], b["loc_targets"], b["cls_preds"], b["cls_targets"]
    C = cp.size(2)
    valid = ct > -1
    x, y = cp[valid], ct[valid]
    V = y.numel()

    plain = softmax_focal_loss(lp, lt, cp, ct, gamma=0.0)
    ce = F.cross_entropy(cp.view(-1, C), ct.view(-1), reduction="sum", ignore_index=-1)
    assert _close(plain["cls_sum"], ce, rtol=1e-6)

    counts = torch.bincount(y, minlength=C).float()
    static = softmax_focal_loss(lp, lt, cp, ct, gamma=0.0, class_weights="static",
                                background_weight="fg_sum_over_3", class_counts=counts)
    batch = softmax_focal_loss(lp, lt, cp, ct, gamma=0.0, class_weights="batch",
                               background_weight="fg_sum_over_3")
    assert torch.equal(static["cls_sum"], batch["cls_sum"])
    wce = F.cross_entropy(x, y, weight=static["weights"], reduction="sum")
    assert _close(static["cls_sum"], wce, rtol=1e-6)

    out = softmax_focal_loss(lp, lt, cp, ct, gamma=2.0, class_weights="batch", reduction="mean")
    xd = x.double()
    prob = torch.exp(xd) / torch.exp(xd).sum(1, keepdim=True)
    prob = torch.where(torch.isfinite(prob), prob, torch.softmax(xd, 1))   # +-100 rows overflow
    pt = prob[torch.arange(V), y]
    wd = out["weights"].double()[y]
    book = (-wd * (1 - pt) ** 2 * torch.log(pt)).sum()
    assert _close(out["cls_sum"], book, rtol=1e-5), (float(out["cls_sum"]), float(book))
    D = max(1, out["num_pos"])
    assert _close(out["total"], out["loc_sum"] / D + out["cls_sum"] / V, rtol=1e-6)
    assert _close(out["cls_per_pos"], out["cls_sum"] / D, rtol=1e-6)
    return f"gamma 0 = CE {float(ce):.4f}; weighted CE {float(wce):.4f}; gamma 2 = textbook {float(book):.4f}"


def selftest_class_weights():
    """1/ln(1.10 + f) on a hand-checked histogram, both background rules."""
    h = torch.tensor([70, 20, 10])
    w = class_weights_from_histogram(h)
    want = [1 / math.log(1.8), 1 / math.log(1.3), 1 / math.log(1.2)]
    assert _close(w, want, rtol=1e-6), w.tolist()
    w3 = class_weights_from_histogram(h, "fg_sum_over_3")
    assert _close(w3, [(want[1] + want[2]) / 3] + want[1:], rtol=1e-6), w3.tolist()
    return f"h=[70,20,10] -> {[round(v, 4) for v in w.tolist()]}, fg_sum_over_3 w0 {float(w3[0]):.4f}"


def selftest_gradcheck():
    """torch.autograd.gradcheck in float64 on tiny cases of each loss (w.r.t. loc and cls preds)."""
    checked = []
    for loss, C, opts in (("ssd", 5, {"min_negatives": 1}),
                          ("focal", 4, {}),
                          ("focal", 3, {"alpha": None, "gamma": 0.0, "beta": 0.5}),
                          ("softmax_focal", 5, {"class_weights": "batch", "background_weight": "fg_sum_over_3"}),
                          ("softmax_focal", 5, {"reduction": "mean", "gamma": 0.0})):
        spec = CaseSpec("t", loss, 2, 24, C, "", pos_frac=(0.1, 0.2), ignore_frac=0.1, extreme_frac=0.0)
        b = generate_inputs(spec, common.case_generator(10, len(checked)))
        lt, ct = b["loc_targets"].double(), b["cls_targets"]
        full = full_options(loss, opts)

        def fn(lp, cp):
            return compute_loss(loss, lp, lt, cp, ct, full)["total"]

        lp = b["loc_preds"].double().requires_grad_(True)
        cp = b["cls_preds"].double().requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (lp, cp), eps=1e-6, atol=1e-6, rtol=1e-4)
        checked.append(f"{loss}{opts or ''}")
    return "; ".join(checked)


def selftest_generator():
    """A seed reproduces every input; another seed changes them; every small case builds, and its
    written files re-read give the same numbers."""
    spec = SMALL_SET[0]
    a = generate_inputs(spec, common.case_generator(11, 0))
    b = generate_inputs(spec, common.case_generator(11, 0))
    c = generate_inputs(spec, common.case_generator(12, 0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cls_preds"], c["cls_preds"])
    with tempfile.TemporaryDirectory() as tmp:
        for index, spec in enumerate(SMALL_SET):
            tensors, sidecar, _ = build_case(spec, 13, index, torch.device("cpu"))
            common.write_case(tmp, spec.name, tensors, sidecar)
            again = recompute_case(Path(tmp) / f"{spec.name}.safetensors")
            assert again == sidecar["expected"], (spec.name, again, sidecar["expected"])
    return f"{len(SMALL_SET)} small cases written and re-read"


# A fixture recomputed on another CPU: libtorch picks its vector kernels (AVX2, AVX-512) by
# the machine, so exp/log and sums may differ in the last bit from the machine that wrote it.
FIXTURE_RTOL = 1e-6


def same_up_to_cpu_rounding(a, b):
    """Tensors equal to FIXTURE_RTOL of their largest magnitude (exactly, where it is 0)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and bool(((a - b).abs() <= FIXTURE_RTOL * scale).all())


def same_scalars(again, expected):
    """Expected scalars: integers exactly, floats to FIXTURE_RTOL relative."""
    if again.keys() != expected.keys():
        return False
    for key, want in expected.items():
        got = again[key]
        if isinstance(want, float) or isinstance(got, float):
            if not math.isclose(got, want, rel_tol=FIXTURE_RTOL, abs_tol=1e-12):
                return False
        elif got != want:
            return False
    return True


def recompute_case(st_path, exact=True):
    """Recompute a written case's expected scalars from its stored inputs (CPU); also compare
    the stored gradients and neg mask: bit for bit, or with `exact=False` (a committed fixture,
    possibly written on another CPU) the gradients up to that CPU's rounding."""
    st_path = Path(st_path)
    sidecar = json.loads(st_path.with_suffix(".json").read_text())
    tensors = common.read_tensors(st_path)
    inputs = {k: tensors[k] for k in ("loc_preds", "loc_targets", "cls_preds", "cls_targets",
                                      "class_counts") if k in tensors}
    out = run_loss(sidecar["loss"], inputs, full_options(sidecar["loss"], sidecar["options"]),
                   torch.device("cpu"))
    for k in ("grad_loc_preds", "grad_cls_preds"):
        same = torch.equal(out[k], tensors[k]) if exact else same_up_to_cpu_rounding(out[k], tensors[k])
        if not same:
            raise ReferenceError(f"{st_path.name}: stored {k} differs from a recomputation")
    if sidecar["loss"] == "ssd" and not sidecar["has_ties"]:
        if not torch.equal(out["neg_mask"], tensors["neg_mask"]):
            raise ReferenceError(f"{st_path.name}: stored neg_mask differs from a recomputation")
    return expected_scalars(out)


def selftest_fixtures():
    """The committed fixtures (tests/fixtures/losses) still match this reference, to the last
    bits a CPU with other vector kernels may change."""
    folder = Path(__file__).resolve().parents[1] / "fixtures" / "losses"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "no committed fixtures yet (skipped)"
    for st in files:
        expected = json.loads(st.with_suffix(".json").read_text())["expected"]
        again = recompute_case(st, exact=False)
        assert same_scalars(again, expected), (st.name, again, expected)
    return (f"{len(files)} fixtures in {folder} recomputed (to {FIXTURE_RTOL:g} relative: they may "
            "come from a CPU with other vector kernels)")


SELFTESTS = [
    selftest_ssd_topk,
    selftest_ssd_torchcv,
    selftest_ssd_crowded,
    selftest_ssd_zero_positives,
    selftest_ssd_ties,
    selftest_ssd_external_mask,
    selftest_focal_formulas,
    selftest_focal_extremes,
    selftest_softmax_focal,
    selftest_class_weights,
    selftest_gradcheck,
    selftest_generator,
    selftest_fixtures,
]


def cmd_selftest(args):
    failed = 0
    for test in SELFTESTS:
        start = time.perf_counter()
        try:
            detail = test()
            status = "ok  "
        except Exception as exc:   # report every check, then fail at the end
            detail = f"{type(exc).__name__}: {exc}"
            status = "FAIL"
            failed += 1
        doc = " ".join(test.__doc__.split())
        print(f"{status} {test.__name__} ({time.perf_counter() - start:.1f}s): {doc}\n     -> {detail}",
              flush=True)
    if failed:
        raise ReferenceError(f"{failed} of {len(SELFTESTS)} self-checks failed")
    print(f"all {len(SELFTESTS)} self-checks passed")
    return 0


# --------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("gen", help="generate cases (safetensors + JSON sidecars)")
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    gen.add_argument("--set", choices=tuple(SETS), default="full")

    cm = sub.add_parser("check-mask", help="SSD loss with an external negative mask")
    cm.add_argument("--case", type=Path, required=True)
    cm.add_argument("--options", required=True, help="SSD options as a JSON object")
    cm.add_argument("--neg-mask", type=Path, required=True)
    cm.add_argument("--out", type=Path, required=True)

    sub.add_parser("selftest", help="check this reference against independent formulas")

    args = parser.parse_args()
    if args.command == "gen":
        if args.seed < 0:
            raise ReferenceError("--seed must be >= 0")
        return cmd_gen(args)
    if args.command == "check-mask":
        return cmd_check_mask(args)
    return cmd_selftest(args)


if __name__ == "__main__":
    common.run_cli(main)
