"""Random projections of per-example gradients to k dimensions: the kinds and their seeding.

Every kind is a fixed linear map per parameter tensor, the same whichever path of the
per-example engine computes a gradient (rank-one tokens, explicit gradients, the vmap
fallback), so projections of one run are comparable across checkpoints. The sketch of a
whole gradient is the sum over parameter tensors of their (independent) maps. Each map
preserves inner products in expectation: E[<P g, P g'>] = <g, g'>.

Kinds (`examples.projection`):

- "gaussian": a parameter of two or more dimensions, seen as a matrix (rows, cols) =
  (shape[0], prod(shape[1:])), draws A = randn(rows, k), then B = randn(cols, k); its gradient
  G projects to proj_j = A[:, j]^T G B[:, j] / sqrt(k) (column j of the dense equivalent is
  kron(A[:, j], B[:, j]) / sqrt(k)). A per-token sum costs 2 T k (rows + cols) flops, so the
  cost grows linearly with k. A one-dimensional parameter gets randn(numel, k) / sqrt(k).
- "hadamard": a subsampled randomized Hadamard transform in Kronecker form (Jin, Kolda & Ward
  2021, "Faster Johnson-Lindenstrauss transforms via Kronecker products"). Each side of the
  matrix gets random signs D, zero padding to a power of two P (rows) and Q (cols), an
  orthonormal Walsh-Hadamard transform H and a random permutation pi, so a rank-one gradient
  g h^T becomes u v^T with u = pi_P(H_P D_r g), v = pi_Q(H_Q D_c h), whatever k. H_P = H_a kron
  H_b is applied as two small dense factors (O(P (a + b)), a, b ~ sqrt(P)), and pi is a product
  permutation (of H_a's rows and H_b's columns, see gradscope.hadamard) folded into them, so it costs nothing;
  the longer side computes only the entries the kept pairs read. The
  projection keeps k entries of u v^T, scaled by sqrt(P Q / k): the pairs (i, (i + r) mod M)
  of the shorter side's index i < m = min(P, Q) and the longer side's, r = 0, 1, ... in order
  (output j = r m + i), read as strided windows with no gather. Each entry's expected product
  is <G, G'> / (P Q) under the random signs, so the estimate is unbiased; the random
  permutations make the kept pairs a random design. Cost per token: the two transforms plus
  one multiply-add per output, i.e. O(k) with a small constant, against O(k (rows + cols))
  for "gaussian". A one-dimensional parameter gets a count sketch (Charikar et al. 2002):
  entry i goes, with a random sign, to bucket h(i): distinct buckets when numel <= k (an exact
  isometry), a random permutation folded onto the k buckets beyond (O(numel)). A matrix
  parameter with numel <= k (a small read-out layer at large k) gets the same exact isometry,
  `Injection`: its entries into distinct outputs with random signs, at no more than numel
  multiply-adds per token.
- "auto" (the default): "hadamard" from k = HADAMARD_FROM_K on, "gaussian" below, where the
  Gaussian's k (rows + cols) flops are fewer than the transforms' (bench/bench_projections.py).

Accuracy of "gaussian" in theory: inner products are preserved in expectation (E[a a^T] kron E[b b^T] = I). The
Kronecker columns have variance-1 entries but are not Gaussian vectors. For unit gradients
with cosine rho, i.i.d. Gaussian columns give the projected inner product variance
(1 + rho^2) / k; for one rank-one layer (a bias-free Linear on one token: gradients g h^T)
the Kronecker columns give (1 + 2 c_g^2 + 2 c_h^2 + 3 rho^2) / k, with c_g and c_h the cosines
of the two factors: at most 4x (2x in standard deviation). Summing over layers averages it
back toward the Gaussian value. Measured over 300 seeds at k = 64 (tests/test_examples.py),
rms error of the projected cosine / sqrt((1 + rho^2) / k): 0.9-1.0 on average and at most 1.3
for a 3-layer MLP (Gaussian columns: 0.9 and 1.1), 1.2 and 1.6 for one rank-one layer.

Accuracy, measured side by side on the same gradients (bench/bench_projections.py, docs/benchmarks.md):
|projected cosine - exact cosine| over random pairs of examples, at the median and the 99th
percentile, within a few percent of a dense i.i.d. Gaussian projection of the same k for both
kinds.

Seeding: parameter tensor i (named_parameters order, frozen ones counted) gets
`torch.Generator().manual_seed(seed * SEED_STRIDE + i)`; draws are float32 / int64 on the
CPU, then cast to the parameter's dtype and device.

Each map is a `gradscope.projection_map.Projection` (the calls the per-example engine makes),
and carries its own fast paths for the engine there; the hadamard kind's transform of one side
of a matrix is `gradscope.hadamard.Side`.
"""

from __future__ import annotations

import math

import torch

from gradscope.hadamard import Side, wrapped
from gradscope.projection_map import Projection

KINDS = ("auto", "gaussian", "hadamard")
# "auto" picks "hadamard" from this k on (bench/bench_projections.py: below it the Gaussian
# factors' k (rows + cols) flops cost less than the two Hadamard transforms; measured on the
# MLP 784-256-256-10: 2.19x against 2.33x at k = 64, 2.52x against 2.33x at k = 128).
HADAMARD_FROM_K = 128
# Kron.project forms explicit gradients' projection with the dense (numel, k) map up to this many
# numbers: the same multiply-adds as its factored form, in one matmul without a (b, rows, k) pass.
DENSE_MAX_ELEMENTS = 1 << 20
# Seeds of distinct parameter tensors: seed * SEED_STRIDE + index, a stride above any
# realistic number of parameter tensors, so distinct pairs never share a stream.
SEED_STRIDE = 1_000_003


def resolve_kind(kind: str, k: int) -> str:
    """The concrete kind ("gaussian" or "hadamard") that `kind` means at dimension k."""
    if kind not in KINDS:
        raise ValueError(f"unknown projection {kind!r}; known: {', '.join(KINDS)}")
    if kind == "auto":
        return "hadamard" if k >= HADAMARD_FROM_K else "gaussian"
    return kind


def build(kind: str, shape: tuple, k: int, gen: torch.Generator, dtype, device):
    """The projection of one parameter tensor of `shape` (kind already resolved)."""
    numel = math.prod(shape)
    if len(shape) >= 2:
        rows, cols = shape[0], numel // shape[0]
        if kind == "gaussian":
            A = torch.randn(rows, k, generator=gen) / math.sqrt(k)
            B = torch.randn(cols, k, generator=gen)
            return Kron(A.to(dtype=dtype, device=device), B.to(dtype=dtype, device=device))
        if numel <= k:
            return Injection(rows, cols, k, gen, dtype, device)
        return SampledHadamard(rows, cols, k, gen, dtype, device)
    if kind == "gaussian":
        return Dense((torch.randn(numel, k, generator=gen) / math.sqrt(k)).to(dtype=dtype, device=device))
    return CountSketch(numel, k, gen, dtype, device)


class Kron(Projection):
    """Gaussian Kronecker columns: proj_j = A[:, j]^T G B[:, j] (A holds the 1/sqrt(k))."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        self.A, self.B, self.k = A, B, A.shape[1]
        self._dense = None

    def project(self, grads):
        b, rows, cols = grads.shape[0], self.A.shape[0], self.B.shape[0]
        if rows * cols * self.k <= DENSE_MAX_ELEMENTS:  # the same multiply-adds as one plain matmul
            if self._dense is None:
                self._dense = self.dense()
            return grads.reshape(b, rows * cols) @ self._dense
        return ((grads.reshape(b, rows, cols) @ self.B) * self.A).sum(dim=1)

    def tokens(self, G, H):
        return (G @ self.A) * (H @ self.B)

    def add_tokens(self, acc, G, H):
        acc.addcmul_(G @ self.A, H @ self.B)

    def dense(self):
        return (self.A[:, None, :] * self.B[None, :, :]).reshape(-1, self.k)

    def add_rank_one(self, acc, G, H, M):
        """The dots and the projection's H @ B from one matmul H @ [M^T | B]."""
        HW = H @ torch.cat([M.T, self.B], 1)  # (b, c_out + k)
        acc.addcmul_(G @ self.A, HW[:, G.shape[1]:])
        return HW[:, : G.shape[1]].mul_(G).sum(1)

    def takes_applied(self, tokens):
        return True

    def add_applied_token_sums(self, acc, G, M, tokens):
        """The dots and the projection's H @ B from one apply_fn (b, T, c_out + k)."""
        c_out = G.shape[-1]
        HW = tokens.apply_fn(torch.cat([M.T, self.B], 1))
        dot = (HW[..., :c_out] * G).sum(dim=(1, 2))
        acc += ((G @ self.A) * HW[..., c_out:]).sum(1)
        return dot


class Dense(Projection):
    """A dense Gaussian block R (numel, k) (holding the 1/sqrt(k))."""

    def __init__(self, R: torch.Tensor):
        self.R, self.k = R, R.shape[1]

    def project(self, grads):
        return grads.reshape(len(grads), -1) @ self.R

    def dense(self):
        return self.R


class CountSketch(Projection):
    """Entry i of a vector goes to bucket h(i) with sign s(i): O(numel) per example.

    With numel <= k, h(i) = (i + offset) mod k: distinct buckets, so the map is an exact isometry
    on this parameter, and the sketch is at most two contiguous slice additions into the output.
    With numel > k, the buckets are a random permutation folded onto k: the entry at position j
    of the permutation goes to bucket (j + offset) mod k, so every bucket receives the floor or
    the ceiling of numel / k entries (a random balanced hash). Either way no scatter over the
    output's columns (a strided pass over all of it) is made."""

    def __init__(self, numel: int, k: int, gen, dtype, device):
        self.k, self.numel = k, numel
        perm = torch.randperm(numel, generator=gen) if numel > k else torch.arange(numel)
        self.offset = int(torch.randint(0, k, (1,), generator=gen))
        self.sign = (torch.randint(0, 2, (numel,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        self.bucket = torch.empty(numel, dtype=torch.long).index_put_(
            (perm,), (torch.arange(numel) + self.offset) % k).to(device)
        self.perm = perm.to(device) if numel > k else None
        self.sign_perm = self.sign if self.perm is None else self.sign[self.perm]  # the sign of each position

    def project(self, grads):
        flat = grads.reshape(len(grads), -1)
        out = flat.new_zeros(len(flat), self.k)
        self.add_project(out, flat)
        return out

    def add_project(self, acc, grads):
        z, sign = grads.reshape(len(grads), -1).to(acc.dtype), self.sign_perm.to(acc.dtype)
        if self.perm is not None:  # permute, sign, and fold: position j adds into column j mod k
            z = z.index_select(1, self.perm) * sign
            z, sign = torch.nn.functional.pad(z, (0, -self.numel % self.k)).view(len(z), -1, self.k).sum(1), None
        w, o = z.shape[1], self.offset
        first = min(w, self.k - o)  # columns o .. o + w, wrapping around at k
        for dst, part in ((acc[:, o : o + first], slice(0, first)), (acc[:, : w - first], slice(first, w))):
            if part.stop > part.start:
                dst.add_(z[:, part]) if sign is None else dst.addcmul_(z[:, part], sign[part])

    def dense(self):
        out = self.sign.new_zeros(len(self.sign), self.k)
        return out.index_put_((torch.arange(len(self.sign), device=out.device), self.bucket), self.sign)


class Injection(Projection):
    """A matrix parameter with numel <= k: entry (p, q) goes to output offset + p cols + q with the
    sign s_r(p) s_c(q). Distinct outputs, so the map is an exact isometry on this parameter (no
    sketching error), and a rank-one gradient g h^T adds (s_r g) (s_c h)^T into numel contiguous
    outputs: one multiply-add per entry, with no transform and no pass over the other k - numel."""

    def __init__(self, rows: int, cols: int, k: int, gen, dtype, device):
        self.rows, self.cols, self.k = rows, cols, k
        self.offset = int(torch.randint(0, k - rows * cols + 1, (1,), generator=gen))
        self.s_r = (torch.randint(0, 2, (rows,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        self.s_c = (torch.randint(0, 2, (cols,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        self.sign = torch.outer(self.s_r, self.s_c)  # (rows, cols)
        self._A = self._B = None

    def _block(self, acc: torch.Tensor) -> torch.Tensor:
        return acc[:, self.offset : self.offset + self.rows * self.cols].unflatten(1, (self.rows, self.cols))

    def project(self, grads):
        out = grads.new_zeros(len(grads), self.k)
        self.add_project(out, grads)
        return out

    def add_project(self, acc, grads):
        self._block(acc).addcmul_(grads.reshape(len(grads), self.rows, self.cols).to(acc.dtype),
                                  self.sign.to(acc.dtype))

    def tokens(self, G, H):
        out = G.new_zeros(len(G), self.k)
        self.add_tokens(out, G, H)
        return out

    def add_tokens(self, acc, G, H):
        self._block(acc).addcmul_((G * self.s_r).to(acc.dtype).unsqueeze(2), (H * self.s_c).to(acc.dtype).unsqueeze(1))

    def dense(self):
        out = self.sign.new_zeros(self.rows * self.cols, self.k)
        out[:, self.offset : self.offset + self.rows * self.cols] = torch.diag(self.sign.reshape(-1))
        return out

    @property
    def A(self) -> torch.Tensor:  # proj_j = A[:, j]^T G B[:, j]: column offset + p cols + q is s_r(p) e_p
        if self._A is None:
            self._A = self.s_r.new_zeros(self.rows, self.k)
            self._A[:, self.offset : self.offset + self.rows * self.cols] = torch.diag(self.s_r).repeat_interleave(
                self.cols, dim=1)
        return self._A

    @property
    def B(self) -> torch.Tensor:  # ... and s_c(q) e_q
        if self._B is None:
            self._B = self.s_c.new_zeros(self.cols, self.k)
            self._B[:, self.offset : self.offset + self.rows * self.cols] = torch.diag(self.s_c).repeat(1, self.rows)
        return self._B


class SampledHadamard(Projection):
    """k entries of pi_P(H_P D_r) G pi_Q(H_Q D_c)^T, scaled by sqrt(P Q / k): see the module docstring."""

    def __init__(self, rows: int, cols: int, k: int, gen, dtype, device):
        self.k, self.rows, self.cols = k, rows, cols
        self.out, self.inp = Side(rows, gen, dtype, device), Side(cols, gen, dtype, device)
        P, Q = self.out.P, self.inp.P
        self.short_rows = P <= Q
        self.m, self.M = min(P, Q), max(P, Q)
        self.R = -(-k // self.m)  # blocks of m outputs
        self.need = self.m + self.R - 1  # the windows read the longer side's first `need` entries (wrapping past M)
        self.scale = math.sqrt(P * Q / k)
        self._A = self._B = None

    def _kept(self) -> tuple[int, int]:
        """How many mixed entries of the rows side and of the columns side the kept pairs read: all of
        the shorter side, and the longer side's first m + R - 1 (all of it when the windows wrap)."""
        keep = min(self.need, self.M)
        return (self.out.P, keep) if self.short_rows else (keep, self.inp.P)

    def cols_mixed_by(self, apply_fn):
        """The columns side's mixed tokens (b, T, kept) from apply_fn(W) = H @ W (a convolution with W's
        columns as kernels) and the side's dense map; None where the side mixes by its factors."""
        if not self.inp.mixes_densely:
            return None
        return apply_fn(self.inp.dense_map(1.0, self._kept()[1]))

    def add_applied_token_sums(self, acc, G, M, tokens):
        """The columns side mixed by a convolution with its dense map (or the tokens unfolded), then the
        per-example token sums."""
        dot = (tokens.apply_fn(M.T)[..., : G.shape[-1]] * G).sum(dim=(1, 2))
        mixed = self.cols_mixed_by(tokens.apply_fn)
        self.add_token_sums(acc, G, None if mixed is not None else tokens.materialize()[:, :, 0], mixed_cols=mixed)
        return dot

    def _pairs(self):
        """(row index, col index) in the mixed (P, Q) matrix of each output j = r m + i."""
        j = torch.arange(self.k, device=self.out.perm.device)
        i, r = j % self.m, j // self.m
        long = (i + r) % self.M
        return (i, long) if self.short_rows else (long, i)

    def tokens(self, G, H):
        short, windows = self._factors(G, H)
        return (short.unsqueeze(1) * windows).reshape(len(short), self.R * self.m)[:, : self.k]

    def add_tokens(self, acc, G, H):
        short, windows = self._factors(G, H)
        if self.R * self.m == self.k and acc.is_contiguous():
            acc.view(len(short), self.R, self.m).addcmul_(short.unsqueeze(1), windows)
        else:
            acc += (short.unsqueeze(1) * windows).reshape(len(short), self.R * self.m)[:, : self.k]

    def _factors(self, G, H):
        """The shorter side's mixed vectors (N, m) and the windows (N, R, m) of the longer side's."""
        need = self.need
        if self.short_rows:
            short, long = self.out.mix(G, self.scale), self.inp.mix(H, keep=need)
        else:
            short, long = self.inp.mix(H, self.scale), self.out.mix(G, keep=need)
        N = short.shape[0]
        if need > self.M:  # windows run past the end: wrap around, into a buffer kept between calls
            long = wrapped(long, need, self.M, self)
        long = long.contiguous()
        return short, long.as_strided((N, self.R, self.m), (long.shape[1], 1, 1))  # [n, r, i] = long[n, r + i]

    def add_token_sums(self, acc, G, H, mixed_cols=None):
        """acc (b, k) += the projection of sum_t G[:, t] H[:, t]^T for G (b, T, rows), H (b, T, cols).

        Per example, the mixed sides' product S^T L (m, need), S (T, m) the shorter side's mixed
        tokens and L (T, need) the first entries of the longer side's, holds every kept pair: output
        r m + i is entry (i, i + r). One batched matmul and a strided read, instead of k outputs per
        token (each a multiply-add over the whole output). `mixed_cols`, where given, is the columns
        side already mixed, (b, T, >= its keep)."""
        b, T = G.shape[:2]
        need = self.need
        kp, kq = self._kept()
        rows = self.out.mix(G.reshape(b * T, self.rows), self.scale, keep=kp)[:, :kp].reshape(b, T, kp)
        cols = (mixed_cols if mixed_cols is not None else
                self.inp.mix(H.reshape(b * T, self.cols), keep=kq).reshape(b, T, -1))[..., :kq]
        short, long = (rows, cols) if self.short_rows else (cols, rows)
        if need > self.M:  # windows run past the end: wrap around
            long = wrapped(long.reshape(b * T, self.M), need, self.M, self).reshape(b, T, need)
        LS = long.transpose(1, 2) @ short  # (b, need, m) = (S^T L)^T (a transposed first operand slows bmm down)
        W = LS.shape[1]
        windows = LS.as_strided((b, self.R, self.m), (W * self.m, self.m, self.m + 1))  # [n, r, i] = LS[n, i + r, i]
        acc += windows.reshape(b, self.R * self.m)[:, : self.k]

    def project(self, grads):
        """Explicit gradients: mix the columns, then the rows, of only the entries the pairs read (the
        longer side's first m + R - 1, all of it when the windows wrap), then gather the k pairs."""
        b = grads.shape[0]
        kp, kq = self._kept()
        E = self.inp.mix(grads.reshape(b * self.rows, self.cols), keep=kq)[:, :kq]
        E = E.reshape(b, self.rows, kq).transpose(1, 2).reshape(b * kq, self.rows)  # (b kq, rows)
        E = self.out.mix(E, self.scale, keep=kp)[:, :kp].reshape(b, kq * kp)
        p, q = self._pairs()
        return E.index_select(1, q * kp + p)

    def dense(self):
        eye = torch.eye(self.rows * self.cols, dtype=self.out.sign.dtype, device=self.out.sign.device)
        return self.project(eye)

    # The equivalent Kronecker factors: proj_j = A[:, j]^T G B[:, j]. Built on first use, for
    # the engine's paths that need them (grouped convolutions, embeddings); (rows + cols) x k.
    @property
    def A(self) -> torch.Tensor:
        if self._A is None:
            p, _ = self._pairs()
            eye = torch.eye(self.rows, dtype=self.out.sign.dtype, device=self.out.sign.device)
            self._A = self.out.mix(eye, self.scale).index_select(1, p)
        return self._A

    @property
    def B(self) -> torch.Tensor:
        if self._B is None:
            _, q = self._pairs()
            eye = torch.eye(self.cols, dtype=self.inp.sign.dtype, device=self.inp.sign.device)
            self._B = self.inp.mix(eye).index_select(1, q)
        return self._B
