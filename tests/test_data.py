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
