"""The operator count of a small fixed region in PyTorch, for tests/op_count.rs: the Rust test
counts the same region with tchcv's counter (libtorch's RecordFunction hook) and compares the
calls with these (torch.profiler's record of the same hook).

    python tests/reference/op_count_region.py        # one JSON line: [[name, [child names]], ...]

The region: a cross entropy over [64, 21] logits with an ignored label, its sum over dim 0, a
boolean mask's nonzero, a scalar read back, and the backward pass.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from op_count import count_ops  # noqa: E402


def main():
    torch.manual_seed(0)
    logits = torch.randn(64, 21).requires_grad_(True)
    labels = torch.randint(-1, 21, (64,))

    def region():
        ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=-1)
        total = ce.sum(0, dtype=torch.float32)
        positives = labels.gt(0).nonzero()
        value = total.item()
        # The backward seed as tch (libtorch's C++ frontend) makes it: ones_like with the
        # contiguous format (Python's own backward() asks for preserve_format, one call apart).
        total.backward(torch.ones_like(total, memory_format=torch.contiguous_format))
        return value, positives

    calls, _ = count_ops(region)
    print(json.dumps(calls))


if __name__ == "__main__":
    main()
