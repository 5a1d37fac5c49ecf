"""The Recorder: a hand-written loop with it writes what the train stage writes.

The reference is the train stage itself (gradscope.pipeline.train_run) on the same settings: the
hand-written loop below draws its minibatches as the train stage does, so with one thread the
checkpoints must hold the same floats, and the metrics the same values.
"""


import numpy as np
import pandas as pd
import pytest
import torch

from gradscope import checkpoints, config, data, external, layout, pipeline
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from gradscope.recorder import Recorder, RecorderError, optim_settings
from support.recorder import DATA, STEPS, hand_loop, resolved


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The train stage's run of `resolved()`."""
    root = tmp_path_factory.mktemp("trained")
    settings = resolved()
    train, test, meta = data.generate(settings["data"])
    data.write_dataset(train, test, meta, root / "data" / "train.parquet", root / "data" / "test.parquet",
                       root / "data" / "meta.json")
    pipeline.train_run(settings, dataset=root / "data", out_dir=root / "run" / "train", run_id="t")
    return root / "run"


def weights(folder, step):
    return checkpoints.load_state(layout.in_run(folder, "checkpoints") / checkpoints.checkpoint_name(step))["model_state"]


def test_a_hand_written_loop_with_the_recorder_writes_the_train_stages_checkpoints_and_metrics(trained, tmp_path):
    hand_loop(resolved(), tmp_path / "rec")
    steps = config.checkpoint_steps(resolved()["train"])
    assert [p.name for p in sorted(layout.in_run(tmp_path / "rec", "checkpoints").iterdir())] == \
        [checkpoints.checkpoint_name(s) for s in steps]
    for step in steps:
        a, b = weights(trained, step), weights(tmp_path / "rec", step)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    ours = pd.read_parquet(layout.in_run(tmp_path / "rec", "metrics")).drop(columns="wall_s")
    theirs = pd.read_parquet(layout.in_run(trained, "metrics")).drop(columns="wall_s")
    assert list(ours["step"]) == list(theirs["step"]) == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    # the last row has no update after it, so no gradient norm (the train stage takes one extra backward)
    pd.testing.assert_frame_equal(ours.iloc[:-1], theirs.iloc[:-1])
    pd.testing.assert_frame_equal(ours.iloc[-1:].drop(columns="grad_norm"), theirs.iloc[-1:].drop(columns="grad_norm"))
    dyn_ours = pd.read_parquet(layout.in_run(tmp_path / "rec", "dynamics"))
    dyn_theirs = pd.read_parquet(layout.in_run(trained, "dynamics"))
    pd.testing.assert_frame_equal(dyn_ours, dyn_theirs[dyn_theirs["step"] < STEPS].reset_index(drop=True))
    model, state = checkpoints.load(layout.in_run(tmp_path / "rec", "checkpoints") / checkpoints.checkpoint_name(STEPS))
    assert not model.training and state["settings"] == resolved()  # rebuilds itself, as the train stage's do


def test_gradient_accumulation_counts_optimizer_steps_and_records_the_accumulated_gradient(trained, tmp_path):
    """Two micro-batches per step give the same sum in .grad as one batch (up to rounding)."""
    hand_loop(resolved(), tmp_path / "acc", accumulate=2)
    ours = pd.read_parquet(layout.in_run(tmp_path / "acc", "metrics"))
    theirs = pd.read_parquet(layout.in_run(trained, "metrics"))
    assert list(ours["step"]) == list(theirs["step"])
    np.testing.assert_allclose(ours["grad_norm"].iloc[:-1], theirs["grad_norm"].iloc[:-1], rtol=1e-4)
    np.testing.assert_allclose(ours["train_loss"], theirs["train_loss"], rtol=1e-4)


def test_a_grad_scalers_scaled_gradients_are_recorded_unscaled(trained, tmp_path):
    """AMP's GradScaler multiplies the loss (so .grad) by its scale, 2**10 here; the recorder divides."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    hand_loop(resolved(), tmp_path / "amp", scaler=scaler)
    ours = pd.read_parquet(layout.in_run(tmp_path / "amp", "metrics"))
    theirs = pd.read_parquet(layout.in_run(trained, "metrics"))
    np.testing.assert_allclose(ours["grad_norm"].iloc[:-1], theirs["grad_norm"].iloc[:-1], rtol=1e-4)
    dyn = pd.read_parquet(layout.in_run(tmp_path / "amp", "dynamics"))
    ref = pd.read_parquet(layout.in_run(trained, "dynamics"))
    np.testing.assert_allclose(dyn["grad_norm"], ref[ref["step"] < STEPS]["grad_norm"], rtol=1e-4)


def test_a_loop_that_crashed_resumes_to_the_same_run(trained, tmp_path):
    folder = tmp_path / "crash"
    hand_loop(resolved(), folder, stop_at=23)  # killed after the checkpoint at step 15, before finish
    assert not layout.in_run(folder, "metrics").exists()
    with pytest.raises(RecorderError, match="resume=True"):
        hand_loop(resolved(), folder)
    rec = hand_loop(resolved(), folder, resume=True)
    assert rec.finished
    for step in config.checkpoint_steps(resolved()["train"]):
        a, b = weights(trained, step), weights(folder, step)
        assert all(torch.equal(a[k], b[k]) for k in a), step
    ours = pd.read_parquet(layout.in_run(folder, "metrics")).drop(columns=["wall_s", "grad_norm"])
    theirs = pd.read_parquet(layout.in_run(trained, "metrics")).drop(columns=["wall_s", "grad_norm"])
    pd.testing.assert_frame_equal(ours, theirs)


def test_auto_logging_spaces_evaluations_by_their_cost(tmp_path, monkeypatch):
    """With the evaluation costing as much as 10 of the loop's steps (a slow clock inside it), a 2% budget
    asks for an evaluation every 500 steps or more: at 40 steps, only the first and the last."""
    import gradscope.recorder as recorder
    from gradscope import train

    real = train.evaluate

    def slow(*args, **kw):
        import time

        time.sleep(0.02)
        return real(*args, **kw)

    monkeypatch.setattr(train, "evaluate", slow)
    rec = hand_loop(resolved(), tmp_path / "auto", log_every="auto", dynamics_every="auto")
    steps = pd.read_parquet(layout.in_run(tmp_path / "auto", "metrics"))["step"].tolist()
    assert steps[0] == 0 and steps[-1] == STEPS and steps == sorted(set(steps))
    assert len(steps) <= 3 and rec.log_every >= 100 and str(rec.log_every)[0] in "125"
    dyn = pd.read_parquet(layout.in_run(tmp_path / "auto", "dynamics"))
    assert sorted(dyn["step"].unique()) == [0] and rec.dynamics_every >= recorder.DYNAMICS_MIN_EVERY


def test_optimizer_settings_are_read_off_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert optim_settings(torch.optim.AdamW(params, lr=0.003, weight_decay=0.5, betas=(0.8, 0.9)))["betas"] == [0.8, 0.9]
    sgd = optim_settings(torch.optim.SGD(params, lr=0.2, momentum=0.5, nesterov=True))
    assert (sgd["name"], sgd["lr"], sgd["momentum"], sgd["nesterov"]) == ("sgd", 0.2, 0.5, True)

    class Lion(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

    assert optim_settings(Lion(params, lr=1e-4)) == config.section("optim", {"name": "custom", "lr": 1e-4})


# ---- bad inputs: a clear error, and nothing of another run overwritten ----------------------------------
def test_a_folder_holding_another_run_is_refused_and_left_as_it_was(trained, tmp_path):
    hand_loop(resolved(), tmp_path / "a")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    with pytest.raises(RecorderError, match="holds another run"):
        hand_loop(resolved(optim={"name": "sgd", "lr": 0.05}), tmp_path / "a")
    with pytest.raises(RecorderError, match="finished recording"):
        hand_loop(resolved(), tmp_path / "a", resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    # a run the workflow trained (its config.yaml is the resolved config, not this recorder's)
    workflow_run = tmp_path / "results" / "runs" / "e" / "r"
    workflow_run.mkdir(parents=True)
    (workflow_run / "config.yaml").write_text("data: {generator: digits}\nmodel: {kind: mlp}\n")
    with pytest.raises(RecorderError, match="holds another run"):
        hand_loop(resolved(), workflow_run)
    assert [p.name for p in workflow_run.iterdir()] == ["config.yaml"]


def test_steps_that_go_backwards_or_skip_are_refused(tmp_path):
    settings = resolved()
    (x, y), _, spec = data.load(settings["data"])
    model = build_model(settings["model"], spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "r", model=model, optimizer=opt, model_settings=settings["model"], data=DATA, steps=10)
    model(x[:4]).sum().backward()
    rec.before_update(0)
    opt.step()
    rec.after_update(1)
    with pytest.raises(RecorderError, match=r"goes backwards.*expected before_update\(1\)"):
        rec.before_update(0)
    with pytest.raises(RecorderError, match="skips steps"):
        rec.after_update(3)
    with pytest.raises(RecorderError, match="steps=10"):
        rec.finish()


def test_a_model_the_settings_do_not_rebuild_is_refused_at_once(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(RecorderError, match="rebuild another model"):
        Recorder(tmp_path / "r", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 model_settings={"kind": "mlp"}, data=DATA, steps=10)
    assert not (tmp_path / "r" / "config.yaml").exists()
    with pytest.raises(RecorderError, match="cannot import it again"):
        Recorder(tmp_path / "r", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 model_factory=lambda **kw: model, data=DATA, steps=10)


def test_arrays_are_stored_with_the_run_and_read_back_as_its_dataset(tmp_path):
    rng = np.random.default_rng(0)
    arrays = ((rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)),
              (rng.standard_normal((10, 3)).astype(np.float32), rng.integers(0, 2, 10)))
    model = build_model({"kind": "mlp", "width": 4, "depth": 1}, InputSpec("dense", 3, 0, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "r", model=model, optimizer=opt, model_settings={"kind": "mlp", "width": 4, "depth": 1},
                   data=arrays, steps=2, checkpoints={"every": 1})
    for step in range(2):
        opt.zero_grad()
        per_example_loss(model(torch.from_numpy(arrays[0][0])), torch.from_numpy(arrays[0][1]), "cross_entropy").mean().backward()
        rec.before_update(step)
        opt.step()
        rec.after_update(step + 1)
    metrics = rec.finish()
    assert np.isfinite(metrics["train_loss"]).all() and list(metrics["step"]) == [0, 1, 2]
    settings = external.recorded_settings(tmp_path / "r")
    train, test, meta = data.generate(settings["data"])
    assert np.array_equal(np.stack(train["x"].to_numpy()), arrays[0][0]) and (meta["n_train"], meta["n_test"]) == (40, 10)
