"""Record a run from your own PyTorch loop: the artifacts of the `train` stage, from a loop it did not write.

    rec = Recorder("runs/mine", model=model, optimizer=optimizer, model_settings={"kind": "mlp"},
                   data={"generator": "digits", "digits": {"label_noise": 0.1}}, steps=2000)
    for step in range(rec.step, 2000):
        ...                                   # your batch, forward, loss (AMP, accumulation: as you like)
        loss.backward()
        rec.before_update(step)               # gradients: the dynamics log, the metrics row's grad_norm
        optimizer.step()
        rec.after_update(step + 1)            # checkpoints and metrics on their schedule
    rec.finish()

The folder then holds what `train` writes (train/checkpoints/, metrics.parquet, dynamics.parquet,
manifest.json) and the run's config.yaml, with the same schemas and meanings: checkpoint `step_t`
holds the parameters after t optimizer steps, the metrics row of step t evaluates them (eval mode,
whole splits) with the gradient norm of step t's update. An experiment with
`source: {recorded: runs/mine}` analyzes it like a run gradscope trained.

Steps count optimizer steps, so gradient accumulation is one `before_update` per `optimizer.step()`.
With AMP pass the GradScaler (`scaler=`): gradients still scaled are divided by its scale. A
loop that crashed continues with `resume=True`: the model, optimizer and RNG states of the last
checkpoint are put back (and of `batch_generator`, the scaler's, and `rec.loop_state`, a dict your loop
may keep its epoch order or cursor in) and `rec.step` says where to go on from.

The data is a gradscope data block (the workflow regenerates the same dataset; `gradscope.data.load`
gives it to your loop as tensors), or your own arrays ((x_train, y_train), (x_test, y_test)), which
the recorder stores in the run folder as .npz files (the `files` source reads them back).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from gradscope import artifacts, checkpoints, config, data, dynamics, factories, layout
from gradscope.models import build_model, resolve_device
from gradscope.optim import CUSTOM

log = logging.getLogger(__name__)

# The arrays a recorder stores when it is given data instead of a data block, relative to the run folder.
DATA_FILES = {"train": "data/train.npz", "test": "data/test.npz"}
# "auto" logging: evaluate the whole splits no more often than keeps that under this fraction of the
# loop's own time; the dynamics log, at least DYNAMICS_MIN_EVERY steps apart, under DYNAMICS_BUDGET.
AUTO_BUDGET = 0.01
DYNAMICS_BUDGET, DYNAMICS_MIN_EVERY = 0.005, 100
# Each optimizer class gradscope builds, by the name the `optim` section gives it, and the keys it reads there.
_OPTIMIZERS = {torch.optim.SGD: ("sgd", ("momentum", "nesterov")), torch.optim.Adam: ("adam", ("betas", "eps")),
               torch.optim.AdamW: ("adamw", ("betas", "eps")), torch.optim.RMSprop: ("rmsprop", ("alpha", "eps", "momentum"))}


@contextlib.contextmanager
def _rng_kept():
    """Every global RNG (torch, numpy, random) as it was before the block."""
    states = (np.random.get_state(), random.getstate())
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(states[0])
    random.setstate(states[1])


class RecorderError(ValueError):
    """A recorder used in a way that would lose or mix runs; the message says what to do."""


def optim_settings(optimizer: torch.optim.Optimizer) -> dict:
    """The `optim` section that describes a torch optimizer: SGD, Adam, AdamW and RMSprop by their
    settings (first parameter group), any other (SAM, Lion, Shampoo, ...) as `custom` with its lr."""
    group = optimizer.param_groups[0]
    for cls, (name, keys) in _OPTIMIZERS.items():
        if type(optimizer) is cls:
            out = {"name": name, "lr": float(group["lr"]), "weight_decay": float(group.get("weight_decay", 0.0))}
            for key in keys:
                value = group[key]
                out[key] = [float(v) for v in value] if isinstance(value, tuple) else value
            return config.section("optim", out)
    return config.section("optim", {"name": CUSTOM, "lr": float(group["lr"])})


def model_settings_of(factory=None, kwargs: dict | None = None, settings: dict | None = None) -> dict:
    """The `model` section that rebuilds your model: a built-in kind's settings, or your factory
    ("package.module:function", or the function itself when it can be imported by that name)."""
    if settings is not None and factory is not None:
        raise RecorderError("give model_settings or model_factory, not both")
    if settings is not None:
        return config.section("model", settings)
    if factory is None:
        raise RecorderError("say how to rebuild your model for the analysis: model_settings={'kind': 'mlp', ...} for a "
                            "built-in kind, or model_factory='package.module:function' (called as factory(input_shape=..., "
                            "n_classes=..., **model_kwargs))")
    if callable(factory):
        module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
        if module in (None, "__main__") or "<" in name:
            raise RecorderError(f"model_factory {factory!r} is defined in {module or 'no module'}, so the analysis "
                                "cannot import it again: move it to a .py file and pass it from there (or as "
                                "'package.module:function')")
        factory = f"{module}:{name}"
    factories.resolve(factory, key="model_factory")
    return config.section("model", {"kind": "python", "factory": factory, "kwargs": dict(kwargs or {})})


class Recorder:
    """See the module docstring. Parameters:

    folder: the run folder to write (empty or absent; with resume=True, one this run recorded before).
    model, optimizer: yours. model_settings or model_factory (+ model_kwargs): how the analysis rebuilds
        the model (see `model_settings_of`); checked at once against `model`'s parameters.
    data: a gradscope data block, or ((x_train, y_train), (x_test, y_test)) arrays or tensors.
    steps: the optimizer steps the loop will take (the schedule of log-spaced checkpoints needs it).
    checkpoints: when to checkpoint, as the train section's `checkpoints` ({log_spaced: 10} by default).
    log_every: evaluate the whole splits every this many steps, or "auto": as often as keeps the
        evaluation under 1% of the loop's own time (and at the last step).
    dynamics_every: the dynamics log's interval (0: none), or "auto": every 100 steps or more seldom,
        as keeps it under 0.5% of the loop's own time.
    loss: the loss the analysis uses per example (cross_entropy or mse); your loop may train on another.
    optim: the `optim` section to record; by default read off the optimizer (`optim_settings`).
    batch_size: your batch size, recorded (None: not said).
    seed: recorded as the run's seed. scaler: a torch.amp GradScaler when the loop uses one.
    """

    def __init__(self, folder, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, steps: int,
                 model_settings: dict | None = None, model_factory=None, model_kwargs: dict | None = None,
                 checkpoints: dict | None = None, log_every: int | str = "auto", dynamics_every: int | str = "auto",
                 loss: str = "cross_entropy", optim: dict | None = None, batch_size: int | None = None, seed: int = 0,
                 device: str = "auto", scaler=None, batch_generator: torch.Generator | None = None,
                 resume: bool = False, run_id: str | None = None):
        self.folder = Path(folder)
        self.model, self.optimizer, self.scaler, self.batch_generator = model, optimizer, scaler, batch_generator
        # Whatever else your loop needs to go on after a crash (an epoch's order, a cursor): saved with
        # every checkpoint, and filled back on resume.
        self.loop_state: dict = {}
        self.run_id = run_id or self.folder.name
        self.auto, self.auto_dynamics = log_every == "auto", dynamics_every == "auto"
        if not self.auto and not (isinstance(log_every, int) and log_every >= 1):
            raise RecorderError(f"log_every: {log_every!r}; allowed: a whole number >= 1, or 'auto'")
        if not self.auto_dynamics and not (isinstance(dynamics_every, int) and dynamics_every >= 0):
            raise RecorderError(f"dynamics_every: {dynamics_every!r}; allowed: a whole number >= 0 (0: none), or 'auto'")
        data_block = self._data_block(data)
        train_section = config.section("train", {
            "steps": steps, "batch_size": batch_size, "loss": loss, "log_every": 1 if self.auto else log_every,
            **({"checkpoints": checkpoints} if checkpoints is not None else {}),
            "dynamics_every": DYNAMICS_MIN_EVERY if self.auto_dynamics else dynamics_every})
        self.settings = {"data": config.data_slice({"data": config.section("data", data_block)}),
                         "model": model_settings_of(model_factory, model_kwargs, model_settings),
                         "optim": config.section("optim", optim) if optim is not None else optim_settings(optimizer),
                         "train": train_section, "seed": int(seed), "device": device}
        self._load_data()
        self._check_model()
        self.steps, self.save_at = train_section["steps"], set(config.checkpoint_steps(train_section))
        self.log_every, self.dynamics_every = train_section["log_every"], train_section["dynamics_every"]
        self._clip = self.settings["optim"]["grad_clip"]
        self.rows, self.layer_rows, self.pending, self._clips = [], [], None, (0, 0)
        self.step, self.finished = 0, False
        self._own_s, self._last_wall, self._loop_s, self._loop_steps, self._eval_s = 0.0, None, 0.0, 0, None
        self._next_log, self._next_dynamics, self._wall_before = 0, 0, 0.0
        self._check_folder(resume)
        if resume and self._latest() is not None:
            self._resume()
            self._start = time.perf_counter() - self._wall_before
        else:
            artifacts.write_text(yaml.safe_dump(self.config(), sort_keys=False), layout.in_run(self.folder, "config"))
            self._start = time.perf_counter()
            self._observe(0)
        self._last_wall = time.perf_counter()  # the loop's own time is measured from here

    # ---- what is recorded ------------------------------------------------------------------
    def config(self) -> dict:
        """The run's config.yaml: the training settings (as the train stage's checkpoints hold
        them) and how the run was made."""
        return {**self.settings, "source": {"kind": "recorder", "run_id": self.run_id,
                                            "log_every": "auto" if self.auto else self.log_every,
                                            # what the analysis checks the dataset it regenerates against
                                            "dataset": {"n_train": len(self.y_train), "n_test": len(self.y_test),
                                                        "input": dict(self.spec.__dict__, shape=list(self.spec.shape)),
                                                        **self._data_code()}}}

    def _data_code(self) -> dict:
        """The python data factory's fingerprint (as imported here), which the analysis checks its dataset against."""
        code = factories.data_code(self.settings["data"])
        return {"code": code} if code else {}

    def _data_block(self, given) -> dict:
        if isinstance(given, dict):
            return given
        try:
            (x_train, y_train), (x_test, y_test) = given
        except (TypeError, ValueError):
            raise RecorderError("data: give a gradscope data block ({'generator': ...}) or ((x_train, y_train), "
                                "(x_test, y_test)) arrays or tensors") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            s = data.as_split(x, y, what=f"the {split} split")
            path = self.folder / DATA_FILES[split]
            if path.exists():  # a resumed recording: the same arrays, or a mix-up
                with np.load(path) as old:
                    if not (np.array_equal(old["x"], s.x) and np.array_equal(old["y"], s.y)):
                        raise RecorderError(f"{path} holds other {split} data than this recorder was given; record "
                                            "into a new folder")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                artifacts.write_npz(path, x=s.x, y=s.y)
        return {"generator": "files", "files": dict(DATA_FILES)}

    def _load_data(self) -> None:
        block = self.settings["data"]
        if block["generator"] == "files" and block["files"]["train"] == DATA_FILES["train"]:
            block = {**block, "files": {**block["files"], **{s: str(self.folder / p) for s, p in DATA_FILES.items()}}}
        with _rng_kept():
            (self.x_train, self.y_train), (self.x_test, self.y_test), self.spec = data.load(block)
        self.device = resolve_device(self.settings["device"])
        self.x_train, self.y_train, self.x_test, self.y_test = (
            t.to(self.device) for t in (self.x_train, self.y_train, self.x_test, self.y_test))

    def _check_model(self) -> None:
        """The model the settings rebuild must hold the same tensors as the one being trained."""
        with _rng_kept():  # the loop's own random draws go on as if the recorder were not there
            rebuilt = build_model(self.settings["model"], self.spec)
        ours = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if ours != theirs:
            missing, unexpected = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
            shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
            raise RecorderError(f"the model settings {self.settings['model']} rebuild another model than the one you "
                                f"train: not rebuilt {missing[:6] or 'none'}; extra {unexpected[:6] or 'none'}; other "
                                f"shapes {shapes[:6] or 'none'}")

    # ---- the folder: never another run's, resumed only on request ------------------------------
    def _check_folder(self, resume: bool) -> None:
        config_path = layout.in_run(self.folder, "config")
        held = [p for p in (config_path, layout.in_run(self.folder, "manifest"), layout.in_run(self.folder, "checkpoints"))
                if p.exists()]
        if not held:
            return
        try:
            recorded = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
        except yaml.YAMLError:
            recorded = None
        same = isinstance(recorded, dict) and {k: recorded.get(k) for k in self.settings} == self.settings
        if not same:
            raise RecorderError(f"{self.folder} holds another run ({held[0].name} of other settings); nothing was "
                                "written. Record into a new folder, or remove this one first")
        if layout.in_run(self.folder, "manifest").exists():
            raise RecorderError(f"{self.folder} holds a finished recording of this run; nothing was written. Record "
                                "into a new folder, or remove this one first")
        if not resume:
            raise RecorderError(f"{self.folder} holds an unfinished recording of this run: pass resume=True to go on "
                                "from its last checkpoint, or record into a new folder")

    def _latest(self) -> Path | None:
        found = layout.checkpoints_in(layout.in_run(self.folder, "checkpoints"))
        return found[-1] if found else None

    def _resume(self) -> None:
        path = self._latest()
        state = checkpoints.load_state(path)
        if state.get("settings") != self.settings:
            raise RecorderError(f"{path} was written with other settings than this recorder's; record into a new folder")
        checkpoints.check_code(state, path)  # a model factory edited since: its weights are another model's
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        checkpoints.restore_rng(state["rng"], self.batch_generator)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rec = state["recorder"]
        self.loop_state = rec["loop_state"]
        self.rows, self.layer_rows, self.pending, self._clips = rec["rows"], rec["layer_rows"], rec["pending"], rec["clips"]
        self.log_every, self._next_log, self._wall_before = rec["log_every"], rec["next_log"], rec["elapsed_s"]
        self.dynamics_every, self._next_dynamics = rec["dynamics_every"], rec["next_dynamics"]
        self.step = state["step"]
        log.info("resuming %s at step %d from %s", self.folder, self.step, path)

    # ---- the loop's calls ----------------------------------------------------------------------
    def before_update(self, step: int) -> None:
        """Call after backward (and after any unscale or clipping of yours) and before optimizer.step():
        the gradients of step `step` give its metrics row's grad_norm and, on schedule, the dynamics rows."""
        t0 = time.perf_counter()
        if step != self.step or self.finished or step >= self.steps:
            self._check_step(step, self.step, "before_update", last=self.steps - 1)
        row_due = self.pending is not None and self.pending["step"] == step
        dynamics_due = self._dynamics_due(step)
        if row_due or dynamics_due or self._clip is not None:
            self._read_gradients(step, row_due, dynamics_due)
        else:  # most steps: nothing reads the gradients (a metrics row or clipping would), so nothing is computed
            self._clips = (self._clips[0], self._clips[1] + 1)
        self._own_s += time.perf_counter() - t0

    def _read_gradients(self, step: int, row_due: bool, dynamics_due: bool) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        scale = self._grad_scale()
        if dynamics_due:
            t1 = time.perf_counter()
            self.layer_rows += dynamics.layer_dynamics(self.model, self.optimizer, step, lr, grad_scale=scale)
            if self.auto_dynamics:
                self.dynamics_every = max(self.dynamics_every, self._interval(time.perf_counter() - t1, DYNAMICS_BUDGET))
                self._next_dynamics = (step // self.dynamics_every + 1) * self.dynamics_every
        grad_norm = float("nan")
        if row_due or self._clip is not None:  # one synchronization per tensor: only where something reads it
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = math.sqrt(sum(float(g.detach().float().pow(2).sum()) for g in grads)) * scale
        clipped = bool(self._clip is not None and grad_norm > self._clip)
        self._clips = (self._clips[0] + clipped, self._clips[1] + 1)
        if row_due:
            self.rows.append({**self.pending, "lr": lr, "grad_norm": grad_norm, "clipped": clipped,
                              "clipped_fraction": self._clips[0] / self._clips[1]})
            self.pending, self._clips = None, (0, 0)

    def after_update(self, step: int) -> None:
        """Call after optimizer.step() with the number of optimizer steps taken so far (step + 1 in
        `for step in range(...)`): checkpoint and evaluate on schedule."""
        now = time.perf_counter()
        if step != self.step + 1 or self.finished or step > self.steps:
            self._check_step(step, self.step + 1, "after_update", last=self.steps)
        if self._last_wall is not None:
            self._loop_s += now - self._last_wall - self._own_s
            self._loop_steps += 1
        self._own_s = 0.0
        self.step = step
        if self._due(step) or step in self.save_at:
            self._observe(step)
        self._last_wall = time.perf_counter()

    def finish(self) -> pd.DataFrame:
        """Write metrics.parquet, dynamics.parquet and the manifest; the run is complete. Returns the metrics."""
        if self.step != self.steps:
            raise RecorderError(f"finish() at step {self.step}, but the recorder was told steps={self.steps}: the "
                                "checkpoint schedule ends there. Go on to that step, or record with steps=" f"{self.step}")
        if self.finished:
            raise RecorderError(f"{self.folder}: finish() was already called")
        rows = self.rows + ([{**self.pending, "lr": float(self.optimizer.param_groups[0]["lr"]), "grad_norm": float("nan"),
                              "clipped": False, "clipped_fraction": self._clips[0] / max(self._clips[1], 1)}]
                            if self.pending else [])
        out = layout.in_run(self.folder, "metrics").parent
        metrics = pd.DataFrame(rows, columns=list(artifacts.METRICS))
        artifacts.write_parquet(metrics, layout.in_run(self.folder, "metrics"), artifacts.METRICS, table="metrics",
                                run_id=self.run_id, config=self.settings)
        artifacts.write_parquet(pd.DataFrame(self.layer_rows, columns=dynamics.COLUMNS),
                                layout.in_run(self.folder, "dynamics"), artifacts.DYNAMICS, table="dynamics",
                                run_id=self.run_id, config=self.settings)
        ckpt_dir = layout.in_run(self.folder, "checkpoints")
        saved = sorted(self.save_at)
        artifacts.write_json({"run_id": self.run_id, "steps": self.steps, "stopped_early_at": None,
                              "checkpoints": {str(s): f"{ckpt_dir.relative_to(out).as_posix()}/{checkpoints.checkpoint_name(s)}"
                                              for s in saved},
                              "checkpoint_bytes": {str(s): (ckpt_dir / checkpoints.checkpoint_name(s)).stat().st_size
                                                   for s in saved},
                              "wall_s": time.perf_counter() - self._start}, layout.in_run(self.folder, "manifest"))
        self.finished = True
        log.info("recorded %s: %d steps, %d checkpoints, %d metrics rows", self.folder, self.steps, len(saved), len(rows))
        return metrics

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None and not self.finished:
            self.finish()

    # ---- inside ----------------------------------------------------------------------------------
    def _check_step(self, step: int, expected: int, call: str, last: int) -> None:
        """Raise the RecorderError for a call the recorder cannot take (called only when something is off)."""
        if self.finished:
            raise RecorderError(f"{call}({step}) after finish(): the recording of {self.folder} is complete")
        if not isinstance(step, (int, np.integer)) or step != expected:
            went = "goes backwards" if isinstance(step, (int, np.integer)) and step < expected else "skips steps"
            raise RecorderError(f"{call}({step}) {went}: the recorder is at step {self.step}, so it expected "
                                f"{call}({expected}). Steps count optimizer steps: before_update(step) then "
                                "after_update(step + 1), once per optimizer.step()")
        if step > last:
            raise RecorderError(f"{call}({step}) is past steps={self.steps}, the recorder's schedule")

    def _grad_scale(self) -> float:
        """1, or 1/scale where a GradScaler's gradients are still scaled (not unscaled this step)."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return 1.0
        from torch.amp.grad_scaler import OptState

        state = scaler._per_optimizer_states[id(self.optimizer)]
        return 1.0 if state["stage"] is OptState.UNSCALED else 1.0 / float(scaler.get_scale())

    def _due(self, step: int) -> bool:
        if self.auto:
            return step >= self._next_log or step == self.steps
        return step % self.log_every == 0 or step == self.steps

    def _dynamics_due(self, step: int) -> bool:
        if self.auto_dynamics:
            return step >= self._next_dynamics
        return bool(self.dynamics_every) and step % self.dynamics_every == 0

    def _interval(self, cost_s: float, budget: float) -> int:
        """The smallest interval of 1, 2 or 5 times a power of ten over which the loop's own time is
        at least cost_s / budget (at least DYNAMICS_MIN_EVERY for the dynamics, 1 for evaluations)."""
        per_step = self._loop_s / self._loop_steps if self._loop_steps else None
        if per_step is None:
            return 1
        need = cost_s / (budget * max(per_step, 1e-9))
        return next(m * 10**e for e in range(12) for m in (1, 2, 5) if m * 10**e >= need)

    def _observe(self, step: int) -> None:
        """At `step` updates: save the checkpoint if scheduled, evaluate if due."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self._due(step):
            t0 = time.perf_counter()
            was_training = self.model.training
            self.model.eval()
            from gradscope.train import evaluate

            loss = self.settings["train"]["loss"]
            train_loss, train_acc = evaluate(self.model, self.x_train, self.y_train, loss)
            test_loss, test_acc = evaluate(self.model, self.x_test, self.y_test, loss)
            self.model.train(was_training)
            self.pending = dict(step=step, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, weight_norm=math.sqrt(sum(float(p.detach().float().pow(2).sum())
                                                                             for p in self.model.parameters())),
                                wall_s=time.perf_counter() - self._start)
            if self.auto:
                self._eval_s = time.perf_counter() - t0
                self._schedule(step)
        if step in self.save_at:
            rec = {"rows": self.rows, "layer_rows": self.layer_rows, "pending": self.pending, "clips": self._clips,
                   "loop_state": self.loop_state,
                   "log_every": self.log_every,
                   "next_log": self._next_log, "dynamics_every": self.dynamics_every,
                   "next_dynamics": self._next_dynamics,
                   "elapsed_s": time.perf_counter() - self._start}
            checkpoints.save(layout.in_run(self.folder, "checkpoints") / checkpoints.checkpoint_name(step),
                             model=self.model, optimizer=self.optimizer, step=step, spec=self.spec, settings=self.settings,
                             lr=lr, batch_generator=self.batch_generator,
                             extra={"recorder": rec, "scaler": self.scaler.state_dict() if self.scaler is not None else None})

    def _schedule(self, step: int) -> None:
        """Auto logging: the next evaluation where the loop's own time since this one is 1/AUTO_BUDGET
        times the evaluation's (`_interval`); the interval only grows."""
        self.log_every = max(self.log_every, self._interval(self._eval_s, AUTO_BUDGET))
        self._next_log = (step // self.log_every + 1) * self.log_every
