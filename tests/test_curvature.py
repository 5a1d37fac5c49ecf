"""Curvature checked against the exact Hessian of a tiny MLP (torch.func.hessian)."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.testing import assert_close

from gradscope.curvature import (
    compute_curvature,
    fisher_trace,
    gauss_newton_trace,
    hessian_trace,
    hutchinson_trace,
    input_sensitivity,
    lanczos_top,
    layer_top_eigenvalues,
    optimizer_update,
    slq_density,
    spectral_density,
    top_eigenvalues,
    update_sharpness,
)
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from gradscope.operators import (CurvatureOperator, EFOperator, FisherOperator, GGNOperator, HessianOperator,
                                 make_operator)

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


def flat_fn(model, x, fn):
    """fn(logits) as a function of the parameters flattened in named_parameters order, and theta."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, flat.split(numels), shapes)}
        return fn(functional_call(model, params, (x,)))

    return f, theta


def exact_hessian(model, x, y, loss):
    """Dense Hessian (n, n) of the mean loss w.r.t. the parameters flattened in named_parameters order."""
    f, theta = flat_fn(model, x, lambda logits: per_example_loss(logits, y, loss).mean())
    return torch.func.hessian(f)(theta)


class MatrixOperator(CurvatureOperator):
    """A dense symmetric matrix as an operator (the algorithms take operators only): a known spectrum."""

    name = "matrix"

    def __init__(self, A):
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A

    def _matvec(self, v):
        return self.A @ v


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
    op = HessianOperator(model, x, y, loss=loss)
    hvp, n = op.matvec, op.n
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
    vals, vecs = top_eigenvalues(model, x, y, k=k, loss=loss, tol=None, iters=1000,  # clipped to 39
                                 return_eigenvectors=True)
    assert_untouched(model, before)
    assert vals.shape == (k,) and vecs.shape == (k, 39)
    np.testing.assert_allclose(vals, exact, rtol=1e-4)
    assert np.all(np.diff(vals) <= 0)
    U = torch.from_numpy(vecs)  # (k, n)
    assert_close(U @ U.T, torch.eye(k, dtype=torch.float64), atol=1e-8, rtol=0)
    lam = torch.from_numpy(vals)
    assert_close(U @ H, lam[:, None] * U, atol=1e-6 * abs(exact[0]), rtol=0)  # H symmetric: rows of (H U^T)^T
    assert np.array_equal(top_eigenvalues(model, x, y, k=k, loss=loss, tol=None, iters=1000), vals)


def test_lanczos_converges_before_n_and_stops_on_breakdown():
    gen = torch.Generator().manual_seed(31)
    n = 200
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([5.0, 4.0]), torch.linspace(-1.0, 1.0, n - 2, dtype=torch.float64)])
    A = Qm @ torch.diag(spectrum) @ Qm.T
    # k = iters: every Ritz value and vector, largest first
    res = lanczos_top(MatrixOperator(A), k=30, iters=30, tol=None, seed=0, return_eigenvectors=True)
    assert res.steps == 30 and res.eigenvectors.shape == (30, n)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    np.testing.assert_allclose(res.eigenvalues[:2], [5.0, 4.0], rtol=1e-10)
    top = torch.from_numpy(res.eigenvectors[0])
    assert_close(A @ top, 5.0 * top, atol=1e-6, rtol=0)
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
    B = Qm @ torch.diag(torch.tensor([3.0] * 50 + [1.0] * 50 + [-2.0] * 100, dtype=torch.float64)) @ Qm.T
    res = lanczos_top(MatrixOperator(B), k=30, iters=30, tol=None, seed=0)
    assert res.steps == 3
    np.testing.assert_allclose(res.eigenvalues, [3.0, 1.0, -2.0], rtol=1e-10)
    # iters beyond n is clipped to n.
    assert lanczos_top(MatrixOperator(A[:5, :5]), iters=30, tol=None, seed=0).steps == 5


def operator_with_spectrum(spectrum: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(spectrum) Q^T for a random orthogonal Q: a symmetric matrix with known eigenvalues."""
    n = len(spectrum)
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Qm @ torch.diag(spectrum) @ Qm.T


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_lanczos_tol_stops_at_first_certified_step(seed, k, tol):
    # Top eigenvalues 10, 9.5, 9.2, 9.0 over a bulk in [-1, 8]: gaps small enough that Lanczos takes a while.
    gen = torch.Generator().manual_seed(100 + seed)
    bulk = torch.rand(296, generator=gen, dtype=torch.float64) * 9 - 1
    spectrum = torch.cat([torch.tensor([10.0, 9.5, 9.2, 9.0], dtype=torch.float64), bulk])
    A = operator_with_spectrum(spectrum, seed)
    exact = np.sort(spectrum.numpy())[::-1]
    res = lanczos_top(MatrixOperator(A), iters=200, seed=seed, k=k, tol=tol, return_eigenvectors=True)
    theta, Y = res.eigenvalues, torch.from_numpy(res.eigenvectors)
    # The reported residuals are the true ones, |A y - theta y|, computed here directly.
    direct = (Y @ A - torch.from_numpy(theta)[:, None] * Y).norm(dim=1).numpy()
    np.testing.assert_allclose(res.residuals, direct, rtol=1e-6, atol=1e-12)
    assert res.residual == pytest.approx(float(np.max(direct / np.abs(theta))), rel=1e-6)
    assert np.all(direct <= tol * np.abs(theta))
    # The bound holds: each theta is within tol of an eigenvalue (here, of the true i-th largest).
    assert np.all(np.abs(theta - exact[:k]) <= tol * np.abs(theta))
    # It stopped at the first step where the bound held: one step fewer does not certify.
    fewer = lanczos_top(MatrixOperator(A), k=k, iters=res.steps - 1, tol=None, seed=seed)
    assert np.any(fewer.residuals > tol * np.abs(fewer.eigenvalues))
    assert 5 <= res.steps < 200  # not trivially short, nor run to the cap


def test_warm_start_from_nearby_eigenvectors_saves_steps():
    gen = torch.Generator().manual_seed(7)
    spectrum = torch.cat([torch.tensor([10.0, 9.0], dtype=torch.float64),
                          torch.rand(398, generator=gen, dtype=torch.float64) * 8])
    A = operator_with_spectrum(spectrum, 3)
    E = torch.randn(400, 400, generator=gen, dtype=torch.float64)
    B = A + 0.05 * (E + E.T) / 400**0.5  # the next checkpoint's Hessian: a small symmetric change
    before = lanczos_top(MatrixOperator(A), iters=100, k=2, tol=1e-8, return_eigenvectors=True)
    warm = before.eigenvectors  # A's top two eigenvectors
    exact = torch.linalg.eigvalsh(B).flip(0)[:2].numpy()
    cold = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=2, tol=1e-4)
    hot = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=2, tol=1e-4, warm=warm)
    for res in (cold, hot):
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-4)
    assert hot.steps < 0.8 * cold.steps
    # The warm start keeps a random part: a top direction missing from `warm` is still found.
    hidden = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=1, tol=1e-4, warm=warm[1:])
    np.testing.assert_allclose(hidden.eigenvalues[0], exact[0], rtol=1e-4)


def test_top_eigenvalues_tol_on_a_network():
    model, x, y = make_problem(80)
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y, "cross_entropy")).flip(0)[:2].numpy()
    vals, vecs = top_eigenvalues(model, x, y, k=2, tol=1e-6, return_eigenvectors=True)
    np.testing.assert_allclose(vals, exact, rtol=1e-6)
    again = top_eigenvalues(model, x, y, k=2, tol=1e-6, warm=vecs, seed=4)
    np.testing.assert_allclose(again, exact, rtol=1e-6)
    with pytest.raises(ValueError, match="no vectors"):
        top_eigenvalues(model, x, y, warm=np.zeros((0, 39)))


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

    class Recording(MatrixOperator):
        def _matvec(self, v):
            probes.append(v.clone())
            return self.A @ v

    tol, lo, hi = 0.03, 5, 400
    out = hutchinson_trace(Recording(A), tol=tol, min_samples=lo, max_samples=hi, seed=2)
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
    out = hutchinson_trace(MatrixOperator(torch.diag(d)), tol=1e-9, min_samples=4, max_samples=100, seed=0)
    assert out["n_samples"] == 4 and out["stderr"] < 1e-12
    assert out["trace"] == pytest.approx(float(d.sum()), rel=1e-12)
    with pytest.raises(ValueError):
        hutchinson_trace(MatrixOperator(torch.eye(5, dtype=torch.float64)), min_samples=10, max_samples=5)
    # Left to its default, min_samples (10) is capped at max_samples: the schema allows 2.
    assert hutchinson_trace(MatrixOperator(torch.diag(d)), tol=1e-9, max_samples=4)["n_samples"] == 4


BASE_KEYS = {"top_eigenvalues", "sharpness", "lanczos_steps", "lanczos_residual", "hessian_trace", "hessian_trace_stderr", "hutchinson_samples",
             "hvp_count", "n_examples", "n_params", "wall_s"}
EXTRA_KEYS = {"fisher_trace", "gauss_newton_trace", "gauss_newton_stderr", "input_jacobian_norm",
              "input_hessian_trace", "update_sharpness"}
OFF = {"fisher": False, "gauss_newton_samples": 0, "input_sensitivity": False}  # the measures on by default


def test_compute_curvature_consistent():
    model, x, y = make_problem(60)
    H = exact_hessian(model, x, y, "cross_entropy")
    before = snapshot(model)
    with torch.no_grad():  # callers may sit in an inference context
        out = compute_curvature(model, x, y, {"top_k": 2, "lanczos_iters": 1000, "lanczos_tol": 0, "trace_tol": 0.05,
                                              "trace_max_samples": 50, "seed": 5, **OFF}, loss="cross_entropy")
    assert_untouched(model, before)
    assert set(out) == BASE_KEYS  # the measures turned off are absent, not NaN
    assert len(out["top_eigenvalues"]) == 2 and all(isinstance(v, float) for v in out["top_eigenvalues"])
    assert out["sharpness"] == out["top_eigenvalues"][0] >= out["top_eigenvalues"][1]
    np.testing.assert_allclose(out["top_eigenvalues"], torch.linalg.eigvalsh(H).flip(0)[:2].numpy(), rtol=1e-4)
    assert out["n_params"] == 39 and out["n_examples"] == N_EXAMPLES and out["wall_s"] > 0
    # Softmax ignores a shift of all logits, so this H has a repeated zero eigenvalue and Lanczos
    # breaks down before 39 steps: count the steps on the same start vector.
    steps = lanczos_top(MatrixOperator(H), iters=1000, tol=None, seed=5).steps
    assert steps < 39 and out["hvp_count"] == steps + out["hutchinson_samples"] and out["lanczos_steps"] == steps
    assert out["lanczos_residual"] < 1e-8  # breakdown: the Ritz values are exact
    trace = hessian_trace(model, x, y, tol=0.05, max_samples=50, seed=5)
    assert (out["hessian_trace"], out["hessian_trace_stderr"], out["hutchinson_samples"]) == (
        trace["trace"], trace["stderr"], trace["n_samples"])
    short = compute_curvature(model, x, y, {"lanczos_iters": 8, "lanczos_tol": 0, "trace_tol": 0.05,
                                            "trace_max_samples": 50, "seed": 5, **OFF}, loss="cross_entropy")
    assert short["hvp_count"] == 8 + short["hutchinson_samples"]
    with pytest.raises(ValueError):
        compute_curvature(model, x, y, {"top_k": 5, "lanczos_iters": 3})
    with pytest.raises(ValueError, match="curvature.trace_tol"):  # validated against the schema
        compute_curvature(model, x, y, {"trace_tol": -1})


def test_float32_model_matches_float64():
    model64, x, y = make_problem(70)
    model32 = copy.deepcopy(model64).float()
    op = HessianOperator(model32, x.float(), y)
    hvp, n = op.matvec, op.n
    assert hvp(torch.ones(n)).dtype == torch.float32
    top32 = top_eigenvalues(model32, x.float(), y, tol=None, iters=39)
    top64 = top_eigenvalues(model64, x, y, tol=None, iters=39)
    np.testing.assert_allclose(top32, top64, rtol=1e-3)


# ---- Fisher, Gauss-Newton, input sensitivity, update sharpness, SLQ, per-layer -----------------


def exact_gauss_newton_trace(model, x, y, loss):
    """(1/n) sum_i tr(J_i^T H_i J_i) from the full logits Jacobian and each example's output Hessian."""
    f, theta = flat_fn(model, x, lambda logits: logits)
    J = torch.func.jacrev(f)(theta)  # (n, classes, n_params)
    logits = f(theta).detach()
    total = 0.0
    for i in range(len(x)):
        H_out = torch.func.hessian(lambda z: per_example_loss(z[None], y[i : i + 1], loss)[0])(logits[i])  # (C, C)
        total += float(torch.trace(J[i].T @ H_out @ J[i]))
    return total / len(x)


@pytest.mark.parametrize("loss", LOSSES)
def test_fisher_trace_is_mean_squared_per_example_gradient(loss):
    model, x, y = make_problem(100 + LOSSES.index(loss))
    f, theta = flat_fn(model, x, lambda logits: per_example_loss(logits, y, loss))
    G = torch.func.jacrev(f)(theta)  # (n, n_params): row i is example i's gradient
    exact = float(torch.trace(G.T @ G / len(x)))  # tr((1/n) sum_i g_i g_i^T)
    before = snapshot(model)
    assert fisher_trace(model, x, y, loss=loss, batch_size=5) == pytest.approx(exact, rel=1e-10)
    assert_untouched(model, before)


@pytest.mark.parametrize("loss", LOSSES)
def test_gauss_newton_trace_exact_and_monte_carlo(loss):
    model, x, y = make_problem(110 + LOSSES.index(loss))
    exact = exact_gauss_newton_trace(model, x, y, loss)
    before = snapshot(model)
    det = gauss_newton_trace(model, x, y, loss=loss, exact=True, batch_size=5)
    assert det["trace"] == pytest.approx(exact, rel=1e-10) and det["stderr"] == 0.0
    # The GGN drops the residual term of the Hessian: guard that the two differ on this problem.
    assert abs(exact - float(torch.trace(exact_hessian(model, x, y, loss)))) > 0.05 * abs(exact)
    mc = gauss_newton_trace(model, x, y, loss=loss, samples=150, seed=1)
    assert_untouched(model, before)
    assert mc["samples"] == 150 and 0 < mc["stderr"] < 0.04 * exact
    assert abs(mc["trace"] - exact) <= 3 * mc["stderr"]
    one = gauss_newton_trace(model, x, y, loss=loss, samples=1, seed=1)
    assert one["samples"] == 1 and abs(one["trace"] - exact) <= 3 * one["stderr"]
    assert gauss_newton_trace(model, x, y, loss=loss, samples=1, seed=1) == one
    assert gauss_newton_trace(model, x, y, loss=loss, samples=1, seed=2) != one


def test_gauss_newton_samples_labels_from_the_model():
    # Confident model: labels drawn from p are almost always the argmax, so the GGN trace is tiny;
    # the data's labels or uniform ones would give a large value, far outside the error bar.
    model, x, y = make_problem(120)
    with torch.no_grad():
        model[2].weight.mul_(30.0)
    exact = gauss_newton_trace(model, x, y, exact=True)["trace"]
    assert exact < 0.05 * fisher_trace(model, x, y)  # guard: the data's labels are far from the model's
    mc = gauss_newton_trace(model, x, y, samples=100, seed=0)
    assert 0 < mc["stderr"] and abs(mc["trace"] - exact) <= 3 * mc["stderr"]


def exact_input_sensitivity(model, x, y, loss):
    norms, traces = [], []
    for i in range(len(x)):
        with torch.no_grad():
            Jx = torch.func.jacrev(lambda xi: model(xi[None])[0])(x[i])  # (classes, dim)
            Hx = torch.func.hessian(lambda xi: per_example_loss(model(xi[None]), y[i : i + 1], loss)[0])(x[i])
        norms.append(float(Jx.norm()))
        traces.append(float(torch.trace(Hx)))
    return np.mean(norms), np.mean(traces)


@pytest.mark.parametrize("loss", LOSSES)
def test_input_sensitivity_matches_exact(loss):
    model, x, y = make_problem(130 + LOSSES.index(loss))
    jac, tr = exact_input_sensitivity(model, x, y, loss)
    before = snapshot(model)
    out = input_sensitivity(model, x, y, loss=loss, batch_size=6)  # input dim 5: exact, basis vectors
    assert_untouched(model, before)
    assert out["input_jacobian_norm"] == pytest.approx(jac, rel=1e-10)
    assert out["input_hessian_trace"] == pytest.approx(tr, rel=1e-10) and out["input_hessian_trace_stderr"] == 0
    hutch = input_sensitivity(model, x, y, loss=loss, probes=64, seed=3, exact_max_dim=0, batch_size=6)
    assert hutch["input_jacobian_norm"] == pytest.approx(jac, rel=1e-10)
    assert 0 < hutch["input_hessian_trace_stderr"] < 0.2 * abs(tr)
    assert abs(hutch["input_hessian_trace"] - tr) <= 3 * hutch["input_hessian_trace_stderr"]


def test_input_sensitivity_is_nan_for_tokens():
    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "depth": 1, "width": 8}, InputSpec("tokens", 2, 5, 5))
    out = input_sensitivity(model, torch.randint(0, 5, (6, 2)), torch.randint(0, 5, (6,)))
    assert set(out) == {"input_jacobian_norm", "input_hessian_trace", "input_hessian_trace_stderr"}
    assert all(np.isnan(v) for v in out.values())


def test_update_sharpness_is_rayleigh_quotient():
    model, x, y = make_problem(140)
    H = exact_hessian(model, x, y, "cross_entropy")
    u = torch.randn(39, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = snapshot(model)
    assert update_sharpness(model, u, x, y) == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-10)
    assert update_sharpness(model, u.numpy() * 7, x, y) == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-10)
    assert_untouched(model, before)
    assert np.isnan(update_sharpness(model, torch.zeros(39), x, y))
    with pytest.raises(ValueError):
        update_sharpness(model, torch.ones(38), x, y)


def flat_grad(model, x, y, loss="cross_entropy"):
    f, theta = flat_fn(model, x, lambda logits: per_example_loss(logits, y, loss).mean())
    return torch.func.grad(f)(theta), theta


def test_optimizer_update_sgd_and_momentum():
    model, x, y = make_problem(150)
    g, theta = flat_grad(model, x, y)
    before = snapshot(model)
    sgd = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "warmup_steps": 4}
    u = optimizer_update(model, None, sgd, x, y, step=1)  # warmup: lr = 0.1 * 2 / 4
    assert_close(u, -0.05 * g, rtol=1e-12, atol=1e-14)
    assert_close(optimizer_update(model, None, sgd, x, y, step=1, lr=0.3), -0.3 * g, rtol=1e-12, atol=1e-14)
    clipped = optimizer_update(model, None, {**sgd, "grad_clip": 0.1 * float(g.norm())}, x, y, step=10)
    assert_close(clipped, -0.1 * 0.1 * g, rtol=1e-5, atol=0)
    # Heavy ball with weight decay and a nonzero momentum buffer from a checkpoint's optimizer state.
    mom = {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01}
    other = copy.deepcopy(model)
    opt = torch.optim.SGD(other.parameters(), lr=0.2, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for p in other.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    opt.step()
    state = opt.state_dict()
    buf = torch.cat([state["state"][i]["momentum_buffer"].reshape(-1) for i in range(4)])
    saved = buf.clone()
    assert buf.abs().sum() > 0
    u = optimizer_update(model, state, mom, x, y, step=5)
    assert_close(u, -0.2 * (0.9 * buf + g + 0.01 * theta), rtol=1e-12, atol=1e-14)
    assert_untouched(model, before)
    assert torch.equal(torch.cat([state["state"][i]["momentum_buffer"].reshape(-1) for i in range(4)]), saved)


def test_slq_moments_exact_and_monte_carlo():
    model, x, y = make_problem(160)
    H = exact_hessian(model, x, y, "mse")
    n = 39
    e = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    e = e / e.norm()
    for iters, orders in ((n, range(7)), (3, range(6))):  # exact up to order 2 * steps - 1
        dens = slq_density(MatrixOperator(H), iters=iters, start=e)
        nodes, weights = dens["nodes"], dens["weights"]
        assert len(nodes) == len(weights) == iters
        for m in orders:
            want = float(e @ torch.linalg.matrix_power(H, m) @ e)
            assert float(weights @ nodes**m) == pytest.approx(want, rel=1e-8, abs=1e-12), (iters, m)
    # Rademacher starts: z^T D^m z / n = tr(D^m) / n exactly for diagonal D.
    d = torch.linspace(-1.0, 2.0, 20, dtype=torch.float64)
    dens = slq_density(MatrixOperator(torch.diag(d)), iters=20, runs=3, seed=0)
    nodes, weights = dens["nodes"], dens["weights"]
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    for m in (1, 2, 3):
        assert float(weights @ nodes**m) == pytest.approx(float((d**m).mean()), rel=1e-9)
    # On the model: moments of the spectral measure (1/n) sum delta(lambda_i), within 4 standard errors.
    runs = 10
    before = snapshot(model)
    out = spectral_density(model, x, y, loss="mse", iters=n, runs=runs, seed=4)
    assert_untouched(model, before)
    w, theta = out["weights"], out["nodes"]
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    for m in (1, 2):
        A = torch.linalg.matrix_power(H, m)
        # Var(z^T A z) = 2 (|A|_F^2 - sum A_ii^2) for Rademacher z; v = z / sqrt(n).
        se = np.sqrt(2 * float(A.pow(2).sum() - A.diag().pow(2).sum()) / n**2 / runs)
        assert abs(float(w @ theta**m) - float(torch.trace(A)) / n) <= 4 * se
    grid, dens = out["grid"], out["density"]
    assert grid.shape == dens.shape == (1000,) and np.all(dens >= 0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * dens, grid) == pytest.approx(float(w @ theta), rel=1e-3, abs=1e-6)
    on_grid = spectral_density(model, x, y, loss="mse", iters=n, runs=runs, seed=4, grid=np.linspace(-1, 1, 7))
    assert on_grid["density"].shape == (7,)


def test_layer_top_eigenvalues_match_exact_blocks():
    model, x, y = make_problem(170)
    H = exact_hessian(model, x, y, "cross_entropy")
    before = snapshot(model)
    out = layer_top_eigenvalues(model, x, y, iters=100, seed=0)
    assert_untouched(model, before)
    assert list(out) == [name for name, _ in model.named_parameters()]
    start = 0
    for name, p in model.named_parameters():
        block = H[start : start + p.numel(), start : start + p.numel()]
        assert out[name] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-4), name
        start += p.numel()
    narrow = nn.Sequential(nn.Linear(5, 1), nn.Linear(1, 3)).double()  # 0.bias has one entry: skipped
    assert list(layer_top_eigenvalues(narrow, x, y, iters=5)) == ["0.weight", "1.weight", "1.bias"]


def test_compute_curvature_extras_match_the_standalone_measures():
    model, x, y = make_problem(180)
    u = torch.randn(39, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    settings = {"lanczos_iters": 10, "trace_tol": 0.05, "trace_max_samples": 20, "seed": 3}
    base = compute_curvature(model, x, y, {**settings, **OFF})
    before = snapshot(model)
    out = compute_curvature(model, x, y, {**settings, "fisher": True, "gauss_newton_samples": 2,
                                          "input_sensitivity": True, "density": True, "density_iters": 12,
                                          "per_layer": True}, update=u)
    assert_untouched(model, before)
    assert set(out) == BASE_KEYS | EXTRA_KEYS | {"density_grid", "density", "layer_sharpness"}
    for key in ("top_eigenvalues", "hessian_trace", "hessian_trace_stderr", "hutchinson_samples"):
        assert out[key] == base[key]
    assert out["fisher_trace"] == fisher_trace(model, x, y)
    gn = gauss_newton_trace(model, x, y, samples=2, seed=3)
    assert (out["gauss_newton_trace"], out["gauss_newton_stderr"]) == (gn["trace"], gn["stderr"])
    sens = input_sensitivity(model, x, y, seed=3)
    assert (out["input_jacobian_norm"], out["input_hessian_trace"]) == (
        sens["input_jacobian_norm"], sens["input_hessian_trace"])
    assert out["update_sharpness"] == pytest.approx(update_sharpness(model, u, x, y), rel=1e-12)
    dens = spectral_density(model, x, y, iters=12, seed=3)
    assert_close(torch.tensor(out["density"], dtype=torch.float64), torch.from_numpy(dens["density"]))
    assert isinstance(out["density_grid"], list) and len(out["density_grid"]) == 1000
    assert out["layer_sharpness"] == layer_top_eigenvalues(model, x, y, seed=3)
    # Every HVP is counted: Lanczos, Hutchinson, one for the update, SLQ steps, block Lanczos steps.
    H, at = exact_hessian(model, x, y, "cross_entropy"), np.cumsum([0] + [p.numel() for p in model.parameters()])
    block_steps = sum(lanczos_top(MatrixOperator(H[a:e, a:e]), iters=min(20, e - a), tol=None, seed=3).steps
                      for a, e in zip(at[:-1], at[1:]))  # 20 per block, fewer where one breaks down
    assert block_steps < sum(min(20, p.numel()) for p in model.parameters())
    assert out["hvp_count"] == base["hvp_count"] + 1 + len(dens["nodes"]) + block_steps


# ---- real architectures, eval mode, trainable parameters only --------------------------------


def dense_hessian(model, x, y, loss="cross_entropy"):
    """Exact Hessian (n, n) of the mean loss w.r.t. the TRAINABLE parameters (named_parameters order), one
    row per basis vector on a flat-parameter function (torch.autograd.functional.hessian), apart from the
    leaves, eval gate and parameter bookkeeping under test. Not torch.func.hessian (forward-over-reverse)
    here: in torch 2.13 on CPU it gets nn.LayerNorm's weight rows wrong (an asymmetric "Hessian", 0.22 off
    on Linear-LayerNorm-Linear, 0.02 on the encoder below, where central differences of the gradient agree
    with double backward to 1e-11); `test_hvps_through_pytorch_attention_need_the_math_kernel` checks
    against finite differences too."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    shapes, numels = [p.shape for _, p in named], [p.numel() for _, p in named]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(flat):
        params = {name: c.view(s) for (name, _), c, s in zip(named, flat.split(numels), shapes)}
        return per_example_loss(functional_call(model, params, (x,)), y, loss).mean()

    # vmap over the rows is ~3-10x faster, but GroupNorm's double backward does not batch (torch 2.13).
    vectorize = not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
        return torch.autograd.functional.hessian(f, theta, vectorize=vectorize)


class TokenEncoder(nn.Module):
    """Embedding + positions, a 2-layer nn.TransformerEncoder (PyTorch's own attention), mean-pooled read-out."""

    def __init__(self, vocab=5, seq=3, d=8, classes=3, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=12, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.readout = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.readout(self.encoder(self.embed(tokens) + self.pos).mean(1))


def with_running_stats(model, x):
    """Move BatchNorm's running statistics off their init (three training-mode forwards), then eval mode."""
    model.train()
    with torch.no_grad():
        for scale in (0.5, 1.0, 2.0):
            model(scale * x + 0.3)
    return model.eval()


def real_problem(name: str, seed: int = 0):
    """(model in eval mode, float64; inputs; targets) of one of the architectures below, tiny."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    if name == "transformer":
        model = TokenEncoder().double().eval()
        return model, torch.randint(0, 5, (8, 3), generator=gen), torch.randint(0, 3, (8,), generator=gen)
    config, shape = {
        "resnet_group": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1], "norm": "group", "groups": 2}, (1, 6, 6)),
        "resnet_batch": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1]}, (1, 6, 6)),
        "resnet_1d": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1]}, (1, 8)),
        "vgg_batch": ({"kind": "vgg", "base_width": 1}, (1, 4, 4)),
        "cnn_1d": ({"kind": "cnn", "channels": [3, 4], "activation": "tanh"}, (2, 10)),
    }[name]
    model = build_model(config, InputSpec("dense", int(np.prod(shape)), 0, 3, shape)).double()
    x = torch.randn(8, *shape, generator=gen, dtype=torch.float64)
    return with_running_stats(model, x), x, torch.randint(0, 3, (8,), generator=gen)


ARCHITECTURES = ["resnet_group", "resnet_batch", "resnet_1d", "vgg_batch", "transformer", "cnn_1d"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_top_eigenvalues_and_trace_on_real_architectures_match_the_dense_hessian(name):
    model, x, y = real_problem(name)
    if name.endswith("batch") or name == "resnet_1d":
        assert any(float(m.running_var.sub(1).abs().max()) > 0.05 for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))  # eval mode really uses moved statistics
    H = dense_hessian(model, x, y)
    n = H.shape[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, x, y)
    hvp, m = op.matvec, op.n
    assert m == n == sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_close(hvp(v), H @ v, rtol=1e-9, atol=1e-10 * float(H.abs().max()))
    exact = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    vals, vecs = top_eigenvalues(model, x, y, k=2, tol=1e-8, iters=300, return_eigenvectors=True)
    np.testing.assert_allclose(vals, exact, rtol=1e-7)
    assert vecs.shape == (2, n)
    tr = hessian_trace(model, x, y, min_samples=30, max_samples=30, seed=2)
    dense = hutchinson_trace(MatrixOperator(H), min_samples=30, max_samples=30, seed=2)  # the same probes
    assert tr["trace"] == pytest.approx(dense["trace"], rel=1e-9)
    assert abs(tr["trace"] - float(H.trace())) <= 4 * tr["stderr"]
    for k, before in state.items():  # buffers and parameters untouched
        assert torch.equal(model.state_dict()[k], before), k


def test_hvps_through_pytorch_attention_need_the_math_kernel():
    """The CPU flash kernel has no double backward; the measures pick the math kernel themselves."""
    model, x, y = real_problem("transformer")
    params = [p for p in model.parameters()]
    g = torch.autograd.grad(per_example_loss(model(x), y).mean(), params, create_graph=True)
    with pytest.raises(RuntimeError, match="flash_attention"):
        torch.autograd.grad(g, params, grad_outputs=[torch.ones_like(p) for p in params], allow_unused=True)
    op = HessianOperator(model, x, y)
    hvp, n = op.matvec, op.n
    named = list(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def gradient(flat):  # of the mean loss, flat, by first-order autograd only
        params = {name: c.view(p.shape) for (name, p), c in zip(named, flat.split([p.numel() for _, p in named]))}
        params = {k: v.requires_grad_(True) for k, v in params.items()}
        loss = per_example_loss(functional_call(model, params, (x,)), y).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    gen = torch.Generator().manual_seed(4)
    for _ in range(3):  # central differences of the gradient: error ~ h^2, far below the tolerance
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        h = 1e-5
        fd = (gradient(theta + h * v) - gradient(theta - h * v)) / (2 * h)
        assert_close(hvp(v), fd, rtol=1e-6, atol=1e-8)


def test_frozen_parameters_are_left_out():
    """Hessian over the trainable parameters only: its spectrum, trace, Fisher and Gauss-Newton traces,
    the update and the vectors' length are those of the trainable block of the full Hessian."""
    model, x, y = make_problem(300)
    H_full = exact_hessian(model, x, y, "cross_entropy")
    model[0].weight.requires_grad_(False)  # 20 of the 39 parameters
    keep = torch.arange(20, 39)
    H = H_full[keep][:, keep]
    assert_close(dense_hessian(model, x, y), H)
    before = snapshot(model)
    exact = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    vals, vecs = top_eigenvalues(model, x, y, k=2, tol=None, iters=19, return_eigenvectors=True)
    np.testing.assert_allclose(vals, exact, rtol=1e-8)
    assert vecs.shape == (2, 19) and not np.isclose(vals[0], float(torch.linalg.eigvalsh(H_full)[-1]), rtol=1e-3)
    out = compute_curvature(model, x, y, {"top_k": 2, "lanczos_iters": 19, "lanczos_tol": 0, "trace_max_samples": 10,
                                          "seed": 1, "fisher": True, "gauss_newton_samples": 1, "per_layer": True},
                            return_eigenvectors=True)
    assert out["n_params"] == 19 and out["eigenvectors"].shape == (2, 19)
    np.testing.assert_allclose(out["top_eigenvalues"], exact, rtol=1e-8)
    assert out["hessian_trace"] == pytest.approx(
        hutchinson_trace(MatrixOperator(H), min_samples=10, max_samples=10, seed=1)["trace"], rel=1e-10)
    assert list(out["layer_sharpness"]) == ["0.bias", "2.weight", "2.bias"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    sq = [sum(float(g.pow(2).sum()) for g in torch.autograd.grad(per_example_loss(model(x[i:i + 1]), y[i:i + 1])[0],
                                                                  trainable)) for i in range(len(x))]
    assert fisher_trace(model, x, y) == pytest.approx(np.mean(sq), rel=1e-10)
    gn = gauss_newton_trace(model, x, y, exact=True)["trace"]
    f, theta = flat_fn(model, x, lambda logits: logits)
    J = torch.func.jacrev(f)(theta)[:, :, keep]  # (n, classes, trainable)
    p = model(x).softmax(1).detach()
    exact_gn = np.mean([float(torch.trace(J[i].T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ J[i]))
                        for i in range(len(x))])
    assert gn == pytest.approx(exact_gn, rel=1e-10)
    sgd = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.01}  # decay moves no frozen weight
    u = optimizer_update(model, None, sgd, x, y, step=0)
    assert u.shape == (19,)
    assert update_sharpness(model, u, x, y) == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-10)
    with pytest.raises(ValueError, match="19 trainable parameters"):
        update_sharpness(model, torch.zeros(39), x, y)
    assert_untouched_frozen(model, before)


def assert_untouched_frozen(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name][0]) and p.requires_grad == before[name][1], name
        assert p.grad is None, name


def same(a, b):
    """Equal results, whatever their type (arrays, dicts, tuples, floats)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            if k != "wall_s":
                same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            same(u, v)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


MEASURES = {
    "hessian_operator": lambda m, x, y, **kw: HessianOperator(m, x, y, **kw).matvec(
        torch.ones(sum(p.numel() for p in m.parameters()), dtype=torch.float64)),
    "top_eigenvalues": lambda m, x, y, **kw: top_eigenvalues(m, x, y, k=1, iters=8, **kw),
    "hessian_trace": lambda m, x, y, **kw: hessian_trace(m, x, y, max_samples=4, min_samples=4, **kw),
    "spectral_density": lambda m, x, y, **kw: spectral_density(m, x, y, iters=5, **kw),
    "layer_top_eigenvalues": lambda m, x, y, **kw: layer_top_eigenvalues(m, x, y, iters=3, **kw),
    "update_sharpness": lambda m, x, y, **kw: update_sharpness(
        m, torch.ones(sum(p.numel() for p in m.parameters())), x, y, **kw),
    "fisher_trace": lambda m, x, y, **kw: fisher_trace(m, x, y, **kw),
    "gauss_newton_trace": lambda m, x, y, **kw: gauss_newton_trace(m, x, y, samples=1, **kw),
    "input_sensitivity": lambda m, x, y, **kw: input_sensitivity(m, x, y, probes=2, exact_max_dim=4, **kw),
    "compute_curvature": lambda m, x, y, **kw: compute_curvature(
        m, x, y, {"lanczos_iters": 4, "trace_max_samples": 4, "fisher": True, "input_sensitivity": True, "ggn": True},
        **kw),
}


@pytest.mark.parametrize("measure", MEASURES)
def test_batchnorm_in_training_mode_is_refused_and_its_statistics_never_move(measure):
    """The old behaviour: a BatchNorm model in training mode had its running statistics overwritten by every
    measure's forward (and got batch-coupled numbers). Now: a clear error, buffers bit-identical; eval=True
    measures in eval mode, restores the flags and leaves the buffers alone too."""
    fn = MEASURES[measure]
    model, x, y = real_problem("resnet_batch")
    x, y = x[:4], y[:4]
    reference = fn(copy.deepcopy(model), x, y)  # eval mode
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe(x)
    assert not torch.equal(probe.stem[1].running_mean, state["stem.1.running_mean"])  # what a train-mode forward does
    with pytest.raises(ValueError, match=r"defined in eval mode.*\(stem\.1, stages\.0\.0\.norm1"):
        fn(model, x, y)
    same_state = lambda: all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # noqa: E731
    assert same_state() and all(m.training for m in model.modules())
    same(fn(model, x, y, eval=True), reference)
    assert same_state() and all(m.training for m in model.modules())  # flags restored


def test_dropout_in_training_mode_is_refused():
    model, x, y = real_problem("transformer")
    model.train()
    with pytest.raises(ValueError, match=r"defined in eval mode.*encoder\.layers\.0"):
        top_eigenvalues(model, x, y)
    assert top_eigenvalues(model, x, y, eval=True, iters=5, tol=None) == pytest.approx(
        top_eigenvalues(model.eval(), x, y, iters=5, tol=None), rel=1e-12)


# ---- operators (Hessian, GGN, empirical and true Fisher) against dense matrices ---------------


def layernorm_mlp(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3)).double().eval()
    return model, torch.randn(10, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)


OPERATOR_MODELS = {"mlp": lambda seed: make_problem(400 + seed), "layernorm": layernorm_mlp,
                   "cnn_1d": lambda seed: real_problem("cnn_1d", seed)}


def dense_curvatures(model, x, y, loss):
    """The GGN, empirical Fisher and true Fisher (n, n) from their definitions, slowly: the logits'
    Jacobian by torch.autograd.functional.jacobian, the loss Hessian in the logits by
    torch.autograd.functional.hessian, per-example gradients from a loop over single examples."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def params(flat):
        return {name: c.view(p.shape) for (name, p), c in zip(named, flat.split([p.numel() for _, p in named]))}

    def logits_of(flat, inputs=x):
        return functional_call(model, params(flat), (inputs,))

    J = torch.autograd.functional.jacobian(logits_of, theta)  # (N, C, n)
    f = logits_of(theta).detach()  # (N, C)
    N, C = f.shape
    H_out = [torch.autograd.functional.hessian(lambda z, i=i: per_example_loss(z[None], y[i : i + 1], loss)[0], f[i])
             for i in range(N)]  # (C, C) each

    def example_grad(i, label):
        flat = theta.clone().requires_grad_(True)
        value = per_example_loss(logits_of(flat, x[i : i + 1]), torch.tensor([label]), loss)[0]
        return torch.autograd.grad(value, flat)[0]  # (n,)

    ggn = sum(J[i].T @ H_out[i] @ J[i] for i in range(N)) / N
    ef = sum(torch.outer(g, g) for g in (example_grad(i, int(y[i])) for i in range(N))) / N
    if loss == "cross_entropy":  # labels from the model: every class c, weighted by p_ic
        p = f.softmax(1)
        fisher = sum(p[i, c] * torch.outer(g, g) for i in range(N) for c in range(C)
                     for g in [example_grad(i, c)]) / N
    else:  # N(f, I): the gradient at t = f + eps is -J^T eps, E[eps eps^T] = I
        fisher = sum(J[i].T @ J[i] for i in range(N)) / N
    return {"ggn": ggn, "empirical_fisher": ef, "fisher": fisher, "J": J, "example_grad": example_grad}


def as_matrix(op: CurvatureOperator) -> torch.Tensor:
    return op.matmat(torch.eye(op.n, dtype=torch.float64))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(OPERATOR_MODELS))
def test_operators_match_dense_matrices(name, loss):
    model, x, y = OPERATOR_MODELS[name](0)
    dense = dense_curvatures(model, x, y, loss)
    dense["hessian"] = dense_hessian(model, x, y, loss)
    before = snapshot(model)
    for kind in ("hessian", "ggn", "empirical_fisher", "fisher"):
        op = make_operator(kind, model, x, y, loss=loss)
        assert isinstance(op, {"hessian": HessianOperator, "ggn": GGNOperator, "empirical_fisher": EFOperator,
                               "fisher": FisherOperator}[kind])
        A = as_matrix(op)
        want = dense[kind]
        assert op.n == want.shape[0] and op.matvecs == op.n  # one product per column, each counted
        assert_close(A, want, rtol=1e-9, atol=1e-11 * float(want.abs().max()), msg=f"{kind}")
        v = torch.randn(op.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        assert_close(op(v), want @ v, rtol=1e-9, atol=1e-11 * float(want.abs().max()))
        if kind != "hessian":  # J^T M J with M >= 0: positive semi-definite, unlike the Hessian
            assert float(torch.linalg.eigvalsh(A)[0]) > -1e-10 * float(want.abs().max())
    assert_untouched(model, before)
    # the three output-space matrices really differ here, so matching each one means something
    assert float((dense["ggn"] - dense["empirical_fisher"]).abs().max()) > 1e-3
    assert float((dense["hessian"] - dense["ggn"]).abs().max()) > 1e-3


@pytest.mark.parametrize("name", list(OPERATOR_MODELS))
def test_true_fisher_equals_the_ggn_for_cross_entropy(name):
    """Martens 2020, 9.2: for a softmax likelihood the true Fisher is the GGN (computed here from
    labels drawn over every class, not from the loss Hessian)."""
    model, x, y = OPERATOR_MODELS[name](1)
    G, F = as_matrix(GGNOperator(model, x, y)), as_matrix(FisherOperator(model, x))
    assert_close(F, G, rtol=1e-10, atol=1e-12 * float(G.abs().max()))
    assert float((as_matrix(EFOperator(model, x, y)) - G).abs().max()) > 1e-3 * float(G.abs().max())


@pytest.mark.parametrize("loss", LOSSES)
def test_monte_carlo_fisher_is_its_sampled_sum_and_tends_to_the_true_fisher(loss):
    model, x, y = make_problem(420)
    dense = dense_curvatures(model, x, y, loss)
    op = FisherOperator(model, x, loss=loss, mc_samples=3, seed=5)
    if loss == "cross_entropy":  # (1/(N S)) sum_i sum_s g_i(y_is) g_i(y_is)^T at the drawn labels
        grads = [dense["example_grad"](i, int(op.labels[s, i])) for s in range(3) for i in range(len(x))]
        want = sum(torch.outer(g, g) for g in grads) / (3 * len(x))
    else:  # gradients -J_i^T eps_is
        J = dense["J"]
        want = sum(torch.outer(J[i].T @ op.noise[s, i], J[i].T @ op.noise[s, i]) for s in range(3)
                   for i in range(len(x))) / (3 * len(x))
    assert_close(as_matrix(op), want, rtol=1e-9, atol=1e-12)
    # Unbiased: with many draws it approaches the exact true Fisher (error ~ 1/sqrt(S)), and a
    # different seed draws different labels.
    exact = dense["fisher"]
    many = as_matrix(FisherOperator(model, x, loss=loss, mc_samples=4000, seed=1))
    assert float((many - exact).norm() / exact.norm()) < 0.05
    assert float((as_matrix(op) - exact).norm() / exact.norm()) > 0.05
    assert not torch.equal(as_matrix(FisherOperator(model, x, loss=loss, mc_samples=3, seed=6)), as_matrix(op))
    with pytest.raises(ValueError, match="mc_samples"):
        FisherOperator(model, x, mc_samples=0)
    with pytest.raises(ValueError, match="known: empirical_fisher, fisher, ggn, hessian"):
        make_operator("gauss_newton", model, x, y)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "empirical_fisher", "fisher"])
def test_algorithms_take_any_operator(kind):
    """Lanczos (certified stop), Hutchinson and SLQ on each operator against its dense matrix."""
    model, x, y = layernorm_mlp(7)
    op = make_operator(kind, model, x, y)
    A = as_matrix(op)
    exact = torch.linalg.eigvalsh(A).flip(0).numpy()
    top = lanczos_top(make_operator(kind, model, x, y), k=2, iters=op.n, tol=1e-9, seed=1, return_eigenvectors=True)
    np.testing.assert_allclose(top.eigenvalues, exact[:2], rtol=1e-7)
    assert top.residual <= 1e-9 and top.steps < op.n  # stopped by the certificate, before n steps
    for value, vec in zip(top.eigenvalues, top.eigenvectors):
        assert_close(A @ torch.from_numpy(vec), value * torch.from_numpy(vec), rtol=0, atol=1e-6 * abs(value))
    fresh = make_operator(kind, model, x, y)
    tr = hutchinson_trace(fresh, tol=1e-9, min_samples=40, max_samples=40, seed=3)
    same_probes = hutchinson_trace(MatrixOperator(A), tol=1e-9, min_samples=40, max_samples=40, seed=3)
    assert tr["trace"] == pytest.approx(same_probes["trace"], rel=1e-9) and fresh.matvecs == 40
    assert abs(tr["trace"] - float(A.trace())) <= 4 * tr["stderr"]
    # SLQ from one start vector v: sum_j w_j theta_j^m = v^T A^m v / |v|^2 for m <= 2 steps - 1
    dens = slq_density(make_operator(kind, model, x, y), iters=6, seed=4)
    v = (torch.randint(0, 2, (op.n,), generator=torch.Generator().manual_seed(4)) * 2 - 1).double()
    for m in (1, 2, 3, 5):
        want = float(v @ torch.linalg.matrix_power(A, m) @ v / (v @ v))
        assert float(np.sum(dens["weights"] * dens["nodes"] ** m)) == pytest.approx(want, rel=1e-8)
    assert dens["steps"] == 6


def marchenko_pastur_cdf(t, ratio):
    """CDF of the Marchenko-Pastur law of X^T X / m, X (m, n) standard normal, ratio = n / m < 1:
    density sqrt((b - x)(x - a)) / (2 pi ratio x) on [a, b] = [(1 -+ sqrt(ratio))^2], integrated numerically."""
    a, b = (1 - ratio**0.5) ** 2, (1 + ratio**0.5) ** 2
    grid = np.linspace(a, b, 200_001)
    dens = np.sqrt(np.clip((b - grid) * (grid - a), 0, None)) / (2 * np.pi * ratio * grid)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    return np.interp(t, grid, cdf, left=0.0, right=1.0)


def kolmogorov_distance(nodes, weights, cdf):
    """sup_t |F(t) - cdf(t)| for the discrete measure sum_j w_j delta(theta_j): checked on both sides of every step."""
    order = np.argsort(nodes)
    nodes, weights = nodes[order], weights[order]
    F, G = np.cumsum(weights), cdf(nodes)
    return float(max(np.abs(F - G).max(), np.abs(F - weights - G).max()))


@pytest.mark.parametrize("seed", [0, 1])
def test_slq_recovers_spikes_and_a_marchenko_pastur_bulk(seed):
    """Papyan 2020's picture of a Hessian spectrum: a few outliers over a bulk. A = X^T X / m (X
    (m, n) Gaussian, n / m = 0.5: a Marchenko-Pastur bulk on [0.086, 2.914]) plus three rank-one
    spikes of strength 8, 12, 20. SLQ's quadrature measure must match the MP law in Kolmogorov
    distance (under 0.04, where MP laws of ratio 0.4 or 0.6 are over 0.05 away), put Ritz values
    on the three outliers, and give them weight ~1/n each."""
    n, ratio = 800, 0.5
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(int(n / ratio), n, generator=gen, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    A = X.T @ X / X.shape[0] + U @ torch.diag(torch.tensor([8.0, 12.0, 20.0], dtype=torch.float64)) @ U.T
    exact = torch.linalg.eigvalsh(A).numpy()
    edge = (1 + ratio**0.5) ** 2
    assert exact[-4] < edge + 0.1 and exact[-3] > edge + 5  # three outliers, the rest in the bulk
    runs = 16
    dens = slq_density(MatrixOperator(A), iters=60, runs=runs, seed=seed)
    nodes, weights = dens["nodes"], dens["weights"]
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    right = kolmogorov_distance(nodes, weights, lambda t: marchenko_pastur_cdf(t, ratio))
    assert right < 0.04
    for wrong in (0.4, 0.6):  # the threshold tells apart a bulk of a different aspect ratio
        assert kolmogorov_distance(nodes, weights, lambda t: marchenko_pastur_cdf(t, wrong)) > 0.05
    outside = nodes > edge + 1
    for spike in exact[-3:]:  # every run finds every outlier, to Lanczos accuracy
        hits = np.abs(nodes - spike) < 1e-8 * spike
        assert hits.sum() == runs
    assert np.all(np.min(np.abs(nodes[outside, None] - exact[None, -3:]), axis=1) < 1e-8 * exact[-1])
    # each outlier's weight is (u^T v)^2 / |v|^2 per run, mean 1/n: over 3 x 16 draws within a factor 2
    assert 0.5 < weights[outside].sum() / (3 / n) < 2.0


def test_compute_curvature_ggn_top_eigenvalue_and_density():
    model, x, y = make_problem(440)
    settings = {"top_k": 2, "lanczos_iters": 39, "lanczos_tol": 1e-6, "seed": 2, **OFF, "trace_max_samples": 4}
    without = compute_curvature(model, x, y, settings)
    assert not any(key.startswith("ggn") for key in without)
    out = compute_curvature(model, x, y, {**settings, "ggn": True})
    G = dense_curvatures(model, x, y, "cross_entropy")["ggn"]
    exact = torch.linalg.eigvalsh(G).flip(0)[:2].numpy()
    np.testing.assert_allclose(out["ggn_top_eigenvalues"], exact, rtol=1e-5)
    assert out["ggn_top_eigenvalue"] == out["ggn_top_eigenvalues"][0]
    assert out["ggn_mvp_count"] == out["ggn_lanczos_steps"] <= 39 and "ggn_density" not in out
    assert out["hvp_count"] == without["hvp_count"]  # GGN products are counted apart from HVPs
    assert out["top_eigenvalues"] == without["top_eigenvalues"]
    both = compute_curvature(model, x, y, {**settings, "ggn": True, "density": True, "density_iters": 10})
    dens = slq_density(GGNOperator(model, x, y), iters=10, seed=2)
    assert_close(torch.tensor(both["ggn_density"], dtype=torch.float64), torch.from_numpy(dens["density"]))
    assert both["ggn_mvp_count"] == both["ggn_lanczos_steps"] + dens["steps"]
    grid = np.asarray(both["ggn_density_grid"])
    assert np.sum(np.asarray(both["ggn_density"])[:-1] * np.diff(grid)) == pytest.approx(1.0, abs=1e-3)
    assert grid[0] < 0 < exact[0] < grid[-1]  # the GGN is PSD: its density sits on [0, top] (smoothed)


def test_compute_curvature_defaults_are_the_schemas():
    from gradscope.config import section
    model, x, y = make_problem(450)
    defaults = section("curvature")
    out = compute_curvature(model, x, y, {**OFF})
    assert out["hutchinson_samples"] <= defaults["trace_max_samples"] == 50
    assert out["lanczos_steps"] <= defaults["lanczos_iters"]
    tiny = compute_curvature(model, x, y, {**OFF, "trace_tol": 1e-12})  # never met: runs to trace_max_samples
    assert tiny["hutchinson_samples"] == defaults["trace_max_samples"]
    assert hessian_trace(model, x, y, tol=1e-12)["n_samples"] == defaults["trace_max_samples"]
    # one set of defaults: each algorithm's and each model-level measure's are the schema's
    import inspect

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    for fn in (lanczos_top, top_eigenvalues):
        assert (default(fn, "k"), default(fn, "iters"), default(fn, "tol")) == (
            defaults["top_k"], defaults["lanczos_iters"], defaults["lanczos_tol"])
    for fn in (hutchinson_trace, hessian_trace):
        assert (default(fn, "tol"), default(fn, "max_samples")) == (
            defaults["trace_tol"], defaults["trace_max_samples"])
    for fn in (slq_density, spectral_density):
        assert default(fn, "iters") == defaults["density_iters"]
