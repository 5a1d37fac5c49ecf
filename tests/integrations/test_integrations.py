"""The Lightning and Hugging Face callbacks (gradscope.integrations): a real Trainer trains a tiny
model on the digits data while the callback records it, and the recorded run must be the one
trained: a metrics row for every optimizer step evaluating the weights after that step, with the
gradient norm of that step's update; checkpoints on the schedule, holding those weights; steps
counting optimizer steps under gradient accumulation.

`record_lightning_run(folder)` and `record_hf_run(folder)` write a finished recorded run (and
return what the trainer did, to compare against), for tests that analyze one with the workflow.
Their models rebuild from "tests.integration_models:..." or a built-in kind, so the working
directory must be the repository root when the analysis loads the checkpoints.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gradscope import checkpoints, config, doctor, layout
from gradscope.recorder import RecorderError
from gradscope.train import evaluate
from support.integrations import BATCH, DATA, MLP, Recorded, record_hf_run, record_lightning_run



def needs(*packages: str) -> None:
    """Skip where an optional package is not installed (looked up, not imported: importing
    Lightning is the integration module's job, which readies torchvision for it first)."""
    for name in packages:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def check_recording(r: Recorded) -> dict:
    """The recorded run is the run the trainer made. Returns its config.yaml."""
    steps = r.steps
    assert sorted(r.weights) == list(range(steps + 1)) and sorted(r.grad_norms) == list(range(steps))
    assert any(not torch.equal(r.weights[0][k], r.weights[steps][k]) for k in r.weights[0])  # it trained

    # metrics: a row per optimizer step (log_every=1), evaluating the weights after that step
    metrics = pd.read_parquet(layout.in_run(r.folder, "metrics"))
    assert list(metrics["step"]) == list(range(steps + 1))
    assert np.isfinite(metrics[["train_loss", "test_loss", "weight_norm"]].to_numpy()).all()
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    probe = copy.deepcopy(r.model)
    for t in range(steps + 1):
        probe.load_state_dict(r.weights[t])
        probe.eval()
        loss, acc = evaluate(probe, *r.train, "cross_entropy")
        row = metrics.iloc[t]
        assert row["train_loss"] == pytest.approx(loss, rel=1e-6), t
        assert row["train_acc"] == pytest.approx(acc), t
    # ... with the gradient norm and lr of that step's update (no gradient after the last)
    assert list(metrics["grad_norm"].iloc[:-1]) == pytest.approx([r.grad_norms[t] for t in range(steps)], rel=1e-5)
    assert math.isnan(metrics["grad_norm"].iloc[-1])
    assert len(set(r.lrs.values())) > 1  # the lr changes every step: a row's lr must be its own step's
    assert list(metrics["lr"].iloc[:-1]) == pytest.approx([r.lrs[t] for t in range(steps)], rel=1e-12)

    # checkpoints: on the schedule, holding the weights after that many optimizer steps
    manifest = json.loads(layout.in_run(r.folder, "manifest").read_text())
    settings = yaml.safe_load(layout.in_run(r.folder, "config").read_text())
    assert manifest["steps"] == steps and settings["train"]["steps"] == steps
    scheduled = config.checkpoint_steps(config.section("train", {"steps": steps}))
    assert sorted(int(s) for s in manifest["checkpoints"]) == scheduled and scheduled[-1] == steps
    base = layout.in_run(r.folder, "manifest").parent
    for s, rel in manifest["checkpoints"].items():
        path = base / rel
        assert path.exists(), path
        model, state = checkpoints.load(path)
        assert state["step"] == int(s)
        rebuilt = model.state_dict()
        assert rebuilt.keys() == r.weights[int(s)].keys()
        assert all(torch.equal(rebuilt[k], r.weights[int(s)][k]) for k in rebuilt), f"checkpoint of step {s}"
    final, _ = checkpoints.load(base / manifest["checkpoints"][str(steps)])
    trained = r.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in final.state_dict().items())
    return settings


# ---- Lightning -------------------------------------------------------------------------------------
def test_lightning_records_the_fit(tmp_path):
    needs("lightning")
    r = record_lightning_run(tmp_path / "run")
    settings = check_recording(r)
    assert settings["model"]["kind"] == "mlp" and settings["model"]["width"] == 32
    assert settings["optim"]["name"] == "adam" and settings["optim"]["lr"] == pytest.approx(0.01)
    assert settings["train"]["batch_size"] == BATCH and settings["device"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "train"]  # nothing of Lightning's


def test_lightning_steps_are_optimizer_steps_under_accumulation(tmp_path):
    needs("lightning")
    r = record_lightning_run(tmp_path / "run", accumulate=2, model_attr=None)
    assert r.batches == 2 * r.steps  # two batches an optimizer step; the recording counts the steps
    settings = check_recording(r)
    assert settings["model"]["factory"] == "tests.integration_models:lit_classifier"
    assert settings["optim"]["name"] == "sgd" and settings["optim"]["momentum"] == pytest.approx(0.9)
    assert settings["train"]["batch_size"] == 2 * BATCH


def test_lightning_callback_checks_its_arguments_at_once(tmp_path):
    needs("lightning")
    from gradscope.integrations.lightning import GradscopeCallback

    with pytest.raises(TypeError, match="optimizer= is taken from the trainer"):
        GradscopeCallback(tmp_path, data=DATA, model_settings=MLP, optimizer=None)
    with pytest.raises(TypeError, match="log_evry"):
        GradscopeCallback(tmp_path, data=DATA, model_settings=MLP, log_evry=1)
    with pytest.raises(RecorderError, match="say how to rebuild your model"):
        GradscopeCallback(tmp_path, data=DATA)
    assert not any(tmp_path.iterdir())


# ---- Hugging Face ----------------------------------------------------------------------------------
def test_hf_trainer_records_the_training(tmp_path):
    needs("transformers", "accelerate")
    r = record_hf_run(tmp_path / "run")
    assert r.batches == r.steps
    settings = check_recording(r)
    assert settings["model"] == {**settings["model"], "kind": "python",
                                 "factory": "tests.integration_models:tiny_classifier", "kwargs": {"width": 32}}
    assert settings["optim"]["name"] == "adamw" and settings["optim"]["lr"] == pytest.approx(1e-2)
    assert settings["train"]["batch_size"] == BATCH and settings["seed"] == 0


def test_hf_trainer_steps_are_optimizer_steps_under_accumulation(tmp_path):
    needs("transformers", "accelerate")
    r = record_hf_run(tmp_path / "run", accumulate=2, steps=12)
    assert r.batches == 2 * r.steps
    settings = check_recording(r)
    assert settings["train"]["batch_size"] == 2 * BATCH


def test_hf_callback_checks_its_arguments_at_once(tmp_path):
    needs("transformers", "accelerate")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    with pytest.raises(TypeError, match="model= is taken from the trainer"):
        GradscopeTrainerCallback(tmp_path, data=DATA, model_settings=MLP, model=None)
    with pytest.raises(RecorderError, match="not both"):
        GradscopeTrainerCallback(tmp_path, data=DATA, model_settings=MLP,
                                 model_factory="tests.integration_models:tiny_classifier")
    assert not any(tmp_path.iterdir())


# ---- without the framework -------------------------------------------------------------------------
@pytest.mark.parametrize("module, missing, extra", [("lightning", "lightning.pytorch", "lightning"),
                                                    ("huggingface", "transformers", "huggingface")])
def test_a_missing_framework_says_what_to_install(monkeypatch, module, missing, extra):
    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, f"gradscope.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=re.escape(doctor.install_hint(extra))) as raised:
        importlib.import_module(f"gradscope.integrations.{module}")
    assert f"[{extra}]" in str(raised.value) and "gradscope doctor" in str(raised.value)
