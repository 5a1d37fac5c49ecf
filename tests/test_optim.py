"""The optimizer a config asks for, each step against a hand computation; clipping as applied;
the dynamics log's Adam statistics; the update that update sharpness measures, for every optimizer."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradscope import checkpoints, curvature, data, dynamics, train
from gradscope.config import expand_runs, load_config, train_slice
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec
from gradscope.optim import build_optimizer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

BASE = {"lr": 0.1, "momentum": 0.0, "nesterov": False, "alpha": 0.99, "weight_decay": 0.0, "betas": [0.9, 0.999],
        "eps": 1e-8}


def two_steps(cfg):
    """Two updates of one (3,) parameter from theta0 with fixed gradients g1, g2: the trajectory and the optimizer."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = build_optimizer([p], {**BASE, **cfg})
    thetas = [p.detach().clone()]
    for g in GRADS:
        p.grad = g.clone()
        opt.step()
        thetas.append(p.detach().clone())
    return thetas, opt


GRADS = [torch.tensor([0.3, -0.1, 2.0], dtype=torch.float64), torch.tensor([-0.2, 0.4, 1.0], dtype=torch.float64)]
THETA0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def hand_sgd(lr, mu, wd, nesterov):
    theta, buf, out = THETA0.clone(), None, [THETA0.clone()]
    for g in GRADS:
        g = g + wd * theta
        buf = g.clone() if buf is None else mu * buf + g
        d = g + mu * buf if nesterov else buf
        theta = theta - lr * d
        out.append(theta)
    return out


def hand_adam(lr, b1, b2, eps, wd, decoupled):
    theta, m, v, out = THETA0.clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), [THETA0.clone()]
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            theta = theta * (1 - lr * wd)
        else:
            g = g + wd * theta
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
        out.append(theta)
    return out


def hand_rmsprop(lr, alpha, eps, wd, mu):
    theta, v, buf, out = THETA0.clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), [THETA0.clone()]
    for g in GRADS:
        g = g + wd * theta
        v = alpha * v + (1 - alpha) * g**2
        step = g / (v.sqrt() + eps)
        if mu > 0:
            buf = mu * buf + step
            step = buf
        theta = theta - lr * step
        out.append(theta)
    return out


def assert_trajectory(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_nesterov_and_weight_decay_steps(nesterov):
    cfg = {"name": "sgd", "lr": 0.3, "momentum": 0.8, "weight_decay": 0.05, "nesterov": nesterov}
    thetas, opt = two_steps(cfg)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.8, 0.05, nesterov)
    assert_trajectory(thetas, hand_sgd(0.3, 0.8, 0.05, nesterov))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_steps_with_their_betas_eps_and_weight_decay(name):
    # eps and betas far from their defaults, so a hard-coded one changes the step
    cfg = {"name": name, "lr": 0.05, "betas": [0.7, 0.8], "eps": 0.3, "weight_decay": 0.5}
    thetas, opt = two_steps(cfg)
    assert type(opt) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.7, 0.8), 0.3, 0.5)
    assert_trajectory(thetas, hand_adam(0.05, 0.7, 0.8, 0.3, 0.5, decoupled=name == "adamw"))
    # the two differ: AdamW's decay is decoupled from the moments (the grokking runs rely on it)
    other = hand_adam(0.05, 0.7, 0.8, 0.3, 0.5, decoupled=name != "adamw")
    assert (thetas[2] - other[2]).abs().max() > 1e-3


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_rmsprop_step_with_its_alpha_eps_and_momentum(momentum):
    cfg = {"name": "rmsprop", "lr": 0.02, "alpha": 0.7, "eps": 0.05, "weight_decay": 0.1, "momentum": momentum}
    thetas, opt = two_steps(cfg)
    assert type(opt) is torch.optim.RMSprop
    group = opt.param_groups[0]
    assert (group["alpha"], group["eps"], group["momentum"], group["weight_decay"]) == (0.7, 0.05, momentum, 0.1)
    assert_trajectory(thetas, hand_rmsprop(0.02, 0.7, 0.05, 0.1, momentum))


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(ValueError, match="optim.name: 'lion'.*allowed: 'sgd', 'adam', 'adamw', 'rmsprop'"):
        build_optimizer([nn.Parameter(torch.zeros(1))], {**BASE, "name": "lion"})


# ---- the training loop: clipping as applied ---------------------------------------------------
def full_batch_run(tmp_path, **optim):
    cfg = {"device": "cpu", "experiments": {"t": {
        "data": {"generator": "planted_flips", "planted_flips": {"n_train": 40, "n_test": 10, "n_features": 4}},
        "model": {"depth": 1, "width": 6},
        "optim": {"name": "sgd", "lr": 0.5, **optim},
        "train": {"steps": 2, "log_every": 1, "checkpoints": {"every": 1}},
    }}}
    settings = train_slice(expand_runs(load_config(cfg))[0].settings)
    tr, te, meta = data.generate(settings["data"])
    folder = tmp_path / "data"
    data.write_dataset(tr, te, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
    splits = data.load_split(folder, "train")[:2], data.load_split(folder, "test")[:2]
    metrics = train.train(settings, *splits, InputSpec.from_dict(meta["input"]), tmp_path / "out", "x")
    models = [checkpoints.load(tmp_path / "out" / "checkpoints" / checkpoints.checkpoint_name(s))[0] for s in (0, 1)]
    return metrics, models, splits[0]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def full_gradient(model, x, y):
    model.zero_grad()
    per_example_loss(model(x), y, "cross_entropy").mean().backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    return g


@pytest.mark.parametrize("clip_ratio", [0.01, 3.0])
def test_the_update_is_clipped_to_grad_clip_only_when_the_gradient_is_longer(tmp_path, clip_ratio):
    # the first full-batch gradient's norm, measured on a throwaway run without clipping
    _, (m0, _), (x, y) = full_batch_run(tmp_path / "probe")
    g = full_gradient(m0, x, y)
    clip = clip_ratio * float(g.norm())
    metrics, (before, after), _ = full_batch_run(tmp_path / "clipped", grad_clip=clip)
    update = flat_params(after) - flat_params(before)
    expected = -0.5 * g * min(1.0, clip / float(g.norm()))  # SGD without momentum: -lr * clipped gradient
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-7)
    assert bool(metrics["clipped"].iloc[0]) == (clip_ratio < 1)
    if clip_ratio < 1:
        assert float(update.norm()) == pytest.approx(0.5 * clip, rel=1e-4)


# ---- the dynamics log's Adam statistics ----------------------------------------------------
def test_dynamics_adam_statistics_match_a_hand_computation_with_bias_correction():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.2)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    for _ in range(2):  # t = 2: the bias corrections 1/(1-0.8^2), 1/(1-0.9^2) are far from 1
        opt.zero_grad()
        per_example_loss(model(x), y, "cross_entropy").mean().backward()
        opt.step()
    opt.zero_grad()
    per_example_loss(model(x), y, "cross_entropy").mean().backward()
    rows = {r["layer"]: r for r in dynamics.layer_dynamics(model, opt, 2, lr=0.007)}
    for name, p in model.named_parameters():
        st = opt.state[p]
        m_hat, v_hat = st["exp_avg"] / (1 - 0.8**2), st["exp_avg_sq"] / (1 - 0.9**2)
        denom = v_hat.sqrt() + 1e-3
        row = rows[name]
        assert row["adam_eff_lr_median"] == pytest.approx(float((0.007 / denom).median()), rel=1e-10)
        assert row["adam_snr_median"] == pytest.approx(float((m_hat.abs() / denom).median()), rel=1e-10)
        ratio = 0.007 * float((m_hat / denom).norm()) / (0.007 * 0.2 * float(p.detach().norm()))
        assert row["update_to_decay_ratio"] == pytest.approx(ratio, rel=1e-10)
        assert row["grad_norm"] == pytest.approx(float(p.grad.norm()), rel=1e-12)
        assert row["weight_norm"] == pytest.approx(float(p.detach().norm()), rel=1e-12)


def test_dynamics_tiers_split_the_gradient_by_weight_magnitude():
    w = torch.arange(1.0, 41.0).flip(0)  # magnitudes 40..1
    g = torch.arange(40.0)  # g[i] belongs to the weight 40 - i
    p = nn.Parameter(w.clone())
    p.grad = g.clone()
    model = nn.Module()
    model.w = p
    row = dynamics.layer_dynamics(model, torch.optim.SGD([p], lr=0.1), 0, 0.1)[0]
    # 40 weights: the 2 largest (40, 39) are the top 5%, the 2 smallest (1, 2) the bottom 5%
    assert row["grad_norm_top5"] == pytest.approx(math.hypot(0, 1))
    assert row["grad_norm_bottom5"] == pytest.approx(math.hypot(39, 38))
    assert row["grad_norm_mid90"] == pytest.approx(float(g[2:38].norm()))
    assert math.isnan(row["adam_eff_lr_median"])  # SGD has no Adam state


# ---- update sharpness along Adam, AdamW and RMSprop updates -----------------------------------
def adam_like_state(model, cfg, x, y, steps=3):
    """The state dict of the configured optimizer after `steps` full-batch updates on a copy of the model."""
    other = copy.deepcopy(model)
    opt = build_optimizer(other.parameters(), cfg)
    for _ in range(steps):
        opt.zero_grad()
        per_example_loss(other(x), y, "cross_entropy").mean().backward()
        opt.step()
    return opt.state_dict()


def hand_update(cfg, state, model, g, lr):
    """The optimizer's next update from its saved state, computed by hand (flat, named_parameters order)."""
    theta = flat_params(model)
    per = [state["state"][i] for i in range(len(list(model.parameters())))]
    name, wd, eps = cfg["name"], cfg["weight_decay"], cfg["eps"]
    if name in ("adam", "adamw"):
        b1, b2 = cfg["betas"]
        m = torch.cat([s["exp_avg"].reshape(-1) for s in per])
        v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in per])
        t = float(per[0]["step"]) + 1
        gg = g + wd * theta if name == "adam" else g
        m, v = b1 * m + (1 - b1) * gg, b2 * v + (1 - b2) * gg**2
        step = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        return -step - (lr * wd * theta if name == "adamw" else 0)
    v = torch.cat([s["square_avg"].reshape(-1) for s in per])
    gg = g + wd * theta
    v = cfg["alpha"] * v + (1 - cfg["alpha"]) * gg**2
    return -lr * gg / (v.sqrt() + eps)


@pytest.mark.parametrize("cfg", [
    {"name": "adam", "lr": 0.02, "betas": [0.8, 0.9], "eps": 1e-3, "weight_decay": 0.1},
    {"name": "adamw", "lr": 0.02, "betas": [0.8, 0.9], "eps": 1e-3, "weight_decay": 0.5},
    {"name": "rmsprop", "lr": 0.01, "alpha": 0.8, "eps": 1e-3, "weight_decay": 0.1},
], ids=["adam", "adamw", "rmsprop"])
def test_update_sharpness_along_the_adaptive_optimizers_own_update(cfg):
    from support.curvature import exact_hessian, make_problem

    model, x, y = make_problem(170)
    cfg = {**BASE, **cfg}
    state = adam_like_state(model, cfg, x, y)
    g = full_gradient(model, x, y)
    u = curvature.optimizer_update(model, state, cfg, x, y, step=3, lr=0.015)
    want = hand_update(cfg, state, model, g, 0.015)
    torch.testing.assert_close(u, want, rtol=1e-9, atol=1e-12)
    # the update from a fresh optimizer differs: the state matters
    fresh = curvature.optimizer_update(model, None, cfg, x, y, step=3, lr=0.015)
    assert float((fresh - want).norm()) > 1e-3 * float(want.norm())
    H = exact_hessian(model, x, y, "cross_entropy")
    expected = float(want @ H @ want / (want @ want))
    result = curvature.compute_curvature(model, x, y, {"lanczos_iters": 10, "fisher": False, "gauss_newton_samples": 0,
                                                       "input_sensitivity": False, "trace_max_samples": 2}, update=u)
    assert result["update_sharpness"] == pytest.approx(expected, rel=1e-8)
