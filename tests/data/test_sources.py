"""The labelled data sources (mnist1d, torchvision, files, python) on tiny files in their real formats."""

import inspect
import random
import sys
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gradscope import data, factories
from gradscope.config import ConfigError, expand_runs, load_config, load_schema
from support.sources import arrays, make, md5, rows, settings, write_and_load, write_cifar10, write_mnist


def test_each_source_takes_exactly_its_schema_settings():
    schema = load_schema()["$defs"]
    for name, function in {"mnist1d": data.generate_mnist1d, **data.SOURCES}.items():
        assert set(schema[name]["properties"]) == set(inspect.signature(function).parameters), name


# ---- mnist1d --------------------------------------------------------------------------------
def test_mnist1d_is_the_packages_dataset_built_offline_without_touching_global_rngs(offline):
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate()
    train, test, meta = make("mnist1d", num_samples=200, seed=42)
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]
    args = get_dataset_args()
    args.num_samples, args.seed = 200, 42
    reference = make_dataset(args)  # the package's own call, default train_split 0.8
    assert len(train) == 160 and len(test) == 40
    np.testing.assert_array_equal(np.stack(train["x"]), reference["x"].astype(np.float32))
    np.testing.assert_array_equal(np.stack(test["x"]), reference["x_test"].astype(np.float32))
    assert (train["label"] == reference["y"]).all() and (test["label"] == reference["y_test"]).all()
    assert meta["input"] == {"kind": "dense", "dim": 40, "vocab": 0, "n_classes": 10, "shape": [1, 40]}
    assert meta["planted"] is None and meta["standardize"] is None
    labels = np.concatenate([train["label"], test["label"]])
    assert (np.bincount(labels, minlength=10) == 20).all()  # 200 // 10 per class
    both = np.concatenate([rows(train), rows(test)])
    assert abs(both.mean()) < 1e-5 and abs(both.std() - 1) < 1e-5  # the package's own centring of the whole set


def test_mnist1d_reads_back_as_one_channel_signals(tmp_path):
    train, test, meta = make("mnist1d", num_samples=100, label_noise=0.1, seed=1)
    x, y, df = write_and_load(tmp_path, train, test, meta)
    assert x.shape == (80, 1, 40) and x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy()[:, 0, :], np.stack(train["x"]))
    assert (y.numpy() == train["label"]).all() and df["planted"].sum() == 8
    x_test, _, _ = data.load_split(tmp_path, "test")
    assert x_test.shape == (20, 1, 40)


# ---- the shared finishing step, through the python source -----------------------------------
@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """Write a module of data factories into a fresh working directory; returns its import name."""
    name = f"my_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text('''
import numpy as np
import torch


def blobs(n_train=60, n_test=30, shift=0.0, classes=3):
    """Rows whose first feature is their source index (to follow them through subsampling)."""
    rng = np.random.default_rng(0)
    x_train = rng.normal(2.0, 3.0, size=(n_train, 4))
    x_train[:, 0] = np.arange(n_train)
    x_test = rng.normal(2.0 + shift, 3.0, size=(n_test, 4))
    x_test[:, 0] = np.arange(n_test)
    return (x_train, np.arange(n_train) % classes), (x_test, np.arange(n_test) % classes)


def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 2, 3, 3, generator=g) + torch.tensor([0.0, 5.0]).view(1, 2, 1, 1)
    return (x[:8], torch.arange(8) % 2), (x[8:], torch.tensor([0, 1, 1, 0]))


def single_array():
    return np.zeros((4, 2))


def float_labels():
    return (np.zeros((4, 2)), np.array([0, 1.5, 1, 0])), (np.zeros((2, 2)), np.array([0, 1]))


def broken():
    raise RuntimeError("the lab server is down")
''')
    monkeypatch.setattr(sys, "path", list(sys.path))  # what factories.resolve adds is undone after the test
    monkeypatch.chdir(tmp_path)  # found through the working directory, as under snakemake
    return name


def test_label_noise_plants_exactly_the_flipped_ids(factory_module):
    train, test, meta = make("python", factory=f"{factory_module}:blobs", kwargs={"n_train": 80}, label_noise=0.25,
                             seed=5)
    noisy = train["label"] != train["clean_label"]
    assert noisy.sum() == 20
    assert (noisy == train["planted"]).all()
    assert meta["planted"]["train_ids"] == sorted(train.loc[noisy, "example_id"])
    assert set(train["label"]) <= {0, 1, 2} and (train["clean_label"] == np.arange(80) % 3).all()
    assert not test["planted"].any() and (test["label"] == test["clean_label"]).all()
    # the documented draw: flip_labels on the third stream of SeedSequence(seed)
    expected = data.flip_labels(np.arange(80) % 3, 80, 0.25, 3,
                                np.random.default_rng(np.random.SeedSequence(5).spawn(3)[2]))
    assert (train["label"].to_numpy() == expected[0]).all() and meta["planted"]["train_ids"] == expected[1].tolist()
    clean, _, clean_meta = make("python", factory=f"{factory_module}:blobs", kwargs={"n_train": 80}, seed=5)
    assert clean_meta["planted"] is None and not clean["planted"].any()


def test_subsample_is_seeded_ordered_and_keeps_rows_whole(factory_module):
    def sub(**kw):
        block = {"factory": f"{factory_module}:blobs", "subsample_train": 25, "subsample_test": 10, "seed": 3, **kw}
        return make("python", **block)

    train, test, meta = sub()
    again, _, _ = sub()
    other, _, _ = sub(seed=4)
    assert train.equals(again)
    assert not np.array_equal(train["source_id"], other["source_id"])
    for df, n, k in ((train, 60, 25), (test, 30, 10)):
        ids = df["source_id"].to_numpy()
        assert len(df) == k and (np.diff(ids) > 0).all() and ids.max() < n  # distinct, in source order
        assert (rows(df)[:, 0] == ids).all()  # each row's inputs are its source row's
        assert (df["clean_label"] == ids % 3).all()  # and so are its labels
        assert (df["example_id"] == np.arange(k)).all()
    # the training subsample depends on neither the test subsample nor the label noise
    for changed in (sub(subsample_test=20), sub(label_noise=0.2), sub(subsample_test=None)):
        assert (changed[0]["source_id"] == train["source_id"]).all()
    noisy, _, noisy_meta = sub(label_noise=0.2)
    assert len(noisy_meta["planted"]["train_ids"]) == 5  # round(0.2 * 25): the noise counts the subsample


def test_subsample_larger_than_the_split_is_an_error(factory_module):
    with pytest.raises(ValueError, match=r"data\.python\.subsample_test=31 is more than the 30 examples"):
        make("python", factory=f"{factory_module}:blobs", subsample_test=31)


def test_feature_standardization_uses_the_subsampled_training_rows_only(factory_module):
    block = {"factory": f"{factory_module}:blobs", "kwargs": {"shift": 10.0}, "subsample_train": 30, "seed": 2}
    raw_train, raw_test, raw_meta = make("python", **block)
    train, test, meta = make("python", **block, standardize="feature")
    assert raw_meta["standardize"] is None and meta["standardize"]["over"] == "feature"
    x, xt, raw = rows(train), rows(test), rows(raw_train)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(meta["standardize"]["mean"], raw.mean(axis=0), rtol=1e-6)
    assert xt[:, 1:].mean() > 2  # the test split, shifted by 10, is mapped with training statistics
    mean, std = np.array(meta["standardize"]["mean"]), np.array(meta["standardize"]["std"])
    np.testing.assert_allclose(xt * std + mean, rows(raw_test), atol=1e-4)
    assert train["label"].equals(raw_train["label"])


def test_channel_standardization_and_tensor_factories_keep_the_image_shape(factory_module, tmp_path):
    raw_train, raw_test, raw_meta = make("python", factory=f"{factory_module}:images")
    train, test, meta = make("python", factory=f"{factory_module}:images", standardize="channel")
    assert meta["input"] == {"kind": "dense", "dim": 18, "vocab": 0, "n_classes": 2, "shape": [2, 3, 3]}
    x, raw = rows(train).reshape(8, 2, 3, 3), rows(raw_train).reshape(8, 2, 3, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert x.std(axis=0).std() > 0.01  # one mean and std per channel, not per pixel
    np.testing.assert_allclose(meta["standardize"]["mean"], raw.mean(axis=(0, 2, 3)), rtol=1e-6)
    assert meta["standardize"]["mean"][1] > 5  # channel 1 was shifted by 5
    mean = np.array(meta["standardize"]["mean"]).reshape(1, 2, 1, 1)
    std = np.array(meta["standardize"]["std"]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(rows(test).reshape(4, 2, 3, 3) * std + mean, rows(raw_test).reshape(4, 2, 3, 3), atol=1e-5)
    (tmp_path / "out").mkdir()
    xb, yb, _ = write_and_load(tmp_path / "out", train, test, meta)
    assert xb.shape == (8, 2, 3, 3) and (yb.numpy() == np.arange(8) % 2).all()
    np.testing.assert_array_equal(xb.numpy(), x.astype(np.float32))


def test_channel_standardization_needs_a_channel_axis(factory_module):
    with pytest.raises(ValueError, match=r"data\.python\.standardize: 'channel' needs inputs with a channel axis"):
        make("python", factory=f"{factory_module}:blobs", standardize="channel")


def test_python_factory_errors_name_the_key_the_value_and_the_reason(factory_module):
    cases = {
        "nowhere_to_be_found:make": "no module named 'nowhere_to_be_found'",
        f"{factory_module}:missing": "has no attribute 'missing'",
        f"{factory_module}:broken": "raised RuntimeError: the lab server is down",
        f"{factory_module}:single_array": r"it returned a ndarray of length 4; expected \(\(x_train, y_train\)",
        f"{factory_module}:float_labels": "the labels of the train split are not whole numbers",
    }
    for value, reason in cases.items():
        with pytest.raises(factories.FactoryError, match=reason) as err:
            data.generate({"generator": "python", "python": {"factory": value, "kwargs": {}, "seed": 0, "label_noise": 0,
                                                             "subsample_train": None, "subsample_test": None,
                                                             "standardize": None}})
        assert str(err.value).startswith(f"data.python.factory: cannot use {value!r}:"), str(err.value)


def test_a_data_factory_that_cannot_be_imported_stops_the_config(factory_module):
    with pytest.raises(ConfigError, match=r"data\.python\.factory: cannot use 'not_a_module_here:f'"):
        settings("python", {"factory": "not_a_module_here:f"})
    settings("python", {"factory": f"{factory_module}:blobs"})  # importable: fine


# ---- files ----------------------------------------------------------------------------------


def files_block(train, **kw):
    return {"train": str(train), **kw}


def test_npz_train_and_test_files(tmp_path):
    (x, y), (xt, yt) = arrays(20, 0), arrays(8, 1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    train, test, meta = make("files", **files_block(tmp_path / "train.npz", test=str(tmp_path / "test.npz")))
    np.testing.assert_array_equal(np.stack(train["x"]), x)
    np.testing.assert_array_equal(np.stack(test["x"]), xt)
    assert (train["label"] == y).all() and (test["label"] == yt).all()
    assert (train["source_id"] == np.arange(20)).all()
    assert meta["input"]["shape"] == [3] and meta["input"]["n_classes"] == int(max(y.max(), yt.max())) + 1


def test_one_npz_with_a_split_array_ids_and_a_shape(tmp_path):
    x = np.arange(10 * 12, dtype=np.float64).reshape(10, 12)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    split = np.array(["train", "test"] * 5)
    ids = np.array([f"img{i:02d}" for i in range(10)])
    np.savez(tmp_path / "all.npz", inputs=x, target=y, part=split, name=ids)
    train, test, meta = make("files", **files_block(tmp_path / "all.npz", x_key="inputs", y_key="target", split_key="part",
                                                    id_key="name", shape=[3, 2, 2]))
    assert list(train["source_id"]) == ["img00", "img02", "img04", "img06", "img08"]
    assert list(test["source_id"]) == ["img01", "img03", "img05", "img07", "img09"]
    np.testing.assert_array_equal(np.stack(train["x"]), x[0::2])
    assert meta["input"]["shape"] == [3, 2, 2] and meta["input"]["dim"] == 12
    xb, _, back = write_and_load(tmp_path, train, test, meta)
    assert xb.shape == (5, 3, 2, 2) and list(back["source_id"]) == list(train["source_id"])
    np.testing.assert_array_equal(xb.numpy(), x[0::2].reshape(5, 3, 2, 2))


def test_parquet_list_columns_flat_and_nested(tmp_path):
    x = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)
    nested = pa.array([[list(map(float, r)) for r in img] for img in x], type=pa.list_(pa.list_(pa.float32())))
    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 6)
    labels = pa.array([0, 1, 0, 1, 0, 1], type=pa.int64())
    pq.write_table(pa.table({"img": nested, "flat": flat, "y": labels, "split": ["train"] * 4 + ["test"] * 2,
                             "scalar": pa.array(x[:, 0, 0])}), tmp_path / "d.parquet")
    train, test, meta = make("files", **files_block(tmp_path / "d.parquet", x_key="img"))
    assert meta["input"]["shape"] == [2, 3] and len(train) == 4 and len(test) == 2
    np.testing.assert_array_equal(np.stack(train["x"]), x[:4].reshape(4, 6))
    flat_train, _, flat_meta = make("files", **files_block(tmp_path / "d.parquet", x_key="flat", shape=[2, 3]))
    assert flat_meta["input"]["shape"] == [2, 3] and flat_train["x"].map(list).equals(train["x"].map(list))
    _, _, scalar_meta = make("files", **files_block(tmp_path / "d.parquet", x_key="scalar"))
    assert scalar_meta["input"]["shape"] == [1]


def test_files_errors_name_the_key_and_the_path(tmp_path):
    x, y = arrays(6, 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=rf"data\.files\.test: no such file: {missing}"):
        make("files", **files_block(tmp_path / "train.npz", test=str(missing)))
    with pytest.raises(ValueError, match=r"data\.files\.y_key: no array 'labels' in .*train\.npz \(it has: x, y\)"):
        make("files", **files_block(tmp_path / "train.npz", test=str(tmp_path / "train.npz"), y_key="labels"))
    with pytest.raises(ValueError, match=r"data\.files\.split_key: no array 'split' .*data\.files\.test is null"):
        make("files", **files_block(tmp_path / "train.npz"))
    np.savez(tmp_path / "bad_split.npz", x=x, y=y, split=np.array(["train", "val"] * 3))
    with pytest.raises(ValueError, match=r"data\.files\.split_key: 'split' in .* has values \['val'\]"):
        make("files", **files_block(tmp_path / "bad_split.npz"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"data\.files\.train: .*x\.csv is neither a \.npz nor a \.parquet file"):
        make("files", **files_block(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match=r"data\.files\.shape: \[4\] does not fit"):
        make("files", **files_block(tmp_path / "train.npz", test=str(tmp_path / "train.npz"), shape=[4]))
    np.savez(tmp_path / "neg.npz", x=x, y=y - 5)
    with pytest.raises(ValueError, match=r"data\.files: .*neg\.npz: the labels of the train split include -"):
        make("files", **files_block(tmp_path / "neg.npz", test=str(tmp_path / "neg.npz")))


@pytest.mark.workflow
@pytest.mark.slow
def test_files_source_is_a_rule_input(tmp_path):
    """The files a `files` source reads are generate_data's inputs: a dry run sees them."""
    from support.workflow import copy_workflow, planned, snakemake

    x, y = arrays(12, 0)
    config = {"device": "cpu", "experiments": {"f": {
        "data": {"generator": "files", "files": {"train": "arrays/train.npz", "test": "arrays/train.npz"}},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 2, "log_every": 1, "checkpoints": {"every": 2}}}}}
    cwd = copy_workflow(tmp_path / "wf", config)
    (cwd / "arrays").mkdir()
    np.savez(cwd / "arrays" / "train.npz", x=x, y=y)
    dataset = f"results/data/{next(iter(_dataset_ids(config)))}"
    snakemake(cwd, "--cores", "1", f"{dataset}/meta.json")
    x_back, y_back, _ = data.load_split(cwd / dataset, "train")
    np.testing.assert_array_equal(x_back.numpy(), x)
    np.testing.assert_array_equal(y_back.numpy(), y)
    assert planned(cwd, "--", f"{dataset}/meta.json") == {}
    np.savez(cwd / "arrays" / "train.npz", x=x + 1, y=y)  # new contents: the dataset is planned again
    assert planned(cwd, "--", f"{dataset}/meta.json") == {"generate_data": 1}


def _dataset_ids(config):
    from gradscope.config import dataset_id

    return {dataset_id(run.settings) for run in expand_runs(load_config(config))}


# ---- torchvision ----------------------------------------------------------------------------


def test_cifar10_pickles_load_through_torchvision(tmp_path, monkeypatch, tv, offline):
    (x, y), (xt, yt) = write_cifar10(tmp_path / "root", monkeypatch, tv)
    train, test, meta = make("torchvision", name="CIFAR10", root=str(tmp_path / "root"), standardize=None)
    assert meta["input"] == {"kind": "dense", "dim": 3072, "vocab": 0, "n_classes": 10, "shape": [3, 32, 32]}
    np.testing.assert_allclose(np.stack(train["x"]), x.astype(np.float32) / 255, rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.stack(test["x"]), xt.astype(np.float32) / 255, rtol=0, atol=1e-7)
    assert list(train["label"]) == y and list(test["label"]) == yt
    xb, _, _ = write_and_load(tmp_path, train, test, meta)
    assert xb.shape == (10, 3, 32, 32)
    np.testing.assert_allclose(xb.numpy(), x.reshape(10, 3, 32, 32) / 255, atol=1e-7)  # channel planes in place
    # the default: per-channel standardization with training statistics
    std_train, _, std_meta = make("torchvision", name="CIFAR10", root=str(tmp_path / "root"), label_noise=0.2)
    assert std_meta["standardize"]["over"] == "channel" and len(std_meta["standardize"]["mean"]) == 3
    np.testing.assert_allclose(rows(std_train).reshape(10, 3, -1).mean(axis=(0, 2)), 0, atol=1e-5)
    assert len(std_meta["planted"]["train_ids"]) == 2


def test_mnist_idx_files_load_through_torchvision(tmp_path, tv, offline):
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, 256, size=(6, 28, 28)), rng.integers(0, 256, size=(3, 28, 28))
    y, yt = np.array([5, 0, 4, 1, 9, 2]), np.array([7, 2, 1])
    write_mnist(tmp_path, (x, y), (xt, yt))
    train, test, meta = make("torchvision", name="MNIST", root=str(tmp_path), standardize=None, subsample_train=4)
    assert meta["input"]["shape"] == [1, 28, 28] and meta["input"]["n_classes"] == 10
    ids = train["source_id"].to_numpy()
    np.testing.assert_allclose(np.stack(train["x"]), x[ids].reshape(4, 784) / 255, atol=1e-7)
    assert (train["label"] == y[ids]).all() and (test["label"] == yt).all()


def test_svhn_mat_files_load_through_torchvision_with_split(tmp_path, monkeypatch, tv, offline):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("train", 4), ("test", 2)):
        images[split] = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, n)
        labels = np.array([[10], [3], [9], [1]][:n], dtype=np.uint8)  # SVHN writes digit 0 as 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images[split], "y": labels})
    cls = tv.datasets.SVHN
    monkeypatch.setattr(cls, "split_list", {s: [url, f"{s}_32x32.mat", md5(tmp_path / f"{s}_32x32.mat")]
                                            for s, (url, _, _) in cls.split_list.items() if s in ("train", "test")})
    train, test, meta = make("torchvision", name="SVHN", root=str(tmp_path), standardize=None)
    assert list(train["label"]) == [0, 3, 9, 1] and list(test["label"]) == [0, 3]
    assert meta["input"]["shape"] == [3, 32, 32] and meta["input"]["n_classes"] == 10
    np.testing.assert_allclose(np.stack(test["x"]), images["test"].transpose(3, 2, 0, 1).reshape(2, -1) / 255, atol=1e-7)


def test_torchvision_errors_name_the_root_and_how_to_get_the_files(tmp_path, tv, offline):
    missing = tmp_path / "no_such_root"
    with pytest.raises(FileNotFoundError) as err:
        make("torchvision", name="CIFAR10", root=str(missing))
    for part in ("data.torchvision.root", str(missing), "data.torchvision.download: true", "copy its files there"):
        assert part in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        make("torchvision", name="CIFAR10", root=str(tmp_path / "empty"))
    for part in ("data.torchvision.root", str(tmp_path / "empty"), "Dataset not found", "download: true"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match=r"data\.torchvision\.name: torchvision\.datasets has no dataset 'CIFAR11'.*CIFAR10"):
        make("torchvision", name="CIFAR11", root=str(tmp_path))
