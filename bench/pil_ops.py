"""PIL image operations shared by the Python references (bench/data_reference.py and
tests/reference/transforms.py): torchvision's semantics, without importing torch."""
import numpy as np
from PIL import Image

# ImageNet statistics (torchcv's Normalize).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def adjust_hue(img, shift):
    """torchvision.transforms.functional_pil.adjust_hue: rotate the 8-bit HSV hue by
    int(shift * 255) levels, wrapping."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.int32(shift * 255).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")
