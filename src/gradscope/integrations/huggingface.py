"""Record a Hugging Face Trainer run: a TrainerCallback that drives `gradscope.recorder.Recorder`.

    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    callback = GradscopeTrainerCallback("runs/mine", data=data_block, model_factory="my_models:small")
    Trainer(model=model, args=args, train_dataset=..., data_collator=..., callbacks=[callback]).train()

The recorder evaluates the model as `model(x)` on whole splits and expects logits, so the model
(or the submodule `model_attr` names) must return logits when called with inputs alone; with
labels it may return what the Trainer wants ({"loss": ..., "logits": ...}). The optimizer is the
Trainer's, unwrapped from accelerate's AcceleratedOptimizer. Steps count optimizer steps, as
`state.global_step` does (gradient_accumulation_steps batches each). The Trainer clips gradients
(max_grad_norm) before `on_pre_optimizer_step`, so the recorded grad_norm is the clipped norm;
set max_grad_norm=0 to record unclipped ones. Only the world's process zero records.
"""

from __future__ import annotations

try:
    import accelerate  # noqa: F401  (the Trainer needs it)
    import transformers
    from transformers import TrainerCallback
except ImportError as e:  # only users of this module need transformers
    from gradscope.doctor import missing_message

    raise ImportError(missing_message("huggingface", "gradscope.integrations.huggingface")) from e
if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # older releases call no callback between backward and step
    raise ImportError(f"gradscope.integrations.huggingface needs a transformers whose Trainer calls "
                      f"on_pre_optimizer_step (this is {transformers.__version__}): pip install -U transformers")

from gradscope.integrations import _common
from gradscope.recorder import Recorder, RecorderError


class GradscopeTrainerCallback(TrainerCallback):
    """Record `Trainer.train()` into `folder` (see `gradscope.recorder.Recorder` for the run folder).

    folder, data and the other keyword arguments are the Recorder's (model_settings or
    model_factory + model_kwargs, checkpoints, log_every, dynamics_every, loss, optim, batch_size,
    seed, device, scaler, batch_generator, resume, run_id), except model and optimizer, which come
    from the Trainer.
    steps: the optimizer steps of the training; by default the Trainer's `state.max_steps`.
    model_attr: the attribute of the model to record (dotted names allowed), when the model's own
        forward does not map inputs to logits (None: the model itself).
    By default batch_size is the examples per optimizer step (args.train_batch_size times
    gradient_accumulation_steps and the world size), seed is args.seed, device where the model
    is, and scaler accelerate's GradScaler where it has one (fp16).
    """

    def __init__(self, folder, *, data, steps: int | None = None, model_attr: str | None = None, **recorder_kwargs):
        _common.check_arguments(type(self).__name__, recorder_kwargs)
        self.folder, self.data, self.steps, self.model_attr = folder, data, steps, model_attr
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_train_begin(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                       control: transformers.TrainerControl, model=None, optimizer=None, **kwargs):
        self.recorder = None
        if not state.is_world_process_zero:
            return
        who = type(self).__name__
        if model is None or optimizer is None:
            raise RecorderError(f"{who}: the Trainer gave no {'model' if model is None else 'optimizer'} at "
                                "on_train_begin")
        model = _common.recorded_model(model, self.model_attr, who)
        recorder_kwargs = dict(self.recorder_kwargs)
        recorder_kwargs.setdefault("scaler", getattr(optimizer, "scaler", None))  # AcceleratedOptimizer's, under fp16
        recorder_kwargs.setdefault("device", _common.device_of(model))
        recorder_kwargs.setdefault("batch_size", int(args.train_batch_size * args.gradient_accumulation_steps
                                                     * max(args.world_size, 1)))
        recorder_kwargs.setdefault("seed", int(args.seed))
        steps = self.steps if self.steps is not None else int(state.max_steps)
        if steps <= 0:
            raise RecorderError(f"{who}: the Trainer's number of optimizer steps is not known (max_steps "
                                f"{state.max_steps}): give TrainingArguments max_steps, or the callback steps=")
        self.recorder = Recorder(self.folder, model=model, optimizer=_common.unwrap_optimizer(optimizer),
                                 data=self.data, steps=steps, **recorder_kwargs)
        _common.check_aligned(self.recorder, state.global_step, who)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # After the Trainer's unscaling and clipping; global_step counts the optimizer steps completed.
        if self.recorder is not None:
            self.recorder.before_update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # Called once per optimizer step, after global_step went up by one.
        if self.recorder is not None:
            self.recorder.after_update(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None and not self.recorder.finished:
            self.recorder.finish()
