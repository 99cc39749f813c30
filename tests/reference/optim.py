"""torch.optim reference for tchcv's SGD and Adam: run K steps with given gradients.

    python tests/reference/optim.py --case CASE.safetensors --config JSON --out OUT.safetensors

CASE holds `param.<i>` (initial values) and `grad.<step>.<i>` (the gradient of parameter i at
step `step`) plus `lr.<step>` (0-d) ; `param.<i>` with `decay.<i>` = 0 get no weight decay
(a separate parameter group). OUT holds the final `param.<i>` and, for SGD, `momentum.<i>`,
for Adam `exp_avg.<i>` and `exp_avg_sq.<i>`.
"""

import argparse
import json

import torch
from safetensors.torch import load_file, save_file


def build(config, params, decay):
    groups = [
        {"params": [p for p, d in zip(params, decay) if d], "weight_decay": config["weight_decay"]},
        {"params": [p for p, d in zip(params, decay) if not d], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config["type"] == "sgd":
        return torch.optim.SGD(groups, lr=1.0, momentum=config["momentum"], nesterov=config["nesterov"])
    cls = torch.optim.AdamW if config["decoupled"] else torch.optim.Adam
    return cls(groups, lr=1.0, betas=(config["beta1"], config["beta2"]), eps=config["eps"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    config = json.loads(args.config)
    t = load_file(args.case)
    n = len([k for k in t if k.startswith("param.")])
    steps = len([k for k in t if k.startswith("lr.")])
    params = [t[f"param.{i}"].clone().requires_grad_(True) for i in range(n)]
    decay = [bool(t[f"decay.{i}"].item()) for i in range(n)]
    opt = build(config, params, decay)
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = float(t[f"lr.{s}"])
        for i, p in enumerate(params):
            p.grad = t[f"grad.{s}.{i}"].clone()
        opt.step()
    out = {f"param.{i}": p.detach() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in opt.state[p].items():
            if key != "step":
                out[f"{key.replace('momentum_buffer', 'momentum')}.{i}"] = value
    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
