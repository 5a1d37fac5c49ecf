"""The model's parameters in the shapes the measures take them: the trainable ones as a named list
(the coordinates of every operator, eigenvector and update), their count, dtype and device, as a
detached dict (for torch.func.functional_call) and as one flat vector.

"Trainable" is requires_grad, in named_parameters order; a model without any is an error.
"""

from __future__ import annotations

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter with requires_grad, in named_parameters order: the
    coordinates of every operator, eigenvector and update here."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters (none has requires_grad=True)")
    return named


def n_trainable(model: nn.Module) -> int:
    """The length of a parameter-space vector here (an eigenvector, an update): trainable entries only."""
    return sum(p.numel() for _, p in trainable_parameters(model))


def param_kind(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the first trainable parameter."""
    p = trainable_parameters(model)[0][1]
    return p.dtype, p.device


def detached_params(model: nn.Module, trainable: bool = False, grad_for=()) -> dict[str, torch.Tensor]:
    """Detached parameters for functional_call: all of them (a forward with no parameter graph),
    or the trainable ones only (what per-example gradients are taken w.r.t.; frozen ones stay the
    module's). Those named in `grad_for` require grad, on the copies: no gradient ever reaches `.grad`."""
    named = trainable_parameters(model) if trainable else model.named_parameters()
    keep = set(grad_for)
    return {name: p.detach().requires_grad_(name in keep) if keep else p.detach() for name, p in named}


def flat_params(model: nn.Module) -> torch.Tensor:
    """The trainable parameters, detached, as one vector (n_trainable,) in named_parameters order."""
    return torch.cat([p.detach().reshape(-1) for _, p in trainable_parameters(model)])
