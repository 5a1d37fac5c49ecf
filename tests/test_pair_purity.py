"""The top opposing pair of each interval judged against planted groups (scoring.pair_purity), against brute-force counts."""

import numpy as np
import pandas as pd
import pytest

from gradscope import opposing, scoring

PLANTED = {"aligned": list(range(0, 30)), "conflicting": list(range(30, 40))}  # 40..49: in no planted group


def random_tables(seed):
    """groups and pairs tables as opposing.find_groups writes them: 4 intervals, each its own
    groups of random members and random pair cosines (ties included)."""
    rng = np.random.default_rng(seed)
    group_rows, pair_rows = [], []
    for t in range(4):
        a, b = 10 * t, 10 * (t + 1)
        n_groups = int(rng.integers(2, 5))
        members = rng.choice(50, size=int(rng.integers(n_groups, 30)), replace=False)
        labels = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, len(members) - n_groups)])
        delta = rng.standard_normal(len(members))
        group_rows.append(pd.DataFrame({"step_from": a, "step_to": b, "group": labels, "example_id": members,
                                        "delta_loss": delta}))
        for i in range(n_groups):
            for j in range(i + 1, n_groups):
                cos = float(rng.choice([-0.5, -0.2, 0.3]))
                pair_rows.append({"step_from": a, "step_to": b, "group_a": i, "group_b": j,
                                  "size_a": int((labels == i).sum()), "size_b": int((labels == j).sum()),
                                  "mean_delta_a": float(delta[labels == i].mean()),
                                  "mean_delta_b": float(delta[labels == j].mean()), "cosine": cos, "opposing": cos < 0})
    return pd.concat(group_rows, ignore_index=True), pd.DataFrame(pair_rows)


def brute_pair_purity(groups, pairs, planted):
    out = {}
    for (a, b), d in pairs.groupby(["step_from", "step_to"]):
        best = None
        for row in d.itertuples():
            if not row.opposing:
                continue
            key = (row.cosine, -min(row.size_a, row.size_b), row.group_a, row.group_b)
            if best is None or key < best[0]:
                best = (key, row)
        if best is None:
            continue
        row = best[1]
        members = {g: [int(e) for e, gg, sf in zip(groups.example_id, groups.group, groups.step_from)
                       if gg == g and sf == a] for g in (row.group_a, row.group_b)}
        best_sides = (-1.0, -1.0)
        for side_a in planted:
            for side_b in planted:
                if side_a != side_b:
                    in_a = sum(e in planted[side_a] for e in members[row.group_a])
                    in_b = sum(e in planted[side_b] for e in members[row.group_b])
                    purity = (in_a + in_b) / (len(members[row.group_a]) + len(members[row.group_b]))
                    weaker = min(in_a / len(members[row.group_a]), in_b / len(members[row.group_b]))
                    best_sides = max(best_sides, (purity, weaker))
        out[(a, b)] = (row.group_a, row.group_b, *best_sides, row.mean_delta_a * row.mean_delta_b < 0)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_pair_purity_matches_a_brute_force_count(seed):
    groups, pairs = random_tables(seed)
    got = scoring.pair_purity(groups, pairs, PLANTED)
    want = brute_pair_purity(groups, pairs, PLANTED)
    assert list(zip(got.step_from, got.step_to)) == sorted(want)
    for row in got.itertuples():
        group_a, group_b, purity, side_purity, opposite = want[(row.step_from, row.step_to)]
        assert (row.group_a, row.group_b, row.opposite_moves) == (group_a, group_b, opposite)
        assert (row.purity, row.side_purity) == pytest.approx((purity, side_purity))
        assert (row.purity_a, row.purity_b) == pytest.approx((row.in_side_a / row.size_a, row.in_side_b / row.size_b))
        assert row.purity == pytest.approx((row.in_side_a + row.in_side_b) / (row.size_a + row.size_b))
        assert row.side_a != row.side_b


def test_a_pair_of_the_planted_groups_is_pure_and_a_mixed_one_is_not():
    groups = pd.DataFrame({"step_from": 0, "step_to": 5, "group": [0] * 4 + [1] * 2 + [2] * 2,
                           "example_id": [30, 31, 32, 0, 1, 2, 3, 33]})
    pairs = pd.DataFrame({"step_from": 0, "step_to": 5, "group_a": [0, 0, 1], "group_b": [1, 2, 2],
                          "size_a": [4, 4, 2], "size_b": [2, 2, 2], "mean_delta_a": [2.0, 2.0, -1.0],
                          "mean_delta_b": [-1.0, 0.5, 0.5], "cosine": [-0.9, -0.1, 0.2], "opposing": [True, True, False]})
    row = scoring.pair_purity(groups, pairs, PLANTED).iloc[0]
    assert (row.group_a, row.group_b, row.side_a, row.side_b) == (0, 1, "conflicting", "aligned")
    assert (row.in_side_a, row.in_side_b, row.purity, row.opposite_moves) == (3, 2, 5 / 6, True)
    assert (row.purity_a, row.purity_b, row.side_purity) == (3 / 4, 1.0, 3 / 4)
    mixed = pairs.assign(cosine=[-0.1, -0.9, 0.2])  # groups 0 and 2: 3 + 1 of 6 on their side at best
    row = scoring.pair_purity(groups, mixed, PLANTED).iloc[0]
    assert (row.group_b, row.purity, row.side_purity, row.opposite_moves) == (2, 4 / 6, 1 / 2, False)
    # two groups both of one planted group: the larger one alone makes the size-weighted purity high
    one_sided = pd.DataFrame({"step_from": 0, "step_to": 5, "group": [0] * 9 + [1], "example_id": list(range(10))})
    pair = pairs.iloc[:1].assign(size_a=9, size_b=1)
    row = scoring.pair_purity(one_sided, pair, PLANTED).iloc[0]
    assert (row.purity, row.side_purity, row.side_a) == (0.9, 0.0, "aligned")


def test_no_pair_purity_without_two_planted_groups_or_an_opposing_pair():
    groups, pairs = random_tables(0)
    assert scoring.pair_purity(groups, pairs, None).empty
    assert scoring.pair_purity(groups, pairs, {"aligned": PLANTED["aligned"]}).empty
    assert scoring.pair_purity(groups, pairs.assign(opposing=False), PLANTED).empty
    assert list(scoring.pair_purity(groups, pairs, None).columns) == scoring.PAIR_PURITY_COLUMNS


def test_planted_group_changes_are_each_groups_mean_loss_change():
    rng = np.random.default_rng(0)
    changes = pd.DataFrame({"step_from": np.repeat([0, 5], 50), "step_to": np.repeat([5, 9], 50),
                            "example_id": np.tile(np.arange(50), 2), "delta_loss": rng.standard_normal(100)})
    table = scoring.planted_group_changes(changes, PLANTED)
    assert list(table.columns) == ["step_from", "step_to", "aligned", "conflicting"]
    for row in table.itertuples():
        d = changes[changes.step_from == row.step_from]
        assert row.aligned == pytest.approx(d[d.example_id < 30].delta_loss.mean())
        assert row.conflicting == pytest.approx(d[(d.example_id >= 30) & (d.example_id < 40)].delta_loss.mean())
    assert scoring.planted_group_changes(changes, None).empty


def test_find_groups_tables_feed_pair_purity():
    """The planted pair of test_signals' trajectories, recovered by find_groups, is a pure top pair in antiphase."""
    from support.signals import planted_pair_trajectories

    tr = planted_pair_trajectories()
    groups, pairs, _ = opposing.find_groups(tr, top_k=20, n_groups=2, seed=0)
    table = scoring.pair_purity(groups, pairs, {"A": list(range(10)), "B": list(range(10, 20))})
    assert len(table) == 3 and (table["purity"] == 1.0).all() and table["opposite_moves"].all()


def test_top_pair_summary_marks_the_intervals_where_the_planted_groups_move_apart():
    groups, pairs = random_tables(3)
    rng = np.random.default_rng(1)
    steps = [(10 * t, 10 * (t + 1)) for t in range(4)]
    aligned_delta, conflicting_delta = [-1.0, -1.0, 0.5, 0.2], [2.0, -0.5, 0.5, -0.1]
    rows = []
    for (a, b), da, dc in zip(steps, aligned_delta, conflicting_delta):
        for e in range(50):  # the examples of neither group move at random
            d = da if e < 30 else dc if e < 40 else float(rng.standard_normal())
            rows.append({"step_from": a, "step_to": b, "example_id": e, "delta_loss": d})
    summary = scoring.top_pair_summary(groups, pairs, pd.DataFrame(rows), PLANTED)
    table = scoring.pair_purity(groups, pairs, PLANTED)
    assert [r["purity"] for r in summary["intervals"]] == pytest.approx(table["purity"].tolist())
    opposed = {(0, 10), (30, 40)}  # aligned falls while conflicting rises, and the reverse
    for r in summary["intervals"]:
        assert r["planted_opposed"] == ((r["step_from"], r["step_to"]) in opposed)
        assert r["planted_delta"]["aligned"] == pytest.approx(aligned_delta[r["step_from"] // 10])
    purities = [r["purity"] for r in summary["intervals"] if r["planted_opposed"]]
    sides = [r["side_purity"] for r in summary["intervals"] if r["planted_opposed"]]
    assert summary["n_opposed"] == len(purities) > 0
    assert summary["opposed_min_purity"] == min(purities)
    assert summary["opposed_mean_side_purity"] == pytest.approx(np.mean(sides))
    assert summary["n_opposed_pure"] == sum(s >= 0.9 for s in sides)
    assert scoring.top_pair_summary(groups, pairs, pd.DataFrame(rows), None) == {
        "intervals": [], "n_opposed": 0, "n_opposed_pure": 0, "opposed_mean_purity": None, "opposed_min_purity": None,
        "opposed_mean_side_purity": None, "opposed_min_side_purity": None}


def test_the_run_report_gives_each_intervals_top_pair_purity():
    from gradscope import report

    groups, pairs = random_tables(3)
    changes = pd.DataFrame({"step_from": np.repeat([0, 10, 20, 30], 50), "step_to": np.repeat([10, 20, 30, 40], 50),
                            "example_id": np.tile(np.arange(50), 4),
                            "delta_loss": np.where(np.tile(np.arange(50), 4) < 30, -1.0, 1.0)})
    summary = scoring.top_pair_summary(groups, pairs, changes, PLANTED)
    sentence, table = report.top_pairs_text(summary)
    assert f"over the {summary['n_opposed']} intervals where the planted groups' losses move" in sentence
    assert f"side purity mean {report.fmt(summary['opposed_mean_side_purity'])}" in sentence
    assert table.count("\n") == 1 + len(summary["intervals"]) and "| Δloss aligned | Δloss conflicting |" in table
    first = summary["intervals"][0]
    assert f"| {first['step_from']}→{first['step_to']} | -1 | 1 | yes |" in table
    assert report.top_pairs_text(None) == [] and report.top_pairs_text({"intervals": []}) == []
