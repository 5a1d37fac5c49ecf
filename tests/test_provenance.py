"""Your code is part of the provenance (issue 28, item 1): the source of a `python` model or data
factory is an input of the stages that import it, a checkpoint records the fingerprint of the
code that built its model, and loading it under other code is refused, naming the factory."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from gradscope import artifacts, checkpoints, config, factories, layout, pipeline
from gradscope.models import InputSpec, build_model

MODEL = """
from torch import nn

def net(input_shape, n_classes, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
"""

DATA = """
import numpy as np

def blobs(n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, 3)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
"""


def later(path, text, wait=0.0):
    """Write `text` to `path`, `wait` seconds on (an mtime surely after every output written so far)."""
    time.sleep(wait)
    path.write_text(text)


def fresh_process(*names):
    """What a new process sees: the modules imported again, their sources read again."""
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A working directory with a model module and a data module of unique names (imported fresh)."""
    names = {"model": f"prov_model_{uuid.uuid4().hex[:8]}", "data": f"prov_data_{uuid.uuid4().hex[:8]}"}
    (tmp_path / f"{names['model']}.py").write_text(MODEL)
    (tmp_path / f"{names['data']}.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield tmp_path, names
    fresh_process(*names.values())


def save_checkpoint(path, settings, spec):
    torch.manual_seed(0)
    model = build_model(settings["model"], spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoints.save(path, model=model, optimizer=optimizer, step=0, spec=spec, settings=settings, lr=0.1)


def test_a_checkpoint_records_its_model_code_and_refuses_other_code(lab):
    folder, names = lab
    value = f"{names['model']}:net"
    settings = {"model": {"kind": "python", "factory": value, "kwargs": {}}}
    spec = InputSpec("dense", 3, 0, 2)
    path = folder / "step_00000000.pt"
    save_checkpoint(path, settings, spec)
    state = checkpoints.load_state(path)
    then = factories.fingerprint(value, key="model.factory")
    assert then["files"] == [f"{names['model']}.py"] and len(then["sha256"]) == 64
    assert state["code"] == {"model.factory": {"factory": value, "sha256": then["sha256"]}}
    checkpoints.load(path)  # the same code: loads

    later(folder / f"{names['model']}.py", MODEL.replace("nn.ReLU()", "nn.Tanh()"))
    checkpoints.load(path)  # this process still runs the code it imported: the weights' own
    fresh_process(names["model"])  # a new process imports the edited file
    with pytest.raises(factories.CodeChangedError) as err:
        checkpoints.load(path)
    message = str(err.value)
    now = factories.fingerprint(value, key="model.factory")["sha256"]
    assert message.startswith(f"model.factory: cannot use {value!r}: checkpoint {path} was made by other code")
    assert f"sha256:{then['sha256'][:16]}" in message and f"sha256:{now[:16]}" in message
    assert f"{names['model']}.py" in message
    assert not checkpoints.same_code(state)

    later(folder / f"{names['model']}.py", MODEL)  # the code put back as it was
    fresh_process(names["model"])
    checkpoints.load(path)
    assert checkpoints.same_code(state)


def test_checkpoints_without_a_fingerprint_and_built_in_models_load(lab):
    folder, names = lab
    settings = {"model": {"kind": "python", "factory": f"{names['model']}:net", "kwargs": {}}}
    spec = InputSpec("dense", 3, 0, 2)
    old = folder / "old.pt"
    save_checkpoint(old, settings, spec)
    state = checkpoints.load_state(old)
    del state["code"]  # written before gradscope recorded the code
    torch.save(state, old)
    later(folder / f"{names['model']}.py", MODEL.replace("nn.ReLU()", "nn.Tanh()"))
    fresh_process(names["model"])
    checkpoints.load(old)
    builtin = folder / "mlp.pt"
    save_checkpoint(builtin, {"model": {"kind": "mlp", "depth": 1, "width": 4}}, spec)
    assert "code" not in checkpoints.load_state(builtin)
    checkpoints.load(builtin)


def test_a_plain_checkpoint_is_checked_against_the_code_its_run_was_imported_with(lab):
    folder, names = lab
    model_settings = {"kind": "python", "factory": f"{names['model']}:net", "kwargs": {}}
    spec = InputSpec("dense", 3, 0, 2)
    torch.save(build_model(model_settings, spec).state_dict(), folder / "plain.pt")
    code = factories.model_code(model_settings)
    checkpoints.load(folder / "plain.pt", model_settings=model_settings, spec=spec, code=code)
    later(folder / f"{names['model']}.py", MODEL.replace("nn.ReLU()", "nn.Tanh()"))
    fresh_process(names["model"])
    with pytest.raises(factories.CodeChangedError, match="model.factory: cannot use"):
        checkpoints.load(folder / "plain.pt", model_settings=model_settings, spec=spec, code=code)
    checkpoints.load(folder / "plain.pt", model_settings=model_settings, spec=spec)  # nothing recorded: as before


def test_the_dataset_meta_records_the_data_factory_code(lab):
    folder, names = lab
    block = config.section("data", {"generator": "python", "python": {"factory": f"{names['data']}:blobs"}})
    files = {k: str(folder / "dataset" / os.path.basename(v)) for k, v in layout.DATASET.items()}
    pipeline.generate_data(block, train_path=files["train"], test_path=files["test"], meta_path=files["meta"])
    meta = artifacts.read_json(files["meta"])
    sha = factories.fingerprint(f"{names['data']}:blobs", key="data.python.factory")["sha256"]
    assert meta["code"] == {"data.python.factory": {"factory": f"{names['data']}:blobs", "sha256": sha}}


def test_source_files_name_the_module_and_the_defining_module(lab):
    folder, names = lab
    (folder / f"{names['model']}_alias.py").write_text(f"from {names['model']} import net as build\n")
    try:
        files = factories.source_files(f"{names['model']}_alias:build", key="model.factory")
        assert files == [f"{names['model']}_alias.py", f"{names['model']}.py"]
    finally:
        fresh_process(f"{names['model']}_alias")
    assert factories.model_code({"kind": "mlp"}) is None and factories.data_code({"generator": "modular"}) is None


# ---- through the workflow (real Snakemake) -----------------------------------------------------
OWN = {
    "device": "cpu",
    "experiments": {"own": {
        "data": {"generator": "python", "python": {"factory": "user_code.my_data:noisy_waves",
                                                   "kwargs": {"n_train": 16, "n_test": 8, "length": 8,
                                                              "n_classes": 2}}},
        "model": {"kind": "python", "factory": "user_code.my_model:small_convnet",
                  "kwargs": {"width": 2, "blocks": 1, "groups": 1}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"steps": 2, "log_every": 1, "checkpoints": {"at": [0]}},
        "examples": {"proj_dim": 4},
        "curvature": {"subset_size": 8, "lanczos_iters": 3, "trace_max_samples": 4},
        "plots": {"dpi": 40, "gif_points": 10},
    }},
}


@pytest.mark.slow
def test_an_edited_factory_reruns_what_it_built_and_refuses_old_weights(tmp_path):
    """The issue's case: my_model.py edited after training (ReLU to Tanh). The stages that rebuild the
    model (train, examples, curvature) plan again and rebuild; with their outputs marked current
    (--touch) and proj_dim changed, the examples job refuses the old weights, naming the factory,
    as does a notebook's open_run; an edited data factory generates the dataset again."""
    from support.workflow import copy_workflow, planned, snakemake

    cwd = copy_workflow(tmp_path / "wf", OWN)
    run = layout.run_dir("own/seed~0", cwd / "results")
    targets = [str(layout.in_run(run, name, step=0).relative_to(cwd)) for name in ("examples", "curvature", "config")]
    snakemake(cwd, "--cores", "1", *targets)
    assert "Nothing to be done" in snakemake(cwd, "-n", "--cores", "1", *targets).stdout
    ckpt = layout.in_run(run, "checkpoints") / checkpoints.checkpoint_name(0)
    before = checkpoints.load_state(ckpt)["code"]["model.factory"]["sha256"]
    meta = artifacts.read_json(next((cwd / "results").rglob("meta.json")))
    assert meta["code"]["data.python.factory"]["factory"] == "user_code.my_data:noisy_waves"

    # the model factory edited (ReLU to Tanh): training and every stage that rebuilds the model plan again
    factory = cwd / "user_code" / "my_model.py"
    later(factory, factory.read_text().replace("nn.ReLU()", "nn.Tanh()"), wait=1)
    jobs = planned(cwd, "--", *targets)
    assert {"train", "extract_examples", "curvature"} <= set(jobs) and "generate_data" not in jobs, jobs
    snakemake(cwd, "--cores", "1", *targets)
    after = checkpoints.load_state(ckpt)["code"]["model.factory"]["sha256"]
    assert after != before
    assert "Nothing to be done" in snakemake(cwd, "-n", "--cores", "1", *targets).stdout

    # edited again and the outputs marked current with --touch, then a downstream setting changed:
    # the examples job refuses the old weights, naming the factory and both fingerprints
    later(factory, factory.read_text().replace("nn.Tanh()", "nn.GELU()"), wait=1)
    snakemake(cwd, "--touch", "--cores", "1", *targets)
    own = {**OWN["experiments"]["own"], "examples": {"proj_dim": 3}}
    (cwd / "config" / "config.yaml").write_text(yaml.safe_dump({**OWN, "experiments": {"own": own}}, sort_keys=False))
    proc = snakemake(cwd, "--cores", "1", *targets[:1], check=False)
    assert proc.returncode != 0
    logs = [p for p in (cwd / "logs").rglob("*") if p.is_file() and "examples" in p.as_posix()]
    said = proc.stderr + "".join(p.read_text() for p in logs)
    assert "model.factory: cannot use 'user_code.my_model:small_convnet'" in said, proc.stderr[-3000:]
    assert f"sha256:{after[:16]}" in said and "user_code/my_model.py" in said
    # a notebook's open_run refuses the checkpoint too
    code = f"import gradscope; gradscope.open_run({str(run)!r}).checkpoint(0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode != 0 and "CodeChangedError: model.factory: cannot use" in proc.stderr, proc.stderr[-2000:]
    # and gradscope show says so
    gradscope = str(Path(sys.executable).parent / "gradscope")
    proc = subprocess.run([gradscope, "show", "own/seed~0"], cwd=cwd, capture_output=True, text=True)
    assert "model code changed since training: model.factory: cannot use" in proc.stderr, proc.stderr[-2000:]

    # the data factory edited: the dataset is generated again, and what depends on it
    source = cwd / "user_code" / "my_data.py"
    later(source, source.read_text().replace("noise * rng", "0.25 * noise * rng"), wait=1)
    assert {"generate_data", "train"} <= set(planned(cwd, "--", *targets))


def test_a_recording_does_not_resume_under_other_model_code(lab):
    """gradscope.Recorder's checkpoints record the factory's code too; resuming after an edit is refused."""
    from gradscope.recorder import Recorder

    folder, names = lab
    value = f"{names['model']}:net"
    rng = torch.Generator().manual_seed(0)
    arrays = ((torch.randn(12, 3, generator=rng), torch.arange(12) % 2),
              (torch.randn(6, 3, generator=rng), torch.arange(6) % 2))

    def start(resume):
        model = factories.resolve(value, key="model.factory")(input_shape=(3,), n_classes=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return Recorder(folder / "rec", model=model, optimizer=optimizer, data=arrays, steps=4, model_factory=value,
                        checkpoints={"at": [0]}, log_every=1, dynamics_every=0, device="cpu", resume=resume)

    start(False)  # stopped before finishing, its checkpoint at step 0 written
    state = checkpoints.load_state(folder / "rec" / "train" / "checkpoints" / checkpoints.checkpoint_name(0))
    assert state["code"]["model.factory"]["factory"] == value
    later(folder / f"{names['model']}.py", MODEL.replace("nn.ReLU()", "nn.Tanh()"))
    fresh_process(names["model"])
    with pytest.raises(factories.CodeChangedError, match=rf"model.factory: cannot use '{value}'"):
        start(True)
