"""Curvature in micro-batches (the `curvature.batch_size` setting): every measure, and the update
replay's full-set gradient, summed over micro-batches equals the one-batch computation to float64
rounding, on an MLP, a small CNN with BatchNorm (eval mode for the measures, training mode for the
replay) and a transformer; and no forward ever sees more than one micro-batch."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from gradscope.curvature import (compute_curvature, hessian_trace, input_sensitivity, layer_top_eigenvalues,
                                 optimizer_update, spectral_density, top_eigenvalues, update_sharpness)
from gradscope.curvature.traces import fisher_trace, gauss_newton_trace
from gradscope.operators import make_operator, micro_batches
from support.curvature import TokenEncoder, make_problem, real_problem, snapshot, assert_untouched

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

B = 3  # does not divide any n below (16, 8)
RTOL, ATOL = 1e-10, 1e-12


def mlp():
    return make_problem(7)


def cnn():
    return real_problem("resnet_batch", 3)  # convolutions + BatchNorm (eval mode, running statistics)


def transformer(dropout=0.1):
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    model = TokenEncoder(dropout=dropout).double().eval()
    return model, torch.randint(0, 5, (8, 3), generator=gen), torch.randint(0, 3, (8,), generator=gen)


MODELS = {"mlp": mlp, "cnn_batchnorm": cnn, "transformer": transformer}


def test_micro_batches_cover_the_range_once():
    assert micro_batches(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert micro_batches(8, None) == [slice(0, 8)] == micro_batches(8, 8) == micro_batches(8, 100)
    with pytest.raises(ValueError, match="batch_size"):
        micro_batches(8, 0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["hessian", "ggn", "empirical_fisher", "fisher", "fisher_mc"])
def test_operator_products_in_micro_batches_equal_one_batch(name, kind):
    model, x, y = MODELS[name]()
    before = snapshot(model)
    kw = {"mc_samples": 2, "seed": 3} if kind == "fisher_mc" else {}
    kind = "fisher" if kind == "fisher_mc" else kind
    one, many = make_operator(kind, model, x, y, **kw), make_operator(kind, model, x, y, batch_size=B, **kw)
    assert len(many.slices) == math.ceil(len(x) / B) and len(one.slices) == 1
    V = torch.randn(one.n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_close(many.matmat(V), one.matmat(V), rtol=RTOL, atol=ATOL)
    if kind == "hessian":  # the diagonal blocks (per-layer sharpness) too
        for i in range(len(one.leaves.numels)):
            v = V[: one.leaves.numels[i], 0]
            assert_close(many.block(i).matvec(v), one.block(i).matvec(v), rtol=RTOL, atol=ATOL)
    else:  # J v and J^T w
        assert_close(many.f, one.f, rtol=RTOL, atol=ATOL)
        assert_close(many.jvp(V[:, 0]), one.jvp(V[:, 0]), rtol=RTOL, atol=ATOL)
        w = torch.randn(one.f.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        assert_close(many.vjp(w), one.vjp(w), rtol=RTOL, atol=ATOL)
    assert_untouched(model, before)


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm", pytest.param("transformer", marks=pytest.mark.slow)])
def test_hessian_measures_in_micro_batches_equal_one_batch(name):
    model, x, y = MODELS[name]()
    kw = [{"batch_size": B}, {"batch_size": None}]  # None: all at once, the reference
    tops = [top_eigenvalues(model, x, y, k=2, iters=12, tol=None, seed=1, **k) for k in kw]
    assert_close(torch.as_tensor(tops[0]), torch.as_tensor(tops[1]), rtol=1e-8, atol=1e-10)
    layers = [layer_top_eigenvalues(model, x, y, iters=3, seed=1, **k) for k in kw]
    assert layers[0].keys() == layers[1].keys()
    for key in layers[0]:
        assert math.isclose(layers[0][key], layers[1][key], rel_tol=1e-8, abs_tol=1e-10)
    dens = [spectral_density(model, x, y, iters=4, seed=2, **k) for k in kw]
    assert_close(torch.as_tensor(dens[0]["nodes"]), torch.as_tensor(dens[1]["nodes"]), rtol=1e-8, atol=1e-10)
    traces = [hessian_trace(model, x, y, min_samples=2, max_samples=3, seed=3, **k) for k in kw]
    assert traces[0]["n_samples"] == traces[1]["n_samples"]
    assert math.isclose(traces[0]["trace"], traces[1]["trace"], rel_tol=1e-9, abs_tol=1e-11)
    u = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    sharp = [update_sharpness(model, u, x, y, **k) for k in kw]
    assert math.isclose(sharp[0], sharp[1], rel_tol=1e-9, abs_tol=1e-11)


@pytest.mark.parametrize("name", MODELS)
def test_per_example_measures_in_micro_batches_equal_one_batch(name):
    model, x, y = MODELS[name]()
    big = len(x)
    assert math.isclose(fisher_trace(model, x, y, batch_size=B), fisher_trace(model, x, y, batch_size=big),
                        rel_tol=1e-10)
    gn = [gauss_newton_trace(model, x, y, samples=2, seed=1, batch_size=b) for b in (B, big)]
    assert math.isclose(gn[0]["trace"], gn[1]["trace"], rel_tol=1e-10)
    sens = [input_sensitivity(model, x, y, seed=1, batch_size=b) for b in (B, big)]
    for key in sens[0]:
        np.testing.assert_allclose(sens[0][key], sens[1][key], rtol=1e-10, atol=1e-12)  # NaN for tokens: equal NaN


ALL_ON = {"top_k": 2, "lanczos_iters": 8, "lanczos_tol": 0, "trace_max_samples": 3, "fisher": True,
          "gauss_newton_samples": 2, "input_sensitivity": True, "density": True, "density_iters": 4,
          "per_layer": True, "ggn": True}


@pytest.mark.parametrize("name", MODELS)
def test_compute_curvature_in_micro_batches_equals_one_batch(name, caplog):
    """batch_size (the setting) changes no number: every measure of compute_curvature, batch_size 3 against 10**6."""
    model, x, y = MODELS[name]()
    u = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    # Per-layer sharpness (LAYER_ITERS steps per tensor) on the MLP; the many tensors of the others:
    # test_hessian_measures_in_micro_batches_equal_one_batch, with fewer steps.
    settings = {**ALL_ON, "per_layer": name == "mlp"}
    with caplog.at_level(logging.INFO, logger="gradscope.curvature.measures"):
        many = compute_curvature(model, x, y, {**settings, "batch_size": B}, update=u)
    lines = [r.getMessage() for r in caplog.records if r.name == "gradscope.curvature.measures"]
    assert len(lines) == 7 + settings["per_layer"] and all("micro-batches of" in line for line in lines)
    one = compute_curvature(model, x, y, {**settings, "batch_size": 10**6}, update=u)
    assert many.keys() == one.keys()
    for key in one:
        if key == "wall_s":
            continue
        a, b = one[key], many[key]
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            a, b = list(a.values()), list(b.values())
        np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float), rtol=1e-8, atol=1e-9,
                                   err_msg=key)


SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
ADAM = {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


def replay_models():
    model, x, y = cnn()  # BatchNorm: the replay runs in training mode, on the whole set's batch statistics
    return {"mlp": mlp(), "cnn_batchnorm": (model, x, y), "transformer": transformer(dropout=0.0)}


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm", "transformer"])
@pytest.mark.parametrize("optim", [SGD, ADAM], ids=["sgd", "adam"])
def test_update_replay_in_micro_batches_equals_one_batch(name, optim, caplog):
    model, x, y = replay_models()[name]
    before = snapshot(model)
    one = optimizer_update(model, None, optim, x, y, step=3, lr=optim["lr"])
    with caplog.at_level(logging.INFO, logger="gradscope.curvature.replay"):
        many = optimizer_update(model, None, optim, x, y, step=3, lr=optim["lr"], batch_size=B)
    # Adam's first step is lr * g / (|g| + eps): a gradient entry at rounding level moves by up to lr there.
    assert_close(many, one, rtol=1e-9, atol=1e-12 if optim["name"] == "sgd" else 1e-9 * optim["lr"])
    assert float(one.norm()) > 0
    if name == "cnn_batchnorm":
        assert any("BatchNorm statistics of the whole set" in r.getMessage() for r in caplog.records)
    assert_untouched(model, before)


def test_batchnorm_replay_differs_from_micro_batch_statistics():
    """The test above has teeth: micro-batch statistics (plain chunking) would give another update."""
    model, x, y = cnn()
    one = optimizer_update(model, None, SGD, x, y, step=3, lr=0.1)
    ghost = sum(optimizer_update(model, None, SGD, x[s], y[s], step=3, lr=0.1) * (s.stop - s.start) / len(x)
                for s in micro_batches(len(x), B))  # SGD, no state: linear in the gradient
    assert float((ghost - one).norm()) > 1e-6 * float(one.norm())


class SharedNorm(nn.Module):
    """One BatchNorm module called twice per forward: the replay cannot micro-batch it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(4, 5), nn.Linear(5, 5), nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.norm(self.b(torch.tanh(self.norm(self.a(x))))))


def test_a_shared_batchnorm_replays_in_one_batch_and_says_so(caplog):
    torch.manual_seed(0)
    model = SharedNorm().double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen)
    one = optimizer_update(model, None, SGD, x, y, step=1, lr=0.1)
    with caplog.at_level(logging.INFO, logger="gradscope.curvature.replay"):
        many = optimizer_update(model, None, SGD, x, y, step=1, lr=0.1, batch_size=B)
    assert_close(many, one, rtol=1e-12, atol=1e-14)
    assert any("more than once per forward" in r.getMessage() for r in caplog.records)


def largest_batch(model):
    """Record the first dimension of every input the model's forward sees: (sizes, hook handle)."""
    sizes = []
    handle = model.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    return sizes, handle


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm"])
def test_no_forward_sees_more_than_one_micro_batch(name):
    """Peak memory scales with the micro-batch: the largest batch any forward of the curvature measures
    and of the update replay sees is batch_size, where all at once it is n."""
    model, x, y = MODELS[name]()
    n, settings = len(x), {**ALL_ON, "per_layer": name == "mlp"}  # per-layer: the same products, many tensors
    sizes, handle = largest_batch(model)
    try:
        compute_curvature(model, x, y, {**settings, "batch_size": B}, update=torch.zeros(
            sum(p.numel() for p in model.parameters()), dtype=torch.float64))
        optimizer_update(model, None, SGD, x, y, step=1, lr=0.1, batch_size=B)
        assert sizes and max(sizes) == B
        sizes.clear()
        compute_curvature(model, x, y, {**settings, "batch_size": n})
        optimizer_update(model, None, SGD, x, y, step=1, lr=0.1)
        assert max(sizes) == n
    finally:
        handle.remove()


def test_per_example_measures_take_at_most_their_chunk(monkeypatch):
    """Per-example gradients hold a parameter vector per example: at most PER_EXAMPLE_CHUNK (256) examples at
    once, whatever batch_size allows (here the chunk made 2, batch_size 5)."""
    from gradscope.curvature import _common

    monkeypatch.setattr(_common, "PER_EXAMPLE_CHUNK", 2)
    model, x, y = mlp()
    sizes, handle = largest_batch(model)
    try:
        fisher_trace(model, x, y, batch_size=5)
        gauss_newton_trace(model, x, y, samples=2, batch_size=5)
        input_sensitivity(model, x, y, batch_size=5)
        assert max(sizes) == 2
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="batch_size"):
        fisher_trace(model, x, y, batch_size=0)
