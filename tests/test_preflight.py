"""Issue 28, items 3 and 4: each model built on one example of its data, and each run's cost
checked against `limits`, before any job (gradscope.preflight); planning never grows with steps."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from gradscope import preflight
from gradscope.config import ConfigError, checkpoint_count, checkpoint_steps, load_config, load_runs
from support.workflow import copy_workflow
from support.workflow import snakemake as run_snakemake

REPO = Path(__file__).resolve().parents[1]

BASE = {"device": "cpu", "experiments": {"e": {
    "data": {"generator": "planted_flips", "planted_flips": {"n_train": 120, "n_test": 60, "n_features": 6,
                                                              "n_classes": 3}},
    "model": {"depth": 1, "width": 16},
    "optim": {"name": "sgd", "lr": 0.2},
    "train": {"steps": 30, "log_every": 5, "checkpoints": {"every": 15}},
    "signals": {"opposing_groups": {"top_k": 5, "n_groups": 2}},
    "curvature": {"subset_size": 64, "lanczos_iters": 8},
}}}

MODELS = '''
from torch import nn

def wide(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes + 2))

def narrow(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes - 1))

def frozen(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes)).requires_grad_(False)

def wrong_input(input_shape, n_classes):
    return nn.Linear(10, n_classes)

class Extra(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.layer = nn.Linear(d, k)

    def forward(self, x):
        return self.layer(x).unsqueeze(1)  # (batch, 1, n_classes)

def extra_axis(input_shape, n_classes):
    return Extra(input_shape[0], n_classes)

def good(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes))
'''


@pytest.fixture
def factories_here(tmp_path, monkeypatch):
    """A module of model factories, importable from the working directory (tmp_path)."""
    (tmp_path / "pf_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def changed(limits=None, **sections) -> dict:
    c = copy.deepcopy(BASE)
    for key, value in sections.items():
        c["experiments"]["e"][key] = value if key in ("model", "data") else {**c["experiments"]["e"].get(key, {}), **value}
    if limits is not None:
        c["limits"] = limits
    return c


def refused(config) -> str:
    with pytest.raises(ConfigError) as err:
        load_runs(config)
    return str(err.value)


# ---- the model on one example of its data --------------------------------------------------
MODEL_CASES = {
    "two outputs more than classes": ("wide", ["experiments.e.model.factory", "'pf_models:wide'",
                                               "logits of shape (1, 5); expected (1, n_classes) = (1, 3)"]),
    "too few outputs": ("narrow", ["experiments.e.model.factory", "logits of shape (1, 2)", "(1, n_classes) = (1, 3)"]),
    "no trainable parameters": ("frozen", ["experiments.e.model.factory", "no trainable parameters",
                                           "allowed: a model with at least one parameter that requires grad"]),
    "wrong input size": ("wrong_input", ["experiments.e.model.factory", "shape (1, 6) float32",
                                         "mat1 and mat2 shapes cannot be multiplied",
                                         "(batch, *input_shape) = (batch, 6)"]),
    "logits (batch, 1, C)": ("extra_axis", ["experiments.e.model.factory", "logits of shape (1, 1, 3)",
                                            "expected (1, n_classes) = (1, 3)"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_model_factory_that_does_not_fit_its_data_stops_at_validation(factories_here, case):
    name, fragments = MODEL_CASES[case]
    text = refused(changed(model={"kind": "python", "factory": f"pf_models:{name}"}))
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_a_fitting_factory_passes(factories_here):
    load_runs(changed(model={"kind": "python", "factory": "pf_models:good"}))


@pytest.mark.parametrize("model, data, fragments", [
    ({"kind": "transformer"}, None, ["experiments.e.model.kind: 'transformer'", "needs token inputs"]),
    ({"kind": "cnn"}, None, ["experiments.e.model.kind: 'cnn'", "square image", "dim is 6"]),
    ({"kind": "cnn", "channels": [4, 4, 4]}, {"generator": "opposing_features", "opposing_features": {"side": 4, "patch": 1}},
     ["experiments.e.model.channels: [4, 4, 4]", "3 pooling stages shrink a 4x4 input to nothing"]),
    (None, {"generator": "opposing_features", "opposing_features": {"side": 4, "patch": 3}},
     ["experiments.e.data.opposing_features.patch: 3", "allowed: 1..2"]),
])
def test_a_built_in_model_or_patch_that_does_not_fit_the_data_stops_at_validation(model, data, fragments):
    text = refused(changed(**{k: v for k, v in (("model", model), ("data", data)) if v is not None}))
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_a_files_source_is_read_for_its_shape_and_classes(factories_here):
    x, y = np.zeros((50, 6), np.float32), np.arange(50) % 4  # 4 classes: a 6-output model is refused
    np.savez(factories_here / "d.npz", x=x, y=y)
    config = changed(model={"kind": "python", "factory": "pf_models:wide"},
                     data={"generator": "files", "files": {"train": "d.npz", "test": "d.npz"}},
                     signals={"detectors": ["high_loss"]})
    assert "logits of shape (1, 6); expected (1, n_classes) = (1, 4)" in refused(config)
    good = copy.deepcopy(config)
    good["experiments"]["e"]["model"]["factory"] = "pf_models:good"
    load_runs(good)


DATA = '''
import os
import numpy as np

def four_classes(n=40, d=6):
    rng = np.random.default_rng(0)
    with open("calls.txt", "a") as f:
        f.write("called\\n")
    return (rng.normal(size=(n, d)).astype("float32"), np.arange(n) % 4), (rng.normal(size=(n, d)).astype("float32"), np.arange(n) % 4)

def bad_label(n=40, d=6):
    y = np.arange(n) % 3
    y[7] = -1
    return (np.zeros((n, d), "float32"), y), (np.zeros((n, d), "float32"), np.arange(n) % 3)

def hungry(n=40, d=6):
    block = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    more = np.ones(800 * 2**20 // 8)   # and 800 more: past the 1 GB bound
    return (np.zeros((n, d), "float32"), np.arange(n) % 3), (np.zeros((n, d), "float32"), np.arange(n) % 3)

def slow(n=40, d=6):
    import time
    time.sleep(30)
    return (np.zeros((n, d), "float32"), np.arange(n) % 3), (np.zeros((n, d), "float32"), np.arange(n) % 3)
'''


def python_data(function: str, model: str = "wide", limits=None) -> dict:
    return changed(model={"kind": "python", "factory": f"pf_models:{model}"}, limits=limits,
                   data={"generator": "python", "python": {"factory": f"pf_data:{function}"}},
                   signals={"detectors": ["high_loss"]})


@pytest.fixture
def data_here(factories_here):
    (factories_here / "pf_data.py").write_text(DATA)
    return factories_here


def test_a_python_data_source_is_made_at_planning_and_its_model_checked(data_here, monkeypatch):
    # Its input is known only once its factory runs: planning runs it in a watched child process.
    assert "logits of shape (1, 6); expected (1, n_classes) = (1, 4)" in refused(python_data("four_classes"))
    assert (data_here / "calls.txt").read_text().count("called") == 1
    load_runs(python_data("four_classes", model="good"))
    load_runs(python_data("four_classes", model="good"))
    # once per version of the factory's code: the same settings and code do not run it again ...
    assert (data_here / "calls.txt").read_text().count("called") == 1
    probes = list((data_here / "results" / "data" / ".probe").glob("*.json"))
    assert len(probes) == 1 and json.loads(probes[0].read_text())["input"]["n_classes"] == 4
    # ... an edit of its code does (the factory now makes 3 classes: the 3-output model is refused)
    (data_here / "pf_data.py").write_text(DATA.replace("np.arange(n) % 4", "np.arange(n) % 3"))
    from gradscope import factories

    monkeypatch.delitem(sys.modules, "pf_data")  # as a new planning process imports it
    monkeypatch.setattr(factories, "_DIGESTS", {})
    text = refused(python_data("four_classes", model="wide"))
    assert "logits of shape (1, 5); expected (1, n_classes) = (1, 3)" in text, text
    assert (data_here / "calls.txt").read_text().count("called") == 2


def test_a_python_data_source_whose_data_are_bad_stops_at_planning(data_here):
    text = refused(python_data("bad_label", model="good"))
    assert "experiments.e.data.python.factory" in text and "'pf_data:bad_label'" in text, text
    assert "-1" in text, text


def test_the_train_job_checks_with_the_same_message(factories_here):
    # Where planning could not make the data (a bound passed), pipeline.train_run checks the model so.
    from gradscope.models import InputSpec

    spec = InputSpec(kind="dense", dim=6, vocab=0, n_classes=3)
    with pytest.raises(ConfigError, match=r"model.factory: 'pf_models:wide': .* expected \(1, n_classes\) = \(1, 3\)"):
        preflight.check_model({"kind": "python", "factory": "pf_models:wide"}, spec)
    preflight.check_model({"kind": "python", "factory": "pf_models:good"}, spec)


@pytest.mark.parametrize("function, limits, said", [
    ("hungry", None, "more than 1024 MB, planning's bound"),
    ("slow", {"probe_seconds": 2}, "more than limits.probe_seconds = 2 s"),
    ("four_classes", {"probe_seconds": None}, "limits.probe_seconds is null"),
])
def test_data_past_planning_bounds_defer_the_check_to_the_train_job_and_say_so(data_here, caplog, function, limits,
                                                                               said):
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="gradscope.data.probe"):
        load_runs(python_data(function, limits=limits))  # the wide model passes planning: its data are not known
    assert time.monotonic() - start < 25
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "data.python: the model on this data is checked when its train job starts" in warned, warned
    assert said in warned, warned
    assert not (data_here / "results" / "data" / ".probe").exists() or not list(
        (data_here / "results" / "data" / ".probe").glob("*.json"))


# ---- limits --------------------------------------------------------------------------------
def test_checkpoints_are_counted_without_a_list():
    train = {"steps": 10**12, "checkpoints": {"every": 15}}
    assert checkpoint_count(train) == 10**12 // 15 + 2
    with pytest.raises(ConfigError, match="train.checkpoints.every: 15"):
        checkpoint_steps(train)  # refuses before it builds any list
    for rule in ({"every": 7}, {"at": [0, 3, 3, 40, 99]}, {"log_spaced": 12}):
        small = {"steps": 99, "checkpoints": rule}
        assert checkpoint_count(small) == len(checkpoint_steps(small))


def test_too_many_checkpoints_are_refused_naming_the_key_and_the_count():
    text = refused(changed(train={"steps": 10**12, "checkpoints": {"every": 15}}))
    for fragment in ["experiments.e.train.checkpoints.every: 15", "66,666,666,668 checkpoints",
                     "limits.max_checkpoints = 1,000", "allowed: every >= "]:
        assert fragment in text, (fragment, text)


def test_planned_training_time_is_refused_or_let_through_by_the_limit():
    config = changed(train={"steps": 10**12, "checkpoints": {"log_spaced": 10}})
    text = refused(config)
    assert "experiments.e.train.steps: 1,000,000,000,000 plans an estimated 860,650 minutes" in text
    assert "limits.max_train_minutes = 20,160" in text
    load_runs({**config, "limits": {"max_train_minutes": None}})


@pytest.mark.parametrize("sections, fragments", [
    ({"data": {"generator": "planted_flips", "planted_flips": {"n_train": 10**9, "n_test": 60, "n_features": 6}}},
     ["experiments.e.data.planted_flips.n_train: 1,000,000,000", "generate_data 641.0 GB", "limits.max_memory_mb"]),
    ({"model": {"depth": 1, "width": 10**7}}, ["experiments.e.model.width: 10,000,000", "train 63.5 GB",
                                                "limits.max_memory_mb"]),
])
def test_memory_beyond_the_machine_is_refused_naming_the_key_and_the_estimate(sections, fragments):
    text = refused(changed(limits={"max_memory_mb": 16000}, **sections))
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_memory_limit_defaults_to_this_machine_and_can_be_raised():
    lim = preflight.limits({})
    assert lim["max_memory_mb"] == preflight.machine_memory_mb() > 0
    config = changed(model={"depth": 1, "width": 100_000})  # a few GB: refused under 1 GB, let through above
    assert "experiments.e.model.width: 100,000" in refused({**config, "limits": {"max_memory_mb": 1000}})
    load_runs({**config, "limits": {"max_memory_mb": 10**7}}, build_models=False)


def test_a_projection_wider_than_the_model_is_refused():
    text = refused(changed(model={"depth": 0}, examples={"proj_dim": 10**6}))
    assert "experiments.e.examples.proj_dim: 1,000,000 is more than the 21 trainable parameters" in text
    assert "allowed: 1..32" in text


def test_load_config_alone_does_not_plan():
    load_config(changed(train={"steps": 10**12, "checkpoints": {"every": 15}}))  # only load_runs plans


@pytest.mark.parametrize("path", sorted((REPO / "config" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_experiments_pass(path, monkeypatch):
    from gradscope.config import load_config_files

    monkeypatch.chdir(REPO)
    load_runs(load_config_files([path]))


# ---- the CLI and the workflow: refused in a subprocess that stays under 1 GB -----------------
PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stdout.write(p.stdout + p.stderr)")


def _measured(cwd, *command) -> tuple[int, int, str]:
    """(exit code, the command's peak RSS in KB, its output), the command run by a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PEAK, *command], cwd=cwd, capture_output=True, text=True, check=True)
    code, peak, text = out.stdout.split("\n", 2)
    return int(code), int(peak), text


HUGE = changed(train={"steps": 10**12, "checkpoints": {"every": 15}})


@pytest.mark.slow
def test_validate_refuses_the_huge_schedule_in_bounded_memory(tmp_path):
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump(HUGE))
    gradscope = str(Path(sys.executable).with_name("gradscope"))
    code, peak, text = _measured(tmp_path, gradscope, "validate", "huge.yaml")
    assert code != 0 and "train.checkpoints.every: 15" in text and "limits.max_checkpoints" in text, text
    assert peak < 1_000_000, f"peak RSS {peak} KB"


@pytest.mark.slow
def test_snakemake_dry_run_refuses_the_huge_schedule_in_bounded_memory(tmp_path):
    work = copy_workflow(tmp_path / "wf", HUGE)
    code, peak, text = _measured(work, sys.executable, "-m", "snakemake", "-n", "--cores", "1")
    assert code != 0 and "train.checkpoints.every: 15" in text and "66,666,666,668 checkpoints" in text, text
    assert peak < 1_000_000, f"peak RSS {peak} KB"


@pytest.mark.slow
def test_snakemake_refuses_a_model_with_too_many_outputs(tmp_path):
    work = copy_workflow(tmp_path / "wf", changed(model={"kind": "python", "factory": "pf_models:wide"}))
    (work / "pf_models.py").write_text(MODELS)
    proc = run_snakemake(work, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "experiments.e.model.factory: 'pf_models:wide'" in proc.stderr + proc.stdout
    assert "expected (1, n_classes) = (1, 3)" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_snakemake_refuses_a_model_that_does_not_fit_python_data_before_any_job(tmp_path):
    work = copy_workflow(tmp_path / "wf", python_data("four_classes", model="wide"))
    (work / "pf_models.py").write_text(MODELS)
    (work / "pf_data.py").write_text(DATA)
    proc = run_snakemake(work, "--cores", "1", check=False)
    text = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "experiments.e.model.factory: 'pf_models:wide'" in text, text
    assert "expected (1, n_classes) = (1, 4)" in text and not (work / "results" / "runs").exists(), text


@pytest.mark.slow
def test_validate_cli_names_the_factory(factories_here):
    from click.testing import CliRunner

    from gradscope.cli import main

    (factories_here / "c.yaml").write_text(yaml.safe_dump(changed(model={"kind": "python", "factory": "pf_models:narrow"})))
    result = CliRunner().invoke(main, ["validate", "c.yaml", "--default", "none.yaml"])
    assert result.exit_code != 0
    assert "c.yaml: invalid gradscope config" in result.output
    assert "experiments.e.model.factory: 'pf_models:narrow'" in result.output and "(1, n_classes) = (1, 3)" in result.output
