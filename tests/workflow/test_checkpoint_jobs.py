"""checkpoint_jobs: per_run computes a run's checkpoints in one job each for examples and
curvature, and writes the same tables as the per-checkpoint jobs of the tiny run (`done`)."""

import pandas as pd
import pytest
import yaml

from gradscope import artifacts, layout
from support.workflow import TINY, copy_workflow, planned, snakemake
from support.workflow import TIMES

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# Columns that hold a time, not a result.


def _flips_per_run(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"] = {"flips": config["experiments"]["flips"]}  # warm_start: true, checkpoints 0, 15, 30
    return copy_workflow(tmp_path / "wf", {**config, "checkpoint_jobs": "per_run"}), config


def test_per_run_jobs_write_the_per_checkpoint_tables_and_rerun_only_what_a_change_invalidates(done, tmp_path):
    cwd, config = _flips_per_run(tmp_path)
    plan = planned(cwd)
    assert plan["extract_examples"] == 1 and plan["curvature"] == 1 and plan["train"] == 1
    snakemake(cwd, "--cores", "2")
    run = "flips/seed~0"
    for kind in ("examples", "curvature"):
        ours = layout.tables_in(layout.run_dir(run, cwd / "results"), kind)
        theirs = layout.tables_in(layout.run_dir(run, done / "results"), kind)
        assert [p.parent.name for p in ours] == [p.parent.name for p in theirs] == ["step=0", "step=15", "step=30"]
        a, b = artifacts.read_partitions(ours), artifacts.read_partitions(theirs)
        keep = [c for c in a.columns if c not in TIMES]
        pd.testing.assert_frame_equal(a[keep], b[keep])  # warm starts chain inside the job as across jobs
    for step in (0, 15, 30):  # each checkpoint's eigenvectors, as the per-checkpoint jobs save them
        ours = artifacts.read_npy(layout.run_dir(run, cwd / "results") / layout.IN_RUN["eigenvectors"].format(step=step))
        theirs = artifacts.read_npy(layout.run_dir(run, done / "results") / layout.IN_RUN["eigenvectors"].format(step=step))
        assert (ours == theirs).all()
    assert planned(cwd) == {}
    # a curvature setting reruns the run's curvature job and what reads it, not its examples job
    config["experiments"]["flips"]["curvature"]["lanczos_iters"] = 7
    (cwd / "config" / "config.yaml").write_text(yaml.safe_dump({**config, "checkpoint_jobs": "per_run"}))
    plan = planned(cwd)
    assert plan.get("curvature") == 1 and "extract_examples" not in plan and "train" not in plan
