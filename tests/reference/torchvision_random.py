"""A randomly initialised torchvision backbone's state_dict (no download), for testing
scripts/convert_weights.py:

    python tests/reference/torchvision_random.py --arch vgg16 --seed S --pth OUT.pth \
        --safetensors OUT.safetensors

writes the state_dict as torch.save (what torchvision downloads) and, with torchvision's
names, as safetensors for the Rust test to compare against; there, fully-connected weights
(2-D, over a million values: VGG's 400 MB fc6) keep only the rows `--fc-rows`, as
`<name>.row<i>`.
"""

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_contiguous, run_cli  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', required=True)
    parser.add_argument('--seed', type=int, required=True)
    parser.add_argument('--pth', required=True)
    parser.add_argument('--safetensors', required=True)
    parser.add_argument('--fc-rows', default='0,4,12,308,4092')
    args = parser.parse_args()
    rows = [int(r) for r in args.fc_rows.split(',')]
    torch.manual_seed(args.seed)
    model = getattr(torchvision.models, args.arch)(weights=None)
    state = model.state_dict()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a mix-up would show
        for k, v in state.items():
            if k.endswith('running_mean'):
                v.normal_(0, 0.1)
            elif k.endswith('running_var'):
                v.uniform_(0.5, 1.5)
    torch.save(state, args.pth)
    compare = {}
    for k, v in state.items():
        if k.endswith('num_batches_tracked'):
            continue
        if v.dim() == 2 and v.numel() > 1_000_000:
            compare.update({f'{k}.row{r}': v[r] for r in rows if r < v.shape[0]})
        else:
            compare[k] = v
    save_file(cpu_contiguous(compare), args.safetensors)


if __name__ == '__main__':
    run_cli(main)
