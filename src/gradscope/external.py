"""Runs gradscope did not train: recorded runs and folders of your own checkpoints.

An experiment's `source` names where its training artifacts come from instead of training:

    source: {recorded: runs/mine}                 # run folder(s) written by gradscope.Recorder
    source: {checkpoints: ckpts/, glob: "*.pt"}    # plain state_dicts of your own loop

A recorded run's config.yaml gives its data, model, optimizer and training settings. A folder of
checkpoints is read with the experiment's own data, model and optim sections; each file's step is
the last number in its path below the folder (step_100.pt, model-000100.safetensors,
epoch=3-step=100.ckpt, checkpoint-100/model.safetensors). The workflow's `import_run` job turns
either into the train stage's outputs (metrics, dynamics, manifest; see `import_run`), and the
per-checkpoint jobs read each checkpoint file directly, so a checkpoint added to the folder runs its
own jobs and what reads them, and nothing else.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import yaml

from gradscope import artifacts, layout

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
KINDS = ("recorded", "checkpoints")
TRAINING = ("data", "model", "optim", "train")  # what a recorded run's config.yaml decides


class SourceError(ValueError):
    """A source that cannot be read as a run; the message names the key, the path and what to do."""


def kind(source: dict) -> str:
    found = [k for k in KINDS if k in source]
    if len(found) != 1:
        raise SourceError(f"gives {' and '.join(found) or 'neither recorded nor checkpoints'}; allowed: exactly one of "
                          "recorded (run folders of gradscope.Recorder) or checkpoints (a folder of your checkpoints)")
    return found[0]


def step_of(relative: str) -> int | None:
    """The step a checkpoint's path below its folder names: its last number."""
    numbers = re.findall(r"\d+", relative.rsplit(".", 1)[0] if Path(relative).suffix in SUFFIXES else relative)
    return int(numbers[-1]) if numbers else None


def discover(folder, glob: str = "*", key: str = "source.checkpoints") -> dict[int, str]:
    """{step: path} of the checkpoint files in `folder` matching `glob` (one level by default)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{key}: {folder} is not a folder; give the folder your loop saves checkpoints in")
    files = sorted(p for p in folder.glob(glob) if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise SourceError(f"{key}: {folder} holds no checkpoint file matching {glob!r} (suffixes "
                          f"{', '.join(SUFFIXES)}); for checkpoints in subfolders set source.glob, e.g. "
                          "'checkpoint-*/model.safetensors'")
    steps: dict[int, str] = {}
    nameless = []
    for path in files:
        step = step_of(path.relative_to(folder).as_posix())
        if step is None:
            nameless.append(path.name)
        elif step in steps:
            raise SourceError(f"{key}: {steps[step]} and {path} both name step {step}; keep one, or narrow "
                              "source.glob to one file per step")
        else:
            steps[step] = path.as_posix()
    if nameless:
        raise SourceError(f"{key}: no step number in the name of {', '.join(nameless[:5])} in {folder}; name each "
                          "checkpoint by its step (step_100.pt), or narrow source.glob to those that are")
    return dict(sorted(steps.items()))


def recorded_settings(folder, key: str = "source.recorded") -> dict:
    """The training settings of a recorded run (its config.yaml), with the paths of data the
    recorder stored in the run folder made relative to the working directory."""
    folder = Path(folder)
    path = layout.in_run(folder, "config")
    if not path.exists():
        raise SourceError(f"{key}: {folder} holds no recorded run ({path.name} is missing); record one with "
                          "gradscope.Recorder(folder, ...) in your loop")
    if not layout.in_run(folder, "manifest").exists():
        raise SourceError(f"{key}: the recording in {folder} is not finished ({layout.IN_RUN['manifest']} is missing): "
                          "call rec.finish() at the end of your loop, or resume it with resume=True")
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SourceError(f"{key}: {path} does not read as YAML ({e}); record the run again") from None
    if not isinstance(recorded, dict) or not all(k in recorded for k in TRAINING):
        raise SourceError(f"{key}: {path} is not a recorded run's config (it lacks {', '.join(TRAINING)}); was the "
                          "folder written by gradscope.Recorder?")
    settings = {k: recorded[k] for k in (*TRAINING, "seed")}
    data = settings["data"]
    if data["generator"] == "files":  # arrays the recorder stored beside the run: relative to the run folder
        files = dict(data["files"])
        for split in ("train", "test"):
            if files.get(split) and not Path(files[split]).is_absolute():
                files[split] = (folder / files[split]).as_posix()
        settings["data"] = {**data, "files": files}
    return settings


def recorded_checkpoints(folder) -> dict[int, str]:
    """{step: path} of a recorded run's checkpoints, as its manifest lists them."""
    manifest = artifacts.read_json(layout.in_run(folder, "manifest"))
    base = layout.in_run(folder, "manifest").parent
    return {int(s): (base / rel).as_posix() for s, rel in sorted(manifest["checkpoints"].items(), key=lambda kv: int(kv[0]))}


def run_name(folder) -> str:
    return re.sub(r"[^\w.,+~-]", "-", Path(folder).resolve().name) or "run"


# ---- the workflow's import_run job ------------------------------------------------------------
def import_run(settings: dict, source: dict, checkpoint_files: dict, *, dataset, out: dict, run_id: str,
               device: str = "cpu") -> pd.DataFrame:
    """The train stage's outputs of a run gradscope did not train (out: metrics, dynamics, manifest).

    recorded: the recorded metrics and dynamics, as recorded. checkpoints: every checkpoint
    evaluated as the train stage logs (eval mode, whole splits: losses and accuracies, the norm of
    the whole training set's mean gradient, the weight norm, the lr the optim section gives at that
    step); no dynamics (an empty table). The manifest lists the checkpoint files where they are
    (absolute paths), with no sizes: they are yours, and may change."""
    checkpoint_files = {int(s): p for s, p in checkpoint_files.items()}
    if kind(source) == "recorded":
        folder = Path(source["recorded"])
        _check_recorded_dataset(folder, dataset)
        metrics = artifacts.read_parquet(layout.in_run(folder, "metrics"))
        dynamics = artifacts.read_parquet(layout.in_run(folder, "dynamics"))
    else:
        metrics = evaluate_checkpoints(settings, checkpoint_files, dataset=dataset, device=device)
        from gradscope import dynamics as dyn

        dynamics = pd.DataFrame(columns=dyn.COLUMNS)
    artifacts.write_parquet(metrics, out["metrics"], artifacts.METRICS, table="metrics", run_id=run_id, config=settings)
    artifacts.write_parquet(dynamics, out["dynamics"], artifacts.DYNAMICS, table="dynamics", run_id=run_id,
                            config=settings)
    from gradscope import factories

    # plain checkpoints record no code: the manifest keeps the model factory's fingerprint as imported, which
    # loading them through it checks (a recorded run's checkpoints record their own)
    code = factories.model_code(settings["model"]) if kind(source) == "checkpoints" else None
    artifacts.write_json({"run_id": run_id, "steps": max(checkpoint_files), "stopped_early_at": None,
                          "source": source, "model": settings["model"], **({"code": code} if code else {}),
                          "checkpoints": {str(s): Path(p).resolve().as_posix() for s, p in checkpoint_files.items()},
                          "wall_s": float("nan")}, out["manifest"])
    return metrics


def _check_recorded_dataset(folder: Path, dataset) -> None:
    """The dataset the workflow made from a recorded run's data block must be the one recorded
    with: same sizes and inputs (a data file or factory edited since gives another)."""
    from gradscope import data

    recorded = ((yaml.safe_load(layout.in_run(folder, "config").read_text()).get("source") or {}).get("dataset"))
    if not recorded:
        return
    meta = data.load_meta(dataset)
    now = {"n_train": meta["n_train"], "n_test": meta["n_test"], "input": dict(meta["input"], shape=list(
        meta["input"].get("shape") or [meta["input"]["dim"]]))}
    then = {**recorded, "input": {k: recorded["input"].get(k) for k in ("kind", "dim", "vocab", "n_classes", "shape")}}
    now["input"] = {k: now["input"].get(k, 0 if k == "vocab" else None) for k in then["input"]}
    from gradscope import factories

    factories.check_code(recorded.get("code"), meta.get("code"), what=f"the dataset of the recorded run {folder}")
    diff = [f"{k}: recorded {then[k]}, now {now[k]}" for k in ("n_train", "n_test", "input") if then[k] != now[k]]
    if diff:
        raise SourceError(f"the dataset made from the data block of the recorded run {folder} is not the one it was "
                          f"recorded with ({'; '.join(diff)}): its data source changed since (a file or factory "
                          "edited?). Put the data back as it was, or record the run again")


def evaluate_checkpoints(settings: dict, checkpoint_files: dict[int, str], *, dataset, device: str = "cpu") -> pd.DataFrame:
    """One metrics row per checkpoint (see `import_run`)."""
    from gradscope import checkpoints, data, examples, optim
    from gradscope.models import InputSpec, resolve_device
    from gradscope.train import evaluate

    dev = resolve_device(device)
    spec = InputSpec.from_dict(data.load_meta(dataset)["input"])
    x_train, y_train, _ = data.load_split(dataset, "train")
    x_test, y_test, _ = data.load_split(dataset, "test")
    x_train, y_train, x_test, y_test = (t.to(dev) for t in (x_train, y_train, x_test, y_test))
    loss, last = settings["train"]["loss"], max(checkpoint_files)
    rows = []
    for step, path in sorted(checkpoint_files.items()):
        model, _ = checkpoints.load(path, dev, model_settings=settings["model"], spec=spec)
        train_loss, train_acc = evaluate(model, x_train, y_train, loss)
        test_loss, test_acc = evaluate(model, x_test, y_test, loss)
        grad_norm = float(examples.mean_gradient(model, x_train, y_train, loss=loss).double().norm())
        lr = optim.lr_at(step, settings["optim"], last)
        rows.append(dict(step=step, lr=float(lr), train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                         test_acc=test_acc, grad_norm=grad_norm, clipped=False, clipped_fraction=float("nan"),
                         weight_norm=math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())),
                         wall_s=float("nan")))
    return pd.DataFrame(rows, columns=list(artifacts.METRICS))
