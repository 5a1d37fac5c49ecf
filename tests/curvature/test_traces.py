"""The Fisher and Gauss-Newton traces (gradscope.curvature.traces) against their exact values on a tiny MLP."""

from __future__ import annotations

import pytest
import torch

from gradscope.curvature import fisher_trace, gauss_newton_trace
from gradscope.losses import per_example_loss
from support.curvature import LOSSES, assert_untouched, exact_hessian, flat_fn, make_problem, snapshot

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


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
