"""The workflow's own numbers: the tables a finished run of tests/configs/tiny.yaml wrote agree with
the library called directly on the same checkpoint and data, and with independent references
(vmap per-example gradients, the exact Hessian), so a glue bug between rules and library (a
setting not passed on, cosines against the wrong mean gradient, the wrong curvature subset or
lr) fails here even where every library test passes."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gradscope import artifacts, checkpoints, data, examples, signals, train
from gradscope.config import train_slice
from gradscope.curvature import optimizer_update
from gradscope.losses import per_example_loss

# `done` (conftest.py): the finished run of tests/configs/tiny.yaml that tests/workflow/test_workflow.py also reads.

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

RUN = "results/runs/flips/seed~0"


def resolved(done, run=RUN) -> dict:
    return yaml.safe_load((done / run / "config.yaml").read_text())


def data_dir(done, run=RUN):
    [meta] = [p for p in done.glob("results/data/*/meta.json")
              if p.parent.name.startswith(resolved(done, run)["data"]["generator"])]
    return meta.parent


def checkpoint(done, step, run=RUN):
    model, state = checkpoints.load(done / run / "train" / "checkpoints" / checkpoints.checkpoint_name(step))
    return model, state


@pytest.mark.parametrize("run", [RUN, "results/runs/mod/wd~1.0_seed~0"])
def test_training_metrics_and_checkpoints_are_the_library_s(done, tmp_path, run):
    settings = train_slice(resolved(done, run))
    folder = data_dir(done, run)
    splits = data.load_split(folder, "train")[:2], data.load_split(folder, "test")[:2]
    from gradscope.models import InputSpec
    spec = InputSpec.from_dict(data.load_meta(folder)["input"])
    again = train.train(settings, *splits, spec, tmp_path / "again", "x")
    stored = artifacts.read_parquet(done / run / "train" / "metrics.parquet")
    pd.testing.assert_frame_equal(stored.drop(columns="wall_s"), again.drop(columns="wall_s"), check_dtype=False)
    last = checkpoints.checkpoint_name(settings["train"]["steps"])
    a = torch.load(done / run / "train" / "checkpoints" / last, weights_only=False)["model_state"]
    b = torch.load(tmp_path / "again" / "checkpoints" / last, weights_only=False)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if "wd~1.0" in run:  # the grid value reached the optimizer: AdamW's decoupled decay of 1.0
        assert settings["optim"]["weight_decay"] == 1.0 and settings["optim"]["name"] == "adamw"


@pytest.mark.parametrize("step", [15, 30])
def test_examples_table_matches_vmap_gradients_against_the_training_mean(done, step):
    table = pd.read_parquet(done / RUN / "examples" / f"step={step}")
    model, _ = checkpoint(done, step)
    folder = data_dir(done)
    x_tr, y_tr, df_tr = data.load_split(folder, "train")
    g_tr = examples.per_example_gradients(model, x_tr, y_tr)  # (n, n_params), vmap reference
    mean = g_tr.mean(0)  # the mean *training* gradient: test rows are measured against it too
    R = examples.random_projection(model, 8, seed=resolved(done)["examples"]["seed"])
    for split in ("train", "test"):
        x, y, df = (x_tr, y_tr, df_tr) if split == "train" else data.load_split(folder, "test")
        g = g_tr if split == "train" else examples.per_example_gradients(model, x, y)
        rows = table[table.split == split].set_index("example_id").loc[df["example_id"].to_numpy()]
        with torch.no_grad():
            loss = per_example_loss(model(x), y, "cross_entropy")
        np.testing.assert_allclose(rows["loss"], loss.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rows["grad_norm"], g.norm(dim=1).numpy(), rtol=1e-4, atol=1e-7)
        cos = (g @ mean) / (g.norm(dim=1) * mean.norm())
        np.testing.assert_allclose(rows["grad_cos_mean"], cos.numpy(), rtol=1e-4, atol=1e-5)
        proj = (g @ R).numpy()
        np.testing.assert_allclose(np.stack(rows["grad_proj"].to_numpy()), proj, rtol=1e-3,
                                   atol=1e-4 * np.abs(proj).max())
        assert (rows["label"].to_numpy() == y.numpy()).all()
        assert (rows["planted"].to_numpy() == df["planted"].to_numpy()).all()


def test_detections_and_per_example_table_are_the_detectors_on_the_workflow_s_examples(done):
    settings = resolved(done)["signals"]
    ex = pd.read_parquet(done / RUN / "examples")
    metrics = artifacts.read_parquet(done / RUN / "train" / "metrics.parquet")
    tr = signals.Trajectories.from_table(ex, lr=metrics.set_index("step")["lr"])
    want = signals.detect(tr, settings)
    got = pd.read_parquet(done / RUN / "signals" / "detections.parquet")
    key = ["detector", "step", "example_id"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True)[want.columns],
                                  want.sort_values(key).reset_index(drop=True), check_dtype=False)
    # and two of them by hand from the examples table: cos_rule and TracIn (lr 0.2 throughout)
    train_rows = ex[ex.split == "train"].sort_values(["step", "example_id"])
    cos = got[got.detector == "cos_rule"].sort_values(["step", "example_id"])
    np.testing.assert_allclose(cos["score"], -train_rows["grad_cos_mean"], rtol=1e-6)
    np.testing.assert_array_equal(cos["flagged"], train_rows["grad_cos_mean"] < settings["cos_rule"]["threshold"])
    tracin = got[got.detector == "tracin"].sort_values(["step", "example_id"])
    wide = train_rows.pivot(index="step", columns="example_id", values="grad_norm")
    np.testing.assert_allclose(tracin["score"], (0.2 * wide**2).cumsum().to_numpy().ravel(), rtol=1e-6)
    per_example = pd.read_parquet(done / RUN / "signals" / "per_example.parquet").set_index("example_id")
    cos_wide = train_rows.pivot(index="step", columns="example_id", values="grad_cos_mean")
    np.testing.assert_allclose(per_example["opposition"], -cos_wide.iloc[1:].mean(axis=0), rtol=1e-6)
    meta = data.load_meta(data_dir(done))
    assert sorted(per_example.index[per_example["planted"]]) == sorted(meta["planted"]["train_ids"])


def exact_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    m = copy.deepcopy(model).double()

    def f(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        return per_example_loss(torch.func.functional_call(m, params, (x.double(),)), y, "cross_entropy").mean()

    return torch.func.hessian(f)(theta)


@pytest.mark.parametrize("step", [0, 30])
def test_curvature_table_matches_the_exact_hessian_of_the_seeded_subset(done, step):
    cfg = resolved(done)
    settings = cfg["curvature"]
    row = pd.read_parquet(done / RUN / "curvature" / f"step={step}" / "part-0.parquet").iloc[0]
    model, state = checkpoint(done, step)
    x, y, _ = data.load_split(data_dir(done), "train")
    # the documented subset: subset_size training examples drawn by a generator seeded with curvature.seed
    subset = np.sort(np.random.default_rng(settings["seed"]).permutation(len(y))[: settings["subset_size"]])
    meta = artifacts.read_metadata(done / RUN / "curvature" / f"step={step}" / "part-0.parquet")
    assert meta["gradscope.config"]["subset_ids"] == subset.tolist()
    H = exact_hessian(model, x[subset], y[subset])
    eig = torch.linalg.eigvalsh(H).flip(0).numpy()
    # Lanczos certifies each Ritz value to within its stored relative residual of an eigenvalue
    assert abs(row["sharpness"] - eig[0]) <= row["lanczos_residual"] * abs(row["sharpness"]) + 1e-5 * abs(eig[0])
    assert row["sharpness"] == pytest.approx(eig[0], rel=0.05)
    trace = float(H.trace())
    assert abs(row["hessian_trace"] - trace) <= 4 * row["hessian_trace_stderr"] + 1e-6
    g = examples.per_example_gradients(model, x[subset], y[subset]).double()
    assert row["fisher_trace"] == pytest.approx(float(g.pow(2).sum(1).mean()), rel=1e-4)
    # update sharpness: the run's own next SGD step (momentum from the checkpoint, the whole training set)
    u = optimizer_update(model, state["optimizer_state"], cfg["optim"], x, y, step=step, lr=state["lr"]).double()
    assert row["update_sharpness"] == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-4)
    assert row["sharpness_threshold"] == pytest.approx(2 * (1 + 0.5) / 0.2)
    assert row["n_examples"] == 64 and row["n_params"] == H.shape[0]
