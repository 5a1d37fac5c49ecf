"""Training with checkpoints, a metrics log and a dynamics log.

One run: build the model from the settings, optimize (see `optim`: SGD with momentum or
Nesterov, Adam, AdamW, RMSprop; warmup and schedules), full batch or minibatch, optional
clipping by global norm. At every logged step the metrics row describes the parameters
*before* that step's update; checkpoint `step_t` holds the parameters after t updates. Every
`dynamics_every` steps, per-layer rows go to dynamics.parquet (see `dynamics`). Seeded: the
same settings give the same numbers on CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from gradscope import artifacts, checkpoints, config, dynamics, layout
from gradscope.config import checkpoint_steps
from gradscope.optim import CUSTOM, Plateau, build_optimizer, lr_at, sharpness_threshold  # noqa: F401  (re-exported)
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model, resolve_device

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model, inputs, targets, loss: str, chunk: int = 8192) -> tuple[float, float]:
    """Mean loss and accuracy over a split, in chunks."""
    total_loss, correct = 0.0, 0
    for i in range(0, len(targets), chunk):
        logits = model(inputs[i : i + chunk])
        total_loss += per_example_loss(logits, targets[i : i + chunk], loss).sum().item()
        correct += (logits.argmax(-1) == targets[i : i + chunk]).sum().item()
    return total_loss / len(targets), correct / len(targets)


def _global_norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().pow(2).sum()) for t in tensors))


# What train writes in its folder (the run's train/), named where gradscope.layout names them.
FILES = {name: Path(layout.IN_RUN[name]).name for name in
         ("checkpoints", "metrics", "metrics_partial", "dynamics", "manifest", "resume")}
RESUME_DIR = FILES["resume"]  # beside the declared outputs: Snakemake deletes those before a rerun, not this
# Everything else. All are removed when a run starts (again): nothing an earlier attempt or
# configuration wrote survives beside a new or failed run to look current.
OUTPUTS = tuple(FILES[name] for name in ("checkpoints", "metrics", "metrics_partial", "dynamics", "manifest"))
LOCK = Path(layout.IN_RUN["train_lock"]).name  # held while a process trains the run (see run_lock)


class RunLocked(RuntimeError):
    """Another process holds the run's lock."""


@contextlib.contextmanager
def run_lock(out_dir: Path, run_id: str):
    """Hold the run's lock for the block: one writer per resume store. A second trainer of the
    same run (`gradscope train` while Snakemake's job trains it) stops at once, told who holds it.
    The lock is an flock on out_dir/.train.lock, which the holder's pid and command fill, and
    which goes with it (the kernel frees the lock of a killed process)."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{run_id}: another process is training this run ({holder}; lock {path}); wait for it "
                               "to finish or stop it, then run again (a killed trainer frees the lock)") from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break  # locked the file that is there (not one its last holder just removed)
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(sys.argv)[:300]}".encode(), 0)
        yield
    finally:
        os.unlink(path)
        os.close(fd)  # closing frees the lock
        if created and not any(out_dir.iterdir()):  # a run that stopped before writing anything leaves no folder
            out_dir.rmdir()


def _clear_outputs(out_dir: Path) -> None:
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _resume_state(store: Path, settings: dict) -> dict | None:
    """The latest whole checkpoint of these settings in the resume store; None to start afresh.

    Files are written atomically, so a .pt file is whole unless something else damaged it;
    one that does not load is skipped with a warning. Checkpoints of other settings are stale.
    """
    for path in reversed(layout.checkpoints_in(store)):
        try:
            state = checkpoints.load_state(path)
        except ValueError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        if state["settings"] != settings or not checkpoints.same_code(state):  # (other factory code: stale too)
            log.info("resume store %s holds another config's checkpoints (other settings or model code); removing "
                     "them and starting afresh", store)
            shutil.rmtree(store)  # none of them may be mixed with this config's
            return None
        return state
    return None


def _restore_wall_times(rows: list[dict], timing_path: Path) -> float:
    """Put the wall_s of each resumed metrics row back from the checkpoint's timing file (NaN
    where it is missing) and return the training time before the checkpoint."""
    timing = artifacts.read_json(timing_path) if timing_path.exists() else {"elapsed_s": 0.0, "wall_s": []}
    walls = timing["wall_s"]
    for i, row in enumerate(rows):
        row.setdefault("wall_s", walls[i] if i < len(walls) else float("nan"))
    return float(timing["elapsed_s"])


def _publish(store: Path, ckpt_dir: Path, steps) -> None:
    """Make the declared checkpoint folder: hard links to the stored files (a copy where links fail)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        name = checkpoints.checkpoint_name(step)
        try:
            os.link(store / name, ckpt_dir / name)
        except OSError:
            shutil.copy2(store / name, ckpt_dir / name)


class EarlyStop:
    """Stop when a logged metric has not improved by `min_delta` for `patience` logged evaluations."""

    def __init__(self, rule: dict | None):
        """rule: the run's `train.early_stopping` block, filled where the settings came in (`train`, which
        fills the train section once); None never stops."""
        self.metric, self.patience, self.min_delta = (rule["metric"], rule["patience"], rule["min_delta"]) if rule \
            else (None, None, None)
        self.sign = 1.0 if (self.metric or "").endswith("_acc") else -1.0  # accuracies rise, losses fall
        self.best, self.bad = None, 0

    def should_stop(self, row: dict) -> bool:
        if self.metric is None:
            return False
        value = self.sign * row[self.metric]
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad > self.patience


def train(settings: dict, train_split, test_split, spec: InputSpec, out_dir, run_id: str = "", progress=None) -> pd.DataFrame:
    """Train one run (see `_train`) holding its lock, after removing what an earlier attempt wrote
    beside the resume store. A public entry point: the boundary where the model, optim and train
    sections are filled (what they leave out takes the schema's default), once for the whole run."""
    out_dir = Path(out_dir)
    with run_lock(out_dir, run_id):
        _clear_outputs(out_dir)
        return _train(settings, train_split, test_split, spec, out_dir, run_id, progress)


def _train(settings: dict, train_split, test_split, spec: InputSpec, out_dir: Path, run_id: str, progress) -> pd.DataFrame:
    """Train one run; write checkpoints, metrics.parquet and manifest.json under `out_dir`.

    `settings` is the training slice of a run config (data, model, optim, train, seed, device);
    each split is an (inputs, targets) pair of tensors; the training split may add a third, each
    example's weight on the training loss (the logged losses stay unweighted). Checkpoints go first to
    `out_dir/resume/`; a run killed at any moment and started again continues from the last
    of them and ends with the same metrics (all but wall_s) as an uninterrupted run. The
    declared `checkpoints/` folder is filled at the end, and the resume store removed.
    With early stopping, training ends at the step the rule fires; the checkpoints scheduled
    after it hold that final state (the workflow plans them in advance) and say so
    (`stopped_early_at`), as does the manifest. `progress(step)` is called after every step.
    """
    out_dir = Path(out_dir)
    ckpt_dir, store = out_dir / FILES["checkpoints"], out_dir / RESUME_DIR
    # what the sections leave out takes the schema's default (a no-op on the workflow's filled settings)
    settings = {**settings, **{s: config.filled(s, settings.get(s)) for s in ("model", "optim", "train")}}
    optim_cfg, train_cfg = settings["optim"], settings["train"]
    device = resolve_device(settings["device"])
    log.info("resolved training config of %s:\n%s", run_id, yaml.safe_dump(settings, sort_keys=False))

    # Every generator whose state a checkpoint stores is seeded from the config, so that the same
    # config gives byte-identical checkpoints (wall-clock times are kept out of them: see _save).
    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])
    random.seed(settings["seed"])
    batches = torch.Generator().manual_seed(settings["seed"])
    model = build_model(settings["model"], spec).to(device)
    optimizer = build_optimizer(model.parameters(), optim_cfg)
    x_train, y_train, *weights = (t.to(device) for t in train_split)
    weights = weights[0] if weights else None  # per-example factors on the training loss (an intervention's downweight)
    x_test, y_test = (t.to(device) for t in test_split)
    n, steps, loss_kind = len(y_train), train_cfg["steps"], train_cfg["loss"]
    batch_size = train_cfg["batch_size"] or n
    save_at = set(checkpoint_steps(train_cfg))
    rows, layer_rows, order, cursor, first, wall_before = [], [], None, n, 0, 0.0
    plateau, clipped_since_log, steps_since_log = Plateau(optim_cfg["schedule"]), 0, 0
    early, stopped_at = EarlyStop(train_cfg["early_stopping"]), None
    dynamics_every = train_cfg["dynamics_every"]

    resumed = _resume_state(store, settings)
    if resumed is not None:
        model.load_state_dict(resumed["model_state"])
        optimizer.load_state_dict(resumed["optimizer_state"])
        checkpoints.restore_rng(resumed["rng"], batches)
        order, cursor = resumed["batch_order"], resumed["batch_cursor"]
        order = None if order is None else order.to(device)
        rows, first = resumed["metrics_rows"], resumed["step"]
        wall_before = _restore_wall_times(rows, store / layout.step_file("timing", first))
        layer_rows = resumed["dynamics_rows"]
        plateau.load_state_dict(resumed["plateau"])
        early.best, early.bad = resumed["early_stop"]
        clipped_since_log, steps_since_log = resumed["clip_counts"]
        log.info("resuming %s from its checkpoint at step %d (%s)", run_id, first, store)
    start = time.perf_counter() - wall_before

    for step in range(first, steps + 1):
        lr = lr_at(step, optim_cfg, steps) * plateau.scale
        if step in save_at and not (resumed is not None and step == first):
            # Wall-clock times go to a file beside the checkpoint, not into it (same config, same bytes).
            artifacts.write_json({"elapsed_s": time.perf_counter() - start, "wall_s": [r["wall_s"] for r in rows]},
                                 store / layout.step_file("timing", step))
            checkpoints.save(store / checkpoints.checkpoint_name(step), model=model, optimizer=optimizer, step=step,
                             spec=spec, settings=settings, batch_generator=batches, lr=lr,
                             extra={"batch_order": order, "batch_cursor": cursor,
                                    "metrics_rows": [{k: v for k, v in r.items() if k != "wall_s"} for r in rows],
                                    "dynamics_rows": list(layer_rows), "plateau": plateau.state_dict(),
                                    "early_stop": (early.best, early.bad),
                                    "clip_counts": (clipped_since_log, steps_since_log)})
        log_now = step % train_cfg["log_every"] == 0 or step == steps
        if log_now:
            # Evaluated (eval mode, no grad) before this step's training forward, which in training mode
            # moves BatchNorm's running statistics: the logged figures are those of the checkpoint at `step`.
            model.eval()
            train_loss, train_acc = evaluate(model, x_train, y_train, loss_kind)
            test_loss, test_acc = evaluate(model, x_test, y_test, loss_kind)
            if early.metric is not None:  # an early stop puts them back
                buffers = {name: b.clone() for name, b in model.named_buffers()}
        # Draw the minibatch: a fresh permutation each epoch, from the run's own generator.
        if batch_size >= n:
            idx = None
        else:
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=batches).to(device), 0
            idx, cursor = order[cursor : cursor + batch_size], cursor + batch_size
        xb, yb = (x_train, y_train) if idx is None else (x_train[idx], y_train[idx])
        model.train()
        optimizer.zero_grad(set_to_none=True)
        losses = per_example_loss(model(xb), yb, loss_kind)
        if weights is not None:
            losses = losses * (weights if idx is None else weights[idx])
        batch_loss = losses.mean()
        batch_loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]  # frozen parameters have none
        grad_norm = _global_norm(grads)
        if not (math.isfinite(batch_loss.item()) and math.isfinite(grad_norm)):
            _write_metrics(rows, out_dir / FILES["metrics_partial"], run_id, settings)
            what = "loss" if not math.isfinite(batch_loss.item()) else "gradient norm"
            raise FloatingPointError(f"{run_id}: non-finite {what} at step {step}; metrics so far are in "
                                     f"{out_dir / FILES['metrics_partial']}, checkpoints in {store}")
        clip = optim_cfg["grad_clip"]
        clipped = bool(clip is not None and grad_norm > clip) and step < steps
        clipped_since_log, steps_since_log = clipped_since_log + clipped, steps_since_log + (step < steps)
        if dynamics_every and (step % dynamics_every == 0 or step == steps):
            layer_rows += dynamics.layer_dynamics(model, optimizer, step, lr)
        if log_now:
            wall = time.perf_counter() - start
            rows.append(dict(step=step, lr=lr, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                             test_acc=test_acc, grad_norm=grad_norm, clipped=clipped,
                             clipped_fraction=clipped_since_log / max(steps_since_log, 1),
                             weight_norm=_global_norm(model.parameters()), wall_s=wall))
            clipped_since_log = steps_since_log = 0
            plateau.observe(rows[-1])
            if step < steps and early.should_stop(rows[-1]):
                stopped_at = step
                with torch.no_grad():  # the final state is the one evaluated, before this step's forward
                    for name, b in model.named_buffers():
                        b.copy_(buffers[name])
                log.info("early stopping at step %d: %s has not improved for %d evaluations", step, early.metric,
                         early.patience + 1)
                break
            rate = (step + 1 - first) / max(wall - wall_before, 1e-9)
            log.info("step %d/%d  train loss %.4g acc %.3f  test loss %.4g acc %.3f  %.0f steps/s  %.0f s left",
                     step, steps, train_loss, train_acc, test_loss, test_acc, rate, (steps - step) / rate)
        if step == steps:
            break  # the last step is measured and checkpointed, not taken
        if clipped:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if progress is not None:
            progress(step + 1)

    if stopped_at is not None:
        for later in sorted(s for s in save_at if s > stopped_at):
            checkpoints.save(store / checkpoints.checkpoint_name(later), model=model, optimizer=optimizer,
                             step=stopped_at, spec=spec, settings=settings, batch_generator=batches, lr=lr,
                             extra={"stopped_early_at": stopped_at})
    _publish(store, ckpt_dir, sorted(save_at))
    metrics = _write_metrics(rows, out_dir / FILES["metrics"], run_id, settings)
    artifacts.write_parquet(pd.DataFrame(layer_rows, columns=dynamics.COLUMNS), out_dir / FILES["dynamics"],
                            artifacts.DYNAMICS, table="dynamics", run_id=run_id, config=settings)
    artifacts.write_json({"run_id": run_id, "steps": steps, "stopped_early_at": stopped_at, "checkpoints": {
        str(s): f"checkpoints/{checkpoints.checkpoint_name(s)}" for s in sorted(save_at)},
        # sizes as written: a checkpoint truncated or replaced later is found by a stat (checkpoints.damaged)
        "checkpoint_bytes": {str(s): (ckpt_dir / checkpoints.checkpoint_name(s)).stat().st_size for s in sorted(save_at)},
        "wall_s": time.perf_counter() - start}, out_dir / FILES["manifest"])
    shutil.rmtree(store)
    return metrics


def _write_metrics(rows, path, run_id, settings) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(artifacts.METRICS))
    artifacts.write_parquet(df, path, artifacts.METRICS, table="metrics", run_id=run_id, config=settings)
    return df
