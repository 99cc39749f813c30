#!/usr/bin/env python3
"""Convert a torchvision ImageNet state_dict to tchcv backbone weights (safetensors).

    python scripts/convert_weights.py --arch vgg16 vgg16-397923af.pth vgg16_backbone.safetensors
    python scripts/convert_weights.py --arch resnet50 resnet50-0676ba61.pth r50_backbone.safetensors
    python scripts/convert_weights.py --arch fasterrcnn_resnet50_fpn \
        fasterrcnn_resnet50_fpn_coco-258fb6c6.pth rpn_r50_fpn.safetensors
    python scripts/convert_weights.py --arch fasterrcnn_resnet50_fpn --with-roi-heads \
        fasterrcnn_resnet50_fpn_coco-258fb6c6.pth faster_rcnn_r50_fpn.safetensors
    tchcv train --model models/ssd300.json --init vgg16_backbone.safetensors ...

The input is a state_dict saved with torch.save (a `.pth` as torchvision downloads them, or a
checkpoint dict holding one under "state_dict" or "model") or a `.safetensors` file, with
torchvision's names. The output holds exactly the tensors tchcv's backbone loader
(`tchcv::models::load_backbone`) expects, under tchcv's names:

vgg16 (SSD300, SSD512; torchcv's layer names)
    features.{0,2,5,...,21}   -> extractor.features.layers.{same index}   conv1_1 .. conv4_3
    features.{24,26,28}       -> extractor.conv5_{1,2,3}
    classifier.0 (fc6)        -> extractor.conv6: the 4096 x (512*7*7) matrix as 4096 x 512 x 7 x 7
                                 filters, every 4th filter and every 3rd tap (rows/columns 0, 3,
                                 6) -> 1024 x 512 x 3 x 3, used with dilation 6 (the SSD paper's
                                 "fc reduced" VGG)
    classifier.3 (fc7)        -> extractor.conv7: every 4th output and input -> 1024 x 1024 x 1 x 1
    classifier.6 (fc8)        dropped

resnet18/34/50/101/152 (RetinaNet; torchcv keeps the ResNet inside `fpn`)
    conv1, bn1, layer1..layer4 -> fpn.<same name>; fc and num_batches_tracked dropped
    (--prefix backbone.body. for models/rpn_r50_fpn.json, whose ResNet has torchvision's
    Faster R-CNN names)

fasterrcnn_resnet50_fpn (models/rpn_r50_fpn.json: the whole region proposal network, which
`tchcv train --init` loads whole; tchcv keeps torchvision's names)
    backbone.body.*                       -> the same names
    backbone.fpn.{inner,layer}_blocks.i.0 -> the same names; the pre-0.13 names of torchvision's
                                             COCO checkpoint (backbone.fpn.inner_blocks.i.weight)
                                             get the `.0`
    rpn.head.conv.0.0, cls_logits, bbox_pred -> the same; rpn.head.conv (pre-0.13) -> conv.0.0
    roi_heads.* (the second stage) and num_batches_tracked dropped
    --with-roi-heads (models/faster_rcnn_r50_fpn.json: the whole Faster R-CNN) also keeps
    roi_heads.box_head.fc6, fc7 and roi_heads.box_predictor.cls_score, bbox_pred (weight and
    bias) under the same names; an error if any is missing

Exit status 0 on success, 1 with a one-line `error: ...` (e.g. the names the input lacks).
"""

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

VGG_FEATURES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
VGG_CONV5 = {24: 'conv5_1', 26: 'conv5_2', 28: 'conv5_3'}
RESNETS = {'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'}
DETECTORS = {'fasterrcnn_resnet50_fpn'}


class ConvertError(Exception):
    pass


def read_state_dict(path):
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f'{path}: no such file')
    if path.suffix == '.safetensors':
        return load_file(str(path))
    state = torch.load(str(path), map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConvertError(f'{path}: expected a state_dict (names -> tensors)')
    return state


def take(state, name, origin):
    if name not in state:
        raise ConvertError(f'{origin}: missing {name!r} (is this a torchvision state_dict of the '
                           f'right architecture? it has {len(state)} tensors, e.g. {sorted(state)[:4]})')
    return state[name]


def convert_vgg16(state, origin):
    out = {}
    for i in VGG_FEATURES:
        for p in ('weight', 'bias'):
            out[f'extractor.features.layers.{i}.{p}'] = take(state, f'features.{i}.{p}', origin)
    for i, name in VGG_CONV5.items():
        for p in ('weight', 'bias'):
            out[f'extractor.{name}.{p}'] = take(state, f'features.{i}.{p}', origin)
    fc6_w = take(state, 'classifier.0.weight', origin)
    fc7_w = take(state, 'classifier.3.weight', origin)
    if tuple(fc6_w.shape) != (4096, 512 * 7 * 7) or tuple(fc7_w.shape) != (4096, 4096):
        raise ConvertError(f'{origin}: fc6/fc7 have shapes {tuple(fc6_w.shape)}, {tuple(fc7_w.shape)}; '
                           'expected (4096, 25088) and (4096, 4096) (torchvision vgg16)')
    out['extractor.conv6.weight'] = fc6_w.view(4096, 512, 7, 7)[::4, :, ::3, ::3]
    out['extractor.conv6.bias'] = take(state, 'classifier.0.bias', origin)[::4]
    out['extractor.conv7.weight'] = fc7_w.view(4096, 4096, 1, 1)[::4, ::4]
    out['extractor.conv7.bias'] = take(state, 'classifier.3.bias', origin)[::4]
    return out


def convert_resnet(state, origin, prefix='fpn.'):
    out = {}
    for name, t in state.items():
        if name.endswith('num_batches_tracked') or name.startswith('fc.'):
            continue
        if name.split('.')[0] in ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4'):
            out[f'{prefix}{name}'] = t
        else:
            raise ConvertError(f'{origin}: unexpected tensor {name!r} for a torchvision ResNet')
    take(state, 'layer4.0.conv1.weight', origin)
    return out


def rpn_name(name):
    """A Faster R-CNN tensor's tchcv name (torchvision's current one); None for one tchcv
    drops (the second stage, batch-norm counters), '' for one it does not know."""
    parts = name.split('.')
    if name.endswith('num_batches_tracked') or parts[0] == 'roi_heads':
        return None
    if parts[:2] == ['backbone', 'body']:
        return name
    fpn_block = parts[:2] == ['backbone', 'fpn'] and parts[2:3] in (['inner_blocks'],
                                                                    ['layer_blocks'])
    if fpn_block and len(parts) == 5:
        return '.'.join(parts[:4] + ['0', parts[4]])  # pre-0.13: blocks.i.weight
    if fpn_block and len(parts) == 6 and parts[4] == '0':
        return name
    if parts[:3] == ['rpn', 'head', 'conv'] and len(parts) == 4:
        return f'rpn.head.conv.0.0.{parts[3]}'  # pre-0.13
    if parts[:2] == ['rpn', 'head'] and parts[2] in ('conv', 'cls_logits', 'bbox_pred'):
        return name
    return ''


ROI_HEADS = [f'roi_heads.{layer}.{p}'
             for layer in ('box_head.fc6', 'box_head.fc7', 'box_predictor.cls_score',
                           'box_predictor.bbox_pred')
             for p in ('weight', 'bias')]


def convert_fasterrcnn(state, origin, with_roi_heads=False):
    out = {}
    for name, t in state.items():
        new = rpn_name(name)
        if new == '':
            raise ConvertError(f'{origin}: unexpected tensor {name!r} for a torchvision '
                               'fasterrcnn_resnet50_fpn')
        if new is not None:
            out[new] = t
    take(state, 'backbone.body.layer4.2.conv3.weight', origin)
    if 'rpn.head.cls_logits.weight' not in out:
        take(state, 'rpn.head.cls_logits.weight', origin)
    if with_roi_heads:
        missing = [name for name in ROI_HEADS if name not in state]
        if missing:
            raise ConvertError(f'{origin}: --with-roi-heads: missing {", ".join(missing)}')
        out.update({name: state[name] for name in ROI_HEADS})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', required=True,
                        choices=['vgg16', *sorted(RESNETS), *sorted(DETECTORS)])
    parser.add_argument('--prefix', default='fpn.',
                        help='ResNets: the name prefix of the backbone (fpn. for RetinaNet, '
                             'backbone.body. for the ResNet-FPN RPN)')
    parser.add_argument('--with-roi-heads', action='store_true',
                        help='fasterrcnn_resnet50_fpn: also keep the second stage (box head and '
                             'predictor), for the whole Faster R-CNN')
    parser.add_argument('input', help='torchvision state_dict (.pth or .safetensors)')
    parser.add_argument('output', help='tchcv backbone weights (.safetensors)')
    args = parser.parse_args()
    try:
        if args.with_roi_heads and args.arch not in DETECTORS:
            raise ConvertError(f'--with-roi-heads is only for --arch {", ".join(sorted(DETECTORS))}')
        state = read_state_dict(args.input)
        if args.arch == 'vgg16':
            out = convert_vgg16(state, args.input)
        elif args.arch in DETECTORS:
            out = convert_fasterrcnn(state, args.input, args.with_roi_heads)
        else:
            out = convert_resnet(state, args.input, args.prefix)
        out = {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        save_file(out, args.output)
    except ConvertError as exc:
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(1)
    n = sum(t.numel() for t in out.values())
    what = 'backbone'
    if args.arch in DETECTORS:
        what = 'Faster R-CNN' if args.with_roi_heads else 'region proposal network'
    print(f'{args.output}: {len(out)} tensors, {n} values ({args.arch} {what})')


if __name__ == '__main__':
    main()
