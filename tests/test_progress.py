"""Progress measures (gradscope.progress) against constructed inputs and slow references, on every
model kind with a token embedding; and the workflow stage on the tiny run (modular runs only)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradscope import artifacts, config, progress
from gradscope.models import InputSpec, build_model


def embedding_of_modes(p, d, modes, rng):
    """A (p, d) embedding sum over `modes` {k: amplitude} of amplitude * cos(w_k a + phase) * v_k with
    unit v_k, plus nothing else; its spectrum at k is amplitude * sqrt(p/2) (each |v_k| = 1)."""
    a = np.arange(p)[:, None]
    emb = np.zeros((p, d))
    for k, amp in modes.items():
        v = rng.normal(size=d)
        v /= np.linalg.norm(v)
        emb += amp * np.cos(2 * np.pi * k * a / p + rng.uniform(0, 2 * np.pi)) * v[None, :]
    return emb


@pytest.mark.parametrize("p", [7, 8, 13])
def test_fourier_basis_is_orthonormal_and_has_each_frequency_once(p):
    basis, freqs = progress.fourier_basis(p)
    np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-12)
    assert sorted(freqs.tolist()) == sorted([0] + [k for k in range(1, p // 2 + 1) for _ in range(1 if 2 * k == p else 2)])


@pytest.mark.parametrize("p", [11, 23, 12])
def test_spectrum_of_a_known_sum_of_modes_is_exact(p):
    rng = np.random.default_rng(p)
    modes = {2: 3.0, 5: 1.5, 3: 0.4}
    emb = embedding_of_modes(p, 9, modes, rng) + 0.7  # plus a constant offset in every coordinate
    spectrum, constant = progress.embedding_spectrum(emb)
    expected = np.zeros(p // 2)
    for k, amp in modes.items():
        expected[k - 1] = amp * math.sqrt(p / 2)
    np.testing.assert_allclose(spectrum, expected, atol=1e-10)
    assert constant == pytest.approx(0.7 * math.sqrt(p * 9), rel=1e-12)
    assert progress.top_frequencies(spectrum, 2) == [2, 5]
    every = progress.top_frequencies(spectrum, 50)  # more than there are: all of them, the zero ones last
    assert every[:3] == [2, 5, 3] and sorted(every) == list(range(1, p // 2 + 1))
    assert progress.top_frequencies(np.array([1.0, 2.0, 2.0, 0.5]), 3) == [2, 3, 1]  # ties: the lower first
    total = (emb**2).sum()  # Parseval: the fraction is of the embedding's own squared norm
    assert progress.fraction_in(spectrum, constant, [2, 5]) == pytest.approx((3.0**2 + 1.5**2) * p / 2 / total, rel=1e-10)


def test_spectrum_matches_a_plain_dft_on_random_embeddings():
    """The norm of frequency k from numpy's FFT: |X_k|^2 (k and p-k together) is 2 |X_k|^2 / p in an
    orthonormal basis, for 0 < k < p/2."""
    for p in (13, 16):
        emb = np.random.default_rng(p).normal(size=(p, 6))
        spectrum, constant = progress.embedding_spectrum(emb)
        fft = np.fft.fft(emb, axis=0)
        ref = [math.sqrt(((2 if 2 * k != p else 1) * np.abs(fft[k]) ** 2).sum() / p) for k in range(1, p // 2 + 1)]
        np.testing.assert_allclose(spectrum, ref, rtol=1e-10)
        assert constant == pytest.approx(math.sqrt((np.abs(fft[0]) ** 2).sum() / p), rel=1e-10)
        assert (spectrum**2).sum() + constant**2 == pytest.approx((emb**2).sum(), rel=1e-10)


def pair_sum(p, op):
    pairs = progress.all_pairs(p).numpy()
    return pairs[:, 0] + (1 if op == "add" else -1) * pairs[:, 1]


def least_squares_restricted(logits, p, keys, op):
    """Brute force: fit each class's logits over the pairs by least squares on the explicit basis
    [1, cos(w_k s), sin(w_k s) for k in keys] (not orthogonalized), and return the fitted values."""
    s = pair_sum(p, op)
    cols = [np.ones(p * p)]
    for k in keys:
        cols += [np.cos(2 * np.pi * k * s / p), np.sin(2 * np.pi * k * s / p)]
    basis = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(basis, logits, rcond=None)
    return basis @ coef


def nanda_projection(logits, p, freq):
    """A port of the authors' helpers (get_component_cos_xpy + get_component_sin_xpy), built from their
    normalized 1-D Fourier basis as outer products: the key-frequency component of `logits`."""
    a = np.arange(p)
    cos, sin = np.cos(2 * np.pi * freq * a / p), np.sin(2 * np.pi * freq * a / p)
    cos, sin = cos / np.linalg.norm(cos), sin / np.linalg.norm(sin)
    cos_xpy = (np.outer(cos, cos) - np.outer(sin, sin)).flatten() / math.sqrt(2)
    sin_xpy = (np.outer(sin, cos) + np.outer(cos, sin)).flatten() / math.sqrt(2)
    return np.outer(cos_xpy, cos_xpy @ logits) + np.outer(sin_xpy, sin_xpy @ logits)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_projection_matches_least_squares_and_the_authors_construction(op):
    p, keys = 13, [3, 1, 6]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(p * p, p))
    dirs = progress.key_directions(p, keys, op)
    np.testing.assert_allclose(dirs.T @ dirs, np.eye(2 * len(keys)), atol=1e-12)
    restricted = progress.restricted_logits(logits, dirs)
    np.testing.assert_allclose(restricted, least_squares_restricted(logits, p, keys, op), atol=1e-10)
    excluded = progress.excluded_logits(logits, dirs)
    np.testing.assert_allclose(excluded + restricted - logits.mean(axis=0), logits, atol=1e-10)
    if op == "add":  # their helpers are for a + b
        theirs = sum(nanda_projection(logits, p, k) for k in keys)
        ours = restricted - logits.mean(axis=0, keepdims=True)
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
        # their restricted logits: the trig part plus the mean over pairs of what was removed (bias correction)
        np.testing.assert_allclose(theirs + (logits - theirs).mean(axis=0, keepdims=True), restricted, atol=1e-10)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_restricted_loss_is_the_loss_of_the_known_circuit_and_excluded_of_the_rest(op):
    """Logits = a per-class bias + key-frequency terms cos(w_k (s - c)) (the circuit) + other directions
    (other frequencies of s, and waves in a alone): the restricted logits are exactly bias + circuit,
    the excluded logits exactly bias + the rest."""
    p, keys, loss = 17, [4, 7], "cross_entropy"
    rng = np.random.default_rng(1)
    s, c = pair_sum(p, op)[:, None], np.arange(p)[None, :]
    a = progress.all_pairs(p).numpy()[:, :1]
    bias = rng.normal(size=(1, p))
    circuit = sum(amp * np.cos(2 * np.pi * k * (s - c) / p) for k, amp in zip(keys, (3.0, 2.0)))
    rest = (1.5 * np.cos(2 * np.pi * 2 * (s - c) / p) + 0.8 * np.sin(2 * np.pi * 5 * a / p + c)
            + 0.5 * np.cos(2 * np.pi * 3 * (s + c) / p))
    logits = bias + circuit + rest
    labels = progress.pair_labels(p, op).numpy()
    dirs = progress.key_directions(p, keys, op)
    np.testing.assert_allclose(progress.restricted_logits(logits, dirs), bias + circuit, atol=1e-10)
    np.testing.assert_allclose(progress.excluded_logits(logits, dirs), bias + rest, atol=1e-10)
    train = rng.permutation(p * p)[: p * p // 3]
    restricted = progress.mean_loss(progress.restricted_logits(logits, dirs)[train], labels[train], loss)
    assert restricted == pytest.approx(progress.mean_loss((bias + circuit)[train], labels[train], loss), rel=1e-12)
    # by hand: the circuit peaks at the true class, so its loss is low; the rest carries no answer
    z = (bias + rest)[train]
    by_hand = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(train)), labels[train]])
    excluded = progress.mean_loss(progress.excluded_logits(logits, dirs)[train], labels[train], loss)
    assert excluded == pytest.approx(by_hand, rel=1e-12)
    assert restricted < 0.5 * excluded


MODELS = {
    "mlp_onehot": {"kind": "mlp", "depth": 1, "width": 12, "input_encoding": "onehot"},
    "mlp_embedding": {"kind": "mlp", "depth": 1, "width": 12, "input_encoding": "embedding", "embed_dim": 6},
    "transformer": {"kind": "transformer", "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16},
}


def set_embedding(model, emb):
    """Write a (p, d) embedding of token a where `token_embedding` reads it, by hand per model kind."""
    t = torch.tensor(emb, dtype=torch.float32)
    with torch.no_grad():
        if hasattr(model, "embed"):  # transformer: rows 0..p-1 (row p is "=")
            model.embed.weight[: t.shape[0]] = t
        elif hasattr(model.encode, "embed"):
            model.encode.embed.weight[: t.shape[0]] = t
        else:  # one-hot MLP: input [onehot(a), onehot(b)], so a's columns are the first p
            model.body[0].weight[:, : t.shape[0]] = t.T


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_kinds_embedding_spectrum_and_measures(name):
    p = 11
    spec = InputSpec(kind="tokens", dim=2, vocab=p, n_classes=p)
    torch.manual_seed(0)
    model = build_model(MODELS[name], spec).eval()
    d = progress.token_embedding(model, p).shape[1]
    assert d == {"mlp_onehot": 12, "mlp_embedding": 6, "transformer": 8}[name]
    emb = embedding_of_modes(p, d, {4: 2.0, 1: 1.0}, np.random.default_rng(2))
    set_embedding(model, emb)
    np.testing.assert_allclose(progress.token_embedding(model, p), emb, atol=1e-6)
    # the measures of one checkpoint, each against its definition computed here from the model's own logits
    rng = np.random.default_rng(3)
    order = rng.permutation(p * p)
    train, test = np.sort(order[:50]), np.sort(order[50:])
    row = progress.measures(model, p=p, op="add", train_index=train, test_index=test, loss="cross_entropy", top_k=2)
    assert row["top_frequencies"] == [4, 1] == row["key_frequencies"]
    assert row["top_fraction"] == pytest.approx((4 + 1) * p / 2 / (emb**2).sum(), rel=1e-5)
    pairs = progress.all_pairs(p)
    with torch.no_grad():
        logits = torch.cat([model(pairs[i : i + 1]) for i in range(p * p)]).double()  # one pair at a time
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    ce = torch.nn.functional.cross_entropy
    assert row["train_loss"] == pytest.approx(float(ce(logits[train], labels[train])), rel=1e-5)
    assert row["test_loss"] == pytest.approx(float(ce(logits[test], labels[test])), rel=1e-5)
    fitted = torch.from_numpy(least_squares_restricted(logits.numpy(), p, [4, 1], "add"))
    assert row["restricted_loss"] == pytest.approx(float(ce(fitted[train], labels[train])), rel=1e-5)
    assert row["restricted_loss_all"] == pytest.approx(float(ce(fitted, labels)), rel=1e-5)
    excluded = logits - fitted + logits.mean(dim=0, keepdim=True)
    assert row["excluded_loss"] == pytest.approx(float(ce(excluded[train], labels[train])), rel=1e-5)
    # given key frequencies are used as given; the top ones are still this checkpoint's
    other = progress.measures(model, p=p, op="add", train_index=train, test_index=test, loss="mse", top_k=2, keys=[3])
    assert other["key_frequencies"] == [3] and other["top_frequencies"] == [4, 1]
    assert other["key_fraction"] == pytest.approx(0.0, abs=1e-8)


def test_models_without_a_token_embedding_and_other_ops_are_refused():
    model = build_model({"kind": "mlp", "depth": 1, "width": 4}, InputSpec(kind="dense", dim=3, vocab=0, n_classes=2))
    with pytest.raises(ValueError, match="token embedding"):
        progress.token_embedding(model, 3)
    with pytest.raises(ValueError, match="op add or sub.*'mul'"):
        progress.key_directions(5, [1], "mul")
    assert progress.applies({"generator": "modular", "modular": {"op": "sub"}})
    assert not progress.applies({"generator": "modular", "modular": {"op": "div"}})
    assert not progress.applies({"generator": "planted_flips", "planted_flips": {}})


def test_settings_are_validated_with_the_key_and_what_is_allowed():
    assert config.section("progress") == {"enabled": True, "key_frequencies": 5, "key_frequencies_from": "final"}
    with pytest.raises(config.ConfigError, match="progress.key_frequencies.*0"):
        config.section("progress", {"key_frequencies": 0})
    with pytest.raises(config.ConfigError, match="progress.key_frequencies_from.*'start'.*final.*checkpoint"):
        config.section("progress", {"key_frequencies_from": "start"})


# ---- the workflow stage, on the tiny config's run (conftest.py's `done`) ------------------------------
def test_stage_writes_the_table_for_modular_runs_only_with_sane_values(done):
    for run in ("mod/wd~0.0_seed~0", "mod/wd~1.0_seed~0"):
        folder = done / "results/runs" / run
        pr = artifacts.read_parquet(folder / "progress/progress.parquet")
        metrics = artifacts.read_parquet(folder / "train/metrics.parquet").set_index("step")
        assert list(pr["step"]) == [0, 10, 20]  # every checkpoint (at: [10], plus 0 and the last)
        # p = 7: frequencies 1..3, so the default 5 key frequencies are all three, at every step
        assert all(list(k) == list(pr["key_frequencies"].iloc[-1]) and sorted(k) == [1, 2, 3]
                   for k in pr["key_frequencies"])
        assert all(len(s) == 3 for s in pr["spectrum"])
        assert ((pr["key_fraction"] > 0) & (pr["key_fraction"] <= 1)).all()
        # the stage's own losses are training's (same checkpoints, same pairs); the weight norm is the logged one
        for col in ("train_loss", "test_loss", "weight_norm"):
            np.testing.assert_allclose(pr[col], metrics.loc[pr["step"], col], rtol=1e-5)
        assert pr["weight_norm_logged"].all()
        assert (pr["restricted_loss"] > 0).all() and (pr["excluded_loss"] > 0).all()
        assert (done / "results/runs" / run / "figures/progress.png").stat().st_size > 10_000
        report = (folder / "report.md").read_text()
        assert "## Progress measures of the grokking circuit" in report and "figures/progress.png" in report
        meta = artifacts.read_metadata(folder / "progress/progress.parquet")
        assert meta["gradscope.run_id"] == run and meta["gradscope.config"]["progress"]["key_frequencies"] == 5
    flips = done / "results/runs/flips/seed~0"
    assert not (flips / "progress").exists() and not (flips / "figures/progress.png").exists()
    assert "Progress measures" not in (flips / "report.md").read_text()


def test_key_frequencies_from_the_final_or_each_checkpoint(done, tmp_path):
    """On the tiny run's checkpoints, with 1 key frequency: `final` uses the last checkpoint's top
    frequency at every step; `checkpoint` each step's own."""
    folder = done / "results/runs/mod/wd~1.0_seed~0"
    data_dir = next(done.glob("results/data/modular-*"))
    kw = dict(data_settings={"generator": "modular", "modular": {"p": 7, "op": "add", "train_fraction": 0.5, "seed": 0}},
              loss="cross_entropy", dataset=data_dir, manifest=folder / "train/manifest.json",
              metrics_path=folder / "train/metrics.parquet", run_id="mod/wd~1.0_seed~0")
    final = progress.compute_progress(config.section("progress", {"key_frequencies": 1}), **kw)
    each = progress.compute_progress(config.section("progress", {"key_frequencies": 1,
                                                                 "key_frequencies_from": "checkpoint"}), **kw)
    last_top = final["top_frequencies"].iloc[-1]
    assert all(list(k) == list(last_top) for k in final["key_frequencies"])
    assert all(list(k) == list(t) for k, t in zip(each["key_frequencies"], each["top_frequencies"]))
    assert list(final["top_frequencies"].map(list)) == list(each["top_frequencies"].map(list))
    pd.testing.assert_series_equal(final["restricted_loss"].iloc[-1:], each["restricted_loss"].iloc[-1:])
    with pytest.raises(ValueError, match="op add or sub.*'mul'"):
        progress.compute_progress(config.section("progress"), **{**kw, "data_settings": {
            "generator": "modular", "modular": {"p": 7, "op": "mul"}}})


@pytest.mark.workflow
@pytest.mark.slow
def test_only_modular_add_and_sub_runs_with_progress_enabled_plan_the_stage(tmp_path):
    """A dry run: of a grid over progress.enabled and a run on multiplication, one progress job."""
    from support.workflow import copy_workflow, planned

    small = {"train": {"steps": 4, "log_every": 2, "checkpoints": {"at": [2]}}, "curvature": {"subset_size": 8}}
    cfg = {"device": "cpu", "experiments": {
        "sub": {"data": {"generator": "modular", "modular": {"p": 11, "op": "sub"}}, **small,
                "grid": {"progress.enabled": [True, False]}},
        "mul": {"data": {"generator": "modular", "modular": {"p": 11, "op": "mul"}}, **small}}}
    counts = planned(copy_workflow(tmp_path / "wf", cfg))
    assert counts["train"] == 3 and counts["progress"] == 1
