"""Reference image decoding for the data-pipeline tests: PIL, independent of tchcv.

usage: image_decode.py IN OUT
Decodes IN with PIL, applies the EXIF orientation (ImageOps.exif_transpose), converts to RGB
and writes the raw HWC bytes to OUT. Prints {"width": W, "height": H, "mode": original mode}.
"""
import json
import sys

from PIL import Image, ImageOps


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with Image.open(src) as im:
        mode = im.mode
        im = ImageOps.exif_transpose(im).convert("RGB")
        with open(dst, "wb") as f:
            f.write(im.tobytes())
        print(json.dumps({"width": im.width, "height": im.height, "mode": mode}))


if __name__ == "__main__":
    main()
