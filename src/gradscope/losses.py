"""Per-example losses shared by training, the per-example engine and curvature.

Every function returns one loss per example (no reduction) so callers choose how to reduce.
"mse" is the edge-of-stability setting of Cohen et al. 2021: 0.5 * ||f(x) - onehot(y)||^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    onehot = one_hot(targets, logits.shape[-1], logits.dtype)
    return 0.5 * ((logits - onehot) ** 2).sum(dim=-1)


def one_hot(t: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """One-hot codes by comparison, (...,) -> (..., n): unlike F.one_hot it works under torch.func.vmap."""
    return (t.unsqueeze(-1) == torch.arange(n, device=t.device)).to(dtype)


LOSSES = {"cross_entropy": _cross_entropy, "mse": _mse}


def per_example_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """Loss of each example, shape (batch,), for logits (batch, classes) and integer targets."""
    try:
        fn = LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(sorted(LOSSES))}") from None
    return fn(logits, targets)
