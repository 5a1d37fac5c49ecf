"""input_sensitivity (gradscope.curvature.sensitivity) against its exact value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradscope.curvature import input_sensitivity
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from support.curvature import LOSSES, assert_untouched, make_problem, snapshot

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


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
