"""The timeline stage (rule timeline, pipeline.write_timeline): its tables and summary through real Snakemake
(the session's tiny run, `done`), read back with pandas and DuckDB; the run report's timeline section and the
sweep's table carrying the summary's numbers; and the figure's panels, on a synthetic run with known spikes,
crossings of 2/lr and an antiphase pair."""

from __future__ import annotations

import os
import re

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gradscope import artifacts, layout, plots, report, tables
from gradscope.pipeline import render_timeline, write_timeline
from support.workflow import planned

RUNS = ("flips/seed~0", "mod/wd~0.0_seed~0", "mod/wd~1.0_seed~0")


def _run(done, run_id):
    return layout.run_dir(run_id, done / "results")


def _links_rows(text: str) -> dict[str, list[str]]:
    """The run report's timeline links table, by its first cell: the other cells as written."""
    section = text.split("## Timeline: loss spikes, 2/lr and opposing groups", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| within")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def check_section(text: str, summary: dict) -> None:
    """Every number of the report's timeline section is the summary's, formatted as reports format figures."""
    rows = _links_rows(text)
    for key, first in (("spikes_near_crossing", "within the window of a sharpness crossing of 2/lr"),
                       ("spikes_with_antiphase", "within the window of an active antiphase interval")):
        want = [summary[key], summary["n_spikes"], summary[f"{key}_fraction"], summary[f"{key}_expected"],
                summary[f"{key}_expected_sd"], summary[f"{key}_p"]]
        assert rows[first][:6] == [report.fmt(v) for v in want], key
    assert f"{summary['n_spikes']} loss spikes" in text
    assert f"r = {report.fmt(summary['loss_group_correlation'])}" in text or summary["pair"] is None
    assert f"({summary['shuffles']} shuffles, seed {summary['seed']}" in text
    assert f"Resolution: {summary['resolution']}" in text


# ---- through Snakemake: the session's tiny run ---------------------------------------------------------------
def test_every_run_gets_its_timeline_tables_which_read_back_with_pandas_and_duckdb(done):
    for run_id in RUNS:
        folder = _run(done, run_id)
        for name in ("timeline_events", "timeline_links", "timeline_summary", "figure_timeline"):
            assert layout.in_run(folder, name).is_file(), (run_id, name)
        for name in ("timeline_events", "timeline_links"):
            path = layout.in_run(folder, name)
            df = pd.read_parquet(path)
            assert list(df.columns) == [c.name for c in tables.TABLES[name].columns], name
            described = {f.name: f.metadata[tables.DESCRIPTION].decode() for f in pq.read_schema(path)}
            assert described == tables.TABLES[name].descriptions
            assert artifacts.read_metadata(path)["gradscope.run_id"] == run_id
        summary = artifacts.read_json(layout.in_run(folder, "timeline_summary"))
        events = pd.read_parquet(layout.in_run(folder, "timeline_events"))
        assert summary["n_spikes"] == (events["kind"] == "loss_spike").sum() == len(
            pd.read_parquet(layout.in_run(folder, "timeline_links")))
        assert summary["run_id"] == run_id and summary["settings"]["shuffles"] == 1000  # the schema's default
    # flips trains with SGD (2/lr = 2 * 1.5 / 0.2 applies); mod with AdamW: no threshold, so no crossing
    flips = artifacts.read_json(layout.in_run(_run(done, RUNS[0]), "timeline_summary"))
    assert flips["edge_applies"] and flips["sharpness_threshold"] == pytest.approx(15.0)
    for run_id in RUNS[1:]:
        s = artifacts.read_json(layout.in_run(_run(done, run_id), "timeline_summary"))
        assert not s["edge_applies"] and s["sharpness_threshold"] is None and s["n_crossings"] == 0
    os.chdir(done)
    counts = duckdb.sql("select count(*) as n, count(distinct kind) as kinds "
                        "from 'results/runs/*/*/timeline/events.parquet'").df()
    both = pd.concat([pd.read_parquet(_run(done, r) / layout.IN_RUN["timeline_events"]) for r in RUNS])
    assert int(counts["n"][0]) == len(both) and int(counts["kinds"][0]) == both["kind"].nunique()
    links = duckdb.sql("select count(*) as n from 'results/runs/*/*/timeline/links.parquet'").df()
    per_run = [pd.read_parquet(_run(done, r) / layout.IN_RUN["timeline_links"]) for r in RUNS]
    assert int(links["n"][0]) == sum(map(len, per_run))


def test_run_reports_show_the_timeline_with_the_summarys_numbers(done):
    for run_id in RUNS:
        folder = _run(done, run_id)
        text = layout.in_run(folder, "report").read_text()
        summary = artifacts.read_json(layout.in_run(folder, "timeline_summary"))
        assert "## Timeline: loss spikes, 2/lr and opposing groups" in text
        assert "![Timeline](figures/timeline.png)" in text
        check_section(text, summary)
    adam = layout.in_run(_run(done, RUNS[1]), "report").read_text()
    assert "no crossings of 2/lr: it is the stability threshold of gradient descent, not of adamw" in adam


def test_sweep_runs_table_and_report_carry_each_runs_timeline(done):
    for experiment, ids in (("flips", RUNS[:1]), ("mod", RUNS[1:])):
        runs = pd.read_parquet(layout.sweep_file("runs", experiment, done / "results")).set_index("run_id")
        assert set(report.TIMELINE_SWEEP) <= set(runs.columns)
        for run_id in ids:
            summary = artifacts.read_json(layout.in_run(_run(done, run_id), "timeline_summary"))
            for key in report.TIMELINE_SWEEP:
                got, want = runs.loc[run_id, key], summary[key]
                assert (want is None and pd.isna(got)) or got == pytest.approx(want), (run_id, key)
        text = layout.sweep_file("report", experiment, done / "results").read_text()
        assert "## Timeline" in text and "near a 2/lr crossing" in text and "loss–pair correlation" in text


def test_a_timeline_setting_replans_only_the_timeline_and_what_reads_it(done):
    counts = planned(done, "--config", "experiments={'flips': {'timeline': {'spike_margin': 0.2}}}")
    assert counts.get("timeline") == 1, counts
    assert set(counts) <= {"timeline", "plot_timeline", "report", "sweep_report", "resolve_config", "dashboard",
                           "dashboard_index", "all"}, counts


# ---- a synthetic run: known spikes, crossings and antiphase ------------------------------------------------
SPIKES = (300, 420, 540)  # logged steps where the training loss jumps
CHECKPOINTS = np.arange(0, 601, 50)


def synthetic_run(folder, threshold: float, checkpoints=CHECKPOINTS):
    """A run's input tables for the timeline stage: loss spikes at SPIKES, sharpness at `checkpoints` rising
    through `threshold` (NaN: 2/lr does not apply) and two groups whose losses swing in antiphase. Returns its
    paths."""
    steps = np.arange(0, 601, 10)
    loss = 1.0 / (1 + steps / 50) + 0.02
    loss[np.isin(steps, SPIKES)] *= 1.8
    metrics = pd.DataFrame({"step": steps, "lr": 0.5, "train_loss": loss, "train_acc": np.minimum(1, steps / 300),
                            "test_loss": loss, "test_acc": np.minimum(0.95, steps / 450)})
    paths = {"metrics": folder / "metrics.parquet", "group_losses": folder / "group_losses.parquet",
             "group_pairs": folder / "group_pairs.parquet", "summary": folder / "summary.json"}
    folder.mkdir(parents=True, exist_ok=True)
    metrics.to_parquet(paths["metrics"])
    sharp = 4.4 * (1 - np.exp(-checkpoints / 150)) + 0.3 * np.sin(checkpoints / 20)
    for s, v in zip(checkpoints, sharp):
        part = folder / "curvature" / f"step={s}" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        pd.DataFrame({"sharpness": [v], "sharpness_threshold": [threshold]}).to_parquet(part)
    rows = [{"step_from": 0, "step_to": 50, "group": g, "step": int(s),
             "mean_loss": 0.5 + 0.2 * np.sin(s / 40 + phase) + 0.3 / (1 + s / 100)}
            for g, phase in ((0, 0.0), (1, np.pi)) for s in checkpoints]
    pd.DataFrame(rows).to_parquet(paths["group_losses"])
    pd.DataFrame([{"step_from": 0, "step_to": 50, "group_a": 0, "group_b": 1, "size_a": 3, "size_b": 2,
                   "mean_delta_a": 0.1, "mean_delta_b": -0.1, "cosine": -0.6, "opposing": True}]).to_parquet(
        paths["group_pairs"])
    artifacts.write_json({"generalization": {"step_memorized": 300.0, "step_generalized": 450.0, "delay_steps": 150.0},
                          "per_step": [], "headline": {}}, paths["summary"])
    return paths


def _stage(tmp_path, threshold, monkeypatch, checkpoints=CHECKPOINTS):
    """write_timeline, then render_timeline, on the synthetic run: the figure drawn (timeline_plots.plot_timeline's
    return value), the summary and the events."""
    paths = synthetic_run(tmp_path / "run", threshold, checkpoints)
    out = {name: tmp_path / "out" / f"{name}.{ext}" for name, ext in
           (("events", "parquet"), ("links", "parquet"), ("summary", "json"))}
    summary = write_timeline({"shuffles": 200}, metrics_path=paths["metrics"],
                             curvature_paths=[tmp_path / "run" / "curvature"], group_losses_path=paths["group_losses"],
                             group_pairs_path=paths["group_pairs"], summary_path=paths["summary"], out=out,
                             run_id="e/r")
    assert artifacts.read_json(out["summary"]) == summary  # what it wrote is what it returned
    figure = tmp_path / "out" / "timeline.png"
    fig = render_timeline({"dpi": 40}, metrics_path=paths["metrics"], curvature_paths=[tmp_path / "run" / "curvature"],
                          events_path=out["events"], summary_path=out["summary"],
                          group_losses_path=paths["group_losses"], out=figure, run_id="e/r")
    assert figure.is_file()
    return fig, summary, pd.read_parquet(out["events"])


def test_timeline_figure_has_the_loss_the_sharpness_and_the_pair_on_one_axis(tmp_path, monkeypatch):
    fig, summary, events = _stage(tmp_path, 4.0, monkeypatch)
    assert summary["n_spikes"] == 3 and summary["n_crossings"] >= 1 and summary["n_antiphase"] >= 1
    ax_l, ax_s, ax_g = fig.axes[:3]
    assert ax_l.get_shared_x_axes().joined(ax_l, ax_g) and ax_l.get_shared_x_axes().joined(ax_s, ax_g)
    assert ax_g.get_xscale() == "linear" and ax_g.get_xlabel() == "step (linear scale)"  # evenly spaced checkpoints
    lines = {ln.get_label(): ln for ln in ax_l.get_lines()}
    np.testing.assert_allclose(lines["training loss"].get_xdata(), np.arange(0, 601, 10))
    np.testing.assert_allclose(lines["loss spike (3)"].get_xdata(), SPIKES)
    sharp = {ln.get_label(): ln for ln in ax_s.get_lines()}
    np.testing.assert_allclose(sharp["2/lr = 4"].get_ydata(), 4.0)
    reach = events[events["kind"] == "sharpness_reach"]["step"].to_numpy()
    np.testing.assert_allclose(sharp[f"sharpness reaches 2/lr ({len(reach)})"].get_xdata(), reach)
    pair = {ln.get_label(): ln for ln in ax_g.get_lines()}
    assert {"group 0", "group 1"} <= set(pair)
    spans = [p for p in ax_g.patches if p.get_label().startswith("antiphase")]
    assert len(spans) == 1  # labelled once; every interval is shaded
    assert len(ax_g.patches) == summary["n_antiphase"]
    for ax in (ax_l, ax_s, ax_g):  # memorization and generalization through every panel
        xs = {float(ln.get_xdata()[0]) for ln in ax.get_lines() if ln.get_linestyle() in (":", "-.")
              and ln.get_color() in ("0.25", "tab:orange")}
        assert {300.0, 450.0} <= xs
        assert ax.get_ylabel() and ax.get_title()
    assert all(ax.get_legend() is not None for ax in (ax_l, ax_s, ax_g))


def test_no_2_over_lr_no_crossings_and_a_log_axis_for_log_spaced_checkpoints(tmp_path, monkeypatch):
    fig, summary, events = _stage(tmp_path, float("nan"), monkeypatch, np.array([0, 2, 6, 20, 60, 200, 600]))
    assert summary["n_crossings"] == 0 and not summary["edge_applies"]
    assert not events["kind"].isin(["sharpness_reach", "sharpness_leave"]).any()
    ax_s, ax_g = fig.axes[1], fig.axes[2]
    assert not any(ln.get_label().startswith("2/lr") for ln in ax_s.get_lines())
    assert "does not apply" in ax_s.get_title()
    assert ax_g.get_xscale() == "log" and ax_g.get_xlabel().startswith(plots.STEP_LABEL)
    loss = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "training loss")
    np.testing.assert_allclose(loss.get_xdata(), np.arange(0, 601, 10) + 1.0)  # step + 1 on a log axis


def test_report_section_states_the_links_with_the_summarys_numbers(tmp_path, monkeypatch):
    _, summary, _ = _stage(tmp_path, 4.0, monkeypatch)
    text = "\n\n".join(report.timeline_section(summary, "figures/timeline.png", "sgd"))
    check_section(text, summary)
    assert summary["n_spikes"] == 3 and summary["spikes_with_antiphase"] >= 1
    assert re.search(r"Memorized at step 300, generalized at step 450", text)
    assert "![Timeline](figures/timeline.png)" in text
    rows = _links_rows(text)
    assert "logging interval 10 steps" in rows["within the window of a sharpness crossing of 2/lr"][-1]
