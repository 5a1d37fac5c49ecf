"""Recorded runs of the Lightning and Hugging Face callbacks: a real Trainer trains a tiny model on the
digits data while the callback records it (tests/integrations/test_integrations.py checks them; other
tests analyze them with the workflow)."""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradscope import data
from gradscope.models import build_model
from support.workflow import REPO

if str(REPO) not in sys.path:  # "tests.integration_models" imports from the repository root
    sys.path.insert(0, str(REPO))


DATA = {"generator": "digits", "digits": {"label_noise": 0.1}}
MLP = {"kind": "mlp", "width": 32}
STEPS = 24
BATCH = 16  # 1348 training examples: 84 batches an epoch, so 2 x 24 batches stay in one epoch


@dataclass
class Recorded:
    """A finished recording and what the trainer did, seen by a callback of the test's own."""

    folder: Path
    steps: int
    model: torch.nn.Module  # the recorded model, trained (the trainer's final state)
    train: tuple  # (x, y) of the training split
    weights: dict = field(default_factory=dict)  # optimizer steps taken -> state_dict then (0: before training)
    grad_norms: dict = field(default_factory=dict)  # step -> norm of the gradients step's update used
    lrs: dict = field(default_factory=dict)  # step -> the lr of step's update
    batches: int = 0  # training batches the trainer ran


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grad_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.detach().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def _loader(x, y, batch_size: int):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def record_lightning_run(folder, *, accumulate: int = 1, model_attr: str | None = "net", steps: int = STEPS,
                         log_every: int | str = 1) -> Recorded:
    """Fit a tiny classifier with the Lightning Trainer (CPU, max_steps=steps), recorded into `folder`.

    model_attr="net": a LightningModule holding a built-in MLP as `net` (Adam), recorded as
    {kind: mlp, width: 32}; None: the LightningModule is the model (SGD with momentum), rebuilt by
    tests.integration_models:lit_classifier. Either decays its lr every step. accumulate: the
    Trainer's accumulate_grad_batches."""
    from gradscope.integrations.lightning import GradscopeCallback  # first: it readies torchvision for Lightning
    import lightning.pytorch as pl  # noqa: I001
    from tests.integration_models import LitWrapper, lit_classifier

    folder = Path(folder)
    (x, y), _, spec = data.load(DATA)
    torch.manual_seed(0)
    if model_attr is not None:
        module = LitWrapper(build_model(MLP, spec))
        how = {"model_settings": MLP, "model_attr": model_attr}
    else:
        module = lit_classifier(spec.shape, spec.n_classes, width=32)
        how = {"model_factory": "tests.integration_models:lit_classifier", "model_kwargs": {"width": 32}}
    model = getattr(module, model_attr) if model_attr else module
    out = Recorded(folder=folder, steps=steps, model=model, train=(x, y))

    class Watch(pl.Callback):  # what the trainer did, independently of the recorder
        def on_train_start(self, trainer, pl_module):
            out.weights[trainer.global_step] = _state(model)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            out.grad_norms[trainer.global_step] = _grad_norm(model)
            out.lrs[trainer.global_step] = optimizer.param_groups[0]["lr"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            out.batches += 1
            out.weights[trainer.global_step] = _state(model)

    callback = GradscopeCallback(folder, data=DATA, log_every=log_every, **how)  # steps: the Trainer's max_steps
    with tempfile.TemporaryDirectory() as scratch:
        trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=scratch,
                             callbacks=[Watch(), callback])
        trainer.fit(module, _loader(x, y, BATCH))
    assert callback.recorder is not None and callback.recorder.finished
    return out


def _collate(batch) -> dict:
    """A Trainer batch from (x, y) pairs: the model's keyword arguments."""
    return {"x": torch.stack([b[0] for b in batch]), "labels": torch.stack([b[1] for b in batch])}


def record_hf_run(folder, *, accumulate: int = 1, steps: int = STEPS, log_every: int | str = 1) -> Recorded:
    """Train tests.integration_models:tiny_classifier with the Hugging Face Trainer (CPU, AdamW with
    a linear decay of the lr, max_steps=steps, gradient_accumulation_steps=accumulate), recorded into `folder`."""
    import transformers

    from gradscope.integrations.huggingface import GradscopeTrainerCallback
    from tests.integration_models import tiny_classifier

    folder = Path(folder)
    (x, y), _, spec = data.load(DATA)
    torch.manual_seed(0)
    model = tiny_classifier(spec.shape, spec.n_classes, width=32)
    out = Recorded(folder=folder, steps=steps, model=model, train=(x, y))

    class Watch(transformers.TrainerCallback):  # what the trainer did, independently of the recorder
        def on_train_begin(self, args, state, control, **kwargs):
            out.weights[state.global_step] = _state(model)

        def on_pre_optimizer_step(self, args, state, control, optimizer, **kwargs):
            out.grad_norms[state.global_step] = _grad_norm(model)
            out.lrs[state.global_step] = optimizer.param_groups[0]["lr"]

        def on_substep_end(self, args, state, control, **kwargs):
            out.batches += 1

        def on_step_end(self, args, state, control, **kwargs):
            out.batches += 1
            out.weights[state.global_step] = _state(model)

    callback = GradscopeTrainerCallback(folder, data=DATA, log_every=log_every,
                                        model_factory="tests.integration_models:tiny_classifier",
                                        model_kwargs={"width": 32})  # steps: the Trainer's max_steps
    with tempfile.TemporaryDirectory() as scratch:
        args = transformers.TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=accumulate, learning_rate=1e-2, lr_scheduler_type="linear",
            optim="adamw_torch", max_grad_norm=0.0, use_cpu=True, seed=0, report_to="none", disable_tqdm=True,
            save_strategy="no", logging_strategy="no", eval_strategy="no", remove_unused_columns=False,
            dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=torch.utils.data.TensorDataset(x, y),
                                       data_collator=_collate, callbacks=[Watch(), callback])
        trainer.train()
    assert callback.recorder is not None and callback.recorder.finished
    return out
