"""nn.Conv1d / nn.Conv2d / nn.Conv3d (any stride, padding, dilation and groups, depthwise included).

The input is unfolded to patches (b, L, C kh kw): the L output positions are the tokens of
a Linear per group, so G_n = blockdiag_j(sum_t g_{t,j} h_{t,j}^T) for the weight seen as
(out, C/groups kh kw). Patches are unfolded one sub-batch at a time. A Conv1d is a Conv2d of
height 1; a Conv3d's patches are strided views of the padded input, one copy (`_unfold_nd`: torch
has no 3-D im2col). Other padding modes reach here already padded (nn.Conv pads, then calls F.conv with 0).
Where the explicit per-example gradients are cheaper than the T x T Gram (most convolutions),
they come from one convolution weight-gradient kernel over the batch folded into the groups
(n * groups), which is faster than unfolding and a batched matmul. Where the Gram path is
cheaper, a 1-D convolution of one group takes it without unfolding (`_unfolding_free_1d`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gradscope.grad_rules.base import Explicit, Tokens, arg, register


def _pair(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _numeric_padding(padding, kernel, dilation):
    """Padding as numbers, or None for an asymmetric "same" (which F.conv pads by hand)."""
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return (0,) * len(kernel)
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)


def _unfold_nd(x, kernel, stride, padding, dilation):
    """(b, C, *spatial) -> (b, L, C prod(kernel)), in the order of weight.reshape(out, -1), for any number
    of spatial axes: the padded input's windows as a strided view (Tensor.unfold per axis), then one copy.
    `padding`: numbers per axis, or "valid" / "same" (possibly asymmetric, padded as F.conv pads it)."""
    nd = len(kernel)
    if isinstance(padding, str):
        padding = (0,) * nd if padding == "valid" else None
    if padding is None:  # "same"
        pads = []
        for d, k in zip(reversed(dilation), reversed(kernel)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(padding) for _ in (0, 1)]
    u = F.pad(x, pads) if any(pads) else x
    for i in range(nd):
        u = u.unfold(2 + i, dilation[i] * (kernel[i] - 1) + 1, stride[i])  # axis 2 + i -> positions, window last
    if any(d > 1 for d in dilation):
        u = u[(...,) + tuple(slice(None, None, d) for d in dilation)]
    b, C = u.shape[:2]
    L = u.shape[2 : 2 + nd].numel()
    # (b, C, *positions, *window) -> (b, *positions, C, *window)
    return u.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)).reshape(b, L, C * math.prod(kernel))


def _patches(x, kernel, stride, padding, dilation, groups):
    """(b, C, *spatial) -> (b, L, groups, C/groups prod(kernel)) in the order of weight.reshape(out, -1)."""
    nd = len(kernel)
    if nd > 2:
        cols = _unfold_nd(x, kernel, stride, padding, dilation)
        b, L, ckk = cols.shape
        return cols.reshape(b, L, groups, ckk // groups)
    if nd == 1 and not isinstance(padding, str):  # a strided view and one copy: faster than im2col in 1-D
        xp = F.pad(x, (padding[0], padding[0])) if padding[0] else x
        u = xp.unfold(2, dilation[0] * (kernel[0] - 1) + 1, stride[0])  # (b, C, L, span)
        if dilation[0] > 1:
            u = u[..., :: dilation[0]]
        b, C, L, k = u.shape
        return u.permute(0, 2, 1, 3).reshape(b, L, groups, C // groups * k)
    if nd == 1:  # Conv1d as a Conv2d of height 1
        x, kernel, stride, dilation = x.unsqueeze(2), (1, *kernel), (1, *stride), (1, *dilation)
        padding = padding if isinstance(padding, str) else (0, *padding)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same": possibly asymmetric, as F.conv pads it
            pads = []
            for d, k in zip(reversed(dilation), reversed(kernel)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x, padding = F.pad(x, pads), (0, 0)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (b, C kk, L)
    b, ckk, L = cols.shape
    return cols.reshape(b, groups, ckk // groups, L).permute(0, 3, 1, 2)


# The 1-D Gram path splits positions into residue classes modulo the stride when each class is at
# least this long (shorter ones make batched matmuls of tiny matrices, slower than one whole Gram).
RESIDUE_MIN_LENGTH = 16


def _unfolding_free_1d(x, T, wshape, stride, pad, dilation) -> dict:
    """Tokens' gram_fn and apply_fn for a 1-D convolution of one group, without unfolding patches,
    where the input's Grams below are at most twice the size of the patches (b, T, C kernel).

    h_t . h_s = sum_j X2[t stride + o_j, s stride + o_j] over the kernel offsets o_j = j dilation,
    with X2 = x^T x over channels (the padded input). Only entries whose two positions agree
    modulo the stride are read, so X2 is formed per residue class r of the offsets: with
    o_j = q_j stride + r, the entry is X2_r[t + q_j, s + q_j], X2_r the Gram of positions r,
    r + stride, ... (1 / stride of the work of the whole Gram; one whole Gram, step 1, where the
    classes are shorter than RESIDUE_MIN_LENGTH). H @ W is a convolution with W's columns as kernels."""
    C, kernel = wshape
    L = x.shape[-1] + 2 * pad
    step = stride if L // stride >= RESIDUE_MIN_LENGTH else 1  # classes too short for an efficient bmm: one Gram
    offsets = [(j * dilation // step, j * dilation % step) for j in range(kernel)]  # (q_j, r_j) in units of step
    lengths = {r: -(-(L - r) // step) for _, r in offsets}
    if sum(n * n for n in lengths.values()) > 2 * T * C * kernel:
        return {}

    def gram():
        xp = F.pad(x, (pad, pad)) if pad else x
        grams = {}
        for r, n in lengths.items():
            xr = xp[:, :, r::step].contiguous() if step > 1 else xp  # a strided operand slows bmm down
            grams[r] = xr.transpose(1, 2) @ xr  # (b, n, n)
        b, s = len(xp), stride // step  # positions t stride = (t s) step
        total = None
        for q, r in offsets:
            n = lengths[r]
            v = grams[r].as_strided((b, T, T), (n * n, s * n, s), q * (n + 1))
            total = v.clone() if total is None else total.add_(v)
        return total

    def apply(W):  # (C kernel, m) in weight.reshape(out, -1)'s column order
        m = W.shape[1]
        return F.conv1d(x, W.T.reshape(m, C, kernel), None, stride, pad, dilation).transpose(1, 2)

    return {"gram_fn": gram, "apply_fn": apply}


def _conv_rule(nd):
    def rule(ctx, func, args, kwargs):
        x, w, b = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
        out = func(*args, **kwargs)
        if x.dim() != nd + 2:  # unbatched call
            return out
        stride = _pair(arg(args, kwargs, 3, "stride", 1), nd)
        padding = arg(args, kwargs, 4, "padding", 0)
        padding = padding if isinstance(padding, str) else _pair(padding, nd)
        dilation = _pair(arg(args, kwargs, 5, "dilation", 1), nd)
        groups = arg(args, kwargs, 6, "groups", 1)
        kernel = tuple(w.shape[2:])

        def features(inp, G, axis, batch, attrs):
            c_out = G.shape[1] // groups
            Gt = G.reshape(batch, groups, c_out, -1).permute(0, 3, 1, 2)  # (b, L, groups, c_out)
            feats = {}
            if "weight" in attrs:
                pad = _numeric_padding(padding, kernel, dilation)

                def explicit(s, e):  # per-example weight gradients: one convolution backward, groups = n * groups
                    xs, gs = inp[s:e], G[s:e]
                    n = len(xs)
                    size = (n * w.shape[0], *w.shape[1:])
                    gw = torch.ops.aten.convolution_backward(
                        gs.reshape(1, n * gs.shape[1], *gs.shape[2:]), xs.reshape(1, n * xs.shape[1], *xs.shape[2:]),
                        gs.new_empty(1).expand(size), None, stride, pad, dilation, False, (0,) * nd, n * groups,
                        (False, True, False))[1]
                    return gw.reshape(n, groups, w.shape[0] // groups, -1)

                fns = {}
                if nd == 1 and groups == 1 and pad is not None:
                    fns = _unfolding_free_1d(inp, G.shape[-1], w.shape[1:], stride[0], pad[0], dilation[0])
                feats["weight"] = Tokens(Gt, h_fn=lambda s, e: _patches(inp[s:e], kernel, stride, padding, dilation,
                                                                        groups),
                                         c_in=w.shape[1] * w[0, 0].numel(), e_fn=explicit if pad is not None else None,
                                         **fns)
            if "bias" in attrs:
                feats["bias"] = Explicit(G.reshape(batch, G.shape[1], -1).sum(-1))
            return feats

        return ctx.use(x, out, {"weight": w, "bias": b}, features, batch_axes=(0,))
    return rule


register(F.conv1d)(_conv_rule(1))
register(F.conv2d)(_conv_rule(2))
register(F.conv3d)(_conv_rule(3))
