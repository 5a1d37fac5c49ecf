"""What the curvature modules share: the schema's defaults, Rademacher probes, the eval-mode gate
as a decorator, and casting inputs to the model's parameter dtype and device (gradscope.parameters)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from gradscope import config
from gradscope.operators import measuring
from gradscope.parameters import param_kind

# The one set of defaults: every keyword default of the algorithms and measures that mirrors a
# `curvature` setting is read from here, i.e. from the schema.
DEFAULTS = config.section_defaults("curvature")

# Per-example gradients hold a parameter vector per example: the per-example measures (traces,
# sensitivity) take at most this many examples at once, fewer where batch_size says so.
PER_EXAMPLE_CHUNK = 256


def per_example_chunk(batch_size: int) -> int:
    """Examples per pass of a per-example measure: min(batch_size, PER_EXAMPLE_CHUNK)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return min(batch_size, PER_EXAMPLE_CHUNK)


def rademacher(n: int, gen: torch.Generator, dtype, device) -> torch.Tensor:
    """(n,) of independent +-1 from `gen` (a CPU generator: the same probes on any device)."""
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)


def measured(fn):
    """Run `fn(model, ..., eval=...)` inside `gradscope.operators.measuring(model, eval)`: for
    measures whose whole body runs the model."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with measuring(model, kwargs.get("eval", False), fn.__name__):
            return fn(model, *args, **kwargs)

    return wrapper


def as_model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device, float inputs in its dtype (token ids stay integer)."""
    dtype, device = param_kind(model)
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x

