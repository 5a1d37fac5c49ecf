"""The interface of one parameter tensor's projection map: everything the per-example engine calls.

Each kind of gradscope.projection (Kronecker Gaussian columns, the subsampled Hadamard
transform, the count sketch, the signed injection) is a subclass of `Projection`. The per-layer
rules (gradscope.grad_rules) hold a layer's per-example gradients in some structured form
(explicit gradients, rank-one tokens, their per-example sums, grouped tokens, embedding rows) and
hand the map that form; the map adds its projection into the chunk's (b, k) accumulator. The
defaults here are built on `tokens`, `project` and the equivalent Kronecker factors `A`, `B`
(proj_j = A[:, j]^T G B[:, j]); a kind overrides the ones it does faster, next to its own
definition, so the rules never ask which kind they hold and a new kind is one class.
"""

from __future__ import annotations

import torch


class Projection:
    """The map of one parameter tensor of `shape` to k dimensions: a flat gradient g goes to g @ dense()."""

    k: int

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """(b, k) projection of explicit per-example gradients (b, *shape)."""
        raise NotImplementedError

    def tokens(self, G: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """(N, k) projections of the N rank-one matrices G[n] H[n]^T (G (N, rows), H (N, cols))."""
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The dense equivalent (numel, k): a flat gradient g projects to g @ dense(). Small models only."""
        raise NotImplementedError

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    # ---- what the per-example engine calls (gradscope.grad_rules.base) ----------------------------
    def add_project(self, acc: torch.Tensor, grads: torch.Tensor) -> None:
        """acc (b, k) += project(grads), in place where the kind can."""
        acc += self.project(grads)

    def add_tokens(self, acc: torch.Tensor, G: torch.Tensor, H: torch.Tensor) -> None:
        """acc (N, k) += tokens(G, H), in place where the kind can."""
        acc += self.tokens(G, H)

    def add_token_sums(self, acc: torch.Tensor, G: torch.Tensor, H: torch.Tensor) -> None:
        """acc (b, k) += the projection of sum_t G[:, t] H[:, t]^T, for G (b, T, rows) and H (b, T, cols)."""
        b, T = G.shape[:2]
        acc += self.tokens(G.reshape(b * T, -1), H.reshape(b * T, -1)).reshape(b, T, self.k).sum(1)

    def add_rank_one(self, acc: torch.Tensor, G: torch.Tensor, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """acc (b, k) += the projection of G[n] H[n]^T (G (b, rows), H (b, cols)); returns the dots
        g_n^T M h_n (b,) with M (rows, cols), which a kind may compute along with its projection."""
        self.add_tokens(acc, G, H)
        return (H @ M.T).mul_(G).sum(1)

    def add_group_token_sums(self, acc: torch.Tensor, G: torch.Tensor, H: torch.Tensor) -> None:
        """acc (b, k) += the projection of sum_t blockdiag_j(G[:, t, j] H[:, t, j]^T), for G (b, T, groups,
        c_out) and H (b, T, groups, c_in), the weight seen as (groups * c_out, c_in): from A and B."""
        b, T, g, c_out = G.shape
        A = self.A.reshape(g, c_out, self.k)
        acc += (torch.einsum("btjo,jok->btjk", G, A) * (H @ self.B)).sum(2).reshape(b, T, self.k).sum(1)

    def add_embedding_sums(self, acc: torch.Tensor, ids: torch.Tensor, G: torch.Tensor) -> None:
        """acc (b, k) += the projection of sum_t e_{ids[:, t]} G[:, t]^T (ids (b, T), G (b, T, d)): from A and B."""
        b, T, d = G.shape
        acc += (self.A[ids] * (G.reshape(-1, d) @ self.B).reshape(b, T, self.k)).sum(1)

    def takes_applied(self, tokens) -> bool:
        """Whether `add_applied_token_sums` can serve these tokens (gradscope.grad_rules.base.Tokens with
        gram_fn and apply_fn): by default it projects their explicit per-example gradients, so it needs
        their own kernel for them (e_fn)."""
        return bool(tokens.e_fn)

    def add_applied_token_sums(self, acc: torch.Tensor, G: torch.Tensor, M: torch.Tensor, tokens) -> torch.Tensor:
        """The Gram path of one group without unfolded tokens: acc (b, k) += the projection of
        sum_t G[:, t] h_t^T, where the tokens h_t are reached through tokens.apply_fn(W) = H @ W
        (b, T, m); returns the dots sum_t g_t^T M h_t (b,). By default the explicit per-example
        gradients (the convolution's kernel, sub-batched) are projected."""
        c_out = G.shape[-1]
        dot = (tokens.apply_fn(M.T)[..., :c_out] * G).sum(dim=(1, 2))
        for s, E in tokens.explicit_blocks(c_out * tokens.c_in):
            acc[s : s + len(E)] += self.project(E.reshape(len(E), c_out, tokens.c_in))
        return dot
