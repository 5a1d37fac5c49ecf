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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gradscope import checkpoints, config, data, doctor, layout
from gradscope.models import build_model
from gradscope.recorder import RecorderError
from gradscope.train import evaluate

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # "tests.integration_models" imports from the repository root
    sys.path.insert(0, str(REPO))

DATA = {"generator": "digits", "digits": {"label_noise": 0.1}}
MLP = {"kind": "mlp", "width": 32}
STEPS = 24
BATCH = 16  # 1348 training examples: 84 batches an epoch, so 2 x 24 batches stay in one epoch


def needs(*packages: str) -> None:
    """Skip where an optional package is not installed (looked up, not imported: importing
    Lightning is the integration module's job, which readies torchvision for it first)."""
    for name in packages:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


@dataclass
class Recorded:
    """A finished recording and what the trainer did, seen by a callback of the test's own."""

    folder: Path
    steps: int
    model: torch.nn.Module  # the recorded model, trained (the trainer's final state)
    train: tuple  # (x, y) of the training split
    weights: dict = field(default_factory=dict)  # optimizer steps taken -> state_dict then (0: before training)
    grad_norms: dict = field(default_factory=dict)  # step -> norm of the gradients step's update used
    lrs: dict = field(default_factory=dict)  # step -> the lr of step's update
    batches: int = 0  # training batches the trainer ran


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grad_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.detach().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def _loader(x, y, batch_size: int):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def record_lightning_run(folder, *, accumulate: int = 1, model_attr: str | None = "net", steps: int = STEPS,
                         log_every: int | str = 1) -> Recorded:
    """Fit a tiny classifier with the Lightning Trainer (CPU, max_steps=steps), recorded into `folder`.

    model_attr="net": a LightningModule holding a built-in MLP as `net` (Adam), recorded as
    {kind: mlp, width: 32}; None: the LightningModule is the model (SGD with momentum), rebuilt by
    tests.integration_models:lit_classifier. Either decays its lr every step. accumulate: the
    Trainer's accumulate_grad_batches."""
    from gradscope.integrations.lightning import GradscopeCallback  # first: it readies torchvision for Lightning
    import lightning.pytorch as pl  # noqa: I001
    from tests.integration_models import LitWrapper, lit_classifier

    folder = Path(folder)
    (x, y), _, spec = data.load(DATA)
    torch.manual_seed(0)
    if model_attr is not None:
        module = LitWrapper(build_model(MLP, spec))
        how = {"model_settings": MLP, "model_attr": model_attr}
    else:
        module = lit_classifier(spec.shape, spec.n_classes, width=32)
        how = {"model_factory": "tests.integration_models:lit_classifier", "model_kwargs": {"width": 32}}
    model = getattr(module, model_attr) if model_attr else module
    out = Recorded(folder=folder, steps=steps, model=model, train=(x, y))

    class Watch(pl.Callback):  # what the trainer did, independently of the recorder
        def on_train_start(self, trainer, pl_module):
            out.weights[trainer.global_step] = _state(model)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            out.grad_norms[trainer.global_step] = _grad_norm(model)
            out.lrs[trainer.global_step] = optimizer.param_groups[0]["lr"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            out.batches += 1
            out.weights[trainer.global_step] = _state(model)

    callback = GradscopeCallback(folder, data=DATA, log_every=log_every, **how)  # steps: the Trainer's max_steps
    with tempfile.TemporaryDirectory() as scratch:
        trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=scratch,
                             callbacks=[Watch(), callback])
        trainer.fit(module, _loader(x, y, BATCH))
    assert callback.recorder is not None and callback.recorder.finished
    return out


def _collate(batch) -> dict:
    """A Trainer batch from (x, y) pairs: the model's keyword arguments."""
    return {"x": torch.stack([b[0] for b in batch]), "labels": torch.stack([b[1] for b in batch])}


def record_hf_run(folder, *, accumulate: int = 1, steps: int = STEPS, log_every: int | str = 1) -> Recorded:
    """Train tests.integration_models:tiny_classifier with the Hugging Face Trainer (CPU, AdamW with
    a linear decay of the lr, max_steps=steps, gradient_accumulation_steps=accumulate), recorded into `folder`."""
    import transformers

    from gradscope.integrations.huggingface import GradscopeTrainerCallback
    from tests.integration_models import tiny_classifier

    folder = Path(folder)
    (x, y), _, spec = data.load(DATA)
    torch.manual_seed(0)
    model = tiny_classifier(spec.shape, spec.n_classes, width=32)
    out = Recorded(folder=folder, steps=steps, model=model, train=(x, y))

    class Watch(transformers.TrainerCallback):  # what the trainer did, independently of the recorder
        def on_train_begin(self, args, state, control, **kwargs):
            out.weights[state.global_step] = _state(model)

        def on_pre_optimizer_step(self, args, state, control, optimizer, **kwargs):
            out.grad_norms[state.global_step] = _grad_norm(model)
            out.lrs[state.global_step] = optimizer.param_groups[0]["lr"]

        def on_substep_end(self, args, state, control, **kwargs):
            out.batches += 1

        def on_step_end(self, args, state, control, **kwargs):
            out.batches += 1
            out.weights[state.global_step] = _state(model)

    callback = GradscopeTrainerCallback(folder, data=DATA, log_every=log_every,
                                        model_factory="tests.integration_models:tiny_classifier",
                                        model_kwargs={"width": 32})  # steps: the Trainer's max_steps
    with tempfile.TemporaryDirectory() as scratch:
        args = transformers.TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=accumulate, learning_rate=1e-2, lr_scheduler_type="linear",
            optim="adamw_torch", max_grad_norm=0.0, use_cpu=True, seed=0, report_to="none", disable_tqdm=True,
            save_strategy="no", logging_strategy="no", eval_strategy="no", remove_unused_columns=False,
            dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=torch.utils.data.TensorDataset(x, y),
                                       data_collator=_collate, callbacks=[Watch(), callback])
        trainer.train()
    assert callback.recorder is not None and callback.recorder.finished
    return out


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
