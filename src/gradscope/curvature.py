"""Curvature of the training loss: algorithms on curvature operators (top eigenvalues, spectral
density, trace), the Hessian, Gauss-Newton and Fisher measures built on them, sensitivity to the
input and sharpness along the optimizer's update.

The matrices themselves (Hessian, generalized Gauss-Newton, empirical and true Fisher) are the
operators of `gradscope.operators`; the algorithms here (`lanczos_top`, `slq_density`,
`hutchinson`) take any of them, and the model-level functions (`top_eigenvalues`,
`hessian_trace`, `spectral_density`, ...) build the Hessian's and call them.

Every Hessian here is that of the MEAN loss over the given examples w.r.t. the trainable
parameters (requires_grad=True; frozen ones are constants and cost nothing), flattened in
`model.named_parameters()` order, reached through Hessian-vector products (HVPs); the Hessian
itself is never formed. Vectors of parameter length (eigenvectors, updates, `n_params`) count
trainable parameters only. All functions are pure computation: the model is never mutated (no
`.grad` is written, requires_grad is untouched, buffers are never written).

Curvature is defined on the model in eval mode (BatchNorm on its running statistics, no
dropout): every measure goes through `gradscope.modes.eval_mode`, so a model with such layers
left in training mode is an error naming them (in training mode BatchNorm would couple the
examples and overwrite its running statistics), unless the call passes eval=True, which switches
to eval mode for the call and restores the flags after. The forward passes run under
`sdpa_kernel(SDPBackend.MATH)`: PyTorch's fused attention kernels (the CPU flash kernel among
them) have no double backward, so HVPs through nn.MultiheadAttention / nn.TransformerEncoder
need the plain-math attention.

- Top eigenvalues: Lanczos with full reorthogonalization (Lanczos 1950; Golub & Van Loan,
  Matrix Computations, ch. 10). Sharpness as tracked by Cohen et al. 2021, "Gradient Descent on
  Neural Networks Typically Occurs at the Edge of Stability" (locuslab/edge-of-stability runs
  scipy's eigsh, i.e. implicitly restarted Lanczos, on HVPs). Per-layer sharpness runs the same
  Lanczos on one diagonal block of the Hessian (one parameter tensor).
- Trace: Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix for
  Laplacian smoothing splines", with Rademacher probes, as in PyHessian (Yao et al. 2020,
  "PyHessian: Neural Networks Through the Lens of the Hessian").
- Spectral density: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017, "Fast estimation of
  tr(f(A)) via stochastic Lanczos quadrature"; Ghorbani, Krishnan & Xiao 2019, "An investigation
  into neural net optimization via Hessian eigenvalue density").
- Empirical Fisher and generalized Gauss-Newton (Schraudolph 2002; Martens 2020, "New insights
  and perspectives on the natural gradient method"; Kunstner et al. 2019, "Limitations of the
  empirical Fisher approximation"). The GGN trace is estimated with labels sampled from the
  model, as K-FAC does (Martens & Grosse 2015).
- Input sensitivity: the input-Jacobian norm of Novak et al. 2018, "Sensitivity and
  generalization in neural networks", and the trace of the loss Hessian w.r.t. the input.
- Update sharpness u'Hu/|u|^2 along the optimizer's actual update u (Thilak et al. 2022, "The
  slingshot mechanism: an empirical study of adaptive optimizers and the grokking phenomenon").
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gradscope import config
from gradscope.losses import per_example_loss
from gradscope.operators import (CurvatureOperator, GGNOperator, HessianOperator, measuring, n_trainable,
                                 trainable_parameters)
from gradscope.optim import build_optimizer, lr_at

MatVec = Callable[[torch.Tensor], torch.Tensor]


_measuring = measuring


def _measured(fn):
    """Run `fn(model, ..., eval=...)` inside `_measuring(model, eval)`: for measures whose whole body runs the model."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with _measuring(model, kwargs.get("eval", False), fn.__name__):
            return fn(model, *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


def hvp_fn(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy", eval: bool = False
) -> tuple[MatVec, int]:
    """(v -> H v, n_params) for the Hessian H of the mean loss over `inputs` w.r.t. the trainable
    parameters (n_params of them), in the params' dtype, with the model in eval mode (see the
    module docstring; eval=True switches it for the call).

    The model is not mutated: the loss is evaluated on detached (storage-sharing, never written)
    leaves standing in for the parameters, so no `.grad` is written and requires_grad is untouched.
    """
    # Double backward, not torch.func's jvp(grad(...)) (forward-over-reverse): the gradient
    # graph is built once and each HVP is then a single backward pass through it, whereas
    # jvp(grad) redoes forward + backward per call. Measured on an MLP 100-256-256-10 (ReLU,
    # float32, batch 512, torch 2.13 CPU, 2 threads, mean of 20 calls after warm-up, 3 runs):
    # 6.4-8.1 ms vs 14.5-17.0 ms per HVP, i.e. double backward ~2.2x faster (6.8-8.4 ms even
    # counting the one-off graph build). The price is holding that graph for the closure's life.
    op = HessianOperator(model, inputs, targets, loss=loss, eval=eval)
    return op.matvec, op.n


# --------------------------------------------------------------------------------------------
# Lanczos, top eigenvalues, spectral density
# --------------------------------------------------------------------------------------------


class LanczosResult(NamedTuple):
    eigenvalues: np.ndarray  # (m,) float64, ascending: Ritz values = eigenvalues of T
    eigenvectors: torch.Tensor | None  # (m, n) Ritz vectors, row i for eigenvalues[i]; if asked
    steps: int  # m = matvecs used (< iters on breakdown)
    residuals: np.ndarray  # (m,) |A y_i - theta_i y_i| for eigenvalues[i] (see ritz_residuals)


def lanczos_tridiagonal(matvec: MatVec, start: torch.Tensor, *, iters: int,
                        stop: Callable[[np.ndarray, np.ndarray, float], bool] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, float]:
    """Lanczos from `start` (any nonzero (n,) vector; normalized here): (alphas (m,), betas (m-1,), Q (m, n),
    beta_m, the norm of the last residual: 0 on breakdown).

    T = tridiag(betas, alphas, betas) = Q A Q^T with Q's rows orthonormal; m = min(iters, n) matvecs,
    fewer on breakdown or when `stop(alphas (j,), betas (j-1,), beta_j)` returns True after step j
    (beta_j, the norm of the next residual, gives the Ritz residuals: see `ritz_residuals`).
    T's leading j x j block is what Lanczos stopped after j steps would give.
    """
    n = start.shape[0]
    m = min(int(iters), n)
    if m < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    dtype = start.dtype
    Q = torch.zeros(m, n, dtype=dtype, device=start.device)  # rows: orthonormal Lanczos vectors
    Q[0] = start / start.norm()
    alphas, betas = [], []
    eps = torch.finfo(dtype).eps
    for j in range(m):
        w = matvec(Q[j])
        alphas.append(float(w @ Q[j]))
        # Full reorthogonalization, two Gram-Schmidt passes ("twice is enough"): plain three-term
        # Lanczos loses orthogonality as Ritz values converge and then reports ghost duplicates.
        basis = Q[: j + 1]  # (j+1, n)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = float(w.norm())
        if j + 1 == m:
            break
        # Breakdown: the Krylov space is invariant, so T's eigenvalues are already exact ones.
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if beta <= 100 * eps * max(scale, 1e-300):
            beta = 0.0
            break
        if stop is not None and stop(np.array(alphas), np.array(betas), beta):
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    return np.array(alphas), np.array(betas), Q[: len(alphas)], beta


def tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The symmetric tridiagonal matrix T (m, m) with diagonal `alphas` (m,) and off-diagonals `betas` (m-1,)."""
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def ritz_residuals(alphas: np.ndarray, betas: np.ndarray, beta: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k Ritz values of T_j = tridiag(betas, alphas, betas), largest first (k,), and their
    residuals |A y_i - theta_i y_i| = beta_j |s_i[-1]| (k,), s_i T_j's eigenvector and beta_j the
    norm of the next Lanczos residual (Golub & Van Loan, Matrix Computations, 10.1.4), known
    without another matvec. For symmetric A some eigenvalue lies within r_i of theta_i.
    """
    theta, S = np.linalg.eigh(tridiagonal(alphas, betas))
    order = np.argsort(theta)[::-1][:k]
    return theta[order], beta * np.abs(S[-1, order])


def converged(k: int, tol: float) -> Callable[[np.ndarray, np.ndarray, float], bool]:
    """A `lanczos_tridiagonal` stop: each of the top-k Ritz values theta_i has residual
    r_i <= tol |theta_i|, so an eigenvalue lies within tol (relative) of it: a bound, not a
    running-mean heuristic. (ARPACK's test. The eigenvalue error is ~r^2 / gap, far smaller; the
    sharper r^2 / gap estimate, with the gap taken from the other Ritz values, was measured here to
    stop too early: 2-3 HVPs, errors up to 3x tol for k = 1 and a missed second eigenvalue for k = 2.)
    Checked once T has at least k Ritz values."""

    def stop(alphas, betas, beta):
        if len(alphas) < k:
            return False
        theta, r = ritz_residuals(alphas, betas, beta, k)
        return bool(np.all(r <= tol * np.abs(theta)))

    return stop


def start_vector(n: int, seed: int, dtype, device, warm: torch.Tensor | np.ndarray | None = None,
                 mix: float = 0.3) -> torch.Tensor:
    """A seeded Gaussian vector (n,), unit norm; with `warm` ((k, n) or (n,) vectors, e.g. the top
    eigenvectors at the previous checkpoint), their normalized sum plus `mix` times the random unit
    vector, so that a direction absent from `warm` (an eigenvalue that has risen past them) is
    still in the Krylov space from the first step."""
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same start vector on any device
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    if warm is not None:
        w = torch.as_tensor(np.asarray(warm), dtype=torch.float64).reshape(-1, n)
        if w.shape[0] == 0:
            raise ValueError("warm start: no vectors given")
        w = (w / w.norm(dim=1, keepdim=True)).sum(0)
        q = w / w.norm() + mix * q
    return q.to(dtype=dtype, device=device)


def lanczos(matvec: MatVec, n: int, *, iters: int, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu", return_eigenvectors: bool = False, k: int = 1,
            tol: float | None = None, warm: torch.Tensor | np.ndarray | None = None) -> LanczosResult:
    """Lanczos on the symmetric operator `matvec` on R^n from `start_vector(n, seed, ..., warm)`:
    at most `min(iters, n)` matvecs, fewer on breakdown, and with `tol` fewer once the top-k Ritz
    values have converged to `tol` relative (see `converged`).

    Returns (eigenvalues of T ascending, Ritz vectors (steps, n) if asked else None, steps,
    residuals of the Ritz pairs).
    """
    q = start_vector(n, seed, dtype, device, warm)
    stop = None if tol is None else converged(k, tol)
    alphas, betas, Q, beta = lanczos_tridiagonal(matvec, q, iters=iters, stop=stop)
    evals, S = np.linalg.eigh(tridiagonal(alphas, betas))  # T = S diag(evals) S^T, float64
    vecs = None
    if return_eigenvectors:
        vecs = torch.from_numpy(S.T).to(dtype=dtype, device=device) @ Q  # (m, m) @ (m, n)
    return LanczosResult(evals, vecs, len(alphas), beta * np.abs(S[-1]))


class TopEigen(NamedTuple):
    eigenvalues: np.ndarray  # (k,) float64, largest algebraic first (fewer than k only on breakdown)
    eigenvectors: np.ndarray | None  # (k, n) float64 unit Ritz vectors, row i for eigenvalues[i]; if asked
    steps: int  # Lanczos steps = matrix-vector products
    residual: float  # max_i r_i / |theta_i|: each value lies within this fraction of an eigenvalue


def lanczos_top(op: CurvatureOperator, *, k: int, iters: int, tol: float | None = None, seed: int = 0,
                warm: torch.Tensor | np.ndarray | None = None, return_eigenvectors: bool = False) -> TopEigen:
    """Top-k eigenvalues of any curvature operator by Lanczos (see `lanczos`): at most min(iters, n)
    products, fewer once each of the k has Ritz residual <= tol * |value| (`converged`: a
    certified bound, not a heuristic) or on breakdown; from `warm` vectors if given (`start_vector`)."""
    iters = min(iters, op.n)
    if not 1 <= k <= iters:
        raise ValueError(f"need 1 <= k <= min(iters, n_params) = {iters}, got k={k}")
    res = lanczos(op.matvec, op.n, iters=iters, seed=seed, dtype=op.dtype, device=op.device,
                  return_eigenvectors=return_eigenvectors, k=k, tol=tol, warm=warm)
    # On breakdown fewer than k Ritz values exist (Lanczos cannot see multiplicities): return those.
    order = np.argsort(res.eigenvalues)[::-1][:k]
    vecs = (res.eigenvectors[torch.from_numpy(order.copy())].double().cpu().numpy()
            if return_eigenvectors else None)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = float(np.max(res.residuals[order] / np.abs(res.eigenvalues[order])))  # inf/nan at a zero value
    return TopEigen(res.eigenvalues[order], vecs, res.steps, bound)


def _param_kind(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = trainable_parameters(model)[0][1]
    return p.dtype, p.device


def top_eigenvalues(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, k: int = 1,
                    loss: str = "cross_entropy", tol: float | None = 1e-3, iters: int = 100, seed: int = 0,
                    warm=None, return_eigenvectors: bool = False, eval: bool = False):
    """Top-k Hessian eigenvalues, largest algebraic first, as float64 np.ndarray (k,).

    Lanczos stops once each of the k has Ritz residual <= tol * |value| (`converged`: an
    eigenvalue lies within tol, relative, of it), or after `iters` HVPs; tol=None runs all
    `iters`. `warm`: vectors ((k', n_params), e.g. the eigenvectors at the previous checkpoint)
    to start from (see `start_vector`); along a training run they save HVPs
    (`bench/bench_curvature.py`).
    With return_eigenvectors, returns (eigenvalues, eigenvectors) with unit eigenvectors (k, n_params),
    n_params the trainable parameters.
    Fewer than k come back only if Lanczos breaks down first (H has fewer distinct eigenvalues
    visible from the start vector than k). eval: see the module docstring.
    """
    top = lanczos_top(HessianOperator(model, inputs, targets, loss=loss, eval=eval), k=k, iters=iters, tol=tol,
                      seed=seed, warm=warm, return_eigenvectors=return_eigenvectors)
    return (top.eigenvalues, top.eigenvectors) if return_eigenvectors else top.eigenvalues


LAYER_ITERS = 20  # Lanczos steps per diagonal block (per_layer): a block's top eigenvalue converges fast


def _layer_top(hessian: HessianOperator, *, iters: int, seed: int) -> tuple[dict[str, float], int]:
    """Top eigenvalue of each diagonal block with at least 2 entries, and the block products used."""
    out, products = {}, 0
    for i, (name, numel) in enumerate(zip(hessian.leaves.names, hessian.leaves.numels)):
        if numel >= 2:
            top = lanczos_top(hessian.block(i), k=1, iters=iters, seed=seed)
            out[name], products = float(top.eigenvalues[0]), products + top.steps
    return out, products


def layer_top_eigenvalues(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                          loss: str = "cross_entropy", iters: int = LAYER_ITERS, seed: int = 0,
                          eval: bool = False) -> dict[str, float]:
    """Top (largest algebraic) eigenvalue of each trainable parameter tensor's diagonal Hessian block H_ii, by name.

    Lanczos (`min(iters, numel)` steps) on block HVPs, each one backward pass restricted to that
    tensor. Tensors with fewer than 2 entries are skipped. eval: see the module docstring.
    """
    return _layer_top(HessianOperator(model, inputs, targets, loss=loss, eval=eval), iters=iters, seed=seed)[0]


def _rademacher(n: int, gen: torch.Generator, dtype, device) -> torch.Tensor:
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)  # (n,) of +-1


def slq(matvec: MatVec, n: int, *, iters: int, runs: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu", start: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: (nodes, weights), 1-D float64 arrays over all runs, weights summing to 1.

    Each run starts Lanczos from a Rademacher vector v (or `start`, with runs=1); the nodes are
    the Ritz values theta_j (eigenvalues of T) and the weights tau_j^2 / runs, tau_j the first
    component of T's j-th eigenvector. Then sum_j tau_j^2 theta_j^m = v^T A^m v / |v|^2 exactly
    for m <= 2 * steps - 1, and E over Rademacher v of that is tr(A^m) / n: the quadrature
    approximates the spectral measure (1/n) sum_i delta(lambda_i).
    """
    if runs < 1 or (start is not None and runs != 1):
        raise ValueError(f"need runs >= 1, and runs == 1 with a start vector; got runs={runs}")
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(runs):
        v = _rademacher(n, gen, dtype, device) if start is None else start.to(dtype=dtype, device=device)
        alphas, betas, _, _ = lanczos_tridiagonal(matvec, v, iters=iters)
        theta, S = np.linalg.eigh(tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(S[0] ** 2 / runs)
    return np.concatenate(nodes), np.concatenate(weights)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_j w_j N(t; theta_j, sigma^2) on the grid: a density that integrates to sum(w)."""
    z = (np.asarray(grid)[:, None] - nodes[None, :]) / sigma  # (grid, nodes)
    return (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ weights


def slq_density(op: CurvatureOperator, *, iters: int, runs: int = 1, seed: int = 0, grid: np.ndarray | None = None,
                sigma: float = 0.01) -> dict:
    """Spectral density of any curvature operator by stochastic Lanczos quadrature (see `slq`),
    Gaussian-smoothed: dict(grid, density, nodes, weights, sigma, steps).

    `sigma` on input is the Gaussian width as a fraction of the range of the Ritz values (the
    absolute width used is returned as `sigma`); the default grid is 1000 points spanning the
    Ritz values +- 5 widths. The density integrates to 1: it estimates (1/n) sum_i delta(t -
    lambda_i), smoothed. `steps`: matrix-vector products used (runs * min(iters, n), fewer on breakdown).
    """
    nodes, weights = slq(op.matvec, op.n, iters=iters, runs=runs, seed=seed, dtype=op.dtype, device=op.device)
    lo, hi = float(nodes.min()), float(nodes.max())
    width = sigma * ((hi - lo) or max(abs(hi), 1.0))  # sigma is relative to the Ritz-value range
    if grid is None:
        grid = np.linspace(lo - 5 * width, hi + 5 * width, 1000)
    grid = np.asarray(grid, dtype=np.float64)
    return {"grid": grid, "density": smoothed_density(nodes, weights, grid, width), "nodes": nodes,
            "weights": weights, "sigma": width, "steps": len(nodes)}  # one Ritz value per Lanczos step


def spectral_density(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                     iters: int = 50, runs: int = 1, seed: int = 0, grid: np.ndarray | None = None,
                     sigma: float = 0.01, eval: bool = False) -> dict:
    """Hessian eigenvalue density by stochastic Lanczos quadrature: `slq_density` on the
    HessianOperator. eval: see the module docstring."""
    return slq_density(HessianOperator(model, inputs, targets, loss=loss, eval=eval), iters=iters, runs=runs,
                       seed=seed, grid=grid, sigma=sigma)


# --------------------------------------------------------------------------------------------
# Hessian trace, update sharpness
# --------------------------------------------------------------------------------------------


def hutchinson_trace(matvec: MatVec, n: int, *, tol: float = 0.01, min_samples: int = 10, max_samples: int = 200,
                     seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> dict:
    """Hutchinson estimate of tr(A) = E[z^T A z] with Rademacher z.

    Stops at the first n >= min_samples with stderr <= tol * |mean| (tol is RELATIVE to the
    estimate; stderr = sample std (ddof=1) / sqrt(n)), else at max_samples. A trace near zero
    therefore usually runs to max_samples.
    """
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    while True:
        z = _rademacher(n, gen, dtype, device)
        samples.append(float(z @ matvec(z)))
        if len(samples) < min_samples:
            continue
        s = np.asarray(samples)
        mean, stderr = float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s)))
        if len(s) >= max_samples or stderr <= tol * abs(mean):
            return {"trace": mean, "stderr": stderr, "n_samples": len(s)}


def hutchinson(op: CurvatureOperator, *, tol: float, max_samples: int, min_samples: int = 10, seed: int = 0) -> dict:
    """Hutchinson trace of any curvature operator (see `hutchinson_trace`): dict(trace, stderr,
    n_samples); min_samples is capped at max_samples."""
    return hutchinson_trace(op.matvec, op.n, tol=tol, min_samples=min(min_samples, max_samples),
                            max_samples=max_samples, seed=seed, dtype=op.dtype, device=op.device)


def hessian_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                  tol: float | None = None, min_samples: int = 10, max_samples: int | None = None, seed: int = 0,
                  eval: bool = False) -> dict:
    """Hutchinson estimate of the Hessian trace: dict(trace, stderr, n_samples); tol is relative.
    tol and max_samples default to the schema's curvature.trace_tol and trace_max_samples.
    eval: see the module docstring."""
    defaults = config.section("curvature")
    tol = defaults["trace_tol"] if tol is None else tol
    max_samples = defaults["trace_max_samples"] if max_samples is None else max_samples
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    return hutchinson(HessianOperator(model, inputs, targets, loss=loss, eval=eval), tol=tol,
                      min_samples=min_samples, max_samples=max_samples, seed=seed)


def _rayleigh(hvp: MatVec, u: torch.Tensor) -> float:
    norm2 = float(u @ u)
    return float(u @ hvp(u)) / norm2 if norm2 > 0 else math.nan


def _flat_update(model: nn.Module, update) -> torch.Tensor:
    dtype, device = _param_kind(model)
    u = torch.as_tensor(update).detach().to(dtype=dtype, device=device).reshape(-1)
    n = n_trainable(model)
    if u.shape != (n,):
        raise ValueError(f"update has {u.numel()} entries, the model has {n} trainable parameters")
    return u


def update_sharpness(model: nn.Module, update, inputs: torch.Tensor, targets: torch.Tensor, *,
                     loss: str = "cross_entropy", eval: bool = False) -> float:
    """u^T H u / |u|^2 along a flat update u (trainable parameters, named_parameters order): the
    curvature the step sees.

    NaN for u = 0. One HVP. See `optimizer_update` for the optimizer's actual update. eval: see
    the module docstring.
    """
    u = _flat_update(model, update)
    return _rayleigh(HessianOperator(model, inputs, targets, loss=loss, eval=eval), u)


def _flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for _, p in trainable_parameters(model)])


def optimizer_update(model: nn.Module, optimizer_state: dict | None, optim_config: dict, inputs: torch.Tensor,
                     targets: torch.Tensor, *, loss: str = "cross_entropy", step: int,
                     lr: float | None = None) -> torch.Tensor:
    """theta_new - theta (flat over the trainable parameters, named_parameters order) for one
    optimizer step taken as training takes it.

    On a deep copy of the model (the model and `optimizer_state` are left untouched): rebuild the
    optimizer (`gradscope.optim.build_optimizer`), load `optimizer_state` (a checkpoint's; None
    for a fresh optimizer), take the gradient of the mean loss over `inputs`, clip it by global
    norm when `optim_config["grad_clip"]` is set and exceeded (as training does), set the lr to
    `lr` (a checkpoint stores the lr of its step, schedules and plateaus included) or else
    `gradscope.optim.lr_at(step, optim_config)`, and step once. With full-batch training and
    `inputs` the whole training set this is the update the run made at `step`; on a subset it is
    the update that subset's gradient would give (momentum and Adam moments from the run).

    Not a curvature measure but a replay of a training step, so it runs in training mode, as
    training does (BatchNorm on batch statistics): on the copy, whose buffers absorb the change.
    """
    clone = copy.deepcopy(model)
    clone.train()  # the mode training steps in
    optimizer = build_optimizer(clone.parameters(), optim_config)
    if optimizer_state is not None:
        # load_state_dict keeps the given tensors (momentum buffers, Adam moments) when dtype and
        # device already match, and step() updates them in place: copy, so the caller's stay put.
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    dtype, device = _param_kind(clone)
    inputs, targets = inputs.to(device), targets.to(device)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    before = _flat_params(clone).clone()
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        per_example_loss(clone(inputs), targets, loss).mean().backward()
    clip = optim_config.get("grad_clip")
    if clip is not None:
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in clone.parameters() if p.grad is not None))
        if norm > clip:
            torch.nn.utils.clip_grad_norm_(clone.parameters(), clip)
    for group in optimizer.param_groups:
        group["lr"] = lr if lr is not None else lr_at(step, optim_config)
    optimizer.step()
    return _flat_params(clone) - before


# --------------------------------------------------------------------------------------------
# Empirical Fisher and Gauss-Newton traces
# --------------------------------------------------------------------------------------------


def _sq_grad_norms(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss: str,
                   batch_size: int) -> np.ndarray:
    """|g_i|^2, g_i the gradient of example i's loss at `labels` w.r.t. the trainable parameters,
    float64 (n,): per-example gradients by vmap(grad), `batch_size` examples at a time."""
    params = _params(model, trainable=True)

    def example_loss(params, xi, yi):
        return per_example_loss(functional_call(model, params, (xi.unsqueeze(0),)), yi.unsqueeze(0), loss)[0]

    per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0))
    parts = []
    for i in range(0, len(inputs), batch_size):
        x = _as_model_input(model, inputs[i : i + batch_size])
        g = per_example_grad(params, x, labels[i : i + batch_size].to(x.device))
        parts.append(sum(t.reshape(len(x), -1).double().pow(2).sum(1) for t in g.values()))
    return torch.cat(parts).cpu().numpy()


def fisher_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                 batch_size: int = 256, eval: bool = False) -> float:
    """Trace of the empirical Fisher F = (1/n) sum_i g_i g_i^T, g_i the gradient of example i's loss
    at its true label: tr F = mean_i |g_i|^2, exact, from per-example gradients (vmap(grad)); the
    matrix itself is `gradscope.operators.EFOperator`. eval: see the module docstring."""
    with _measuring(model, eval, "fisher_trace"):
        return float(_sq_grad_norms(model, inputs, targets, loss, batch_size).mean())


def _params(model: nn.Module, trainable: bool = False) -> dict[str, torch.Tensor]:
    """Detached parameters for functional_call: all of them (a forward with no parameter graph),
    or the trainable ones only (what per-example gradients are taken w.r.t.; frozen ones stay the module's)."""
    named = trainable_parameters(model) if trainable else model.named_parameters()
    return {name: p.detach() for name, p in named}


def _as_model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype, device = _param_kind(model)
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x


@torch.no_grad()
def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    params = _params(model)
    return torch.cat([functional_call(model, params, (_as_model_input(model, inputs[i : i + batch_size]),))
                      for i in range(0, len(inputs), batch_size)])  # (n, classes)


def _vjp_sq_norms(model: nn.Module, inputs: torch.Tensor, cotangents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """|J_i^T c_i|^2 for every example i, J_i = d f(x_i) / d theta (classes, n_params), theta the
    trainable parameters: float64 (n,).

    J_i^T c_i is the gradient of <f(x_i), c_i> with c_i held fixed: per-example gradients by
    vmap(grad), as for the Fisher.
    """
    params = _params(model, trainable=True)

    def out_dot(params, xi, ci):
        return (functional_call(model, params, (xi.unsqueeze(0),))[0] * ci).sum()

    per_example_grad = vmap(grad(out_dot), in_dims=(None, 0, 0))
    parts = []
    for i in range(0, len(inputs), batch_size):
        x = _as_model_input(model, inputs[i : i + batch_size])
        g = per_example_grad(params, x, cotangents[i : i + batch_size].to(device=x.device))
        parts.append(sum(t.reshape(len(x), -1).double().pow(2).sum(1) for t in g.values()))
    return torch.cat(parts).cpu()


@_measured
def gauss_newton_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None = None, *,
                       loss: str = "cross_entropy", samples: int = 1, seed: int = 0, exact: bool = False,
                       batch_size: int = 256, eval: bool = False) -> dict:
    """Trace of the generalized Gauss-Newton G = (1/n) sum_i J_i^T H_i J_i: dict(trace, stderr, samples).

    J_i = d f(x_i)/d theta is the Jacobian of the logits, H_i the Hessian of the loss w.r.t. them:
    diag(p_i) - p_i p_i^T for cross-entropy (p_i = softmax(f(x_i))), the identity for mse, so
    G needs no labels (`targets` is accepted for a uniform signature and ignored).

    Monte Carlo (default): for cross-entropy, labels y ~ p_i sampled from the model; the gradient
    of the loss at y is J_i^T (p_i - e_y) and E_y[(p - e_y)(p - e_y)^T] = diag(p) - p p^T, so the
    mean squared per-example gradient norm (vmap(grad), as for the Fisher) is
    unbiased for tr G: the "true" Fisher, unlike the empirical one at the data's labels (the
    matrices themselves: `gradscope.operators.GGNOperator` and `FisherOperator`). For mse,
    outputs t = f(x_i) + eps, eps ~ N(0, I), give gradients J_i^T (f - t) = -J_i^T eps with
    E|J_i^T eps|^2 = |J_i|_F^2 = tr(J_i^T J_i); t is not a class label, so these per-example
    gradients come from vmap(grad). `samples` draws per example, all in one pass over the inputs
    repeated `samples` times. stderr is the stratified one, sqrt(sum_i s_i^2 / (n^2 samples))
    with s_i^2 example i's sample variance over its draws; with samples = 1 it is the
    conservative std over examples / sqrt(n) (between-example spread counted as noise).

    exact=True: the deterministic form, sum_c p_ic |J_i^T (p_i - e_c)|^2 (cross-entropy: the
    loss gradient at every label c, weighted by p) or sum_c |J_i^T e_c|^2 = |J_i|_F^2 (mse), over
    all classes: `classes` per-example gradients per example; stderr 0 and samples 0.
    J_i is taken w.r.t. the trainable parameters; eval: see the module docstring.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"gauss_newton_trace supports cross_entropy and mse, got {loss!r}")
    if not exact and samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    logits = _logits(model, inputs, batch_size)
    n, classes = logits.shape
    probs = logits.double().softmax(dim=1).cpu()  # (n, classes)
    draws = classes if exact else samples
    repeated = inputs.repeat(draws, *[1] * (inputs.dim() - 1))  # one pass for all draws, draw-major
    gen = torch.Generator().manual_seed(seed)
    if loss == "cross_entropy":
        if exact:
            labels = torch.arange(classes).repeat_interleave(n)  # every class for every example
        else:
            labels = torch.multinomial(probs, samples, replacement=True, generator=gen).T.reshape(-1)
        a = _sq_grad_norms(model, repeated, labels.to(inputs.device), loss, batch_size)
    else:
        if exact:
            cot = torch.eye(classes, dtype=torch.float64).repeat_interleave(n, dim=0)  # e_c for every example
        else:
            cot = torch.randn(samples * n, classes, generator=gen, dtype=torch.float64)
        a = _vjp_sq_norms(model, repeated, cot.to(logits.dtype), batch_size).numpy()
    a = a.reshape(draws, n)
    if exact:
        weights = probs.T.numpy() if loss == "cross_entropy" else np.ones_like(a)  # (classes, n)
        return {"trace": float((weights * a).sum(0).mean()), "stderr": 0.0, "samples": 0}
    if samples >= 2:
        stderr = math.sqrt(a.var(axis=0, ddof=1).sum() / (n * n * samples))
    else:
        stderr = float(a[0].std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return {"trace": float(a.mean()), "stderr": stderr, "samples": samples}


# --------------------------------------------------------------------------------------------
# Sensitivity to the input
# --------------------------------------------------------------------------------------------


def _input_jacobian_sq_norms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d f(x_i) / d x_i|_F^2 per example, float64 (b,): row c of every Jacobian in one backward pass."""
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for c in range(logits.shape[1]):
        (row,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)
        out += row.reshape(len(x), -1).double().pow(2).sum(1)
    return out


def _input_hessian_traces(gx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """tr(d^2 loss_i / d x_i^2) per example, float64 (b,), from gx = d(sum_i loss_i)/dx (b, dim):
    the HVP with the basis vector e_j (for all examples at once) has entry j = H_i[j, j]."""
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    if gx.requires_grad:  # else the loss is linear in x: zero Hessian
        for j in range(gx.shape[1]):
            (hj,) = torch.autograd.grad(gx[:, j].sum(), x, retain_graph=True)
            out += hj.reshape(len(x), -1)[:, j].double()
    return out


def _input_hessian_probes(gx: torch.Tensor, x: torch.Tensor, probes: int, gen: torch.Generator) -> torch.Tensor:
    """z_ik^T H_i z_ik for Rademacher z_ik, float64 (probes, b): Hutchinson's samples per example."""
    out = torch.zeros(probes, len(x), dtype=torch.float64)
    for k in range(probes):
        z = (torch.randint(0, 2, gx.shape, generator=gen) * 2 - 1).to(gx)  # drawn even if unused: same stream
        if gx.requires_grad:
            (hz,) = torch.autograd.grad(gx, x, grad_outputs=z, retain_graph=True)
            out[k] = (z * hz.reshape(len(x), -1)).double().sum(1).cpu()
    return out


@_measured
def input_sensitivity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                      probes: int = 32, seed: int = 0, exact_max_dim: int = 256, batch_size: int = 256,
                      eval: bool = False) -> dict:
    """Sensitivity to the input, averaged over examples: dict(input_jacobian_norm, input_hessian_trace,
    input_hessian_trace_stderr).

    - input_jacobian_norm: mean_i |d f(x_i) / d x_i|_F, the Frobenius norm of the logits'
      Jacobian w.r.t. the example's own input (one backward pass per class).
    - input_hessian_trace: mean_i tr(d^2 loss_i / d x_i^2). Exact when the input has at most
      `exact_max_dim` entries (one input HVP per basis vector e_j, reading off entry j; stderr 0),
      else Hutchinson with `probes` Rademacher probes per example (stderr over the probes).

    Each example's outputs must depend on its own input only (true in eval mode, which the
    measure requires: see the module docstring): the passes run on a whole chunk of examples at
    once. Defined for float (dense) inputs only: for integer token ids the input is discrete, and
    every value is NaN.
    """
    if not inputs.is_floating_point():
        return {"input_jacobian_norm": math.nan, "input_hessian_trace": math.nan,
                "input_hessian_trace_stderr": math.nan}
    n, dim = len(inputs), int(np.prod(inputs.shape[1:]))
    exact = dim <= exact_max_dim
    if not exact and probes < 2:
        raise ValueError(f"probes must be >= 2 for Hutchinson, got {probes}")
    params = _params(model)
    gen = torch.Generator().manual_seed(seed)
    jac_norms, traces, probe_sums = [], [], torch.zeros(probes, dtype=torch.float64)
    for start in range(0, n, batch_size):
        x = _as_model_input(model, inputs[start : start + batch_size]).detach().requires_grad_(True)
        y = targets[start : start + batch_size].to(x.device)
        with torch.enable_grad():
            logits = functional_call(model, params, (x,))  # (b, classes)
            jac_norms.append(_input_jacobian_sq_norms(logits, x).sqrt().cpu())
            (gx,) = torch.autograd.grad(per_example_loss(logits, y, loss).sum(), x, create_graph=True)
            gx = gx.reshape(len(x), -1)  # (b, dim)
            if exact:
                traces.append(_input_hessian_traces(gx, x).cpu())
            else:
                quad = _input_hessian_probes(gx, x, probes, gen)  # (probes, b)
                probe_sums += quad.sum(1)
                traces.append(quad.mean(0))
    # Probes are independent: the spread of the per-probe means over all examples gives the stderr.
    stderr = 0.0 if exact else float((probe_sums / n).std() / math.sqrt(probes))
    return {"input_jacobian_norm": float(torch.cat(jac_norms).mean()),
            "input_hessian_trace": float(torch.cat(traces).mean()), "input_hessian_trace_stderr": stderr}


_input_sensitivity = input_sensitivity  # compute_curvature's flag of the same name shadows it


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def _hessian_measures(hessian: HessianOperator, s: dict, *, warm, return_eigenvectors: bool) -> dict:
    """Top-k eigenvalues (certified Lanczos stop, warm start) and the Hutchinson trace of the Hessian."""
    top = lanczos_top(hessian, k=s["top_k"], iters=s["lanczos_iters"], tol=s["lanczos_tol"] or None, seed=s["seed"],
                      warm=warm, return_eigenvectors=return_eigenvectors)
    tr = hutchinson(hessian, tol=s["trace_tol"], max_samples=s["trace_max_samples"], seed=s["seed"])
    values = [float(v) for v in top.eigenvalues]
    out = {"top_eigenvalues": values, "sharpness": values[0], "lanczos_steps": top.steps,
           "lanczos_residual": top.residual, "hessian_trace": tr["trace"], "hessian_trace_stderr": tr["stderr"],
           "hutchinson_samples": tr["n_samples"]}
    if return_eigenvectors:
        out["eigenvectors"] = top.eigenvectors
    return out


def _ggn_measures(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, s: dict, *, loss: str) -> dict:
    """The GGN's top-k eigenvalues (certified Lanczos stop, random start) and, with s["density"],
    its spectral density; ggn_mvp_count counts its matrix-vector products."""
    ggn = GGNOperator(model, inputs, targets, loss=loss)
    top = lanczos_top(ggn, k=s["top_k"], iters=s["lanczos_iters"], tol=s["lanczos_tol"] or None, seed=s["seed"])
    out = {"ggn_top_eigenvalues": [float(v) for v in top.eigenvalues], "ggn_top_eigenvalue": float(top.eigenvalues[0]),
           "ggn_lanczos_steps": top.steps}
    if s["density"]:
        dens = slq_density(ggn, iters=s["density_iters"], seed=s["seed"])
        out["ggn_density_grid"], out["ggn_density"] = dens["grid"].tolist(), dens["density"].tolist()
    out["ggn_mvp_count"] = ggn.matvecs
    return out


@_measured
def compute_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, settings: dict | None = None, *,
                      loss: str = "cross_entropy", warm=None, update=None, return_eigenvectors: bool = False,
                      eval: bool = False) -> dict:
    """The measures of one `curvature` config section (filled from the schema's defaults and
    validated by `gradscope.config.section`) on these examples; the keys of the measures that
    ran, nothing for the others.

    Always: top_eigenvalues (top_k, largest first, Lanczos stopped by `converged(top_k,
    lanczos_tol)` or after lanczos_iters steps, from `warm` vectors if given), sharpness,
    lanczos_steps, lanczos_residual (the largest relative Ritz residual of the k: each is within
    that fraction of an eigenvalue, whether or not the tolerance was met), hessian_trace,
    hessian_trace_stderr, hutchinson_samples, hvp_count (Hessian-vector products of every kind,
    full or one-block), n_examples, n_params (the trainable parameters, the operators'
    coordinates), wall_s. With the settings: fisher -> fisher_trace; gauss_newton_samples > 0 ->
    gauss_newton_trace, gauss_newton_stderr; input_sensitivity -> input_jacobian_norm,
    input_hessian_trace (NaN for token inputs); density -> density_grid, density (lists; SLQ with
    density_iters HVPs); per_layer -> layer_sharpness ({parameter name: top block eigenvalue});
    ggn -> ggn_top_eigenvalues, ggn_top_eigenvalue, ggn_lanczos_steps, ggn_mvp_count (GGN-vector
    products), and with density ggn_density_grid, ggn_density. `update` (a flat update vector,
    see `optimizer_update`) -> update_sharpness. return_eigenvectors adds eigenvectors, the top-k
    unit Ritz vectors (k, n_params) float64 in the order of top_eigenvalues. The model runs in
    eval mode throughout (eval: see the module docstring).
    """
    s = config.section("curvature", settings)
    start = time.perf_counter()
    hessian = HessianOperator(model, inputs, targets, loss=loss)
    out = _hessian_measures(hessian, s, warm=warm, return_eigenvectors=return_eigenvectors)
    if s["fisher"]:
        out["fisher_trace"] = fisher_trace(model, inputs, targets, loss=loss)
    if s["gauss_newton_samples"]:
        gn = gauss_newton_trace(model, inputs, targets, loss=loss, samples=s["gauss_newton_samples"], seed=s["seed"])
        out["gauss_newton_trace"], out["gauss_newton_stderr"] = gn["trace"], gn["stderr"]
    if s["input_sensitivity"]:
        sens = _input_sensitivity(model, inputs, targets, loss=loss, seed=s["seed"])
        out["input_jacobian_norm"] = sens["input_jacobian_norm"]
        out["input_hessian_trace"] = sens["input_hessian_trace"]
    if update is not None:
        out["update_sharpness"] = _rayleigh(hessian, _flat_update(model, update))
    if s["density"]:
        dens = slq_density(hessian, iters=s["density_iters"], seed=s["seed"])
        out["density_grid"], out["density"] = dens["grid"].tolist(), dens["density"].tolist()
    block_products = 0
    if s["per_layer"]:
        out["layer_sharpness"], block_products = _layer_top(hessian, iters=LAYER_ITERS, seed=s["seed"])
    if s["ggn"]:
        out |= _ggn_measures(model, inputs, targets, s, loss=loss)
    out["hvp_count"] = hessian.matvecs + block_products
    out |= {"n_examples": int(inputs.shape[0]), "n_params": hessian.n, "wall_s": time.perf_counter() - start}
    return out
