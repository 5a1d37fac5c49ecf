"""The workflow on runs it did not train: recorded runs and folders of plain checkpoints.

Real Snakemake runs in temporary folders (tests/workflow/test_workflow.py's helpers): a recorded run of
the same settings as a trained one must give the same per-example and signals tables; a folder
of state_dicts from a loop that never imported gradscope is analyzed end to end, and adding or
changing one checkpoint plans only that checkpoint's jobs and their readers.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from support.recorder import hand_loop, resolved
from support.workflow import REPO, copy_workflow, planned, snakemake

from gradscope import config, data, layout
from gradscope.losses import per_example_loss
from gradscope.models import build_model

pytestmark = pytest.mark.slow

ANALYSIS = {"examples": {"proj_dim": 8}, "signals": {"opposing_groups": {"top_k": 20, "n_groups": 2}},
            "curvature": {"subset_size": 64, "lanczos_iters": 6, "trace_max_samples": 6}, "plots": {"dpi": 50, "gif_points": 30}}
SIGNAL_TABLES = ("detections", "evaluation", "groups", "group_pairs", "group_losses", "loss_changes", "per_example")


def experiment_of(settings: dict) -> dict:
    """The experiment that trains `settings` (a training slice of test_recorder.resolved) in the workflow."""
    return {**config.applicable({k: settings[k] for k in ("data", "model", "optim", "train")}), "seeds": [settings["seed"]],
            **ANALYSIS}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """One workflow run over: the same settings trained by the train stage and by a hand-written loop with
    the Recorder (its run folder outside results/), and the runs the Lightning and Hugging Face
    callbacks recorded (tests/integrations/test_integrations.py)."""
    from support.integrations import record_hf_run, record_lightning_run

    root = tmp_path_factory.mktemp("twin")
    hand_loop(resolved(), root / "my_runs" / "loop")
    record_lightning_run(root / "my_runs" / "lightning", log_every="auto")
    record_hf_run(root / "my_runs" / "hf", log_every="auto")
    # one job per run for the trained run's per-checkpoint stages, one per checkpoint for the others (always)
    cwd = copy_workflow(root / "wf", {"device": "cpu", "checkpoint_jobs": "per_run", "experiments": {
        "trained": experiment_of(resolved()),
        "recorded": {"source": {"recorded": str(root / "my_runs" / "loop")}, **ANALYSIS},
        "frameworks": {"source": {"recorded": [str(root / "my_runs" / name) for name in ("lightning", "hf")]},
                       **ANALYSIS}}})
    (cwd / "tests").mkdir()  # the Hugging Face model's factory, imported from the working directory as the run names it
    shutil.copy(REPO / "tests" / "integration_models.py", cwd / "tests" / "integration_models.py")
    snakemake(cwd, "--cores", "2")
    return cwd


def table(cwd, run_id, name):
    folder = cwd / "results" / "runs" / run_id
    if name == "examples":
        from gradscope.artifacts import read_partitions

        return read_partitions(layout.tables_in(folder, "examples"))
    return pd.read_parquet(layout.in_run(folder, f"signals_{name}"))


def test_a_recorded_run_gives_the_trained_runs_examples_and_signals_tables(twin):
    trained, recorded = "trained/seed~4", "recorded/loop"
    for name in ("examples", *SIGNAL_TABLES):
        a, b = table(twin, trained, name), table(twin, recorded, name)
        assert len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert (twin / "results" / "runs" / recorded / "report.md").is_file()
    assert (twin / "results" / "sweeps" / "recorded" / "dashboard.html").is_file()
    written = config.read_config_file(twin / "results" / "runs" / recorded / "config.yaml")
    assert written["dataset"]["id"] == config.dataset_id(resolved())  # every run records its dataset
    assert planned(twin) == {}


def test_the_lightning_and_hugging_face_callbacks_runs_are_analyzed_end_to_end(twin):
    for name in ("lightning", "hf"):
        run = twin / "results" / "runs" / "frameworks" / name
        assert (run / "report.md").is_file(), name
        examples = table(twin, f"frameworks/{name}", "examples")
        steps = json.loads(layout.in_run(run, "manifest").read_text())["checkpoints"]
        assert sorted(examples["step"].unique()) == sorted(map(int, steps)) and len(steps) >= 3
        assert np.isfinite(examples["grad_norm"]).all() and (examples["grad_norm"] > 0).any()
        evaluation = table(twin, f"frameworks/{name}", "evaluation")
        assert evaluation["auroc"].notna().any()  # the digits' planted flips, scored
    assert (twin / "results" / "sweeps" / "frameworks" / "report.md").is_file()


# ---- a folder of plain checkpoints from a loop that never imported gradscope ------------------------------
DIGITS = {"generator": "digits", "digits": {"train_fraction": 0.3, "label_noise": 0.1}}
MODEL = {"kind": "mlp", "width": 16, "depth": 1}


def own_loop(folder, steps=(0, 5, 20, 40)):
    """Plain PyTorch: SGD on the digits tensors, saving state_dicts as .pt, .ckpt (Lightning's layout) and
    .safetensors. gradscope builds the model and data only to hand the loop the same ones."""
    from safetensors.torch import save_file

    (x, y), _, spec = data.load(DIGITS)
    torch.manual_seed(0)
    model = build_model(MODEL, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    folder.mkdir(parents=True)
    saved = {}
    for step in range(max(steps) + 1):
        if step in steps:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            path = [folder / f"step_{step}.pt", folder / f"epoch=0-step={step}.ckpt", folder / f"model-{step:06d}.safetensors"][
                len(saved) % 3]
            if path.suffix == ".pt":
                torch.save(state, path)
            elif path.suffix == ".ckpt":
                torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "global_step": step}, path)
            else:
                save_file(state, str(path))
            saved[step] = (path, state)
        opt.zero_grad()
        per_example_loss(model(x), y, "cross_entropy").mean().backward()
        opt.step()
    return saved, model


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    saved, _ = own_loop(root / "ckpts")
    cwd = copy_workflow(root / "wf", {"device": "cpu", "checkpoint_jobs": "per_run", "experiments": {
        "mine": {"source": {"checkpoints": str(root / "ckpts")}, "data": DIGITS, "model": MODEL,
                 "optim": {"name": "sgd", "lr": 0.2}, **ANALYSIS}}})
    snakemake(cwd, "--cores", "2")
    return cwd, root / "ckpts", saved


def test_a_folder_of_plain_checkpoints_is_analyzed_end_to_end(folder_run):
    cwd, _, saved = folder_run
    run = cwd / "results" / "runs" / "mine" / "ckpts"
    assert (run / "report.md").is_file() and (cwd / "results" / "sweeps" / "mine" / "report.md").is_file()
    metrics = pd.read_parquet(layout.in_run(run, "metrics"))
    assert list(metrics["step"]) == sorted(saved)
    # each checkpoint's weights, evaluated here by hand, are what the metrics say
    (x, y), _, spec = data.load(DIGITS)
    for step, (_, state) in saved.items():
        model = build_model(MODEL, spec)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            loss = per_example_loss(model(x), y, "cross_entropy").mean().item()
        assert metrics.set_index("step").loc[step, "train_loss"] == pytest.approx(loss, rel=1e-5)
    examples = table(cwd, "mine/ckpts", "examples")
    assert sorted(examples["step"].unique()) == sorted(saved)
    curvature = pd.concat(pd.read_parquet(p) for p in layout.tables_in(run, "curvature"))
    assert np.isfinite(curvature["sharpness"]).all()
    manifest = json.loads(layout.in_run(run, "manifest").read_text())
    assert {int(s) for s in manifest["checkpoints"]} == set(saved)


def test_an_added_checkpoint_plans_only_its_jobs_and_their_readers_and_a_changed_one_reruns_its_own(folder_run):
    cwd, folder, saved = folder_run
    assert planned(cwd) == {}  # an unchanged folder plans nothing
    state = saved[40][1]
    torch.save({k: v * 1.01 for k, v in state.items()}, folder / "step_60.pt")
    counts = planned(cwd)
    # checkpoint_jobs is per_run (the default config's), yet a run gradscope did not train has one job per checkpoint
    assert counts["extract_examples_per_checkpoint"] == 1 and counts["curvature_per_checkpoint"] == 1, counts
    assert counts["import_run"] == 1 and counts["detect_signals"] == 1
    assert not {"generate_data", "train", "extract_examples", "curvature"} & set(counts)
    snakemake(cwd, "--cores", "2")
    torch.save({k: v * 1.02 for k, v in state.items()}, folder / "step_60.pt")  # the same step, new weights
    counts = planned(cwd)
    assert counts["extract_examples_per_checkpoint"] == 1 and counts["curvature_per_checkpoint"] == 1, counts


# ---- bad inputs: stopped before any job, naming the key or file and what to do --------------------------
def _config_error(tmp_path, experiment):
    cwd = copy_workflow(tmp_path / "wf", {"device": "cpu", "experiments": {"bad": experiment}})
    proc = snakemake(cwd, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("case, needle", [
    ("both", "exactly one of recorded"),
    ("recorded_with_data", "bad key at experiments.bad.data"),
    ("not_recorded", "holds no recorded run"),
    ("empty_folder", "holds no checkpoint file"),
    ("two_per_step", "both name step 5"),
    ("no_step", "no step number in the name of final.pt"),
    ("grid", "bad key at experiments.bad.grid"),
])
def test_bad_sources_stop_before_any_job(tmp_path, case, needle):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    experiment = {"source": {"checkpoints": str(folder)}, "data": DIGITS, "model": MODEL}
    if case in ("two_per_step", "no_step", "grid"):
        torch.save({}, folder / "step_5.pt")
        torch.save({}, folder / ("ckpt-5.pt" if case == "two_per_step" else "final.pt" if case == "no_step" else "s_9.pt"))
    if case == "grid":
        experiment["grid"] = {"optim.lr": [0.1, 0.2]}
    if case == "both":
        experiment["source"]["recorded"] = str(folder)
    if case in ("recorded_with_data", "not_recorded"):
        experiment["source"] = {"recorded": str(folder)}
        if case == "not_recorded":
            del experiment["data"], experiment["model"]
    assert needle in _config_error(tmp_path, experiment)


def test_checkpoints_that_do_not_fit_or_do_not_load_fail_naming_the_file(tmp_path):
    (x, y), _, spec = data.load(DIGITS)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save(build_model({"kind": "mlp", "width": 16, "depth": 2}, spec).state_dict(), folder / "step_0.pt")
    (folder / "step_10.pt").write_bytes(b"not a checkpoint")
    cwd = copy_workflow(tmp_path / "wf", {"device": "cpu", "experiments": {"mine": {
        "source": {"checkpoints": str(folder)}, "data": DIGITS, "model": MODEL, **ANALYSIS}}})
    proc = snakemake(cwd, "--cores", "1", "--keep-going", check=False)
    assert proc.returncode != 0
    logs = "\n".join(p.read_text() for p in (cwd / "logs").rglob("*.log"))
    assert "step_0.pt: its keys do not match the model: missing none; unexpected body.4.bias, body.4.weight" in logs
    assert f"cannot read checkpoint {folder / 'step_10.pt'}" in logs
    assert not (cwd / "results" / "runs" / "mine" / "ckpts" / "train" / "metrics.parquet").exists()


def test_a_recorded_run_whose_data_changed_since_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    arrays = ((rng.standard_normal((60, 4)).astype(np.float32), rng.integers(0, 3, 60)),
              (rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)))
    from gradscope.models import InputSpec
    from gradscope.recorder import Recorder

    model = build_model(MODEL, InputSpec("dense", 4, 0, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "rec", model=model, optimizer=opt, model_settings=MODEL, data=arrays, steps=3,
                  checkpoints={"every": 1}) as rec:
        for step in range(3):
            opt.zero_grad()
            per_example_loss(model(torch.from_numpy(arrays[0][0])), torch.from_numpy(arrays[0][1]),
                             "cross_entropy").mean().backward()
            rec.before_update(step)
            opt.step()
            rec.after_update(step + 1)
    np.savez(tmp_path / "rec" / "data" / "train.npz", x=arrays[0][0][:50], y=arrays[0][1][:50])  # edited since
    cwd = copy_workflow(tmp_path / "wf", {"device": "cpu", "experiments": {"mine": {
        "source": {"recorded": str(tmp_path / "rec")}, **ANALYSIS}}})
    proc = snakemake(cwd, "--cores", "1", check=False)
    assert proc.returncode != 0
    logs = "\n".join(p.read_text() for p in (cwd / "logs").rglob("*.log"))
    assert "n_train: recorded 60, now 50" in logs and "record the run again" in logs


# ---- the same runs, opened in a notebook ----------------------------------------------------------------
def test_open_run_gives_typed_tables_labels_and_the_model_at_a_checkpoint(twin):
    import gradscope
    from gradscope import checkpoints

    run = gradscope.open_run(twin / "results" / "runs" / "recorded" / "loop")
    assert run.dataset_id == config.dataset_id(resolved()) and run.dataset is not None
    assert run.steps == config.checkpoint_steps(resolved()["train"])
    examples = run.examples
    assert examples["step"].dtype == np.int64 and examples["step"].max() == run.steps[-1]
    train = examples[examples["split"] == "train"]
    assert {"label", "clean_label", "planted"} <= set(examples.columns)
    assert (train["planted"] == (train["label"] != train["clean_label"])).all() and train["planted"].any()
    assert run.metrics["step"].dtype == np.int64 and run.signals["evaluation"]["auroc"].notna().any()
    assert run.signals["summary"]["n_train"] == train["example_id"].nunique()
    model = run.checkpoint(run.steps[2])
    saved = checkpoints.load_state(twin / "results" / "runs" / "trained" / "seed~4" / "train" / "checkpoints" /
                                   checkpoints.checkpoint_name(run.steps[2]))["model_state"]
    assert not model.training and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match="no checkpoint at step 7"):
        run.checkpoint(7)


def test_open_results_lists_every_run_with_the_cli_columns(twin):
    import gradscope
    from gradscope.results import HEADLINE_COLUMNS

    table = gradscope.open_results(twin / "results")
    assert sorted(table["run"]) == ["frameworks/hf", "frameworks/lightning", "recorded/loop", "trained/seed~4"]
    assert (table["status"] == "done").all()
    assert {"final_train_acc", "final_test_acc", "max_sharpness", "sharpness_threshold"} <= set(table) <= {
        "run", "path", "status", "seed", *HEADLINE_COLUMNS}
    same = table.set_index("run").loc[["recorded/loop", "trained/seed~4"], "final_test_acc"]
    assert same.iloc[0] == same.iloc[1]


def test_analyze_without_snakemake_gives_the_workflows_tables(twin):
    import gradscope

    run = gradscope.open_run(twin / "results" / "runs" / "recorded" / "loop")
    files = {int(s): path for s, path in run.manifest["checkpoints"].items()}  # the recorder's own files
    out = gradscope.analyze(files, data=resolved()["data"], examples=ANALYSIS["examples"], signals=ANALYSIS["signals"],
                            lr=run.metrics.set_index("step")["lr"].to_dict())
    ours = out["examples"].sort_values(["step", "split", "example_id"]).reset_index(drop=True)
    theirs = table(twin, "recorded/loop", "examples").sort_values(["step", "split", "example_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[theirs.columns], theirs)
    pd.testing.assert_frame_equal(out["detections"].reset_index(drop=True),
                                  table(twin, "recorded/loop", "detections").reset_index(drop=True))


def test_a_glob_picks_hugging_faces_checkpoint_folders(tmp_path):
    """Hugging Face's Trainer saves checkpoint-<step>/ folders holding model.safetensors beside its optimizer
    and scheduler files: source.glob names the weights, and the step comes from the folder's name."""
    from safetensors.torch import save_file

    (x, y), _, spec = data.load(DIGITS)
    for step in (10, 200, 30):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(build_model(MODEL, spec).state_dict(), str(folder / "model.safetensors"))
        torch.save({}, folder / "optimizer.pt")
    experiment = {"source": {"checkpoints": str(tmp_path / "out"), "glob": "checkpoint-*/model.safetensors"},
                  "data": DIGITS, "model": MODEL}
    _, runs = config.load_runs({"experiments": {"hf": experiment}})
    assert {s: p.split("/")[-2] for s, p in runs[0].checkpoints.items()} == {
        10: "checkpoint-10", 30: "checkpoint-30", 200: "checkpoint-200"}
    assert runs[0].settings["train"]["steps"] == 200 and config.run_steps(runs[0]) == [10, 30, 200]
    with pytest.raises(config.ConfigError, match="holds no checkpoint file matching '\\*'"):
        config.load_runs({"experiments": {"hf": {**experiment, "source": {"checkpoints": str(tmp_path / "out")}}}})
