"""Issue 32: one timeline per run (gradscope.timeline). Events are found on synthetic traces
with planted spikes, crossings and antiphase pairs (recall and precision against the planted
ones), the shuffled baseline is checked against its closed form, links on a hand-made case, and
the dense checkpoint window (train.checkpoints.dense) is counted without a list."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from gradscope import preflight, report, signals
from gradscope import timeline as tl
from gradscope.config import ConfigError, checkpoint_count, checkpoint_steps, load_config, section_defaults

SEEDS = range(8)


def _recall_precision(planted: list[tuple[float, float]], found: list[float]) -> tuple[float, float]:
    """A planted event (its extent) is recalled when a found step lies inside it; a found step is
    precise when it lies inside a planted extent."""
    hit = [any(a <= f <= b for f in found) for a, b in planted]
    good = [any(a <= f <= b for a, b in planted) for f in found]
    return (float(np.mean(hit)) if hit else 1.0), (float(np.mean(good)) if good else 1.0)


# ---- loss spikes ----------------------------------------------------------------------------
def _spiky_trace(seed: int, n: int = 400, log_every: int = 10, n_spikes: int = 8):
    """A decaying training loss with 2% multiplicative noise and spikes of 1.3x to 3x lasting 1 to
    3 logged points, at least 12 points apart and after the first 30."""
    rng = np.random.default_rng(seed)
    step = np.arange(n) * log_every
    loss = (np.exp(-step / (n * log_every / 4)) + 0.1) * np.exp(rng.normal(0, 0.02, n))
    loss *= 1 + 0.03 * np.sin(step / 37.0)  # a slow oscillation below the margin
    starts = np.sort(rng.choice(np.arange(30, n - 5, 12), n_spikes, replace=False))
    planted = []
    for s in starts:
        width = int(rng.integers(1, 4))
        loss[s:s + width] *= rng.uniform(1.3, 3.0, width)
        planted.append((float(step[s]), float(step[s + width - 1])))
    return step, loss, planted


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_spikes_recover_the_planted_spikes(seed):
    step, loss, planted = _spiky_trace(seed)
    found = tl.loss_spikes(step, loss, window=20, margin=0.1)
    assert list(found.columns) == tl.COLUMNS and set(found["kind"]) <= {tl.SPIKE}
    recall, precision = _recall_precision(planted, found["step"].tolist())
    assert recall >= 0.9 and precision >= 0.9, (recall, precision, planted, found)
    assert (found["resolution"] == 10).all() and (found["value"] > 1.1).all()
    assert ((found["step_start"] <= found["step"]) & (found["step"] <= found["step_end"])).all()


def test_spike_margin_and_window_decide_what_a_spike_is():
    step = np.arange(120) * 5.0
    loss = np.ones(120)
    loss[40] = 1.3                     # 30% above the baseline
    loss[80:92] = 1.5                  # a level shift lasting 12 points
    small = tl.loss_spikes(step, loss, window=20, margin=0.1)
    assert small["step"].tolist()[0] == 200 and math.isclose(small["value"].iloc[0], 1.3)
    large = tl.loss_spikes(step, loss, window=20, margin=0.5)  # spike_margin: 1.3x is no longer a spike
    assert 200 not in large["step"].tolist()
    # spike_window: a short baseline catches up with a raised level after half its points
    long_w = tl.loss_spikes(step, loss, window=20, margin=0.1).iloc[-1]
    short_w = tl.loss_spikes(step, loss, window=4, margin=0.1).iloc[-1]
    assert (long_w["step_start"], long_w["step_end"]) == (400, 450)  # 11 points, until 11 of 20 are raised
    assert (short_w["step_start"], short_w["step_end"]) == (400, 410)  # 3 points, until 3 of 4 are


# ---- sharpness crossings --------------------------------------------------------------------
def _true_crossings(f, thr, lo, hi):
    t = np.linspace(lo, hi, 200_001)
    d = f(t) - thr(t)
    i = np.flatnonzero(np.sign(d[1:]) != np.sign(d[:-1]))
    return t[i], np.where(d[i + 1] >= 0, tl.REACH, tl.LEAVE)


@pytest.mark.parametrize("seed", SEEDS)
def test_sharpness_crossings_recover_the_planted_crossings_within_their_resolution(seed):
    rng = np.random.default_rng(seed)
    lr = 0.5
    period = rng.uniform(300, 500)
    f = lambda t: 4.0 * (1 - np.exp(-t / 200)) * (1 + 0.15 * np.sin(2 * np.pi * t / period))  # noqa: E731
    thr = lambda t: np.full_like(t, 2 / lr)  # noqa: E731
    ckpt = np.unique(np.concatenate([[0, 3000], np.sort(rng.uniform(0, 3000, 120)).round()]))
    sharp = f(ckpt) * (1 + rng.normal(0, 0.002, len(ckpt)))
    true, kinds = _true_crossings(f, thr, 0, 3000)
    # the crossings the checkpoints can resolve: a pair with no checkpoint between them is never seen
    seen = np.ones(len(true), bool)
    for k in range(len(true) - 1):
        if not ((ckpt > true[k]) & (ckpt < true[k + 1])).any():
            seen[k] = seen[k + 1] = False
    true, kinds = true[seen], kinds[seen]
    found = tl.sharpness_crossings(ckpt, sharp, thr(ckpt))
    assert len(true) >= 8
    # a found crossing is right when a true one of its kind lies within its resolution (the gap of
    # the checkpoints that bracket it; noise may move a crossing close to a checkpoint across it)
    near = (np.abs(true[None, :] - found["step"].to_numpy()[:, None]) <= found["resolution"].to_numpy()[:, None]) \
        & (kinds[None, :] == found["kind"].to_numpy()[:, None])  # (found, true)
    recall, precision = near.any(0).mean(), near.any(1).mean()
    assert recall >= 0.9 and precision >= 0.9, (recall, precision, true, found)
    assert ((found["value"] >= 1) == (found["kind"] == tl.REACH)).all()
    assert (found["resolution"] == found["step_end"] - found["step_start"]).all()
    assert set(found["kind"][::2]) <= {tl.REACH} and set(found["kind"][1::2]) <= {tl.LEAVE}  # they alternate


def test_a_threshold_that_follows_the_lr_schedule_and_an_adaptive_optimizer():
    step = np.array([0, 100, 200, 300, 400.0])
    sharp = np.full(5, 3.0)
    lr = np.array([0.5, 0.5, 0.5, 1.0, 1.0])  # 2/lr drops from 4 to 2 between 200 and 300
    found = tl.sharpness_crossings(step, sharp, 2 / lr)
    assert found["kind"].tolist() == [tl.REACH] and found["step_start"].tolist() == [200]
    assert found["step"].iloc[0] == pytest.approx(250) and found["value"].iloc[0] == pytest.approx(1.5)
    assert found["resolution"].tolist() == [100]
    assert tl.sharpness_crossings(step, sharp, [None] * 5).empty  # null 2/lr: no events
    assert tl.sharpness_crossings(step, [1, 5, 1, 5, 1.0], [4.0, np.nan, 4.0, np.nan, 4.0]).empty  # null rows left out


# ---- antiphase ------------------------------------------------------------------------------
def _pair_trace(seed: int, n: int = 60):
    """Two groups' losses over uneven checkpoints: they fall together (shared noisy changes),
    except over two planted stretches where they swing against each other."""
    rng = np.random.default_rng(seed)
    step = np.cumsum(rng.integers(5, 40, n)).astype(float)
    common = rng.normal(-0.02, 0.03, n - 1)
    da = common + rng.normal(0, 0.001, n - 1)
    db = common + rng.normal(0, 0.001, n - 1)
    planted = []
    for first in (10, 35):
        length = int(rng.integers(6, 10))
        sign = np.where(np.arange(length) % 2 == 0, 1.0, -1.0) * rng.uniform(0.1, 0.2, length)
        da[first:first + length] = -0.01 + sign
        db[first:first + length] = -0.01 - sign
        planted.append((first, first + length))  # changes first..first+length-1: checkpoints first..first+length
    a = 3 + np.concatenate([[0], np.cumsum(da)])
    b = 3 + np.concatenate([[0], np.cumsum(db)])
    return step, a, b, planted


@pytest.mark.parametrize("seed", SEEDS)
def test_antiphase_intervals_recover_the_planted_stretches_with_their_sign(seed):
    step, a, b, planted = _pair_trace(seed)
    window = 3
    found = tl.antiphase_intervals(step, a, b, window=window, threshold=-0.5)
    assert set(found["kind"]) == {tl.ANTIPHASE}
    assert (found["value"] <= -0.5).all() and (found["value"] >= -1).all()
    extents = [(step[i], step[j]) for i, j in planted]
    recall, precision = _recall_precision(extents, found["step"].tolist())
    assert recall >= 0.9 and precision >= 0.9, (recall, precision, extents, found)
    for (i, j), row in zip(planted, found.itertuples()):
        # the interval reaches no further than the window's changes around the planted stretch
        reach = step[max(i - window + 1, 0)], step[min(j + window - 1, len(step) - 1)]
        assert reach[0] <= row.step_start and row.step_end <= reach[1]
        inside = step[(step >= row.step_start) & (step <= row.step_end)]
        assert row.resolution == np.diff(inside).max() and row.step == (row.step_start + row.step_end) / 2
    # losses moving together are never in antiphase
    assert tl.antiphase_intervals(step, a, a + 0.1, window=window, threshold=-0.5).empty


def test_antiphase_window_and_threshold():
    step = np.arange(0, 200, 10.0)
    da = np.full(19, -0.01)
    da[6:14] = [0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3]
    db = -0.01 - da  # b swings against a ...
    db[9:11] = [-0.2, 0.4]  # ... but less cleanly in its middle
    a, b = 2 + np.concatenate([[0], np.cumsum(da)]), 2 + np.concatenate([[0], np.cumsum(db)])
    extents = lambda df: list(zip(df["step_start"], df["step_end"]))  # noqa: E731
    # the correlations of windows 4, 5, ...: -1 -1 -1 -0.64 0.37 0.64 -0.37 -1 -1 -1
    base = tl.antiphase_intervals(step, a, b, window=3, threshold=-0.5)
    assert extents(base) == [(40, 100), (110, 160)] and (base["value"] < -0.9).all()
    wider = tl.antiphase_intervals(step, a, b, window=5, threshold=-0.5)  # antiphase_window: each reaches further
    assert extents(wider) == [(20, 100), (110, 180)]
    strict = tl.antiphase_intervals(step, a, b, window=3, threshold=-0.99)  # antiphase_threshold: -0.64 is out
    assert extents(strict) == [(40, 90), (110, 160)] and (strict["value"] <= -0.99).all()


# ---- the shuffled baseline ------------------------------------------------------------------
def _events(rows):
    return tl._frame([{"resolution": 1.0, "value": 1.0, **r} for r in rows], tl.EVENT_COLUMNS)


@pytest.mark.parametrize("n_crossings", [1, 3])
def test_shuffled_baseline_matches_uniform_placement(n_crossings):
    L, w, shuffles = 10_000.0, 250.0, 4000
    spikes = [{"kind": tl.SPIKE, "step": s, "step_start": s, "step_end": s} for s in (2000, 5000, 8000)]
    cross = [{"kind": tl.REACH, "step": c, "step_start": c - 1, "step_end": c} for c in (100, 4000, 9000)[:n_crossings]]
    _, out = tl.links(_events(spikes + cross), window=w, shuffles=shuffles, seed=1, span=(0, L))
    p = 1 - (1 - 2 * w / L) ** n_crossings  # each spike (w from the edges) near one of n uniform crossings
    assert out["spikes_near_crossing_expected"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / shuffles))
    # the three spikes are near independently only for one crossing: there the sd is the binomial one
    if n_crossings == 1:
        assert out["spikes_near_crossing_expected_sd"] == pytest.approx(math.sqrt(p * (1 - p) / 3), rel=0.15)
    # shuffles and seed: one placement gives a fraction of thirds and no spread; a seed repeats itself
    _, one = tl.links(_events(spikes + cross), window=w, shuffles=1, seed=1, span=(0, L))
    assert one["spikes_near_crossing_expected"] * 3 == pytest.approx(round(one["spikes_near_crossing_expected"] * 3))
    assert one["spikes_near_crossing_expected_sd"] == 0
    _, same = tl.links(_events(spikes + cross), window=w, shuffles=shuffles, seed=1, span=(0, L))
    _, other = tl.links(_events(spikes + cross), window=w, shuffles=shuffles, seed=3, span=(0, L))
    assert same == out and other["spikes_near_crossing_expected"] != out["spikes_near_crossing_expected"]


def test_shuffled_antiphase_interval_keeps_its_length():
    L, w, ell = 10_000.0, 100.0, 1000.0
    rows = [{"kind": tl.SPIKE, "step": 5000.0, "step_start": 5000.0, "step_end": 5000.0},
            {"kind": tl.ANTIPHASE, "step": 4900.0, "step_start": 4400.0, "step_end": 5400.0}]
    _, out = tl.links(_events(rows), window=w, shuffles=4000, seed=0, span=(0, L))
    p = (ell + 2 * w) / (L - ell)  # the start is uniform over [0, L - ell]
    assert out["spikes_with_antiphase"] == 1 and out["spikes_with_antiphase_fraction"] == 1
    assert out["spikes_with_antiphase_expected"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / 4000))
    assert out["spikes_with_antiphase_p"] == pytest.approx(out["spikes_with_antiphase_expected"])  # 1 spike: P(>= 1)


# ---- links ----------------------------------------------------------------------------------
def test_links_on_a_hand_made_timeline():
    rows = [{"kind": tl.SPIKE, "step": s, "step_start": s, "step_end": s, "resolution": 10.0, "value": v}
            for s, v in ((100, 1.5), (500, 2.0), (900, 1.2))]
    rows += [{"kind": tl.REACH, "step": 110.0, "step_start": 80.0, "step_end": 160.0, "resolution": 80.0, "value": 1.1},
             {"kind": tl.LEAVE, "step": 700.0, "step_start": 650.0, "step_end": 720.0, "resolution": 70.0,
              "value": 0.9},
             {"kind": tl.ANTIPHASE, "step": 485.0, "step_start": 450.0, "step_end": 520.0, "resolution": 40.0,
              "value": -0.8, "group_a": 0, "group_b": 2, "step_from": 40},
             {"kind": tl.GENERALIZATION, "step": 600.0, "step_start": 590.0, "step_end": 600.0, "resolution": 10.0,
              "value": 0.97}]
    table, out = tl.links(tl._frame(rows, tl.EVENT_COLUMNS), window=50, shuffles=200, seed=0, span=(0, 1000))
    assert list(table.columns) == tl.LINK_COLUMNS
    assert table["step"].tolist() == [100, 500, 900]
    assert table["nearest_crossing_step"].tolist() == [110, 700, 700]
    assert table["nearest_crossing_kind"].tolist() == [tl.REACH, tl.LEAVE, tl.LEAVE]
    assert table["crossing_distance"].tolist() == [10, 200, 200]
    assert table["near_crossing"].tolist() == [True, False, False]
    assert table["antiphase_distance"].tolist() == [350, 0, 380]
    assert table["antiphase_active"].tolist() == [False, True, False]
    assert table["resolution"].tolist() == [80, 70, 70]  # the coarser of the spike's and its crossing's
    assert table["window"].tolist() == [50, 50, 50]
    assert (out["n_spikes"], out["n_crossings"], out["n_antiphase"]) == (3, 2, 1)
    assert out["spikes_near_crossing"] == 1 and out["spikes_near_crossing_fraction"] == pytest.approx(1 / 3)
    assert out["spikes_with_antiphase"] == 1 and out["spikes_with_antiphase_fraction"] == pytest.approx(1 / 3)
    assert out["window"] == 50 and "resolution" in out and "logging interval (10 steps)" in out["resolution"]
    for name in ("spikes_near_crossing", "spikes_with_antiphase"):
        assert 0 <= out[f"{name}_expected"] <= 1 and 0 <= out[f"{name}_p"] <= 1 and out[f"{name}_expected_sd"] >= 0
    # link_window null: twice the checkpoint interval each spike lies in
    checkpoints = [0, 64, 128, 256, 512, 1000]
    table, out = tl.links(tl._frame(rows, tl.EVENT_COLUMNS), window=None, shuffles=200, seed=0, span=(0, 1000),
                          checkpoints=checkpoints)
    assert table["window"].tolist() == [128, 512, 976]
    # on a checkpoint, the larger interval beside it; beyond the last, the last interval
    assert tl.spike_windows([0, 64, 256, 1000, 1200], checkpoints).tolist() == [128, 128, 512, 976, 976]
    assert table["near_crossing"].tolist() == [True, True, True] and out["window"] is None
    assert (out["window_min"], out["window_max"]) == (128, 976)
    # no spikes: counts and no fractions
    _, none = tl.links(tl._frame(rows[3:], tl.EVENT_COLUMNS), window=50, shuffles=10, seed=0, span=(0, 1000))
    assert none["n_spikes"] == 0 and none["spikes_near_crossing_fraction"] is None


# ---- events of a run ------------------------------------------------------------------------
def _run_tables(seed: int = 0, threshold=True):
    step, loss, planted = _spiky_trace(seed, n=300)
    metrics = pd.DataFrame({"step": step, "lr": 0.5, "train_loss": loss, "test_loss": loss * 1.1,
                            "train_acc": np.clip(step / 1000, 0, 1), "test_acc": np.clip((step - 1500) / 1000, 0, 1)})
    ckpt = np.array([0, 10, 30, 100, 300, 600, 900, 1200, 1500, 1800, 2100, 2400, 2700, 2990.0])
    sharp = np.array([1, 2, 3, 3.5, 4.2, 3.9, 4.1, 3.8, 3.7, 4.05, 3.6, 3.5, 3.4, 3.3])
    curvature = pd.DataFrame({"step": ckpt, "sharpness": sharp, "lr": 0.5,
                              "sharpness_threshold": 4.0 if threshold else None})
    pairs = pd.DataFrame([
        {"step_from": 10, "step_to": 30, "group_a": 0, "group_b": 1, "size_a": 5, "size_b": 5, "mean_delta_a": 0.1,
         "mean_delta_b": -0.1, "cosine": -0.4, "opposing": True},
        {"step_from": 300, "step_to": 600, "group_a": 1, "group_b": 3, "size_a": 6, "size_b": 4, "mean_delta_a": 0.2,
         "mean_delta_b": -0.2, "cosine": -0.9, "opposing": True},
        {"step_from": 300, "step_to": 600, "group_a": 0, "group_b": 2, "size_a": 6, "size_b": 4, "mean_delta_a": 0.2,
         "mean_delta_b": 0.1, "cosine": 0.5, "opposing": False}])
    swing = np.where(np.arange(len(ckpt)) % 2 == 0, 0.2, -0.2)
    losses = pd.concat([pd.DataFrame({"step_from": 300, "step_to": 600, "group": g, "step": ckpt, "mean_loss": m})
                        for g, m in ((1, 2 - ckpt / 3000 + swing), (3, 2 - ckpt / 3000 - swing),
                                     (0, 2 - ckpt / 3000), (2, 2 - ckpt / 3000))]
                       + [pd.DataFrame({"step_from": 10, "step_to": 30, "group": g, "step": ckpt, "mean_loss": 1.0})
                          for g in (0, 1)], ignore_index=True)
    return metrics, curvature, losses, pairs, planted


def test_events_of_a_run_gather_every_kind_for_the_top_pair():
    metrics, curvature, losses, pairs, planted = _run_tables()
    gen = signals.generalization_events(metrics, train_threshold=0.99, test_threshold=0.95)
    head = report.headline(metrics, {"generalization": gen, "per_step": []}, curvature)
    ev = tl.events(metrics, curvature, losses, pairs, head, section_defaults("timeline"))
    assert list(ev.columns) == tl.EVENT_COLUMNS and ev["step"].is_monotonic_increasing
    assert set(ev["kind"]) == set(tl.KINDS)
    spikes = ev[ev["kind"] == tl.SPIKE]
    recall, precision = _recall_precision(planted, spikes["step"].tolist())
    assert recall >= 0.9 and precision >= 0.9
    assert ev[ev["kind"] == tl.REACH]["step_start"].tolist() == [100, 600, 1500]
    assert ev[ev["kind"] == tl.LEAVE]["step_start"].tolist() == [300, 900, 1800]
    mem, gen_row = ev[ev["kind"] == tl.MEMORIZATION].iloc[0], ev[ev["kind"] == tl.GENERALIZATION].iloc[0]
    assert (mem["step"], mem["step_start"], mem["resolution"]) == (head["step_memorized"], 980, 10)
    assert gen_row["step"] == head["step_generalized"] == 2450 and gen_row["value"] >= 0.95
    anti = ev[ev["kind"] == tl.ANTIPHASE]
    assert len(anti) == 1 and anti["value"].iloc[0] == pytest.approx(-1, abs=0.01)  # the swing over the whole run
    assert (anti["group_a"].iloc[0], anti["group_b"].iloc[0], anti["step_from"].iloc[0]) == (1, 3, 300)
    assert ev.loc[ev["kind"] != tl.ANTIPHASE, "group_a"].isna().all()
    assert tl.top_pair(pairs) == {"group_a": 1, "group_b": 3, "step_from": 300, "step_to": 600, "cosine": -0.9}
    # under an adaptive optimizer 2/lr is null: no crossings, the rest as before
    _, adaptive, *_ = _run_tables(threshold=False)
    ev2 = tl.events(metrics, adaptive, losses, pairs, head, {})
    assert not ev2["kind"].isin(tl.CROSSINGS).any() and (ev2["kind"] == tl.SPIKE).sum() == len(spikes)
    # nothing to go on: an empty table of the same columns
    assert list(tl.events(None, None, None, None, None, None).columns) == tl.EVENT_COLUMNS


def test_build_resolves_link_window_and_correlates_the_loss_with_the_pair():
    metrics, curvature, losses, pairs, _ = _run_tables()
    ev, table, out = tl.build(metrics, curvature, losses, pairs, {}, {"link_window": None, "shuffles": 50})
    ckpt = curvature["step"].to_numpy()
    assert (table["window"] == tl.spike_windows(table["step"], ckpt)).all() and out["window"] is None
    _, fixed, out_fixed = tl.build(metrics, curvature, losses, pairs, {}, {"link_window": 5, "shuffles": 50})
    assert (fixed["window"] == 5).all() and out_fixed["window"] == 5  # link_window: a fixed window
    assert out_fixed["spikes_near_crossing"] <= out["spikes_near_crossing"]
    assert out["pair"]["step_from"] == 300 and out["n_events"][tl.SPIKE] == len(table)
    assert out["span"] == [0, metrics["step"].max()]
    json.dumps(out, allow_nan=False)  # the stage writes it as summary.json
    # the training loss swinging with the pair's loss difference
    m = metrics.copy()
    diff = np.interp(m["step"], ckpt, 2 * np.where(np.arange(len(ckpt)) % 2 == 0, 0.2, -0.2))
    m["train_loss"] = 1 + 0.5 * diff
    pair = tl.top_pair(pairs)
    assert tl.loss_group_correlation(m, losses, pair) == pytest.approx(1)
    m["train_loss"] = 1 - 0.5 * diff
    assert tl.loss_group_correlation(m, losses, pair) == pytest.approx(-1)
    assert tl.loss_group_correlation(m[m["step"] <= 30], losses, pair) is None  # 3 checkpoints: 2 intervals
    assert tl.loss_group_correlation(m, losses, None) is None


# ---- settings -------------------------------------------------------------------------------
def test_timeline_settings_defaults_and_validation():
    defaults = {"spike_window": 20, "spike_margin": 0.1, "link_window": None, "antiphase_window": 3,
                "antiphase_threshold": -0.5, "shuffles": 1000, "seed": 0}
    assert section_defaults("timeline") == defaults and tl._settings({}) == defaults
    assert tl._settings({"timeline": {"seed": 4}, "train": {}})["seed"] == 4  # a run's settings hold the block
    base = {"experiments": {"e": {"data": {"generator": "modular", "modular": {"p": 11}},
                                  "timeline": {"spike_margin": 0.2, "link_window": 40, "seed": 3}}}}
    t = load_config(base)["experiments"]["e"]["timeline"]
    assert t == {**defaults, "spike_margin": 0.2, "link_window": 40, "seed": 3}
    base["experiments"]["e"]["timeline"] = {"antiphase_threshold": -2}
    with pytest.raises(ConfigError, match="timeline.antiphase_threshold"):
        load_config(base)


# ---- dense checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize("rule, expected", [
    ({"log_spaced": 4, "dense": {"from": 40, "to": 60, "every": 5}}, [0, 1, 10, 40, 45, 50, 55, 60, 100]),
    ({"every": 30, "dense": {"from": 50, "to": 75, "every": 10}}, [0, 30, 50, 60, 70, 90, 100]),
    ({"at": [3, 50], "dense": {"from": 90, "to": 500, "every": 4}}, [0, 3, 50, 90, 94, 98, 100]),
    ({"dense": {"from": 0, "to": 4, "every": 2}, "every": 50}, [0, 2, 4, 50, 100]),
    ({"every": 50, "dense": None}, [0, 50, 100]),
])
def test_dense_checkpoints_add_a_window_to_the_main_rule(rule, expected):
    train = {"steps": 100, "checkpoints": rule}
    assert checkpoint_steps(train) == expected and checkpoint_count(train) == len(expected)


def test_dense_checkpoints_are_counted_without_a_list():
    rng = np.random.default_rng(0)
    for _ in range(300):  # the arithmetic count against the list, over random rules
        steps = int(rng.integers(1, 400))
        main = [{"every": int(rng.integers(1, 60))}, {"at": rng.integers(0, 500, 4).tolist()},
                {"log_spaced": int(rng.integers(2, 30))}][int(rng.integers(3))]
        lo, hi = sorted(rng.integers(0, 450, 2).tolist())
        dense = {"from": lo, "to": hi, "every": int(rng.integers(1, 50))}
        train = {"steps": steps, "checkpoints": {**main, "dense": dense}}
        assert checkpoint_count(train) == len(checkpoint_steps(train)), train
    huge = {"steps": 10**12, "checkpoints": {"every": 15, "dense": {"from": 0, "to": 10**12, "every": 7}}}
    overlap = 10**12 // 105 + 1 + (10**12 % 7 == 0)  # multiples of 105, and the last step if 7 divides it
    assert checkpoint_count(huge) == (10**12 // 15 + 2) + (10**12 // 7 + 1) - overlap
    with pytest.raises(ConfigError, match="train.checkpoints.every: 15"):
        checkpoint_steps(huge)  # refuses before it builds any list
    dense_only = {"steps": 10**12, "checkpoints": {"log_spaced": 10, "dense": {"from": 0, "to": 10**9, "every": 1}}}
    with pytest.raises(ConfigError, match="train.checkpoints.dense"):
        checkpoint_steps(dense_only)
    key, text = preflight._checkpoint_problem(dense_only, 1000)
    assert key == "train.checkpoints.log_spaced" and "train.checkpoints.dense" in text and "1,000,000,0" in text


def test_dense_checkpoints_in_the_schema():
    base = {"experiments": {"e": {"data": {"generator": "modular", "modular": {"p": 11}},
                                  "train": {"checkpoints": {"log_spaced": 5,
                                                            "dense": {"from": 10, "to": 20, "every": 2}}}}}}
    train = load_config(base)["experiments"]["e"]["train"]
    assert checkpoint_steps(train) == [0, 1, 10, 12, 14, 16, 18, 20, 100, 1000]
    for bad in ({"dense": {"from": 1, "to": 2, "every": 1}},  # no main rule
                {"every": 5, "at": [1]},  # two main rules
                {"every": 5, "dense": {"from": 1, "to": 2}}):  # dense without every
        base["experiments"]["e"]["train"]["checkpoints"] = bad
        with pytest.raises(ConfigError, match="train.checkpoints"):
            load_config(base)
