"""PyTorch eager counterpart of `tchcv bench model`: the same detector (built from the spec
with the parity reference's modules, tests/reference/ssd_net.py), in training mode, timed on
the gradient of mean(loc^2) + mean(cls^2) w.r.t. every parameter.

    python bench/model_reference.py --spec models/ssd_small.json --batch 32 --classes 20

prints one JSON line: {"median_ms": ..., "parameters": ...}.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
import ssd_net  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.loads(Path(args.spec).read_text())
    device = torch.device(args.device)
    model = ssd_net.build(spec, args.classes).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    w, h = spec["input_size"]
    images = torch.randn(args.batch, 3, h, w, device=device)

    def step():
        loc, cls = model(images)
        loss = loc.square().mean() + cls.square().mean()
        torch.autograd.grad(loss, params)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times),
                      "parameters": sum(p.numel() for p in params)}))


if __name__ == "__main__":
    main()
