"""The dashboard's per-example data stays bounded: planted examples count against max_examples (a
seeded sample of them where there are more), and of the examples tables only the columns shown are
read, the gradient projections only of the examples kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gradscope import layout
from gradscope.dashboard import collect


def test_planted_past_the_cap_are_sampled():
    ids = np.arange(1000)
    planted = ids % 4 == 0  # 250 planted, far more than the cap
    chosen = collect.select_examples(ids, planted, {1, 2}, max_examples=40, seed=0, max_planted=20)
    assert len(chosen) == 40 and {1, 2} <= set(chosen)
    assert planted[chosen].sum() == 20  # the planted sample, and the rest unplanted
    again = collect.select_examples(ids, planted, {1, 2}, max_examples=40, seed=0, max_planted=20)
    other = collect.select_examples(ids, planted, {1, 2}, max_examples=40, seed=1, max_planted=20)
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, other)
    # too few unplanted to fill the cap: planted ones left out fill it
    few = collect.select_examples(ids[:50], planted[:50], set(), max_examples=45, seed=0, max_planted=5)
    assert len(few) == 45
    # no bound given: every planted one, as before
    assert set(ids[planted]) <= set(collect.select_examples(ids, planted, set(), max_examples=5, seed=0))
    assert collect.planted_cap(500) == 250 and collect.planted_cap(5) == 3 and collect.planted_cap(0) == 0


def _run_folder(tmp_path, n=400, n_planted=120, steps=(0, 10, 20), k=4):
    rng = np.random.default_rng(0)
    folder = tmp_path / "results" / "runs" / "exp" / "run"
    for s in steps:
        rows = []
        for split, m in (("train", n), ("test", 20)):
            rows.append(pd.DataFrame({
                "split": split, "example_id": np.arange(m), "label": np.arange(m) % 2,
                "loss": rng.random(m), "p_true": rng.random(m), "margin": rng.normal(size=m),
                "grad_norm": rng.random(m), "grad_cos_mean": rng.uniform(-1, 1, m), "correct": True,
                "planted": (np.arange(m) < n_planted) & (split == "train"),
                "grad_proj": list(rng.normal(size=(m, k)).astype(np.float32))}))
        path = layout.in_run(folder, "examples", step=s)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(rows, ignore_index=True).to_parquet(path)
    return folder


def test_collect_run_bounds_planted_and_reads_only_the_columns_shown(tmp_path, monkeypatch):
    folder = _run_folder(tmp_path)
    assert len(layout.tables_in(folder, "examples")) == 3
    calls = []
    real_pd, real_pq = pd.read_parquet, pq.read_table

    def pd_read(path, *args, columns=None, **kw):
        calls.append((str(path), None if columns is None else list(columns), kw.get("filters")))
        return real_pd(path, *args, columns=columns, **kw)

    def pq_read(path, *args, columns=None, filters=None, **kw):
        calls.append((str(path), None if columns is None else list(columns), filters))
        return real_pq(path, *args, columns=columns, filters=filters, **kw)

    monkeypatch.setattr(pd, "read_parquet", pd_read)
    monkeypatch.setattr(pq, "read_table", pq_read)
    out = collect.collect_run(folder, max_examples=30, top_k=3, seed=0)
    ex = out["examples"]
    assert len(ex["ids"]) == 30 and sum(ex["planted"]) == collect.planted_cap(30) == 15  # 120 planted in the data
    assert ex["n_train"] == 400 and "pca" in ex
    reads = [(cols, filters) for path, cols, filters in calls if "examples" in path]
    assert reads and all(cols is not None for cols, _ in reads)  # never a whole examples table
    for cols, filters in reads:
        if "grad_proj" in cols:  # the projections: only of the kept examples
            kept = next(v for name, op, v in filters if name == "example_id")
            assert sorted(kept) == ex["ids"]
        else:
            assert set(cols) == set(collect.EXAMPLE_COLUMNS)
    assert not [p for p, cols, _ in calls if "examples" in p and cols and "grad_cos_mean" in cols]


@pytest.mark.parametrize("max_examples", [0, 7])
def test_small_caps_keep_flagged_and_stay_bounded(tmp_path, max_examples):
    folder = _run_folder(tmp_path, n=60, n_planted=30)
    ex = collect.collect_run(folder, max_examples=max_examples, top_k=2, seed=1)["examples"]
    assert len(ex["ids"]) == max_examples and sum(ex["planted"]) <= collect.planted_cap(max_examples)
