"""nn.Embedding / F.embedding and nn.EmbeddingBag / F.embedding_bag: G_n = sum_t e_{id_t} c_t g_t^T.

Embedding: the tokens t of an example, c_t = 1; rows at padding_idx get no gradient.
EmbeddingBag (modes "sum" and "mean", a 2-D input of fixed-length bags or a 1-D input with
offsets, per_sample_weights, padding_idx): one bag per example, its output-gradient g shared by
the bag's tokens, c_t the token's per_sample_weight ("sum") or 1 / the bag's number of non-padding
tokens ("mean"), 0 at padding_idx. Bags of several lengths are padded to the longest one with
c = 0. A call with several bags per example (its bag count not the batch size) is left to the
fallback, and so are mode "max" and max_norm (which renormalizes rows in place).

scale_grad_by_freq=True divides each token's gradient by its count in the whole input of the
call: a batch's gradient is then not the sum of its examples' gradients (each scaled by its own
counts), so the mean gradient of a chunked pass (gradscope.examples.mean_gradient) differs from
the mean of the per-example gradients, at any batch size the examples do not fit in. It is
refused with a ValueError naming the layer (`_refuse_scale_grad_by_freq`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradscope.grad_rules.base import EmbeddingTokens, Stat, arg, register
from gradscope.projection_map import Projection


def _refuse_scale_grad_by_freq(ctx, w, kind: str) -> None:
    """A ValueError naming the layer of `w`, when it is one of the parameters the statistics cover."""
    name = ctx.names_by_id.get(id(w))
    if name is None:  # frozen or not included: its gradient is not needed
        return
    layer = name.rsplit(".", 1)[0] if "." in name else name
    raise ValueError(
        f"{kind} {layer!r} ({name}) has scale_grad_by_freq=True: its gradient is divided by each token's count "
        "in the whole batch, so a batch's gradient is not the sum of its examples' gradients and the mean gradient "
        "(and every dot and cosine with it) would depend on how the examples are chunked. Per-example statistics "
        "are refused for it: build the layer with scale_grad_by_freq=False, or freeze its weight "
        "(requires_grad=False, with trainable_only=True).")


@register(F.embedding)
def embedding_rule(ctx, func, args, kwargs):
    ids, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    if arg(args, kwargs, 5, "scale_grad_by_freq", False):
        _refuse_scale_grad_by_freq(ctx, w, "Embedding")
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


def bag_tokens(ids, offsets, psw, include_last_offset: bool, padding_idx, mean: bool, dtype):
    """The bags of one F.embedding_bag call as padded tokens: ids (B, L) and coefficients c (B, L) of dtype
    `dtype` (per_sample_weights or 1, divided by the bag's count of non-padding tokens in mean mode; 0 at
    padding_idx and in the padding of bags shorter than the longest)."""
    if ids.dim() == 2:  # B bags of N tokens each
        idt = ids
        c = psw.detach().to(dtype) if psw is not None else torch.ones(ids.shape, dtype=dtype, device=ids.device)
        if padding_idx is not None:
            c = c.masked_fill(idt == padding_idx, 0.0)
        if mean:
            c = c / (idt != padding_idx).sum(1, keepdim=True).clamp_min(1).to(dtype) if padding_idx is not None \
                else c / max(1, ids.shape[1])
        return idt, c
    n = ids.shape[0]
    offsets = offsets.to(device=ids.device, dtype=torch.long)
    starts = offsets[:-1] if include_last_offset else offsets
    end = offsets[-1] if include_last_offset else torch.tensor(n, device=ids.device)
    B = starts.shape[0]
    position = torch.arange(n, device=ids.device)
    bag = torch.bucketize(position, starts, right=True) - 1  # the last bag starting at or before each token
    valid = (bag >= 0) & (position < end)
    bag = bag.clamp_min(0)
    pos = position - starts[bag]
    c = psw.detach().to(dtype) if psw is not None else torch.ones(n, dtype=dtype, device=ids.device)
    if padding_idx is not None:
        valid = valid & (ids != padding_idx)
    c = c * valid
    if mean:
        counts = torch.zeros(B, dtype=dtype, device=ids.device).index_add_(0, bag, valid.to(dtype))
        c = c / counts.clamp_min(1)[bag]
    length = int(pos[valid].max()) + 1 if bool(valid.any()) else 1
    keep = valid & (pos < length)
    idt = torch.zeros(B, length, dtype=torch.long, device=ids.device)
    ct = torch.zeros(B, length, dtype=dtype, device=ids.device)
    idt[bag[keep], pos[keep]] = ids[keep].long()
    ct[bag[keep], pos[keep]] = c[keep]
    return idt, ct


class BagTokens(EmbeddingTokens):
    """An EmbeddingBag's per-example gradients, one bag per example: G_n = s_n g_n^T with s_n = sum_t c_t e_{id_t}
    (ids, c (b, T): the bag's tokens and coefficients; g (b, d): the bag's output-gradient). A rank-one matrix:
    |G_n|^2 = |s_n|^2 |g_n|^2 (|s_n|^2 from the bag's sorted ids: O(T log T), no d factor) and <G_n, M> =
    g_n . sum_t c_t M[id_t] (an embedding_bag of M). The tokens c_t g_n (`G`, (b, T, d)) are formed only for
    the sum and the explicit gradients, for combining with other uses of the weight, and for the projection
    of a map that defines its own `add_embedding_sums` (the default one, from the map's Kronecker factors,
    is summed over the bag's tokens first)."""

    def __init__(self, ids, c, g, num_embeddings: int):
        self.ids, self.c, self.g, self.V = ids, c, g, num_embeddings

    @property
    def G(self):
        return self.c.unsqueeze(-1) * self.g.unsqueeze(1)

    def sum(self, shape):
        d = self.g.shape[-1]
        rows = self.ids.reshape(-1)
        out = torch.zeros(self.V, d, dtype=self.g.dtype, device=self.g.device)
        return out.index_add_(0, rows, self.G.reshape(-1, d)).reshape(shape)

    def stats(self, M, f, acc):
        ids, c, g = self.ids, self.c, self.g
        b, T = ids.shape
        if T == 1:
            s2 = c[:, 0].square()
        else:  # |s_n|^2: the coefficients summed over each run of equal ids in the sorted bag, squared
            sid, perm = ids.sort(1)
            new = torch.ones_like(sid, dtype=torch.bool)
            new[:, 1:] = sid[:, 1:] != sid[:, :-1]
            run = torch.arange(b, device=ids.device).unsqueeze(1) * T + new.cumsum(1) - 1
            S = torch.zeros(b * T, dtype=c.dtype, device=c.device).index_add_(0, run.reshape(-1),
                                                                            c.gather(1, perm).reshape(-1))
            s2 = S.square().reshape(b, T).sum(1)
        sq = s2 * g.square().sum(1)
        M = M.reshape(self.V, -1)
        dot = (F.embedding_bag(ids, M, per_sample_weights=c.to(M.dtype), mode="sum") * g).sum(1)
        if type(f).add_embedding_sums is Projection.add_embedding_sums:
            # The map's own formula from its Kronecker factors, sum_t A[id_t] * ((c_t g) @ B), summed over the
            # tokens first: (sum_t c_t A[id_t]) * (g @ B), without the (b, T, d) tokens.
            A = f.A
            acc += F.embedding_bag(ids, A, per_sample_weights=c.to(A.dtype), mode="sum") * (g.to(A.dtype) @ f.B)
        else:
            f.add_embedding_sums(acc, ids, self.G)
        return Stat(sq, dot)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ids, self.c, self.g))


@register(F.embedding_bag)
def embedding_bag_rule(ctx, func, args, kwargs):
    ids, w = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    if torch.is_tensor(ids) and torch.is_tensor(w) and ids.is_floating_point() and not w.is_floating_point():
        ids, w = w, ids  # the legacy order (weight, input), which F.embedding_bag still accepts
    if arg(args, kwargs, 5, "scale_grad_by_freq", False):
        _refuse_scale_grad_by_freq(ctx, w, "EmbeddingBag")
    out = func(*args, **kwargs)
    offsets, mode = arg(args, kwargs, 2, "offsets"), arg(args, kwargs, 6, "mode", "mean")
    psw, last = arg(args, kwargs, 8, "per_sample_weights"), arg(args, kwargs, 9, "include_last_offset", False)
    padding_idx = arg(args, kwargs, 10, "padding_idx")
    if (arg(args, kwargs, 3, "max_norm") is not None or mode not in ("sum", "mean") or ids.is_nested
            or ids.dim() not in (1, 2) or (ids.dim() == 1 and offsets is None)):
        return out
    if padding_idx is not None and padding_idx < 0:
        padding_idx += w.shape[0]
    # The bags are the output's rows: a tensor of one entry per bag stands for the call's input (the batch axis
    # the probe finds is the bags' axis), the tokens themselves are read from the call's arguments.
    n_bags = out.shape[0]
    handle = ids if ids.dim() == 2 else torch.zeros(n_bags, 1, dtype=torch.long, device=ids.device)

    def features(inp, G, axis, batch, attrs):
        idt, c = bag_tokens(ids, offsets, psw, last, padding_idx, mode == "mean", G.dtype)
        return {"weight": BagTokens(idt, c, G, w.shape[0])}

    return ctx.use(handle, out, {"weight": w}, features, batch_axes=(0,))
