"""nn.Linear and every F.linear call (tied weights, attention projections): G_n = sum_t g_t h_t^T."""

from __future__ import annotations

import torch.nn.functional as F

from gradscope.grad_rules.base import Explicit, Tokens, arg, register, seq_tokens


def linear_features(x, G, axis, batch, attrs):
    """Features of one F.linear call from its input x (..., in) and output-gradient G (..., out)."""
    n_in, n_out = x.shape[-1], G.shape[-1]
    Gt = seq_tokens(G, 0 if axis is None else axis, batch, n_out)  # a broadcast output was expanded on axis 0
    out = {}
    if "weight" in attrs:
        out["weight"] = Tokens(Gt.unsqueeze(2), seq_tokens(x, axis, batch, n_in).unsqueeze(2))
    if "bias" in attrs:
        out["bias"] = Explicit(Gt[:, 0] if Gt.shape[1] == 1 else Gt.sum(1))  # one token: a view, no copy
    return out


@register(F.linear)
def linear_rule(ctx, func, args, kwargs):
    x, w, b = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    out = func(*args, **kwargs)
    if x.dim() < 2:
        return out
    return ctx.use(x, out, {"weight": w, "bias": b}, linear_features, broadcastable=True,
                   batch_axes=range(x.dim() - 1))
