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
`--frcnn-case CASE.safetensors --size S [--images N]` (S a multiple of 32, N 2 by default) runs
the whole Faster R-CNN in eval mode, torchvision's default settings (RPN test pre/post-NMS top
1000/1000, box score threshold 0.05, NMS 0.5, 100 detections per image), on N random S x S
images `torch.randn(N, 3, S, S)`, its transform made an identity (min_size (S,), max_size S,
mean 0, std 1; checked exactly): it saves `images [N, 3, S, S]` and per image i
`proposals_{i} [P_i, 4]` (the RPN's), `boxes_{i} [D_i, 4]`, `scores_{i} [D_i]` (f32) and
`labels_{i} [D_i]` (int64, torchvision's 1..90). So that random weights give detections, the
box predictor is first re-drawn (and saved so): cls_score weight ~ N(0, 0.002), bias ~ N(0, 2);
bbox_pred weight ~ N(0, 0.0005), bias ~ N(0, 0.1). The random box head's features are large
(norm ~700), so these small weight stds keep the class scores unsaturated and distinct (0.05 gave
scores of exactly 1.0, tied) and the box deltas moderate (std ~0.4); at S = 320 several hundred
(box, class) pairs pass 0.05, so most images have torchvision's 100 (seed 7: scores 0.3 to 0.7,
no two equal; a seed whose RPN keeps a few dozen proposals gives a few dozen); an image without
detections is an error. `--old-names` saves the state_dict under the names of torchvision's first releases (the COCO
checkpoint's: `backbone.fpn.inner_blocks.0.weight`, `rpn.head.conv.weight`).
"""

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceError, cpu_contiguous, run_cli  # noqa: E402


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


def frcnn_case(model, size, n_images, path):
    """The whole Faster R-CNN in eval mode on `n_images` random images, its transform an
    identity; the detections of `model(images)`, checked against those of its pieces."""
    if size % 32:
        raise ReferenceError(f'--size {size}: must be a multiple of 32 for --frcnn-case')
    model.eval()
    model.transform.min_size = (size,)
    model.transform.max_size = size
    model.transform.image_mean = [0.0, 0.0, 0.0]
    model.transform.image_std = [1.0, 1.0, 1.0]
    images = torch.randn(n_images, 3, size, size)
    with torch.no_grad():
        image_list, _ = model.transform(list(images))
        if not torch.equal(image_list.tensors, images):
            raise ReferenceError('the transform is not an identity on the images')
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
        detections = model.transform.postprocess(detections, image_list.image_sizes,
                                                 [(size, size)] * n_images)
        whole = model(list(images))
    out = {'images': images}
    for i, (props, det, det2) in enumerate(zip(proposals, detections, whole)):
        for k in ('boxes', 'scores', 'labels'):
            if not torch.equal(det[k], det2[k]):
                raise ReferenceError(f'image {i}: {k} of model(images) differ from its pieces')
        out[f'proposals_{i}'] = props
        out[f'boxes_{i}'] = det['boxes']
        out[f'scores_{i}'] = det['scores']
        out[f'labels_{i}'] = det['labels'].to(torch.int64)
    counts = [len(d['scores']) for d in detections]
    if min(counts) < 1:
        raise ReferenceError(f'{counts} detections per image: an image has none to compare')
    print(f'{path}: proposals {[len(p) for p in proposals]}, detections {counts} per image')
    save_file(cpu_contiguous(out), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', required=True)
    parser.add_argument('--seed', type=int, required=True)
    parser.add_argument('--pth', required=True)
    parser.add_argument('--safetensors', required=True)
    parser.add_argument('--fc-rows', default='0,4,12,308,4092')
    parser.add_argument('--rpn-case')
    parser.add_argument('--size', type=int, default=800)
    parser.add_argument('--frcnn-case')
    parser.add_argument('--images', type=int, default=2)
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
    if args.frcnn_case:
        if args.arch != 'fasterrcnn_resnet50_fpn':
            raise ReferenceError('--frcnn-case needs --arch fasterrcnn_resnet50_fpn')
        predictor = model.roi_heads.box_predictor
        with torch.no_grad():  # scores above 0.05 for a useful number of (proposal, class)
            predictor.cls_score.weight.normal_(0, 0.002)
            predictor.cls_score.bias.normal_(0, 2.0)
            predictor.bbox_pred.weight.normal_(0, 0.0005)
            predictor.bbox_pred.bias.normal_(0, 0.1)
        frcnn_case(model, args.size, args.images, args.frcnn_case)
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
