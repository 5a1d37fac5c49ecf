"""Per-example statistics against a plain loop of one backward pass per example."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from gradscope.examples import SEED_STRIDE, mean_gradient, per_example_stats, random_projection
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model

MLP = {"kind": "mlp", "depth": 2, "width": 16, "activation": "tanh"}
DENSE = InputSpec("dense", 7, 0, 5)
TOKENS = InputSpec("tokens", 2, 11, 11)
# float64 where the model allows it; OneHot emits float32, so that model stays float32.
TOL = {torch.float64: {}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def make(kind: str, n: int, seed: int):
    """Model and fresh random data; model weights from seed, data from seed + 1."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "dense":
        model = build_model(MLP, DENSE).double()
        x = torch.randn(n, DENSE.dim, generator=gen, dtype=torch.float64)
    else:
        model = build_model({**MLP, "input_encoding": kind, "embed_dim": 3}, TOKENS)
        if kind == "embedding":
            model = model.double()
        x = torch.randint(TOKENS.vocab, (n, TOKENS.dim), generator=gen)
    y = torch.randint(model.body[-1].out_features, (n,), generator=gen)
    return model, x, y


def loop_reference(model, x, y, loss):
    """One forward/backward per example on a copy of the model."""
    model = copy.deepcopy(model)
    rows = {k: [] for k in ("loss", "pred", "margin", "p_true", "correct")}
    grads = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        logits = model(x[i : i + 1])
        value = per_example_loss(logits, y[i : i + 1], loss)[0]
        value.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        z, t = logits[0].detach(), int(y[i])
        rows["loss"].append(value.item())
        rows["pred"].append(int(z.argmax()))
        rows["margin"].append(z[t].item() - max(z[j].item() for j in range(len(z)) if j != t))
        rows["p_true"].append((z[t].exp() / z.exp().sum()).item())
        rows["correct"].append(rows["pred"][-1] == t)
    ref = {k: np.array(v) for k, v in rows.items()}
    return ref, torch.stack(grads)  # (n, n_params)


def expected_grad_stats(grads, mean):
    norms = grads.norm(dim=1)
    dots = grads @ mean
    return {"grad_norm": norms, "grad_dot_mean": dots, "grad_cos_mean": dots / (norms * mean.norm())}


def check(stats, ref, grads, mean, dtype):
    tol = TOL[dtype]
    for key in ("loss", "margin", "p_true"):
        torch.testing.assert_close(torch.from_numpy(stats[key]), torch.tensor(ref[key], dtype=dtype), **tol)
    np.testing.assert_array_equal(stats["pred"], ref["pred"])
    np.testing.assert_array_equal(stats["correct"], ref["correct"])
    for key, value in expected_grad_stats(grads, mean).items():
        torch.testing.assert_close(torch.from_numpy(stats[key]), value, **tol)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("kind", ["dense", "embedding", "onehot"])
def test_matches_loop(kind, loss):
    model, x, y = make(kind, 13, seed=len(kind) + len(loss))
    dtype = next(model.parameters()).dtype
    ref, grads = loop_reference(model, x, y, loss)
    mean = grads.mean(dim=0)
    torch.testing.assert_close(mean_gradient(model, x, y, loss=loss, batch_size=4), mean, **TOL[dtype])
    stats = per_example_stats(model, x, y, loss=loss, batch_size=4)
    check(stats, ref, grads, mean, dtype)
    assert stats["grad_proj"].shape == (13, 32) and stats["grad_proj"].dtype == np.float32


@pytest.mark.parametrize("kind", ["dense", "embedding"])
def test_chunking_does_not_change_results(kind):
    model, x, y = make(kind, 23, seed=3)
    torch.testing.assert_close(mean_gradient(model, x, y, batch_size=5), mean_gradient(model, x, y))
    small = per_example_stats(model, x, y, batch_size=5)
    whole = per_example_stats(model, x, y, batch_size=64)
    assert small.keys() == whole.keys()
    for key in small:
        torch.testing.assert_close(torch.from_numpy(small[key]), torch.from_numpy(whole[key]), msg=key)


def documented_projection(model, proj_dim, seed):
    blocks = []
    for i, p in enumerate(model.parameters()):
        gen = torch.Generator().manual_seed(seed * SEED_STRIDE + i)
        blocks.append(torch.randn(p.numel(), proj_dim, generator=gen, dtype=torch.float32) / math.sqrt(proj_dim))
    return torch.cat(blocks).to(next(model.parameters()).dtype)


def test_projection_follows_seeding_rule():
    model, x, y = make("embedding", 11, seed=5)
    _, grads = loop_reference(model, x, y, "cross_entropy")
    R = documented_projection(model, 8, seed=7)
    torch.testing.assert_close(random_projection(model, 8, seed=7), R, rtol=0, atol=0)
    stats = per_example_stats(model, x, y, proj_dim=8, seed=7, batch_size=3)
    torch.testing.assert_close(torch.from_numpy(stats["grad_proj"]), (grads @ R).float(), rtol=1e-5, atol=1e-6)


def test_projection_seed_determinism():
    model, x, y = make("dense", 9, seed=6)
    a = per_example_stats(model, x, y, seed=1, batch_size=2)["grad_proj"]
    b = per_example_stats(model, x, y, seed=1, batch_size=9)["grad_proj"]
    c = per_example_stats(model, x, y, seed=2)["grad_proj"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1 * np.abs(a).max()


def test_projection_preserves_geometry():
    # JL / TRAK: for unit vectors with cosine rho, the projected inner product has standard
    # deviation sqrt((1 + rho^2) / k); allow 5 sigma per pair over all pairs.
    k = 1024
    model, x, y = make("dense", 30, seed=8)
    _, grads = loop_reference(model, x, y, "cross_entropy")
    stats = per_example_stats(model, x, y, proj_dim=k)
    proj = torch.from_numpy(stats["grad_proj"]).double()
    unit = grads / grads.norm(dim=1, keepdim=True)
    true_cos = unit @ unit.T
    est_inner = (grads @ documented_projection(model, k, 0)) @ proj.T / torch.outer(grads.norm(dim=1), grads.norm(dim=1))
    sigma = torch.sqrt((1 + true_cos**2) / k)
    off = ~torch.eye(len(x), dtype=torch.bool)
    assert ((est_inner - true_cos).abs() / sigma)[off].max() < 5
    # Norms are preserved up to chi-square noise: relative sd of ||Pg|| is about 1 / sqrt(2k).
    ratio = proj.norm(dim=1) / torch.from_numpy(stats["grad_norm"])
    assert (ratio - 1).abs().max() < 5 / math.sqrt(2 * k)
    unit_proj = proj / proj.norm(dim=1, keepdim=True)
    assert ((unit_proj @ unit_proj.T - true_cos).abs() / sigma)[off].max() < 5


def test_explicit_mean_grad_is_used():
    model, x, y = make("dense", 10, seed=9)
    _, other_x, other_y = make("dense", 15, seed=10)
    _, grads = loop_reference(model, x, y, "mse")
    _, other_grads = loop_reference(model, other_x, other_y, "mse")
    other_mean = other_grads.mean(dim=0)
    stats = per_example_stats(model, x, y, loss="mse", mean_grad=other_mean, batch_size=4)
    for key, value in expected_grad_stats(grads, other_mean).items():
        torch.testing.assert_close(torch.from_numpy(stats[key]), value)
    default = per_example_stats(model, x, y, loss="mse")
    assert np.abs(default["grad_cos_mean"] - stats["grad_cos_mean"]).max() > 1e-3


def test_zero_mean_grad_gives_zero_cosine():
    model, x, y = make("dense", 6, seed=11)
    n_params = sum(p.numel() for p in model.parameters())
    stats = per_example_stats(model, x, y, mean_grad=torch.zeros(n_params, dtype=torch.float64))
    np.testing.assert_array_equal(stats["grad_cos_mean"], np.zeros(6))
    np.testing.assert_array_equal(stats["grad_dot_mean"], np.zeros(6))
    with pytest.raises(ValueError, match="shape"):
        per_example_stats(model, x, y, mean_grad=torch.zeros(n_params + 1))


@pytest.mark.parametrize("training", [True, False])
def test_model_untouched(training):
    model, x, y = make("embedding", 12, seed=12)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean_gradient(model, x, y, batch_size=5)
    per_example_stats(model, x, y, loss="mse", batch_size=5)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
