"""nn.Embedding and F.embedding: G_n = sum_t e_{id_t} g_t^T; rows at padding_idx get no gradient.

max_norm (which renormalizes rows in place) and scale_grad_by_freq (a gradient that depends
on the whole batch) are left to the fallback.
"""

from __future__ import annotations

import torch.nn.functional as F

from gradscope.grad_rules.base import EmbeddingTokens, arg, register


@register(F.embedding)
def embedding_rule(ctx, func, args, kwargs):
    ids, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    out = func(*args, **kwargs)
    padding_idx = arg(args, kwargs, 2, "padding_idx")
    if arg(args, kwargs, 3, "max_norm") is not None or arg(args, kwargs, 5, "scale_grad_by_freq", False):
        return out
    if padding_idx is not None and padding_idx < 0:
        padding_idx += w.shape[0]

    def features(inp, G, axis, batch, attrs):
        d = G.shape[-1]
        Gt = G.movedim(0 if axis is None else axis, 0).reshape(batch, -1, d)
        idt = inp.reshape(1, -1).expand(batch, -1) if axis is None else inp.movedim(axis, 0).reshape(batch, -1)
        if padding_idx is not None:
            Gt = Gt.masked_fill((idt == padding_idx).unsqueeze(-1), 0.0)
        return {"weight": EmbeddingTokens(idt, Gt, w.shape[0])}

    return ctx.use(ids, out, {"weight": w}, features, broadcastable=True, batch_axes=range(ids.dim()))
