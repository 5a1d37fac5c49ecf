"""Bring your own model: an example for gradscope's `python` model kind.

In a config:

    model:
      kind: python
      factory: "user_code.my_model:small_convnet"   # package.module:function, from the working directory
      kwargs: {width: 16, blocks: 2}

gradscope calls factory(input_shape=..., n_classes=..., **kwargs) (token inputs also get
vocab=...) and trains what it returns, a torch.nn.Module mapping (batch, *input_shape) to
(batch, n_classes) logits. Seed nothing here: training seeds torch before building the model.
Checkpoints record the factory and kwargs and rebuild the model by calling it again, so the
function must build the same architecture from the same arguments. Parameters frozen here
(requires_grad=False) are left out of the per-example gradients and of the curvature.
"""

from __future__ import annotations

import math

from torch import nn


def small_convnet(input_shape, n_classes: int, width: int = 16, blocks: int = 2, groups: int = 4,
                  freeze_stem: bool = False) -> nn.Module:
    """[conv 3x3 -> GroupNorm -> ReLU] x blocks (channels `width`), global average pool, linear read-out.

    input_shape: (channels, length) for 1-D signals (MNIST-1D: (1, 40)), (channels, height, width)
    for images, or (side * side,) for a flat square image. freeze_stem: keep the first conv at
    its random init (random features), to see frozen parameters left out of the measures.
    """
    shape = tuple(input_shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"small_convnet reads a flat input as a square image; {shape[0]} is not a square")
        shape = (1, side, side)
    if len(shape) not in (2, 3):
        raise ValueError(f"small_convnet needs (channels, length) or (channels, height, width), got {shape}")
    conv, pool = (nn.Conv1d, nn.AdaptiveAvgPool1d) if len(shape) == 2 else (nn.Conv2d, nn.AdaptiveAvgPool2d)
    layers: list[nn.Module] = [nn.Flatten(), nn.Unflatten(1, shape)]  # (batch, *input_shape) -> (batch, *shape)
    in_ch = shape[0]
    for _ in range(blocks):
        layers += [conv(in_ch, width, kernel_size=3, padding=1), nn.GroupNorm(groups, width), nn.ReLU()]
        in_ch = width
    layers += [pool(1), nn.Flatten(), nn.Linear(width, n_classes)]
    model = nn.Sequential(*layers)
    if freeze_stem:
        model[2].requires_grad_(False)
    return model
