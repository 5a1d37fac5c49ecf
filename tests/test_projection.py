"""The projection kinds (gradscope.projection) against their definitions and against a dense Gaussian.

The engine's use of each kind (every path through it) is checked in tests/grad_rules/test_grad_rules.py
(test_hadamard_projection_on_every_path) against the dense form tested here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gradscope import hadamard
from gradscope import projection as pj
from gradscope.examples import per_example_gradients, per_example_stats, project_gradients, random_projection
from gradscope.models import InputSpec, build_model


def _mlp_problem(width, dim, classes, n, seed):
    """A float64 MLP in eval mode and n random examples for it."""
    torch.manual_seed(seed)
    model = build_model({"kind": "mlp", "depth": 2, "width": width, "activation": "gelu"},
                        InputSpec("dense", dim, 0, classes)).double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    return model, torch.randn(n, dim, generator=gen, dtype=torch.float64), torch.randint(classes, (n,), generator=gen)


def _hadamard(rows, cols, k, seed=0):
    return pj.SampledHadamard(rows, cols, k, torch.Generator().manual_seed(seed), torch.float64, "cpu")


def definition(f: pj.SampledHadamard) -> torch.Tensor:
    """Dense (rows * cols, k) map from the docstring's definition, entry by entry."""
    P, Q = f.out.P, f.inp.P
    HP = torch.tensor(scipy.linalg.hadamard(P), dtype=torch.float64) / math.sqrt(P)
    HQ = torch.tensor(scipy.linalg.hadamard(Q), dtype=torch.float64) / math.sqrt(Q)
    left = HP[f.out.perm][:, : f.rows] * f.out.sign  # row p: pi_P(H_P D_r) restricted to the real rows
    right = HQ[f.inp.perm][:, : f.cols] * f.inp.sign
    m, M = min(P, Q), max(P, Q)
    out = torch.zeros(f.rows * f.cols, f.k, dtype=torch.float64)
    for j in range(f.k):
        i, r = j % m, j // m
        p, q = (i, (i + r) % M) if P <= Q else ((i + r) % M, i)
        out[:, j] = torch.outer(left[p], right[q]).reshape(-1) * math.sqrt(P * Q / f.k)
    return out


@pytest.mark.parametrize("dense_side_below", [1, hadamard.DENSE_SIDE_BELOW])  # factored mixing, and dense for small sides
@pytest.mark.parametrize("rows, cols, k", [(3, 5, 7), (10, 7, 32), (5, 33, 200), (16, 16, 300), (1, 9, 8), (6, 1, 4),
                                           (300, 2, 64)])
def test_hadamard_matches_its_definition_on_every_path(rows, cols, k, dense_side_below, monkeypatch):
    monkeypatch.setattr(hadamard, "DENSE_SIDE_BELOW", dense_side_below)
    f = _hadamard(rows, cols, k, seed=rows + cols)
    for side in (f.out, f.inp):  # each side's (product) permutation is a permutation of its P entries
        assert torch.equal(side.perm.sort().values, torch.arange(side.P))
    D = definition(f)
    torch.testing.assert_close(f.dense(), D, rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    G, H = torch.randn(9, rows, generator=gen, dtype=torch.float64), torch.randn(9, cols, generator=gen,
                                                                                 dtype=torch.float64)
    outer = (G[:, :, None] * H[:, None, :]).reshape(9, -1)
    torch.testing.assert_close(f.tokens(G, H), outer @ D, rtol=0, atol=1e-12)  # the rank-one path
    E = torch.randn(9, rows, cols, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(f.project(E), E.reshape(9, -1) @ D, rtol=0, atol=1e-12)  # explicit gradients
    kron = torch.stack([torch.kron(f.A[:, j], f.B[:, j]) for j in range(k)], dim=1)  # the Kronecker factors
    torch.testing.assert_close(kron, D, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows, cols, k, seed", [(3, 5, 15, 0), (3, 5, 40, 1), (4, 2, 9, 2), (1, 6, 6, 3)])
def test_injection_matches_its_definition_on_every_path(rows, cols, k, seed):
    # "hadamard" gives a matrix with numel <= k distinct outputs: entry (p, q) to offset + p cols + q
    # with sign s_r(p) s_c(q), an exact isometry; every path of the interface equals that dense map.
    f = pj.build("hadamard", (rows, cols), k, torch.Generator().manual_seed(seed), torch.float64, "cpu")
    assert isinstance(f, pj.Injection) and 0 <= f.offset <= k - rows * cols
    D = torch.zeros(rows * cols, k, dtype=torch.float64)
    for p in range(rows):
        for q in range(cols):
            D[p * cols + q, f.offset + p * cols + q] = f.s_r[p] * f.s_c[q]
    torch.testing.assert_close(f.dense(), D, rtol=0, atol=0)
    torch.testing.assert_close(D @ D.T, torch.eye(rows * cols, dtype=torch.float64))  # isometry
    gen = torch.Generator().manual_seed(9)
    G, H = torch.randn(7, rows, generator=gen, dtype=torch.float64), torch.randn(7, cols, generator=gen,
                                                                                 dtype=torch.float64)
    outer = (G[:, :, None] * H[:, None, :]).reshape(7, -1)
    torch.testing.assert_close(f.tokens(G, H), outer @ D)
    acc = torch.randn(7, k, dtype=torch.float64)
    want = acc + outer @ D
    f.add_tokens(acc, G, H)
    torch.testing.assert_close(acc, want)
    E = torch.randn(7, rows, cols, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(f.project(E), E.reshape(7, -1) @ D)
    kron = torch.stack([torch.kron(f.A[:, j], f.B[:, j]) for j in range(k)], dim=1)  # the Kronecker factors
    torch.testing.assert_close(kron, D, rtol=0, atol=0)
    assert set(f.s_r.tolist()) | set(f.s_c.tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("dense_max", [0, 1 << 20])
def test_gaussian_projection_of_explicit_gradients_on_both_paths(monkeypatch, dense_max):
    # Explicit per-example gradients (convolutions, the vmap fallback) go through Kron.project: by the
    # dense map when it is small, by the factors beyond; both equal the Kronecker columns' definition.
    monkeypatch.setattr(pj, "DENSE_MAX_ELEMENTS", dense_max)
    f = pj.build("gaussian", (7, 3, 5), 24, torch.Generator().manual_seed(2), torch.float64, "cpu")
    D = torch.stack([torch.kron(f.A[:, j], f.B[:, j]) for j in range(24)], dim=1)
    E = torch.randn(6, 7, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(f.project(E), E.reshape(6, -1) @ D, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("numel, k, seed", [(50, 16, 0), (50, 16, 3), (20, 64, 0), (20, 64, 9), (64, 64, 1)])
def test_count_sketch_matches_its_definition(numel, k, seed):
    f = pj.CountSketch(numel, k, torch.Generator().manual_seed(seed), torch.float64, "cpu")
    D = torch.zeros(numel, k, dtype=torch.float64)
    for i in range(numel):
        D[i, f.bucket[i]] = f.sign[i]
    torch.testing.assert_close(f.dense(), D, rtol=0, atol=0)
    x = torch.randn(4, numel, dtype=torch.float64)
    torch.testing.assert_close(f.project(x), x @ D)
    acc = torch.randn(4, k, dtype=torch.float64)  # the engine's path adds into the other layers' sum
    want = acc + x @ D
    f.add_project(acc, x)
    torch.testing.assert_close(acc, want)
    assert set(f.sign.tolist()) == {-1.0, 1.0}
    counts = torch.bincount(f.bucket, minlength=k)
    assert int(counts.max()) - int(counts.min()) <= 1  # balanced: floor or ceiling of numel / k per bucket
    # (seed 9 puts the 20 entries at offset 62 of 64: the slice wraps around)
    if numel <= k:  # distinct buckets: an exact isometry
        torch.testing.assert_close(D @ D.T, torch.eye(numel, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6, 11), (13,)])
def test_inner_products_are_unbiased(shape):
    # Mean over 2,000 seeds of <P x, P y> against <x, y>, within 4 standard errors; a wrong
    # scale (e.g. sqrt(P Q / k) left out) or a missing sign is far outside.
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    kind = "hadamard"
    est = []
    for seed in range(2000):
        f = pj.build(kind, shape, 8, torch.Generator().manual_seed(seed), torch.float64, "cpu")
        px, py = f.project(x[None]), f.project(y[None])
        est.append(float((px * py).sum()))
    est = np.array(est)
    exact = float((x * y).sum())
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    # and the norm: E ||P x||^2 = ||x||^2
    assert abs(np.mean([float(pj.build(kind, shape, 8, torch.Generator().manual_seed(s), torch.float64,
                                        "cpu").project(x[None]).pow(2).sum()) for s in range(500)])
               / float(x.pow(2).sum()) - 1) < 0.1


def test_cosine_errors_match_a_dense_gaussian_projection():
    # On an MLP's per-example gradients: |projected cosine - exact cosine| over all pairs, at the
    # median and the 95th percentile, within 20% of an i.i.d. Gaussian projection of the same k
    # for both kinds (bench/bench_projections.py measures it at scale).
    model, x, y = _mlp_problem(48, 30, 5, 60, seed=0)
    flat = per_example_gradients(model, x, y)
    iu = torch.triu_indices(60, 60, 1)

    def cos(z):
        z = z / z.norm(dim=1, keepdim=True)
        return (z @ z.T)[iu[0], iu[1]]

    exact = cos(flat)
    k, errors = 96, {}
    for name in ("gaussian", "hadamard", "dense"):
        runs = []
        for seed in range(10):
            if name == "dense":
                R = torch.randn(flat.shape[1], k, generator=torch.Generator().manual_seed(100 + seed),
                                dtype=torch.float64)
                z = flat @ R
            else:
                z = project_gradients(flat, model, k, seed=seed, projection=name)
            runs.append((cos(z) - exact).abs())
        errors[name] = torch.cat(runs)
    q = {name: (float(e.quantile(0.5)), float(e.quantile(0.95))) for name, e in errors.items()}
    for name in ("gaussian", "hadamard"):
        assert q[name][0] < 1.2 * q["dense"][0] and q[name][1] < 1.2 * q["dense"][1], q


def test_engine_projection_equals_projecting_the_gradients():
    model, x, y = _mlp_problem(24, 12, 4, 17, seed=1)
    flat = per_example_gradients(model, x, y)
    for kind, k in (("hadamard", 100), ("auto", pj.HADAMARD_FROM_K)):
        got = per_example_stats(model, x, y, proj_dim=k, seed=4, batch_size=5, projection=kind)["grad_proj"]
        want = (flat @ random_projection(model, k, seed=4, projection="hadamard")).float().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_auto_and_unknown_kinds():
    assert pj.resolve_kind("auto", pj.HADAMARD_FROM_K - 1) == "gaussian"
    assert pj.resolve_kind("auto", pj.HADAMARD_FROM_K) == "hadamard"
    assert pj.resolve_kind("gaussian", 4096) == "gaussian"
    with pytest.raises(ValueError, match="unknown projection 'srht'; known: auto, gaussian, hadamard"):
        pj.resolve_kind("srht", 8)
