"""The convolutional model kinds (`model.kind`: cnn, resnet, vgg): images (channels, height, width)
with 2-D layers, signals (channels, length) with 1-D ones, flat square vectors as one-channel
images. `gradscope.models.build_model` builds them from a config.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradscope.activations import ACTIVATIONS, activation_layer
from gradscope.model_input import InputSpec

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_GLOBAL_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
NORMS = ("batch", "group", "none")


def conv_input_shape(spec: InputSpec, kind: str) -> tuple[int, ...]:
    """(channels, *spatial) a convolutional model reshapes its dense input to: spec.shape, or
    (1, side, side) for a flat (side * side,) vector."""
    if spec.kind != "dense":
        raise ValueError(f"the {kind} needs dense inputs (images or signals), got input kind {spec.kind!r}")
    shape = spec.shape
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"the {kind} reads a flat input as a square image (dim = side^2), but dim is {shape[0]}; "
                             "give the data's shape as [channels, length] or [channels, height, width]")
        return (1, side, side)
    if len(shape) in (2, 3):
        return shape
    raise ValueError(f"the {kind} needs inputs of shape [channels, length] or [channels, height, width], "
                     f"got {list(shape)}")


def _norm_layer(norm: str, groups: int, nd: int, channels: int) -> nn.Module:
    if norm == "batch":
        return _BATCH_NORM[nd](channels)
    if norm == "group":
        if channels % groups:
            raise ValueError(f"norm 'group': groups={groups} does not divide {channels} channels; "
                             "choose groups dividing every stage's channels")
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


class CNN(nn.Module):
    """A small CNN: [Conv 3x3 (padding 1) -> activation -> MaxPool 2] per entry of `channels`,
    then a linear read-out of the flattened feature map.

    Conv2d on images (channels, height, width) and on flat square vectors (side * side, read
    as one channel); Conv1d on signals (channels, length). The per-example engine handles
    the convolutions by unfolding.
    """

    def __init__(self, spec: InputSpec, channels: list[int], activation: str):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "cnn")
        nd = len(self.input_shape) - 1
        layers: list[nn.Module] = []
        in_ch, size = self.input_shape[0], self.input_shape[1:]
        for ch in channels:
            layers += [_CONV[nd](in_ch, ch, kernel_size=3, padding=1), ACTIVATIONS[activation](), _MAX_POOL[nd](2)]
            in_ch, size = ch, tuple(s // 2 for s in size)
        if min(size) < 1:
            raise ValueError(f"{len(channels)} pooling stages shrink a {'x'.join(map(str, self.input_shape[1:]))} "
                             "input to nothing")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * math.prod(size), spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *self.input_shape))  # (b, C, *spatial)
        return self.head(h.flatten(1))


class BasicBlock(nn.Module):
    """The ResNet-18 block: conv 3x3 (stride) -> norm -> act -> conv 3x3 -> norm, plus the
    shortcut (identity, or conv 1x1 (stride) -> norm where the shape changes), then act."""

    def __init__(self, nd: int, in_ch: int, out_ch: int, stride: int, norm: str, groups: int, activation: str):
        super().__init__()
        bias = norm == "none"  # a norm right after a conv makes its bias redundant
        self.conv1 = _CONV[nd](in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm_layer(norm, groups, nd, out_ch)
        self.act1 = activation_layer(activation)
        self.conv2 = _CONV[nd](out_ch, out_ch, kernel_size=3, padding=1, bias=bias)
        self.norm2 = _norm_layer(norm, groups, nd, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(_CONV[nd](in_ch, out_ch, kernel_size=1, stride=stride, bias=bias),
                                          _norm_layer(norm, groups, nd, out_ch))
        self.act2 = activation_layer(activation)  # its own module (not act1 twice), so hooks see each call once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 for small inputs (see the module docstring): a 3x3 stem, stages of BasicBlocks
    (`blocks[i]` of them with base_width * 2^i channels, the first of each stage after the
    first with stride 2), a global average pool and a linear read-out. Weights use torch's
    default init."""

    def __init__(self, spec: InputSpec, base_width: int = 16, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 norm: str = "batch", groups: int = 8, activation: str = "relu"):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "resnet")
        nd = len(self.input_shape) - 1
        self.stem = nn.Sequential(
            _CONV[nd](self.input_shape[0], base_width, kernel_size=3, padding=1, bias=norm == "none"),
            _norm_layer(norm, groups, nd, base_width), activation_layer(activation))
        stages, in_ch = [], base_width
        for i, n in enumerate(blocks):
            out_ch = base_width * 2**i
            stage = []
            for j in range(n):
                stage.append(BasicBlock(nd, in_ch, out_ch, 2 if i > 0 and j == 0 else 1, norm, groups, activation))
                in_ch = out_ch
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = _GLOBAL_POOL[nd](1)
        self.head = nn.Linear(in_ch, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x.reshape(-1, *self.input_shape)))  # (b, C, *spatial)
        return self.head(self.pool(h).flatten(1))


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # configuration A; "M": max-pool


class VGG(nn.Module):
    """VGG-11 (see the module docstring): [conv 3x3 -> norm -> act] for each number of
    VGG11 scaled by base_width / 64, a max-pool 2 (ceil_mode) for each "M", a global average
    pool and a linear read-out. Weights use torch's default init."""

    def __init__(self, spec: InputSpec, base_width: int = 16, norm: str = "batch", groups: int = 8,
                 activation: str = "relu"):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "vgg")
        nd = len(self.input_shape) - 1
        layers: list[nn.Module] = []
        in_ch = self.input_shape[0]
        for c in VGG11:
            if c == "M":
                layers.append(_MAX_POOL[nd](2, ceil_mode=True))  # ceil: a 1-wide map stays 1 wide
                continue
            out_ch = max(1, c * base_width // 64)
            layers += [_CONV[nd](in_ch, out_ch, kernel_size=3, padding=1, bias=norm == "none"),
                       _norm_layer(norm, groups, nd, out_ch), activation_layer(activation)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = _GLOBAL_POOL[nd](1)
        self.head = nn.Linear(in_ch, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *self.input_shape))  # (b, C, *spatial)
        return self.head(self.pool(h).flatten(1))
