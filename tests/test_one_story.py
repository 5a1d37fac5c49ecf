"""One story everywhere (issue 28, item 7): `gradscope runs` and `show`, the run and sweep reports, the index
page and the dashboards show the same headline figures (report.HEADLINE) the same way (report.fmt); 2/lr and
the edge-of-stability figures are left out wherever they do not apply (an adaptive optimizer:
report.edge_assessed decides); `gradscope train` writes the workflow's numbers; the Training tab's axes and
legends read right.

The workflow cases read conftest's `done` (tests/configs/tiny.yaml: `flips` trains with SGD on planted flips,
`mod` with AdamW), whose `rule all` also built the dashboards and the index."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradscope import artifacts, pipeline, report
from gradscope.cli import main


# ---- the headline and its formatting, without a workflow ------------------------------------------
def curvature_table(threshold):
    step = np.arange(0, 101, 20)
    return pd.DataFrame({"step": step, "sharpness": np.linspace(1.0, 9.0, len(step)),
                         "sharpness_threshold": np.full(len(step), threshold, dtype=float)})


def test_headline_leaves_the_edge_out_where_2_over_lr_does_not_apply():
    metrics = pd.DataFrame({"step": [0, 100], "train_acc": [0.5, 1.0], "test_acc": [0.4, 0.9], "train_loss": [1.0, 0.1],
                            "test_loss": [1.1, 0.3], "wall_s": [0.0, 1.0]})
    sgd = report.headline(metrics, None, curvature_table(10.0))
    assert sgd["sharpness_threshold"] == 10.0 and "edge_at_edge" in sgd
    adam = report.headline(metrics, None, curvature_table(np.nan))
    assert adam["sharpness_threshold"] is None and not any(k.startswith("edge_") for k in adam)
    figures = report.headline_figures(adam)
    assert list(figures) == report.HEADLINE and figures["final_test_acc"] == 0.9
    assert figures["best_detector"] is None and figures["step_generalized"] is None  # no summary yet
    # one missing-value mark, integers without a point, other numbers to 4 significant digits
    assert [report.fmt(v) for v in (None, float("nan"), pd.NA, 1500.0, 0.95912, True, "el2n")] == \
        ["–", "–", "–", "1500", "0.9591", "True", "el2n"]


def test_edge_is_decided_in_one_place():
    assert report.edge_assessed("sgd") and not any(map(report.edge_assessed, ("adam", "adamw", "rmsprop", "custom")))


def test_read_curvature_masks_2_over_lr_of_an_adaptive_run_written_before(tmp_path):
    """A curvature table written before the stage recorded null (2000 under Adam) reads as null."""
    for name, expect in (("adam", None), ("sgd", 2000.0)):
        path = tmp_path / name / "step=0" / "part-0.parquet"
        artifacts.write_parquet(pd.DataFrame({"sharpness": [3.0], "sharpness_threshold": [2000.0]}), path, None,
                                table="curvature", config={"optim": {"name": name, "lr": 0.001}})
        table = pipeline.read_curvature([path])
        got = table["sharpness_threshold"].iloc[0]
        assert (math.isnan(got) if expect is None else got == expect), name


def test_no_2_over_lr_line_in_the_figures_of_an_adaptive_run(tmp_path):
    import matplotlib.pyplot as plt

    from gradscope import plots

    curv = curvature_table(np.nan)
    metrics = pd.DataFrame({"step": curv["step"], "train_loss": np.linspace(1, 0.1, len(curv))})
    drawn = {}
    real_close = plt.close
    plt.close = lambda fig=None: drawn.setdefault("fig", fig)  # keep the figure to look at it
    try:
        plots.plot_sweep_sharpness({"adam": curv}, {"adam": metrics}, tmp_path / "s.png", title="t", dpi=40)
    finally:
        plt.close = real_close
    labels = [line.get_label() for ax in drawn["fig"].axes for line in ax.get_lines()]
    assert not any("2/lr" in label for label in labels) and "does not apply" in drawn["fig"].axes[0].get_title()
    real_close(drawn["fig"])


def test_gradscope_train_sets_the_rules_thread_count(tmp_path, monkeypatch):
    """The train rule's threads (resources.TRAIN_THREADS) hold while training, whatever torch had before."""
    import torch

    from gradscope import resources
    from gradscope import train as training

    seen = []
    monkeypatch.setattr(training, "train", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr("gradscope.data.load_meta", lambda d: {"input": {"kind": "dense", "shape": [2]}})
    monkeypatch.setattr("gradscope.data.load_split", lambda d, s: (None, None, None))
    monkeypatch.setattr("gradscope.models.InputSpec.from_dict", staticmethod(lambda d: None))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pipeline.train_run({"data": {"generator": "planted_flips"}}, dataset=tmp_path, out_dir=tmp_path, run_id="x")
        assert seen == [resources.TRAIN_THREADS] and torch.get_num_threads() == 2  # restored after
    finally:
        torch.set_num_threads(before)


def test_gradscope_train_trains_at_the_configs_thread_count(tmp_path, monkeypatch):
    """`gradscope train` passes threads.train on, as the train rule does (its `threads:`)."""
    import pandas as pd
    import yaml
    from click.testing import CliRunner

    from gradscope.cli import main

    config = {"threads": {"train": 2}, "experiments": {"e": {
        "data": {"generator": "planted_flips", "planted_flips": {"n_train": 40, "n_test": 20, "n_features": 4,
                                                                  "n_classes": 2}},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 4, "log_every": 2},
        "signals": {"detectors": ["high_loss"]}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    seen = {}

    def fake(settings, **kw):
        seen.update(kw)
        return pd.DataFrame([{"step": 4, "train_acc": 1.0, "test_acc": 1.0}])

    monkeypatch.setattr(pipeline, "train_run", fake)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "e/seed~0", "--config", "c.yaml"])
    assert result.exit_code == 0, result.output
    assert seen["threads"] == 2


# ---- the tiny workflow's results ------------------------------------------------------------------
def cli(*args):
    out = CliRunner().invoke(main, [*map(str, args)])
    assert out.exit_code == 0, out.output
    return out.output


def runs_table(results) -> dict:
    """`gradscope runs` as {run: {column: text}}."""
    lines = cli("runs", "--results", results).splitlines()
    header = lines[0].split()
    return {cells[0]: dict(zip(header, cells)) for cells in (line.split() for line in lines[1:])}


def index_table(results) -> dict:
    """The index page's tables as {experiment/run: {column: text}}."""
    text = (results / "index.html").read_text()
    out = {}
    for exp, table in re.findall(r"<h2>([^<]+?)(?: <a|\s*\(|</h2>).*?<table class=\"gs\">(.*?)</table>", text, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        header = re.findall(r"<th>(.*?)</th>", rows[0])
        for row in rows[1:]:
            cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            out[f"{exp.strip()}/{cells[0]}"] = dict(zip(header, cells))
    return out


def test_cli_index_and_reports_show_the_same_headline(done):
    results = done / "results"
    cli_rows, index_rows = runs_table(results), index_table(results)
    assert set(cli_rows) == set(index_rows) == {"flips/seed~0", "mod/wd~0.0_seed~0", "mod/wd~1.0_seed~0"}
    for run in cli_rows:
        for column in report.HEADLINE:
            assert cli_rows[run][column] == index_rows[run][column], (run, column)
    flips = cli_rows["flips/seed~0"]
    assert flips["best_detector"] != "–" and flips["best_detector_final_auroc"] != "–"  # planted truth: scored
    assert "best_auroc_cos_rule" not in cli_rows["flips/seed~0"]  # no longer the headline
    # the run report's headline table: the same figures, formatted the same way, first
    text = (results / "runs" / "flips" / "seed~0" / "report.md").read_text()
    rows = dict(re.findall(r"^\| (\w+) \| ([^|]+) \|$", text, re.M))
    assert [k for k in rows if k in report.HEADLINE] == report.HEADLINE
    assert all(rows[k].strip() == flips[k] for k in report.HEADLINE)
    # show: the same headline, YAML settings, no nan, artifacts in step order
    shown = cli("show", "flips/seed~0", "--results", results)
    for column in report.HEADLINE:
        assert f"  {column}: {flips[column]}\n" in shown
    assert "nan" not in shown.lower().replace("planted", "") and "{" not in shown.split("artifacts:")[0]
    assert "settings:\n  data:\n    generator: planted_flips\n" in shown and "\n  optim:\n" in shown
    assert "\n    name: sgd\n" in shown and "\n    momentum: 0.5\n" in shown
    steps = [int(s) for s in re.findall(r"^  curvature/step=(\d+)/part-0\.parquet", shown, re.M)]
    assert steps == sorted(steps) and len(steps) >= 3


def test_adaptive_runs_leave_2_over_lr_and_the_edge_out_everywhere(done):
    results = done / "results"
    run = results / "runs" / "mod" / "wd~1.0_seed~0"
    curvature = artifacts.read_partitions(sorted(run.glob("curvature/step=*/part-0.parquet")))
    assert curvature["sharpness_threshold"].isna().all()  # recorded as null, not 2/lr
    assert runs_table(results)["mod/wd~1.0_seed~0"]["sharpness_threshold"] == "–"
    assert index_table(results)["mod/wd~1.0_seed~0"]["sharpness_threshold"] == "–"
    assert runs_table(results)["flips/seed~0"]["sharpness_threshold"] != "–"  # SGD: 2/lr applies
    sweep = artifacts.read_parquet(results / "sweeps" / "mod" / "runs.parquet")
    assert sweep["sharpness_threshold"].isna().all() and not [c for c in sweep if c.startswith("edge_")]
    assert list(sweep.columns[sweep.columns.get_loc("final_train_acc"):][:len(report.HEADLINE)]) == report.HEADLINE
    text = (run / "report.md").read_text()
    assert "edge_at_edge" not in text and "Edge of stability: not assessed" in text
    assert "| sharpness_threshold | – |" in text
    sweep_text = (results / "sweeps" / "mod" / "report.md").read_text()
    assert "edge_at_edge" not in sweep_text and "are left out: 2/lr is the stability threshold" in sweep_text
    shown = cli("show", "mod/wd~1.0_seed~0", "--results", results)
    assert "edge_" not in shown and "  sharpness_threshold: –\n" in shown


def test_gradscope_train_writes_the_workflows_numbers(done, tmp_path):
    """One tiny run trained by `gradscope train` (torch at two threads before it starts) against the
    workflow's train job: metrics.parquet equal value for value (the wall clock aside)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cli("train", "flips/seed~0", "--config", done / "config" / "config.yaml", "--results", tmp_path / "results")
    finally:
        torch.set_num_threads(before)
    ours = artifacts.read_parquet(tmp_path / "results" / "runs" / "flips" / "seed~0" / "train" / "metrics.parquet")
    theirs = artifacts.read_parquet(done / "results" / "runs" / "flips" / "seed~0" / "train" / "metrics.parquet")
    pd.testing.assert_frame_equal(ours.drop(columns="wall_s"), theirs.drop(columns="wall_s"), check_exact=True)


def test_training_tab_reads_right(done, browser, tmp_path):
    """Constant lr: an axis around the value; clipping off: the clipped panel says so; the legend names
    train and test. A screenshot is kept in tmp_path for a person to look at."""
    from support.browser import figure, open_page

    open_page(browser, done / "results" / "sweeps" / "flips" / "dashboard.html")
    browser.execute_script("gradscope.show('training')")
    lr = browser.execute_script("const l = document.getElementById('fig-lr')._fullLayout.yaxis; return l.range;")
    assert lr[0] > 0 and lr[0] < 0.2 < lr[1] < 1.0, lr  # flips: constant lr 0.2, not a -1..1 axis
    assert "clipping is off" in figure(browser, "clipped")["empty"]
    names = figure(browser, "loss")["names"]
    shown = browser.execute_script(
        "return document.getElementById('fig-loss').data.filter(t => t.showlegend !== false).map(t => t.name)")
    assert "train (dotted)" in shown and "test (solid)" in shown and any(n.endswith(" test") for n in names)
    browser.save_screenshot(str(tmp_path / "training.png"))
