"""Optimizers and learning-rate schedules, built from the `optim` block of a run config.

Schedules are a multiplier on the peak lr: linear warmup over `warmup_steps` updates, then
`constant`, `cosine` (to `min_lr_ratio` of the peak at the last step), or `step` (times
`gamma` every `step_size` updates). `plateau` (ReduceLROnPlateau) also multiplies by `factor`
whenever a logged metric has not improved for `patience` logged evaluations; it keeps state,
which checkpoints save.

`build_optimizer`, `lr_at` and `sharpness_threshold` are public entry points: each takes the run's
`optim` section, whole or partial, and is the boundary where what it leaves out takes the schema's
default (`gradscope.config.filled`, the one place defaults live; a section filled already, as the
workflow's are, is taken as it is). `Plateau` takes the filled `optim.schedule` block.
"""

from __future__ import annotations

import math

import torch

from gradscope import config

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")  # what build_optimizer builds
CUSTOM = "custom"  # the name of an optimizer of your own loop (a recorded run, a checkpoint folder): never built


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    """The optimizer of the run's `optim` section over `params`. The boundary: a partial section is filled here."""
    optim = config.filled("optim", optim)
    name, lr, wd = optim["name"], optim["lr"], optim["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim["momentum"], weight_decay=wd,
                               nesterov=bool(optim["nesterov"]))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"], weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=optim["alpha"], eps=optim["eps"], weight_decay=wd,
                                   momentum=optim["momentum"])
    if name == CUSTOM:
        raise ValueError("optim.name 'custom' is an optimizer of your own loop, which gradscope cannot build: such runs "
                         "come from a recording (gradscope.Recorder) or a folder of checkpoints, not from training")
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def lr_at(step: int, optim: dict, total_steps: int | None = None) -> float:
    """The scheduled lr of update `step` (without plateau reductions, which depend on metrics).
    The boundary: a partial `optim` section is filled here."""
    optim = config.filled("optim", optim)  # called at every step: validated only when not yet filled
    warmup, schedule = optim["warmup_steps"], optim["schedule"]
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    kind = schedule["kind"]
    if kind == "cosine":
        if total_steps is None:
            raise ValueError("the cosine schedule needs the total number of steps")
        span = max(total_steps - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        low = schedule["min_lr_ratio"]
        factor *= low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "step":
        factor *= schedule["gamma"] ** (step // schedule["step_size"])
    elif kind not in ("constant", "plateau"):
        raise ValueError(f"unknown schedule {kind!r}; known: constant, cosine, step, plateau")
    return optim["lr"] * factor


class Plateau:
    """ReduceLROnPlateau on a logged metric: a multiplier that drops by `factor` after `patience` flat evaluations."""

    def __init__(self, schedule: dict | None):
        """schedule: the run's `optim.schedule` block, filled where the settings came in (`train.train`,
        `config.section`); None is a constant schedule. Its plateau keys are read only for kind plateau."""
        self.on = schedule is not None and schedule["kind"] == "plateau"
        s = schedule if self.on else {}
        missing = [k for k in ("metric", "factor", "patience", "threshold") if self.on and k not in s]
        if missing:
            raise ValueError(f"Plateau takes a filled optim.schedule block (config.section fills one); {schedule} "
                             f"lacks {', '.join(missing)}")
        self.metric, self.factor = s.get("metric"), s.get("factor")
        self.patience, self.threshold = s.get("patience"), s.get("threshold")
        self.maximize = (self.metric or "").endswith("_acc")
        self.best, self.bad, self.scale = None, 0, 1.0

    def observe(self, row: dict) -> None:
        if not self.on:
            return
        value = row[self.metric]
        better = self.best is None or (value > self.best * (1 + self.threshold) if self.maximize
                                       else value < self.best * (1 - self.threshold))
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale, self.bad = self.scale * self.factor, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.scale = state["best"], state["bad"], state["scale"]


def sharpness_threshold(optim: dict) -> float:
    """Stability threshold of gradient descent on a quadratic: 2/lr, 2(1+beta)/lr with heavy-ball momentum.
    The boundary: a partial `optim` section is filled here."""
    optim = config.filled("optim", optim)
    beta = optim["momentum"] if optim["name"] == "sgd" else 0.0
    return 2.0 * (1.0 + beta) / optim["lr"]
