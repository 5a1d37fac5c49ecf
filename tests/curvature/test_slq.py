"""slq_density, stochastic Lanczos quadrature (gradscope.curvature.slq): its moments and known spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradscope.curvature import slq_density, spectral_density
from support.curvature import MatrixOperator, assert_untouched, exact_hessian, make_problem, snapshot

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def marchenko_pastur_cdf(t, ratio):
    """CDF of the Marchenko-Pastur law of X^T X / m, X (m, n) standard normal, ratio = n / m < 1:
    density sqrt((b - x)(x - a)) / (2 pi ratio x) on [a, b] = [(1 -+ sqrt(ratio))^2], integrated numerically."""
    a, b = (1 - ratio**0.5) ** 2, (1 + ratio**0.5) ** 2
    grid = np.linspace(a, b, 200_001)
    dens = np.sqrt(np.clip((b - grid) * (grid - a), 0, None)) / (2 * np.pi * ratio * grid)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    return np.interp(t, grid, cdf, left=0.0, right=1.0)


def kolmogorov_distance(nodes, weights, cdf):
    """sup_t |F(t) - cdf(t)| for the discrete measure sum_j w_j delta(theta_j): checked on both sides of every step."""
    order = np.argsort(nodes)
    nodes, weights = nodes[order], weights[order]
    F, G = np.cumsum(weights), cdf(nodes)
    return float(max(np.abs(F - G).max(), np.abs(F - weights - G).max()))


def test_slq_moments_exact_and_monte_carlo():
    model, x, y = make_problem(160)
    H = exact_hessian(model, x, y, "mse")
    n = 39
    e = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    e = e / e.norm()
    for iters, orders in ((n, range(7)), (3, range(6))):  # exact up to order 2 * steps - 1
        dens = slq_density(MatrixOperator(H), iters=iters, start=e)
        nodes, weights = dens["nodes"], dens["weights"]
        assert len(nodes) == len(weights) == iters
        for m in orders:
            want = float(e @ torch.linalg.matrix_power(H, m) @ e)
            assert float(weights @ nodes**m) == pytest.approx(want, rel=1e-8, abs=1e-12), (iters, m)
    # Rademacher starts: z^T D^m z / n = tr(D^m) / n exactly for diagonal D.
    d = torch.linspace(-1.0, 2.0, 20, dtype=torch.float64)
    dens = slq_density(MatrixOperator(torch.diag(d)), iters=20, runs=3, seed=0)
    nodes, weights = dens["nodes"], dens["weights"]
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    for m in (1, 2, 3):
        assert float(weights @ nodes**m) == pytest.approx(float((d**m).mean()), rel=1e-9)
    # On the model: moments of the spectral measure (1/n) sum delta(lambda_i), within 4 standard errors.
    runs = 10
    before = snapshot(model)
    out = spectral_density(model, x, y, loss="mse", iters=n, runs=runs, seed=4)
    assert_untouched(model, before)
    w, theta = out["weights"], out["nodes"]
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    for m in (1, 2):
        A = torch.linalg.matrix_power(H, m)
        # Var(z^T A z) = 2 (|A|_F^2 - sum A_ii^2) for Rademacher z; v = z / sqrt(n).
        se = np.sqrt(2 * float(A.pow(2).sum() - A.diag().pow(2).sum()) / n**2 / runs)
        assert abs(float(w @ theta**m) - float(torch.trace(A)) / n) <= 4 * se
    grid, dens = out["grid"], out["density"]
    assert grid.shape == dens.shape == (1000,) and np.all(dens >= 0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * dens, grid) == pytest.approx(float(w @ theta), rel=1e-3, abs=1e-6)
    on_grid = spectral_density(model, x, y, loss="mse", iters=n, runs=runs, seed=4, grid=np.linspace(-1, 1, 7))
    assert on_grid["density"].shape == (7,)


@pytest.mark.parametrize("seed", [0, 1])
def test_slq_recovers_spikes_and_a_marchenko_pastur_bulk(seed):
    """Papyan 2020's picture of a Hessian spectrum: a few outliers over a bulk. A = X^T X / m (X
    (m, n) Gaussian, n / m = 0.5: a Marchenko-Pastur bulk on [0.086, 2.914]) plus three rank-one
    spikes of strength 8, 12, 20. SLQ's quadrature measure must match the MP law in Kolmogorov
    distance (under 0.04, where MP laws of ratio 0.4 or 0.6 are over 0.05 away), put Ritz values
    on the three outliers, and give them weight ~1/n each."""
    n, ratio = 800, 0.5
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(int(n / ratio), n, generator=gen, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    A = X.T @ X / X.shape[0] + U @ torch.diag(torch.tensor([8.0, 12.0, 20.0], dtype=torch.float64)) @ U.T
    exact = torch.linalg.eigvalsh(A).numpy()
    edge = (1 + ratio**0.5) ** 2
    assert exact[-4] < edge + 0.1 and exact[-3] > edge + 5  # three outliers, the rest in the bulk
    runs = 16
    dens = slq_density(MatrixOperator(A), iters=60, runs=runs, seed=seed)
    nodes, weights = dens["nodes"], dens["weights"]
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    right = kolmogorov_distance(nodes, weights, lambda t: marchenko_pastur_cdf(t, ratio))
    assert right < 0.04
    for wrong in (0.4, 0.6):  # the threshold tells apart a bulk of a different aspect ratio
        assert kolmogorov_distance(nodes, weights, lambda t: marchenko_pastur_cdf(t, wrong)) > 0.05
    outside = nodes > edge + 1
    for spike in exact[-3:]:  # every run finds every outlier, to Lanczos accuracy
        hits = np.abs(nodes - spike) < 1e-8 * spike
        assert hits.sum() == runs
    assert np.all(np.min(np.abs(nodes[outside, None] - exact[None, -3:]), axis=1) < 1e-8 * exact[-1])
    # each outlier's weight is (u^T v)^2 / |v|^2 per run, mean 1/n: over 3 x 16 draws within a factor 2
    assert 0.5 < weights[outside].sum() / (3 / n) < 2.0
