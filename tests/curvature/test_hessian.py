"""Top eigenvalues, trace, update sharpness and per-layer eigenvalues of the Hessian (gradscope.curvature.hessian),
checked against the exact Hessian of a tiny MLP (torch.func.hessian) and the dense Hessian of real architectures."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

from gradscope.curvature import (
    hessian_trace,
    hutchinson_trace,
    layer_top_eigenvalues,
    top_eigenvalues,
    update_sharpness,
)
from gradscope.losses import per_example_loss
from gradscope.operators import HessianOperator
from support.curvature import (
    LOSSES,
    MatrixOperator,
    assert_untouched,
    dense_hessian,
    exact_hessian,
    make_problem,
    real_problem,
    snapshot,
)

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


ARCHITECTURES = ["resnet_group", "resnet_batch", "resnet_1d", "vgg_batch", "transformer", "cnn_1d"]


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


def test_float32_model_matches_float64():
    model64, x, y = make_problem(70)
    model32 = copy.deepcopy(model64).float()
    op = HessianOperator(model32, x.float(), y)
    hvp, n = op.matvec, op.n
    assert hvp(torch.ones(n)).dtype == torch.float32
    top32 = top_eigenvalues(model32, x.float(), y, tol=None, iters=39)
    top64 = top_eigenvalues(model64, x, y, tol=None, iters=39)
    np.testing.assert_allclose(top32, top64, rtol=1e-3)


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


def test_dropout_in_training_mode_is_refused():
    model, x, y = real_problem("transformer")
    model.train()
    with pytest.raises(ValueError, match=r"defined in eval mode.*encoder\.layers\.0"):
        top_eigenvalues(model, x, y)
    assert top_eigenvalues(model, x, y, eval=True, iters=5, tol=None) == pytest.approx(
        top_eigenvalues(model.eval(), x, y, iters=5, tol=None), rel=1e-12)
