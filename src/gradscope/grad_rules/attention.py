"""nn.MultiheadAttention: its packed in-projection and its out-projection as Linear uses.

F.multi_head_attention_forward uses `in_proj_weight` (a raw parameter) and
`out_proj.weight` through F.linear inside one function, so module hooks never see them.
This rule runs the in-projection itself through the Linear rule (one call for
self-attention; for distinct query/key/value, one call each, whose unused thirds get a zero
gradient), then torch's own function with identity projections, so every mask, head split,
dropout and need_weights option is torch's, and finally the out-projection through the
Linear rule. Multiplying by an identity matrix is exact, so the output is unchanged.
Separate q/k/v weights, unbatched inputs and static keys leave the call as it is: those
parameters then go to the fallback.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from gradscope.grad_rules.base import register
from gradscope.grad_rules.linear import linear_rule

_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@register(F.multi_head_attention_forward)
def attention_rule(ctx, func, args, kwargs):
    a = _SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    p = dict(a.arguments)
    q, k, v = p["query"], p["key"], p["value"]
    if (q.dim() != 3 or p["use_separate_proj_weight"] or p["static_k"] is not None or p["static_v"] is not None
            or p["in_proj_weight"] is None):
        return func(*args, **kwargs)
    E = p["embed_dim_to_check"]
    W, b = p["in_proj_weight"], p["in_proj_bias"]

    def project(x):
        return linear_rule(ctx, F.linear, (x, W, b), {})

    if q is k and k is v:
        q, k, v = project(q).chunk(3, dim=-1)
    else:
        q, k, v = project(q)[..., :E], project(k)[..., E : 2 * E], project(v)[..., 2 * E :]
    eye = torch.eye(E, dtype=W.dtype, device=W.device)
    p.update(query=q, key=k, value=v, in_proj_weight=None, in_proj_bias=None, use_separate_proj_weight=True,
             q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye, out_proj_weight=eye, out_proj_bias=None)
    W_out, b_out = a.arguments["out_proj_weight"], a.arguments["out_proj_bias"]
    attn, weights = func(**p)  # (L, N, E): the heads' output before the out-projection
    return linear_rule(ctx, F.linear, (attn, W_out, b_out), {}), weights
