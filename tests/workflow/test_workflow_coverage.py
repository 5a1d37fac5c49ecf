"""One Snakemake run of tests/configs/coverage.yaml: the transformer, the CNN, the ResNet, VGG and
a `python` model, the opposing_features, digits and MNIST-1D data, the torchvision, files and
`python` sources (their files written here first), MSE, minibatches, early stopping, the
plot_density rule, and non-default values of many options, each checked for its effect in the
artifacts (tests/config/test_option_coverage.py records which test covers which option)."""

import copy
import importlib
import importlib.util
import math
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from gradscope import artifacts, checkpoints, data, examples, signals, train
from gradscope.config import train_slice
from gradscope.curvature import gauss_newton_trace, layer_top_eigenvalues
from gradscope.models import InputSpec
from support.sources import write_mnist
from support.workflow import REPO, copy_workflow, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]
COVERAGE = REPO / "tests" / "configs" / "coverage.yaml"


# ---- the files the sources of the user's data read, written into the workflow's folder ----------
def vision_images():
    """(train, test) MNIST-format images (n, 28, 28) uint8 and labels for vision/MNIST/raw. The
    test images are darker, so statistics of both splits would differ from the training ones."""
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, size=(16, 28, 28)), rng.integers(0, 10, size=16)
    test = rng.integers(0, 128, size=(6, 28, 28)), rng.integers(0, 10, size=6)
    return train, test


def table_columns() -> dict[str, np.ndarray]:
    """The columns of arrays/table.parquet: 30 rows of 16 numbers, a label, the split, a name;
    the test rows shifted by 5, so statistics of both splits would differ from the training ones."""
    rng = np.random.default_rng(8)
    part = np.where(np.arange(30) % 3 == 2, "test", "train")
    pixels = rng.normal(2.0, 3.0, size=(30, 16)).astype(np.float32) + 5.0 * (part == "test")[:, None]
    return {"pixels": pixels.astype(np.float32), "target": rng.integers(0, 3, size=30), "part": part,
            "name": np.array([f"row{i:02d}" for i in range(30)])}


def write_user_files(cwd):
    write_mnist(cwd / "vision", *vision_images())
    cols = table_columns()
    (cwd / "arrays").mkdir()
    flat = pa.FixedSizeListArray.from_arrays(pa.array(cols["pixels"].reshape(-1)), 16)
    pq.write_table(pa.table({"pixels": flat, "target": cols["target"], "part": cols["part"], "name": cols["name"]}),
                   cwd / "arrays" / "table.parquet")


@pytest.fixture(scope="module")
def cov(tmp_path_factory):
    config = yaml.safe_load(COVERAGE.read_text())
    if importlib.util.find_spec("torchvision") is None:  # the `vision` extra; CI installs it ('.[test]')
        del config["experiments"]["vis"]
    cwd = copy_workflow(tmp_path_factory.mktemp("cov"), config)
    write_user_files(cwd)
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
    for exp in ("tok", "img", "dig", "res", "vis", "own", "arr"):
        if exp == "vis" and not run_dir(cov, exp).exists():
            continue  # torchvision is not installed
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
    for block in model.blocks:  # n_heads 2 of d_head 4, d_mlp 16
        assert (block.attn.n_heads, block.attn.d_head) == (2, 4) and block.attn.W_Q.weight.shape == (8, 8)
        assert [m.out_features for m in block.mlp if isinstance(m, nn.Linear)] == [16, 8]


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
    # cartography.confidence_threshold 0.9: flagged where the mean p(label) (1 - score) is below 0.9, not 0.5
    carto = pd.read_parquet(run_dir(cov, "img") / "signals" / "detections.parquet").query("detector == 'cartography'")
    np.testing.assert_array_equal(carto["flagged"], 1 - carto["score"] < 0.9)
    dmeta = data.load_meta(data_dir(cov, "dig"))
    n_train = len(data.load_split(data_dir(cov, "dig"), "train")[1])
    assert n_train == round(0.05 * 1797) or abs(n_train - 0.05 * 1797) < 1
    assert len(dmeta["planted"]["train_ids"]) == round(0.2 * n_train)
    model, _ = load(cov, "dig", 3)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    summary = artifacts.read_json(run_dir(cov, "dig") / "signals" / "summary.json")
    gen = summary["generalization"]
    assert gen["train_threshold"] == 0.05 and gen["test_threshold"] == 0.05
    # the events follow the logged accuracies at those thresholds (brute force over the metrics rows)
    metrics = pd.read_parquet(run_dir(cov, "dig") / "train" / "metrics.parquet").sort_values("step")
    fit = next((r.step for r in metrics.itertuples() if r.train_acc >= 0.05), math.nan)
    got = next((r.step for r in metrics.itertuples() if r.step >= fit and r.test_acc >= 0.05), math.nan)
    for key, want in (("step_memorized", fit), ("step_generalized", got)):
        assert gen[key] == want or (math.isnan(gen[key]) and math.isnan(want)), (key, gen[key], want)
    # and the thresholds matter here: both events happen, while the default 0.99 is never reached in 3 steps
    assert not math.isnan(fit) and not math.isnan(got) and metrics["train_acc"].max() < 0.99
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
    assert len(data.load_split(data_dir(cov, "res"), "test")[1]) == 16  # subsample_test
    assert [len(stage) for stage in model.stages] == [1, 1]  # blocks [1, 1]: two stages of one BasicBlock
    assert [stage[0].conv1.out_channels for stage in model.stages] == [4, 8]  # base_width 4, doubled per stage
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


# ---- VGG, the python model kind, and the sources of the user's data (torchvision, python, files) ----
def train_rows(cov, exp, step, df):
    """The run's examples table at `step`, its training rows in the order of the dataset table `df`."""
    table = artifacts.read_partitions([run_dir(cov, exp) / "examples"])
    return table[(table["step"] == step) & (table["split"] == "train")].set_index("example_id").loc[df["example_id"]]


def assert_single_example_stats(model, x, y, rows, picks):
    """Each picked row is that example's own loss and gradient norm over the trainable parameters:
    single-example backward passes in float64, the model in eval mode (as the workflow measures)."""
    ref = model.double().eval()
    params = [p for p in ref.parameters() if p.requires_grad]
    for i in picks:
        loss = nn.functional.cross_entropy(ref(x[i:i + 1].double()), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert rows["loss"].iloc[i] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6), i
        assert rows["grad_norm"].iloc[i] == pytest.approx(norm, rel=1e-3), i


def assert_library_gives_the_same_dataset(cov, exp, path_key=None):
    """The dataset the workflow's generate_data wrote is the one the library's loader gives for the
    same files and settings (the relative path `path_key` made absolute): tables and meta alike."""
    settings = resolved(cov, exp)["data"]
    if path_key is not None:
        block = settings[settings["generator"]]
        block[path_key] = str(cov / block[path_key])
    lib_train, lib_test, lib_meta = data.generate(settings)
    folder = data_dir(cov, exp)
    for split, lib in (("train", lib_train), ("test", lib_test)):
        stored = artifacts.read_parquet(data.dataset_files(folder)[split])
        assert set(stored.columns) == set(lib.columns), split
        np.testing.assert_array_equal(np.stack(stored["x"]), np.stack(lib["x"]))
        for column in lib.columns.drop("x"):
            np.testing.assert_array_equal(stored[column].to_numpy(), lib[column].to_numpy(), err_msg=column)
    stored_meta = data.load_meta(folder)
    for key in ("input", "planted", "standardize", "n_train", "n_test"):
        assert stored_meta[key] == lib_meta[key], key


def test_vgg_with_group_norm_on_torchvision_mnist_files_through_the_workflow(cov):
    """data.torchvision (MNIST idx files in vision/, a root relative to the working directory, no
    download, 4 of the 6 test images drawn with seed 5) with its default per-channel standardization,
    fitted on the training images; VGG-11
    at base_width 4 with GroupNorm (2 groups) and tanh; the examples table is each example's own."""
    if not run_dir(cov, "vis").exists():
        pytest.skip("torchvision is not installed (pip install -e '.[vision]')")
    model, state = load(cov, "vis", 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert type(model).__name__ == "VGG" and state["step"] == 3
    assert [c.out_channels for c in convs] == [4, 8, 16, 16, 32, 32, 32, 32]  # VGG-11's 64 ... 512 scaled by 4/64
    assert convs[0].in_channels == 1 and model.head.out_features == 10  # MNIST: one channel, its 10 classes
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 8 and all(isinstance(m, nn.GroupNorm) and m.num_groups == 2 for m in norms)
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 8
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    (images, labels), (test_images, test_labels) = vision_images()
    folder = data_dir(cov, "vis")
    x, y, df = data.load_split(folder, "train")
    xt, yt, dft = data.load_split(folder, "test")
    # subsample_test 4 of the 6 test images, drawn from the test stream of seed 5, kept in source order
    kept = np.sort(np.random.default_rng(np.random.SeedSequence(5).spawn(3)[1]).choice(6, size=4, replace=False))
    np.testing.assert_array_equal(dft["source_id"], kept)
    test_images, test_labels = test_images[kept], test_labels[kept]
    assert tuple(x.shape) == (16, 1, 28, 28) and tuple(xt.shape) == (4, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal(yt.numpy(), test_labels)
    pixels = images / 255.0  # torchvision's to_tensor
    mean, std = pixels.mean(), pixels.std()  # the training images' only channel
    meta = data.load_meta(folder)
    assert meta["standardize"]["over"] == "channel"
    assert meta["standardize"]["mean"] == [pytest.approx(mean)] and meta["standardize"]["std"] == [pytest.approx(std)]
    np.testing.assert_allclose(x.numpy()[:, 0], (pixels - mean) / std, atol=1e-5)
    np.testing.assert_allclose(xt.numpy()[:, 0], (test_images / 255.0 - mean) / std, atol=1e-5)  # training statistics
    assert_library_gives_the_same_dataset(cov, "vis", "root")
    assert_single_example_stats(model, x, y, train_rows(cov, "vis", 3, df), range(0, 16, 5))


def test_python_model_and_python_data_from_user_code_through_the_workflow(cov, monkeypatch):
    """model.kind python and data.generator python, both from user_code/ (copied with the workflow):
    the checkpoint records the factory and its kwargs and rebuilds the factory's model; the frozen
    stem stays at its init and is left out of the examples table; the data are the factory's,
    with exactly round(0.25 * 24) training labels flipped, which the signals are scored against."""
    monkeypatch.chdir(cov)  # checkpoints import the factory from the working directory, as the jobs did
    monkeypatch.setattr(sys, "path", list(sys.path))  # what factories.resolve adds is undone after the test
    kwargs = {"width": 4, "blocks": 2, "groups": 2, "freeze_stem": True}
    model, state = load(cov, "own", 3)
    assert state["settings"]["model"]["factory"] == "user_code.my_model:small_convnet"
    assert state["settings"]["model"]["kwargs"] == kwargs
    reference = importlib.import_module("user_code.my_model").small_convnet(input_shape=(1, 16), n_classes=3, **kwargs)
    assert [type(m) for m in model] == [type(m) for m in reference]
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert isinstance(model[2], nn.Conv1d) and not any(p.requires_grad for p in model[2].parameters())
    first, _ = load(cov, "own", 0)
    torch.testing.assert_close(first[2].weight, model[2].weight)  # frozen: training left it alone
    assert not torch.allclose(first[-1].weight, model[-1].weight)  # the read-out trained
    (xw, yw), (xtw, ytw) = importlib.import_module("user_code.my_data").noisy_waves(
        n_train=24, n_test=8, length=16, n_classes=3, seed=1)
    folder = data_dir(cov, "own")
    x, y, df = data.load_split(folder, "train")
    xt, yt, _ = data.load_split(folder, "test")
    np.testing.assert_array_equal(x.numpy(), xw)
    np.testing.assert_array_equal(xt.numpy(), xtw)
    np.testing.assert_array_equal(df["clean_label"], yw)
    np.testing.assert_array_equal(yt.numpy(), ytw)
    flipped = (df["label"] != df["clean_label"]).to_numpy()
    assert flipped.sum() == 6 and (flipped == df["planted"]).all() and (y.numpy() == df["label"]).all()
    assert data.load_meta(folder)["planted"]["train_ids"] == df.loc[flipped, "example_id"].tolist()
    assert_library_gives_the_same_dataset(cov, "own")
    meta = artifacts.read_metadata(run_dir(cov, "own") / "examples" / "step=3" / "part-0.parquet")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert meta["gradscope.config"]["layer_names"] == trainable and "2.weight" not in trainable
    rows = train_rows(cov, "own", 3, df)
    assert_single_example_stats(model, x, y, rows, range(0, 24, 5))
    ev = pd.read_parquet(run_dir(cov, "own") / "signals" / "evaluation.parquet")
    assert len(ev) and ev["auroc"].notna().all()  # scored against the flipped labels


def test_files_source_reads_one_parquet_file_with_split_and_id_columns(cov):
    """data.files: one Parquet file (a path relative to the working directory) whose `part` column
    splits it and whose `name` column names each row; flat rows reshaped to [1, 4, 4];
    standardize feature with statistics of the training rows only. The same run sets curvature.seed
    and curvature.eigenvectors."""
    cols = table_columns()
    is_train, is_test = cols["part"] == "train", cols["part"] == "test"
    folder = data_dir(cov, "arr")
    x, y, df = data.load_split(folder, "train")
    xt, yt, dft = data.load_split(folder, "test")
    assert tuple(x.shape) == (20, 1, 4, 4) and tuple(xt.shape) == (10, 1, 4, 4)
    assert list(df["source_id"]) == list(cols["name"][is_train])
    assert list(dft["source_id"]) == list(cols["name"][is_test])
    np.testing.assert_array_equal(y.numpy(), cols["target"][is_train])
    np.testing.assert_array_equal(yt.numpy(), cols["target"][is_test])
    raw = cols["pixels"].astype(np.float64)
    mean, std = raw[is_train].mean(axis=0), raw[is_train].std(axis=0)
    np.testing.assert_allclose(x.reshape(20, 16).numpy(), (raw[is_train] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(xt.reshape(10, 16).numpy(), (raw[is_test] - mean) / std, atol=1e-5)
    assert_library_gives_the_same_dataset(cov, "arr", "train")
    model, _ = load(cov, "arr", 3)
    assert model.body[0].in_features == 16
    # curvature.seed 3: the documented subset of subset_size 8; curvature.eigenvectors: the saved top
    # eigenvector is a unit vector whose Rayleigh quotient on that subset's Hessian is the sharpness
    curv = run_dir(cov, "arr") / "curvature" / "step=3"
    subset = np.sort(np.random.default_rng(3).permutation(20)[:8])
    assert artifacts.read_metadata(curv / "part-0.parquet")["gradscope.config"]["subset_ids"] == subset.tolist()
    assert subset.tolist() != np.sort(np.random.default_rng(0).permutation(20)[:8]).tolist()  # not seed 0's
    vectors = np.load(curv / "eigenvectors.npy")
    params = list(model.parameters())
    assert vectors.shape == (1, sum(p.numel() for p in params))
    v = torch.from_numpy(vectors[0]).double()
    ref = copy.deepcopy(model).double()
    params = list(ref.parameters())
    loss = nn.functional.cross_entropy(ref(x[subset].double()), y[subset])
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    hv = torch.cat([h.reshape(-1) for h in torch.autograd.grad(grad @ v, params)])
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(v @ hv) == pytest.approx(curvature_row(cov, "arr", 3)["sharpness"], rel=1e-3)
    assert_single_example_stats(model, x, y, train_rows(cov, "arr", 3, df), range(0, 20, 4))


def test_edge_of_stability_is_assessed_in_the_run_report_for_gradient_descent_only(cov):
    # The tok run trains with Adam: its report has no edge_* figures and says why; the dig run (SGD) has them.
    adam = (run_dir(cov, "tok") / "report.md").read_text()
    sgd = (run_dir(cov, "dig") / "report.md").read_text()
    assert "| edge_at_edge |" not in adam and "not assessed, as this run trains with adam" in adam
    assert "| edge_at_edge |" in sgd and "not assessed" not in sgd


def test_dashboard_draws_the_hessian_and_gauss_newton_densities(cov, browser):  # noqa: F811
    # img has curvature.density and curvature.ggn: its dashboard's density figure draws both spectra
    # of the chosen checkpoint, as stored in its curvature table.
    from support.browser import console_errors, open_page

    open_page(browser, cov / "results" / "sweeps" / "img" / "dashboard.html")
    browser.execute_script("gradscope.show('curvature')")
    step = browser.execute_script("return document.getElementById('gs-density-step').value")
    drawn = browser.execute_script("""
        const el = document.getElementById('fig-density');
        return el.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}));""")
    assert [t["name"] for t in drawn] == [f"Hessian, step {step}", f"Gauss-Newton, step {step}"]
    row = curvature_row(cov, "img", int(step))
    for trace, key in zip(drawn, ("density", "ggn_density")):
        np.testing.assert_allclose(trace["x"], row[f"{key}_grid"], rtol=1e-5)  # the page keeps 6 digits
        np.testing.assert_allclose(trace["y"], row[key], rtol=1e-5, atol=1e-12)
    assert not np.allclose(drawn[0]["y"], drawn[1]["y"])  # two different spectra
    assert console_errors(browser) == []
