"""Detectors and their scoring, each against a slow loop over examples and checkpoints."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from gradscope import artifacts, detections, opposing, readers, scoring, signals
from gradscope.config import load_config
from support.signals import planted_pair_trajectories

DEFAULTS = load_config({"experiments": {"e": {"data": {"generator": "planted_flips"}}}})["experiments"]["e"]["signals"]


# ---- scoring ---------------------------------------------------------------------------------
def brute_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def random_scores(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.integers(0, 6, n).astype(float)  # many ties
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    return scores, labels


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_count_with_ties(seed):
    scores, labels = random_scores(seed)
    assert scoring.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_a_loop_and_scikit_learn(seed):
    scores, labels = random_scores(seed)
    # loop: for each positive, precision among everything scoring at least as high as it
    brute = np.mean([np.mean(labels[scores >= s]) for s in scores[labels]])
    assert scoring.average_precision(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert scoring.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    continuous = np.random.default_rng(seed).random(len(labels))
    assert scoring.average_precision(continuous, labels) == pytest.approx(average_precision_score(labels, continuous))


def test_scores_without_truth_are_nan_and_simple_cases():
    assert np.isnan(scoring.auroc([1, 2], [True, True]))
    assert np.isnan(scoring.average_precision([1, 2], [False, False]))
    assert scoring.precision_recall([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, 0.5)
    assert scoring.at_k([0.9, 0.1, 0.8, 0.2], [1, 0, 0, 1], 2) == (0.5, 0.5)


def test_evaluate_against_a_loop():
    rng = np.random.default_rng(7)
    det = pd.DataFrame({"step": np.repeat([0, 5], 40), "example_id": np.tile(np.arange(40), 2), "detector": "d",
                        "score": rng.random(80), "flagged": rng.random(80) < 0.3})
    planted = [1, 4, 9, 16, 25]
    ev = scoring.evaluate(det, planted)
    for step in (0, 5):
        d = det[det.step == step]
        truth = d.example_id.isin(planted).to_numpy()
        row = ev[ev.step == step].iloc[0]
        top5 = d.sort_values("score", ascending=False).head(5)
        assert row.n_flagged == d.flagged.sum()
        assert row.auroc == pytest.approx(brute_auroc(d.score.to_numpy(), truth))
        assert row.precision_at_k == pytest.approx(top5.example_id.isin(planted).mean())
        assert row.recall_at_k == pytest.approx(top5.example_id.isin(planted).sum() / 5)
        assert row.precision == pytest.approx(truth[d.flagged.to_numpy()].mean())
    plain = scoring.evaluate(det, None)
    assert list(plain.columns) == list(ev.columns) and plain[list(scoring.QUALITY)].isna().all().all()


# ---- detectors ------------------------------------------------------------------------------
def trajectories(seed=0, n=25, steps=(0, 10, 20, 40, 80, 160), proj_dim=6):
    rng = np.random.default_rng(seed)
    rows = [dict(step=s, split="train", example_id=i, loss=rng.exponential(), p_true=rng.random(),
                 margin=rng.normal(), correct=bool(rng.random() < 0.6), grad_norm=rng.exponential(),
                 grad_cos_mean=rng.uniform(-1, 1), el2n=rng.random() * 1.4,
                 grad_proj=rng.normal(size=proj_dim).astype(np.float32))
            for s in steps for i in range(n)]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # any row order
    test = table.assign(split="test", loss=99.0)  # ignored
    lr = pd.Series([0.1, 0.05, 0.01], index=[0, 15, 100])  # logged at steps 0, 15, 100
    return table, signals.Trajectories.from_table(pd.concat([table, test]), lr=lr)


def scores_of(tr, name, settings=None):
    return signals.DETECTORS[name](tr, {**DEFAULTS[name], **(settings or {})})


def values(table, step, column):
    return table[table.step == step].set_index("example_id")[column].sort_index()


def test_trajectories_read_the_table_and_the_lr_at_each_checkpoint():
    table, tr = trajectories()
    np.testing.assert_array_equal(tr.steps, [0, 10, 20, 40, 80, 160])
    np.testing.assert_allclose(tr.lr, [0.1, 0.1, 0.05, 0.05, 0.05, 0.01])  # last logged value at or before
    np.testing.assert_allclose(tr.values["loss"][3], values(table, 40, "loss"))
    np.testing.assert_allclose(tr.proj[2, 7], values(table, 20, "grad_proj")[7])
    with pytest.raises(ValueError, match="every training example at every checkpoint"):
        signals.Trajectories.from_table(table.iloc[1:])


def test_cos_rule_high_loss_el2n_grand_read_their_column():
    table, tr = trajectories(1)
    s, f = scores_of(tr, "cos_rule")["cos_rule"]
    np.testing.assert_allclose(s[2], -values(table, 20, "grad_cos_mean"))
    np.testing.assert_array_equal(f[2], values(table, 20, "grad_cos_mean") < -0.1)
    s, f = scores_of(tr, "high_loss")["high_loss"]
    np.testing.assert_array_equal(f[4], ~values(table, 80, "correct"))
    for name, column in (("el2n", "el2n"), ("grand", "grad_norm")):
        s, f = scores_of(tr, name, {"flag_fraction": 0.2})[name]
        v = values(table, 10, column)
        np.testing.assert_allclose(s[1], v)
        assert set(tr.example_ids[f[1]]) == set(v.sort_values(ascending=False).index[:5])  # ceil(0.2 * 25)


def test_opposing_groups_flags_top_k_loss_changes():
    table, tr = trajectories(2)
    s, f = scores_of(tr, "opposing_groups", {"top_k": 4})["opposing_groups"]
    assert np.isnan(s[0]).all() and not f[0].any()
    for t, (a, b) in enumerate(zip(tr.steps, tr.steps[1:]), start=1):
        delta = values(table, b, "loss") - values(table, a, "loss")
        np.testing.assert_allclose(s[t], delta.abs())
        assert set(tr.example_ids[f[t]]) == set(delta.abs().sort_values(ascending=False).index[:4])


def test_loss_trajectory_slope_and_volatility_by_loop():
    table, tr = trajectories(3)
    w = 3
    out = scores_of(tr, "loss_trajectory", {"window": w, "slope_threshold": 0.3, "volatility_threshold": 0.5})
    loss = tr.values["loss"]
    for t in range(len(tr.steps)):
        for i in range(len(tr.example_ids)):
            if t < w - 1:
                assert np.isnan(out["loss_increasing"][0][t, i])
                continue
            seg = loss[t - w + 1 : t + 1, i]
            slope = np.polyfit(np.arange(w), seg, 1)[0]
            d = np.diff(seg)
            vol = (sum(abs(x) for x in d) - abs(sum(d))) / (w - 1)
            assert out["loss_increasing"][0][t, i] == pytest.approx(slope)
            assert out["loss_decreasing"][0][t, i] == pytest.approx(-slope)
            assert out["loss_volatile"][0][t, i] == pytest.approx(vol, abs=1e-12)
            assert out["loss_increasing"][1][t, i] == (slope > 0.3)
            assert out["loss_decreasing"][1][t, i] == (slope < -0.3)
            assert out["loss_volatile"][1][t, i] == (vol > 0.5)


def test_cartography_forgetting_aum_tracin_by_loop():
    table, tr = trajectories(4)
    carto = signals.cartography(tr)
    cart_s, cart_f = scores_of(tr, "cartography")["cartography"]
    forg_s, forg_f = scores_of(tr, "forgetting", {"min_events": 2})["forgetting"]
    aum_s, aum_f = scores_of(tr, "aum")["aum"]
    tin_s, _ = scores_of(tr, "tracin")["tracin"]
    for t in range(len(tr.steps)):
        for i, ex in enumerate(tr.example_ids):
            p = [values(table, s, "p_true")[ex] for s in tr.steps[: t + 1]]
            c = [bool(values(table, s, "correct")[ex]) for s in tr.steps[: t + 1]]
            m = [values(table, s, "margin")[ex] for s in tr.steps[: t + 1]]
            g = [values(table, s, "grad_norm")[ex] for s in tr.steps[: t + 1]]
            assert carto["confidence"][t, i] == pytest.approx(np.mean(p))
            assert carto["variability"][t, i] == pytest.approx(np.std(p), abs=1e-9)
            assert carto["correctness"][t, i] == pytest.approx(np.mean(c))
            assert cart_s[t, i] == pytest.approx(1 - np.mean(p)) and cart_f[t, i] == (np.mean(p) < 0.5)
            events = sum(1 for a, b in zip(c, c[1:]) if a and not b)
            never = not any(c)
            assert forg_s[t, i] == (t + 1 if never else events)
            assert forg_f[t, i] == (never or events >= 2)
            assert aum_s[t, i] == pytest.approx(-np.mean(m)) and aum_f[t, i] == (np.mean(m) < 0)
            assert tin_s[t, i] == pytest.approx(sum(lr * x**2 for lr, x in zip(tr.lr, g)))


def test_detect_writes_one_long_table_and_rejects_unknown_detectors():
    _, tr = trajectories(5)
    det = signals.detect(tr, DEFAULTS)
    n, T = len(tr.example_ids), len(tr.steps)
    counts = det.groupby("detector").size()
    assert counts["cos_rule"] == n * T and counts["opposing_groups"] == n * (T - 1)
    assert counts["loss_volatile"] == n * (T - DEFAULTS["loss_trajectory"]["window"] + 1)
    assert set(counts.index) == {"cos_rule", "opposing_groups", "loss_increasing", "loss_decreasing", "loss_volatile",
                                 "cartography", "forgetting", "el2n", "grand", "aum", "tracin", "high_loss"}
    assert det["score"].notna().all()
    with pytest.raises(ValueError, match="unknown detector.*known"):
        signals.detect(tr, {**DEFAULTS, "detectors": ["cos_rule", "nope"]})


def test_generalization_events_and_flag_counts_around_them():
    metrics = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50], "train_acc": [0.1, 0.5, 1.0, 1.0, 1.0, 1.0],
                            "test_acc": [0.96, 0.1, 0.2, 0.5, 0.97, 0.99]})
    ev = signals.generalization_events(metrics, train_threshold=0.99, test_threshold=0.95)
    assert (ev["step_memorized"], ev["step_generalized"], ev["delay_steps"]) == (20, 40, 20)  # not step 0's 0.96
    never = signals.generalization_events(metrics, train_threshold=0.99, test_threshold=0.995)
    assert math.isnan(never["step_generalized"])
    det = pd.DataFrame({"step": [10, 10, 30, 40, 50], "example_id": [0, 1, 0, 0, 0], "detector": "d",
                        "score": 0.0, "flagged": [True, True, False, True, False]})
    around = signals.flagged_around(det, 40).iloc[0]
    assert around.flagged_before == 1.0 and around.flagged_after == 0.5


# ---- opposing groups --------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters_and_is_a_fixed_point():
    rng = np.random.default_rng(0)
    centers = np.array([[5.0, 0, 0], [0, 5, 0], [0, 0, 5]])
    truth = rng.permutation(np.repeat([0, 1, 2], [12, 8, 5]))
    x = centers[truth] + 0.3 * rng.standard_normal((25, 3))
    labels = opposing.kmeans(x, 3, seed=1)
    assert np.bincount(labels).tolist() == [12, 8, 5]  # numbered by size
    for j in range(3):  # each recovered group is one true cluster
        assert len(set(truth[labels == j])) == 1
    means = np.array([x[labels == j].mean(0) for j in range(3)])
    nearest = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest, labels)


def test_find_groups_recovers_the_planted_opposing_pair():
    tr = planted_pair_trajectories()
    groups, pairs, losses = opposing.find_groups(tr, top_k=20, n_groups=2, seed=0)
    planted = {"A": list(range(10)), "B": list(range(10, 20))}
    result = scoring.evaluate_groups(groups, pairs, list(range(20)), planted)
    assert result["planted_pair_found"] is True and result["planted_pair_steps"] == [10, 20, 30]
    assert result["mean_purity"] == 1.0 and result["chance_purity"] == 0.5
    assert (pairs["cosine"] < -0.5).all() and pairs["opposing"].all()
    # each group's mean loss follows its members across every checkpoint
    for row in losses.itertuples(index=False):
        members = groups[(groups.step_to == row.step_to) & (groups.group == row.group)].example_id
        t = list(tr.steps).index(row.step)
        assert row.mean_loss == pytest.approx(tr.values["loss"][t, members.to_numpy()].mean())
    changes = opposing.loss_changes(tr)
    assert len(changes) == 3 * 80
    row = changes.iloc[5]
    assert row.delta_loss == pytest.approx(tr.values["loss"][1, 5] - tr.values["loss"][0, 5])


def test_random_groups_do_not_find_a_planted_pair():
    tr = planted_pair_trajectories()
    groups, pairs, _ = opposing.find_groups(tr, top_k=20, n_groups=2, seed=0)
    shuffled = {"A": list(range(0, 20, 2)), "B": list(range(1, 20, 2))}  # each true group split across both
    result = scoring.evaluate_groups(groups, pairs, list(range(20)), shuffled)
    assert result["planted_pair_found"] is False and result["mean_purity"] == 0.5


def test_groups_without_planted_truth_are_not_scored():
    tr = planted_pair_trajectories()
    groups, pairs, _ = opposing.find_groups(tr, top_k=20, n_groups=2, seed=0)
    result = scoring.evaluate_groups(groups, pairs, None, None)
    assert math.isnan(result["mean_purity"]) and result["planted_pair_found"] is None


@pytest.mark.parametrize("planted", [None, {}, {"train_ids": [], "groups": {}}])
def test_data_planting_nothing_has_no_truth_to_score(tmp_path, planted):
    # flip_fraction 0 (the edge-of-stability experiment) writes an empty list of planted ids: the
    # signals stage must take that as no truth, not as a truth with no positives.
    artifacts.write_json({} if planted is None else {"planted": planted}, tmp_path / "meta.json")
    assert readers.planted_truth(tmp_path / "meta.json") == (None, None)
    _, tr = trajectories(3)
    evaluation = scoring.evaluate(signals.detect(tr, DEFAULTS), None)
    assert evaluation["auroc"].isna().all()
    _, pairs, _ = opposing.find_groups(tr, **DEFAULTS["opposing_groups"])
    head = detections.headline(evaluation, signals.per_example(tr, None, None), pairs, None)
    assert set(head) == {"opposing_pairs", "min_group_cosine"}
