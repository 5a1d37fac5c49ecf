"""Curvature of the training loss: top Hessian eigenvalues (sharpness) and the Hessian trace.

Everything goes through Hessian-vector products (HVPs) of the MEAN loss over the given
examples w.r.t. all parameters, flattened in `model.named_parameters()` order; the Hessian
itself is never formed.

- Top eigenvalues: Lanczos with full reorthogonalization (Lanczos 1950; Golub & Van Loan,
  Matrix Computations, ch. 10). Sharpness as tracked by Cohen et al. 2021, "Gradient Descent on
  Neural Networks Typically Occurs at the Edge of Stability" (locuslab/edge-of-stability runs
  scipy's eigsh, i.e. implicitly restarted Lanczos, on HVPs).
- Trace: Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix for
  Laplacian smoothing splines", with Rademacher probes, as in PyHessian (Yao et al. 2020,
  "PyHessian: Neural Networks Through the Lens of the Hessian").
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradscope.losses import per_example_loss

MatVec = Callable[[torch.Tensor], torch.Tensor]


def hvp_fn(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy"
) -> tuple[MatVec, int]:
    """(v -> H v, n_params) for the Hessian H of the mean loss over `inputs`, in the params' dtype.

    The model is not mutated: the loss is evaluated on detached (storage-sharing, never written)
    leaves standing in for the parameters, so no `.grad` is written and requires_grad is untouched.
    """
    # Double backward, not torch.func's jvp(grad(...)) (forward-over-reverse): the gradient
    # graph is built once and each HVP is then a single backward pass through it, whereas
    # jvp(grad) redoes forward + backward per call. Measured on an MLP 100-256-256-10 (ReLU,
    # float32, batch 512, torch 2.13 CPU, 2 threads, mean of 20 calls after warm-up, 3 runs):
    # 6.4-8.1 ms vs 14.5-17.0 ms per HVP, i.e. double backward ~2.2x faster (6.8-8.4 ms even
    # counting the one-off graph build). The price is holding that graph for the closure's life.
    named = list(model.named_parameters())
    if not named:
        raise ValueError("model has no parameters")
    dtype, device = named[0][1].dtype, named[0][1].device
    leaves = {name: p.detach().requires_grad_(True) for name, p in named}
    shapes = [p.shape for _, p in named]
    numels = [p.numel() for _, p in named]
    n = sum(numels)
    inputs, targets = inputs.to(device), targets.to(device)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)  # token ids stay integer
    with torch.enable_grad():
        logits = functional_call(model, {**dict(model.named_buffers()), **leaves}, (inputs,))
        mean_loss = per_example_loss(logits, targets, loss).mean()
        grads = torch.autograd.grad(mean_loss, list(leaves.values()), create_graph=True, allow_unused=True)
    # A gradient that is None or constant has zero second derivative: leave it out of the backward.
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        chunks = v.to(dtype=dtype, device=device).split(numels)  # per-parameter pieces of (n,)
        out = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        if live:
            with torch.enable_grad():
                parts = torch.autograd.grad(
                    [grads[i] for i in live], list(leaves.values()),
                    grad_outputs=[chunks[i].view(shapes[i]) for i in live],
                    retain_graph=True, allow_unused=True,
                )
            out = [o if p is None else p for o, p in zip(out, parts)]
        return torch.cat([o.reshape(-1) for o in out])  # (n,)

    return hvp, n


class LanczosResult(NamedTuple):
    eigenvalues: np.ndarray  # (m,) float64, ascending: Ritz values = eigenvalues of T
    eigenvectors: torch.Tensor | None  # (m, n) Ritz vectors, row i for eigenvalues[i]; if asked
    steps: int  # m = matvecs used (< iters on breakdown)


def lanczos(matvec: MatVec, n: int, *, iters: int, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu", return_eigenvectors: bool = False) -> LanczosResult:
    """Lanczos on the symmetric operator `matvec` on R^n: at most `min(iters, n)` matvecs, fewer on breakdown.

    Returns (eigenvalues of T ascending, Ritz vectors (steps, n) if asked else None, steps).
    """
    m = min(int(iters), n)
    if m < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same start vector on any device
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    Q = torch.zeros(m, n, dtype=dtype, device=device)  # rows: orthonormal Lanczos vectors
    Q[0] = q / q.norm()
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
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    steps = len(alphas)
    T = np.diag(np.array(alphas)) + np.diag(np.array(betas), 1) + np.diag(np.array(betas), -1)
    evals, S = np.linalg.eigh(T)  # T = S diag(evals) S^T, float64
    vecs = None
    if return_eigenvectors:
        vecs = torch.from_numpy(S.T).to(dtype=dtype, device=device) @ Q[:steps]  # (m, m) @ (m, n)
    return LanczosResult(evals, vecs, steps)


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
        z = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)  # (n,) of +-1
        samples.append(float(z @ matvec(z)))
        if len(samples) < min_samples:
            continue
        s = np.asarray(samples)
        mean, stderr = float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s)))
        if len(s) >= max_samples or stderr <= tol * abs(mean):
            return {"trace": mean, "stderr": stderr, "n_samples": len(s)}


def _param_kind(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def _top(hvp: MatVec, n: int, k: int, iters: int, seed: int, dtype, device, vectors: bool):
    if not 1 <= k <= min(iters, n):
        raise ValueError(f"need 1 <= k <= min(iters, n_params) = {min(iters, n)}, got k={k}")
    res = lanczos(hvp, n, iters=iters, seed=seed, dtype=dtype, device=device, return_eigenvectors=vectors)
    # On breakdown fewer than k Ritz values exist (Lanczos cannot see multiplicities): return those.
    order = np.argsort(res.eigenvalues)[::-1][:k]
    vecs = res.eigenvectors[torch.from_numpy(order.copy())].double().cpu().numpy() if vectors else None
    return res.eigenvalues[order], vecs, res.steps


def top_eigenvalues(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, k: int = 1,
                    loss: str = "cross_entropy", iters: int = 30, seed: int = 0, return_eigenvectors: bool = False):
    """Top-k Hessian eigenvalues, largest algebraic first, as float64 np.ndarray (k,).

    With return_eigenvectors, returns (eigenvalues, eigenvectors) with unit eigenvectors (k, n_params).
    Fewer than k come back only if Lanczos breaks down first (H has fewer distinct eigenvalues
    visible from the start vector than k).
    """
    hvp, n = hvp_fn(model, inputs, targets, loss=loss)
    vals, vecs, _ = _top(hvp, n, k, min(iters, n), seed, *_param_kind(model), return_eigenvectors)
    return (vals, vecs) if return_eigenvectors else vals


def hessian_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                  tol: float = 0.01, min_samples: int = 10, max_samples: int = 200, seed: int = 0) -> dict:
    """Hutchinson estimate of the Hessian trace: dict(trace, stderr, n_samples); tol is relative."""
    hvp, n = hvp_fn(model, inputs, targets, loss=loss)
    dtype, device = _param_kind(model)
    return hutchinson_trace(hvp, n, tol=tol, min_samples=min_samples, max_samples=max_samples, seed=seed,
                            dtype=dtype, device=device)


def compute_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                      k: int = 1, lanczos_iters: int = 30, trace_tol: float = 0.01, trace_max_samples: int = 200,
                      seed: int = 0) -> dict:
    """Sharpness, top-k eigenvalues and Hessian trace from one HVP closure (what the curvature rule records)."""
    start = time.perf_counter()
    hvp, n = hvp_fn(model, inputs, targets, loss=loss)
    dtype, device = _param_kind(model)
    vals, _, steps = _top(hvp, n, k, min(lanczos_iters, n), seed, dtype, device, False)
    tr = hutchinson_trace(hvp, n, tol=trace_tol, min_samples=min(10, trace_max_samples),
                          max_samples=trace_max_samples, seed=seed, dtype=dtype, device=device)
    top = [float(v) for v in vals]
    return {
        "top_eigenvalues": top,
        "sharpness": top[0],
        "hessian_trace": tr["trace"],
        "hessian_trace_stderr": tr["stderr"],
        "hutchinson_samples": tr["n_samples"],
        "hvp_count": steps + tr["n_samples"],
        "n_examples": int(inputs.shape[0]),
        "n_params": n,
        "wall_s": time.perf_counter() - start,
    }
