"""The curvature operators (gradscope.operators: Hessian, GGN, empirical and true Fisher) against dense matrices,
and the algorithms taking any operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from gradscope.curvature import hutchinson_trace, lanczos_top, slq_density
from gradscope.operators import (CurvatureOperator, EFOperator, FisherOperator, GGNOperator, HessianOperator,
                                 make_operator)
from support.curvature import (
    LOSSES,
    MatrixOperator,
    assert_untouched,
    dense_curvatures,
    dense_hessian,
    exact_hessian,
    make_problem,
    real_problem,
    snapshot,
)

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def layernorm_mlp(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3)).double().eval()
    return model, torch.randn(10, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)


OPERATOR_MODELS = {"mlp": lambda seed: make_problem(400 + seed), "layernorm": layernorm_mlp,
                   "cnn_1d": lambda seed: real_problem("cnn_1d", seed)}


def as_matrix(op: CurvatureOperator) -> torch.Tensor:
    return op.matmat(torch.eye(op.n, dtype=torch.float64))


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
