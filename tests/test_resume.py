"""A training job killed with SIGKILL and run again ends as if it had never been interrupted."""

import os
import pickle
import sys

import pandas as pd
import pytest
import torch

from gradscope import train
from support.engine import setup_run
from support.engine import kill_when_checkpointed

SCRIPT = """
import pickle, sys
from gradscope import train
settings, tr, te, spec, out = pickle.load(open(sys.argv[1], "rb"))
train.train(settings, tr, te, spec, out, "r")
"""


def long_run(tmp_path):
    settings, splits, spec = setup_run(tmp_path)
    settings["train"].update(steps=3000, checkpoints={"every": 250}, log_every=50)
    return settings, splits, spec


@pytest.mark.slow
def test_killed_training_resumes_to_identical_metrics_and_checkpoints(tmp_path, caplog):
    settings, (tr, te), spec = long_run(tmp_path)
    reference = train.train(settings, tr, te, spec, tmp_path / "reference", "r")

    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps((settings, tr, te, spec, tmp_path / "killed")))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    kill_when_checkpointed([sys.executable, "-c", SCRIPT, str(job)], tmp_path / "killed" / "resume", 500, env=env)
    stored = sorted(p.name for p in (tmp_path / "killed" / "resume").glob("step_*.pt"))
    assert "step_00000000.pt" in stored and not (tmp_path / "killed" / "metrics.parquet").exists()
    # a damaged file is never taken for a whole checkpoint
    (tmp_path / "killed" / "resume" / "step_99999999.pt").write_bytes(b"half a checkpoint")

    with caplog.at_level("INFO"):
        resumed = train.train(settings, tr, te, spec, tmp_path / "killed", "r")
    assert "resuming r from its checkpoint at step" in caplog.text and "skipping unreadable checkpoint" in caplog.text
    pd.testing.assert_frame_equal(resumed.drop(columns="wall_s"), reference.drop(columns="wall_s"))
    for name in [p.name for p in (tmp_path / "reference" / "checkpoints").iterdir()]:
        a = torch.load(tmp_path / "reference" / "checkpoints" / name, weights_only=False)
        b = torch.load(tmp_path / "killed" / "checkpoints" / name, weights_only=False)
        for k in a["model_state"]:
            assert torch.equal(a["model_state"][k], b["model_state"][k]), (name, k)
        # byte for byte too (issue 13: every generator seeded, no wall-clock time inside)
        assert (tmp_path / "reference" / "checkpoints" / name).read_bytes() == \
            (tmp_path / "killed" / "checkpoints" / name).read_bytes(), name
    assert not (tmp_path / "killed" / "resume").exists()  # the store is cleared once the run is published


def test_a_store_of_other_settings_is_not_resumed(tmp_path, caplog):
    settings, (tr, te), spec = setup_run(tmp_path)
    train.train(settings, tr, te, spec, tmp_path / "out", "r")
    first = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    # leave a store behind as a killed run of another learning rate would
    other = {**settings, "optim": {**settings["optim"], "lr": 0.05}}
    (tmp_path / "out" / "checkpoints").rename(tmp_path / "out" / "resume")
    for p in (tmp_path / "out" / "resume").iterdir():
        state = torch.load(p, weights_only=False)
        state["settings"] = other
        torch.save(state, p)
    with caplog.at_level("INFO"):
        again = train.train(settings, tr, te, spec, tmp_path / "out", "r")
    assert "another config's checkpoints" in caplog.text
    pd.testing.assert_frame_equal(again.drop(columns="wall_s"), first.drop(columns="wall_s"))
