"""Reference image transforms for the data-pipeline tests: PIL / torchvision semantics as
torchcv uses them, written independently of tchcv.

usage: transforms.py OP IN OUT ARG
  resize      IN (any PIL image)  OUT raw RGB  ARG "WxH"   PIL BILINEAR resize
  brightness  IN                  OUT raw RGB  ARG factor  ImageEnhance.Brightness
  contrast    IN                  OUT raw RGB  ARG factor  ImageEnhance.Contrast
  saturation  IN                  OUT raw RGB  ARG factor  ImageEnhance.Color
  hue         IN                  OUT raw RGB  ARG shift   torchvision adjust_hue on PIL images
  normalize   IN                  OUT raw f32  ARG -       ToTensor + Normalize(ImageNet), CHW
"""
import os
import sys

import numpy as np
from PIL import Image, ImageEnhance

# The hue step and the ImageNet statistics are shared with the benchmark's PyTorch pipeline,
# so these tests also check that reference.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from pil_ops import MEAN, STD, adjust_hue  # noqa: E402


def main():
    op, src, dst, arg = sys.argv[1:5]
    img = Image.open(src).convert("RGB")
    if op == "resize":
        w, h = (int(v) for v in arg.split("x"))
        out = img.resize((w, h), Image.BILINEAR)
    elif op == "brightness":
        out = ImageEnhance.Brightness(img).enhance(float(arg))
    elif op == "contrast":
        out = ImageEnhance.Contrast(img).enhance(float(arg))
    elif op == "saturation":
        out = ImageEnhance.Color(img).enhance(float(arg))
    elif op == "hue":
        out = adjust_hue(img, float(arg))
    elif op == "normalize":
        import torch

        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        with open(dst, "wb") as f:
            f.write(x.contiguous().numpy().astype("<f4").tobytes())
        return
    else:
        raise SystemExit(f"unknown op {op}")
    with open(dst, "wb") as f:
        f.write(out.tobytes())


if __name__ == "__main__":
    main()
