import math

import pandas as pd
import pytest
import torch

from gradscope import checkpoints, config, train
from support.engine import setup_run


def test_training_writes_metrics_and_checkpoints(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path)
    metrics = train.train(settings, tr, te, spec, tmp_path / "out", "t/seed~0")
    assert list(metrics["step"]) == [0, 4, 8, 12]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step_00000000.pt", "step_00000005.pt", "step_00000010.pt", "step_00000012.pt"]
    stored = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    pd.testing.assert_frame_equal(stored, metrics, check_dtype=False)
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]


def test_checkpoint_rebuilds_the_model_and_evaluates_like_the_log(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path)
    metrics = train.train(settings, tr, te, spec, tmp_path / "out", "x")
    model, state = checkpoints.load(tmp_path / "out" / "checkpoints" / "step_00000012.pt")
    assert state["step"] == 12 and state["settings"] == settings
    loss, acc = train.evaluate(model, *tr, "cross_entropy")
    assert loss == pytest.approx(metrics["train_loss"].iloc[-1], rel=1e-6)
    assert acc == pytest.approx(metrics["train_acc"].iloc[-1])


def test_same_config_same_numbers(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path)
    a = train.train(settings, tr, te, spec, tmp_path / "a", "x")
    b = train.train(settings, tr, te, spec, tmp_path / "b", "x")
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))
    sa = torch.load(tmp_path / "a/checkpoints/step_00000012.pt", weights_only=False)["model_state"]
    sb = torch.load(tmp_path / "b/checkpoints/step_00000012.pt", weights_only=False)["model_state"]
    for k in sa:
        assert torch.equal(sa[k], sb[k])


def test_warmup_and_clipping_are_logged(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path, warmup_steps=8, grad_clip=1e-6)
    metrics = train.train(settings, tr, te, spec, tmp_path / "out", "x")
    assert list(metrics["lr"]) == pytest.approx([0.1 / 8, 0.1 * 5 / 8, 0.1, 0.1])
    assert metrics["clipped"].iloc[:-1].all() and not metrics["clipped"].iloc[-1]  # the last step takes no update
    assert (metrics["clipped_fraction"] == 1.0).all()


def test_sharpness_threshold():
    assert train.sharpness_threshold({"name": "sgd", "lr": 0.1, "momentum": 0.0}) == pytest.approx(20.0)
    assert train.sharpness_threshold({"name": "sgd", "lr": 0.1, "momentum": 0.9}) == pytest.approx(38.0)
    assert train.sharpness_threshold({"name": "adam", "lr": 0.1, "momentum": 0.9}) == pytest.approx(20.0)


def test_non_finite_loss_stops_with_step_and_keeps_metrics(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path, lr=1e30, momentum=0.0)
    with pytest.raises(FloatingPointError) as err:
        train.train(settings, tr, te, spec, tmp_path / "out", "x")
    assert "at step" in str(err.value) and "metrics.partial.parquet" in str(err.value)
    partial = pd.read_parquet(tmp_path / "out" / "metrics.partial.parquet")
    assert len(partial) >= 1 and math.isfinite(partial["train_loss"].iloc[0])
    assert not (tmp_path / "out" / "metrics.parquet").exists()


def test_dynamics_log_has_a_row_per_layer_and_logged_step(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path)
    settings["optim"] = {**settings["optim"], "name": "adamw", "weight_decay": 0.1}
    settings["train"] = {**settings["train"], "dynamics_every": 4}
    train.train(settings, tr, te, spec, tmp_path / "out", "x")
    dyn = pd.read_parquet(tmp_path / "out" / "dynamics.parquet")
    layers = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]
    assert sorted(set(dyn["layer"])) == sorted(layers) and sorted(set(dyn["step"])) == [0, 4, 8, 12]
    w = dyn[(dyn.layer == "body.0.weight") & (dyn.step == 4)].iloc[0]
    # the three weight tiers partition the tensor, so their squared gradient norms add up
    assert w.grad_norm**2 == pytest.approx(w.grad_norm_top5**2 + w.grad_norm_mid90**2 + w.grad_norm_bottom5**2)
    assert w.adam_eff_lr_median > 0 and w.update_to_decay_ratio > 0
    assert math.isnan(dyn[dyn.step == 0].iloc[0].adam_eff_lr_median)  # no Adam state before the first update


def test_schedules():
    from gradscope.optim import Plateau, lr_at
    cos = {"lr": 1.0, "warmup_steps": 0, "schedule": {"kind": "cosine", "min_lr_ratio": 0.1}}
    assert lr_at(0, cos, 100) == pytest.approx(1.0) and lr_at(100, cos, 100) == pytest.approx(0.1)
    assert lr_at(50, cos, 100) == pytest.approx(0.55)
    step = {"lr": 1.0, "schedule": {"kind": "step", "step_size": 10, "gamma": 0.5}}
    assert [lr_at(s, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    plateau = Plateau(config.section("optim", schedule={"kind": "plateau", "metric": "train_loss", "factor": 0.5,
                                                        "patience": 1})["schedule"])
    for loss in (1.0, 0.5, 0.5, 0.5, 0.5):
        plateau.observe({"train_loss": loss})
    assert plateau.scale == 0.5


@pytest.mark.parametrize("optim", [{"name": "rmsprop", "lr": 0.01, "momentum": 0.0}, {"name": "sgd", "nesterov": True, "momentum": 0.9},
                                   {"name": "sgd", "schedule": {"kind": "plateau", "metric": "test_acc", "patience": 0}}])
def test_other_optimizers_and_schedules_train(tmp_path, optim):
    settings, (tr, te), spec = setup_run(tmp_path, **optim)
    metrics = train.train(settings, tr, te, spec, tmp_path / "out", "x")
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]


def test_early_stopping_ends_training_and_fills_later_checkpoints(tmp_path):
    settings, (tr, te), spec = setup_run(tmp_path, lr=1e-9)  # nothing improves
    settings["train"] = {**settings["train"], "early_stopping": {"metric": "train_loss", "patience": 1, "min_delta": 0.1}}
    metrics = train.train(settings, tr, te, spec, tmp_path / "out", "x")
    assert list(metrics["step"]) == [0, 4, 8]  # the rule fires at the third evaluation
    manifest = __import__("json").loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stopped_early_at"] == 8
    late = torch.load(tmp_path / "out" / "checkpoints" / "step_00000012.pt", weights_only=False)
    assert late["stopped_early_at"] == 8 and late["step"] == 8
