"""Independent PyTorch reference definitions of qatc's CIFAR model families.

Plain ``torch.nn`` modules, written from the papers and torchvision's
definitions (not from qatc or its specs), for a 3x32x32 input and 10 classes.
``counts.py`` counts their parameters and MACs; ``README.md`` describes the
exact architectures and how each one is written in a ``.qspec`` file.

Only torch is needed. Every CIFAR adaptation is stated where it is made.
"""

import math

import torch
import torch.nn as nn


# ---------------------------------------------------------------------------
# SE-ResNet20
# ---------------------------------------------------------------------------
# The CIFAR ResNet20 of He et al. 2016 (3 stages x 3 basic blocks, 16/32/64
# channels, a 3x3 stem, global average pool, linear), exactly as the seed's
# ResNet20 in spec/resnet20.qspec:
#   * convolutions have no bias, the fc has one;
#   * option-B shortcuts: conv1x1(stride) + BN when the stride or the channel
#     count changes (first block of stages 2 and 3), identity otherwise;
#   * no ReLU after the residual add (the seed quantizes the sum with a
#     DoReFa activation instead; a ReLU would add neither params nor MACs).
# plus, as in Hu et al. 2018 (SE-ResNet), a squeeze-excitation module on the
# residual branch (after the second BN, before the add):
#   global avgpool -> conv1x1(C -> C/r, bias) -> ReLU -> conv1x1(C/r -> C, bias)
#   -> sigmoid -> multiply the branch by the Cx1x1 gate,
# with reduction r = 16 and at least 1 squeeze channel: max(1, C // 16), i.e.
# 1, 2, 4 squeeze channels for C = 16, 32, 64. (The 1x1 convs on the 1x1 map
# are the same as linear layers; they are convs so that the gate stays Cx1x1.)


class SqueezeExcitation(nn.Module):
    """avgpool -> fc1 (1x1 conv, bias) -> act -> fc2 (1x1 conv, bias) -> gate -> x * gate."""

    def __init__(self, channels, squeeze, activation=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.act = activation()
        self.fc2 = nn.Conv2d(squeeze, channels, 1, bias=True)
        self.gate = gate()

    def forward(self, x):
        g = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * g


class SEBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, reduction=16):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcitation(cout, max(1, cout // reduction))
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = self.se(y)
        return y + self.shortcut(x)  # no ReLU after the add (as the seed)


class SEResNet20(nn.Module):
    def __init__(self, num_classes=10, reduction=16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(SEBasicBlock(cin, cout, stride if i == 0 else 1, reduction))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(8)  # 64x8x8 -> 64x1x1
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# MobileNetV3-Small
# ---------------------------------------------------------------------------
# Howard et al. 2019, torchvision's mobilenet_v3_small configuration (width
# 1.0, no reduced tail, no dilation): the same layer table, SE placement, SE
# squeeze widths _make_divisible(expanded // 4, 8) with ReLU inside and a
# hardsigmoid gate, hardswish / ReLU per row, no biases except in the SE convs
# and the classifier, last conv 96 -> 576, classifier
# Linear(576, 1024) -> hardswish -> dropout(0.2) -> Linear(1024, classes).
# CIFAR adaptation (the only changes; 32x32 -> 8x8 at the last stage):
#   * the first conv (3x3, 16 channels) has stride 1 instead of 2;
#   * the first two stride-2 bottlenecks (rows 1 and 2 of the table:
#     16->16 k3 exp16 SE ReLU, and 16->24 k3 exp72 ReLU) have stride 1;
#   * the two other stride-2 rows (24->40 k5, 48->96 k5) keep stride 2:
#     32x32 -> 16x16 -> 8x8; the global average pool sees 576x8x8.


def _make_divisible(v, divisor=8, min_value=None):
    # torchvision.models._utils._make_divisible
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# (cin, kernel, expanded, cout, use_se, activation, stride) -- torchvision's
# table; the stride column is the CIFAR one, torchvision's in the comment.
MOBILENETV3_SMALL_CIFAR = [
    (16, 3, 16, 16, True, "RE", 1),    # torchvision: stride 2
    (16, 3, 72, 24, False, "RE", 1),   # torchvision: stride 2
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]


def _act(name):
    return nn.Hardswish() if name == "HS" else nn.ReLU()


class MBV3Block(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, act, stride):
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        layers = []
        if expanded != cin:  # torchvision: no expansion conv when exp == cin
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), _act(act)]
        layers += [
            nn.Conv2d(expanded, expanded, kernel, stride, (kernel - 1) // 2, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded),
            _act(act),
        ]
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8), nn.ReLU, nn.Hardsigmoid))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # linear projection
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes=10, config=MOBILENETV3_SMALL_CIFAR, dropout=0.2):
        super().__init__()
        # CIFAR: stride 1 (torchvision: 2).
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(*[MBV3Block(*row) for row in config])
        last = config[-1][3]
        self.head = nn.Sequential(
            nn.Conv2d(last, 6 * last, 1, bias=False), nn.BatchNorm2d(6 * last), nn.Hardswish(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(6 * last, 1024), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(1024, num_classes)
        )

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# ShuffleNetV2 1.0x
# ---------------------------------------------------------------------------
# Ma et al. 2018, torchvision's shufflenet_v2_x1_0: stage channels 116 / 232 /
# 464, repeats 4 / 8 / 4, conv5 1x1 to 1024 + BN + ReLU, global average pool,
# Linear(1024, classes); no conv biases. Units as torchvision:
#   stride 1: x1, x2 = split(x); out = concat(x1, branch2(x2))
#   stride 2: out = concat(branch1(x), branch2(x))
#   branch1 = dw3x3(stride) -> BN -> conv1x1(C/2) -> BN -> ReLU
#   branch2 = conv1x1(C/2) -> BN -> ReLU -> dw3x3(stride) -> BN -> conv1x1(C/2) -> BN -> ReLU
#   then channel shuffle with 2 groups.
# CIFAR adaptation: the first conv is 3x3 stride 1 (torchvision: stride 2) with
# 24 channels, and there is no max pool (torchvision: 3x3 stride 2), so the
# three stages see 32 -> 16 -> 8 -> 4 (each stage's first unit has stride 2)
# and conv5 / the pool see 4x4.


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            )
        else:
            assert cin == cout
            self.branch1 = nn.Sequential()
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(b2_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes=10, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024)):
        super().__init__()
        # CIFAR: 3x3 stride 1 (torchvision: stride 2), and no max pool after it.
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU())
        stages = []
        cin = channels[0]
        for n, cout in zip(repeats, channels[1:4]):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[4], 1, bias=False), nn.BatchNorm2d(channels[4]), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)  # torchvision: x.mean([2, 3])
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x):
        x = self.pool(self.conv5(self.stages(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# DenseNet-BC
# ---------------------------------------------------------------------------
# Huang et al. 2017, the CIFAR DenseNet-BC (as the authors' CIFAR code and
# torchvision's _DenseLayer / _Transition; CIFAR is the paper's own setting,
# so nothing is adapted): growth k = 12, depth L = 100 -> (L - 4) / 6 = 16
# bottleneck layers per dense block, 3 dense blocks, compression 0.5.
#   first conv: 3x3, 2k = 24 channels, stride 1 (no BN/ReLU/pool after it);
#   bottleneck layer: BN -> ReLU -> conv1x1(4k = 48) -> BN -> ReLU -> conv3x3(k),
#     output concat(input, new k channels);
#   transition: BN -> ReLU -> conv1x1(floor(0.5 C)) -> avgpool 2x2 stride 2;
#   end: BN -> ReLU -> global average pool (8x8) -> Linear(C, classes).
# No conv biases; no dropout (the paper uses none with augmentation).
# Channels: 24 -> 216 -> 108 | 108 -> 300 -> 150 | 150 -> 342.


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat((x, self.body(x)), dim=1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))

    def forward(self, x):
        return self.body(x)


class DenseNetBC(nn.Module):
    def __init__(self, num_classes=10, depth=100, growth=12, compression=0.5):
        super().__init__()
        n = (depth - 4) // 6
        assert (depth - 4) % 6 == 0
        c = 2 * growth
        self.stem = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        parts = []
        for b in range(3):
            for _ in range(n):
                parts.append(DenseLayer(c, growth))
                c += growth
            if b < 2:
                cout = int(math.floor(c * compression))
                parts.append(Transition(c, cout))
                c = cout
        self.features = nn.Sequential(*parts)
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.final(self.features(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# The networks counts.py reports, by the model name the qatc spec will have.
MODELS = {
    "se_resnet20": lambda: SEResNet20(num_classes=10),
    "mobilenetv3_small": lambda: MobileNetV3Small(num_classes=10),
    "shufflenetv2": lambda: ShuffleNetV2(num_classes=10),
    "densenet": lambda: DenseNetBC(num_classes=10, depth=100, growth=12),
}
