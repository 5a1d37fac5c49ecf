"""Figures and the projection animation on small synthetic tables: files, shapes, fixed PCA axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

imageio = pytest.importorskip("imageio.v3")

from gradscope import animate, plots  # noqa: E402
from gradscope.animate import (fit_pca, layout_projection, project, render_projection_animation,  # noqa: E402
                               robust_limits, select_examples)

DPI = 40  # small images keep the tests fast; the pixel size is still figsize * dpi


def expected_shape(figsize, dpi=DPI):
    return (round(figsize[1] * dpi), round(figsize[0] * dpi))


def check_png(path, figsize):
    img = imageio.imread(path)
    assert img.shape[:2] == expected_shape(figsize)
    assert img.std() > 0  # something was drawn
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind


def metrics_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    step = np.unique(np.concatenate([[0], np.geomspace(1, 5000, n).astype(int)]))
    s = np.log(step + 1.0)
    return pd.DataFrame({
        "step": step,
        "train_loss": np.exp(-s) + 1e-3,
        "test_loss": 2.0 - s / 10,
        "train_acc": 1 / (1 + np.exp(-(s - 4) * 4)),
        "test_acc": np.clip(1 / (1 + np.exp(-(s - 7.5) * 4)) + rng.normal(0, 0.01, len(s)), 0, 1),
    })


def per_step_table(with_auroc=True):
    rows = []
    for step in (0, 10, 100, 1000):
        for det in ("cos_rule", "delta_loss"):
            row = {"detector": det, "step": step, "n_flagged": step % 7 + (3 if det == "cos_rule" else 5)}
            if with_auroc:
                row["auroc"] = np.nan if step == 0 else 0.5 + step / 4000
                row["average_precision"] = np.nan if step == 0 else 0.1 + step / 2000
            rows.append(row)
    return pd.DataFrame(rows)


def curvature_table(threshold):
    step = np.arange(0, 1001, 100)
    return pd.DataFrame({
        "step": step,
        "sharpness": 5 + step / 20,
        "sharpness_threshold": threshold,
        "hessian_trace": 100 + step / 5,
        "hessian_trace_stderr": np.full(len(step), 4.0),
    })


# ---- static figures -----------------------------------------------------------------------
def test_plot_training(tmp_path):
    path = tmp_path / "training.png"
    plots.plot_training(metrics_table(), path, title="training", dpi=DPI)
    check_png(path, plots.TRAINING_FIGSIZE)


@pytest.mark.parametrize("variant", ["auroc", "no_column", "all_nan"])
def test_plot_flagged(tmp_path, variant):
    table = per_step_table(with_auroc=variant != "no_column")
    if variant == "all_nan":
        table["auroc"] = table["average_precision"] = np.nan
    path = tmp_path / "flagged.png"
    plots.plot_flagged(table, path, title="flagged", dpi=DPI)
    # the AUROC panel (and the wider figure) only where there is ground truth
    check_png(path, plots.FLAGGED_FIGSIZE if variant == "auroc" else plots.FLAGGED_FIGSIZE_ONE)


def signal_tables():
    from support.signals import planted_pair_trajectories

    from gradscope import opposing, scoring, signals

    tr = planted_pair_trajectories()
    groups, pairs, losses = opposing.find_groups(tr, top_k=20, n_groups=3, seed=0)
    planted = {"A": list(range(10)), "B": list(range(10, 20))}
    composition = scoring.group_composition(groups, list(range(20)), planted)
    metrics = pd.DataFrame({"step": tr.steps, "train_loss": tr.values["loss"].mean(1)})
    return tr, groups, pairs, losses, composition, metrics, signals.per_example(tr, list(range(20)), planted)


def test_signal_figures(tmp_path):
    from gradscope import opposing, signal_plots

    tr, groups, pairs, losses, composition, metrics, per_example = signal_tables()
    path = tmp_path / "group_losses.png"
    signal_plots.plot_group_losses(losses, pairs, composition, metrics, path, title="groups", dpi=DPI)
    check_png(path, signal_plots.GROUP_LOSSES_FIGSIZE)
    path = tmp_path / "loss_changes.png"
    signal_plots.plot_loss_changes(opposing.loss_changes(tr), list(range(20)), path, title="changes", dpi=DPI)
    check_png(path, signal_plots.LOSS_CHANGES_FIGSIZE)
    path = tmp_path / "cartography.png"
    signal_plots.plot_cartography(per_example, path, title="cartography", dpi=DPI)
    check_png(path, signal_plots.CARTOGRAPHY_FIGSIZE)
    # no opposing pair: the figure says so rather than failing
    path = tmp_path / "none.png"
    signal_plots.plot_group_losses(losses, pairs.assign(opposing=False), composition, metrics, path, title="g", dpi=DPI)
    check_png(path, signal_plots.GROUP_LOSSES_FIGSIZE)


def test_strongest_pairs_one_per_interval_most_negative_first():
    from gradscope.signal_plots import strongest_pairs

    pairs = pd.DataFrame({"step_from": [0, 0, 10, 20, 30], "step_to": [10, 10, 20, 30, 40], "group_a": 0,
                          "group_b": [1, 2, 1, 1, 1], "cosine": [-0.2, -0.9, -0.5, 0.3, -0.1],
                          "opposing": [True, True, True, False, True]})
    chosen = strongest_pairs(pairs, n=2)
    assert chosen[["step_to", "group_b"]].values.tolist() == [[10, 2], [20, 1]]
    preferred = strongest_pairs(pairs, n=2, preferred=[False, False, False, False, True])  # e.g. the planted pair
    assert preferred[["step_to", "group_b"]].values.tolist() == [[10, 2], [40, 1]]


@pytest.mark.parametrize("threshold", [60.0, 2000.0])  # near the edge (linear) and far below it (log)
def test_plot_curvature(tmp_path, threshold):
    path = tmp_path / "curvature.png"
    plots.plot_curvature(curvature_table(threshold), metrics_table(), path, title="curvature", dpi=DPI)
    check_png(path, plots.CURVATURE_FIGSIZE)


def test_plot_sweep(tmp_path):
    runs = {f"run{i}": metrics_table(seed=i) for i in range(12)}  # more runs than tab10 has colours
    path = tmp_path / "sweep.png"
    plots.plot_sweep(runs, path, title="sweep", dpi=DPI)
    check_png(path, plots.SWEEP_FIGSIZE)


def test_plot_sweep_sharpness(tmp_path):
    curv = {f"lr~{lr}": curvature_table(2 / lr) for lr in (0.125, 0.25, 0.5)}  # thresholds 16, 8, 4
    metrics = {name: metrics_table(seed=i) for i, name in enumerate(curv)}
    path = tmp_path / "sharpness.png"
    plots.plot_sweep_sharpness(curv, metrics, path, title="sharpness", dpi=DPI)
    check_png(path, plots.SWEEP_SHARPNESS_FIGSIZE)


def test_sweep_sharpness_names_each_threshold_on_the_axis(tmp_path, monkeypatch):
    """Each distinct 2/lr is a dashed line in its run's colour and a labelled tick on a right-hand
    axis at the same height; a second seed at the same lr adds no second label."""
    import matplotlib.colors

    runs = {"lr~0.125_seed~0": 0.125, "lr~0.25_seed~0": 0.25, "lr~0.25_seed~1": 0.25, "lr~0.6_seed~0": 0.6}
    curv = {name: curvature_table(2 / lr) for name, lr in runs.items()}
    metrics = {name: metrics_table(seed=i) for i, name in enumerate(curv)}
    captured = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: (fig.canvas.draw(), captured.append(fig)))
    plots.plot_sweep_sharpness(curv, metrics, tmp_path / "s.png", title="sharpness", dpi=DPI)
    ax_s = captured[0].axes[0]
    colors = plots._colors(len(runs))
    dashed = [(line.get_ydata()[0], line.get_color()) for line in ax_s.get_lines() if line.get_linestyle() == "--"]
    assert [y for y, _ in dashed] == [16, 8, 8, pytest.approx(2 / 0.6)]
    assert all(matplotlib.colors.same_color(c, colors[i]) for i, (_, c) in enumerate(dashed))
    (right,) = ax_s.child_axes  # the secondary axis that names the lines
    assert right.get_ylim() == pytest.approx(ax_s.get_ylim())  # same scale: a tick sits on its line
    ticks = [t for t in right.yaxis.get_major_ticks() if t.label2.get_visible() and t.label2.get_text()]
    assert [t.get_loc() for t in ticks] == pytest.approx([16, 8, 2 / 0.6])
    assert [t.label2.get_text() for t in ticks] == ["2/lr = 16", "2/lr = 8", "2/lr = 3.333"]
    # each label in the colour of the first run with that threshold (lr 0.25 seed 0, not seed 1)
    for tick, i in zip(ticks, (0, 1, 3)):
        assert matplotlib.colors.same_color(tick.label2.get_color(), colors[i])


# ---- PCA and layout -------------------------------------------------------------------------
def test_fit_pca_matches_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 6)) @ np.diag([5, 3, 1, 0.5, 0.2, 0.1]) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    mean, comps, explained = fit_pca(data)
    evals, evecs = np.linalg.eigh(np.cov(data, rowvar=False))
    order = np.argsort(evals)[::-1]
    np.testing.assert_allclose(mean, data.mean(axis=0))
    for i in range(2):
        ref = evecs[:, order[i]]
        assert abs(abs(comps[i] @ ref) - 1) < 1e-8  # same direction up to sign
    np.testing.assert_allclose(explained, evals[order[:2]] / evals.sum(), rtol=1e-8)
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-12)
    # the projection is the centred data in that basis
    np.testing.assert_allclose(project(data, mean, comps), (data - data.mean(0)) @ comps.T)


def projection_tables(n=80, k=8, steps=(0, 5, 50), planted_every=10, as_lists=False, seed=0):
    """Planted examples drift along one direction over steps; the cos rule flags most of them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, k))
    direction = np.eye(k)[0]
    planted = np.arange(n) % planted_every == 0
    ex, fl = [], []
    for i, step in enumerate(steps):
        g = base + rng.normal(0, 0.1, (n, k)) + 3.0 * i * planted[:, None] * direction
        for e in range(n):
            vec = g[e].astype(np.float32)
            ex.append({"step": step, "example_id": e, "grad_proj": vec.tolist() if as_lists else vec,
                       "planted": bool(planted[e])})
            fl.append({"step": step, "example_id": e, "flagged": bool(planted[e] and i > 0) or e == 1})
    return pd.DataFrame(ex), pd.DataFrame(fl)


def test_same_vector_same_coordinates_in_every_frame():
    ex, fl = projection_tables()
    # example 3 carries one identical gradient projection at the first and last checkpoints
    fixed = np.linspace(-1, 1, 8).astype(np.float32)
    for step in (0, 50):
        ex.at[ex.index[(ex["step"] == step) & (ex["example_id"] == 3)][0], "grad_proj"] = fixed
    layout = layout_projection(ex, fl, n_points=1000)
    pts = layout.points[layout.points["example_id"] == 3].set_index("step")
    np.testing.assert_array_equal(pts.loc[0, ["pc1", "pc2"]].to_numpy(), pts.loc[50, ["pc1", "pc2"]].to_numpy())
    np.testing.assert_allclose(pts.loc[0, ["pc1", "pc2"]].to_numpy(dtype=float),
                               project(fixed[None, :], layout.mean, layout.components)[0])
    # one PCA over all checkpoints stacked, not one per frame
    stacked = np.stack([np.asarray(v, dtype=float) for v in
                        ex.sort_values(["step", "example_id"])["grad_proj"]])
    mean, comps, _ = fit_pca(stacked)
    np.testing.assert_allclose(layout.mean, mean)
    np.testing.assert_allclose(np.abs(layout.components @ comps.T), np.eye(2), atol=1e-8)
    # flags joined by (step, example): example 1 flagged everywhere, planted ones after step 0
    p = layout.points.set_index(["step", "example_id"])
    assert p.loc[(0, 1), "flagged"] and p.loc[(5, 1), "flagged"]
    assert not p.loc[(0, 10), "flagged"] and p.loc[(5, 10), "flagged"] and p.loc[(5, 10), "planted"]


def test_select_examples_keeps_planted_and_is_seeded():
    ex, _ = projection_tables(n=200, planted_every=20)
    planted = set(ex.loc[ex["planted"], "example_id"])
    a = select_examples(ex, 50, seed=3)
    assert len(a) == 50 and planted <= set(a)
    np.testing.assert_array_equal(a, select_examples(ex, 50, seed=3))
    assert not np.array_equal(a, select_examples(ex, 50, seed=4))
    assert len(select_examples(ex, 5, seed=0)) == 5  # more planted than points: still capped
    assert len(select_examples(ex, 10_000)) == 200


def test_robust_limits_ignore_a_few_outliers():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=2000), [1e6]])
    lo, hi = robust_limits(values, np.repeat([0, 1], [1000, 1001]))
    assert -5 < lo < -1 and 1 < hi < 5


# ---- animation ------------------------------------------------------------------------------
def test_render_projection_animation(tmp_path):
    steps = (0, 5, 50, 500)
    ex, fl = projection_tables(steps=steps, as_lists=True)  # Parquet list columns come back as lists
    frames = [tmp_path / "frames" / f"frame_{i:02d}.png" for i in range(len(steps))]
    gif = tmp_path / "projection.gif"
    layout = render_projection_animation(ex, fl, gif, frames, n_points=40, frame_duration_s=0.25, dpi=DPI,
                                         title="synthetic")
    assert layout.steps == list(steps)
    assert layout.points.groupby("step")["example_id"].nunique().eq(40).all()
    shapes = {imageio.imread(f).shape for f in frames}
    assert shapes == {expected_shape(animate.FRAME_FIGSIZE) + (4,)}
    gif_frames = imageio.imread(gif, index=None)
    assert gif_frames.shape[0] == len(steps)
    assert gif_frames.shape[1:3] == expected_shape(animate.FRAME_FIGSIZE)
    meta = imageio.immeta(gif)
    assert meta.get("loop") == 0 and meta.get("duration") == 250
    assert not list(tmp_path.rglob("*.tmp"))


def test_render_projection_animation_needs_one_path_per_step(tmp_path):
    ex, fl = projection_tables()
    with pytest.raises(ValueError, match="frame paths"):
        render_projection_animation(ex, fl, tmp_path / "a.gif", [tmp_path / "f.png"], dpi=DPI)
    assert not (tmp_path / "a.gif").exists()


# ---- what the figures show (not only that a PNG exists) ---------------------------------------------
@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the plot functions save, captured before they are closed."""
    from gradscope import signal_plots

    figures = []
    real = plots._save

    def keep(fig, path, dpi):
        figures.append(fig)
        real(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(signal_plots, "_save", keep)  # imported there by name
    return figures


def test_training_figure_plots_the_metrics_it_was_given(tmp_path, drawn):
    # Loss and accuracy lines are the table's columns against step + 1 on log axes, with labelled
    # axes, and the dotted "reached" markers sit at the first step where accuracy reaches 0.95.
    m = metrics_table()
    plots.plot_training(m, tmp_path / "t.png", title="my run", dpi=DPI)
    fig = drawn[-1]
    ax_loss, ax_acc = fig.axes[:2]
    assert fig._suptitle.get_text() == "my run"
    lines = {ln.get_label(): ln for ln in ax_loss.get_lines()}
    np.testing.assert_allclose(lines["train"].get_xdata(), m["step"] + 1.0)
    np.testing.assert_allclose(lines["train"].get_ydata(), m["train_loss"])
    np.testing.assert_allclose(lines["test"].get_ydata(), m["test_loss"])
    assert ax_loss.get_xscale() == ax_loss.get_yscale() == "log" and ax_acc.get_xscale() == "log"
    assert ax_loss.get_xlabel() == plots.STEP_LABEL and "loss" in ax_loss.get_ylabel()
    assert "accuracy" in ax_acc.get_ylabel()
    acc = {ln.get_label(): ln for ln in ax_acc.get_lines()}
    np.testing.assert_allclose(acc["test"].get_ydata(), m["test_acc"])
    first = int(m["step"][m["train_acc"] >= plots.REACHED_ACC].iloc[0])
    marker = [ln for label, ln in acc.items() if label.startswith("train acc ≥")]
    assert len(marker) == 1 and f"at step {first:,}" in marker[0].get_label()
    # the marker is at or just before that logged step (interpolated crossing), after the previous one
    before = int(m["step"][m["step"] < first].iloc[-1])
    assert before + 1 <= marker[0].get_xdata()[0] <= first + 1


@pytest.mark.parametrize("threshold", [12.0, 4000.0])
def test_curvature_figure_plots_sharpness_against_two_over_lr(tmp_path, drawn, threshold):
    c = curvature_table(threshold)
    plots.plot_curvature(c, metrics_table(), tmp_path / "c.png", title="curv", dpi=DPI)
    ax_s = drawn[-1].axes[1]
    lines = {ln.get_label(): ln for ln in ax_s.get_lines()}
    sharp = lines["sharpness (top Hessian eigenvalue)"]
    np.testing.assert_allclose(sharp.get_xdata(), c["step"])
    np.testing.assert_allclose(sharp.get_ydata(), c["sharpness"])
    line = lines[f"2/lr = {threshold:.4g}"]
    assert np.allclose(line.get_ydata(), threshold)
    # far below the threshold the axis turns symlog, so the curve and the line both stay visible
    assert ax_s.get_yscale() == ("symlog" if threshold / c["sharpness"].max() >= plots.LOG_SHARPNESS_RATIO else "linear")
    lo, hi = ax_s.get_ylim()
    assert lo <= c["sharpness"].min() and hi >= max(threshold, c["sharpness"].max())


def test_sweep_figure_has_one_line_per_run(tmp_path, drawn):
    runs = {"wd~0.0_seed~0": metrics_table(seed=0), "wd~1.0_seed~0": metrics_table(seed=1)}
    plots.plot_sweep(runs, tmp_path / "s.png", title="sweep", dpi=DPI)
    labels = [ln.get_label() for ax in drawn[-1].axes for ln in ax.get_lines()]
    for run in runs:
        assert any(run in label for label in labels), (run, labels)


@pytest.mark.parametrize("variant", ["auroc", "no_column"])
def test_flagged_figure_plots_each_detectors_counts_and_quality(tmp_path, drawn, variant):
    # One line per detector in each panel, in its own colour and marker: the detector's flagged
    # count, AUROC and average precision against step + 1 on a log axis; a dashed chance line at
    # AUROC 0.5; the quality panels only where the table has them; the legend names the detectors.
    import matplotlib.colors

    table = per_step_table(with_auroc=variant == "auroc")
    plots.plot_flagged(table, tmp_path / "f.png", title="flagged run", dpi=DPI)
    fig = drawn[-1]
    assert fig._suptitle.get_text() == "flagged run"
    columns = ["n_flagged", "auroc", "average_precision"] if variant == "auroc" else ["n_flagged"]
    assert len(fig.axes) == len(columns)
    detectors = sorted(table["detector"].unique())
    colors = plots._colors(len(detectors))
    for ax, column in zip(fig.axes, columns):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == plots.STEP_LABEL
        lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
        assert sorted(lines) == detectors, column
        for i, det in enumerate(detectors):
            want = table[table["detector"] == det].sort_values("step")
            np.testing.assert_allclose(lines[det].get_xdata(), want["step"] + 1.0)
            np.testing.assert_allclose(lines[det].get_ydata(), want[column], equal_nan=True, err_msg=f"{det} {column}")
            assert matplotlib.colors.same_color(lines[det].get_color(), colors[i])
        assert len({ln.get_marker() for ln in lines.values()}) == len(detectors)
        chance = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert [list(ln.get_ydata()) for ln in chance] == ([[0.5, 0.5]] if column == "auroc" else [])
    assert "count" in fig.axes[0].get_ylabel() and fig.axes[0].get_ylim()[0] == 0
    if variant == "auroc":
        assert "AUROC" in fig.axes[1].get_ylabel() and "average precision" in fig.axes[2].get_ylabel()
        assert fig.axes[1].get_ylim() == fig.axes[2].get_ylim() == (0.0, 1.02)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == detectors


def test_group_losses_figure_plots_the_strongest_pair_of_each_interval(tmp_path, drawn):
    # One panel per interval (all three here), with the interval's most negative opposing pair (every
    # opposing pair here pairs the two planted groups, so none is preferred over another): both
    # groups' mean loss at every checkpoint, the mean training loss in grey, the selection interval
    # shaded, and each group's size, purity and majority in its label.
    tr, groups, pairs, losses, composition, metrics, _ = signal_tables()
    from gradscope import signal_plots

    signal_plots.plot_group_losses(losses, pairs, composition, metrics, tmp_path / "g.png", title="groups", dpi=DPI)
    fig = drawn[-1]
    opposing = pairs[pairs["opposing"]]
    chosen = opposing.loc[opposing.groupby("step_to")["cosine"].idxmin()].sort_values("step_to")
    assert len(fig.axes) == len(chosen) == 3
    comp = composition.set_index(["step_to", "group"])
    for ax, pair in zip(fig.axes, chosen.itertuples(index=False)):
        assert ax.get_title() == f"steps {pair.step_from}→{pair.step_to}: gradient cosine {pair.cosine:.2f}"
        assert ax.get_xscale() == "log" and ax.get_xlabel() == signal_plots.STEP_LABEL
        lines = ax.get_lines()
        assert lines[0].get_label() == "all training examples"
        np.testing.assert_allclose(lines[0].get_xdata(), metrics["step"] + 1.0)
        np.testing.assert_allclose(lines[0].get_ydata(), metrics["train_loss"])
        assert len(lines) == 3
        for line, group in zip(lines[1:], (pair.group_a, pair.group_b)):
            want = losses[(losses["step_to"] == pair.step_to) & (losses["group"] == group)].sort_values("step")
            np.testing.assert_allclose(line.get_xdata(), want["step"] + 1.0)
            np.testing.assert_allclose(line.get_ydata(), want["mean_loss"])
            c = comp.loc[(pair.step_to, group)]
            assert line.get_label() == f"group {group} (n={int(c['size'])}, {c['purity']:.0%} {c['majority']})"
        (span,) = ax.patches  # the selection interval, at step + 1 like the curves
        assert (span.get_x(), span.get_x() + span.get_width()) == (pair.step_from + 1.0, pair.step_to + 1.0)
    # without an opposing pair the figure says so
    signal_plots.plot_group_losses(losses, pairs.assign(opposing=False), composition, metrics, tmp_path / "n.png",
                                   title="g", dpi=DPI)
    (ax,) = drawn[-1].axes
    assert [t.get_text() for t in ax.texts] == ["no opposing pair of groups found"] and not ax.get_lines()


@pytest.mark.parametrize("planted", [True, False])
def test_loss_changes_figure_histograms_each_interval_with_the_planted_examples_stacked(tmp_path, drawn, planted):
    # Per interval, the counts of Δloss in 40 equal bins over [-max|Δ|, max|Δ|]: the examples not
    # planted first, the planted ones stacked on them (none without planted ids).
    from gradscope import opposing, signal_plots

    tr = signal_tables()[0]
    changes = opposing.loss_changes(tr)
    planted_ids = list(range(20)) if planted else None
    signal_plots.plot_loss_changes(changes, planted_ids, tmp_path / "c.png", title="changes", dpi=DPI)
    fig = drawn[-1]
    intervals = changes[["step_from", "step_to"]].drop_duplicates().sort_values("step_to")
    assert len(fig.axes) == len(intervals) == 3
    for ax, (a, b) in zip(fig.axes, intervals.itertuples(index=False)):
        assert ax.get_title() == f"steps {a}→{b}"
        d = changes[(changes["step_from"] == a) & (changes["step_to"] == b)]
        delta = d["delta_loss"].to_numpy()
        is_planted = d["example_id"].isin(planted_ids or []).to_numpy()
        lim = np.abs(delta).max()
        bins = np.linspace(-lim, lim, 41)
        parts = [delta[~is_planted], delta[is_planted]] if planted else [delta]
        assert len(ax.containers) == len(parts)
        for bars, part in zip(ax.containers, parts):
            np.testing.assert_allclose([r.get_x() for r in bars], bins[:-1])
            np.testing.assert_array_equal([r.get_height() for r in bars], np.histogram(part, bins)[0])
        if planted:  # stacked: the planted bars start where the others end
            np.testing.assert_array_equal([r.get_y() for r in ax.containers[1]], np.histogram(parts[0], bins)[0])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == (["not planted", "planted"] if planted
                                                                          else ["all"])


def test_cartography_figure_places_each_example_and_rings_the_planted_ones(tmp_path, drawn):
    from gradscope import signal_plots

    rng = np.random.default_rng(3)
    per_example = pd.DataFrame({"example_id": np.arange(30), "variability": rng.uniform(0, 0.5, 30),
                                "confidence": rng.uniform(0, 1, 30), "correctness": rng.uniform(0, 1, 30),
                                "planted": np.arange(30) % 5 == 0})
    signal_plots.plot_cartography(per_example, tmp_path / "m.png", title="carto", dpi=DPI)
    ax = drawn[-1].axes[0]
    points, rings = ax.collections
    np.testing.assert_allclose(points.get_offsets(), per_example[["variability", "confidence"]])
    np.testing.assert_allclose(points.get_array(), per_example["correctness"])
    assert points.get_clim() == (0, 1)
    planted = per_example[per_example["planted"]]
    np.testing.assert_allclose(rings.get_offsets(), planted[["variability", "confidence"]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["planted (6)"]
    assert ax.get_xlabel().startswith("variability") and ax.get_ylabel().startswith("confidence")
    assert drawn[-1].axes[1].get_ylabel().startswith("correctness")  # the colour bar
