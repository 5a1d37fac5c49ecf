"""The contract every per-layer rule follows, the per-example gradient representations, and the registry.

A rule is registered for one torch function (F.linear, F.conv2d, ...). While the engine
captures a forward pass, every call of a registered function goes to its rule, which runs
the function and hands the engine, through `ctx.use`, one *use*: the parameters the call
used, the input it saw, its output (whose per-example gradient autograd will give) and a
function that turns (input, output-gradient) into per-example gradient *features* of each
parameter. Three representations cover every rule; each knows its batch sum, its exact
statistics (squared norm, dot with the mean gradient; the projection is added into the chunk's
(b, k) accumulator, so that the layers' projections need no (b, k) temporaries) and, when two different
kinds of uses share one parameter, its explicit per-example gradient:

- `Tokens`: a weight seen as a (groups * c_out, c_in) matrix whose per-example gradient is
  sum_t blockdiag_j(g_{t,j} h_{t,j}^T) (Linear: one group; convolutions: unfolded patches).
- `EmbeddingTokens`: G_n = sum_t e_{id_t} g_t^T.
- `Explicit`: the per-example gradients themselves, (b, *shape) (biases, normalization
  affine parameters, the vmap fallback), for parameters small enough to hold per example.

Each representation hands its structured form to the projection map, which adds its own
projection (`gradscope.projection_map.Projection`): no rule asks which kind of map it holds.
A new layer type is one file with one rule function decorated by `@register(torch_function)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gradscope.projection_map import Projection

# Sub-batch bound (numbers) for explicitly formed per-example weight gradients and unfolded patches.
EXPLICIT_MAX_ELEMENTS = 1 << 24
# Embedding: Gram form (T x T token-equality mask) up to this many tokens per example,
# segment sums over distinct tokens beyond.
EMBEDDING_GRAM_MAX_T = 32

# torch function -> rule(ctx, func, args, kwargs) -> output of func
RULES: dict[Callable, Callable] = {}


def register(*funcs: Callable):
    """Register a rule for torch functions (the objects the model calls, e.g. torch.nn.functional.linear)."""
    def deco(rule):
        for f in funcs:
            if f in RULES:
                raise ValueError(f"a rule for {f.__name__} is already registered")
            RULES[f] = rule
        return rule
    return deco


def arg(args: tuple, kwargs: dict, i: int, name: str, default=None):
    """Argument `name` of a call, given positionally at index i or by keyword."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


@dataclass
class Stat:
    sq: torch.Tensor  # (b,) squared norm
    dot: torch.Tensor  # (b,) inner product with the mean gradient


class Explicit:
    """Per-example gradients held as they are: (b, *shape)."""

    def __init__(self, grads: torch.Tensor):
        self.g = grads

    def sum(self, shape) -> torch.Tensor:
        return self.g.sum(0).reshape(shape)

    def explicit(self, shape) -> torch.Tensor:
        return self.g.reshape(len(self.g), *shape)

    def stats(self, M: torch.Tensor, f: Projection, acc: torch.Tensor) -> Stat:
        flat = self.g.reshape(len(self.g), -1)
        f.add_project(acc, self.g)
        return Stat(torch.linalg.vector_norm(flat, dim=1).square(), flat @ M.reshape(-1))

    def nbytes(self) -> int:
        return self.g.numel() * self.g.element_size()


class Tokens:
    """Weight as a (groups * c_out, c_in) matrix: G_n = sum_t blockdiag_j(g_{t,j} h_{t,j}^T).

    G: (b, T, groups, c_out). H: (b, T, groups, c_in), or `h_fn(start, stop)` giving the rows
    start:stop of it on demand (unfolded convolution patches, built one sub-batch at a time).
    `e_fn(start, stop)`, where given, forms the explicit per-example gradients (stop - start,
    groups, c_out, c_in) of those rows itself (a convolution's batched weight-gradient kernel),
    cheaper than unfolding. With one group, `gram_fn()` (b, T, T), the tokens' Gram h_t.h_s, and
    `apply_fn(W)` (b, T, m), H @ W for W (c_in, m), where given, replace unfolding in the Gram path
    (a 1-D convolution: its input's Gram and a convolution with W as kernels).
    """

    def __init__(self, G: torch.Tensor, H: torch.Tensor | None = None, h_fn=None, c_in: int | None = None, e_fn=None,
                 gram_fn=None, apply_fn=None):
        self.G, self.H, self.h_fn, self.e_fn = G, H, h_fn, e_fn
        self.gram_fn, self.apply_fn = gram_fn, apply_fn
        self.c_in = H.shape[-1] if H is not None else c_in

    @property
    def key(self):
        return ("tokens", self.G.shape[2], self.c_in)

    def h(self, start: int, stop: int) -> torch.Tensor:
        return self.H[start:stop] if self.H is not None else self.h_fn(start, stop)

    def materialize(self) -> torch.Tensor:
        return self.h(0, self.G.shape[0])

    def _step(self, per_example: int) -> int:
        return max(1, EXPLICIT_MAX_ELEMENTS // max(1, per_example))

    def explicit_blocks(self, per_example: int):
        """(start, E) over sub-batches of at most EXPLICIT_MAX_ELEMENTS numbers (per_example each): the
        explicit per-example gradients E (n, g, c_out, c_in), from e_fn where given, else from the tokens."""
        b = self.G.shape[0]
        step = self._step(per_example)
        for s in range(0, b, step):
            if self.e_fn is not None:
                yield s, self.e_fn(s, min(b, s + step))
            else:
                H = self.h(s, s + step)
                yield s, torch.einsum("btjo,btji->bjoi", self.G[s : s + len(H)], H)

    def sum(self, shape) -> torch.Tensor:
        b, T, g, c_out = self.G.shape
        if g == 1 and self.H is not None:  # one matmul over all tokens
            return (self.G.reshape(b * T, c_out).T @ self.H.reshape(b * T, self.c_in)).reshape(shape)
        total, step = None, self._step(T * g * self.c_in)
        for s in range(0, b, step):
            H = self.h(s, s + step)
            G = self.G[s : s + len(H)]
            part = torch.einsum("btjo,btji->joi", G, H)
            total = part if total is None else total + part
        return total.reshape(shape)

    def explicit(self, shape) -> torch.Tensor:
        H = self.materialize()
        return torch.einsum("btjo,btji->bjoi", self.G, H).reshape(len(H), *shape)

    def stats(self, M: torch.Tensor, f: Projection, acc: torch.Tensor) -> Stat:
        b, T, g, c_out = self.G.shape
        c_in = self.c_in
        Mg = M.reshape(g, c_out, c_in)
        if T > 1 and T * (c_in + c_out) > c_in * c_out:
            # Explicit per-example gradients (sb, g, c_out, c_in), sub-batched: cheaper than the T x T Gram.
            sq, dot = [], []
            for s, E in self.explicit_blocks(g * c_out * c_in + T * g * c_in):
                flat = E.reshape(len(E), -1)
                sq.append(torch.linalg.vector_norm(flat, dim=1).square())
                dot.append(flat @ Mg.reshape(-1))
                acc[s : s + len(E)] += f.project(E.reshape(len(E), g * c_out, c_in))
            return Stat(torch.cat(sq), torch.cat(dot))
        if g == 1 and self.gram_fn is not None and self.apply_fn is not None and f.takes_applied(self):
            return self._stats_unfolded_free(Mg[0], f, acc)
        H, G = self.materialize(), self.G
        if T == 1 and g == 1:  # one token, one group: a Linear on vectors, the commonest case
            return self._stats_rank_one(G[:, 0, 0], H[:, 0, 0], Mg[0], f, acc)
        if T == 1:
            sq = (G[:, 0].pow(2).sum(-1) * H[:, 0].pow(2).sum(-1)).sum(-1)
        else:  # sum_j sum_{t,s} (g_tj.g_sj)(h_tj.h_sj)
            Gp, Hp = G.permute(0, 2, 1, 3), H.permute(0, 2, 1, 3)  # (b, g, T, c)
            sq = ((Gp @ Gp.transpose(2, 3)) * (Hp @ Hp.transpose(2, 3))).sum(dim=(1, 2, 3))
        if g == 1:  # plain matmuls: a Linear over tokens (T > 1: one token went to _stats_rank_one)
            Hf, Gf = H.reshape(b * T, c_in), G.reshape(b * T, c_out)
            dot = ((Hf @ Mg[0].T) * Gf).sum(1)  # g^T M h at the cost of a forward matmul
            f.add_token_sums(acc, G[:, :, 0], H[:, :, 0])
        else:
            dot = (torch.einsum("btji,joi->btjo", H, Mg) * G).sum(dim=(2, 3))
            f.add_group_token_sums(acc, G, H)
        return Stat(sq, dot.reshape(b, T).sum(1))

    @staticmethod
    def _stats_rank_one(G: torch.Tensor, H: torch.Tensor, M: torch.Tensor, f: Projection, acc: torch.Tensor) -> Stat:
        """G_n = g_n h_n^T: |G_n|^2 = |g_n|^2 |h_n|^2; g_n^T M h_n and the projection from the map
        (`Projection.add_rank_one`: Kronecker factors share one matmul); no (b, c) temporaries."""
        sq = torch.linalg.vector_norm(G, dim=1).square() * torch.linalg.vector_norm(H, dim=1).square()
        return Stat(sq, f.add_rank_one(acc, G, H, M))

    def _stats_unfolded_free(self, M: torch.Tensor, f: Projection, acc: torch.Tensor) -> Stat:
        """The Gram path of one group from gram_fn and apply_fn: no (b, T, c_in) tokens are formed. The
        dots and the projection come from the map (`Projection.add_applied_token_sums`)."""
        G = self.G[:, :, 0]  # (b, T, c_out)
        sq = ((G @ G.transpose(1, 2)) * self.gram_fn()).sum(dim=(1, 2))
        return Stat(sq, f.add_applied_token_sums(acc, G, M, self))

    def nbytes(self) -> int:
        t = self.G.numel() * self.G.element_size()
        return t + (self.H.numel() * self.H.element_size() if self.H is not None else 0)


class EmbeddingTokens:
    """Embedding weight (V, d): G_n = sum_t e_{id_t} g_t^T; ids (b, T), G (b, T, d)."""

    def __init__(self, ids: torch.Tensor, G: torch.Tensor, num_embeddings: int):
        self.ids, self.G, self.V = ids, G, num_embeddings

    @property
    def key(self):
        return ("embedding", self.V)

    def sum(self, shape) -> torch.Tensor:
        d = self.G.shape[-1]
        out = torch.zeros(self.V, d, dtype=self.G.dtype, device=self.G.device)
        return out.index_add_(0, self.ids.reshape(-1), self.G.reshape(-1, d)).reshape(shape)

    def explicit(self, shape) -> torch.Tensor:
        b, T, d = self.G.shape
        rows = (torch.arange(b, device=self.ids.device)[:, None] * self.V + self.ids).reshape(-1)
        out = torch.zeros(b * self.V, d, dtype=self.G.dtype, device=self.G.device)
        return out.index_add_(0, rows, self.G.reshape(-1, d)).reshape(b, *shape)

    def stats(self, M: torch.Tensor, f: Projection, acc: torch.Tensor) -> Stat:
        ids, G = self.ids, self.G
        b, T, d = G.shape
        if T == 1:
            sq = G.reshape(b, d).pow(2).sum(1)
        elif T <= EMBEDDING_GRAM_MAX_T:
            same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(G.dtype)  # (b, T, T)
            sq = ((G @ G.transpose(1, 2)) * same).sum(dim=(1, 2))
        else:  # segment sums over each example's distinct tokens
            key = torch.arange(b, device=ids.device).unsqueeze(1) * self.V + ids
            uniq, inv = torch.unique(key.reshape(-1), return_inverse=True)
            S = torch.zeros(len(uniq), d, dtype=G.dtype, device=G.device).index_add_(0, inv, G.reshape(-1, d))
            sq = torch.zeros(b, dtype=G.dtype, device=G.device).index_add_(0, uniq // self.V, S.pow(2).sum(1))
        dot = (M.reshape(self.V, d)[ids] * G).sum(dim=(1, 2))
        f.add_embedding_sums(acc, ids, G)
        return Stat(sq, dot)

    def nbytes(self) -> int:
        return self.G.numel() * self.G.element_size() + self.ids.numel() * self.ids.element_size()


def combine(features: list, shape) -> object:
    """One feature for a parameter used several times (tied or shared weights): the sum of its uses.

    Uses of one kind concatenate their tokens (exact and as cheap as one call); uses of
    different kinds (an embedding tied to a read-out Linear) are summed explicitly.
    """
    if len(features) == 1:
        return features[0]
    keys = {getattr(f, "key", None) for f in features}
    if len(keys) == 1 and None not in keys:
        if isinstance(features[0], Tokens):
            return Tokens(torch.cat([f.G for f in features], 1), torch.cat([f.materialize() for f in features], 1))
        if isinstance(features[0], EmbeddingTokens):
            return EmbeddingTokens(torch.cat([f.ids for f in features], 1), torch.cat([f.G for f in features], 1),
                                   features[0].V)
    total = None
    for f in features:
        e = f.explicit(shape)
        total = e if total is None else total + e
    return Explicit(total)


def seq_tokens(t: torch.Tensor, axis: int | None, batch: int, width: int) -> torch.Tensor:
    """(batch, T, width) view of a tensor whose batch axis is `axis` (None: no batch axis, shared by all)."""
    if axis is None:
        return t.reshape(1, -1, width).expand(batch, -1, -1)
    return t.movedim(axis, 0).reshape(batch, -1, width)
