"""Curvature checked against the exact Hessian of a tiny MLP (torch.func.hessian)."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

from gradscope.curvature import (
    compute_curvature,
    hessian_trace,
    hutchinson_trace,
    hvp_fn,
    lanczos,
    top_eigenvalues,
)
from gradscope.losses import per_example_loss

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

LOSSES = ["cross_entropy", "mse"]
N_EXAMPLES = 16


def make_problem(seed: int):
    """Tiny MLP 5-4-3 (39 params) with weights, inputs and targets drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(N_EXAMPLES, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=gen)
    return model, x, y


def exact_hessian(model, x, y, loss):
    """Dense Hessian (n, n) of the mean loss w.r.t. the parameters flattened in named_parameters order."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def flat_loss(flat):
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, flat.split(numels), shapes)}
        return per_example_loss(functional_call(model, params, (x,)), y, loss).mean()

    return torch.func.hessian(flat_loss)(theta)


def snapshot(model):
    return {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}


def assert_untouched(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name][0]), name
        assert p.requires_grad == before[name][1], name
        assert p.grad is None, name


@pytest.mark.parametrize("loss", LOSSES)
def test_hvp_matches_exact_hessian(loss):
    model, x, y = make_problem(1 + LOSSES.index(loss))
    H = exact_hessian(model, x, y, loss)
    hvp, n = hvp_fn(model, x, y, loss=loss)
    assert n == 39 and H.shape == (n, n)
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        assert_close(hvp(v), H @ v)
    assert_close(hvp(torch.eye(n, dtype=torch.float64)[7]), H[:, 7])  # one column, by itself


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_match_eigvalsh(loss, k):
    model, x, y = make_problem(20 + 2 * LOSSES.index(loss) + k)
    H = exact_hessian(model, x, y, loss)
    exact = torch.linalg.eigvalsh(H).flip(0)[:k].numpy()  # largest first
    before = snapshot(model)
    vals, vecs = top_eigenvalues(model, x, y, k=k, loss=loss, iters=1000, return_eigenvectors=True)  # clipped to 39
    assert_untouched(model, before)
    assert vals.shape == (k,) and vecs.shape == (k, 39)
    np.testing.assert_allclose(vals, exact, rtol=1e-4)
    assert np.all(np.diff(vals) <= 0)
    U = torch.from_numpy(vecs)  # (k, n)
    assert_close(U @ U.T, torch.eye(k, dtype=torch.float64), atol=1e-8, rtol=0)
    lam = torch.from_numpy(vals)
    assert_close(U @ H, lam[:, None] * U, atol=1e-6 * abs(exact[0]), rtol=0)  # H symmetric: rows of (H U^T)^T
    assert np.array_equal(top_eigenvalues(model, x, y, k=k, loss=loss, iters=1000), vals)


def test_lanczos_converges_before_n_and_stops_on_breakdown():
    gen = torch.Generator().manual_seed(31)
    n = 200
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([5.0, 4.0]), torch.linspace(-1.0, 1.0, n - 2, dtype=torch.float64)])
    A = Qm @ torch.diag(spectrum) @ Qm.T
    res = lanczos(lambda v: A @ v, n, iters=30, seed=0, return_eigenvectors=True)
    assert res.steps == 30 and res.eigenvectors.shape == (30, n)
    assert np.all(np.diff(res.eigenvalues) >= 0)
    np.testing.assert_allclose(res.eigenvalues[-2:], [4.0, 5.0], rtol=1e-10)
    assert_close(A @ res.eigenvectors[-1], 5.0 * res.eigenvectors[-1], atol=1e-6, rtol=0)
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
    B = Qm @ torch.diag(torch.tensor([3.0] * 50 + [1.0] * 50 + [-2.0] * 100, dtype=torch.float64)) @ Qm.T
    res = lanczos(lambda v: B @ v, n, iters=30, seed=0)
    assert res.steps == 3
    np.testing.assert_allclose(res.eigenvalues, [-2.0, 1.0, 3.0], rtol=1e-10)
    # iters beyond n is clipped to n.
    assert lanczos(lambda v: A[:5, :5] @ v, 5, iters=30, seed=0).steps == 5


@pytest.mark.parametrize("loss", LOSSES)
def test_hessian_trace_within_three_stderr(loss):
    model, x, y = make_problem(40 + LOSSES.index(loss))
    exact = float(torch.trace(exact_hessian(model, x, y, loss)))
    before = snapshot(model)
    out = hessian_trace(model, x, y, loss=loss, tol=0.05, min_samples=10, max_samples=100, seed=3)
    assert_untouched(model, before)
    assert out["stderr"] > 0 and 10 <= out["n_samples"] <= 100
    assert abs(out["trace"] - exact) <= 3 * out["stderr"]
    if out["n_samples"] < 100:
        assert out["stderr"] <= 0.05 * abs(out["trace"])
    assert hessian_trace(model, x, y, loss=loss, tol=0.05, min_samples=10, max_samples=100, seed=3) == out
    assert hessian_trace(model, x, y, loss=loss, tol=0.05, min_samples=10, max_samples=100, seed=4) != out


def test_hessian_trace_stopping_rule():
    model, x, y = make_problem(50)
    tiny = hessian_trace(model, x, y, tol=1e-12, min_samples=5, max_samples=25, seed=0)
    assert tiny["n_samples"] == 25
    loose = hessian_trace(model, x, y, tol=1e6, min_samples=5, max_samples=25, seed=0)
    assert loose["n_samples"] == 5


def test_hutchinson_stderr_and_relative_stopping_rule():
    gen = torch.Generator().manual_seed(81)
    G = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    A = G @ G.T / 30 + torch.diag(torch.linspace(0.0, 2.0, 30, dtype=torch.float64))
    probes = []

    def recording(v):
        probes.append(v.clone())
        return A @ v

    tol, lo, hi = 0.03, 5, 400
    out = hutchinson_trace(recording, 30, tol=tol, min_samples=lo, max_samples=hi, seed=2)
    z = torch.stack(probes)  # (n_samples, 30)
    assert out["n_samples"] == len(z) and lo <= len(z) < hi
    assert torch.all(z.abs() == 1)
    s = ((z @ A) * z).sum(1).numpy()  # z_i^T A z_i

    def stderr(m):
        return s[:m].std(ddof=1) / np.sqrt(m)

    assert out["trace"] == pytest.approx(s.mean(), rel=1e-12)
    assert out["stderr"] == pytest.approx(stderr(len(s)), rel=1e-12)
    assert stderr(len(s)) <= tol * abs(s.mean())
    # It stopped at the first count where the relative criterion held, not later.
    assert all(stderr(m) > tol * abs(s[:m].mean()) for m in range(lo, len(s)))
    assert abs(out["trace"] - float(torch.trace(A))) <= 3 * out["stderr"]


def test_top_eigenvalues_are_largest_algebraic():
    class Saddle(nn.Module):
        """Loss ~ -mean(x) * (a*b - a^2/2) near 0: Hessian eigenvalues ~ 0.618 g and -1.618 g."""

        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
            self.b = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
            self.c = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

        def forward(self, x):
            l0 = (self.a * self.b - 0.5 * self.a**2) * x[:, 0] + 0.1 * self.c * x[:, 1]
            return torch.stack([l0, torch.zeros_like(l0), torch.zeros_like(l0)], dim=1)

    gen = torch.Generator().manual_seed(91)
    x = torch.rand(8, 2, generator=gen, dtype=torch.float64) - torch.tensor([1.5, 0.5], dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    model = Saddle()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y, "mse")).numpy()
    assert abs(exact[0]) > abs(exact[-1]) and exact[0] < 0 < exact[-1]  # guard: the negative one dominates
    vals = top_eigenvalues(model, x, y, k=2, loss="mse", iters=3)
    np.testing.assert_allclose(vals, exact[::-1][:2], rtol=1e-10)


def test_hutchinson_uses_rademacher_probes():
    # z^T D z = tr(D) exactly for +-1 probes and diagonal D: zero variance, stop at min_samples.
    d = torch.linspace(-1.0, 3.0, 50, dtype=torch.float64)
    out = hutchinson_trace(lambda v: d * v, 50, tol=1e-9, min_samples=4, max_samples=100, seed=0)
    assert out["n_samples"] == 4 and out["stderr"] < 1e-12
    assert out["trace"] == pytest.approx(float(d.sum()), rel=1e-12)
    with pytest.raises(ValueError):
        hutchinson_trace(lambda v: v, 5, min_samples=10, max_samples=5)


def test_compute_curvature_consistent():
    model, x, y = make_problem(60)
    H = exact_hessian(model, x, y, "cross_entropy")
    before = snapshot(model)
    with torch.no_grad():  # callers may sit in an inference context
        out = compute_curvature(model, x, y, loss="cross_entropy", k=2, lanczos_iters=1000, trace_tol=0.05,
                                trace_max_samples=50, seed=5)
    assert_untouched(model, before)
    assert set(out) == {"top_eigenvalues", "sharpness", "hessian_trace", "hessian_trace_stderr",
                        "hutchinson_samples", "hvp_count", "n_examples", "n_params", "wall_s"}
    assert len(out["top_eigenvalues"]) == 2 and all(isinstance(v, float) for v in out["top_eigenvalues"])
    assert out["sharpness"] == out["top_eigenvalues"][0] >= out["top_eigenvalues"][1]
    np.testing.assert_allclose(out["top_eigenvalues"], torch.linalg.eigvalsh(H).flip(0)[:2].numpy(), rtol=1e-4)
    assert out["n_params"] == 39 and out["n_examples"] == N_EXAMPLES and out["wall_s"] > 0
    # Softmax ignores a shift of all logits, so this H has a repeated zero eigenvalue and Lanczos
    # breaks down before 39 steps: count the steps on the same start vector.
    steps = lanczos(lambda v: H @ v, 39, iters=1000, seed=5).steps
    assert steps < 39 and out["hvp_count"] == steps + out["hutchinson_samples"]
    trace = hessian_trace(model, x, y, tol=0.05, max_samples=50, seed=5)
    assert (out["hessian_trace"], out["hessian_trace_stderr"], out["hutchinson_samples"]) == (
        trace["trace"], trace["stderr"], trace["n_samples"])
    short = compute_curvature(model, x, y, loss="cross_entropy", k=1, lanczos_iters=8, trace_tol=0.05,
                              trace_max_samples=50, seed=5)
    assert short["hvp_count"] == 8 + short["hutchinson_samples"]
    with pytest.raises(ValueError):
        compute_curvature(model, x, y, k=5, lanczos_iters=3)


def test_float32_model_matches_float64():
    model64, x, y = make_problem(70)
    model32 = copy.deepcopy(model64).float()
    hvp, n = hvp_fn(model32, x.float(), y)
    assert hvp(torch.ones(n)).dtype == torch.float32
    top32 = top_eigenvalues(model32, x.float(), y, iters=39)
    top64 = top_eigenvalues(model64, x, y, iters=39)
    np.testing.assert_allclose(top32, top64, rtol=1e-3)
