"""Spectral density of a curvature operator by stochastic Lanczos quadrature (Ubaru, Chen & Saad
2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature"; Ghorbani, Krishnan & Xiao
2019, "An investigation into neural net optimization via Hessian eigenvalue density")."""

from __future__ import annotations

import math

import numpy as np
import torch

from gradscope.curvature._common import DEFAULTS, rademacher
from gradscope.curvature.lanczos import lanczos_tridiagonal, tridiagonal
from gradscope.operators import CurvatureOperator


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_j w_j N(t; theta_j, sigma^2) on the grid: a density that integrates to sum(w)."""
    z = (np.asarray(grid)[:, None] - nodes[None, :]) / sigma  # (grid, nodes)
    return (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ weights


def slq_density(op: CurvatureOperator, *, iters: int = DEFAULTS["density_iters"], runs: int = 1, seed: int = 0,
                start: torch.Tensor | None = None, grid: np.ndarray | None = None, sigma: float = 0.01) -> dict:
    """Spectral density of any curvature operator by stochastic Lanczos quadrature, Gaussian-smoothed:
    dict(grid, density, nodes, weights, sigma, steps).

    Each run starts Lanczos (`iters` steps, the schema's curvature.density_iters by default) from
    a Rademacher vector v (or `start`, with runs=1); the nodes are the Ritz values theta_j
    (eigenvalues of T) and the weights tau_j^2 / runs, tau_j the first component of T's j-th
    eigenvector, 1-D float64 arrays over all runs, weights summing to 1. Then sum_j tau_j^2
    theta_j^m = v^T A^m v / |v|^2 exactly for m <= 2 * steps - 1, and E over Rademacher v of
    that is tr(A^m) / n: the quadrature approximates the spectral measure (1/n) sum_i delta(lambda_i).

    `sigma` on input is the Gaussian width as a fraction of the range of the Ritz values (the
    absolute width used is returned as `sigma`); the default grid is 1000 points spanning the
    Ritz values +- 5 widths. The density integrates to 1: it estimates (1/n) sum_i delta(t -
    lambda_i), smoothed. `steps`: matrix-vector products used (runs * min(iters, n), fewer on breakdown).
    """
    if runs < 1 or (start is not None and runs != 1):
        raise ValueError(f"need runs >= 1, and runs == 1 with a start vector; got runs={runs}")
    gen = torch.Generator().manual_seed(seed)
    parts, masses = [], []
    for _ in range(runs):
        v = rademacher(op.n, gen, op.dtype, op.device) if start is None else start.to(dtype=op.dtype, device=op.device)
        alphas, betas, _, _ = lanczos_tridiagonal(op, v, iters=iters)
        theta, S = np.linalg.eigh(tridiagonal(alphas, betas))
        parts.append(theta)
        masses.append(S[0] ** 2 / runs)
    nodes, weights = np.concatenate(parts), np.concatenate(masses)
    lo, hi = float(nodes.min()), float(nodes.max())
    width = sigma * ((hi - lo) or max(abs(hi), 1.0))  # sigma is relative to the Ritz-value range
    if grid is None:
        grid = np.linspace(lo - 5 * width, hi + 5 * width, 1000)
    grid = np.asarray(grid, dtype=np.float64)
    return {"grid": grid, "density": smoothed_density(nodes, weights, grid, width), "nodes": nodes,
            "weights": weights, "sigma": width, "steps": len(nodes)}  # one Ritz value per Lanczos step
