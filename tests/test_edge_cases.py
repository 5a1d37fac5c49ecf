"""Boundary cases the main tests step around: rounding of flag fractions, a checkpoint on a logged
lr change, the first checkpoint in run-level opposition, sub-batches that really loop, and warm
starts that miss a direction."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gradscope import signals
from gradscope.curvature import lanczos_top, start_vector
from gradscope.examples import fallback_parameters
from gradscope.grad_rules import base
from support.curvature import MatrixOperator
from support.engine import check_everything


# ---- flag fractions round up --------------------------------------------------------------------
@pytest.mark.parametrize("fraction, n, k", [(0.2, 7, 2), (0.1, 11, 2), (0.28, 25, 7), (0.7, 90, 63), (1.0, 9, 9),
                                            (0.01, 5, 1)])
def test_top_fraction_flags_ceil_of_fraction_times_n(fraction, n, k):
    # 0.2 x 7 = 1.4 -> 2 (rounding down gives 1); 0.28 x 25 is 7.000000000000001 in floats -> 7, not 8
    rng = np.random.default_rng(n)
    score = rng.permutation(3 * n).reshape(3, n).astype(float)
    flagged = signals.top_fraction(score, fraction)
    assert (flagged.sum(1) == k).all()
    for row, f in zip(score, flagged):  # the k highest of each row
        assert set(np.flatnonzero(f)) == set(np.argsort(-row)[:k])


def trajectories(steps, n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = [dict(step=s, split="train", example_id=i, loss=rng.exponential(), p_true=rng.random(), margin=rng.normal(),
                 correct=bool(rng.random() < 0.5), grad_norm=rng.exponential(), grad_cos_mean=rng.uniform(-1, 1),
                 el2n=rng.random()) for s in steps for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name", ["el2n", "grand", "tracin"])
def test_fraction_detectors_flag_the_rounded_up_count(name):
    tr = signals.Trajectories.from_table(trajectories([0, 5, 9], n=7))
    _, flagged = signals.DETECTORS[name](tr, {"flag_fraction": 0.2})[name]
    assert (flagged.sum(1) == 2).all()


# ---- TracIn's learning rate at a checkpoint on a logged lr change -------------------------------
def test_tracin_reads_the_lr_logged_at_the_checkpoint_itself():
    table = trajectories([0, 15, 100, 120])
    lr = pd.Series([0.1, 0.05, 0.01], index=[0, 15, 100])  # changes exactly at checkpoints 15 and 100
    tr = signals.Trajectories.from_table(table, lr=lr)
    np.testing.assert_allclose(tr.lr, [0.1, 0.05, 0.01, 0.01])
    score, _ = signals.DETECTORS["tracin"](tr, {"flag_fraction": 0.5})["tracin"]
    for i in range(6):  # a loop over checkpoints: sum of lr x |g|^2 so far
        total = 0.0
        for t, (step, rate) in enumerate(zip([0, 15, 100, 120], [0.1, 0.05, 0.01, 0.01])):
            g = table[(table.step == step) & (table.example_id == i)].grad_norm.item()
            total += rate * g**2
            assert score[t, i] == pytest.approx(total, rel=1e-12)
    per_example = signals.per_example(tr).set_index("example_id")
    np.testing.assert_allclose(per_example["tracin_self_influence"], score[-1], rtol=1e-12)


# ---- run-level opposition leaves the first checkpoint out ---------------------------------------
def test_opposition_is_the_mean_over_the_checkpoints_after_the_first():
    table = trajectories([0, 10, 20, 30])
    tr = signals.Trajectories.from_table(table)
    got = signals.per_example(tr).set_index("example_id")["opposition"]
    for i in range(6):
        cos = table[(table.example_id == i) & (table.step > 0)].sort_values("step").grad_cos_mean
        assert got[i] == pytest.approx(-cos.mean(), rel=1e-12)
    # one checkpoint: that one
    single = signals.Trajectories.from_table(trajectories([7]))
    np.testing.assert_allclose(signals.opposition(single), -single.values["grad_cos_mean"][0])


# ---- explicit per-example gradients in several sub-batches --------------------------------------
class PerToken(nn.Module):
    """A Linear applied to every token of (b, T, 3): T (in + out) > in x out, so its per-example
    gradients are formed explicitly, in sub-batches bounded by EXPLICIT_MAX_ELEMENTS."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(3, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.tok(x)).flatten(1))


class ConvTokens(nn.Module):
    """A Conv1d whose patches (7 positions x 6 numbers per example) are unfolded on demand, so the
    batch sum of its rank-one tokens is formed in sub-batches bounded by EXPLICIT_MAX_ELEMENTS."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 2, 2)
        self.head = nn.Linear(14, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize("arch", ["linear", "conv"])
@pytest.mark.parametrize("limit", [30, 60, 90])  # sub-batches of 1, 2 (even) and 3 (the last one shorter)
def test_explicit_linear_sub_batches_each_use_their_own_rows(monkeypatch, limit, arch):
    # per example: 2 x 3 gradient numbers + 8 tokens x 3 inputs = 30, so 60 gives sub-batches of two;
    # the convolution's sums unfold 7 x 6 patch numbers per example: sub-batches of 1, 1 and 2
    monkeypatch.setattr(base, "EXPLICIT_MAX_ELEMENTS", limit)
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = (PerToken() if arch == "linear" else ConvTokens()).double()
    x = torch.randn(7, *((8, 3) if arch == "linear" else (3, 8)), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=gen)
    # the engine's probe checks the sub-batched sums against autograd: a wrong sum would send the
    # parameter to the vmap fallback (right numbers, by another path), so none may fall back
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=7)


# ---- warm starts keep a random part ------------------------------------------------------------
def test_warm_start_finds_a_top_direction_missing_from_the_warm_vectors():
    # A diagonal operator whose warm vector is an exact eigenvector (of 9): the Krylov space of that
    # vector alone is one-dimensional, so only the random part can reach the top eigenvalue 10.
    diag = torch.cat([torch.tensor([10.0, 9.0], dtype=torch.float64), torch.linspace(0.1, 5.0, 48, dtype=torch.float64)])
    warm = torch.zeros(1, 50, dtype=torch.float64)
    warm[0, 1] = 1.0
    res = lanczos_top(MatrixOperator(torch.diag(diag)), iters=30, seed=2, k=1, tol=1e-8, warm=warm)
    assert res.eigenvalues[0] == pytest.approx(10.0, rel=1e-8)
    q = start_vector(50, 2, torch.float64, "cpu", warm=warm)
    cold = start_vector(50, 2, torch.float64, "cpu")
    # the start is the warm vector plus 0.3 x the cold (random) unit start
    torch.testing.assert_close(q, warm[0] + 0.3 * cold, rtol=1e-12, atol=1e-15)
    assert math.isclose(float(cold.norm()), 1.0, rel_tol=1e-12)
