"""Real Snakemake runs of the whole workflow on a tiny config, in a temporary folder."""

import os
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from gradscope import artifacts, pipeline
from support.workflow import SIGNALS_FILES, TINY, copy_workflow, planned, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


# `done`, the complete run of the tiny config, is a session fixture in conftest.py: the workflow
# value tests (tests/workflow/test_workflow_values.py) read the same run.


def runs_of(cwd):
    return sorted(p.relative_to(cwd / "results" / "runs").as_posix() for p in (cwd / "results" / "runs").glob("*/*"))


def test_every_stage_writes_its_artifacts(done):
    assert runs_of(done) == ["flips/seed~0", "mod/wd~0.0_seed~0", "mod/wd~1.0_seed~0"]
    run = done / "results" / "runs" / "flips" / "seed~0"
    for rel in ["config.yaml", "train/metrics.parquet", "train/manifest.json", "train/checkpoints/step_00000015.pt",
                "examples/step=15/part-0.parquet", "curvature/step=30/part-0.parquet", "signals/detections.parquet",
                "signals/groups.parquet", "signals/summary.json", *SIGNALS_FILES, "figures/training.png", "figures/flagged.png",
                "figures/curvature.png", "figures/gradient_pca.gif", "figures/pca_frames/step_00000030.png", "report.md"]:
        assert (run / rel).is_file(), rel
    for exp in ("flips", "mod"):
        for rel in ("runs.parquet", "detectors.parquet", "report.md", "comparison.png", "sharpness.png"):
            assert (done / "results" / "sweeps" / exp / rel).is_file()
    assert not list(done.glob("results/**/*.tmp"))  # atomic writes leave no temporaries


def test_artifacts_read_back_with_pandas_and_duckdb(done):
    os.chdir(done)
    counts = duckdb.sql("select split, count(*) as n, count(distinct step) as steps "
                        "from 'results/runs/*/*/examples/*/*.parquet' group by split order by split").df()
    # flips: 120 train / 60 test at 3 checkpoints; mod p=7: 24 + 25 pairs at 3 checkpoints, two runs
    assert counts.to_dict("list") == {"split": ["test", "train"], "n": [60 * 3 + 25 * 3 * 2, 120 * 3 + 24 * 3 * 2],
                                      "steps": [5, 5]}
    ex = pd.read_parquet("results/runs/flips/seed~0/examples")
    assert {"step", "loss", "grad_norm", "grad_cos_mean", "grad_proj", "planted"} <= set(ex.columns)
    assert len(ex["grad_proj"].iloc[0]) == 8
    first = ex[ex["step"] == 15].iloc[0]  # per-layer norms (4 parameter tensors) make up the total norm
    assert abs(float((first["layer_grad_norm"].astype(float) ** 2).sum()) ** 0.5 - first["grad_norm"]) < 1e-4 * max(1.0, first["grad_norm"])
    meta = artifacts.read_metadata(next(Path("results/runs/flips/seed~0/examples").glob("step=*/part-0.parquet")))
    assert meta["gradscope.run_id"] == "flips/seed~0" and meta["gradscope.config"]["examples"]["proj_dim"] == 8
    assert meta["gradscope.config"]["layer_names"] == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]
    curv = duckdb.sql("select step, sharpness, sharpness_threshold from 'results/runs/flips/*/curvature/*/*.parquet' "
                      "order by step").df()
    assert list(curv["step"]) == [0, 15, 30] and (curv["sharpness_threshold"] == 2 * 1.5 / 0.2).all()
    runs = pd.read_parquet("results/sweeps/mod/runs.parquet")
    assert list(runs["wd"]) == [0.0, 1.0] and "final_test_acc" in runs


def test_reports_hold_config_figures_and_detection_quality(done):
    text = (done / "results/runs/flips/seed~0/report.md").read_text()
    for needle in ["# Run `flips/seed~0`", "figures/training.png", "figures/gradient_pca.gif", "auroc",
                   "opposition_auroc", "```yaml", "flip_fraction: 0.1", "average_precision", "### Opposing groups",
                   "figures/group_losses.png", "figures/cartography.png", "### Generalization events"]:
        assert needle in text, needle
    sweep = (done / "results/sweeps/mod/report.md").read_text()
    assert "wd~0.0_seed~0" in sweep and "wd~1.0_seed~0" in sweep and "comparison.png" in sweep
    assert "## Detectors compared" in (done / "results/sweeps/flips/report.md").read_text()


def test_eigenvectors_saved_and_warm_start_chains_a_runs_curvature_jobs(done, tmp_path):
    flips = done / "results/runs/flips/seed~0/curvature"
    for step in (0, 15, 30):  # flips has warm_start: each step's top eigenvector is saved
        vecs = np.load(flips / f"step={step}/eigenvectors.npy")
        assert vecs.shape == (1, 6 * 16 + 16 + 16 * 3 + 3) and vecs.dtype == np.float32  # MLP 6-16-3
        assert abs(float(np.linalg.norm(vecs[0])) - 1) < 1e-5
    mod = np.load(done / "results/runs/mod/wd~0.0_seed~0/curvature/step=10/eigenvectors.npy")
    assert mod.shape[0] == 0  # neither eigenvectors nor warm_start: an empty (0, n_params) array
    row = pd.read_parquet(flips / "step=30/part-0.parquet").iloc[0]
    assert 1 <= row["lanczos_steps"] <= 8 and row["lanczos_residual"] >= 0
    # Step 15 starts from step 0's eigenvectors and step 30 from step 15's: redoing step 0 redoes
    # both (--forcerun takes what depends on the job along), where mod's steps stand alone.
    first = "results/runs/{}/curvature/step=0/part-0.parquet"
    assert planned(done, "--forcerun", first.format("flips/seed~0"))["curvature"] == 3
    assert planned(done, "--forcerun", first.format("mod/wd~0.0_seed~0"))["curvature"] == 1
    # Eigenvectors of another model: the job names the file and writes nothing.
    config = artifacts.read_metadata(flips / "step=30/part-0.parquet")["gradscope.config"]
    bad = tmp_path / "other_model.npy"
    np.save(bad, np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="other_model.npy"):
        pipeline.write_curvature(config["curvature"], optim=config["optim"], loss=config["loss"], device="cpu",
                                 dataset=next(done.glob("results/data/planted_flips-*")),
                                 manifest=done / "results/runs/flips/seed~0/train/manifest.json", step=30,
                                 out=tmp_path / "c.parquet", eigenvectors_out=tmp_path / "e.npy", run_id="flips/seed~0",
                                 warm=bad)
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "e.npy").exists()


def test_signals_artifacts_read_back_across_runs(done):
    os.chdir(done)
    # one query over every run's evaluation table: the planted flips are scored, the modular runs have no truth
    ev = duckdb.sql("select filename like '%flips%' as flips, detector, count(*) as n, count(auroc) as scored "
                    "from read_parquet('results/runs/*/*/signals/evaluation.parquet', filename=true) "
                    "group by all order by all").df()
    assert (ev.loc[ev.flips, "scored"] == ev.loc[ev.flips, "n"]).all() and (ev.loc[~ev.flips, "scored"] == 0).all()
    assert set(ev["detector"]) >= {"cos_rule", "opposing_groups", "cartography", "forgetting", "el2n", "grand", "aum",
                                   "tracin", "loss_increasing", "loss_volatile", "high_loss"}
    det = pd.read_parquet("results/runs/flips/seed~0/signals/detections.parquet")
    assert len(det[det.detector == "cos_rule"]) == 120 * 3  # every training example at every checkpoint
    per_example = pd.read_parquet("results/runs/flips/seed~0/signals/per_example.parquet")
    assert len(per_example) == 120 and per_example["planted"].sum() == 12
    groups = pd.read_parquet("results/runs/flips/seed~0/signals/groups.parquet")
    assert groups.groupby("step_to").size().tolist() == [5, 5]  # top_k 5 at each of the two intervals
    detectors = pd.read_parquet("results/sweeps/flips/detectors.parquet")
    assert {"detector", "auroc", "best_auroc", "run_id"} <= set(detectors.columns)
    log = (done / "logs/train/flips/seed~0.log").read_text()
    assert "resolved training config" in log and "flip_fraction: 0.1" in log and "steps/s" in log


def test_nothing_is_planned_after_a_complete_run(done):
    assert planned(done) == {}


def test_lint_is_clean(done):
    proc = snakemake(done, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_html_report(done):
    snakemake(done, "--report", "report.html")
    html = (done / "report.html").read_text(errors="replace")
    assert "training.png" in html and "gradient_pca.gif" in html


def test_plot_setting_plans_only_plots_and_reports(done):
    counts = planned(done, "--config", "experiments={'flips': {'plots': {'dpi': 61}}}")
    assert counts  # sanity: the override is seen
    assert set(counts) <= {"plots", "plot_signals", "animate", "plot_timeline", "report", "sweep_report",
                           "resolve_config", "all"}, counts


def with_config(done, tmp_path, change):
    cfg = yaml.safe_load(TINY.read_text())
    change(cfg)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return planned(done, "--configfile", str(path))


def test_learning_rate_change_reruns_that_run_from_training_and_reuses_its_data(done, tmp_path):
    counts = with_config(done, tmp_path, lambda c: c["experiments"]["flips"]["optim"].update(lr=0.3))
    assert "generate_data" not in counts
    assert counts["train"] == 1 and counts["extract_examples"] == 3 and counts["curvature"] == 3
    assert counts["sweep_report"] == 1 and counts["report"] == 1


def test_new_seed_plans_only_the_new_seeds_jobs(done, tmp_path):
    counts = with_config(done, tmp_path, lambda c: c["experiments"]["flips"].update(seeds=[0, 1]))
    assert "generate_data" not in counts
    assert counts["train"] == 1 and counts["report"] == 1 and counts["sweep_report"] == 1


def test_new_grid_value_runs_only_the_new_run_and_the_sweep_report_covers_all(done, tmp_path):
    extended = shutil.copytree(done, tmp_path / "extended", symlinks=True)  # copy2 keeps the mtimes
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"]["mod"]["grid"]["optim.weight_decay"] = [0.0, 1.0, 0.1]
    (extended / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    counts = planned(extended)
    assert "generate_data" not in counts and counts["train"] == 1 and counts["report"] == 1
    assert counts["extract_examples"] == 3 and counts["curvature"] == 3 and counts["sweep_report"] == 1  # mod's only
    old = extended / "results/runs/mod/wd~1.0_seed~0/train/metrics.parquet"
    before = old.stat().st_mtime_ns
    snakemake(extended, "--cores", "2")
    assert old.stat().st_mtime_ns == before and planned(extended) == {}
    runs = pd.read_parquet(extended / "results/sweeps/mod/runs.parquet")
    assert sorted(runs["wd"]) == [0.0, 0.1, 1.0]
    assert "wd~0.1_seed~0" in (extended / "results/sweeps/mod/report.md").read_text()


def test_config_override_reaches_the_rules_and_the_resolved_config(done, tmp_path):
    cwd = copy_workflow(tmp_path / "wf", yaml.safe_load(TINY.read_text()))
    target = "results/runs/mod/wd~1.0_seed~0/config.yaml"
    snakemake(cwd, "--cores", "1", target, "--config", "experiments={'mod': {'train': {'steps': 12}}}")
    resolved = yaml.safe_load((cwd / target).read_text())
    assert resolved["train"]["steps"] == 12 and resolved["optim"]["weight_decay"] == 1.0
    assert resolved["train"]["checkpoints"] == {"at": [10]}  # the rest of the config is kept


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"]["mod"]["optim"]["lrr"] = 0.1
    cwd = copy_workflow(tmp_path, cfg)
    proc = snakemake(cwd, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "'lrr'" in proc.stderr + proc.stdout and "allowed:" in proc.stderr + proc.stdout
    assert not (cwd / "results").exists()


def test_cli_lists_and_shows_runs(done):
    from click.testing import CliRunner

    from gradscope.cli import main

    out = CliRunner().invoke(main, ["runs", "--results", str(done / "results")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "wd" in lines[0] and "final_test_acc" in lines[0] and "best_detector" in lines[0]  # report.HEADLINE
    assert any(line.startswith("mod/wd~1.0_seed~0") and " done " in f" {line} " for line in lines)
    shown = CliRunner().invoke(main, ["show", "flips/seed~0", "--results", str(done / "results")])
    assert shown.exit_code == 0 and "final_test_acc" in shown.output and "report.md" in shown.output
    missing = CliRunner().invoke(main, ["show", "flips/seed~9", "--results", str(done / "results")])
    assert missing.exit_code != 0 and "flips/seed~0" in missing.output


def test_killed_snakemake_training_job_resumes(tmp_path):
    from support.engine import kill_when_checkpointed

    longer = "experiments={'flips': {'train': {'steps': 2000, 'log_every': 50, 'checkpoints': {'every': 250}}}}"
    target = "results/runs/flips/seed~0/train/metrics.parquet"
    args = ["--cores", "1", target, "--config", longer]
    killed = copy_workflow(tmp_path / "killed", yaml.safe_load(TINY.read_text()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kill_when_checkpointed([sys.executable, "-m", "snakemake", *args], killed / "results/runs/flips/seed~0/train/resume",
                           500, env=env, cwd=killed)
    snakemake(killed, "--unlock")  # a killed Snakemake leaves its lock, as it says when started again
    snakemake(killed, *args)  # the default profile reruns the incomplete job
    assert "resuming flips/seed~0 from its checkpoint at step" in (killed / "logs/train/flips/seed~0.log").read_text()

    fresh = copy_workflow(tmp_path / "fresh", yaml.safe_load(TINY.read_text()))
    snakemake(fresh, *args)
    a, b = (pd.read_parquet(d / target).drop(columns="wall_s") for d in (killed, fresh))
    pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in (killed / "results/runs/flips/seed~0/train/checkpoints").glob("*.pt")) == [
        f"step_{s:08d}.pt" for s in range(0, 2001, 250)]


def test_influence_tables_are_tracin_cp_of_the_stored_projections(done):
    # The influence rule's tables against TracIn-CP recomputed here from the examples tables and
    # the learning rate of metrics.parquet (a glue bug, e.g. a shifted step or lr, would differ).
    from gradscope import influence

    run = done / "results/runs/flips/seed~0"
    ex = pd.read_parquet(run / "examples").sort_values(["step", "example_id"])
    steps = sorted(ex["step"].unique())
    lr = pd.read_parquet(run / "train/metrics.parquet").set_index("step")["lr"].sort_index()
    rates = np.array([lr[lr.index <= s].iloc[-1] for s in steps])

    def proj(split):
        part = ex[ex["split"] == split]
        return np.stack(part["grad_proj"].to_numpy()).reshape(len(steps), -1, 8), np.unique(part["example_id"])

    (tr, train_ids), (te, test_ids) = proj("train"), proj("test")
    scores = influence.tracin_cp(tr, te, rates)
    top = pd.read_parquet(run / "influence/top.parquet")
    assert set(top["test_id"]) == set(test_ids) and len(top) == len(test_ids) * 2 * 10
    for row in top.sample(25, random_state=0).itertuples():
        t, n = np.searchsorted(test_ids, row.test_id), np.searchsorted(train_ids, row.train_id)
        assert abs(row.score - scores[t, n]) < 1e-4 * max(1.0, abs(scores[t]).max())
    for t in (0, len(test_ids) - 1):  # the best proponent is the argmax over all training examples
        best = top[(top["test_id"] == test_ids[t]) & (top["kind"] == "proponent") & (top["rank"] == 1)]
        assert best["train_id"].item() == train_ids[np.argmax(scores[t])]
    contrib = pd.read_parquet(run / "influence/contributions.parquet")
    summed = contrib.groupby(["test_id", "train_id", "kind"])["contribution"].sum()
    merged = top.set_index(["test_id", "train_id", "kind"])["score"]
    np.testing.assert_allclose(summed.loc[merged.index].to_numpy(), merged.to_numpy(), rtol=1e-9, atol=1e-12)
    assert sorted(contrib["step"].unique()) == steps
    summary = artifacts.read_json(run / "influence/summary.json")
    assert summary["flipped_opponents"]["n_flipped"] == 12 and summary["lr"] == list(rates)
    text = (run / "report.md").read_text()
    assert "## Which training examples shaped these predictions" in text and "**Test example" in text
