"""Label noise you know of and noise planted on top (gradscope.data.noise), on the labelled sources:
exact counts against a brute-force count, ids carried through subsampling, errors naming the key."""

import json

import numpy as np
import pytest
from support.sources import make, write_cifar10

from gradscope.config import ConfigError, data_slice, dataset_id, expand_runs, load_config
from gradscope.data.noise import check_noise, plant_noise, read_ids


def write_files(tmp_path, n=300, classes=3, seed=0, **extra):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 5)).astype(np.float32), np.arange(n) % classes
    np.savez(tmp_path / "tr.npz", x=x, y=y, **extra)
    np.savez(tmp_path / "te.npz", x=x[:60], y=y[:60])
    return {"train": str(tmp_path / "tr.npz"), "test": str(tmp_path / "te.npz")}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pairs_move_exactly_their_count_of_their_class_and_nothing_else(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 4, size=int(rng.integers(50, 400)))
    pairs = [(0, 1, 0.3), (0, 2, 0.25), (3, 1, 0.5), (2, 0, 0.0)]
    noisy, moved, record = plant_noise(labels, pairs, np.random.default_rng(seed))
    changed = np.flatnonzero(noisy != labels)
    assert np.array_equal(changed, moved)  # every moved label changed, and only those
    for (a, b, p), r in zip(pairs, record):
        went = np.sum((labels == a) & (noisy == b))  # brute-force count
        assert went == r["moved"] == int(round(p * np.sum(labels == a)))
    assert not np.any((labels == 1) & (noisy != 1))  # a class no pair names keeps every label
    again = plant_noise(labels, pairs, np.random.default_rng(seed))
    assert np.array_equal(again[0], noisy)  # seeded


def test_a_matrix_moves_its_off_diagonal_fractions():
    labels = np.arange(600) % 3  # 200 per class
    t = [[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.05, 0.45, 0.5]]
    pairs = check_noise({"matrix": t}, 3, "data.files")
    noisy, moved, _ = plant_noise(labels, pairs, np.random.default_rng(0))
    for a in range(3):
        for b in range(3):
            if a != b:
                assert np.sum((labels == a) & (noisy == b)) == int(round(t[a][b] * 200))
    assert len(moved) == 40 + 20 + 10 + 90


def test_declared_labels_are_not_moved_again():
    labels = np.arange(100) % 2
    declared = np.zeros(100, bool)
    declared[labels == 0] = True
    declared[0] = False  # one of class 0 left free
    noisy, moved, record = plant_noise(labels, [(0, 1, 0.5)], np.random.default_rng(0), exclude=declared)
    assert moved.tolist() == [0] and record[0]["moved"] == 1  # 25 asked for, 1 free


@pytest.mark.parametrize("noise, fragment", [
    ({"pairs": [{"from": 0, "to": 1, "fraction": 0.1}], "matrix": [[1, 0], [0, 1]]}, "give either pairs or matrix, not both"),
    ({"pairs": [{"from": 0, "to": 5, "fraction": 0.1}]}, "noise.pairs[0].to: 5; allowed: 0..2"),
    ({"pairs": [{"from": 1, "to": 1, "fraction": 0.1}]}, "from and to are both 1"),
    ({"pairs": [{"from": 1, "to": 0, "fraction": 0.6}, {"from": 1, "to": 2, "fraction": 0.6}]},
     "the fractions moved out of class 1 sum to 1.2; allowed: at most 1"),
    ({"matrix": [[1, 0], [0, 1]]}, "noise.matrix: shape [2, 2]; allowed: 3 x 3"),
    ({"matrix": [[0.9, 0.2, 0], [0, 1, 0], [0, 0, 1]]}, "rows must be fractions (>= 0) summing to 1"),
])
def test_a_bad_noise_block_names_the_key(tmp_path, noise, fragment):
    with pytest.raises(ValueError) as err:
        make("files", **write_files(tmp_path), noise=noise)
    assert fragment in str(err.value) and "data.files" in str(err.value)


def test_files_noise_is_planted_truth_recorded_in_meta(tmp_path):
    train, test, meta = make("files", **write_files(tmp_path), noise={"pairs": [{"from": 0, "to": 1, "fraction": 0.3}]})
    moved = np.flatnonzero(train["label"].to_numpy() != train["clean_label"].to_numpy())
    assert len(moved) == 30 and meta["planted"]["train_ids"] == moved.tolist()
    assert train["planted"].to_numpy().nonzero()[0].tolist() == moved.tolist()
    assert meta["noise"]["moved"] == [{"from": 0, "to": 1, "fraction": 0.3, "moved": 30}]
    assert (test["label"] == test["clean_label"]).all()  # the test split is never noisy


def test_declared_ids_from_a_file_and_a_key_combine_and_follow_the_subsample(tmp_path):
    block = write_files(tmp_path, bad=(np.arange(300) % 50 == 0))  # rows 0, 50, ..., 250
    (tmp_path / "ids.txt").write_text("id\n1\n2\n3\n")
    train, _, meta = make("files", **block, planted_key="bad", planted_ids=str(tmp_path / "ids.txt"), subsample_train=150)
    source = train["source_id"].to_numpy()
    want = {0, 1, 2, 3, 50, 100, 150, 200, 250}
    declared = [int(i) for i in meta["planted"]["declared_ids"]]
    assert {int(source[i]) for i in declared} == want & set(source.tolist())  # only those the subsample kept
    assert meta["planted"]["train_ids"] == declared
    assert (train["label"] == train["clean_label"]).all()  # a declared label stays as given
    assert "declares wrong" in meta["planted"]["description"]


def test_declared_ids_name_examples_by_id_key(tmp_path):
    names = np.array([f"img{i:03d}" for i in range(300)])
    block = write_files(tmp_path, ids=names)
    test = np.load(tmp_path / "te.npz")
    np.savez(tmp_path / "te.npz", x=test["x"], y=test["y"], ids=names[:60])
    (tmp_path / "bad.json").write_text(json.dumps(["img007", "img299"]))
    train, _, meta = make("files", **block, id_key="ids", planted_ids=str(tmp_path / "bad.json"))
    assert train["source_id"].to_numpy()[meta["planted"]["train_ids"]].tolist() == ["img007", "img299"]


def test_bad_declared_ids_name_the_key_and_the_file(tmp_path):
    block = write_files(tmp_path, bad=np.arange(300) * 2.0)
    np.save(tmp_path / "ids.npy", np.array([5, 9999]))
    with pytest.raises(ValueError, match=r"data.files.planted_ids: 1 of its 2 ids are no example of .* \(e.g. 9999\)"):
        make("files", **block, planted_ids=str(tmp_path / "ids.npy"))
    with pytest.raises(ValueError, match=r"data.files.planted_ids: no such file"):
        make("files", **block, planted_ids=str(tmp_path / "none.npy"))
    (tmp_path / "ids.pkl").write_text("x")
    with pytest.raises(ValueError, match=r"is not a file of ids; allowed: .npy, .txt, .csv, .json"):
        make("files", **block, planted_ids=str(tmp_path / "ids.pkl"))
    with pytest.raises(ValueError, match=r"data.files.planted_key: 'bad' in .* must hold one boolean"):
        make("files", **block, planted_key="bad")


def test_planted_noise_is_refused_with_label_noise_or_spurious(tmp_path):
    block, noise = write_files(tmp_path), {"pairs": [{"from": 0, "to": 1, "fraction": 0.1}]}
    with pytest.raises(ValueError, match="data.files.noise together with data.files.label_noise"):
        make("files", **block, noise=noise, label_noise=0.1)
    with pytest.raises(ValueError, match="data.files.noise together with data.files.spurious"):
        make("files", **block, noise=noise, spurious={"kind": "stripe", "size": 1})
    np.save(tmp_path / "ids.npy", np.array([1]))
    with pytest.raises(ValueError, match="data.files.spurious together with declared noisy labels"):
        make("files", **block, planted_ids=str(tmp_path / "ids.npy"), spurious={"kind": "stripe", "size": 1})


def test_python_and_mnist1d_take_them_too(tmp_path, monkeypatch):
    (tmp_path / "noisy_data.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    x = np.random.default_rng(0).normal(size=(90, 4)).astype('float32')\n"
        "    return (x, np.arange(90) % 3), (x[:30], np.arange(30) % 3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ids.csv").write_text("4\n5\n")
    train, _, meta = make("python", factory="noisy_data:make", planted_ids="ids.csv",
                          noise={"pairs": [{"from": 2, "to": 0, "fraction": 0.5}]})
    assert meta["planted"]["declared_ids"] == [4, 5] and meta["noise"]["moved"][0]["moved"] == 15
    assert len(meta["planted"]["train_ids"]) == 17
    train, _, meta = make("mnist1d", num_samples=400, noise={"matrix": np.eye(10).tolist()})
    assert meta["planted"] is None and meta["noise"]["moved"] == []  # the identity moves nothing
    train, _, meta = make("mnist1d", num_samples=400, planted_ids="ids.csv",
                          noise={"pairs": [{"from": 3, "to": 8, "fraction": 0.5}]})
    assert meta["planted"]["declared_ids"] == [4, 5]
    went = (train["clean_label"] == 3) & (train["label"] == 8)
    assert went.sum() == round(0.5 * (train["clean_label"] == 3).sum()) and not went.iloc[[4, 5]].any()


def test_the_new_keys_left_null_keep_a_datasets_id(tmp_path):
    block = write_files(tmp_path)
    runs = expand_runs(load_config({"experiments": {"e": {"data": {"generator": "files", "files": block},
                                                          "signals": {"detectors": ["high_loss"]}}}}))
    sliced = data_slice(runs[0].settings)
    assert not {"noise", "planted_ids", "planted_key", "spurious"} & set(sliced["files"])
    noisy = expand_runs(load_config({"experiments": {"e": {"data": {"generator": "files", "files": {
        **block, "noise": {"pairs": [{"from": 0, "to": 1, "fraction": 0.1}]}}}, "signals": {"detectors": ["high_loss"]}}}}))
    assert dataset_id(noisy[0].settings) != dataset_id(runs[0].settings)


def test_the_schema_refuses_a_pair_without_a_fraction(tmp_path):
    with pytest.raises(ConfigError, match="fraction"):
        load_config({"experiments": {"e": {"data": {"generator": "files", "files": {
            **write_files(tmp_path), "noise": {"pairs": [{"from": 0, "to": 1}]}}}}}})


def test_read_ids_formats(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[3], [1]]))
    (tmp_path / "b.txt").write_text("3\n1\n\n")
    (tmp_path / "c.csv").write_text("source_id,why\n3,blurry\n1,wrong\n")
    (tmp_path / "d.json").write_text("[3, 1]")
    for name in ("a.npy", "b.txt", "c.csv", "d.json"):
        assert read_ids(tmp_path / name, "k").tolist() == [3, 1], name


def test_torchvision_takes_them_too(tmp_path, monkeypatch, tv, offline):
    write_cifar10(tmp_path / "root", monkeypatch, tv, per_batch=4, n_test=6)  # 20 training images
    (tmp_path / "ids.txt").write_text("0\n19\n")
    train, _, meta = make("torchvision", name="CIFAR10", root=str(tmp_path / "root"), planted_ids=str(tmp_path / "ids.txt"),
                          noise={"matrix": (0.5 * np.eye(10) + 0.5 * np.roll(np.eye(10), 1, axis=1)).tolist()})
    labels, clean = train["label"].to_numpy(), train["clean_label"].to_numpy()
    moved = np.flatnonzero(labels != clean)
    assert ((labels[moved] - clean[moved]) % 10 == 1).all()  # class a to a + 1 only
    assert meta["planted"]["declared_ids"] == [0, 19]
    assert set(meta["planted"]["train_ids"]) == set(moved.tolist()) | {0, 19}
