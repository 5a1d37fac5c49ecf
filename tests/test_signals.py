import itertools

import numpy as np
import pandas as pd
import pytest

from gradscope import signals


def brute_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.integers(0, 6, n).astype(float)  # many ties
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    assert signals.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_without_both_classes_is_nan():
    assert np.isnan(signals.auroc([1, 2], [True, True]))


def test_precision_recall():
    assert signals.precision_recall([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, 0.5)


def table(seed=0, n=30, steps=(0, 5, 10)):
    rng = np.random.default_rng(seed)
    rows = [dict(step=s, split="train", example_id=i, loss=rng.random(), grad_cos_mean=rng.uniform(-1, 1),
                 correct=rng.random() < 0.5)
            for s in steps for i in range(n)]
    return pd.DataFrame(rows)


def test_high_loss_flags_misclassified():
    ex = table(seed=4)
    det = signals.detect_high_loss(ex)
    np.testing.assert_array_equal(det["flagged"], ~ex["correct"])
    np.testing.assert_allclose(det["score"], ex["loss"])


def test_delta_loss_top_k_by_brute_force():
    ex = table(seed=1)
    det, groups = signals.detect_delta_loss(signals.loss_changes(ex), top_k=4)
    for a, b in [(0, 5), (5, 10)]:
        la = ex[ex.step == a].set_index("example_id")["loss"]
        lb = ex[ex.step == b].set_index("example_id")["loss"]
        delta = lb - la
        top = set(delta.abs().sort_values(ascending=False).index[:4])
        got = det[(det.step == b) & det.flagged]
        assert set(got.example_id) == top
        g = groups[groups.step_to == b]
        assert set(g[g.group == "loss_up"].example_id) == {i for i in top if delta[i] > 0}
        assert set(g[g.group == "loss_down"].example_id) == {i for i in top if delta[i] < 0}
    assert set(det.step) == {5, 10}


def test_cos_rule_flags_and_scores():
    ex = table(seed=2)
    det = signals.detect_cos_rule(ex, threshold=-0.1)
    np.testing.assert_array_equal(det["flagged"], ex["grad_cos_mean"] < -0.1)
    np.testing.assert_allclose(det["score"], -ex["grad_cos_mean"])


def test_detect_signals_scores_planted_examples():
    ex = table(seed=3)
    planted = [0, 1, 2]
    ex.loc[ex.example_id.isin(planted) & (ex.step > 0), "grad_cos_mean"] = -0.9  # they oppose the mean
    ex = pd.concat([ex, ex.assign(split="test")])  # test rows are ignored
    det, groups, summary = signals.detect_signals(ex, cos_threshold=-0.1, top_k=3, planted_ids=planted)
    assert summary["headline"]["opposition_auroc"] == 1.0
    per = pd.DataFrame(summary["per_step"])
    row = per[(per.detector == "cos_rule") & (per.step == 10)].iloc[0]
    assert row.auroc > 0.9 and row.recall == 1.0
    assert len(det) == 2 * 30 * 3 + 30 * 2  # cos and loss rows for every step, delta rows for every transition
    assert set(summary["headline"]) >= {"final_auroc_cos_rule", "final_auroc_delta_loss", "final_auroc_high_loss"}
    assert summary["headline"]["final_auroc_cos_rule"] == row.auroc
    _, _, plain = signals.detect_signals(ex, cos_threshold=-0.1, top_k=3, planted_ids=None)
    assert "headline" not in plain and "auroc" not in plain["per_step"][0]
