"""Data checked at generation (issue 28, item 2): labels that fit the classes, with the class counts
reported; test classes present in training; finite inputs; files that are what their names say.
Each message names the key, the file (or the factory) and the rows."""

import logging
import shutil
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradscope import data


def files(tmp_path, train, test=None, **block):
    return data.generate({"generator": "files", "files": {"train": str(tmp_path / train),
                                                          "test": None if test is None else str(tmp_path / test),
                                                          **block}})


def arrays(n, classes=3, d=4, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x, np.arange(n) % classes


@pytest.fixture
def clean(tmp_path):
    """train.npz and test.npz: 4 features, classes 0..2 in both."""
    np.savez(tmp_path / "train.npz", **dict(zip("xy", arrays(30))))
    np.savez(tmp_path / "test.npz", **dict(zip("xy", arrays(9, seed=1))))
    return tmp_path


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A module of data factories in a fresh working directory; returns its import name."""
    name = f"checked_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text('''
import numpy as np


def images(bad=None):
    x = np.zeros((10, 2, 3, 3))
    if bad == "nan":
        x[6, 1, 2, 0] = np.nan
    if bad == "inf":
        x[2:, 0, 0, 0] = -np.inf
    return (x, np.arange(10) % 2), (np.zeros((4, 2, 3, 3)), np.array([0, 1, 0, 1]))


def gap():
    return (np.zeros((8, 2)), np.array([0, 1, 2, 7] * 2)), (np.zeros((4, 2)), np.array([0, 1, 2, 7]))
''')
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    return name


def python(factory, **kwargs):
    return data.generate({"generator": "python", "python": {"factory": factory, "kwargs": kwargs}})


# ---- labels and classes ----------------------------------------------------------------------
def test_a_label_that_leaves_classes_empty_is_refused_naming_the_file_the_label_and_the_row(clean):
    x, y = arrays(30)
    y[17] = 99  # classes 0..2, and one 99: n_classes would be 100
    np.savez(clean / "train.npz", x=x, y=y)
    with pytest.raises(ValueError) as err:
        files(clean, "train.npz", "test.npz")
    message = str(err.value)
    assert message.startswith(f"data.files.train: {clean / 'train.npz'}: label 99 (row 17, counting from 0) leaves "
                              f"classes 3..98 without a training example"), message
    assert "the labels used are 0..2, 99, so n_classes would be 100 with 96 empty" in message
    assert "allowed: class indices 0..K-1 with every class used: relabel the 4 classes to 0..3" in message


def test_a_python_factory_whose_labels_leave_a_gap_is_refused_naming_the_factory(factory):
    with pytest.raises(ValueError, match=rf"^data\.python\.factory: '{factory}:gap', its train split: label 7 "
                                         r"\(rows 3, 7, counting from 0\) leaves classes 3\.\.6 without"):
        python(f"{factory}:gap")


def test_labels_must_lie_below_the_classes_a_source_declares():
    """torchvision and MNIST-1D declare their classes: a label at or above n_classes is refused, naming the split."""
    x, y = arrays(12)
    train = data.Split(x, y, np.arange(12), where="data.torchvision: Fake in /root, its train split")
    test = data.Split(x[:4], np.array([0, 1, 3, 1]), np.arange(4), where="data.torchvision: Fake in /root, its test split")
    kw = dict(seed=0, label_noise=0.0, subsample_train=None, subsample_test=None, standardize=None, key="data.torchvision")
    with pytest.raises(ValueError, match=r"^data\.torchvision: Fake in /root, its test split: label 3 \(row 2, counting "
                                         r"from 0\) out of range for the 3 classes of the source; allowed: 0\.\.2$"):
        data.labelled_dataset(train, test, n_classes=3, **kw)
    # a declared class with no training example is allowed (a subsample of CIFAR-10), and logged
    _, _, meta = data.labelled_dataset(train, test, n_classes=5, **kw)
    assert meta["input"]["n_classes"] == 5


def test_test_classes_absent_from_training_are_refused_naming_the_test_file_and_the_training_classes(clean):
    x, _ = arrays(9, seed=1)
    np.savez(clean / "test5.npz", x=x, y=np.array([0, 1, 2, 5, 0, 5, 1, 2, 0]))
    with pytest.raises(ValueError) as err:
        files(clean, "train.npz", "test5.npz")
    message = str(err.value)
    assert message.startswith(f"data.files.test: {clean / 'test5.npz'}: class 5 (rows 3, 5, counting from 0) has no "
                              f"example in the training split (data.files.train: {clean / 'train.npz'}), whose classes "
                              f"are 0..2"), message
    assert "allowed: test labels among the training classes: relabel or drop those test rows" in message


def test_class_counts_are_in_the_meta_and_the_log(clean, caplog):
    with caplog.at_level(logging.INFO, logger="gradscope.data"):
        train, test, meta = files(clean, "train.npz", "test.npz", subsample_train=12, seed=1)
    counts = meta["class_counts"]
    assert counts == {"train": np.bincount(train["label"], minlength=3).tolist(),
                      "test": [3, 3, 3]}
    assert sum(counts["train"]) == 12
    assert f"data.files: 3 classes; examples per class, train: {counts['train']}; test: [3, 3, 3]" in caplog.text


@pytest.mark.parametrize("name, block", [
    ("planted_flips", {"n_train": 40, "n_test": 20, "n_classes": 3}),
    ("modular", {"p": 7}),
    ("opposing_features", {"n_train": 20, "n_test": 10, "side": 6, "patch": 2}),
    pytest.param("digits", {}, marks=pytest.mark.slow),  # importing scikit-learn: about 3 s
    pytest.param("mnist1d", {"num_samples": 200}, marks=pytest.mark.slow),
])
def test_every_generator_passes_the_last_check_and_reports_class_counts(name, block):
    train, test, meta = data.generate({"generator": name, name: block})
    k = meta["input"]["n_classes"]
    assert len(meta["class_counts"]["train"]) == k and sum(meta["class_counts"]["train"]) == len(train)
    assert meta["class_counts"]["test"] == np.bincount(test["label"], minlength=k).tolist()


def test_the_last_check_refuses_a_table_a_generator_got_wrong():
    train, test, meta = data.generate({"generator": "planted_flips", "planted_flips": {"n_train": 10, "n_test": 5}})
    bad = train.copy()
    bad.loc[3, "label"] = 2  # 2 classes
    with pytest.raises(ValueError, match=r"data\.x: the train split as generated has label 2 at example 3, outside "
                                         r"0\.\.1 .*a bug in the generator"):
        data.check_dataset(bad, test, meta["input"], "data.x")
    bad = train.copy()
    bad.at[4, "x"] = np.full(20, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match=r"data\.x: the train split as generated has non-finite inputs at example 4"):
        data.check_dataset(bad, test, meta["input"], "data.x")


# ---- finite inputs ---------------------------------------------------------------------------
def test_nan_and_inf_in_a_npz_are_refused_naming_the_file_rows_and_features(clean):
    x, y = arrays(30)
    x[4, 1] = np.nan
    x[7] = np.inf
    np.savez(clean / "train.npz", x=x, y=y)
    with pytest.raises(ValueError) as err:
        files(clean, "train.npz", "test.npz")
    assert str(err.value) == (
        f"data.files.train: {clean / 'train.npz'}: inputs (array 'x') are not finite (NaN or inf) in 2 of 30 rows: "
        f"row 4: feature 1 is nan; row 7: feature 0 is inf, and 3 more features (rows and features count from 0, "
        f"features index the per-example shape [4]); allowed: finite numbers: drop or fix those rows")


def test_nan_in_one_parquet_file_names_the_files_own_row(tmp_path):
    """One file holding both splits: the row named is the row of the file, not of its split."""
    rows = [[float(i), 1.0] for i in range(10)]
    rows[7][1] = float("nan")  # a test row (odd rows are test)
    pq.write_table(pa.table({"x": rows, "y": [i // 2 % 2 for i in range(10)], "split": ["train", "test"] * 5}),
                   tmp_path / "all.parquet")
    with pytest.raises(ValueError, match=rf"^data\.files\.train: {tmp_path / 'all.parquet'} \(its rows with split "
                                         r"'test'\): inputs \(column 'x'\) are not finite \(NaN or inf\) in 1 of 5 "
                                         r"rows: row 7: feature 1 is nan"):
        files(tmp_path, "all.parquet")


def test_nan_or_inf_from_a_python_factory_is_refused_naming_the_factory_row_and_feature(factory):
    with pytest.raises(ValueError, match=rf"^data\.python\.factory: '{factory}:images', its train split: inputs are "
                                         r"not finite \(NaN or inf\) in 1 of 10 rows: row 6: feature \[1, 2, 0\] is "
                                         r"nan \(.*per-example shape \[2, 3, 3\]\)"):
        python(f"{factory}:images", bad="nan")
    with pytest.raises(ValueError, match=r"in 8 of 10 rows: row 2: feature \[0, 0, 0\] is -inf; row 3: .*; row 4: .*; "
                                         r"and 5 more rows"):
        python(f"{factory}:images", bad="inf")
    python(f"{factory}:images")  # finite: fine


# ---- file types ------------------------------------------------------------------------------
def test_a_text_file_named_npz_is_not_a_npz_archive(clean):
    (clean / "text.npz").write_text("x,y\n0.5,1\n")
    with pytest.raises(ValueError, match=rf"^data\.files\.train: {clean / 'text.npz'} is not a \.npz archive: it "
                                         r"holds text \(CSV\?\), starting 'x,y'; allowed: a \.npz archive of the "
                                         r"inputs and labels, as numpy\.savez\(path, x=inputs, y=labels\) writes$"):
        files(clean, "text.npz", "test.npz")


def test_each_file_type_is_named_when_it_is_not_what_the_name_says(clean):
    x, y = arrays(6)
    np.save(clean / "arr.npy", x)
    shutil.copy(clean / "arr.npy", clean / "arr.npz")
    shutil.copy(clean / "train.npz", clean / "zip.parquet")
    (clean / "empty.npz").write_bytes(b"")
    (clean / "t.csv").write_text("a,b,label\n1,2,0\n")
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [0, 1]}), clean / "ok.parquet")
    (clean / "cut.parquet").write_bytes((clean / "ok.parquet").read_bytes()[:-20])
    (clean / "cut.npz").write_bytes((clean / "train.npz").read_bytes()[:200])
    cases = {
        "arr.npz": r"is not a \.npz archive: it holds a single \.npy array;",
        "empty.npz": r"is not a \.npz archive: it holds nothing \(it is empty\);",
        "zip.parquet": r"is not a Parquet file: it holds a zip archive; allowed: a Parquet file",
        "cut.parquet": r"is a damaged Parquet file: it does not end in Parquet's footer",
        "cut.npz": r"cannot read .*cut\.npz, a damaged \.npz archive \(cut short .*\): BadZipFile",
        "arr.npy": r"is neither a \.npz nor a \.parquet file: it holds a single \.npy array; allowed: \.npz "
                   r"\(numpy\.savez\(path, x=inputs, y=labels\)\), \.parquet or \.pq; save the inputs and labels together",
        "t.csv": r"is neither a \.npz nor a \.parquet file: it holds text \(CSV\?\), starting 'a,b,label'; .*for a CSV: "
                 r"df = pandas\.read_csv\(path\)",
    }
    for name, reason in cases.items():
        with pytest.raises(ValueError, match=rf"^data\.files\.train: .*{reason}"):
            files(clean, name, "test.npz")


# ---- in the workflow -------------------------------------------------------------------------
@pytest.mark.workflow
@pytest.mark.slow
def test_the_workflow_stops_at_generate_data_on_a_stray_label(tmp_path):
    """A real Snakemake run: the label 99 that used to train a 100-way model stops generate_data, and no train job runs."""
    from support.workflow import copy_workflow, snakemake

    config = {"device": "cpu", "experiments": {"f": {
        "data": {"generator": "files", "files": {"train": "arrays/train.npz", "test": "arrays/test.npz"}},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 2, "log_every": 1, "checkpoints": {"every": 2}},
        "signals": {"detectors": ["high_loss"]}}}}
    cwd = copy_workflow(tmp_path / "wf", config)
    (cwd / "arrays").mkdir()
    x, y = arrays(12)
    y[5] = 99
    np.savez(cwd / "arrays" / "train.npz", x=x, y=y)
    np.savez(cwd / "arrays" / "test.npz", **dict(zip("xy", arrays(6, seed=1))))
    proc = snakemake(cwd, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "label 99 (row 5, counting from 0) leaves classes 3..98 without a training example" in out, out[-3000:]
    assert "arrays/train.npz" in out
    logs = list((cwd / "logs" / "generate_data").glob("*.log"))
    assert len(logs) == 1 and "label 99 (row 5, counting from 0)" in logs[0].read_text()
    assert "rule train:" not in out and "localrule train:" not in out, out[-3000:]
    assert not (cwd / "results" / "runs").exists() or not any((cwd / "results" / "runs").rglob("metrics*"))
