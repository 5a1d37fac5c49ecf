"""The randomized Walsh-Hadamard transform of one side of a matrix, in Kronecker-factored form.

The building block of the "hadamard" projection kind (gradscope.projection, `SampledHadamard`):
a vector of d entries gets random signs D, zero padding to P = 2^p, the orthonormal transform
H_P = H_a kron H_b (a, b ~ sqrt(P)) applied as two small dense factors, and a random product
permutation folded into them (`Side`). A side shorter than DENSE_SIDE_BELOW mixes by one matmul
with its dense map instead. Buffers are kept between calls up to WORKSPACE_MAX_ELEMENTS.
"""

from __future__ import annotations

import math

import torch

# The Hadamard transforms keep their buffers between calls up to this many numbers per buffer.
WORKSPACE_MAX_ELEMENTS = 1 << 21
# A side of the hadamard kind padded to fewer than this many entries mixes by one matmul with its
# dense (d, P) map (at most d P multiply-adds, against batched products of tiny factors).
DENSE_SIDE_BELOW = 256


def hadamard_matrix(n: int, dtype, device) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard matrix of size n (a power of two)."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return (H / math.sqrt(n)).to(dtype=dtype, device=device)


class Side:
    """One side of a matrix: signs, zero padding to P = 2^p, H_P = H_a kron H_b, a permutation.

    A vector z (zero-padded to P) is a matrix Z (a, b), row-major, and H_P z is H_a Z H_b. The
    permutation is a product one: the mixed matrix's rows by sigma_a and its columns by sigma_b,
    read row-major, i.e. pi(y)[rho b + gamma] = y[sigma_a(rho) b + sigma_b(gamma)]. Folded into
    the factors (rows of H_a, columns of H_b), it costs nothing, and the first `keep` entries need
    only the first ceil(keep / b) rows of the left factor: (rows, a) Z (b, b), not the whole H_P.
    """

    def __init__(self, d: int, gen, dtype, device):
        self.d, self.P = d, 1 << max(0, (d - 1).bit_length())
        self.sign = (torch.randint(0, 2, (d,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        a = 1 << ((self.P.bit_length() - 1) // 2)
        b = self.P // a
        sigma_a, sigma_b = torch.randperm(a, generator=gen), torch.randperm(b, generator=gen)
        self.a, self.b = a, b
        self.perm = (sigma_a[:, None] * b + sigma_b[None, :]).reshape(-1).to(device)
        self.filled = -(-d // b)  # rows of Z that hold entries of z; the rest are padding
        self.left = hadamard_matrix(a, dtype, device)[sigma_a.to(device)][:, : self.filled].contiguous()  # (a, filled)
        self.right = hadamard_matrix(b, dtype, device)[:, sigma_b.to(device)].contiguous()  # (b, b)
        self._maps = {}  # (scale, keep) -> dense (d, keep) map, for sides below DENSE_SIDE_BELOW

    @property
    def mixes_densely(self) -> bool:
        """Whether `mix` is one matmul with the dense map (a side padded to fewer than DENSE_SIDE_BELOW)."""
        return self.P < DENSE_SIDE_BELOW

    def mix(self, x: torch.Tensor, scale: float = 1.0, keep: int | None = None) -> torch.Tensor:
        """(N, d) -> (N, W), W >= keep (default P): its first `keep` entries are those of pi(H_P D x),
        times scale; with keep None, W = P.

        The result may be this side's workspace, overwritten by its next call: use it before then."""
        N, b, filled = x.shape[0], self.b, self.filled
        if self.mixes_densely:  # small factors make batched products of tiny matrices: one matmul
            return x @ self.dense_map(scale, self.P if keep is None else min(keep, self.P))
        rows = self.a if keep is None or keep >= self.P else -(-keep // b)
        sign = self.sign if scale == 1.0 else self.sign * scale
        ws = self._workspace(N, rows, x.dtype, x.device)
        if ws is None:
            z = torch.nn.functional.pad(x * sign, (0, filled * b - self.d)).view(N, filled, b)
            mixed = torch.matmul(self.left[:rows], z)  # (N, rows, b)
            return (mixed.view(N * rows, b) @ self.right).view(N, rows * b)
        padded, mixed, out = ws  # the same steps into buffers kept between calls (no page faults)
        torch.mul(x, sign, out=padded[:, : self.d])
        torch.bmm(self.left[:rows].expand(N, rows, filled), padded.view(N, filled, b), out=mixed)
        torch.mm(mixed.view(N * rows, b), self.right, out=out.view(N * rows, b))
        return out

    def dense_map(self, scale: float, keep: int) -> torch.Tensor:
        """The dense (d, keep) map x -> the first keep entries of pi(H_P D x) times scale: column j is
        sign * H_P[perm[j], :d] (H_P = H_a kron H_b, symmetric)."""
        key = (scale, keep)
        if key not in self._maps:
            H = torch.kron(hadamard_matrix(self.a, self.sign.dtype, self.sign.device),
                           hadamard_matrix(self.b, self.sign.dtype, self.sign.device))
            self._maps[key] = (H[self.perm[:keep], : self.d].T * (self.sign * scale)[:, None]).contiguous()
        return self._maps[key]

    def _workspace(self, N: int, rows: int, dtype, device):
        """Buffers for mix, kept for the last (N, rows) up to WORKSPACE_MAX_ELEMENTS (chunks repeat their
        size; fresh multi-megabyte tensors cost page faults on every call); None beyond it."""
        if N * self.P > WORKSPACE_MAX_ELEMENTS:
            return None
        key = (N, rows, dtype, device)
        if getattr(self, "_ws_key", None) != key:
            self._ws_key = key
            self._ws = (torch.zeros(N, self.filled * self.b, dtype=dtype, device=device),
                        torch.empty(N, rows, self.b, dtype=dtype, device=device),
                        torch.empty(N, rows * self.b, dtype=dtype, device=device))
        return self._ws


def wrapped(x: torch.Tensor, width: int, M: int, owner) -> torch.Tensor:
    """(N, width): x's first M columns repeated cyclically; in owner's buffer when it is small enough."""
    N = x.shape[0]
    if N * width > WORKSPACE_MAX_ELEMENTS:
        return x[:, :M].repeat(1, -(-width // M))[:, :width]
    buf = getattr(owner, "_wrap", None)
    if buf is None or buf.shape != (N, width) or buf.dtype != x.dtype or buf.device != x.device:
        buf = owner._wrap = torch.empty(N, width, dtype=x.dtype, device=x.device)
    for start in range(0, width, M):
        stop = min(width, start + M)
        buf[:, start:stop].copy_(x[:, : stop - start])
    return buf
