"""LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm (eval mode): y = x_hat * weight + bias per channel.

The per-example gradients are small ((b, C)), so they are formed explicitly: weight
sum_positions(g * x_hat), bias sum_positions(g), with x_hat recomputed from the saved input
(RMSNorm: x / rms(x), weight only; InstanceNorm: each example's channels normalized by their own
statistics, or by the running ones where the call uses them, as in eval mode with tracked statistics).
BatchNorm with batch statistics (training mode, or track_running_stats=False) couples the
examples of a batch: no per-example gradient exists, and it is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradscope.grad_rules.base import Explicit, arg, register


def _affine(x_hat, G, axis, batch, attrs, channel_dims):
    """Per-example gradients of weight and bias, summing every axis but the batch and channel ones."""
    keep = {axis, *channel_dims}
    dims = [d for d in range(G.dim()) if d not in keep]
    out = {}
    if "weight" in attrs:
        out["weight"] = Explicit((G * x_hat).sum(dims).movedim(_rank(axis, dims), 0) if dims else G * x_hat)
    if "bias" in attrs:
        out["bias"] = Explicit(G.sum(dims).movedim(_rank(axis, dims), 0) if dims else G)
    return out


def _rank(axis, removed):
    return axis - sum(d < axis for d in removed)


def _over_last_axes(ctx, x, out, shape, params: dict, normalize):
    """A norm over the last len(shape) axes with an elementwise affine (layer_norm, rms_norm): every
    leading axis is a batch axis; `normalize` gives x_hat from the input."""
    n = len(shape)

    def features(inp, G, axis, batch, attrs):
        feats = _affine(normalize(inp), G, axis, batch, attrs, range(inp.dim() - n, inp.dim()))
        return {a: Explicit(f.g.reshape(batch, *shape)) for a, f in feats.items()}

    return ctx.use(x, out, params, features, batch_axes=range(x.dim() - n))


@register(F.layer_norm)
def layer_norm_rule(ctx, func, args, kwargs):
    x = arg(args, kwargs, 0, "input")
    shape = tuple(arg(args, kwargs, 1, "normalized_shape"))
    w, b, eps = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias"), arg(args, kwargs, 4, "eps", 1e-5)
    out = func(*args, **kwargs)
    return _over_last_axes(ctx, x, out, shape, {"weight": w, "bias": b}, lambda inp: F.layer_norm(inp, shape, eps=eps))


@register(F.rms_norm)
def rms_norm_rule(ctx, func, args, kwargs):
    x = arg(args, kwargs, 0, "input")
    shape = tuple(arg(args, kwargs, 1, "normalized_shape"))
    w, eps = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "eps")
    out = func(*args, **kwargs)
    return _over_last_axes(ctx, x, out, shape, {"weight": w}, lambda inp: F.rms_norm(inp, shape, eps=eps))


@register(F.instance_norm)
def instance_norm_rule(ctx, func, args, kwargs):
    x, mean, var = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "running_mean"), arg(args, kwargs, 2, "running_var")
    w, b = arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias")
    use_input_stats, eps = arg(args, kwargs, 5, "use_input_stats", True), arg(args, kwargs, 7, "eps", 1e-5)
    if not use_input_stats and (mean is None or var is None):  # F.instance_norm's own error
        return func(*args, **kwargs)
    stats = None if use_input_stats else (mean, var)  # each example by itself, or the running statistics
    out = func(*args, **kwargs)

    def features(inp, G, axis, batch, attrs):
        if stats is None:
            x_hat = F.instance_norm(inp, eps=eps)
        else:
            view = (1, -1) + (1,) * (inp.dim() - 2)
            x_hat = (inp - stats[0].reshape(view)) * torch.rsqrt(stats[1].reshape(view) + eps)
        return _affine(x_hat, G, 0, batch, attrs, (1,))

    return ctx.use(x, out, {"weight": w, "bias": b}, features, batch_axes=(0,))


@register(F.group_norm)
def group_norm_rule(ctx, func, args, kwargs):
    x, groups = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "num_groups")
    w, b, eps = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias"), arg(args, kwargs, 4, "eps", 1e-5)
    out = func(*args, **kwargs)

    def features(inp, G, axis, batch, attrs):
        return _affine(F.group_norm(inp, groups, eps=eps), G, 0, batch, attrs, (1,))

    return ctx.use(x, out, {"weight": w, "bias": b}, features, batch_axes=(0,))


@register(F.batch_norm)
def batch_norm_rule(ctx, func, args, kwargs):
    x, mean, var = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "running_mean"), arg(args, kwargs, 2, "running_var")
    w, b = arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias")
    training, eps = arg(args, kwargs, 5, "training", False), arg(args, kwargs, 7, "eps", 1e-5)
    if training:
        raise ValueError("BatchNorm normalizes with the statistics of the batch (training mode, or "
                         "track_running_stats=False): one example's gradient depends on the others, so per-example "
                         "gradients are not defined. Use the model in eval mode (running statistics), or GroupNorm.")
    out = func(*args, **kwargs)

    def features(inp, G, axis, batch, attrs):
        view = (1, -1) + (1,) * (inp.dim() - 2)
        x_hat = (inp - mean.reshape(view)) * torch.rsqrt(var.reshape(view) + eps)
        return _affine(x_hat, G, 0, batch, attrs, (1,))

    return ctx.use(x, out, {"weight": w, "bias": b}, features, batch_axes=(0,))
