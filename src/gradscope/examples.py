"""Per-example statistics: losses, margins and gradients of each training example.

The norm of each example's gradient (Goodfellow 2015, "Efficient per-example gradient
computations") and its alignment with the mean gradient tell which examples drive an update
and which pull against it (the opposing signals of Rosenfeld & Risteski 2023). Full
per-example gradients are too big to keep, so each is also stored as a Johnson-Lindenstrauss
sketch: a fixed Gaussian projection to k dimensions scaled by 1/sqrt(k), as in TRAK (Park et
al. 2023). It preserves inner products in expectation; for unit vectors with cosine rho the
projected inner product has standard deviation sqrt((1 + rho^2) / k).

Everything here is pure computation: a model and tensors in, numpy arrays out. The model is
never mutated: gradients come from `torch.func` on detached copies of its parameters, so no
`.grad` is written.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gradscope.losses import per_example_loss

# Multiplier combining (seed, parameter index) into one generator seed; larger than any
# realistic number of parameter tensors, so distinct pairs never share a stream.
SEED_STRIDE = 1_000_003


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def _loss_fn(model: nn.Module, loss: str):
    """Mean loss of a batch as a function of the parameters; aux is the logits."""

    def fn(params: dict, x: torch.Tensor, y: torch.Tensor):
        logits = functional_call(model, params, (x,))  # (b, classes)
        return per_example_loss(logits, y, loss).mean(), logits

    return fn


def _flatten(grads: dict[str, torch.Tensor], names: list[str], batch: int) -> torch.Tensor:
    return torch.cat([grads[name].reshape(batch, -1) for name in names], dim=1)  # (b, n_params)


def mean_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy", batch_size: int = 1024
) -> torch.Tensor:
    """Flat gradient (n_params,) of the mean loss over all examples, in named_parameters order."""
    n = len(inputs)
    if n == 0:
        raise ValueError("mean_gradient needs at least one example")
    params = _params(model)
    fn = _loss_fn(model, loss)
    total = None
    for start in range(0, n, batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        g, _ = grad(fn, has_aux=True)(params, x, y)
        # Weight each chunk's mean by its share so the sum is the mean over all n examples.
        flat = _flatten(g, list(params), 1).squeeze(0) * (len(x) / n)
        total = flat if total is None else total + flat
    return total


def random_projection(model: nn.Module, proj_dim: int, seed: int = 0) -> torch.Tensor:
    """Projection matrix R (n_params, proj_dim) such that a flat gradient g sketches to g @ R.

    Block i (rows of parameter tensor i in named_parameters order) is
    `torch.randn(numel_i, proj_dim, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + i))
    / sqrt(proj_dim)`, drawn in float32 on the CPU and then cast to the parameter's dtype and
    device. Seeding per tensor makes R independent of batch size, call order and device.
    """
    blocks = []
    for i, p in enumerate(model.parameters()):
        gen = torch.Generator().manual_seed(seed * SEED_STRIDE + i)
        block = torch.randn(p.numel(), proj_dim, generator=gen) / math.sqrt(proj_dim)
        blocks.append(block.to(dtype=p.dtype, device=p.device))
    return torch.cat(blocks, dim=0)


def chunk_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    mean_grad: torch.Tensor,
    proj: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Loss, logits and gradient statistics of one chunk of examples.

    This is the only place that touches per-example gradients; a faster engine replaces it.
    Returns loss (b,), logits (b, classes), grad_norm (b,), grad_dot_mean (b,), grad_proj (b, k).
    """
    params = _params(model)
    fn = _loss_fn(model, loss)
    with torch.no_grad():
        _, logits = fn(params, x, y)  # (b, classes)
        losses = per_example_loss(logits, y, loss)

    def one(params, xi, yi):
        # vmap strips the batch dimension; the model and loss expect one.
        return fn(params, xi.unsqueeze(0), yi.unsqueeze(0))[0]

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = _flatten(g, list(params), len(x))  # (b, n_params): the memory bound of this engine
    return {
        "loss": losses,
        "logits": logits,
        "grad_norm": flat.norm(dim=1),
        "grad_dot_mean": flat @ mean_grad,  # (b, n_params) @ (n_params,) -> (b,)
        "grad_proj": flat @ proj,  # (b, n_params) @ (n_params, k) -> (b, k)
    }


def per_example_stats(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    proj_dim: int = 32,
    seed: int = 0,
    batch_size: int = 256,
    mean_grad: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of every example, in input order.

    Keys: loss, pred, margin (true logit minus the largest other), p_true (softmax probability
    of the true class), correct, grad_norm (exact L2 norm of the example's gradient),
    grad_dot_mean and grad_cos_mean (against `mean_grad`, by default the mean gradient of the
    examples given), and grad_proj (float32 (n, proj_dim), see `random_projection`). The cosine
    is defined as 0 when either gradient has zero norm.
    """
    if len(inputs) == 0:
        raise ValueError("per_example_stats needs at least one example")
    if mean_grad is None:
        mean_grad = mean_gradient(model, inputs, targets, loss=loss, batch_size=batch_size)
    p0 = next(model.parameters())
    mean_grad = mean_grad.detach().to(dtype=p0.dtype, device=p0.device)
    n_params = sum(p.numel() for p in model.parameters())
    if mean_grad.shape != (n_params,):
        raise ValueError(f"mean_grad has shape {tuple(mean_grad.shape)}, expected ({n_params},)")
    proj = random_projection(model, proj_dim, seed)  # built once per call, reused by every chunk

    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(p0.device)
        y = targets[start : start + batch_size].to(p0.device)
        parts.append(chunk_stats(model, x, y, loss=loss, mean_grad=mean_grad, proj=proj))
    out = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    y = targets.to(p0.device)

    logits = out.pop("logits")  # (n, classes)
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    pred = logits.argmax(dim=1)
    denom = out["grad_norm"] * mean_grad.norm()
    cos = torch.where(denom > 0, out["grad_dot_mean"] / denom, 0.0)

    result = {
        "loss": out["loss"],
        "pred": pred,
        "margin": true_logit - others.max(dim=1).values,
        "p_true": logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1),
        "correct": pred == y,
        "grad_norm": out["grad_norm"],
        "grad_dot_mean": out["grad_dot_mean"],
        "grad_cos_mean": cos,
        "grad_proj": out["grad_proj"].to(torch.float32),
    }
    return {key: value.detach().cpu().numpy() for key, value in result.items()}
