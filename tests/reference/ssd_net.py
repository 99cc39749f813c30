"""PyTorch reference detectors for the forward-parity tests (tests/models_parity.rs).

Written for this project in the style of torchcv's `models/ssd/net.py` and
`models/retinanet/{fpn,net}.py` (module names as torchcv's, so `state_dict()` keys are the
names tchcv gives its variables), configured from a model spec (`models/*.json`):

- SSD300 / SSD512: torchcv's VGG16 (ceil-mode pools), L2Norm on conv4_3 (here with a learnable
  per-channel weight, which equals torchcv's constant scale 20 at initialisation), pool5 3x3/1,
  conv6 (dilation 6), conv7, the extra layers, 3x3 heads.
- The small SSD of `models/ssd_small.json` (conv-BN-ReLU blocks, optional depthwise).
- RetinaNet: ResNet (BasicBlock/Bottleneck) + torchcv FPN (P3-P7) + shared heads, with the
  `network` options tchcv documents (upsample, p6_from, head_norm, prior_prob, ...).
- Region proposal networks (`"head": "rpn"`): torchvision's own `RPNHead` (one shared by the
  levels when their channels and anchors per cell agree, else one per map) and its
  `concat_box_prediction_layers`, on the small extractor above or on torchvision's own
  `resnet_fpn_backbone` (ResNet + FPN P2-P5 + `LastLevelMaxPool`, Faster R-CNN's); the outputs
  are `(deltas [N, A, 4], objectness [N, A, 1])`, saved as `loc_preds`, `cls_preds`.

    python tests/reference/ssd_net.py gen --spec models/ssd300.json --num-classes 20 \
        --seed S --batch 1 [--train] [--device cpu|cuda] --out DIR

writes DIR/weights.safetensors (random weights, tchcv names), DIR/case.safetensors
(`images`, `loc_preds`, `cls_preds`, and with --train the batch-norm running statistics after
the forward, named like the weights) and DIR/case.json, and prints the JSON on one line.
`--autocast bf16|f16` runs the forward under `torch.autocast(device_type, dtype)` (the outputs
keep autocast's dtype; case.json names it), `--channels-last` converts the model and the images
to `memory_format=torch.channels_last` first. `--grads` also backpropagates
`sum(loc_preds * g_loc) + sum(cls_preds * g_cls)` for random cotangents (saved as
`cotangent.loc`, `cotangent.cls`) and saves every parameter's gradient as `grad.<name>`.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ReferenceError, case_generator, cpu_contiguous, resolve_device,  # noqa: E402
                    run_cli)
from safetensors.torch import save_file  # noqa: E402


# ---------------------------------------------------------------------------------------------
# SSD300 / SSD512 (torchcv models/ssd/net.py)

class VGG16(nn.Module):
    """conv1_1 .. conv4_3 with ReLUs and ceil-mode 2x2 pools."""

    cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512]

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for x in self.cfg:
            if x == 'M':
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, x, kernel_size=3, padding=1), nn.ReLU(True)]
                c = x
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class L2Norm2d(nn.Module):
    """weight[c] * x / sqrt(max(sum_c x^2, 1e-12)), weight starting at `scale`."""

    def __init__(self, channels, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        return self.weight.view(1, -1, 1, 1) * x * x.pow(2).sum(1, keepdim=True).clamp(min=1e-12).rsqrt()


# (name, in, mid, out, kernel, stride, padding) of torchcv's extra layers
EXTRAS_300 = [(8, 1024, 256, 512, 3, 2, 1), (9, 512, 128, 256, 3, 2, 1),
              (10, 256, 128, 256, 3, 1, 0), (11, 256, 128, 256, 3, 1, 0)]
EXTRAS_512 = [(8, 1024, 256, 512, 3, 2, 1), (9, 512, 128, 256, 3, 2, 1),
              (10, 256, 128, 256, 3, 2, 1), (11, 256, 128, 256, 3, 2, 1),
              (12, 256, 128, 256, 4, 1, 1)]


class VGG16Extractor(nn.Module):
    def __init__(self, extras, l2norm_scale=20.0):
        super().__init__()
        self.features = VGG16()
        self.norm4 = L2Norm2d(512, l2norm_scale)
        self.conv5_1 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.conv5_2 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.conv5_3 = nn.Conv2d(512, 512, kernel_size=3, padding=1)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.extra_names = []
        for n, cin, mid, out, k, s, p in extras:
            setattr(self, f'conv{n}_1', nn.Conv2d(cin, mid, kernel_size=1))
            setattr(self, f'conv{n}_2', nn.Conv2d(mid, out, kernel_size=k, stride=s, padding=p))
            self.extra_names.append(n)

    def forward(self, x):
        hs = []
        h = self.features(x)
        hs.append(self.norm4(h))  # conv4_3
        h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
        h = F.relu(self.conv5_1(h))
        h = F.relu(self.conv5_2(h))
        h = F.relu(self.conv5_3(h))
        h = F.max_pool2d(h, kernel_size=3, stride=1, padding=1, ceil_mode=True)
        h = F.relu(self.conv6(h))
        h = F.relu(self.conv7(h))
        hs.append(h)  # conv7
        for n in self.extra_names:
            h = F.relu(getattr(self, f'conv{n}_1')(h))
            h = F.relu(getattr(self, f'conv{n}_2')(h))
            hs.append(h)
        return hs


class SSD(nn.Module):
    """Any extractor + torchcv's per-map 3x3 loc/cls convs, NHWC-flattened and concatenated."""

    def __init__(self, extractor, in_channels, num_anchors, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.extractor = extractor
        self.loc_layers = nn.ModuleList()
        self.cls_layers = nn.ModuleList()
        for c, k in zip(in_channels, num_anchors):
            self.loc_layers.append(nn.Conv2d(c, k * 4, kernel_size=3, padding=1))
            self.cls_layers.append(nn.Conv2d(c, k * num_classes, kernel_size=3, padding=1))

    def forward(self, x):
        loc_preds, cls_preds = [], []
        for i, h in enumerate(self.extractor(x)):
            loc = self.loc_layers[i](h).permute(0, 2, 3, 1).contiguous()
            loc_preds.append(loc.view(loc.size(0), -1, 4))
            cls = self.cls_layers[i](h).permute(0, 2, 3, 1).contiguous()
            cls_preds.append(cls.view(cls.size(0), -1, self.num_classes))
        return torch.cat(loc_preds, 1), torch.cat(cls_preds, 1)


# ---------------------------------------------------------------------------------------------
# The small SSD (models/ssd_small.json)

def round8(c, width):
    """c * width to the nearest multiple of 8 (halves up), at least 8."""
    return max(8, int(math.floor(c * width / 8 + 0.5)) * 8)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


class SeparableBlock(nn.Module):
    def __init__(self, cin, cout, stride, bn):
        super().__init__()
        self.dw = ConvBNReLU(cin, cin, 3, stride, 1, groups=cin, bn=bn)
        self.pw = ConvBNReLU(cin, cout, 1, bn=bn)

    def forward(self, x):
        return self.pw(self.dw(x))


class ExtraBlock(nn.Module):
    def __init__(self, c, mid, bn):
        super().__init__()
        self.reduce = ConvBNReLU(c, mid, 1, bn=bn)
        self.expand = ConvBNReLU(mid, c, 3, 2, 1, bn=bn)

    def forward(self, x):
        return self.expand(self.reduce(x))


class SmallExtractor(nn.Module):
    stages = [(32, 2), (64, 2), (128, 2), (128, 2)]

    def __init__(self, n_maps, width=1.0, depthwise=True, bn=True):
        super().__init__()
        c = round8(16, width)
        self.stem = ConvBNReLU(3, c, 3, 2, 1, bn=bn)
        layers, self.taps, self.out_channels = [], [], []
        for s, (cout, blocks) in enumerate(self.stages):
            cout = round8(cout, width)
            for b in range(blocks):
                stride = 2 if b == 0 else 1
                if depthwise:
                    layers.append(SeparableBlock(c, cout, stride, bn))
                else:
                    layers.append(ConvBNReLU(c, cout, 3, stride, 1, bn=bn))
                c = cout
            if s >= 1:
                self.taps.append(len(layers) - 1)
                self.out_channels.append(c)
        self.layers = nn.ModuleList(layers)
        self.extras = nn.ModuleList(ExtraBlock(c, round8(64, width), bn) for _ in range(n_maps - 3))
        self.out_channels += [c] * (n_maps - 3)

    def forward(self, x):
        hs = []
        h = self.stem(x)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i in self.taps:
                hs.append(h)
        for extra in self.extras:
            h = extra(h)
            hs.append(h)
        return hs


# ---------------------------------------------------------------------------------------------
# RetinaNet (torchcv models/retinanet/fpn.py, net.py)

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or in_planes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


RESNETS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
           50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
           152: (Bottleneck, [3, 8, 36, 3])}


class FPN(nn.Module):
    def __init__(self, depth, levels, channels=256, p6_from='c5', upsample='nearest'):
        super().__init__()
        block, num_blocks = RESNETS[depth]
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        c3, c4, c5 = 128 * block.expansion, 256 * block.expansion, 512 * block.expansion
        self.levels, self.p6_from, self.upsample = levels, p6_from, upsample
        if levels >= 4:
            self.conv6 = nn.Conv2d(c5 if p6_from == 'c5' else channels, channels, 3, stride=2, padding=1)
        if levels >= 5:
            self.conv7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.toplayer = nn.Conv2d(c5, channels, 1)
        self.latlayer1 = nn.Conv2d(c4, channels, 1)
        self.latlayer2 = nn.Conv2d(c3, channels, 1)
        self.smooth1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.smooth2 = nn.Conv2d(channels, channels, 3, padding=1)

    def _make_layer(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _upsample_add(self, x, y):
        _, _, h, w = y.size()
        if self.upsample == 'bilinear':
            return F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False) + y
        return F.interpolate(x, size=(h, w), mode='nearest') + y

    def forward(self, x):
        c1 = F.relu(self.bn1(self.conv1(x)))
        c1 = F.max_pool2d(c1, kernel_size=3, stride=2, padding=1)
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        p5 = self.toplayer(c5)
        p4 = self._upsample_add(p5, self.latlayer1(c4))
        p3 = self._upsample_add(p4, self.latlayer2(c3))
        p4 = self.smooth1(p4)
        p3 = self.smooth2(p3)
        out = [p3, p4, p5]
        if self.levels >= 4:
            p6 = self.conv6(c5 if self.p6_from == 'c5' else p5)
            out.append(p6)
            if self.levels >= 5:
                out.append(self.conv7(F.relu(p6)))
        return out


class RetinaNet(nn.Module):
    def __init__(self, depth, levels, num_anchors, num_classes, channels=256, head_convs=4,
                 head_norm='none', p6_from='c5', upsample='nearest'):
        super().__init__()
        self.fpn = FPN(depth, levels, channels, p6_from, upsample)
        self.num_classes = num_classes
        self.loc_head = self._make_head(num_anchors * 4, channels, head_convs, head_norm)
        self.cls_head = self._make_head(num_anchors * num_classes, channels, head_convs, head_norm)

    @staticmethod
    def _make_head(out_planes, channels, convs, norm):
        layers = []
        for _ in range(convs):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            if norm == 'group_norm':
                layers.append(nn.GroupNorm(32, channels))
            layers.append(nn.ReLU(True))
        layers.append(nn.Conv2d(channels, out_planes, 3, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x):
        loc_preds, cls_preds = [], []
        for fm in self.fpn(x):
            loc_preds.append(self.loc_head(fm).permute(0, 2, 3, 1).reshape(x.size(0), -1, 4))
            cls_preds.append(self.cls_head(fm).permute(0, 2, 3, 1).reshape(x.size(0), -1, self.num_classes))
        return torch.cat(loc_preds, 1), torch.cat(cls_preds, 1)


# ---------------------------------------------------------------------------------------------
# Region proposal networks (torchvision's RPNHead and resnet_fpn_backbone)

class Rpn(nn.Module):
    """`rpn.head`: torchvision RPNHead(s) on a feature extractor's maps; forward ->
    (deltas [N, A, 4], objectness [N, A, 1]) flattened by torchvision's
    concat_box_prediction_layers."""

    def __init__(self, in_channels, num_anchors):
        super().__init__()
        from torchvision.models.detection.rpn import RPNHead
        self.shared = len(set(in_channels)) == 1 and len(set(num_anchors)) == 1
        self.rpn = nn.Module()
        if self.shared:
            self.rpn.head = RPNHead(in_channels[0], num_anchors[0])
        else:
            self.rpn.head = nn.ModuleList(RPNHead(c, k) for c, k in zip(in_channels, num_anchors))

    def maps(self, x):
        raise NotImplementedError

    def forward(self, x):
        from torchvision.models.detection.rpn import concat_box_prediction_layers
        maps = self.maps(x)
        if self.shared:
            objectness, deltas = self.rpn.head(maps)
        else:
            outs = [head([m]) for head, m in zip(self.rpn.head, maps)]
            objectness, deltas = [o[0][0] for o in outs], [o[1][0] for o in outs]
        box_cls, box_regression = concat_box_prediction_layers(objectness, deltas)
        n = x.shape[0]
        return box_regression.reshape(n, -1, 4), box_cls.reshape(n, -1, 1)


class SmallRpn(Rpn):
    def __init__(self, n_maps, num_anchors, width, depthwise, bn):
        extractor = SmallExtractor(n_maps, width, depthwise, bn)
        super().__init__(extractor.out_channels, num_anchors)
        self.extractor = extractor

    def maps(self, x):
        return self.extractor(x)


class ResNetFpnRpn(Rpn):
    """torchvision's Faster R-CNN backbone (`backbone.body`, `backbone.fpn`); n_maps 5 keeps the
    LastLevelMaxPool level P6, 4 drops it."""

    def __init__(self, depth, n_maps, num_anchors, channels, frozen_bn):
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.ops.misc import FrozenBatchNorm2d
        super().__init__([channels] * n_maps, num_anchors)
        self.n_maps = n_maps
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.backbone = resnet_fpn_backbone(backbone_name=f'resnet{depth}', weights=None,
                                            norm_layer=norm, trainable_layers=5)
        if channels != 256:
            raise ReferenceError('the reference builds torchvision\'s 256-channel FPN only')

    def maps(self, x):
        return list(self.backbone(x).values())[:self.n_maps]


# ---------------------------------------------------------------------------------------------
# From a spec

def anchors_per_cell(anchors):
    if anchors['style'] == 'ssd':
        return [2 + 2 * len(r) for r in anchors['aspect_ratios']]
    if anchors['style'] == 'torchvision':
        n = len(anchors['feature_maps'])
        sizes = [s if isinstance(s, list) else [s] for s in anchors['sizes']]
        ratios = anchors['aspect_ratios']
        if not isinstance(ratios[0], list):
            ratios = [ratios] * n
        return [len(s) * len(r) for s, r in zip(sizes, ratios)]
    k = len(anchors['aspect_ratios']) * len(anchors['scales'])
    return [k] * len(anchors['feature_maps'])


def build(spec, num_classes):
    """The reference network a spec describes; num_classes counts foreground classes."""
    head, backbone = spec['head'], spec['backbone']
    net = spec.get('network') or {}
    loss = spec.get('loss', 'focal' if head == 'retina' else 'ssd')
    columns = num_classes + (0 if loss == 'focal' else 1)
    k = anchors_per_cell(spec['anchors'])
    n_maps = len(k)
    if head == 'ssd' and backbone == 'vgg16':
        extras = EXTRAS_300 if n_maps == 6 else EXTRAS_512
        extractor = VGG16Extractor(extras, net.get('l2norm_scale', 20.0))
        in_channels = [512, 1024] + [e[3] for e in extras]
        return SSD(extractor, in_channels, k, columns)
    if head == 'ssd' and backbone == 'small':
        extractor = SmallExtractor(n_maps, net.get('width', 1.0), net.get('depthwise', True),
                                   net.get('bn', True))
        return SSD(extractor, extractor.out_channels, k, columns)
    if head == 'rpn' and backbone == 'small':
        return SmallRpn(n_maps, k, net.get('width', 1.0), net.get('depthwise', True),
                        net.get('bn', True))
    if head == 'rpn' and backbone.startswith('resnet'):
        depth = int(backbone[len('resnet'):] or net.get('depth', 50))
        return ResNetFpnRpn(depth, n_maps, k, net.get('fpn_channels', 256),
                            net.get('frozen_bn', False))
    if head == 'retina':
        depth = int(backbone[len('resnet'):] or net.get('depth', 50))
        return RetinaNet(depth, n_maps, k[0], columns, net.get('fpn_channels', 256),
                         net.get('head_convs', 4), net.get('head_norm', 'none'),
                         net.get('p6_from', 'c5'), net.get('upsample', 'nearest'))
    raise ReferenceError(f"no reference for head {head!r} with backbone {backbone!r}")


def randomize_(model, gen):
    """Random weights that keep activations O(1) through deep ReLU stacks: convs N(0, 2/fan_in),
    biases U(-0.1, 0.1), norms' weights U(0.5, 1.5), L2Norm weights U(10, 30) (running
    statistics: see calibrate_batch_norms_)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('num_batches_tracked'):
                continue
            if name.endswith('running_mean'):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith('norm4.weight'):
                t.copy_(torch.rand(t.shape, generator=gen) * 20 + 10)
            elif t.dim() == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            elif name.endswith('bias'):
                t.copy_((torch.rand(t.shape, generator=gen) - 0.5) * 0.2)
            else:  # batch/group norm weight
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)


def calibrate_batch_norms_(model, gen, shape):
    """Set every batch norm's running statistics to those of one random batch (a train-mode
    pass with momentum 1), so eval-mode activations stay O(1) through deep ResNets."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(shape, generator=gen))
    for m in norms:
        m.momentum = 0.1


def tchcv_names(state):
    """torch state_dict -> tchcv VarStore names: the same keys (both follow torchcv's module
    names), without `num_batches_tracked`, which tch's batch norm does not keep."""
    return {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}


def gen(args):
    spec_path = Path(args.spec)
    spec = json.loads(spec_path.read_text())
    device = resolve_device(args.device)
    gen_ = case_generator(args.seed, 0)
    model = build(spec, args.num_classes)
    randomize_(model, gen_)
    w, h = spec['input_size']
    calibrate_batch_norms_(model, gen_, (2, 3, h, w))
    # clone: the state_dict aliases the buffers a training-mode forward updates in place
    weights = {k: v.clone() for k, v in tchcv_names(model.state_dict()).items()}
    images = torch.randn((args.batch, 3, h, w), generator=gen_)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    model.train(args.train)
    dtype = {'bf16': torch.bfloat16, 'f16': torch.float16}.get(args.autocast)
    with torch.set_grad_enabled(args.grads), \
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loc_preds, cls_preds = model(images.to(device).contiguous(memory_format=memory_format))
    grads = {}
    if args.grads:
        # Backward of sum(loc_preds * g_loc) + sum(cls_preds * g_cls), random cotangents (f32).
        g_loc = torch.randn(loc_preds.shape, generator=gen_)
        g_cls = torch.randn(cls_preds.shape, generator=gen_)
        ((loc_preds.float() * g_loc.to(device)).sum()
         + (cls_preds.float() * g_cls.to(device)).sum()).backward()
        grads = {'cotangent.loc': g_loc, 'cotangent.cls': g_cls}
        grads.update({f'grad.{k}': p.grad for k, p in model.named_parameters()
                      if p.grad is not None})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / 'weights.safetensors'))
    case = {'images': images, 'loc_preds': loc_preds, 'cls_preds': cls_preds, **grads}
    if args.train:
        for k, v in tchcv_names(model.state_dict()).items():
            if k.endswith('running_mean') or k.endswith('running_var'):
                case[f'after.{k}'] = v
    save_file(cpu_contiguous(case), str(out / 'case.safetensors'))
    info = {'spec': spec['name'], 'num_classes': args.num_classes, 'batch': args.batch,
            'train': bool(args.train), 'device': args.device, 'seed': args.seed,
            'parameters': sum(p.numel() for p in model.parameters()),
            'loc_preds': list(loc_preds.shape), 'cls_preds': list(cls_preds.shape),
            'dtype': str(loc_preds.dtype).removeprefix('torch.'), 'autocast': args.autocast,
            'channels_last': bool(args.channels_last),
            'loc_abs_max': float(loc_preds.abs().max()), 'cls_abs_max': float(cls_preds.abs().max())}
    (out / 'case.json').write_text(json.dumps(info, indent=2) + '\n')
    print(json.dumps(info))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    g = sub.add_parser('gen', help='random weights, images and the reference outputs')
    g.add_argument('--spec', required=True)
    g.add_argument('--num-classes', type=int, default=20)
    g.add_argument('--seed', type=int, required=True)
    g.add_argument('--batch', type=int, default=1)
    g.add_argument('--train', action='store_true', help='batch norms in training mode')
    g.add_argument('--device', default='cpu')
    g.add_argument('--autocast', choices=('bf16', 'f16'))
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--grads', action='store_true',
                   help='also the parameter gradients of a random linear function of the outputs')
    g.add_argument('--out', required=True)
    args = parser.parse_args()
    if args.command == 'gen':
        gen(args)


if __name__ == '__main__':
    run_cli(main)
