"""Small helpers shared by the PyTorch reference scripts under tests/reference/.

A *case* is a pair of files in one folder:

    <name>.safetensors   named tensors (inputs and expected tensor outputs), CPU, contiguous
    <name>.json          a sidecar with the case's name, options and expected scalars

The Rust parity tests read both (tch `Tensor::read_safetensors`, serde_json).
"""

import contextlib
import json
import math
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Exit statuses used by every reference CLI.
EXIT_ERROR = 1          # a check failed, or bad input
EXIT_USAGE = 2          # argparse's own status for bad flags
EXIT_NO_CUDA = 3        # --device cuda on a machine without CUDA


class ReferenceError(Exception):
    """An error with a message meant for the person running the script."""

    def __init__(self, message, status=EXIT_ERROR):
        super().__init__(message)
        self.status = status


def resolve_device(name):
    """'cpu' | 'cuda' -> torch.device; raises ReferenceError (exit 3) when CUDA is missing."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ReferenceError("CUDA not available", EXIT_NO_CUDA)
        return torch.device("cuda")
    raise ReferenceError(f"unknown device {name!r} (expected cpu or cuda)")


def case_generator(seed, index):
    """A CPU torch.Generator for case number `index` of a run seeded with `seed`.

    The same (seed, index) always gives the same stream, whatever the other cases are.
    """
    mixed = (int(seed) * 1_000_003 + int(index)) % (2 ** 63)
    return torch.Generator(device="cpu").manual_seed(mixed)


def to_py_float(t):
    """A 0-d (or one-element) tensor -> Python float, exactly (f32 -> f64 is exact)."""
    value = float(t.detach().to("cpu").item())
    if not math.isfinite(value):
        raise ReferenceError(f"non-finite value {value} cannot be written to JSON")
    return value


def cpu_contiguous(tensors):
    """dict name -> tensor: detached, on CPU, contiguous (what safetensors needs)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def write_case(out_dir, name, tensors, sidecar):
    """Write <out_dir>/<name>.safetensors and <out_dir>/<name>.json.

    tensors: dict name -> tensor (any device); sidecar: JSON-serialisable dict.
    Returns (safetensors_path, json_path).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st_path = out_dir / f"{name}.safetensors"
    json_path = out_dir / f"{name}.json"
    save_file(cpu_contiguous(tensors), str(st_path))
    # allow_nan=False: JSON has no NaN/Infinity, and serde_json would reject them.
    text = json.dumps(sidecar, indent=2, allow_nan=False)
    json_path.write_text(text + "\n")
    return st_path, json_path


def read_tensors(path, required=()):
    """Load a safetensors file (CPU tensors); check that the `required` names exist."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ReferenceError(f"{path}: cannot read as safetensors: {exc}") from exc
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ReferenceError(f"{path}: missing tensor(s) {', '.join(missing)}; has {sorted(tensors)}")
    return tensors


@contextlib.contextmanager
def exact_batched_nms():
    """torchvision's batched_nms with its per-class loop (_batched_nms_vanilla) for every size:
    classes (levels) compared exactly, as tchcv does, not through the coordinate offset."""
    import torchvision.ops.boxes as tv_boxes
    saved = tv_boxes.batched_nms
    tv_boxes.batched_nms = tv_boxes._batched_nms_vanilla
    try:
        yield
    finally:
        tv_boxes.batched_nms = saved


def run_cli(main):
    """Run main() and turn errors into a one-line message and an exit status."""
    try:
        status = main()
    except ReferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.status)
    except Exception as exc:  # unexpected: a bug here, so show where, then the one-line message
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(status or 0)
