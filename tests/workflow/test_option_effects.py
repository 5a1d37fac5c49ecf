"""Options whose covering test (tests/config/test_option_coverage.py) left them at their default or did
not check what they do: each set to a non-default value here and its effect checked against a
reference computed in the test."""

import numpy as np
import pandas as pd
import pytest

from gradscope import data
from support.sources import arrays, make, rows, write_mnist


# ---- data generators ------------------------------------------------------------------------
def test_planted_flips_teacher_mlp_of_its_width_labels_the_examples():
    """teacher mlp, teacher_width 5: the clean labels are the argmax of the documented random tanh MLP
    (after the features, from the same seeded stream); a linear teacher or another width labels otherwise."""
    cfg = dict(n_train=150, n_test=50, n_features=4, n_classes=3, teacher="mlp", teacher_width=5, flip_fraction=0.0,
               seed=2, standardize=False)
    train, test, meta = data.generate({"generator": "planted_flips", "planted_flips": cfg})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    w1 = rng.standard_normal((4, 5)) / np.sqrt(4)
    w2 = rng.standard_normal((5, 3)) / np.sqrt(5)
    clean = (np.tanh(x @ w1) @ w2).argmax(axis=1)
    np.testing.assert_array_equal(np.concatenate([train["clean_label"], test["clean_label"]]), clean)
    np.testing.assert_array_equal(np.stack(train["x"]), x[:150])
    assert meta["input"]["n_classes"] == 3 and set(clean) == {0, 1, 2}
    for other in ({"teacher": "linear"}, {"teacher_width": 9}):
        changed = data.generate({"generator": "planted_flips", "planted_flips": {**cfg, **other}})[0]
        assert (changed["clean_label"] != train["clean_label"]).mean() > 0.1, other


def test_modular_and_digits_seed_choose_the_split():
    """modular.seed and digits.seed: the documented permutation of the seed decides the training split."""
    p, frac = 7, 0.5
    for seed in (0, 3):
        train, _, _ = data.generate({"generator": "modular", "modular": {"p": p, "op": "add", "train_fraction": frac,
                                                                         "seed": seed}})
        a, b = np.divmod(np.arange(p * p), p)
        order = np.random.default_rng(seed).permutation(p * p)[: len(train)]
        assert sorted(zip(train["a"], train["b"])) == sorted(zip(a[order], b[order])), seed
    one = data.generate({"generator": "digits", "digits": {"seed": 4, "label_noise": 0.0}})[0]
    zero = data.generate({"generator": "digits", "digits": {"seed": 0, "label_noise": 0.0}})[0]
    assert len(one) == len(zero) and not np.array_equal(rows(one), rows(zero))


def opposing_images(**kw):
    cfg = dict(n_train=40, n_test=10, side=6, n_classes=2, patch=2, signal=0.7, background=5.0, minority_fraction=0.1,
               noise=0.0, seed=1, standardize=False)
    return data.generate({"generator": "opposing_features", "opposing_features": {**cfg, **kw}})


def test_opposing_features_side_patch_signal_and_background_build_the_images():
    """side 6, patch 2, signal 0.7, background 5.0 (no noise): each 6x6 image holds +-0.7 outside the
    two 2x2 corner patches, and 5.0 in the patch of its background; standardize true maps the training
    split to zero mean and unit variance per pixel that varies, with training statistics."""
    train, test, meta = opposing_images()
    assert meta["input"]["dim"] == 36 and meta["image"]["patch"] == 2
    img = rows(train).reshape(-1, 6, 6)
    corners = np.zeros((6, 6), bool)
    corners[:2, :2] = corners[4:, 4:] = True
    np.testing.assert_allclose(np.abs(img[:, ~corners]), 0.7)
    a, b = img[:, :2, :2], img[:, 4:, 4:]
    has_a = (a == 5.0).all(axis=(1, 2))
    assert (has_a ^ (b == 5.0).all(axis=(1, 2))).all()  # each image has exactly one background patch ...
    assert set(np.unique(np.where(has_a[:, None, None], b, a))) == {0.0}  # ... and the other corner blank
    assert (has_a == (train["label"] == 0).to_numpy() ^ (train["group"] != "").to_numpy()).all()
    std_train, std_test, std_meta = opposing_images(standardize=True)
    x, raw = rows(std_train), rows(train)
    varying = raw.std(axis=0) > 0
    np.testing.assert_allclose(x[:, varying].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, varying].std(axis=0), 1, atol=1e-4)
    mean, std = np.array(std_meta["standardize"]["mean"]), np.array(std_meta["standardize"]["std"])
    np.testing.assert_allclose(rows(std_test) * std + mean, rows(test), atol=1e-4)


# ---- labelled sources -----------------------------------------------------------------------
def test_mnist1d_train_split_seed_and_standardize():
    """train_split 0.5 and seed 7 reach the package's make_dataset; standardize channel fits the one
    channel's mean and std on the training split."""
    from mnist1d.data import get_dataset_args, make_dataset

    train, test, meta = make("mnist1d", num_samples=100, train_split=0.5, seed=7, standardize="channel")
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 100, 0.5, 7
    ref = make_dataset(args)
    assert len(train) == len(test) == 50
    np.testing.assert_array_equal(train["label"], ref["y"])
    raw = ref["x"].astype(np.float64)
    mean, std = raw.mean(), raw.std()
    assert meta["standardize"]["over"] == "channel" and meta["standardize"]["mean"] == [pytest.approx(mean)]
    np.testing.assert_allclose(rows(train), (raw - mean) / std, atol=1e-5)
    np.testing.assert_allclose(rows(test), (ref["x_test"] - mean) / std, atol=1e-5)


def test_torchvision_download_true_fetches_into_an_empty_root(tmp_path, monkeypatch, tv, offline):  # noqa: F811
    """download: true hands an empty root to torchvision's own download (stood in for here: it writes
    the idx files); download: false (the default) stops with the error that names the root."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 28, 28)), np.array([3, 1, 4, 1, 5])
    test = rng.integers(0, 256, size=(2, 28, 28)), np.array([9, 2])
    calls = []

    def fetch(self):
        calls.append(self.root)
        if not self._check_exists():
            write_mnist(tmp_path / "root", train, test)

    monkeypatch.setattr(tv.datasets.MNIST, "download", fetch)
    with pytest.raises(FileNotFoundError, match="data.torchvision.root"):
        make("torchvision", name="MNIST", root=str(tmp_path / "root"))
    assert calls == []
    got, got_test, _ = make("torchvision", name="MNIST", root=str(tmp_path / "root"), download=True, standardize=None)
    assert calls and list(got["label"]) == [3, 1, 4, 1, 5] and list(got_test["label"]) == [9, 2]
    np.testing.assert_allclose(rows(got), train[0].reshape(5, -1) / 255, atol=1e-7)


def test_files_subsample_seed_and_label_noise(tmp_path):
    """data.files: subsample_train 12 and subsample_test 5 drawn with seed 6 (the documented streams of
    SeedSequence(6)), then round(0.25 * 12) training labels flipped."""
    (x, y), (xt, yt) = arrays(30, 0), arrays(10, 1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    block = dict(train=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz"), subsample_train=12,
                 subsample_test=5, seed=6, label_noise=0.25)
    train, test, meta = make("files", **block)
    streams = np.random.SeedSequence(6).spawn(3)
    ids = np.sort(np.random.default_rng(streams[0]).choice(30, size=12, replace=False))
    test_ids = np.sort(np.random.default_rng(streams[1]).choice(10, size=5, replace=False))
    np.testing.assert_array_equal(train["source_id"], ids)
    np.testing.assert_array_equal(test["source_id"], test_ids)
    np.testing.assert_array_equal(rows(train), x[ids])
    np.testing.assert_array_equal(train["clean_label"], y[ids])
    flipped = (train["label"] != train["clean_label"]).to_numpy()
    assert flipped.sum() == 3 and meta["planted"]["train_ids"] == np.flatnonzero(flipped).tolist()
    other = make("files", **{**block, "seed": 7})[0]
    assert not np.array_equal(other["source_id"], train["source_id"])


# ---- optimizer schedule -----------------------------------------------------------------------
def test_plateau_on_test_accuracy_with_its_factor_and_threshold():
    """metric test_acc (maximized), factor 0.25, threshold 0.1: a rise under 10% is no improvement, and
    after `patience` such evaluations the multiplier drops by 0.25."""
    from gradscope.optim import Plateau

    plateau = Plateau({"kind": "plateau", "metric": "test_acc", "factor": 0.25, "patience": 1, "threshold": 0.1})
    scales = []
    for acc in (0.5, 0.52, 0.54, 0.7, 0.72, 0.5):  # 0.52 and 0.54 are within 10% of 0.5; 0.7 is not
        plateau.observe({"test_acc": acc, "train_loss": 1.0})
        scales.append(plateau.scale)
    assert scales == [1.0, 1.0, 0.25, 0.25, 0.25, 0.0625]
    loss = Plateau({"kind": "plateau", "metric": "train_loss", "factor": 0.25, "patience": 1, "threshold": 0.1})
    for value in (1.0, 0.95, 0.93):  # falling, but under 10%: flat for a train_loss plateau too
        loss.observe({"train_loss": value, "test_acc": 0.0})
    assert loss.scale == 0.25


# ---- signals and the dashboard ----------------------------------------------------------------
def test_opposing_groups_seed_decides_the_clustering():
    """signals.opposing_groups.seed: the same seed gives the same groups; other seeds give other ones
    on trajectories with no planted structure (k-means starts from the seed)."""
    from support.signals import planted_pair_trajectories

    from gradscope import opposing

    tr = planted_pair_trajectories(seed=3, n=60)
    tr.proj[:] = np.random.default_rng(0).standard_normal(tr.proj.shape)  # no structure left to find
    first = opposing.find_groups(tr, top_k=30, n_groups=4, seed=1)[0]
    pd.testing.assert_frame_equal(first, opposing.find_groups(tr, top_k=30, n_groups=4, seed=1)[0])
    others = [opposing.find_groups(tr, top_k=30, n_groups=4, seed=s)[0] for s in (2, 3, 4)]
    assert any(not first["group"].equals(o["group"]) for o in others)


def test_dashboard_top_k_and_seed_pick_the_examples():
    """dashboard.top_k: each detector's top_k scores per checkpoint; dashboard.seed: the random fill."""
    from gradscope.dashboard import collect

    rng = np.random.default_rng(0)
    steps, n = (0, 5), 40
    train = pd.DataFrame([{"step": s, "example_id": i, "loss": rng.random(), "p_true": 0.5, "margin": 0.0,
                           "grad_norm": 1.0, "label": 0, "planted": i < 2} for s in steps for i in range(n)])
    scores = {(s, i): float(rng.random()) for s in steps for i in range(n)}
    det = pd.DataFrame([{"detector": "el2n", "step": s, "example_id": i, "score": scores[(s, i)], "flagged": False}
                        for s in steps for i in range(n)])
    out = collect.collect_examples(train, det, None, None, max_examples=12, top_k=3, seed=5)
    for s in steps:
        want = sorted(range(n), key=lambda i: -scores[(s, i)])[:3]
        assert out["topk"]["el2n"][str(s)] == want
    kept = {0, 1} | {i for s in steps for i in out["topk"]["el2n"][str(s)]}
    assert len(out["ids"]) == 12 and kept <= set(out["ids"])
    again = collect.collect_examples(train, det, None, None, max_examples=12, top_k=3, seed=5)
    other = collect.collect_examples(train, det, None, None, max_examples=12, top_k=3, seed=6)
    assert again["ids"] == out["ids"] and other["ids"] != out["ids"]
    assert set(other["ids"]) >= kept


def test_torchvision_kwargs_reach_the_dataset_class(tmp_path, tv, offline):  # noqa: F811
    """data.torchvision.kwargs {split: balanced} goes to EMNIST as it is: the files of that split load."""
    from support.sources import write_idx

    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    split_data = {"train": (rng.integers(0, 256, size=(4, 28, 28)), np.array([0, 46, 3, 7])),
                  "test": (rng.integers(0, 256, size=(2, 28, 28)), np.array([5, 1]))}
    for split, (images, labels) in split_data.items():
        write_idx(raw / f"emnist-balanced-{split}-images-idx3-ubyte", images)
        write_idx(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", labels)
    train, test, meta = make("torchvision", name="EMNIST", root=str(tmp_path), kwargs={"split": "balanced"},
                             standardize=None)
    assert list(train["label"]) == [0, 46, 3, 7] and list(test["label"]) == [5, 1]
    assert meta["input"]["n_classes"] == 47  # the balanced split's classes


def test_dashboard_initial_runs_is_how_many_runs_the_page_shows_first(done, browser, tmp_path):  # noqa: F811
    """dashboard.initial_runs 1: the sweep page opens with its first run only; the default (20) shows both."""
    from gradscope.dashboard import build_sweep_dashboard, default_settings
    from support.browser import figure, open_page

    names = ["wd~0.0_seed~0", "wd~1.0_seed~0"]
    for initial, shown in ((1, names[:1]), (20, names)):
        out = tmp_path / f"initial_{initial}.html"
        build_sweep_dashboard("mod", [{"id": f"mod/{n}", "name": n} for n in names], results=done / "results",
                              settings={**default_settings(), "initial_runs": initial}, out=out, index_href=None)
        open_page(browser, out)
        assert sorted({trace.split()[0] for trace in figure(browser, "loss")["names"]}) == shown, initial
