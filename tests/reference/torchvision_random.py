"""A randomly initialised torchvision backbone's state_dict (no download), for testing
scripts/convert_weights.py:

    python tests/reference/torchvision_random.py --arch vgg16 --seed S --pth OUT.pth \
        --safetensors OUT.safetensors

writes the state_dict as torch.save (what torchvision downloads) and, with torchvision's
names, as safetensors for the Rust test to compare against; there, fully-connected weights
(2-D, over a million values: VGG's 400 MB fc6) keep only the rows `--fc-rows`, as
`<name>.row<i>`.

`--arch fasterrcnn_resnet50_fpn` is torchvision.models.detection's (weights=None,
weights_backbone=None: batch norms, not frozen ones); `--rpn-case CASE.safetensors --size S`
then also runs its first stage in eval mode on a random S x S image, as Faster R-CNN does after
its transform: `model.backbone`, `model.rpn.head` and `concat_box_prediction_layers`, saving
`images [1, 3, S, S]`, `loc_preds [1, A, 4]` (deltas) and `cls_preds [1, A, 1]` (objectness).
`--old-names` saves the state_dict under the names of torchvision's first releases (the COCO
checkpoint's: `backbone.fpn.inner_blocks.0.weight`, `rpn.head.conv.weight`).
"""

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_contiguous, run_cli  # noqa: E402


def old_name(key):
    """torchvision's pre-0.13 names: FPN blocks and the RPN head's conv without `.0`."""
    for block in ('.inner_blocks.', '.layer_blocks.'):
        if block in key:
            head, tail = key.split(block)
            index, rest = tail.split('.', 1)
            return f'{head}{block}{index}.{rest.removeprefix("0.")}'
    return key.replace('rpn.head.conv.0.0.', 'rpn.head.conv.')


def rpn_case(model, size, path):
    """The first stage of a Faster R-CNN in eval mode on one random image."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    model.eval()
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        features = list(model.backbone(images).values())
        objectness, deltas = model.rpn.head(features)
        box_cls, box_regression = concat_box_prediction_layers(objectness, deltas)
    save_file(cpu_contiguous({'images': images, 'loc_preds': box_regression.reshape(1, -1, 4),
                              'cls_preds': box_cls.reshape(1, -1, 1)}), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', required=True)
    parser.add_argument('--seed', type=int, required=True)
    parser.add_argument('--pth', required=True)
    parser.add_argument('--safetensors', required=True)
    parser.add_argument('--fc-rows', default='0,4,12,308,4092')
    parser.add_argument('--rpn-case')
    parser.add_argument('--size', type=int, default=800)
    parser.add_argument('--old-names', action='store_true')
    args = parser.parse_args()
    rows = [int(r) for r in args.fc_rows.split(',')]
    torch.manual_seed(args.seed)
    if args.arch == 'fasterrcnn_resnet50_fpn':
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None,
                                                                      weights_backbone=None)
    else:
        model = getattr(torchvision.models, args.arch)(weights=None)
    state = model.state_dict()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a mix-up would show
        for k, v in state.items():
            if k.endswith('running_mean'):
                v.normal_(0, 0.1)
            elif k.endswith('running_var'):
                v.uniform_(0.5, 1.5)
    if args.rpn_case:
        rpn_case(model, args.size, args.rpn_case)
    saved = {old_name(k): v for k, v in state.items()} if args.old_names else state
    torch.save(saved, args.pth)
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
