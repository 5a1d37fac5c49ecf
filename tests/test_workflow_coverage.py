"""One Snakemake run of tests/configs/coverage.yaml: the transformer, the CNN, the opposing_features
and digits data, MSE, minibatches, early stopping, the plot_density rule, and non-default values of
many options, each checked for its effect in the artifacts (tests/test_option_coverage.py records
which test covers which option)."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from gradscope import artifacts, checkpoints, data, examples, signals, train
from gradscope.config import train_slice
from gradscope.curvature import gauss_newton_trace, layer_top_eigenvalues
from gradscope.models import InputSpec
from test_workflow import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
COVERAGE = REPO / "tests" / "configs" / "coverage.yaml"


@pytest.fixture(scope="module")
def cov(tmp_path_factory):
    cwd = copy_workflow(tmp_path_factory.mktemp("cov"), yaml.safe_load(COVERAGE.read_text()))
    snakemake(cwd, "--cores", "2")
    return cwd


def run_dir(cov, exp):
    return cov / "results" / "runs" / exp / "seed~0"


def resolved(cov, exp):
    return yaml.safe_load((run_dir(cov, exp) / "config.yaml").read_text())


def data_dir(cov, exp):
    gen = resolved(cov, exp)["data"]["generator"]
    [meta] = cov.glob(f"results/data/{gen}-*/meta.json")
    return meta.parent


def load(cov, exp, step):
    return checkpoints.load(run_dir(cov, exp) / "train" / "checkpoints" / checkpoints.checkpoint_name(step))


def curvature_row(cov, exp, step):
    return pd.read_parquet(run_dir(cov, exp) / "curvature" / f"step={step}" / "part-0.parquet").iloc[0]


def test_every_run_finishes_with_its_report_and_figures(cov):
    for exp in ("tok", "img", "dig", "res"):
        for rel in ("report.md", "figures/training.png", "figures/curvature.png", "figures/gradient_pca.gif",
                    "signals/detections.parquet"):
            assert (run_dir(cov, exp) / rel).is_file(), (exp, rel)
    # plot_density runs for the run with curvature.density only, and the report shows its figure
    assert (run_dir(cov, "img") / "figures" / "density.png").is_file()
    assert not (run_dir(cov, "tok") / "figures" / "density.png").exists()
    assert "density.png" in (run_dir(cov, "img") / "report.md").read_text()


def test_transformer_with_two_layers_and_layer_norm_on_modular_sub(cov):
    model, state = load(cov, "tok", 6)
    assert type(model).__name__ == "Transformer" and len(model.blocks) == 2
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) >= 4  # two per block
    x, y, _ = data.load_split(data_dir(cov, "tok"), "train")
    a, b = x[:, 0], x[:, 1]
    assert ((a - b) % 5 == y).all()  # op sub, p 5
    assert model.embed.weight.shape[1] == 8  # d_model


def test_adam_with_its_betas_and_eps_and_minibatches_of_8(cov, tmp_path):
    model, state = load(cov, "tok", 6)
    group = state["optimizer_state"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["eps"] == 1e-6
    assert not group.get("decoupled_weight_decay", False)  # Adam, not AdamW
    # minibatches: training again with the same settings gives the same metrics, full batch does not
    settings = train_slice(resolved(cov, "tok"))
    folder = data_dir(cov, "tok")
    splits = data.load_split(folder, "train")[:2], data.load_split(folder, "test")[:2]
    spec = InputSpec.from_dict(data.load_meta(folder)["input"])
    stored = artifacts.read_parquet(run_dir(cov, "tok") / "train" / "metrics.parquet").drop(columns="wall_s")
    same = train.train(settings, *splits, spec, tmp_path / "same", "x").drop(columns="wall_s")
    pd.testing.assert_frame_equal(stored, same, check_dtype=False)
    settings["train"]["batch_size"] = None
    full = train.train(settings, *splits, spec, tmp_path / "full", "x").drop(columns="wall_s")
    assert not np.allclose(full["train_loss"].iloc[1:], stored["train_loss"].iloc[1:])


def test_mse_loss_is_logged_and_measured(cov):
    model, _ = load(cov, "tok", 6)
    x, y, _ = data.load_split(data_dir(cov, "tok"), "train")
    metrics = artifacts.read_parquet(run_dir(cov, "tok") / "train" / "metrics.parquet")
    with torch.no_grad():
        mse = 0.5 * (model(x) - torch.nn.functional.one_hot(y, 5).float()).pow(2).sum(1).mean()
    assert metrics["train_loss"].iloc[-1] == pytest.approx(float(mse), rel=1e-5)
    table = pd.read_parquet(run_dir(cov, "tok") / "examples" / "step=6")
    train_rows = table[table.split == "train"].sort_values("example_id")
    with torch.no_grad():
        want = 0.5 * (model(x) - torch.nn.functional.one_hot(y, 5).float()).pow(2).sum(1)
    np.testing.assert_allclose(train_rows["loss"], want.numpy(), rtol=1e-5)
    dyn = pd.read_parquet(run_dir(cov, "tok") / "train" / "dynamics.parquet")
    assert sorted(set(dyn["step"])) == [0, 3, 6]  # dynamics_every 3


def test_projection_in_float16_with_its_own_seed(cov):
    model, _ = load(cov, "tok", 3)
    path = run_dir(cov, "tok") / "examples" / "step=3" / "part-0.parquet"
    assert str(pq.read_schema(path).field("grad_proj").type.value_type) == "halffloat"
    table = pd.read_parquet(path)
    x, y, df = data.load_split(data_dir(cov, "tok"), "train")
    mean = examples.mean_gradient(model, x, y, loss="mse")
    stats = examples.per_example_stats(model, x, y, loss="mse", proj_dim=4, seed=3, mean_grad=mean)
    other = examples.per_example_stats(model, x, y, loss="mse", proj_dim=4, seed=0, mean_grad=mean)
    got = np.stack(table[table.split == "train"].set_index("example_id").loc[df["example_id"]]["grad_proj"]).astype(float)
    scale = np.abs(stats["grad_proj"]).max()
    np.testing.assert_allclose(got, stats["grad_proj"], atol=2e-3 * scale, rtol=2e-3)
    assert np.abs(got - other["grad_proj"]).max() > 0.05 * scale  # seed 0 would give another sketch


def test_detector_subset_and_thresholds(cov):
    det = pd.read_parquet(run_dir(cov, "tok") / "signals" / "detections.parquet")
    assert set(det["detector"]) == {"cos_rule", "el2n", "tracin", "aum", "loss_increasing", "loss_decreasing",
                                    "loss_volatile"}
    ex = pd.read_parquet(run_dir(cov, "tok") / "examples")
    tr = signals.Trajectories.from_table(ex)
    n = len(tr.example_ids)
    for name, column in (("cos_rule", "score"),):
        d = det[det.detector == name].sort_values(["step", "example_id"])
        np.testing.assert_array_equal(d["flagged"], -d[column] < 0.2)  # threshold 0.2, not -0.1
    for name, fraction in (("el2n", 0.3), ("tracin", 0.5)):
        counts = det[det.detector == name].groupby("step")["flagged"].sum()
        assert (counts == math.ceil(fraction * n)).all(), (name, counts.tolist())
    aum = det[det.detector == "aum"]
    np.testing.assert_array_equal(aum["flagged"], -aum["score"] < 0.5)
    slope = det[det.detector == "loss_increasing"]
    assert set(slope["step"]) == {3, 6}  # window 2: a slope from the second checkpoint on
    np.testing.assert_array_equal(slope["flagged"], slope["score"] > 0.01)
    vol = det[det.detector == "loss_volatile"]
    np.testing.assert_array_equal(vol["flagged"], vol["score"] > 0.0)


def test_curvature_options_turned_off_and_top_k_without_tolerance(cov):
    for step in (0, 3, 6):
        row = curvature_row(cov, "tok", step)
        assert len(row["top_eigenvalues"]) == 2  # top_k 2
        assert row["lanczos_steps"] == 30  # lanczos_tol 0 runs every one of lanczos_iters (1e-3 stops at about 14)
        assert row["hutchinson_samples"] == 4  # trace_tol 10: the first samples' estimate suffices... up to max 4
        for off in ("fisher_trace", "input_jacobian_norm", "update_sharpness", "gauss_newton_trace"):
            assert math.isnan(row[off]), off
    img = curvature_row(cov, "img", 0)
    assert all(np.isfinite(img[c]) for c in ("fisher_trace", "input_jacobian_norm", "update_sharpness"))


def test_density_per_layer_and_gauss_newton_samples(cov):
    row = curvature_row(cov, "img", 4)
    model, _ = load(cov, "img", 4)
    assert len(row["density"]) == len(row["density_grid"]) > 0 and np.all(np.asarray(row["density"]) >= 0)
    x, y, _ = data.load_split(data_dir(cov, "img"), "train")
    meta = artifacts.read_metadata(run_dir(cov, "img") / "curvature" / "step=4" / "part-0.parquet")
    subset = meta["gradscope.config"]["subset_ids"]
    layers = dict(row["layer_sharpness"])  # a Parquet map reads back as (key, value) pairs
    want = layer_top_eigenvalues(model, x[subset], y[subset], seed=0)
    assert sorted(layers) == sorted(want) and len(want) == len(list(model.parameters()))
    for name, value in want.items():
        assert layers[name] == pytest.approx(value, rel=1e-6), name
    # curvature.ggn: the top GGN eigenvalue and density of the same subset, by the same Lanczos on the GGN
    # operator, which is positive semi-definite (its density has no mass below zero); off for tok
    from gradscope.curvature import lanczos_top
    from gradscope.operators import GGNOperator

    top = lanczos_top(GGNOperator(model, x[subset], y[subset]), k=1, iters=4, tol=1e-3, seed=0)
    assert row["ggn_top_eigenvalue"] == pytest.approx(float(top.eigenvalues[0]), rel=1e-6) and row["ggn_mvp_count"] > 0
    assert len(row["ggn_density"]) == len(row["ggn_density_grid"]) > 0
    grid, dens = np.asarray(row["ggn_density_grid"]), np.asarray(row["ggn_density"])
    assert dens[grid < -0.05 * grid.max()].sum() < 1e-3 * dens.sum()
    assert math.isnan(curvature_row(cov, "tok", 3)["ggn_top_eigenvalue"])
    gn = gauss_newton_trace(model, x[subset], y[subset], samples=2, seed=0)
    assert row["gauss_newton_trace"] == pytest.approx(gn["trace"], rel=1e-6)
    one = gauss_newton_trace(model, x[subset], y[subset], samples=1, seed=0)
    assert one["trace"] != pytest.approx(gn["trace"], rel=1e-6)


def test_cnn_with_gelu_rmsprop_alpha_and_early_stopping(cov):
    model, state = load(cov, "img", 4)
    assert any(isinstance(m, nn.Conv2d) and m.out_channels == 3 for m in model.modules())
    assert any(isinstance(m, nn.GELU) for m in model.modules()) and not any(isinstance(m, nn.ReLU) for m in model.modules())
    group = state["optimizer_state"]["param_groups"][0]
    assert group["alpha"] == 0.9 and group["eps"] == 1e-3 and "square_avg" in state["optimizer_state"]["state"][0]
    manifest = artifacts.read_json(run_dir(cov, "img") / "train" / "manifest.json")
    # train_acc must rise by 0.5 at every evaluation: it cannot, so training stops at the second one
    assert manifest["stopped_early_at"] == 1
    assert state["step"] == 1 and list(artifacts.read_parquet(run_dir(cov, "img") / "train" / "metrics.parquet")["step"]) == [0, 1]


def test_opposing_features_and_digits_planted_truth_reach_the_signals(cov):
    meta = data.load_meta(data_dir(cov, "img"))
    assert set(meta["planted"]["groups"]) and sum(len(v) for v in meta["planted"]["groups"].values()) == 8  # 0.2 x 40
    groups = pd.read_parquet(run_dir(cov, "img") / "signals" / "groups.parquet")
    assert len(groups) == 6 and set(groups["group"]) <= {0, 1}  # top_k 6 in n_groups 2
    per_example = pd.read_parquet(run_dir(cov, "img") / "signals" / "per_example.parquet")
    assert per_example["planted_group"].ne("").sum() == 8
    dmeta = data.load_meta(data_dir(cov, "dig"))
    n_train = len(data.load_split(data_dir(cov, "dig"), "train")[1])
    assert n_train == round(0.05 * 1797) or abs(n_train - 0.05 * 1797) < 1
    assert len(dmeta["planted"]["train_ids"]) == round(0.2 * n_train)
    model, _ = load(cov, "dig", 3)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    summary = artifacts.read_json(run_dir(cov, "dig") / "signals" / "summary.json")
    assert summary["generalization"]["train_threshold"] == 0.2 and summary["generalization"]["test_threshold"] == 0.2
    ev = pd.read_parquet(run_dir(cov, "dig") / "signals" / "evaluation.parquet")
    assert ev["auroc"].notna().all()  # scored against the planted label noise


def test_hadamard_projection_and_influence_options(cov):
    # examples.projection: hadamard reaches the engine (the stored sketch is the library's with that
    # kind, not the Gaussian one); influence: 4 of the 10 test examples (seed 1), top 3 of each kind,
    # one of them in the report; influence.enabled false: no influence job, no report section.
    model, _ = load(cov, "img", 0)
    path = run_dir(cov, "img") / "examples" / "step=0" / "part-0.parquet"
    assert artifacts.read_metadata(path)["gradscope.config"]["projection"] == "hadamard"
    table = pd.read_parquet(path)
    x, y, df = data.load_split(data_dir(cov, "img"), "train")
    mean = examples.mean_gradient(model, x, y)
    want = examples.per_example_stats(model, x, y, proj_dim=4, mean_grad=mean, projection="hadamard")["grad_proj"]
    gaussian = examples.per_example_stats(model, x, y, proj_dim=4, mean_grad=mean, projection="gaussian")["grad_proj"]
    got = np.stack(table[table.split == "train"].set_index("example_id").loc[df["example_id"]]["grad_proj"])
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=1e-4)
    assert np.abs(got - gaussian).max() > 0.05 * scale
    top = pd.read_parquet(run_dir(cov, "img") / "influence" / "top.parquet")
    assert top["test_id"].nunique() == 4 and len(top) == 4 * 2 * 3 and top["rank"].max() == 3
    rng = np.random.default_rng(1)
    assert sorted(top["test_id"].unique()) == sorted(np.sort(rng.choice(10, size=4, replace=False)).tolist())
    text = (run_dir(cov, "img") / "report.md").read_text()
    assert text.count("**Test example") == 1
    assert not (run_dir(cov, "dig") / "influence").exists()
    assert "Which training examples shaped" not in (run_dir(cov, "dig") / "report.md").read_text()



def test_resnet_with_batchnorm_on_mnist1d_through_the_workflow(cov):
    """The ResNet kind and the MNIST-1D source through every stage: the examples table at the last
    checkpoint is each example's own loss and gradient norm (a loop of single-example backward
    passes in float64, the model in eval mode as the workflow measures it, BatchNorm on its
    running statistics)."""
    model, state = load(cov, "res", 3)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) and any(isinstance(m, nn.Conv1d) for m in model.modules())
    assert not model.training and state["step"] == 3
    x, y, df = data.load_split(data_dir(cov, "res"), "train")
    assert tuple(x.shape) == (48, 1, 40) and data.load_meta(data_dir(cov, "res"))["generator"]["generator"] == "mnist1d"
    table = artifacts.read_partitions([run_dir(cov, "res") / "examples"])
    rows = table[(table["step"] == 3) & (table["split"] == "train")].set_index("example_id").loc[df["example_id"]]
    ref = model.double()
    params = [p for p in ref.parameters() if p.requires_grad]
    for i in range(0, 48, 6):
        loss = nn.functional.cross_entropy(ref(x[i:i + 1].double()), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert rows["loss"].iloc[i] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
        assert rows["grad_norm"].iloc[i] == pytest.approx(norm, rel=1e-3)
    assert (run_dir(cov, "res") / "report.md").read_text().count("res/seed~0") >= 1
