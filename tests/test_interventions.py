"""Interventions (gradscope.interventions): the arms' choices against brute force, the derived datasets, the
effects against a hand computation, per-example loss weights in training, and the config's expansion."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from gradscope import config, data, interventions, train
from gradscope.config import ConfigError, dataset_id, expand_runs, load_config, load_runs, train_slice
from gradscope.models import InputSpec


def _scores(rng, n=60, ties=True):
    values = rng.normal(size=n)
    if ties:
        values[rng.choice(n, 10, replace=False)] = 0.5  # ties: broken by the lower example id
    return pd.Series(values, index=pd.Index(np.arange(n), name="example_id"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flagged_arm_is_the_top_k_by_a_brute_force_sort(seed):
    rng = np.random.default_rng(seed)
    scores = _scores(rng)
    labels = pd.Series(rng.integers(0, 3, len(scores)), index=scores.index)
    for k in (1, 7, 30, 60):
        want = sorted(sorted(scores.index, key=lambda i: (-scores[i], i))[:k])
        assert interventions.choose(scores, labels, k, "flagged", seed=0).tolist() == want


def test_control_arm_has_the_flagged_count_per_label_and_is_uniform_within_a_label():
    rng = np.random.default_rng(3)
    scores = _scores(rng, n=90)
    labels = pd.Series(rng.integers(0, 3, len(scores)), index=scores.index)
    flagged = interventions.choose(scores, labels, 20, "flagged", seed=0)
    want = labels.loc[flagged].value_counts().sort_index()
    seen = np.zeros(len(scores))
    for seed in range(400):
        control = interventions.choose(scores, labels, 20, "control", seed=seed)
        assert len(set(control)) == 20 and labels.loc[control].value_counts().sort_index().equals(want)
        seen[control] += 1
    assert interventions.choose(scores, labels, 20, "control", seed=5).tolist() == \
        interventions.choose(scores, labels, 20, "control", seed=5).tolist()
    assert interventions.choose(scores, labels, 20, "control", seed=5).tolist() != \
        interventions.choose(scores, labels, 20, "control", seed=6).tolist()
    # each example of a label is drawn with probability count / class size: within 5 standard errors over 400 draws
    for label, count in want.items():
        members = labels.index[labels == label]
        p = count / len(members)
        rate = seen[members] / 400
        assert np.all(np.abs(rate - p) < 5 * np.sqrt(p * (1 - p) / 400) + 1e-9), (label, rate, p)
    unflagged = labels.index[(labels == want.index[0]) & ~labels.index.isin(flagged)]
    assert seen[unflagged].sum() > 0  # the control draws from every example of the label, not only flagged ones


def test_k_outside_the_split_and_a_step_never_scored_are_named():
    rng = np.random.default_rng(0)
    scores = _scores(rng, n=10)
    labels = pd.Series(np.zeros(10, dtype=int), index=scores.index)
    with pytest.raises(interventions.InterventionError, match="intervene.k is 11.*allowed: 1..10"):
        interventions.choose(scores, labels, 11, "flagged", seed=0)
    detections = pd.DataFrame({"step": [5, 5, 9], "example_id": [0, 1, 0], "detector": ["el2n", "el2n", "aum"],
                               "score": [1.0, 2.0, 3.0], "flagged": [False] * 3})
    assert interventions.scores_at(detections, "el2n", 5).to_dict() == {0: 1.0, 1: 2.0}
    with pytest.raises(interventions.InterventionError, match=r"no scores at step 9.*steps \[5\]"):
        interventions.scores_at(detections, "el2n", 9)


def _dataset(n=12):
    train_df = pd.DataFrame({"example_id": np.arange(n), "x": [np.full(2, i, np.float32) for i in range(n)],
                             "label": np.arange(n) % 3, "clean_label": np.arange(n) % 3,
                             "planted": np.isin(np.arange(n), [2, 5, 9])})
    test_df = train_df.iloc[:4].copy()
    meta = {"input": {"kind": "dense", "dim": 2, "vocab": 0, "n_classes": 3}, "n_train": n,
            "planted": {"description": "d", "train_ids": [2, 5, 9], "groups": {"a": [2, 5], "b": [9, 10]}}}
    return train_df, test_df, meta


def test_remove_drops_the_chosen_and_renumbers_rows_planted_ids_and_groups():
    tr, te, meta = _dataset()
    out, test_out, new = interventions.derive(tr, te, meta, np.array([1, 5, 10]), action="remove", weight=0.1)
    kept = [i for i in range(12) if i not in (1, 5, 10)]
    assert out["parent_example_id"].tolist() == kept and out["example_id"].tolist() == list(range(9))
    assert [float(x[0]) for x in out["x"]] == kept  # each row keeps its own inputs
    # planted ids follow their examples: parent 2 -> row 1, 9 -> row 7; 5 and 10 are gone
    assert new["planted"]["train_ids"] == [1, 7] and new["planted"]["groups"] == {"a": [1], "b": [7]}
    assert out.loc[out["planted"], "example_id"].tolist() == [1, 7] and new["n_train"] == 9
    assert test_out.equals(te) and meta["planted"]["train_ids"] == [2, 5, 9]  # the parent's meta is not touched


def test_downweight_and_relabel_change_only_the_chosen():
    tr, te, meta = _dataset()
    down, _, _ = interventions.derive(tr, te, meta, np.array([0, 3]), action="downweight", weight=0.25)
    assert down["weight"].tolist() == [0.25, 1, 1, 0.25] + [1] * 8 and down["example_id"].tolist() == list(range(12))
    predictions = pd.Series([2] * 12, index=np.arange(12))
    re, _, _ = interventions.derive(tr, te, meta, np.array([0, 4]), action="relabel", weight=0.1, predictions=predictions)
    assert re["label"].tolist() == [2, 1, 2, 0, 2, 2, 0, 1, 2, 0, 1, 2]
    assert re["clean_label"].equals(tr["clean_label"]) and re["planted"].equals(tr["planted"])


def test_effects_are_paired_differences_with_a_t_interval_by_hand():
    rows = []
    figures = {"flagged": [0.90, 0.94, 0.91], "control": [0.85, 0.88, 0.87], "parent": [0.84, 0.86, 0.85]}
    for arm, values in figures.items():
        for seed, v in enumerate(values):
            rows.append({"arm": arm, "detector": None if arm == "parent" else "el2n", "k": None if arm == "parent" else 20,
                         "action": None if arm == "parent" else "remove", "seed": seed, "final_test_acc": v,
                         "worst_group_test_acc": None, "generalization_delay_steps": None, "n_loss_spikes": 2 - seed,
                         "max_sharpness": 1.0 + seed})
    eff = interventions.effects(pd.DataFrame(rows)).set_index("figure")
    acc = eff.loc["final_test_acc"]
    diffs = np.array([0.05, 0.06, 0.04])
    sd = np.sqrt(((diffs - 0.05) ** 2).sum() / 2)
    half = 4.302652729911275 * sd / np.sqrt(3)  # t quantile 0.975 with 2 degrees of freedom
    assert acc["n_seeds"] == 3 and acc["effect"] == pytest.approx(0.05)
    assert acc["ci_low"] == pytest.approx(0.05 - half) and acc["ci_high"] == pytest.approx(0.05 + half)
    assert acc["parent_mean"] == pytest.approx(0.85) and acc["control_sd"] == pytest.approx(np.std([0.85, 0.88, 0.87], ddof=1))
    assert bool(acc["beyond_spread"])  # 0.05 against a spread of 0.01 and 0.0153
    assert eff.loc["worst_group_test_acc", "n_seeds"] == 0 and np.isnan(eff.loc["worst_group_test_acc", "effect"])
    assert eff.loc["n_loss_spikes", "effect"] == 0 and not eff.loc["n_loss_spikes", "beyond_spread"]
    one = interventions.effects(pd.DataFrame([r for r in rows if r["seed"] == 0])).set_index("figure")
    assert np.isnan(one.loc["final_test_acc", "ci_low"]) and not one.loc["final_test_acc", "beyond_spread"]


def test_group_accuracy_reads_the_test_rows_of_the_examples_table():
    examples = pd.DataFrame({"split": ["train", "test", "test", "test", "test"], "example_id": [0, 0, 1, 2, 3],
                             "correct": [False, True, False, True, True]})
    test = pd.DataFrame({"example_id": [0, 1, 2, 3], "group": ["aligned", "conflicting", "conflicting", ""]})
    assert interventions.group_accuracy(examples, test) == {"aligned": 1.0, "conflicting": 0.5}
    assert interventions.group_accuracy(examples, test.drop(columns="group")) == {}


# ---- per-example weights in training ----------------------------------------------------------------
def _train_settings(lr, steps=6):
    cfg = {"device": "cpu", "experiments": {"t": {
        "data": {"generator": "planted_flips", "planted_flips": {"n_train": 40, "n_test": 16, "n_features": 4}},
        "model": {"depth": 1, "width": 8},
        "optim": {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0},
        "train": {"steps": steps, "log_every": 3, "checkpoints": {"every": 3}},
    }}}
    settings = train_slice(expand_runs(load_config(cfg))[0].settings)
    tr, te, meta = data.generate(settings["data"])
    return settings, data.split_tensors(tr), data.split_tensors(te), InputSpec.from_dict(meta["input"])


def _final_weights(tmp_path, name, settings, train_split, test_split, spec):
    from gradscope import checkpoints

    train.train(settings, train_split, test_split, spec, tmp_path / name, "t/seed~0")
    state = checkpoints.load_state(tmp_path / name / "checkpoints" / checkpoints.checkpoint_name(settings["train"]["steps"]))
    return state["model_state"]


def test_a_zero_weight_is_removal_and_a_uniform_weight_scales_the_step(tmp_path):
    """Full-batch SGD: weights w give the update of sum(w * loss) / n. Zero on k examples at lr * n / (n - k) is the
    update without them at lr; weight 2 everywhere at lr is weight 1 at 2 * lr."""
    settings, (x, y), test_split, spec = _train_settings(lr=0.2)
    removed = torch.tensor([1, 4, 9, 17, 30])
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[removed] = False
    weights = keep.float()
    base = _final_weights(tmp_path, "removed", settings, (x[keep], y[keep]), test_split, spec)
    scaled = copy.deepcopy(settings)
    scaled["optim"]["lr"] = 0.2 * len(y) / int(keep.sum())
    zero = _final_weights(tmp_path, "zero", scaled, (x, y, weights), test_split, spec)
    for name in base:
        torch.testing.assert_close(zero[name], base[name], rtol=1e-5, atol=1e-6)
    double = _final_weights(tmp_path, "double", settings, (x, y, torch.full((len(y),), 2.0)), test_split, spec)
    twice = copy.deepcopy(settings)
    twice["optim"]["lr"] = 0.4
    plain = _final_weights(tmp_path, "plain", twice, (x, y), test_split, spec)
    for name in plain:
        torch.testing.assert_close(double[name], plain[name], rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(plain[n], base[n]) for n in plain]
    assert any(moved)  # the two references differ: the comparisons above can fail


# ---- the config: an intervention experiment's runs ---------------------------------------------------
PARENT = {"data": {"generator": "planted_flips", "planted_flips": {"n_train": 100, "n_test": 50, "n_features": 4}},
          "model": {"depth": 1, "width": 8}, "optim": {"name": "sgd", "lr": 0.1},
          "train": {"steps": 20, "log_every": 5, "checkpoints": {"every": 10}}, "seeds": [0, 1]}


def _runs(intervention: dict, parent: dict | None = None, **more):
    cfg = {"device": "cpu", "experiments": {"flips": parent or PARENT, "iv": intervention, **more}}
    return load_runs(cfg, preflight=False)[1]


def test_each_grid_point_and_seed_has_a_flagged_and_a_control_run_with_the_parents_settings():
    runs = _runs({"intervene": {"parent": "flips", "detector": "el2n", "k": 10}, "grid": {"intervene.k": [10, 20]}})
    parents = {r.settings["seed"]: r for r in runs if r.experiment == "flips"}
    mine = [r for r in runs if r.experiment == "iv"]
    assert [r.name for r in mine] == [f"k~{k}_arm~{arm}_seed~{s}" for k in (10, 20) for s in (0, 1)
                                      for arm in ("flagged", "control")]
    for r in mine:
        parent = parents[r.settings["seed"]]
        assert {s: r.settings[s] for s in config.SECTIONS} == {s: parent.settings[s] for s in config.SECTIONS}
        assert r.settings["intervene"]["parent_run"] == parent.id and r.settings["intervene"]["step"] == 20
        assert r.varying == {"k": r.settings["intervene"]["k"], "arm": r.settings["intervene"]["arm"],
                             "seed": r.settings["seed"]}
    ids = {r.name: dataset_id(r.settings) for r in mine}
    assert len(set(ids.values())) == len(mine) and all("-derived-" in i for i in ids.values())
    # a changed k changes only those runs' datasets; the parent's stays
    again = _runs({"intervene": {"parent": "flips", "detector": "el2n", "k": 10}, "grid": {"intervene.k": [10, 30]}})
    new = {r.name: dataset_id(r.settings) for r in again if r.experiment == "iv"}
    assert {n: i for n, i in new.items() if n.startswith("k~10")} == {n: i for n, i in ids.items() if n.startswith("k~10")}
    assert not set(new.values()) & {i for n, i in ids.items() if n.startswith("k~20")}
    assert {dataset_id(r.settings) for r in again if r.experiment == "flips"} == \
        {dataset_id(r.settings) for r in runs if r.experiment == "flips"}


@pytest.mark.parametrize("intervention, parent, match", [
    ({"intervene": {"parent": "nope", "detector": "el2n", "k": 5}}, None,
     r"intervene.parent: 'nope' is not an experiment of this config; allowed: 'flips'"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5}}, {**PARENT, "grid": {"optim.lr": [0.1, 0.2]}},
     r"'flips' has a grid \(optim.lr\)"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5}, "model": {"width": 16}}, None,
     r"bad key at experiments.iv.model: set, but an intervention retrains with its parent's settings"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5}, "grid": {"optim.lr": [0.1]}}, None,
     r"grid.optim.lr: an intervention sweeps intervene.<key> only"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5}, "seeds": [7]}, None,
     r"seeds: seed 7 has no run in the parent 'flips'"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5, "step": 15}}, None,
     r"intervene.step: 15 is not a checkpoint step of flips/seed~0 \(its steps: 0, 10, 20\)"),
    ({"intervene": {"parent": "flips", "detector": "aum", "k": 5}},
     {**PARENT, "signals": {"detectors": ["el2n", "cos_rule"]}}, r"intervene.detector: 'aum' is not run by the parent"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 100}}, None,
     r"intervene.k: 100 is not below the parent's 100 training examples"),
    ({"intervene": {"parent": "flips", "detector": "el2n", "k": 5, "action": "erase"}}, None, r"erase"),
])
def test_a_bad_intervention_is_named_before_any_job(intervention, parent, match):
    with pytest.raises(ConfigError, match=match):
        _runs(intervention, parent)


def test_the_loss_trajectory_scores_are_named_as_its_detections_name_them():
    runs = _runs({"intervene": {"parent": "flips", "detector": "loss_increasing", "k": 5}})
    assert {r.settings["intervene"]["detector"] for r in runs if r.experiment == "iv"} == {"loss_increasing"}
    with pytest.raises(ConfigError, match="'loss_decreasing' is not run by the parent"):
        _runs({"intervene": {"parent": "flips", "detector": "loss_decreasing", "k": 5}},
              {**PARENT, "signals": {"detectors": ["el2n"]}})
    with pytest.raises(ConfigError, match="loss_trajectory"):
        _runs({"intervene": {"parent": "flips", "detector": "loss_trajectory", "k": 5}})


def test_an_intervention_cannot_be_a_parent():
    with pytest.raises(ConfigError, match="'iv' is itself an intervention"):
        _runs({"intervene": {"parent": "flips", "detector": "el2n", "k": 5}},
              iv2={"intervene": {"parent": "iv", "detector": "el2n", "k": 5}})


def test_derive_data_applies_each_action_to_the_detectors_top_k_at_the_step(tmp_path):
    """The workflow's generate_data for an intervention run (pipeline.derive_data), from a parent dataset and
    detections and examples tables written as the workflow writes them."""
    from gradscope import artifacts, pipeline, tables

    runs = _runs({"intervene": {"parent": "flips", "detector": "aum", "k": 8, "step": 10}})
    parent = next(r for r in runs if r.experiment == "flips")
    tr, te, meta = data.generate(config.data_slice(parent.settings))
    folder = tmp_path / "parent"
    data.write_dataset(tr, te, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
    rng = np.random.default_rng(0)
    rows = [{"step": step, "example_id": i, "detector": d, "score": float(rng.normal()), "flagged": False}
            for step in (10, 20) for d in ("aum", "el2n") for i in range(len(tr))]
    detections = pd.DataFrame(rows)
    artifacts.write_parquet(detections, tmp_path / "detections.parquet", tables.DETECTIONS)
    pred = (tr["label"].to_numpy() + 1) % 2
    step_dir = tmp_path / "examples" / "step=10"
    step_dir.mkdir(parents=True)
    pd.DataFrame({"split": "train", "example_id": tr["example_id"], "pred": pred}).to_parquet(step_dir / "part-0.parquet")
    top = sorted(detections.query("detector == 'aum' and step == 10").sort_values("score", ascending=False)
                 ["example_id"][:8])
    for action in interventions.ACTIONS:
        run = next(r for r in _runs({"intervene": {"parent": "flips", "detector": "aum", "k": 8, "step": 10,
                                                   "action": action, "weight": 0.3}}) if r.experiment == "iv")
        assert run.settings["intervene"]["arm"] == "flagged"
        out = tmp_path / action
        pipeline.derive_data(config.data_slice(run.settings), parent=folder, detections_path=tmp_path / "detections.parquet",
                             examples_paths=[tmp_path / "examples"], train_path=out / "train.parquet",
                             test_path=out / "test.parquet", meta_path=out / "meta.json")
        derived, new_meta = artifacts.read_parquet(out / "train.parquet"), artifacts.read_json(out / "meta.json")
        assert new_meta["intervention"]["chosen_ids"] == top
        assert new_meta["intervention"]["chosen_planted"] == int(tr.loc[top, "planted"].sum())
        assert artifacts.read_parquet(out / "test.parquet").equals(artifacts.read_parquet(folder / "test.parquet"))
        if action == "remove":
            assert sorted(set(range(len(tr))) - set(derived["parent_example_id"])) == top
            assert sum(new_meta["class_counts"]["train"]) == len(tr) - 8
        elif action == "downweight":
            assert derived.loc[derived["weight"] == 0.3, "example_id"].tolist() == top
            assert (derived.loc[~derived["example_id"].isin(top), "weight"] == 1).all()
        else:
            changed = derived["example_id"][derived["label"] != tr["label"]].tolist()
            assert changed == top and (derived.loc[top, "label"].to_numpy() == pred[top]).all()


# ---- the workflow: a real run, then a changed k -----------------------------------------------------
@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_runs_an_intervention_and_a_changed_k_adds_only_its_own_jobs(tmp_path):
    import yaml

    from gradscope import artifacts, layout
    from support.workflow import REPO, copy_workflow, planned, snakemake

    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["checkpoint_jobs"] = "per_run"  # one examples and one curvature job per run: less start-up
    cfg["experiments"] = {"flips": cfg["experiments"]["flips"],
                          "iv": {"intervene": {"parent": "flips", "detector": "el2n", "k": 12},
                                 "grid": {"intervene.k": [12]}}}
    work = copy_workflow(tmp_path / "w", cfg)
    snakemake(work, "--cores", "2")
    iv = work / "results" / "sweeps" / "iv"
    runs = artifacts.read_parquet(iv / "interventions.parquet").set_index("run_id")
    assert sorted(runs.index) == ["flips/seed~0", "iv/k~12_arm~control_seed~0", "iv/k~12_arm~flagged_seed~0"]
    assert runs.loc["flips/seed~0", "arm"] == "parent" and runs.loc["iv/k~12_arm~flagged_seed~0", "k"] == 12
    # each run's figures are its own metrics' and timeline's
    for run_id, row in runs.iterrows():
        metrics = artifacts.read_parquet(work / layout.run_file("metrics", run_id))
        assert row["final_test_acc"] == pytest.approx(metrics.sort_values("step")["test_acc"].iloc[-1])
        timeline = artifacts.read_json(work / layout.run_file("timeline_summary", run_id))
        assert row["n_loss_spikes"] == timeline["n_spikes"]
    effects = artifacts.read_parquet(iv / "effects.parquet").set_index("figure")
    assert effects.loc["final_test_acc", "effect"] == pytest.approx(
        runs.loc["iv/k~12_arm~flagged_seed~0", "final_test_acc"] - runs.loc["iv/k~12_arm~control_seed~0", "final_test_acc"])
    # the flagged run trained without exactly the parent's top 12 by EL2N at its last checkpoint
    detections = artifacts.read_parquet(work / layout.run_file("signals_detections", "flips/seed~0"))
    last = detections.query("detector == 'el2n'")["step"].max()
    top = detections.query("detector == 'el2n' and step == @last").sort_values(["score", "example_id"],
                                                                                ascending=[False, True])
    metas = [artifacts.read_json(p) for p in (work / "results" / "data").glob("*-derived-*/meta.json")]
    flagged = next(m for m in metas if m["intervention"]["arm"] == "flagged")
    assert flagged["intervention"]["chosen_ids"] == sorted(top["example_id"][:12]) and flagged["n_train"] == 120 - 12
    report = (iv / "report.md").read_text()
    assert "## Interventions" in report and "remove 12 by `el2n`" in report and (iv / "effects.png").stat().st_size
    assert (iv / "dashboard.html").exists()
    # a changed detector setting of the parent: its detections again, then the derived datasets and their runs;
    # neither the parent's dataset nor its training
    changed = copy.deepcopy(cfg)
    changed["experiments"]["flips"]["signals"]["opposing_groups"]["top_k"] = 6
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    jobs = planned(work)
    assert jobs["detect_signals"] == 3 and jobs["generate_data"] == 2 and jobs["train"] == 2, jobs
    # a second k: its two datasets and runs, the stage and the intervention's reports only; nothing of the parent
    more = {**cfg, "experiments": {**cfg["experiments"], "iv": {**cfg["experiments"]["iv"], "grid": {"intervene.k": [12, 20]}}}}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(more, sort_keys=False))
    jobs = planned(work)
    assert jobs["generate_data"] == 2 and jobs["train"] == 2 and jobs["resolve_config"] == 2
    assert jobs["interventions"] == 1 and jobs["sweep_report"] == 1
    assert [jobs[rule] for rule in ("detect_signals", "timeline", "report")] == [2, 2, 2]
    assert jobs["extract_examples"] == jobs["curvature"] == 2
