"""The Hessian's measures on a model: top eigenvalues, per-layer sharpness, trace, spectral density
and the sharpness along an update, each the algorithm of its module on a
`gradscope.operators.HessianOperator` (or on one of its diagonal blocks).

Update sharpness u'Hu/|u|^2 along the optimizer's actual update u: Thilak et al. 2022, "The
slingshot mechanism: an empirical study of adaptive optimizers and the grokking phenomenon"
(the update itself: `gradscope.curvature.replay`). Per-layer sharpness runs Lanczos on one
diagonal block of the Hessian (one parameter tensor). eval: see `gradscope.curvature`. batch_size:
most examples per forward and backward (the schema's curvature.batch_size; None: all at once): the
operator sums its products over micro-batches (`gradscope.operators`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gradscope.curvature._common import DEFAULTS
from gradscope.curvature.hutchinson import hutchinson_trace
from gradscope.curvature.lanczos import lanczos_top
from gradscope.curvature.slq import slq_density
from gradscope.operators import CurvatureOperator, HessianOperator
from gradscope.parameters import n_trainable, param_kind


def top_eigenvalues(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, k: int = DEFAULTS["top_k"],
                    loss: str = "cross_entropy", tol: float | None = DEFAULTS["lanczos_tol"],
                    iters: int = DEFAULTS["lanczos_iters"], seed: int = 0, warm=None, return_eigenvectors: bool = False,
                    eval: bool = False, batch_size: int | None = DEFAULTS["batch_size"]):
    """Top-k Hessian eigenvalues, largest algebraic first, as float64 np.ndarray (k,): `lanczos_top`
    on the HessianOperator (defaults: the schema's curvature.top_k, lanczos_tol, lanczos_iters).

    Lanczos stops once each of the k has Ritz residual <= tol * |value| (`converged`: an
    eigenvalue lies within tol, relative, of it), or after `iters` HVPs; tol=None (or 0) runs all
    `iters`. `warm`: vectors ((k', n_params), e.g. the eigenvectors at the previous checkpoint)
    to start from (see `start_vector`); along a training run they save HVPs
    (`bench/bench_curvature.py`).
    With return_eigenvectors, returns (eigenvalues, eigenvectors) with unit eigenvectors (k, n_params),
    n_params the trainable parameters.
    Fewer than k come back only if Lanczos breaks down first (H has fewer distinct eigenvalues
    visible from the start vector than k).
    """
    top = lanczos_top(_operator(model, inputs, targets, loss, eval, batch_size), k=k, iters=iters, tol=tol,
                      seed=seed, warm=warm, return_eigenvectors=return_eigenvectors)
    return (top.eigenvalues, top.eigenvectors) if return_eigenvectors else top.eigenvalues


def _operator(model, inputs, targets, loss, eval, batch_size) -> HessianOperator:
    return HessianOperator(model, inputs, targets, loss=loss, eval=eval, batch_size=batch_size)


LAYER_ITERS = 20  # Lanczos steps per diagonal block (per_layer): a block's top eigenvalue converges fast


def layer_top(hessian: HessianOperator, *, iters: int = LAYER_ITERS, seed: int = 0) -> tuple[dict[str, float], int]:
    """Top eigenvalue of each diagonal block with at least 2 entries, by name, and the block products used."""
    out, products = {}, 0
    for i, (name, numel) in enumerate(zip(hessian.leaves.names, hessian.leaves.numels)):
        if numel >= 2:
            top = lanczos_top(hessian.block(i), k=1, iters=iters, tol=None, seed=seed)
            out[name], products = float(top.eigenvalues[0]), products + top.steps
    return out, products


def layer_top_eigenvalues(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                          loss: str = "cross_entropy", iters: int = LAYER_ITERS, seed: int = 0,
                          eval: bool = False, batch_size: int | None = DEFAULTS["batch_size"]) -> dict[str, float]:
    """Top (largest algebraic) eigenvalue of each trainable parameter tensor's diagonal Hessian block H_ii, by name.

    Lanczos (`min(iters, numel)` steps) on block HVPs, each one backward pass restricted to that
    tensor. Tensors with fewer than 2 entries are skipped.
    """
    return layer_top(_operator(model, inputs, targets, loss, eval, batch_size), iters=iters, seed=seed)[0]


def spectral_density(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                     iters: int = DEFAULTS["density_iters"], runs: int = 1, seed: int = 0,
                     grid: np.ndarray | None = None, sigma: float = 0.01, eval: bool = False,
                     batch_size: int | None = DEFAULTS["batch_size"]) -> dict:
    """Hessian eigenvalue density by stochastic Lanczos quadrature: `slq_density` on the HessianOperator."""
    return slq_density(_operator(model, inputs, targets, loss, eval, batch_size), iters=iters, runs=runs,
                       seed=seed, grid=grid, sigma=sigma)


def hessian_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                  tol: float = DEFAULTS["trace_tol"], min_samples: int | None = None,
                  max_samples: int = DEFAULTS["trace_max_samples"], seed: int = 0, eval: bool = False,
                  batch_size: int | None = DEFAULTS["batch_size"]) -> dict:
    """Hutchinson estimate of the Hessian trace: `hutchinson_trace` on the HessianOperator,
    dict(trace, stderr, n_samples); tol is relative (defaults: the schema's curvature.trace_tol and
    trace_max_samples)."""
    return hutchinson_trace(_operator(model, inputs, targets, loss, eval, batch_size), tol=tol,
                            min_samples=min_samples, max_samples=max_samples, seed=seed)


def rayleigh(op: CurvatureOperator, u: torch.Tensor) -> float:
    """u^T A u / |u|^2 (one product); NaN for u = 0."""
    norm2 = float(u @ u)
    return float(u @ op.matvec(u)) / norm2 if norm2 > 0 else math.nan


def flat_update(model: nn.Module, update) -> torch.Tensor:
    """`update` as a flat vector (n_trainable,) in the model's dtype and device; a wrong length raises."""
    dtype, device = param_kind(model)
    u = torch.as_tensor(update).detach().to(dtype=dtype, device=device).reshape(-1)
    n = n_trainable(model)
    if u.shape != (n,):
        raise ValueError(f"update has {u.numel()} entries, the model has {n} trainable parameters")
    return u


def update_sharpness(model: nn.Module, update, inputs: torch.Tensor, targets: torch.Tensor, *,
                     loss: str = "cross_entropy", eval: bool = False,
                     batch_size: int | None = DEFAULTS["batch_size"]) -> float:
    """u^T H u / |u|^2 along a flat update u (trainable parameters, named_parameters order): the
    curvature the step sees.

    NaN for u = 0. One HVP. See `gradscope.curvature.replay.optimizer_update` for the optimizer's
    actual update.
    """
    u = flat_update(model, update)
    return rayleigh(_operator(model, inputs, targets, loss, eval, batch_size), u)
