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
  g h^T becomes u v^T with u = pi_P(H_P D_r g), v = pi_Q(H_Q D_c h), computed in O(P log P + Q
  log Q) (the transforms as two small dense factors, H_P = H_a kron H_b), whatever k. The
  projection keeps k entries of u v^T, scaled by sqrt(P Q / k): the pairs (i, (i + r) mod M)
  of the shorter side's index i < m = min(P, Q) and the longer side's, r = 0, 1, ... in order
  (output j = r m + i), read as strided windows with no gather. Each entry's expected product
  is <G, G'> / (P Q) under the random signs, so the estimate is unbiased; the random
  permutations make the kept pairs a random design. Cost per token: the two transforms plus
  one multiply-add per output, i.e. O(k) with a small constant, against O(k (rows + cols))
  for "gaussian". A one-dimensional parameter gets a count sketch (Charikar et al. 2002):
  entry i goes, with a random sign, to bucket h(i) (O(numel), exact when k >> numel).
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

Accuracy, measured side by side on the same gradients (bench/bench_projections.py, README):
|projected cosine - exact cosine| over random pairs of examples, at the median and the 99th
percentile, within a few percent of a dense i.i.d. Gaussian projection of the same k for both
kinds.

Seeding: parameter tensor i (named_parameters order, frozen ones counted) gets
`torch.Generator().manual_seed(seed * SEED_STRIDE + i)`; draws are float32 / int64 on the
CPU, then cast to the parameter's dtype and device.
"""

from __future__ import annotations

import math

import torch

KINDS = ("auto", "gaussian", "hadamard")
# "auto" picks "hadamard" from this k on (bench/bench_projections.py: below it the Gaussian
# factors' k (rows + cols) flops cost less than the two Hadamard transforms).
HADAMARD_FROM_K = 256
# The Hadamard transforms keep their buffers between calls up to this many numbers per buffer.
WORKSPACE_MAX_ELEMENTS = 1 << 21
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
        return SampledHadamard(rows, cols, k, gen, dtype, device)
    if kind == "gaussian":
        return Dense((torch.randn(numel, k, generator=gen) / math.sqrt(k)).to(dtype=dtype, device=device))
    return CountSketch(numel, k, gen, dtype, device)


class Projection:
    """The interface the engine uses (gradscope.grad_rules): every kind has all of it."""

    k: int

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """(b, k) projection of explicit per-example gradients (b, *shape)."""
        raise NotImplementedError

    def tokens(self, G: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """(N, k) projections of the N rank-one matrices G[n] H[n]^T (G (N, rows), H (N, cols))."""
        raise NotImplementedError

    def add_project(self, acc: torch.Tensor, grads: torch.Tensor) -> None:
        """acc (b, k) += project(grads), in place where the kind can."""
        acc += self.project(grads)

    def add_tokens(self, acc: torch.Tensor, G: torch.Tensor, H: torch.Tensor) -> None:
        """acc (N, k) += tokens(G, H), in place where the kind can."""
        acc += self.tokens(G, H)

    def dense(self) -> torch.Tensor:
        """The dense equivalent (numel, k): a flat gradient g projects to g @ dense(). Small models only."""
        raise NotImplementedError

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


class Kron(Projection):
    """Gaussian Kronecker columns: proj_j = A[:, j]^T G B[:, j] (A holds the 1/sqrt(k))."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        self.A, self.B, self.k = A, B, A.shape[1]

    def project(self, grads):
        b, rows, cols = grads.shape[0], self.A.shape[0], self.B.shape[0]
        return ((grads.reshape(b, rows, cols) @ self.B) * self.A).sum(dim=1)

    def tokens(self, G, H):
        return (G @ self.A) * (H @ self.B)

    def add_tokens(self, acc, G, H):
        acc.addcmul_(G @ self.A, H @ self.B)

    def dense(self):
        return (self.A[:, None, :] * self.B[None, :, :]).reshape(-1, self.k)


class Dense(Projection):
    """A dense Gaussian block R (numel, k) (holding the 1/sqrt(k))."""

    def __init__(self, R: torch.Tensor):
        self.R, self.k = R, R.shape[1]

    def project(self, grads):
        return grads.reshape(len(grads), -1) @ self.R

    def dense(self):
        return self.R


class CountSketch(Projection):
    """Entry i of a vector goes to bucket h(i) with sign s(i): O(numel) per example."""

    def __init__(self, numel: int, k: int, gen, dtype, device):
        self.k = k
        self.bucket = torch.randint(0, k, (numel,), generator=gen).to(device)
        self.sign = (torch.randint(0, 2, (numel,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)

    def project(self, grads):
        flat = grads.reshape(len(grads), -1)
        return flat.new_zeros(len(flat), self.k).index_add_(1, self.bucket, flat * self.sign)

    def add_project(self, acc, grads):
        acc.index_add_(1, self.bucket, (grads.reshape(len(grads), -1) * self.sign).to(acc.dtype))

    def dense(self):
        out = self.sign.new_zeros(len(self.sign), self.k)
        return out.index_put_((torch.arange(len(self.sign), device=out.device), self.bucket), self.sign)


def _hadamard(n: int, dtype, device) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard matrix of size n (a power of two)."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return (H / math.sqrt(n)).to(dtype=dtype, device=device)


class _Side:
    """One side of a matrix: signs, zero padding to P = 2^p, H_P = H_a kron H_b, a permutation."""

    def __init__(self, d: int, gen, dtype, device):
        self.d, self.P = d, 1 << max(0, (d - 1).bit_length())
        self.sign = (torch.randint(0, 2, (d,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        self.perm = torch.randperm(self.P, generator=gen).to(device)
        a = 1 << ((self.P.bit_length() - 1) // 2)
        self.Ha, self.Hb = _hadamard(a, dtype, device), _hadamard(self.P // a, dtype, device)
        # mix() computes H_P z as two plain matmuls whose result lists entry i * b + j at j * a + i:
        # the permutation reads through that order.
        b = self.P // a
        self._read = (self.perm % b) * a + self.perm // b

    def mix(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(N, d) -> (N, P): pi(H_P D x), times scale.

        The result may be this side's workspace, overwritten by its next call: use it before then."""
        N, P, a, b = x.shape[0], self.P, self.Ha.shape[0], self.Hb.shape[0]
        sign = self.sign if scale == 1.0 else self.sign * scale
        ws = self._workspace(N, x.dtype, x.device)
        if ws is None:
            z = x * sign
            if P > self.d:
                z = torch.nn.functional.pad(z, (0, P - self.d))
            # (H_a kron H_b) z = H_a Z H_b for Z = z as (a, b) (both symmetric): one (N a, b) matmul,
            # then one (N b, a) matmul on the transpose, rather than N small batched products.
            z = (z.reshape(-1, b) @ self.Hb).reshape(-1, a, b).transpose(1, 2).reshape(-1, a) @ self.Ha
            return z.reshape(-1, P).index_select(1, self._read)
        padded, t1, t2, out = ws  # the same steps into buffers kept between calls (no page faults)
        torch.mul(x, sign, out=padded[:, : self.d])
        torch.matmul(padded.view(-1, b), self.Hb, out=t1.view(-1, b))
        t2.view(N, b, a).copy_(t1.view(N, a, b).transpose(1, 2))
        torch.matmul(t2.view(-1, a), self.Ha, out=t1.view(-1, a))
        return torch.index_select(t1, 1, self._read, out=out)

    def _workspace(self, N: int, dtype, device):
        """Buffers (N, P) for mix, kept for the last N up to WORKSPACE_MAX_ELEMENTS (chunks repeat their
        size; fresh multi-megabyte tensors cost page faults on every call); None beyond it."""
        if N * self.P > WORKSPACE_MAX_ELEMENTS:
            return None
        key = (N, dtype, device)
        if getattr(self, "_ws_key", None) != key:
            self._ws_key = key
            self._ws = [torch.zeros(N, self.P, dtype=dtype, device=device) for _ in range(4)]
        return self._ws


class SampledHadamard(Projection):
    """k entries of pi_P(H_P D_r) G pi_Q(H_Q D_c)^T, scaled by sqrt(P Q / k): see the module docstring."""

    def __init__(self, rows: int, cols: int, k: int, gen, dtype, device):
        self.k, self.rows, self.cols = k, rows, cols
        self.out, self.inp = _Side(rows, gen, dtype, device), _Side(cols, gen, dtype, device)
        P, Q = self.out.P, self.inp.P
        self.short_rows = P <= Q
        self.m, self.M = min(P, Q), max(P, Q)
        self.R = -(-k // self.m)  # blocks of m outputs
        self.scale = math.sqrt(P * Q / k)
        self._A = self._B = None

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
        if self.short_rows:
            short, long = self.out.mix(G, self.scale), self.inp.mix(H)
        else:
            short, long = self.inp.mix(H, self.scale), self.out.mix(G)
        N, need = short.shape[0], self.m + self.R - 1
        if need > self.M:  # windows run past the end: wrap around
            long = long.repeat(1, -(-need // self.M))
        long = long.contiguous()
        return short, long.as_strided((N, self.R, self.m), (long.shape[1], 1, 1))  # [n, r, i] = long[n, r + i]

    def project(self, grads):
        b = grads.shape[0]
        E = grads.reshape(b * self.rows, self.cols)
        E = self.inp.mix(E).reshape(b, self.rows, self.inp.P).transpose(1, 2)  # (b, Q, rows)
        E = self.out.mix(E.reshape(b * self.inp.P, self.rows)).reshape(b, self.inp.P, self.out.P)
        p, q = self._pairs()
        return E.reshape(b, -1).index_select(1, q * self.out.P + p) * self.scale

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
