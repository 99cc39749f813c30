"""PyTorch side of `tchcv bench data`: torchcv's SSD training pipeline with PIL and torch.

Per image: PIL decode -> random_distort (ColorJitter-style brightness/contrast/saturation/hue,
p = 0.5 each, two orders) -> random_paste (p = 0.5, ratio U(1, 4), fill (123, 116, 103)) ->
random_crop (torchcv's min-IoU candidates) -> resize (BILINEAR) -> random_flip -> ToTensor +
Normalize (ImageNet) -> SSDBoxCoder.encode (IoU with the 8732 SSD300 default boxes, greedy
bipartite matching, IoU >= 0.5, variances 0.1/0.2). Batches come from a torch DataLoader with
--workers worker processes (each with one torch thread, DataLoader's default).

Written for tchcv from torchcv's algorithms (reference-semantics.md b.1, b.7); prints one JSON
line: {"ms_per_image": median over epochs, "images_per_s": ...}. The per-image recipe is
`augment` (settable with tchcv's AugmentConfig keys), which bench/train_reference.py shares.
"""
import argparse
import itertools
import json
import math
import random
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance

from pil_ops import MEAN, STD, adjust_hue  # noqa: E402  (beside this script)


def random_distort(img, b=32 / 255.0, c=0.5, s=0.5, h=0.1):
    def factor(d):
        return random.uniform(max(0.0, 1 - d), 1 + d)

    def brightness(img):
        return ImageEnhance.Brightness(img).enhance(factor(b)) if random.random() < 0.5 else img

    def contrast(img):
        return ImageEnhance.Contrast(img).enhance(factor(c)) if random.random() < 0.5 else img

    def saturation(img):
        return ImageEnhance.Color(img).enhance(factor(s)) if random.random() < 0.5 else img

    def hue(img):
        if random.random() >= 0.5:
            return img
        shift = random.uniform(-h, h)
        return adjust_hue(img, shift) if h else img  # hue 0: no step (ColorJitter(hue=0), tchcv)

    img = brightness(img)
    if random.random() < 0.5:
        img = hue(saturation(contrast(img)))
    else:
        img = contrast(hue(saturation(img)))
    return img


def box_iou(a, b):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def random_paste(img, boxes, max_ratio=4, fill=(123, 116, 103)):
    w, h = img.size
    ratio = random.uniform(1, max_ratio)
    ow, oh = int(w * ratio), int(h * ratio)
    canvas = Image.new("RGB", (ow, oh), fill)
    x, y = random.randint(0, ow - w), random.randint(0, oh - h)
    canvas.paste(img, (x, y))
    return canvas, boxes + torch.tensor([x, y, x, y], dtype=torch.float32)


def random_crop(img, boxes, labels, min_scale=0.3, max_aspect_ratio=2.0,
                min_ious=(0, 0.1, 0.3, 0.5, 0.7, 0.9), trials=100):
    imw, imh = img.size
    params = [(0, 0, imw, imh)]
    for min_iou in min_ious:
        for _ in range(trials):
            scale = random.uniform(min_scale, 1)
            ar = random.uniform(max(1 / max_aspect_ratio, scale * scale), min(max_aspect_ratio, 1 / (scale * scale)))
            w = int(imw * scale * math.sqrt(ar))
            h = int(imh * scale / math.sqrt(ar))
            x = random.randrange(max(imw - w, 1))
            y = random.randrange(max(imh - h, 1))
            roi = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
            if len(boxes) == 0 or box_iou(boxes, roi).min() >= min_iou:
                params.append((x, y, w, h))
                break
    x, y, w, h = random.choice(params)
    if len(boxes):
        center = (boxes[:, :2] + boxes[:, 2:]) / 2
        mask = (center[:, 0] >= x) & (center[:, 0] <= x + w) & (center[:, 1] >= y) & (center[:, 1] <= y + h)
        if not mask.any():  # as tchcv: keep the image uncropped
            return img, boxes, labels
        boxes = boxes[mask] - torch.tensor([x, y, x, y], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = labels[mask]
    return img.crop((x, y, x + w, y + h)), boxes, labels


def default_boxes(size):
    steps = (8, 16, 32, 64, 100, 300)
    sizes = (30, 60, 111, 162, 213, 264, 315)
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    maps = (38, 19, 10, 5, 3, 1)
    out = []
    for i, m in enumerate(maps):
        for h, w in itertools.product(range(m), repeat=2):
            cx, cy = (w + 0.5) * steps[i], (h + 0.5) * steps[i]
            s = sizes[i]
            out.append((cx, cy, s, s))
            s2 = math.sqrt(sizes[i] * sizes[i + 1])
            out.append((cx, cy, s2, s2))
            for ar in ratios[i]:
                out.append((cx, cy, s * math.sqrt(ar), s / math.sqrt(ar)))
                out.append((cx, cy, s / math.sqrt(ar), s * math.sqrt(ar)))
    b = torch.tensor(out, dtype=torch.float32) * (size / 300.0)
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


def encode(anchors, boxes, labels):
    a = anchors.size(0)
    if len(boxes) == 0:
        return torch.zeros(a, 4), torch.zeros(a, dtype=torch.long)
    ious = box_iou(anchors, boxes)
    index = torch.full((a,), -1, dtype=torch.long)
    masked = ious.clone()
    for _ in range(len(boxes)):
        flat = masked.argmax().item()
        i, j = divmod(flat, len(boxes))
        if masked[i, j] < 1e-6:
            break
        index[i] = j
        masked[i, :] = 0
        masked[:, j] = 0
    best, best_j = ious.max(1)
    mask = (index < 0) & (best >= 0.5)
    index[mask] = best_j[mask]
    matched = boxes[index.clamp(min=0)]
    gc, gs = (matched[:, :2] + matched[:, 2:]) / 2, matched[:, 2:] - matched[:, :2]
    ac, asz = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
    loc = torch.cat([(gc - ac) / asz / 0.1, torch.log(gs / asz) / 0.2], 1)
    cls = 1 + labels[index.clamp(min=0)]
    cls[index < 0] = 0
    return loc, cls


# tchcv's AugmentConfig defaults (src/data/transforms.rs): the keys of `--augment` JSON.
AUGMENT_DEFAULTS = {
    "photometric": True, "brightness": 32 / 255.0, "contrast": 0.5, "saturation": 0.5, "hue": 0.1,
    "zoom_out": True, "zoom_out_prob": 0.5, "max_zoom_out": 4.0, "fill": [123, 116, 103],
    "crop": True, "crop_min_scale": 0.3, "crop_max_aspect": 2.0,
    "crop_min_ious": [0.0, 0.1, 0.3, 0.5, 0.7, 0.9], "crop_trials": 100,
    "flip": True, "flip_prob": 0.5,
}


def load_item(item):
    """One entry of the image list ({"path", "boxes", "labels"}): (PIL RGB image, boxes [K, 4]
    f32, labels [K] i64)."""
    img = Image.open(item["path"]).convert("RGB")
    boxes = torch.tensor(item["boxes"], dtype=torch.float32).view(-1, 4)
    return img, boxes, torch.tensor(item["labels"], dtype=torch.long)


def to_normalized_tensor(img):
    """ToTensor + Normalize (ImageNet): [3, H, W] f32."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def augment(img, boxes, labels, size, cfg=None):
    """torchcv's SSD training recipe on a PIL image and its [K, 4] xyxy pixel boxes, to a
    `size = (W, H)` input: distort -> paste (zoom out) -> min-IoU crop -> resize (BILINEAR) ->
    flip -> ToTensor + Normalize. `cfg` holds tchcv's AugmentConfig keys (AUGMENT_DEFAULTS for
    the missing ones). Returns (x [3, H, W], boxes, labels)."""
    c = dict(AUGMENT_DEFAULTS, **(cfg or {}))
    if c["photometric"]:
        img = random_distort(img, c["brightness"], c["contrast"], c["saturation"], c["hue"])
    if c["zoom_out"] and random.random() < c["zoom_out_prob"]:
        img, boxes = random_paste(img, boxes, c["max_zoom_out"], tuple(c["fill"]))
    if c["crop"]:
        img, boxes, labels = random_crop(img, boxes, labels, c["crop_min_scale"], c["crop_max_aspect"],
                                         c["crop_min_ious"], c["crop_trials"])
    w, h = img.size
    img = img.resize(size, Image.BILINEAR)
    boxes = boxes * torch.tensor([size[0] / w, size[1] / h] * 2)
    if c["flip"] and random.random() < c["flip_prob"]:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        boxes = torch.stack([size[0] - boxes[:, 2], boxes[:, 1], size[0] - boxes[:, 0], boxes[:, 3]], 1)
    return to_normalized_tensor(img), boxes, labels


class Pipeline(torch.utils.data.Dataset):
    def __init__(self, items, size):
        self.items, self.size = items, size
        self.anchors = default_boxes(size)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, boxes, labels = augment(*load_item(self.items[i]), (self.size, self.size))
        loc, cls = encode(self.anchors, boxes, labels)
        return x, loc, cls


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--list", required=True)
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    with open(a.list) as f:
        items = json.load(f)
    loader = torch.utils.data.DataLoader(
        Pipeline(items, a.size), batch_size=a.batch, shuffle=True, num_workers=a.workers,
        persistent_workers=a.workers > 0,
    )
    times = []
    for epoch in range(a.repeat + 1):
        start = time.perf_counter()
        n = 0
        for x, loc, cls in loader:
            n += x.size(0)
        if epoch > 0:
            times.append((time.perf_counter() - start) * 1e3 / n)
    ms = sorted(times)[len(times) // 2]
    print(json.dumps({"ms_per_image": ms, "images_per_s": 1e3 / ms, "images": len(items), "workers": a.workers}))


if __name__ == "__main__":
    main()
