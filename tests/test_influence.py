"""Train-to-test influence (gradscope.influence): brute force, exact TracIn-CP and captum's TracInCPFast."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from gradscope import influence
from gradscope.examples import per_example_gradients, per_example_stats
from gradscope.models import InputSpec, build_model


def _arrays(seed, C=3, n_train=37, n_test=11, k=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(C, n_train, k)), rng.normal(size=(C, n_test, k)), rng.uniform(0.1, 1.0, size=C))


def test_tracin_cp_is_the_sum_over_checkpoints_of_lr_times_dots():
    train, test, lr = _arrays(0)
    brute = np.zeros((test.shape[1], train.shape[1]))
    for c in range(len(lr)):
        for t in range(test.shape[1]):
            for n in range(train.shape[1]):
                brute[t, n] += lr[c] * float(test[c, t] @ train[c, n])
    np.testing.assert_allclose(influence.tracin_cp(train, test, lr), brute, rtol=1e-12)


@pytest.mark.parametrize("block", [4, 512])
def test_top_influences_against_a_full_sort(block):
    train, test, lr = _arrays(1)
    full = influence.tracin_cp(train, test, lr)
    top = influence.top_influences(train, test, lr, top_k=6, block=block)
    for t in range(test.shape[1]):
        order = np.argsort(-full[t], kind="stable")
        np.testing.assert_array_equal(top["ids"][t, 0], order[:6])  # proponents: largest first
        np.testing.assert_array_equal(top["ids"][t, 1], order[::-1][:6])  # opponents: most negative first
        np.testing.assert_allclose(top["score"][t, 0], full[t, order[:6]], rtol=1e-5)
        for kind in range(2):  # contributions: one per checkpoint, summing to the score
            ids = top["ids"][t, kind]
            per_c = lr[:, None] * np.einsum("cd,cnd->cn", test[:, t], train[:, ids])
            np.testing.assert_allclose(top["contributions"][t, kind].T, per_c, rtol=1e-5, atol=1e-6)
    assert (top["score"][:, 0] >= top["score"][:, 0, -1:]).all() and (top["score"][:, 1, 0] < 0).all()


def _trained_checkpoints(model, x, y, lrs, steps_between=15):
    """SGD on (x, y); a copy of the model before each stretch, with the lr used in it (TracIn-CP's checkpoints)."""
    model = copy.deepcopy(model)
    out = []
    for lr in lrs:
        out.append((copy.deepcopy(model).eval(), lr))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(steps_between):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return out


def _problem(seed=0, n_train=80, n_test=20, dim=12, classes=3):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=gen, dtype=torch.float64)
    x = torch.randn(n_train + n_test, dim, generator=gen, dtype=torch.float64)
    y = (x @ teacher).argmax(1)
    model = build_model({"kind": "mlp", "depth": 2, "width": 32, "activation": "tanh"},
                        InputSpec("dense", dim, 0, classes)).double()
    return model, x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_projected_scores_rank_like_exact_tracin_at_k_1024():
    # Exact TracIn-CP from full per-example gradients against the same from the stored kind of
    # projections (per_example_stats' grad_proj, "auto" = hadamard at k = 1024): Spearman >= 0.9
    # over all train-test pairs; at k = 8 the ranking is much worse (the projection matters).
    model, x, y, xt, yt = _problem()
    ckpts = _trained_checkpoints(model, x, y, [0.5, 0.3, 0.1])
    lr = np.array([lr for _, lr in ckpts])
    exact = influence.tracin_cp(np.stack([per_example_gradients(m, x, y).numpy() for m, _ in ckpts]),
                                np.stack([per_example_gradients(m, xt, yt).numpy() for m, _ in ckpts]), lr)

    def projected(k):
        tr = np.stack([per_example_stats(m, x, y, proj_dim=k, seed=2)["grad_proj"] for m, _ in ckpts])
        te = np.stack([per_example_stats(m, xt, yt, proj_dim=k, seed=2)["grad_proj"] for m, _ in ckpts])
        return influence.tracin_cp(tr, te, lr)

    rho = spearmanr(exact.ravel(), projected(1024).ravel()).statistic
    rho_small = spearmanr(exact.ravel(), projected(8).ravel()).statistic
    print(f"spearman k=1024: {rho:.4f}, k=8: {rho_small:.4f}")
    assert rho >= 0.9 and rho_small < rho - 0.05, (rho, rho_small)


def test_matches_captum_tracin_cp_fast_on_the_last_layer(tmp_path):
    # captum's TracInCPFast scores with the gradient of the final Linear's weight only: the same
    # quantity as tracin_cp over per-example gradients with every other parameter frozen.
    from captum import influence as captum_influence  # in the `test` extra: never skipped
    model, x, y, xt, yt = _problem(seed=3, n_train=30, n_test=7)
    ckpts = _trained_checkpoints(model, x, y, [0.4, 0.2])
    paths = []
    for i, (m, lr) in enumerate(ckpts):
        paths.append(str(tmp_path / f"ckpt{i}.pt"))
        torch.save({"state": m.state_dict(), "lr": lr}, paths[-1])
    final = model.body[-1]

    def load(net, path):
        saved = torch.load(path)
        net.load_state_dict(saved["state"])
        return saved["lr"]

    tracin = captum_influence.TracInCPFast(model, final, torch.utils.data.TensorDataset(x, y), paths,
                                           checkpoints_load_func=load,
                                           loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=8)
    theirs = tracin.influence((xt, yt)).detach().numpy()
    grads = {}
    for split, (inp, tgt) in {"train": (x, y), "test": (xt, yt)}.items():
        per_ckpt = []
        for m, _ in ckpts:
            m = copy.deepcopy(m)
            for name, p in m.named_parameters():
                p.requires_grad_(name == "body.4.weight")
            per_ckpt.append(per_example_gradients(m, inp, tgt).numpy())
        grads[split] = np.stack(per_ckpt)
    ours = influence.tracin_cp(grads["train"], grads["test"], np.array([lr for _, lr in ckpts]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10 * np.abs(theirs).max())


def test_flipped_opponents_counts_true_class_flips_against_chance():
    # 4 training examples: ids 0 and 1 flipped (true class 0 and 1), 2 and 3 clean.
    train = pd.DataFrame({"example_id": [0, 1, 2, 3], "label": [1, 0, 0, 1], "clean_label": [0, 1, 0, 1],
                          "planted": [True, True, False, False]})
    rows = pd.DataFrame({
        "test_id": [10, 10, 11, 11, 10, 10, 11, 11],
        "test_label": [0, 0, 1, 1, 0, 0, 1, 1],
        "kind": ["opponent"] * 4 + ["proponent"] * 4,
        "train_id": [0, 2, 0, 3, 2, 3, 3, 1],
        "train_label": [1, 0, 1, 1, 0, 1, 1, 0],
        "train_clean_label": [0, 0, 0, 1, 0, 1, 1, 1],
        "train_planted": [True, False, True, False, False, False, False, True],
    })
    out = influence.flipped_opponents(rows, train)
    # test 10 (class 0): opponent 0 is a flip of true class 0 -> 1/2; test 11 (class 1): opponent 0's
    # true class is 0, not 1 -> 0. Chance: one of 4 training examples is a class-0 flip, one a class-1 flip.
    assert out["n_flipped"] == 2
    assert out["opponent"] == {"rate": 0.25, "chance": 0.25, "lift": 1.0}
    assert out["proponent"]["rate"] == 0.25  # test 11's proponent 1 is a flip of true class 1
    assert influence.flipped_opponents(rows, train.assign(planted=False)) is None
