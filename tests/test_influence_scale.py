"""Influence and signals at scale: blockwise TracIn-CP against the unblocked scores, the choice of
test examples (a bounded count by default, misclassified, explicit ids), the stage end to end on
synthetic examples tables, and which columns the influence and signals stages read."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradscope import config, detections, influence, opposing, readers, signals
from gradscope.pipeline import compute_influence


def _arrays(seed, C=3, n_train=37, n_test=11, k=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(C, n_train, k)), rng.normal(size=(C, n_test, k)), rng.uniform(0.1, 1.0, size=C))


@pytest.mark.parametrize("train_block", [1, 7, 10, 36, 37, 1000])  # 7, 10 and 36 do not divide 37 (1: raised to top_k)
@pytest.mark.parametrize("block", [3, 512])
def test_blockwise_scores_are_the_unblocked_ones(train_block, block):
    train, test, lr = _arrays(2)
    full = influence.tracin_cp(train, test, lr)  # float64 throughout, so blocks change nothing but rounding order
    top = influence.top_influences(train, test, lr, top_k=6, block=block, block_size=train_block)
    for t in range(test.shape[1]):
        order = np.argsort(-full[t], kind="stable")
        np.testing.assert_array_equal(top["ids"][t, 0], order[:6])
        np.testing.assert_array_equal(top["ids"][t, 1], order[::-1][:6])
        np.testing.assert_allclose(top["score"][t, 0], full[t, order[:6]], rtol=1e-12)
        np.testing.assert_allclose(top["score"][t, 1], full[t, order[::-1][:6]], rtol=1e-12)
    unblocked = influence.top_influences(train, test, lr, top_k=6, block=10**6, block_size=10**6)
    for key in ("ids", "score", "contributions"):
        np.testing.assert_allclose(top[key], unblocked[key], rtol=1e-12, atol=0)


def test_top_k_past_the_training_set_and_progress_reaches_every_pair():
    train, test, lr = _arrays(3, n_train=5, n_test=4)
    seen = []
    top = influence.top_influences(train, test, lr, top_k=9, block=3, block_size=2,
                                   progress=lambda done, total: seen.append((done, total)))
    assert top["ids"].shape == (4, 2, 5)
    assert sorted(top["ids"][0, 0].tolist()) == list(range(5))
    assert seen[-1] == (20, 20) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_default_scores_a_bounded_seeded_count():
    settings = config.filled("influence", {})
    assert settings["test_examples"] == 200 and settings["test_selection"] == "random" and settings["test_ids"] == []
    ids = np.arange(10, 5010)
    chosen, note = influence.choose_test(ids, settings)
    assert len(chosen) == 200 and set(chosen) <= set(ids) and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, influence.choose_test(ids, settings)[0]) and "200 drawn at random" in note
    assert not np.array_equal(chosen, influence.choose_test(ids, {**settings, "seed": 1})[0])
    assert len(influence.choose_test(ids[:50], settings)[0]) == 50  # fewer than the count: all
    assert len(influence.choose_test(ids, {**settings, "test_examples": 0})[0]) == len(ids)  # 0: every one


def test_misclassified_and_explicit_ids():
    ids = np.arange(100)
    final = pd.DataFrame({"example_id": ids, "correct": ids % 7 != 0})  # 15 wrong: 0, 7, ..., 98
    wrong = ids[ids % 7 == 0]
    base = config.filled("influence", {"test_selection": "misclassified"})
    chosen, note = influence.choose_test(ids, base, final)
    assert np.array_equal(chosen, wrong) and "15 test examples the last checkpoint gets wrong" in note
    capped, _ = influence.choose_test(ids, {**base, "test_examples": 4}, final)
    assert len(capped) == 4 and set(capped) <= set(wrong)
    fallback, note = influence.choose_test(ids, {**base, "test_examples": 5}, final.assign(correct=True))
    assert len(fallback) == 5 and "a random choice instead" in note
    given = {**base, "test_ids": [42, 3, 17]}
    assert influence.choose_test(ids, given, final)[0].tolist() == [3, 17, 42]
    with pytest.raises(ValueError, match="test_ids.*1000"):
        influence.choose_test(ids, {**base, "test_ids": [3, 1000]}, final)
    with pytest.raises(ValueError, match="test_selection"):
        influence.choose_test(ids, {**base, "test_selection": "hardest"}, final)


# ---- the stages on synthetic tables --------------------------------------------------------------
def _write_run(tmp_path, *, steps=(0, 5, 10, 20), n_train=60, n_test=30, k=6, seed=0):
    """Examples tables with every column the workflow writes that the stages read, plus the split tables and
    metrics; returns (examples paths, metrics path, train path, test path, the projections by split)."""
    rng = np.random.default_rng(seed)
    paths, proj = [], {"train": [], "test": []}
    for s in steps:
        parts = []
        for split, n in (("train", n_train), ("test", n_test)):
            g = rng.normal(size=(n, k)).astype(np.float32)
            proj[split].append(g)
            loss = rng.exponential(size=n)
            label = np.arange(n) % 3
            pred = np.where(rng.random(n) < 0.3, (label + 1) % 3, label)
            parts.append(pd.DataFrame({
                "split": split, "example_id": np.arange(n), "label": label, "loss": loss, "pred": pred,
                "correct": pred == label, "p_true": np.exp(-loss), "margin": rng.normal(size=n),
                "grad_norm": np.linalg.norm(g, axis=1), "grad_cos_mean": rng.uniform(-1, 1, n),
                "el2n": rng.random(n), "planted": np.arange(n) < (6 if split == "train" else 0),
                "grad_proj": list(g)}))
        table = pa.Table.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)
        path = tmp_path / "examples" / f"step={s}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(table, path)
        paths.append(path)
    metrics = tmp_path / "metrics.parquet"
    pd.DataFrame({"step": list(steps), "lr": [0.5, 0.4, 0.3, 0.2]}).to_parquet(metrics)
    split_paths = []
    for split, n in (("train", n_train), ("test", n_test)):
        p = tmp_path / f"{split}.parquet"
        pd.DataFrame({"example_id": np.arange(n), "label": np.arange(n) % 3,
                      "clean_label": np.where(np.arange(n) < 3, (np.arange(n) + 1) % 3, np.arange(n) % 3),
                      "planted": np.arange(n) < (6 if split == "train" else 0)}).to_parquet(p)
        split_paths.append(p)
    return paths, metrics, *split_paths, {s: np.stack(v) for s, v in proj.items()}


@pytest.fixture
def read_log(monkeypatch):
    """Every Parquet read of the examples tables: (columns, filters) of pandas and pyarrow reads."""
    calls = []
    real_pd, real_pq = pd.read_parquet, pq.read_table

    def pd_read(path, *args, columns=None, **kw):
        if "examples" in str(path):
            calls.append((None if columns is None else list(columns), kw.get("filters")))
        return real_pd(path, *args, columns=columns, **kw)

    def pq_read(path, *args, columns=None, filters=None, **kw):
        if "examples" in str(path):
            calls.append((None if columns is None else list(columns), filters))
        return real_pq(path, *args, columns=columns, filters=filters, **kw)

    monkeypatch.setattr(pd, "read_parquet", pd_read)
    monkeypatch.setattr(pq, "read_table", pq_read)
    return calls


def test_compute_influence_scores_the_chosen_test_examples_blockwise(tmp_path, read_log, caplog):
    paths, metrics, train_path, test_path, proj = _write_run(tmp_path)
    out = {k: tmp_path / "influence" / f"{k}.{ext}" for k, ext in
           (("top", "parquet"), ("contributions", "parquet"), ("summary", "json"))}
    settings = {"test_examples": 8, "top_k": 4, "block_size": 7, "seed": 3}
    with caplog.at_level(logging.INFO, logger="gradscope"):
        summary = compute_influence(settings, examples_paths=paths, metrics_path=metrics, train_path=train_path,
                                    test_path=test_path, out=out, run_id="exp/run")
    chosen, _ = influence.choose_test(np.arange(30), config.filled("influence", settings))
    assert summary["n_test_scored"] == 8 and summary["n_test"] == 30 and summary["n_train"] == 60
    assert "8 drawn at random" in summary["test_chosen"] and summary["seconds"] >= 0
    top = pd.read_parquet(out["top"])
    assert sorted(top["test_id"].unique()) == chosen.tolist()
    full = influence.tracin_cp(proj["train"], proj["test"][:, chosen], [0.5, 0.4, 0.3, 0.2])
    for i, t in enumerate(chosen):
        mine = top[(top["test_id"] == t) & (top["kind"] == "proponent")].sort_values("rank")
        assert mine["train_id"].tolist() == np.argsort(-full[i], kind="stable")[:4].tolist()
        np.testing.assert_allclose(mine["score"], np.sort(full[i])[::-1][:4], rtol=1e-5)
    # only the columns it needs: never a whole table (grad_proj with split and example_id only)
    assert read_log and all(cols is not None for cols, _ in read_log)
    assert all(set(cols) <= {"split", "example_id", "grad_proj"} for cols, _ in read_log if "grad_proj" in cols)
    text = caplog.text
    assert "scoring 8 of 30 test examples" in text and "read checkpoint 4 of 4" in text
    assert "scored test x training pairs 480 of 480 (100%" in text


def test_compute_influence_misclassified(tmp_path):
    paths, metrics, train_path, test_path, _ = _write_run(tmp_path, seed=1)
    out = {k: tmp_path / "influence" / f"{k}.{ext}" for k, ext in
           (("top", "parquet"), ("contributions", "parquet"), ("summary", "json"))}
    summary = compute_influence({"test_selection": "misclassified", "test_examples": 3, "top_k": 2},
                                examples_paths=paths, metrics_path=metrics, train_path=train_path,
                                test_path=test_path, out=out, run_id="exp/run")
    last = pd.read_parquet(paths[-1])
    wrong = set(last[(last["split"] == "test") & ~last["correct"]]["example_id"])
    scored = set(pd.read_parquet(out["top"])["test_id"])
    assert len(scored) == 3 == summary["n_test_scored"] and scored <= wrong


def test_signals_read_the_projections_only_of_the_opposing_groups_rows(tmp_path, read_log):
    paths, metrics, *_ = _write_run(tmp_path, seed=2)
    lr = pd.read_parquet(metrics).set_index("step")["lr"]
    settings = config.filled("signals", {"opposing_groups": {"top_k": 5}})
    tr = detections.read_trajectories(paths, lr, settings)
    # the detectors' columns without grad_proj, then per interval a file's split, example_id, grad_proj
    whole = [cols for cols, _ in read_log if "grad_proj" not in cols]
    assert whole and all(set(cols) == set(detections.COLUMNS) for cols in whole)
    assert all(cols == ["split", "example_id", "grad_proj"] for cols, _ in read_log if "grad_proj" in cols)
    full = signals.Trajectories.from_table(readers.read_examples(paths), lr=lr)
    assert isinstance(tr.proj, detections.SomeProjections) and tr.proj.shape == full.proj.shape
    assert sum(len(p) for p, _ in tr.proj.rows.values()) <= 5 * (len(tr.steps) - 1)
    for key in full.values:
        np.testing.assert_array_equal(tr.values[key], full.values[key])
    with pytest.raises(KeyError):
        tr.proj[len(tr.steps) - 1, np.array([0])]  # the last checkpoint's are never read
    metrics_table = pd.DataFrame({"step": tr.steps, "train_acc": 0.5, "test_acc": 0.5, "lr": tr.lr})
    planted = list(range(6))
    ours, found = detections.analyze(tr, metrics_table, settings, planted, None)
    theirs, found_full = detections.analyze(full, metrics_table, settings, planted, None)
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name])
    assert json.dumps(found, sort_keys=True, default=str) == json.dumps(found_full, sort_keys=True, default=str)
    assert opposing.find_groups(tr, top_k=5, n_groups=2, seed=0)[1].equals(
        opposing.find_groups(full, top_k=5, n_groups=2, seed=0)[1])
