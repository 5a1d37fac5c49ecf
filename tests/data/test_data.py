import numpy as np
import pytest

from gradscope import data


def flips(**kw):
    cfg = dict(n_train=300, n_test=100, n_features=5, n_classes=4, teacher="mlp", teacher_width=8, flip_fraction=0.2, seed=3)
    cfg.update(kw)
    return data.generate({"generator": "planted_flips", "planted_flips": cfg})


def test_planted_flips_ground_truth_is_exactly_the_flipped_labels():
    train, test, meta = flips()
    flipped = train["label"] != train["clean_label"]
    assert flipped.sum() == 60
    assert (flipped == train["planted"]).all()
    assert sorted(train.loc[flipped, "example_id"]) == meta["planted"]["train_ids"]
    assert not test["planted"].any() and (test["label"] == test["clean_label"]).all()
    assert set(train["label"]) <= set(range(4))


def test_planted_flips_is_seeded():
    a, b, c = flips()[0], flips()[0], flips(seed=4)[0]
    assert a.equals(b)
    assert not a["planted"].equals(c["planted"])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_modular_labels_and_split_by_brute_force(op):
    p = 11
    train, test, meta = data.generate({"generator": "modular", "modular": {"p": p, "op": op, "train_fraction": 0.3, "seed": 1}})
    both = np.concatenate([train[["a", "b", "label"]].to_numpy(), test[["a", "b", "label"]].to_numpy()])
    pairs = {(a, b) for a, b, _ in both}
    expected_pairs = {(a, b) for a in range(p) for b in range(1 if op == "div" else 0, p)}
    assert pairs == expected_pairs and len(both) == len(expected_pairs)  # every pair exactly once
    for a, b, y in both:
        if op == "div":
            assert (y * b) % p == a  # y = a / b  <=>  y * b = a (mod p)
        else:
            assert y == {"add": a + b, "sub": a - b, "mul": a * b}[op] % p
    assert len(train) == round(0.3 * len(expected_pairs))
    assert meta["input"] == {"kind": "tokens", "dim": 2, "vocab": p, "n_classes": p}


def test_modular_division_needs_a_prime():
    with pytest.raises(ValueError, match="prime"):
        data.generate({"generator": "modular", "modular": {"p": 12, "op": "div", "train_fraction": 0.5, "seed": 0}})


def test_written_dataset_reads_back_as_tensors(tmp_path):
    train, test, meta = flips()
    paths = [tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "meta.json"]
    data.write_dataset(train, test, meta, *paths)
    x, y, df = data.load_split(tmp_path, "train")
    assert x.shape == (300, 5) and y.shape == (300,)
    np.testing.assert_allclose(x.numpy(), np.stack(train["x"]))
    assert data.load_meta(tmp_path) == meta


# ---- opposing_features ---------------------------------------------------------------------
def opposing(**kw):
    cfg = dict(n_train=250, n_test=120, side=8, n_classes=2, patch=3, signal=0.4, background=3.0,
               minority_fraction=0.1, noise=1.0, seed=0, standardize=False)
    cfg.update(kw)
    return data.generate({"generator": "opposing_features", "opposing_features": cfg})


def images(df, side=8):
    return np.stack(df["x"]).reshape(len(df), side, side)


def test_every_generator_runs_with_its_schema_defaults():
    from gradscope.config import dataset_id, expand_runs, load_config

    for name in data.GENERATORS:
        runs = expand_runs(load_config({"experiments": {"e": {"data": {"generator": name}}}}))
        train, test, meta = data.generate(runs[0].settings["data"])  # schema keys are exactly the parameters
        assert len(train) == meta["n_train"] and len(test) == meta["n_test"]
        assert dataset_id(runs[0].settings).startswith(name + "-")


@pytest.mark.parametrize("n_train, n_classes, fraction", [(250, 2, 0.1), (200, 3, 0.1), (101, 2, 0.25)])
def test_opposing_group_sizes_are_the_rounded_minority_fraction(n_train, n_classes, fraction):
    train, test, meta = opposing(n_train=n_train, n_classes=n_classes, minority_fraction=fraction)
    for df, groups in ((train, meta["planted"]["groups"]), (test, meta["planted"]["test_groups"])):
        counts = np.bincount(df["label"], minlength=n_classes)
        assert counts.max() - counts.min() <= 1  # balanced classes
        # documented: int(round(minority_fraction * class size)) per split (Python rounding)
        assert len(groups["group_a_background_in_b"]) == int(round(fraction * counts[1]))
        assert len(groups["group_b_background_in_a"]) == int(round(fraction * counts[0]))
        for name, ids in groups.items():
            assert ids == sorted(df.loc[df["group"] == name, "example_id"])
        assert (df["planted"] == (df["group"] != "")).all()
    assert meta["planted"]["train_ids"] == sorted(train.loc[train["planted"], "example_id"])
    assert meta["planted"]["train_ids"] == sorted(sum(meta["planted"]["groups"].values(), []))


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_opposing_members_carry_the_other_class_background(noise):
    train, test, meta = opposing(n_classes=3, noise=noise)
    for df in (train, test):
        img = images(df)
        a_patch, b_patch = img[:, :3, :3].mean(axis=(1, 2)), img[:, 5:, 5:].mean(axis=(1, 2))
        has_a, has_b = a_patch > 1.5, b_patch > 1.5  # background 3.0 vs 0
        if noise == 0:
            assert set(np.round(a_patch, 5)) <= {0.0, 3.0} and set(np.round(b_patch, 5)) <= {0.0, 3.0}
        y, g = df["label"].to_numpy(), df["group"].to_numpy()
        in_ab, in_ba, none = g == "group_a_background_in_b", g == "group_b_background_in_a", g == ""
        assert in_ab.any() and in_ba.any()
        assert (y[in_ab] == 1).all() and has_a[in_ab].all() and not has_b[in_ab].any()
        assert (y[in_ba] == 0).all() and has_b[in_ba].all() and not has_a[in_ba].any()
        assert (has_a[none] == (y[none] == 0)).all() and (has_b[none] == (y[none] == 1)).all()
        assert not (has_a | has_b)[y == 2].any()  # classes beyond A and B carry no background
    assert meta["input"] == {"kind": "dense", "dim": 64, "vocab": 0, "n_classes": 3}


def test_opposing_background_dominates_the_class_signal_at_the_defaults():
    from gradscope.config import load_schema

    defaults = {k: v["default"] for k, v in load_schema()["$defs"]["opposing_features"]["properties"].items()}
    cfg = {**defaults, "n_train": 40, "n_test": 10, "noise": 0.0}
    train, _, meta = data.generate({"generator": "opposing_features", "opposing_features": cfg})
    side, patch, signal, background = cfg["side"], cfg["patch"], cfg["signal"], cfg["background"]
    img = images(train, side)
    mask = np.zeros((side, side), dtype=bool)
    mask[:patch, :patch] = mask[side - patch:, side - patch:] = True
    background_norm = np.linalg.norm(img * mask, axis=(1, 2))
    template_norm = np.linalg.norm(img * ~mask, axis=(1, 2))
    np.testing.assert_allclose(background_norm, background * patch, rtol=1e-6)
    np.testing.assert_allclose(template_norm, signal * np.sqrt(side**2 - 2 * patch**2), rtol=1e-6)
    assert (background_norm / template_norm > 3).all()  # designed ratio 9 / 2.71 = 3.3
    # the template is the class's own: same pattern within a class, different between classes
    flat = img * ~mask
    for c in range(cfg["n_classes"]):
        same = flat[train["label"] == c]
        assert np.allclose(same, same[0])
    assert not np.allclose(flat[train["label"] == 0][0], flat[train["label"] == 1][0])


def test_opposing_is_seeded_and_train_does_not_depend_on_n_test():
    a, b, c = opposing()[0], opposing()[0], opposing(seed=1)[0]
    assert a.equals(b) and not a["group"].equals(c["group"])
    d = opposing(n_test=7)[0]
    assert a.equals(d)


def test_opposing_patches_must_fit():
    with pytest.raises(ValueError, match="fit"):
        opposing(side=5, patch=3)


# ---- digits ---------------------------------------------------------------------------------
def digits(**kw):
    cfg = dict(train_fraction=0.75, label_noise=0.1, seed=0, standardize=True)
    cfg.update(kw)
    return data.generate({"generator": "digits", "digits": cfg})


def test_digits_shape_classes_and_planted_noise_are_exact():
    train, test, meta = digits()
    assert len(train) == round(0.75 * 1797) == 1348 and len(test) == 1797 - 1348
    assert meta["input"] == {"kind": "dense", "dim": 64, "vocab": 0, "n_classes": 10}
    assert np.stack(train["x"]).shape == (1348, 64)
    assert set(train["clean_label"]) == set(range(10)) and set(train["label"]) <= set(range(10))
    noisy = train["label"] != train["clean_label"]
    assert noisy.sum() == round(0.1 * 1348) == 135
    assert (noisy == train["planted"]).all()
    assert meta["planted"]["train_ids"] == sorted(train.loc[noisy, "example_id"])
    assert not test["planted"].any() and (test["label"] == test["clean_label"]).all()
    # the split does not depend on the noise, and no noise means no planted truth
    clean_train, _, clean_meta = digits(label_noise=0.0)
    assert clean_meta["planted"] is None and not clean_train["planted"].any()
    assert (clean_train["label"] == train["clean_label"]).all()


def test_digits_are_the_real_sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    target = {row.tobytes(): y for row, y in zip(bunch.data.astype(np.float32), bunch.target)}
    train, test, meta = digits(standardize=False)
    assert meta["standardize"] is None
    both = [(r, y) for df in (train, test) for r, y in zip(df["x"], df["clean_label"])]
    assert len(both) == 1797 and all(target[np.asarray(r, dtype=np.float32).tobytes()] == y for r, y in both)


def test_standardization_uses_training_statistics_only():
    raw_train, raw_test, _ = digits(standardize=False)
    train, test, meta = digits()
    x, xt = np.stack(train["x"]).astype(np.float64), np.stack(test["x"]).astype(np.float64)
    raw = np.stack(raw_train["x"]).astype(np.float64)
    varying = raw.std(axis=0) > 0
    assert (~varying).any()  # the digits have pixels that are always blank
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, atol=1e-4)
    np.testing.assert_allclose(x[:, ~varying], 0, atol=1e-6)
    assert np.abs(xt.mean(axis=0)).max() > 1e-2  # test inputs use training statistics, so are not exactly standardized
    mean, std = np.array(meta["standardize"]["mean"]), np.array(meta["standardize"]["std"])
    np.testing.assert_allclose(mean, raw.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(xt * std + mean, np.stack(raw_test["x"]), atol=1e-4)  # undoable
    assert (train["label"] == raw_train["label"]).all()


def test_planted_flips_standardize_keeps_labels():
    plain, plain_test, m0 = flips()
    train, test, meta = flips(standardize=True)
    assert m0["standardize"] is None and train["label"].equals(plain["label"]) and test["label"].equals(plain_test["label"])
    np.testing.assert_allclose(np.stack(train["x"]).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.stack(train["x"]).std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("make", [digits, opposing])
def test_new_datasets_read_back_with_load_split(tmp_path, make):
    train, test, meta = make()
    paths = [tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "meta.json"]
    data.write_dataset(train, test, meta, *paths)
    for split, df in (("train", train), ("test", test)):
        x, y, back = data.load_split(tmp_path, split)
        assert x.shape == (len(df), meta["input"]["dim"]) and y.shape == (len(df),)
        np.testing.assert_allclose(x.numpy(), np.stack(df["x"]))
        assert (back["planted"].to_numpy() == df["planted"].to_numpy()).all()
        if "group" in df.columns:
            assert list(back["group"]) == list(df["group"])
    assert data.load_meta(tmp_path) == meta
