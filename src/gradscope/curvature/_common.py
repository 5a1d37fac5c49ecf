"""What the curvature modules share: the schema's defaults, Rademacher probes, the eval-mode gate
as a decorator, and the model's parameter dtype and device (inputs are cast to them)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from gradscope import config
from gradscope.operators import measuring, trainable_parameters

# The one set of defaults: every keyword default of the algorithms and measures that mirrors a
# `curvature` setting is read from here, i.e. from the schema.
DEFAULTS = config.section_defaults("curvature")


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


def param_kind(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the first trainable parameter."""
    p = trainable_parameters(model)[0][1]
    return p.dtype, p.device


def as_model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device, float inputs in its dtype (token ids stay integer)."""
    dtype, device = param_kind(model)
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x


def detached_params(model: nn.Module, trainable: bool = False) -> dict[str, torch.Tensor]:
    """Detached parameters for functional_call: all of them (a forward with no parameter graph),
    or the trainable ones only (what per-example gradients are taken w.r.t.; frozen ones stay the module's)."""
    named = trainable_parameters(model) if trainable else model.named_parameters()
    return {name: p.detach() for name, p in named}
