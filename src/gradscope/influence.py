"""Train-to-test influence: which training examples pushed a test example's loss down or up, and when.

TracIn-CP (Pruthi et al. 2020): the influence of training example z on test example z' is

    TracInCP(z, z') = sum_c lr_c <grad loss(z; w_c), grad loss(z'; w_c)>

over the checkpoints c, with lr_c the learning rate in force at checkpoint c (its last logged
value at or before it, as for the `tracin` self-influence detector). Positive: a *proponent*
(a gradient step on z lowers the loss on z'); negative: an *opponent* (it raises it). Here the
gradients are the stored projections (`examples/step=*/part-0.parquet`, column grad_proj:
inner products preserved in expectation, gradscope.projection), so a score costs k
multiply-adds per checkpoint instead of a pass over all parameters; larger `examples.proj_dim`
gives scores closer to the exact ones (tests/test_influence.py measures the rank correlation).
Self-influence (z = z') is the `tracin` detector (gradscope.signals).

Everything here is pure computation on arrays and tables; gradscope.pipeline.compute_influence reads
the tables and writes the artifacts.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

KINDS = ("proponent", "opponent")
log = logging.getLogger(__name__)
TEST_BLOCK = 512  # test examples scored at a time (the scores of a block: TEST_BLOCK x block_size numbers)
TRAIN_BLOCK = 4096  # training examples at a time: the schema's influence.block_size default
PROGRESS_EVERY = 10.0  # seconds between progress lines in the log (and one at the end)


def sample_test(ids: np.ndarray, proj: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The test examples scored (`influence.test_examples`): n of them drawn without replacement
    by `seed`, in id order; all where n is 0, null or at least their number."""
    if n and n < len(ids):
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        return ids[keep], proj[:, keep]
    return ids, proj


def choose_test(ids: np.ndarray, settings: dict, final: pd.DataFrame | None = None) -> tuple[np.ndarray, str]:
    """_choose_test, logged: which test examples are scored, of how many."""
    chosen, how = _choose_test(ids, settings, final)
    log.info("influence: scoring %d of %d test examples (%s)", len(chosen), len(ids), how)
    return chosen, how


def _choose_test(ids: np.ndarray, settings: dict, final: pd.DataFrame | None = None) -> tuple[np.ndarray, str]:
    """The test example ids scored (ascending) and how they were chosen, from every test id `ids`
    (ascending) and the filled `influence` settings:

    - test_ids (non-empty): exactly those (each must be a test example);
    - test_selection random: test_examples of them drawn by `seed` (sample_test's draw);
    - test_selection misclassified: the test examples the last checkpoint gets wrong (`final`:
      its test rows, with example_id and correct), test_examples of them drawn by `seed` where there
      are more; where it gets none wrong, the random choice instead (said in the returned note).
    test_examples 0 (or null) takes every candidate."""
    ids = np.asarray(ids)
    n, seed = settings.get("test_examples"), settings.get("seed", 0)
    explicit = settings.get("test_ids") or []
    if explicit:
        want = np.unique(np.asarray(explicit, dtype=np.int64))
        unknown = np.setdiff1d(want, ids)
        if len(unknown):
            raise ValueError(f"influence.test_ids: {unknown[:10].tolist()} {'are' if len(unknown) > 1 else 'is'} "
                             f"not among the run's {len(ids)} test examples (ids {ids.min()} to {ids.max()})")
        return want, f"the {len(want)} test_ids given"
    how = settings.get("test_selection", "random")
    if how == "misclassified":
        if final is None:
            raise ValueError("test_selection misclassified needs the last checkpoint's test rows")
        wrong = np.unique(final.loc[~final["correct"].astype(bool), "example_id"].to_numpy())
        wrong = np.intersect1d(wrong, ids)
        if len(wrong):
            chosen = sample_test(wrong, np.zeros((0, len(wrong))), n, seed)[0]
            return chosen, f"{len(chosen)} of the {len(wrong)} test examples the last checkpoint gets wrong"
        note = "the last checkpoint gets no test example wrong: a random choice instead; "
    elif how == "random":
        note = ""
    else:
        raise ValueError(f"influence.test_selection: unknown choice {how!r} (random or misclassified)")
    chosen = sample_test(ids, np.zeros((0, len(ids))), n, seed)[0]
    return chosen, note + (f"{len(chosen)} drawn at random (seed {seed})" if len(chosen) < len(ids)
                           else f"all {len(ids)}")


def progress_log(what: str, every: float | None = None):
    """A progress(done, total) callback that logs "influence: <what> <done> of <total> (<%>, <s>)" at most every
    `every` seconds (None: PROGRESS_EVERY), and at the end (done == total)."""
    every = PROGRESS_EVERY if every is None else every
    start = said = time.perf_counter()

    def progress(done: int, total: int) -> None:
        nonlocal said
        now = time.perf_counter()
        if done >= total or now - said >= every:
            said = now
            log.info("influence: %s %d of %d (%.0f%%, %.1f s)", what, done, total, 100 * done / max(total, 1), now - start)
    return progress


def tracin_cp(train: np.ndarray, test: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """All scores (n_test, n_train) from per-checkpoint gradients (or projections) train (C, n_train, d),
    test (C, n_test, d) and learning rates lr (C,), in float64. For small problems and checks."""
    train, test = np.asarray(train, dtype=np.float64), np.asarray(test, dtype=np.float64)
    return np.einsum("c,ctd,cnd->tn", np.asarray(lr, dtype=np.float64), test, train)


def top_influences(train: np.ndarray, test: np.ndarray, lr: np.ndarray, top_k: int, block: int = TEST_BLOCK,
                   block_size: int = TRAIN_BLOCK, progress=None) -> dict:
    """The top_k proponents and opponents of every test example, with their per-checkpoint contributions.

    train (C, n_train, k), test (C, n_test, k), lr (C,). Scores are computed block by block: `block`
    test examples against `block_size` (`influence.block_size`; at least top_k) training examples at a
    time, as one float64 product over the checkpoints and projection coordinates together (the test
    side scaled by lr), each block's best merged into the running top_k of its test examples: memory
    block x block_size scores and a block_size x C x k copy, whatever n_train. progress(done, total):
    called after each block with the test x train pairs scored so far.
    Returns arrays: ids (n_test, 2, top_k) (positions in the train axis; [:, 0] proponents, by
    decreasing score; [:, 1] opponents, by increasing score), score (n_test, 2, top_k) and
    contributions (n_test, 2, top_k, C), whose sum over C is the score.
    """
    C, n_train, k = train.shape
    top_k = min(top_k, n_train)
    tr = torch.from_numpy(np.asarray(train))
    te = torch.from_numpy(np.asarray(test))
    rates = torch.as_tensor(np.asarray(lr, dtype=np.float64))
    n_test = te.shape[1]
    block, step = max(int(block), 1), max(int(block_size), top_k, 1)  # every merge sees at least top_k candidates
    ids = np.empty((n_test, 2, top_k), dtype=np.int64)
    contrib = np.empty((n_test, 2, top_k, C), dtype=np.float64)
    done, total = 0, n_test * n_train
    for s in range(0, n_test, block):
        q = te[:, s : s + block].double()  # (C, B, k)
        B = q.shape[1]
        weighted = (q * rates[:, None, None]).permute(1, 0, 2).reshape(B, C * k)  # (B, C k)
        tops = {kind: (torch.empty(B, 0, dtype=torch.float64), torch.empty(B, 0, dtype=torch.int64)) for kind in KINDS}
        for a in range(0, n_train, step):
            b = min(a + step, n_train)
            fresh = weighted @ tr[:, a:b].double().permute(1, 0, 2).reshape(b - a, C * k).T  # (B, b - a)
            for kind, (kept, at) in tops.items():  # the running best, merged with this block's scores
                scores, at = torch.cat([kept, fresh], dim=1), torch.cat([at, torch.arange(a, b).expand(B, b - a)], dim=1)
                order = scores.topk(top_k, dim=1) if kind == "proponent" else (-scores).topk(top_k, dim=1)
                tops[kind] = scores.gather(1, order.indices), at.gather(1, order.indices)
            done += B * (b - a)
            if progress is not None:
                progress(done, total)
        best = torch.stack([tops[kind][1] for kind in KINDS], dim=1)  # (B, 2, top_k)
        ids[s : s + len(best)] = best.numpy()
        for c in range(C):  # each chosen pair's contribution at checkpoint c
            picked = tr[c][best].double()  # (B, 2, top_k, k)
            contrib[s : s + len(best), :, :, c] = (rates[c] * (picked * q[c][:, None, None, :]).sum(-1)).numpy()
    return {"ids": ids, "score": contrib.sum(-1), "contributions": contrib}


def influence_tables(top: dict, *, steps, lr, test_ids, train: pd.DataFrame, test: pd.DataFrame):
    """The `top` and `contributions` tables of the artifact list (docs/artifacts.md) from `top_influences`' arrays.

    train: the training examples in the order of the train axis, with example_id, label,
    clean_label and planted; test: the test examples scored, in the order of the test axis,
    with example_id and label."""
    n_test, _, k = top["ids"].shape
    test_pos = np.repeat(np.arange(n_test), 2 * k)
    kind = np.tile(np.repeat(np.array(KINDS), k), n_test)
    rank = np.tile(np.arange(1, k + 1), 2 * n_test)
    pos = top["ids"].reshape(-1)
    rows = pd.DataFrame({
        "test_id": np.asarray(test_ids)[test_pos],
        "test_label": test["label"].to_numpy()[test_pos],
        "kind": kind,
        "rank": rank.astype(np.int64),
        "train_id": train["example_id"].to_numpy()[pos],
        "score": top["score"].reshape(-1),
        "train_label": train["label"].to_numpy()[pos],
        "train_clean_label": train["clean_label"].to_numpy()[pos],
        "train_planted": train["planted"].to_numpy()[pos].astype(bool),
    })
    C = len(steps)
    contributions = pd.DataFrame({
        "test_id": np.repeat(rows["test_id"].to_numpy(), C),
        "train_id": np.repeat(rows["train_id"].to_numpy(), C),
        "kind": np.repeat(rows["kind"].to_numpy(), C),
        "step": np.tile(np.asarray(steps, dtype=np.int64), len(rows)),
        "lr": np.tile(np.asarray(lr, dtype=np.float64), len(rows)),
        "contribution": top["contributions"].reshape(-1),
    })
    return rows, contributions


def flipped_opponents(rows: pd.DataFrame, train: pd.DataFrame) -> dict | None:
    """How often a flipped training example is among the top opponents of test examples of its
    *true* class, against chance; None where the data has no flipped labels.

    rate: the fraction of each test example's top opponents that are flipped training examples
    whose clean label is the test example's label, averaged over test examples; chance: the same
    fraction for opponents drawn at random from the training set (the share of such flipped
    examples among all training examples, averaged the same way); lift = rate / chance.
    The same for proponents, where flipped examples should be rare."""
    flipped = train["planted"].to_numpy().astype(bool) & (train["label"] != train["clean_label"]).to_numpy()
    if not flipped.any():
        return None
    share = pd.Series(flipped).groupby(train["clean_label"].to_numpy()).sum() / len(train)
    out = {"n_flipped": int(flipped.sum())}
    for kind in KINDS:
        part = rows[rows["kind"] == kind]
        hit = (part["train_planted"] & (part["train_label"] != part["train_clean_label"])
               & (part["train_clean_label"] == part["test_label"]))
        per_test = hit.groupby(part["test_id"]).mean()
        labels = part.groupby("test_id")["test_label"].first()
        chance = float(labels.map(share).fillna(0.0).mean())
        rate = float(per_test.mean())
        out[kind] = {"rate": rate, "chance": chance, "lift": rate / chance if chance > 0 else None}
    return out


def findings(rows: pd.DataFrame, train: pd.DataFrame, examples: pd.DataFrame, test_ids, n: int) -> dict:
    """The influence summary's flipped_opponents and examples (the `n` shown), from the top table, the
    training examples scored (split_labels) and the run's examples tables (their last checkpoint's test rows)."""
    last = examples[(examples["split"] == "test") & (examples["step"] == examples["step"].max())].set_index("example_id")
    return {"flipped_opponents": flipped_opponents(rows, train),
            "examples": shown_examples(rows, last.loc[test_ids, ["loss", "pred"]], n)}


def shown_examples(rows: pd.DataFrame, final: pd.DataFrame, n: int, per_kind: int = 5) -> list[dict]:
    """The n scored test examples of highest final loss (`final`: loss and pred by test id, at the
    last checkpoint), each with its first `per_kind` proponents and opponents: what the run report lists."""
    out = []
    for test_id, row in final.sort_values("loss", ascending=False, kind="stable").head(n).iterrows():
        mine = rows[rows["test_id"] == test_id]
        entry = {"test_id": int(test_id), "label": int(mine["test_label"].iloc[0]), "pred": int(row["pred"]),
                 "final_loss": float(row["loss"])}
        for kind in KINDS:
            part = mine[mine["kind"] == kind].sort_values("rank").head(per_kind)
            entry[kind + "s"] = [{"train_id": int(r.train_id), "label": int(r.train_label),
                                  "clean_label": int(r.train_clean_label), "planted": bool(r.train_planted),
                                  "score": float(r.score)} for r in part.itertuples()]
        out.append(entry)
    return out
