"""Issue 13: every bad input and fault ends in a clear message, nothing stale looks current,
the same config gives the same bytes. docs/reliability.md lists these cases."""

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gradscope.cli import main
from gradscope.config import ConfigError, compose, load_config_files, load_runs
from support.workflow import BASE, REPO, copy_workflow
from support.workflow import snakemake as run_snakemake


def changed(**sections) -> dict:
    """BASE with experiment e's sections updated: {"optim": {"momentum": 0.5}} adds to e.optim."""
    c = copy.deepcopy(BASE)
    for key, value in sections.items():
        e = c["experiments"]["e"]
        if isinstance(value, dict) and isinstance(e.get(key), dict):
            e[key] = {**e[key], **value}
        else:
            e[key] = value
    return c


# Each case: the config change, and fragments the message must hold (key, value, what is allowed).
BAD_CONFIGS = {
    "checkpoint beyond the last step": (
        changed(train={"checkpoints": {"at": [10, 500]}}),
        ["experiments.e.train.checkpoints.at", "500", "train.steps = 30", "allowed: steps 0..30"]),
    "opposing top_k above the training set": (
        changed(signals={"opposing_groups": {"top_k": 500, "n_groups": 2}}),
        ["experiments.e.signals.opposing_groups.top_k", "500", "120 training examples", "allowed: 1..120"]),
    "more groups than examples": (
        changed(signals={"opposing_groups": {"top_k": 5, "n_groups": 8}}),
        ["experiments.e.signals.opposing_groups.n_groups", "8", "top_k = 5", "allowed: 2..5"]),
    "a repeated grid value": (
        changed(grid={"optim.lr": [0.1, 0.1, 0.2]}),
        ["experiments.e.grid.optim.lr", "0.1 is listed 2 times", "allowed: distinct values"]),
    "no detectors": (
        changed(signals={"detectors": []}),
        ["experiments.e.signals.detectors", "[]", "allowed: one or more of", "cos_rule", "high_loss"]),
    "more eigenvalues than Lanczos steps": (
        changed(curvature={"top_k": 40, "lanczos_iters": 8}),
        ["experiments.e.curvature.top_k", "40", "lanczos_iters = 8", "allowed: top_k <= lanczos_iters"]),
    "nesterov without momentum": (
        changed(optim={"nesterov": True}),
        ["experiments.e.optim.nesterov", "true", "optim.momentum is 0", "allowed: false, or a momentum in (0, 1]"]),
    "nesterov with adam": (
        changed(optim={"name": "adam", "nesterov": True, "momentum": 0.9}),
        ["experiments.e.optim.nesterov", "optim.name is 'adam'"]),
    "division modulo a composite": (
        changed(data={"generator": "modular", "modular": {"p": 12, "op": "div"}},
                signals={"opposing_groups": {"top_k": 5, "n_groups": 2}}),
        ["experiments.e.data.modular.p", "12 is not prime", "allowed: a prime p"]),
    "two grid values that print alike": (
        changed(data={"generator": "files", "files": {"train": "x.npz"}}, grid={"data.files.train": ["a b.npz", "a-b.npz"]},
                signals={"detectors": ["high_loss"]}),
        ["run id 'e/train~a-b.npz_seed~0'", "two different grid points"]),
    "no experiments": (
        {"device": "cpu", "experiments": {}},
        ["experiments", "{}", "allowed: at least 1"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_at_validation_naming_key_value_and_what_is_allowed(case):
    config, fragments = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as err:
        load_runs(config)
    for text in fragments:
        assert text in str(err.value), (text, str(err.value))


def test_a_problem_of_some_runs_names_them():
    config = changed(grid={"train.steps": [30, 5]}, train={"checkpoints": {"at": [10]}})
    with pytest.raises(ConfigError, match=r"train.steps = 5 .* \(run steps~5_seed~0\)"):
        load_runs(config)


def test_every_problem_is_reported_at_once():
    config = changed(optim={"nesterov": True}, curvature={"top_k": 9})
    with pytest.raises(ConfigError) as err:
        load_runs(config)
    assert "optim.nesterov" in str(err.value) and "curvature.top_k" in str(err.value)


def test_cuda_without_cuda_stops_at_validation():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = {**BASE, "device": "cuda"}
    load_runs(config)  # the library alone does not look at the machine (a cluster's login node has no GPU)
    with pytest.raises(ConfigError, match=r"device: 'cuda', but torch sees no CUDA device here .*allowed here: 'auto'"):
        load_runs(config, check_device=True)


# ---- config files: syntax errors, and the merge rule --------------------------------------
@pytest.mark.parametrize("content, fragments", [
    (b"experiments:\n  a:\n    data: {generator: modular\n    model: [\n", ["line 4, column 10", "not valid YAML"]),
    (b"experiments:\n  a: {data: {generator: modular}}\n  a: {data: {generator: digits}}\n",
     ["line 3, column 3", "key 'a' is given twice", "first on line 2"]),
    (b"just some text\n", ["line 1, column 1", "a config is a mapping", "'just some text'"]),
    (b"experiments:\n\x89PNG\r\n\x1a\n\x00\x00", ["line 2, column 1", "not a text file"]),
    (b"ok: 1\n\x00binary", ["line 2, column 1", "not a text file"]),
])
def test_validate_names_file_line_and_column_of_a_file_that_does_not_read(tmp_path, content, fragments):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["validate", str(path), "--default", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    for text in [str(path), *fragments]:
        assert text in result.output, (text, result.output)


def test_merge_rule_a_config_file_replaces_the_default_experiments_unless_it_extends_them(tmp_path):
    default = {"device": "auto", "cluster": {"group_checkpoint_jobs": True},
               "experiments": {"grokking": {"data": {"generator": "modular"}, "grid": {"optim.weight_decay": [0.0, 1.0]}},
                               "opposing": {"data": {"generator": "planted_flips"}}}}
    mine = {"device": "cpu", "experiments": {"grokking": {"data": {"generator": "modular"}, "grid": {"optim.lr": [0.003]},
                                                          "seeds": [1]}}}
    replaced = compose(default, [mine])
    assert replaced["experiments"] == mine["experiments"] and replaced["device"] == "cpu"
    assert replaced["cluster"] == default["cluster"]  # other keys: only what the file names changes
    extended = compose(default, [{**mine, "extend_experiments": True}])
    assert list(extended["experiments"]) == ["grokking", "opposing"]
    assert extended["experiments"]["grokking"] == mine["experiments"]["grokking"]  # whole, not merged with the default's
    assert compose(default, [{"device": "cpu"}])["experiments"] == default["experiments"]
    # --config overrides merge key by key into what the files left
    over = compose(default, [mine], {"experiments": {"grokking": {"train": {"steps": 50}}}})
    assert over["experiments"]["grokking"]["train"] == {"steps": 50} and over["experiments"]["grokking"]["seeds"] == [1]


def snakemake(cwd, *args):
    return run_snakemake(cwd, *args, check=False)


def planned_runs(cwd, *args) -> list[str]:
    """The runs a dry run plans: the wildcards of its resolve_config jobs."""
    proc = snakemake(cwd, "-n", "--cores", "1", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.findall(r"wildcards: experiment=([^,\s]+), run=([^,\s]+)", proc.stdout + proc.stderr)
    return sorted({f"{e}/{r}" for e, r in found})


@pytest.mark.workflow
@pytest.mark.slow
def test_validate_reports_exactly_the_runs_snakemake_plans(tmp_path):
    default = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cwd = copy_workflow(tmp_path, default)
    mine = copy.deepcopy(default["experiments"]["mod"])
    mine["grid"] = {"optim.lr": [0.003]}
    mine["seeds"] = [1]
    files = {"replace": {"experiments": {"mod": mine}}, "extend": {"extend_experiments": True, "experiments": {"mod": mine}}}
    expected = {"replace": ["mod/lr~0.003_seed~1"], "extend": ["flips/seed~0", "mod/lr~0.003_seed~1"]}
    for name, content in files.items():
        (cwd / f"{name}.yaml").write_text(yaml.safe_dump(content))
        old = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(main, ["validate", f"{name}.yaml"])
        finally:
            os.chdir(old)
        assert result.exit_code == 0, result.output
        assert sorted(result.output.split()) == expected[name]
        assert planned_runs(cwd, "--configfile", f"{name}.yaml") == expected[name]
    # a bad file stops Snakemake before any job, with the same message as validate's
    (cwd / "bad.yaml").write_text(yaml.safe_dump({"experiments": {"mod": {**mine, "signals": {"detectors": []}}}}))
    proc = snakemake(cwd, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert proc.returncode != 0 and "experiments.mod.signals.detectors: [] runs no detector" in proc.stderr + proc.stdout
    # device: cuda on a machine without CUDA stops a real run before its first job (a dry run plans it)
    import torch

    if not torch.cuda.is_available():
        proc = snakemake(cwd, "--cores", "1", "--config", "device=cuda")
        assert proc.returncode != 0 and "bad value at device: 'cuda'" in proc.stderr + proc.stdout
        assert not (cwd / "results").exists()
    # a syntax error in the workflow's own config file names its line and column
    (cwd / "config" / "config.yaml").write_text("experiments:\n  a: {data: {generator: modular}\n  b: 1\n")
    proc = snakemake(cwd, "-n", "--cores", "1")
    assert proc.returncode != 0 and "config/config.yaml, line 3, column" in proc.stderr + proc.stdout


def test_shipped_experiment_files_each_plan_only_their_own_experiment():
    for path in sorted((REPO / "config" / "experiments").glob("*.yaml")):
        config = load_config_files([path], default=REPO / "config" / "config.yaml")
        names = list(config["experiments"])
        # an intervention file (docs/interventions.md) adds its interventions, named after the file too
        assert names[0] == path.stem and all(n.startswith(f"{path.stem}_") for n in names[1:]), path
        assert all(config["experiments"][n].get("intervene") for n in names[1:]), path


# ---- detector tables: every column is the last checkpoint's value, NaN where undefined -----
def hand_built_evaluation():
    """Two detectors over three checkpoints. high_loss flags nothing at the last one (precision
    and recall undefined there); never_scored has no AUROC at any checkpoint."""
    nan = float("nan")
    rows = [
        # detector, step, n_flagged, auroc, average_precision, precision_at_k, recall_at_k, precision, recall
        ("high_loss", 0, 40, 0.61, 0.30, 0.25, 0.25, 0.20, 0.40),
        ("high_loss", 10, 22, 0.90, 0.70, 0.60, 0.60, 0.5522, 0.61),
        ("high_loss", 20, 0, 0.80, 0.65, 0.55, 0.55, nan, nan),
        ("never_scored", 0, 3, nan, nan, nan, nan, 0.5, 0.1),
        ("never_scored", 10, 0, nan, nan, nan, nan, nan, nan),
        ("never_scored", 20, 0, nan, nan, nan, nan, nan, nan),
    ]
    import pandas as pd

    return pd.DataFrame(rows, columns=["detector", "step", "n_flagged", "auroc", "average_precision", "precision_at_k",
                                       "recall_at_k", "precision", "recall"])


def test_detector_table_holds_the_last_checkpoints_values_and_nan_where_undefined():
    import numpy as np

    from gradscope import report

    evaluation = hand_built_evaluation()
    table = report.detector_table(evaluation.sample(frac=1, random_state=3)).set_index("detector")  # any row order
    for detector in ("high_loss", "never_scored"):
        last = evaluation[evaluation["detector"] == detector].iloc[-1]
        for column in ("n_flagged", "auroc", "average_precision", "precision_at_k", "recall_at_k", "precision", "recall"):
            np.testing.assert_equal(table.loc[detector, column], last[column], err_msg=f"{detector}.{column}")
        assert table.loc[detector, "last_step"] == 20
    assert np.isnan(table.loc["high_loss", "precision"])  # not step 10's 0.5522
    assert table.loc["high_loss", "best_auroc"] == 0.90 and table.loc["high_loss", "best_step"] == 10
    assert np.isnan(table.loc["never_scored", "best_auroc"]) and np.isnan(table.loc["never_scored", "best_step"])


def test_sweep_detector_comparison_is_undefined_where_a_run_is():
    import pandas as pd

    from gradscope import report

    one = report.detector_table(hand_built_evaluation()).assign(run_id="e/a", run="a")
    other = hand_built_evaluation()
    other.loc[other["step"] == 20, ["n_flagged", "precision", "recall"]] = [5, 0.8, 0.2]
    two = report.detector_table(other).assign(run_id="e/b", run="b")
    runs = pd.DataFrame({"run_id": ["e/a", "e/b"], "run": ["a", "b"]})
    text = report.render_sweep_report("e", runs, pd.concat([one, two], ignore_index=True), "c.png", "s.png")
    row = next(line for line in text.splitlines() if line.startswith("| high_loss"))
    header = next(line for line in text.splitlines() if line.startswith("| detector"))
    cells = dict(zip(header.strip("|").split("|"), row.strip("|").split("|")))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    assert cells["precision"] == "–" and cells["recall"] == "–"  # undefined in run a: not run b's 0.8
    assert cells["n_flagged"] == "2.5" and cells["auroc"] == "0.8"


# ---- same config, same bytes ---------------------------------------------------------------
def checkpoint_digests(folder: Path) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "checkpoints").iterdir())}


class Interrupt(Exception):
    pass


def test_same_config_gives_byte_identical_checkpoints_uninterrupted_or_resumed(tmp_path):
    import random

    import pandas as pd

    from gradscope import train
    from support.engine import setup_run

    settings, (tr, te), spec = setup_run(tmp_path)
    first = train.train(settings, tr, te, spec, tmp_path / "a", "r")
    random.random()  # other work in the process (a new process starts from another state anyway)
    second = train.train(settings, tr, te, spec, tmp_path / "b", "r")

    def stop_after_step_7(step):  # dies between the checkpoints at 5 and 10, as a killed job would
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.train(settings, tr, te, spec, tmp_path / "c", "r", progress=stop_after_step_7)
    assert sorted(p.name for p in (tmp_path / "c" / "resume").glob("*.pt")) == ["step_00000000.pt", "step_00000005.pt"]
    random.random()
    resumed = train.train(settings, tr, te, spec, tmp_path / "c", "r")

    reference = checkpoint_digests(tmp_path / "a")
    assert len(reference) == 4
    assert checkpoint_digests(tmp_path / "b") == reference
    assert checkpoint_digests(tmp_path / "c") == reference
    for other in (second, resumed):  # the tables too, apart from the declared timing column
        pd.testing.assert_frame_equal(other.drop(columns="wall_s"), first.drop(columns="wall_s"))
        assert other["wall_s"].notna().all()  # the resumed run's earlier times come back from the store
    for name in ("metrics.parquet", "dynamics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "c" / name).drop(columns="wall_s", errors="ignore"),
                                      pd.read_parquet(tmp_path / "a" / name).drop(columns="wall_s", errors="ignore"))


# ---- stale and damaged files -------------------------------------------------------------
def test_a_run_started_again_leaves_nothing_from_an_earlier_attempt(tmp_path):
    import pandas as pd

    from gradscope import train
    from support.engine import setup_run

    settings, (tr, te), spec = setup_run(tmp_path)
    out = tmp_path / "results" / "runs" / "e" / "r" / "train"
    train.train(settings, tr, te, spec, out, "e/r")
    assert {p.name for p in out.iterdir()} == {"checkpoints", "metrics.parquet", "dynamics.parquet", "manifest.json"}
    diverging = {**settings, "optim": {**settings["optim"], "lr": 1e4}}
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train.train(diverging, tr, te, spec, out, "e/r")
    # only what the failed attempt wrote: its partial metrics, and its resume store
    assert {p.name for p in out.iterdir()} == {"metrics.partial.parquet", "resume"}
    train.train(settings, tr, te, spec, out, "e/r")
    assert {p.name for p in out.iterdir()} == {"checkpoints", "metrics.parquet", "dynamics.parquet", "manifest.json"}
    assert list(pd.read_parquet(out / "metrics.parquet")["step"]) == [0, 4, 8, 12]


def test_every_file_train_writes_is_a_declared_output_of_its_rule():
    from gradscope import train

    from gradscope import layout

    rule = (REPO / "workflow" / "rules" / "train.smk").read_text().split("rule train:")[1].split("log:")[0]
    declared = {layout.IN_RUN[name].split("/", 1)[1] for name in re.findall(r'layout\.RUN\["(\w+)"\]', rule)}
    assert declared == set(train.OUTPUTS) - {"metrics.partial.parquet"}  # that one is kept for a failed run only


def test_a_damaged_artifact_is_named_with_the_command_that_writes_it_again(tmp_path):
    from gradscope import artifacts, checkpoints

    run = tmp_path / "results" / "runs" / "e" / "wd~1.0_seed~0"
    ckpt = run / "train" / "checkpoints" / "step_00000010.pt"
    ckpt.parent.mkdir(parents=True)
    artifacts.write_bytes(b"PK\x03\x04 half a checkpoint", ckpt)
    with pytest.raises(ValueError) as err:
        checkpoints.load_state(ckpt)
    assert str(ckpt) in str(err.value)
    assert "snakemake --cores 2 --force results/runs/e/wd~1.0_seed~0/train/metrics.parquet" in str(err.value)
    part = run / "examples" / "step=10" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError) as err:
        artifacts.read_parquet(part)
    assert str(part) in str(err.value)
    assert "--force results/runs/e/wd~1.0_seed~0/examples` (reruns that extract_examples job; with checkpoint_jobs: " \
           "per_checkpoint, `--force results/runs/e/wd~1.0_seed~0/examples/step=10/part-0.parquet` reruns" in str(err.value)
    assert artifacts.check_file(ckpt) and artifacts.check_file(part)


def test_a_full_disk_names_the_file_and_why(tmp_path, monkeypatch):
    import errno

    import torch

    from gradscope import artifacts, checkpoints
    from gradscope.models import InputSpec

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "step_00000000.pt"
    with pytest.raises(OSError) as err:
        checkpoints.save(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), step=0,
                         spec=InputSpec(kind="dense", dim=2, n_classes=2, vocab=None), settings={}, lr=0.1)
    assert f"cannot write {path}: No space left on device" in str(err.value) and "MB free there" in str(err.value)
    assert err.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())  # no half-written file either
    monkeypatch.undo()
    with pytest.raises(OSError, match="cannot write .*summary.json: No space left on device"):
        with artifacts.atomic_path(tmp_path / "summary.json"):
            raise OSError(None, "Error writing bytes to file. Detail: [errno 28] No space left on device")  # pyarrow's


def fake_run(results: Path, run_id: str, *, analysed: bool = True) -> Path:
    """A run folder with what `gradscope runs` reads: config, metrics, and (analysed) a signals
    summary and one curvature table."""
    import pandas as pd

    from gradscope import artifacts

    folder = results / "runs" / run_id
    artifacts.write_yaml({"experiment": run_id.split("/")[0]}, folder / "config.yaml")
    metrics = pd.DataFrame({c: [0.0, 1.0] for c in artifacts.METRICS}).assign(step=[0, 10], clipped=False)
    artifacts.write_parquet(metrics, folder / "train" / "metrics.parquet", artifacts.METRICS)
    if analysed:
        artifacts.write_json({"per_step": [], "headline": {}, "generalization": {
            "step_memorized": 10, "step_generalized": float("nan"), "delay_steps": float("nan")}},
            folder / "signals" / "summary.json")
        artifacts.write_parquet(pd.DataFrame({"sharpness": [2.0], "sharpness_threshold": [20.0]}),
                                folder / "curvature" / "step=10" / "part-0.parquet", None)
    return folder


def test_runs_lists_every_run_marking_a_damaged_one_and_a_failed_stage(tmp_path):
    results = tmp_path / "results"
    fake_run(results, "e/a")
    damaged = fake_run(results, "e/b") / "curvature" / "step=10" / "part-0.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    fake_run(results, "e/c", analysed=False)
    log = tmp_path / "logs" / "detect_signals" / "e" / "c.log"
    log.parent.mkdir(parents=True)
    log.write_text("2025-01-01 10:00:00,000 INFO gradscope.pipeline: starting\n"
                   "2025-01-01 10:00:01,000 ERROR gradscope: failed\nTraceback (most recent call last):\n  boom\n")
    fake_run(results, "e/d", analysed=False)
    retried = tmp_path / "logs" / "detect_signals" / "e" / "d.log"  # failed once, then started again
    retried.write_text(log.read_text() + "2025-01-01 11:00:00,000 INFO gradscope.pipeline: starting\n")
    result = CliRunner().invoke(main, ["runs", "--results", str(results)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(lines) == {"e/a", "e/b", "e/c", "e/d"}
    assert " analysing " in lines["e/a"] and "not yet written: examples" in lines["e/a"]  # no per-example tables
    assert "damaged" in lines["e/b"] and str(damaged) in lines["e/b"] and "--force" in lines["e/b"]
    assert " failed " in lines["e/c"] and "detect_signals failed" in lines["e/c"] and str(log) in lines["e/c"]
    assert " analysing " in lines["e/d"] and "failed" not in lines["e/d"]
    show = CliRunner().invoke(main, ["show", "e/b", "--results", str(results)])
    assert show.exit_code == 0 and "curvature/step=10/part-0.parquet  DAMAGED" in show.output, show.output


def test_runs_of_an_unknown_experiment_names_it_and_the_known_ones(tmp_path):
    fake_run(tmp_path / "results", "grokking/a")
    fake_run(tmp_path / "results", "opposing/a")
    result = CliRunner().invoke(main, ["runs", "-e", "nosuchexp", "--results", str(tmp_path / "results")])
    assert result.exit_code == 1
    assert "no runs of experiment 'nosuchexp'" in result.output and "its experiments: grokking, opposing" in result.output


def test_a_second_trainer_of_a_run_stops_and_says_who_holds_it(tmp_path):
    from gradscope import train

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "experiments": {"m": {
        "data": {"generator": "modular", "modular": {"p": 5, "train_fraction": 0.6}},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 6, "log_every": 3, "checkpoints": {"every": 3}},
        "signals": {"opposing_groups": {"top_k": 5, "n_groups": 2}}}}}))
    out = tmp_path / "r" / "runs" / "m" / "seed~0" / "train"
    args = ["train", "m/seed~0", "--config", str(config), "--results", str(tmp_path / "r")]
    with train.run_lock(out, "m/seed~0"):
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "another process is training this run (pid " in result.output and str(os.getpid()) in result.output
    assert not (out / "checkpoints").exists() and not (out / "resume").exists()
    result = CliRunner().invoke(main, args)  # free again: the lock went with its holder
    assert result.exit_code == 0, result.output
    assert not (out / train.LOCK).exists()


@pytest.mark.workflow
@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_by_every_workflow_start(done, tmp_path):
    # Snakemake's timestamps cannot see a checkpoint cut short after training: each start (a dry
    # run too) names it, with the command that writes it again, from the sizes in the manifest.
    import shutil as sh

    from gradscope import artifacts
    from support.workflow import TINY

    cwd = copy_workflow(tmp_path / "wf", yaml.safe_load(TINY.read_text()))
    sh.copytree(done / "results", cwd / "results")
    train = cwd / "results/runs/flips/seed~0/train"
    manifest = json.loads((train / "manifest.json").read_text())
    assert set(manifest["checkpoint_bytes"]) == set(manifest["checkpoints"])
    assert artifacts.damaged_checkpoints(train / "manifest.json") == []
    ckpt = train / manifest["checkpoints"]["15"]
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    [line] = artifacts.damaged_checkpoints(train / "manifest.json")
    assert str(ckpt) in line and "1,000 bytes on disk" in line and "--force results/runs/flips/seed~0/train/metrics.parquet" in line
    proc = snakemake(cwd, "-n", "--cores", "1")
    assert proc.returncode == 0 and "damaged artifact results/runs/flips/seed~0/train/checkpoints/" in proc.stderr
    assert "--force results/runs/flips/seed~0/train/metrics.parquet" in proc.stderr


@pytest.mark.workflow
@pytest.mark.slow
def test_a_damaged_parquet_or_json_file_is_named_by_every_workflow_start(done, tmp_path):
    # A table cut short, a table overwritten with something else and a JSON file that no longer
    # parses all look current to Snakemake's timestamps: the dry run names each with its command.
    import shutil as sh

    from gradscope import artifacts
    from support.workflow import TINY

    cwd = copy_workflow(tmp_path / "wf", yaml.safe_load(TINY.read_text()))
    sh.copytree(done / "results", cwd / "results")
    run = cwd / "results/runs/flips/seed~0"
    assert artifacts.damaged_tables(run) == [] and artifacts.damaged_tables(cwd / "results/sweeps") == []
    examples = sorted((run / "examples").rglob("*.parquet"))[0]
    examples.write_bytes(examples.read_bytes()[:-100])  # truncated: the footer's magic is gone
    curvature = sorted((run / "curvature").rglob("*.parquet"))[0]
    curvature.write_bytes(b"PAR1" + b"\0" * 40)  # begins like Parquet, ends wrong
    summary = run / "signals" / "summary.json"
    summary.write_text('{"detectors": ')
    data_meta = sorted((cwd / "results/data").glob("*/meta.json"))[0]
    data_meta.write_text("")
    lines = artifacts.damaged_tables(run)
    assert sorted(line.split(":")[0] for line in lines) == sorted(map(str, (examples, curvature, summary)))
    proc = snakemake(cwd, "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stderr
    named = [line for line in proc.stderr.splitlines() if line.startswith("gradscope: damaged artifact ")]
    assert len(named) == 4, proc.stderr
    for path, command in [(examples, "--force results/runs/flips/seed~0/examples"),
                          (curvature, "--force results/runs/flips/seed~0/curvature"),
                          (summary, "--force results/runs/flips/seed~0/signals/summary.json"),
                          (data_meta, "--force results/data/")]:
        [line] = [line for line in named if str(path.relative_to(cwd)) in line]
        assert command in line, line
