"""Record a Lightning run: a callback that drives `gradscope.recorder.Recorder` from the Trainer.

    from gradscope.integrations.lightning import GradscopeCallback

    callback = GradscopeCallback("runs/mine", data={"generator": "digits", "digits": {"label_noise": 0.1}},
                                 model_settings={"kind": "mlp", "width": 32}, model_attr="net")
    lightning.Trainer(max_steps=2000, callbacks=[callback]).fit(module, loader)

The recorded model maps a batch of inputs to logits: the LightningModule itself (its forward), or
the submodule `model_attr` names (e.g. "net"), which model_settings / model_factory rebuild for
the analysis. The optimizer is the Trainer's (one optimizer). Steps count optimizer steps, as
`trainer.global_step` does: with accumulate_grad_batches=k a step is k batches. Under AMP the
precision plugin's GradScaler goes to the recorder; gradients are unscaled when Lightning calls
`on_before_optimizer_step` (before its gradient clipping: the recorded grad_norm is the unclipped
norm). Under DDP only global rank 0 records.
"""

from __future__ import annotations

import logging
import math
import os

from gradscope.integrations import _common

_common.torchvision_first()  # Lightning imports torchmetrics, which imports torchvision where installed

try:
    import lightning.pytorch as pl
except ImportError as e:  # only users of this module need Lightning
    from gradscope.doctor import missing_message

    raise ImportError(missing_message("lightning", "gradscope.integrations.lightning")) from e

import torch

from gradscope.recorder import Recorder, RecorderError

log = logging.getLogger(__name__)


class GradscopeCallback(pl.Callback):
    """Record the fit into `folder` (see `gradscope.recorder.Recorder` for the run folder it writes).

    folder, data and the other keyword arguments are the Recorder's (model_settings or
    model_factory + model_kwargs, checkpoints, log_every, dynamics_every, loss, optim, batch_size,
    seed, device, scaler, batch_generator, resume, run_id), except model and optimizer, which come
    from the Trainer.
    steps: the optimizer steps of the fit; by default `trainer.estimated_stepping_batches` (the
        Trainer's max_steps, or what max_epochs gives where it ends sooner).
    model_attr: the attribute of the LightningModule to record (dotted names allowed), when its
        forward is not the model's (None: the LightningModule itself).
    By default batch_size is the examples per optimizer step (the train DataLoader's batch size
    times accumulate_grad_batches and the world size), seed the one `seed_everything` set,
    device where the model is, and scaler the precision plugin's GradScaler (None without one).
    """

    def __init__(self, folder, *, data, steps: int | None = None, model_attr: str | None = None, **recorder_kwargs):
        _common.check_arguments(type(self).__name__, recorder_kwargs)
        self.folder, self.data, self.steps, self.model_attr = folder, data, steps, model_attr
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    # ---- the Trainer's hooks -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder = None
        if not trainer.is_global_zero:
            return
        who = type(self).__name__
        if len(trainer.optimizers) != 1:
            raise RecorderError(f"{who}: the Trainer has {len(trainer.optimizers)} optimizers; the recorder follows "
                                "one (configure_optimizers returning a single optimizer)")
        model = _common.recorded_model(pl_module, self.model_attr, who)
        kwargs = dict(self.recorder_kwargs)
        kwargs.setdefault("scaler", getattr(trainer.precision_plugin, "scaler", None))
        kwargs.setdefault("device", _common.device_of(model))
        if "batch_size" not in kwargs and (batch := _batch_size(trainer)) is not None:
            kwargs["batch_size"] = batch
        if "seed" not in kwargs and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
            kwargs["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        self.recorder = Recorder(self.folder, model=model, optimizer=_common.unwrap_optimizer(trainer.optimizers[0]),
                                 data=self.data, steps=self._steps(trainer), **kwargs)
        _common.check_aligned(self.recorder, trainer.global_step, who)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # global_step counts the optimizer steps completed: this is step `global_step`'s update.
        if self.recorder is not None:
            self.recorder.before_update(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        # Once per optimizer step: a batch that only accumulated gradients leaves global_step as it was.
        if self.recorder is not None and trainer.global_step != self.recorder.step:
            self.recorder.after_update(trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None and not self.recorder.finished:
            self.recorder.finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.recorder is not None and not self.recorder.finished:
            log.warning("training stopped at step %d (%s): the recording in %s is unfinished; resume it with "
                        "resume=True", self.recorder.step, type(exception).__name__, self.recorder.folder)

    # ---- inside ----------------------------------------------------------------------------------
    def _steps(self, trainer: pl.Trainer) -> int:
        if self.steps is not None:
            return self.steps
        estimated = trainer.estimated_stepping_batches  # max_steps, or what max_epochs gives where that ends sooner
        if not (isinstance(estimated, (int, float)) and math.isfinite(estimated) and estimated > 0
                and float(estimated).is_integer()):
            raise RecorderError(f"{type(self).__name__}: the Trainer's number of optimizer steps is not known "
                                f"({estimated}): give the Trainer max_steps, or the callback steps=")
        return int(estimated)


def _batch_size(trainer: pl.Trainer) -> int | None:
    """Examples per optimizer step, where the train DataLoader says its batch size."""
    loader = trainer.train_dataloader
    size = getattr(loader, "batch_size", None) if isinstance(loader, torch.utils.data.DataLoader) else None
    if not isinstance(size, int):
        return None
    return size * int(trainer.accumulate_grad_batches) * int(trainer.world_size)
