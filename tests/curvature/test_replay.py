"""optimizer_update (gradscope.curvature.replay): the update an optimizer step makes, replayed."""

from __future__ import annotations

import copy
import pytest
import torch
from torch.testing import assert_close

from gradscope.curvature import optimizer_update
from gradscope.losses import per_example_loss
from support.curvature import assert_untouched, flat_fn, make_problem, snapshot

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


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
