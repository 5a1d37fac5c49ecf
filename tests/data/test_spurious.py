"""A planted spurious feature on the labelled sources (data.<source>.spurious): the attributes, their
encoding in the inputs (patch, stripe, channel), the planted groups, the errors, and the shortcut
a model takes. Tiny data in the sources' real formats; nothing is downloaded."""

import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import torch

from gradscope import config, data, models, scoring
from gradscope.config import ConfigError
from support.sources import make, rows, settings, write_and_load, write_cifar10


@pytest.fixture
def image_module(tmp_path, monkeypatch):
    """A module of data factories in a fresh working directory; returns its import name."""
    name = f"spurious_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text('''
import numpy as np


def images(n_train=40, n_test=20, classes=5, channels=3, side=8):
    """Random images [channels, side, side], labels cycling through the classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(n_train + n_test, channels, side, side))
    y = np.arange(n_train + n_test) % classes
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
''')
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    return name


def attribute(meta, split):
    return np.asarray(meta["spurious"]["attribute"][split])


def difference(with_feature, without, shape):
    """What the spurious feature added, (n, *shape), the two datasets otherwise equal."""
    return (rows(with_feature) - rows(without)).reshape(len(with_feature), *shape)


def expected_patches(attrs, shape, size, strength):
    """The documented layout, recomputed: patch s at row s // (W // size), column s % (W // size)."""
    out = np.zeros((len(attrs), *shape))
    across = shape[2] // size
    for i, s in enumerate(attrs):
        r, c = divmod(int(s), across)
        out[i, :, r * size:(r + 1) * size, c * size:(c + 1) * size] = strength
    return out


def check_groups(train, test, meta, labels_train, labels_test):
    """group column, planted column, meta["planted"] and the attributes all say the same."""
    for split, df, labels in (("train", train, labels_train), ("test", test, labels_test)):
        aligned = attribute(meta, split) == labels
        assert list(df["group"]) == ["aligned" if a else "conflicting" for a in aligned]
        assert (df["planted"].to_numpy() == ~aligned).all()
        assert meta["spurious"]["aligned_fraction"][split] == pytest.approx(aligned.mean())
        planted_groups = meta["planted"]["groups" if split == "train" else "test_groups"]
        assert planted_groups == {"aligned": np.flatnonzero(aligned).tolist(),
                                  "conflicting": np.flatnonzero(~aligned).tolist()}
    assert meta["planted"]["train_ids"] == meta["planted"]["groups"]["conflicting"]


# ---- the attributes ---------------------------------------------------------------------------
def test_training_split_has_exactly_the_aligned_count_and_the_other_draws_do_not_move():
    plain = make("mnist1d", num_samples=400, seed=3, subsample_train=250, subsample_test=60)
    train, test, meta = make("mnist1d", num_samples=400, seed=3, subsample_train=250, subsample_test=60,
                             spurious={"aligned": 0.9})
    s, y = attribute(meta, "train"), train["label"].to_numpy()
    assert (s == y).sum() == round(0.9 * 250) == 225
    assert ((s != y) & (s >= 0) & (s < 10)).sum() == 25  # the others: another class
    check_groups(train, test, meta, y, test["label"].to_numpy())
    for a, b in ((train, plain[0]), (test, plain[1])):  # the subsamples (first streams of the seed) are the same
        assert (a["source_id"] == b["source_id"]).all() and (a["label"] == b["label"]).all()
    # the documented draw: spurious_attributes on the fourth stream of SeedSequence(seed)
    expected = data.spurious_attributes(y, test["label"].to_numpy(), 10, 0.9, "random",
                                        np.random.default_rng(np.random.SeedSequence(3).spawn(4)[3]))
    assert (expected[0] == s).all() and (expected[1] == attribute(meta, "test")).all()
    assert meta["spurious"] | {"attribute": None, "aligned_fraction": None} == {
        "aligned": 0.9, "test": "random", "kind": "stripe", "size": 3, "strength": 2.0, "attribute": None,
        "aligned_fraction": None}
    # spurious null (the default) is the dataset of before: no group column, nothing planted
    none = make("mnist1d", num_samples=400, seed=3, subsample_train=250, subsample_test=60, spurious=None)
    pd.testing.assert_frame_equal(none[0], plain[0])
    assert "group" not in plain[0].columns and plain[2]["planted"] is None and "spurious" not in plain[2]


def test_test_split_is_random_or_reversed():
    train, test, meta = make("mnist1d", num_samples=2000, train_split=0.5, seed=1, spurious={"test": "random"})
    y, s = test["label"].to_numpy(), attribute(meta, "test")
    # about 1/K aligned (K = 10, 1000 test examples: sd 0.0095); the training rule (0.95) or reversed (0) fail
    assert 0.06 < (s == y).mean() < 0.14
    assert np.bincount(s, minlength=10).min() > 60  # every class drawn (100 expected each)
    assert train["group"].eq("aligned").sum() == round(0.95 * 1000)
    _, rtest, rmeta = make("mnist1d", num_samples=2000, train_split=0.5, seed=1, spurious={"test": "reversed"})
    assert (attribute(rmeta, "test") == (y + 1) % 10).all() and rmeta["spurious"]["aligned_fraction"]["test"] == 0
    assert (rtest["group"] == "conflicting").all() and rmeta["planted"]["test_groups"]["aligned"] == []
    assert rmeta["spurious"]["attribute"]["train"] == meta["spurious"]["attribute"]["train"]  # drawn first


# ---- the encodings ----------------------------------------------------------------------------
def test_stripe_on_mnist1d_after_standardization():
    block = dict(num_samples=300, seed=5, standardize="feature")
    plain = make("mnist1d", **block)
    train, test, meta = make("mnist1d", **block, spurious={"aligned": 0.8, "size": 4, "strength": 1.5})
    assert meta["standardize"] == plain[2]["standardize"]  # fitted before the feature is added
    for split, df, ref in (("train", train, plain[0]), ("test", test, plain[1])):
        expected = np.zeros((len(df), 1, 40), dtype=np.float32)
        for i, s in enumerate(attribute(meta, split)):
            expected[i, 0, 4 * s:4 * s + 4] = 1.5
        np.testing.assert_array_equal(np.stack(df["x"]), np.stack(ref["x"]) + expected.reshape(len(df), 40))
    check_groups(train, test, meta, train["label"].to_numpy(), test["label"].to_numpy())


def test_stripe_on_flat_vectors_from_files(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 12)).astype(np.float32), np.arange(30) % 4
    np.savez(tmp_path / "train.npz", x=x[:20], y=y[:20])
    np.savez(tmp_path / "test.npz", x=x[20:], y=y[20:])
    block = {"train": str(tmp_path / "train.npz"), "test": str(tmp_path / "test.npz")}
    train, test, meta = make("files", **block, spurious={"aligned": 0.5, "test": "reversed", "kind": "stripe",
                                                         "size": 2, "strength": 0.5})
    assert meta["spurious"]["kind"] == "stripe" and train["group"].eq("aligned").sum() == 10
    assert (attribute(meta, "test") == (y[20:] + 1) % 4).all() and (test["group"] == "conflicting").all()
    for split, df, xs in (("train", train, x[:20]), ("test", test, x[20:])):
        expected = np.zeros((len(df), 12), dtype=np.float32)
        for i, s in enumerate(attribute(meta, split)):
            expected[i, 2 * s:2 * s + 2] = 0.5
        np.testing.assert_array_equal(np.stack(df["x"]), xs + expected)  # float32, as added
    with pytest.raises(ValueError, match=r"data\.files\.spurious\.size: 4: 4 stripes .* need 16 positions .* "
                                         r"allowed: size at most 3"):
        make("files", **block, spurious={"size": 4})


def test_patch_on_images_from_a_python_factory(image_module):
    block = dict(factory=f"{image_module}:images", standardize="channel")
    plain = make("python", **block)
    train, test, meta = make("python", **block, spurious={"size": 2, "strength": 3.0, "aligned": 0.75})
    assert meta["input"]["shape"] == [3, 8, 8] and meta["spurious"]["kind"] == "patch"  # auto: images get patches
    for split, df, ref in (("train", train, plain[0]), ("test", test, plain[1])):
        got = difference(df, ref, [3, 8, 8])
        np.testing.assert_allclose(got, expected_patches(attribute(meta, split), [3, 8, 8], 2, 3.0), atol=1e-5)
    assert train["group"].eq("aligned").sum() == 30
    check_groups(train, test, meta, train["label"].to_numpy(), test["label"].to_numpy())
    # 5 patches of 3x3 in an 8x8 image: 2 across, 2 down
    with pytest.raises(ValueError, match=r"data\.python\.spurious\.size: 3: 5 patches of 3x3 .* do not fit in a 8x8 "
                                         r"image \(4 fit\); allowed: size at most 2"):
        make("python", **block, spurious={"size": 3})
    with pytest.raises(ValueError, match=r"data\.mnist1d\.spurious\.kind: 'patch' needs images"):
        make("mnist1d", num_samples=100, spurious={"kind": "patch"})


def test_channel_on_images_and_its_limit(image_module):
    block = dict(factory=f"{image_module}:images", kwargs={"classes": 3, "channels": 3})
    plain = make("python", **block)
    train, test, meta = make("python", **block, spurious={"kind": "channel", "strength": -1.0, "test": "reversed"})
    assert (attribute(meta, "test") == (test["label"].to_numpy() + 1) % 3).all()
    for split, df, ref in (("train", train, plain[0]), ("test", test, plain[1])):
        expected = np.zeros((len(df), 3, 8, 8))
        expected[np.arange(len(df)), attribute(meta, split)] = -1.0
        np.testing.assert_allclose(difference(df, ref, [3, 8, 8]), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"data\.python\.spurious\.kind: 'channel' needs a channel per class, 5 "
                                         r"classes, but inputs of shape \[3, 8, 8\] have 3 channels; allowed:"):
        make("python", factory=f"{image_module}:images", spurious={"kind": "channel"})
    with pytest.raises(ValueError, match=r"data\.mnist1d\.spurious\.kind: 'channel' .* 10 classes, but inputs of "
                                         r"shape \[1, 40\] have 1 channel;"):
        make("mnist1d", num_samples=100, spurious={"kind": "channel"})


def test_patch_on_cifar10_through_torchvision(tmp_path, monkeypatch, tv, offline):
    write_cifar10(tmp_path / "root", monkeypatch, tv, per_batch=4, n_test=6)
    block = dict(name="CIFAR10", root=str(tmp_path / "root"))
    plain = make("torchvision", **block)
    train, test, meta = make("torchvision", **block, spurious={"aligned": 0.9, "size": 3, "strength": 2.5,
                                                               "test": "reversed"})
    assert len(train) == 20 and train["group"].eq("aligned").sum() == 18
    assert (attribute(meta, "test") == (test["label"].to_numpy() + 1) % 10).all()
    for split, df, ref in (("train", train, plain[0]), ("test", test, plain[1])):
        got = difference(df, ref, [3, 32, 32])  # after channel standardization (the default): strength 2.5 exactly
        np.testing.assert_allclose(got, expected_patches(attribute(meta, split), [3, 32, 32], 3, 2.5), atol=1e-5)
    x, _, df = write_and_load(tmp_path, train, test, meta)  # the group column is declared and reads back
    assert list(df["group"]) == list(train["group"]) and x.shape == (20, 3, 32, 32)
    _, _, test_df = data.load_split(tmp_path, "test")
    assert list(test_df["group"]) == list(test["group"])
    with pytest.raises(ValueError, match=r"data\.torchvision\.spurious\.size: 11: 10 patches of 11x11"):
        make("torchvision", **block, spurious={"size": 11})
    with pytest.raises(ValueError, match=r"data\.torchvision\.spurious\.kind: 'channel' .* 10 classes, but inputs "
                                         r"of shape \[3, 32, 32\] have 3 channels"):
        make("torchvision", **block, spurious={"kind": "channel"})


# ---- settings -----------------------------------------------------------------------------------
def test_label_noise_with_a_spurious_feature_is_refused():
    with pytest.raises(ConfigError, match=r"data\.mnist1d\.label_noise.*0\.1 together with data\.mnist1d\.spurious.*"
                                          r"allowed: label_noise 0"):
        settings("mnist1d", {"label_noise": 0.1, "spurious": {}})
    filled = settings("mnist1d", {"spurious": {}})["mnist1d"]["spurious"]
    assert filled == {"aligned": 0.95, "test": "random", "kind": "auto", "size": 3, "strength": 2.0}
    with pytest.raises(ValueError, match=r"data\.mnist1d\.label_noise: 0\.1 together with"):  # library callers too
        data.generate({"generator": "mnist1d", "mnist1d": {"num_samples": 100, "label_noise": 0.1, "spurious": {}}})
    with pytest.raises(ConfigError, match=r"spurious.*'sometimes'.*allowed: 'random', 'reversed'"):
        settings("mnist1d", {"spurious": {"test": "sometimes"}})


def test_planted_groups_score_with_evaluate_groups():
    """meta["planted"] has opposing_features' structure: recovered groups that are exactly the
    conflicting and (some) aligned examples are pure and found as the planted pair."""
    _, _, meta = make("mnist1d", num_samples=200, seed=2, spurious={"aligned": 0.9})
    planted = meta["planted"]
    conflicting, aligned = planted["groups"]["conflicting"], planted["groups"]["aligned"][:16]
    groups = pd.DataFrame({"step_from": 0, "step_to": 10, "group": [0] * len(conflicting) + [1] * len(aligned),
                           "example_id": conflicting + aligned})
    pairs = pd.DataFrame({"step_from": [0], "step_to": [10], "group_a": [0], "group_b": [1], "opposing": [True]})
    out = scoring.evaluate_groups(groups, pairs, planted["train_ids"], planted["groups"])
    assert out["mean_purity"] == 1.0 and out["planted_pair_found"] and out["planted_pair_steps"] == [10]


# ---- the shortcut ---------------------------------------------------------------------------------
def test_a_model_takes_the_shortcut_and_fails_the_conflicting_test_group():
    """An MLP trained 300 steps on 1000 MNIST-1D examples, 95% aligned: near-perfect on the aligned test
    examples, far worse on the conflicting ones (measured: 0.95 and 0.10; 0.95 / 0.09, 1.0 / 0.11 with
    other seeds)."""
    cfg = {"generator": "mnist1d", "mnist1d": {"num_samples": 2000, "subsample_train": 1000,
                                               "spurious": {"aligned": 0.95, "test": "random"}}}
    train, test, meta = data.generate(cfg)
    (x, y), (xt, yt) = (data.split_tensors(df, meta["input"]["shape"]) for df in (train, test))
    torch.manual_seed(0)
    model = models.build_model(config.section("model", {"kind": "mlp"}), models.InputSpec.from_dict(meta["input"]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        correct = (model(xt).argmax(1) == yt).numpy()
    group = test["group"].to_numpy()
    acc = {name: correct[group == name].mean() for name in ("aligned", "conflicting")}
    assert (group == "aligned").sum() > 20 and acc["aligned"] > 0.8 and acc["conflicting"] < acc["aligned"] - 0.4, acc
