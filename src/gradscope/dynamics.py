"""Inside the optimizer while it trains: per-layer measures for the dynamics log.

Per parameter tensor ("layer"): the weight norm; the gradient norm, also split over three
tiers of that tensor's weights by magnitude (top 5%, middle 90%, bottom 5%), so dormant weights
can be seen waking up; and for Adam-family optimizers the median effective learning rate
lr / (sqrt(v_hat) + eps), the median |m_hat| / sqrt(v_hat) (a signal-to-noise ratio of the
update), and the ratio of the Adam update's size to the weight decay's size, from the
optimizer's state before the step (m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)).
"""

from __future__ import annotations

import math

import torch

from gradscope.tables import DYNAMICS

TIERS = (("top5", 0.95, 1.0), ("mid90", 0.05, 0.95), ("bottom5", 0.0, 0.05))

COLUMNS = list(DYNAMICS)  # the dynamics table's columns, in file order


def _tier_norms(w: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """Gradient norm over the weights in each magnitude tier of this tensor."""
    mag, grad = w.detach().abs().flatten(), g.detach().flatten()
    order = torch.argsort(mag)  # ascending magnitude
    n = mag.numel()
    out = {}
    for name, lo, hi in TIERS:
        idx = order[int(math.floor(lo * n)) : int(math.floor(hi * n))]
        out[f"grad_norm_{name}"] = float(grad[idx].norm()) if idx.numel() else float("nan")
    return out


@torch.no_grad()
def layer_dynamics(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, lr: float,
                   grad_scale: float = 1.0) -> list[dict]:
    """One row per parameter tensor: see the module docstring. Gradients must be in .grad, times
    1/grad_scale (a GradScaler's gradients before unscaling; 1 for plain ones)."""
    group = optimizer.param_groups[0]
    adam = "betas" in group
    rows = []
    for name, p in model.named_parameters():
        grad = None if p.grad is None else (p.grad if grad_scale == 1.0 else p.grad.float() * grad_scale)
        row = {"step": step, "layer": name, "weight_norm": float(p.norm()),
               "grad_norm": float(grad.norm()) if grad is not None else float("nan")}
        row.update(_tier_norms(p, grad) if grad is not None else {f"grad_norm_{t}": float("nan") for t, _, _ in TIERS})
        row.update(adam_eff_lr_median=float("nan"), adam_snr_median=float("nan"), update_to_decay_ratio=float("nan"))
        state = optimizer.state.get(p, {})
        if adam and "exp_avg" in state:
            (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
            t = float(state["step"])
            m_hat = state["exp_avg"] / (1 - b1**t)
            denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt()
            row["adam_eff_lr_median"] = float((lr / (denom + eps)).median())
            row["adam_snr_median"] = float((m_hat.abs() / (denom + eps)).median())
            decay = lr * wd * float(p.norm())
            row["update_to_decay_ratio"] = float(lr * (m_hat / (denom + eps)).norm()) / decay if decay > 0 else float("nan")
        rows.append(row)
    return rows
