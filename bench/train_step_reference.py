"""PyTorch eager counterpart of `tchcv bench train-step`: the same detector (built from the spec
with the parity reference's modules, tests/reference/ssd_net.py), torchcv's SSD loss
(bench/loss_reference.py) and torch.optim.SGD, one training step timed on the images and
targets tchcv wrote.

    python bench/train_step_reference.py --spec models/ssd300.json --batch-file B.safetensors

prints one JSON line: {"median_ms": ..., "parameters": ..., "peak_rss_mib": ...} (and on CUDA
"peak_cuda_allocated_mib", the allocator's peak over the warm-up and timed steps).

--autocast bf16 runs the forward pass and the loss under torch.autocast (backward and the update
outside it, as the PyTorch AMP recipe does); --channels-last converts the model and the images
with memory_format=torch.channels_last; --cudnn-benchmark sets torch.backends.cudnn.benchmark.
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent / "tests" / "reference"))
sys.path.insert(0, str(here))
import ssd_net  # noqa: E402
from loss_reference import ssd_loss  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch-file", required=True)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--autocast", choices=("bf16", "f16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.loads(Path(args.spec).read_text())
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = ssd_net.build(spec, args.classes).to(device).train()
    model = model.to(memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    batch = {k: v.to(device) for k, v in load_file(args.batch_file).items()}
    images = batch["images"].contiguous(memory_format=memory_format)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.autocast)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loc, cls = model(images)
            loss = ssd_loss(loc, batch["loc_targets"], cls, batch["cls_targets"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    report = {"median_ms": statistics.median(times),
              "parameters": sum(p.numel() for p in params),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        report["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(report))


if __name__ == "__main__":
    main()
