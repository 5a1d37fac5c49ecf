"""The optimizer's own update at a checkpoint, by replaying one training step: the direction along
which `gradscope.curvature.hessian.update_sharpness` (compute_curvature's update_sharpness)
measures the curvature the step sees.

Not a curvature measure but a replay of a training step, so it runs in training mode, as training
does (BatchNorm on batch statistics): on a deep copy of the model, whose buffers absorb the change.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from gradscope.losses import per_example_loss
from gradscope.optim import CUSTOM, build_optimizer, lr_at
from gradscope.parameters import flat_params, param_kind

log = logging.getLogger(__name__)


def update_not_replayable(optim: dict, optimizer_state: dict | None) -> str | None:
    """Why a checkpoint's next update cannot be replayed (`optimizer_update`), for update sharpness;
    None where it can. optim: the run's filled `optim` section; optimizer_state: the checkpoint's
    (None: it holds none)."""
    if optim["name"] == CUSTOM:
        return "optim.name is custom"
    if optimizer_state is None:  # plain SGD's update needs no optimizer state
        return None if optim["name"] == "sgd" and not optim["momentum"] else "the checkpoint holds no optimizer state"
    if len(optimizer_state["param_groups"]) != 1:  # a loop with several (Hugging Face's decay / no-decay)
        return f"the optimizer has {len(optimizer_state['param_groups'])} parameter groups; gradscope rebuilds one"
    return None


def optimizer_update(model: nn.Module, optimizer_state: dict | None, optim_config: dict, inputs: torch.Tensor,
                     targets: torch.Tensor, *, loss: str = "cross_entropy", step: int,
                     lr: float | None = None) -> torch.Tensor:
    """theta_new - theta (flat over the trainable parameters, named_parameters order) for one
    optimizer step taken as training takes it.

    On a deep copy of the model (the model and `optimizer_state` are left untouched): rebuild the
    optimizer (`gradscope.optim.build_optimizer`), load `optimizer_state` (a checkpoint's; None
    for a fresh optimizer), take the gradient of the mean loss over `inputs`, clip it by global
    norm when `optim_config["grad_clip"]` is set and exceeded (as training does), set the lr to
    `lr` (a checkpoint stores the lr of its step, schedules and plateaus included) or else
    `gradscope.optim.lr_at(step, optim_config)`, and step once. With full-batch training and
    `inputs` the whole training set this is the update the run made at `step`; on a subset it is
    the update that subset's gradient would give (momentum and Adam moments from the run).
    """
    clone = copy.deepcopy(model)
    clone.train()  # the mode training steps in
    optimizer = build_optimizer(clone.parameters(), optim_config)
    if optimizer_state is not None:
        # load_state_dict keeps the given tensors (momentum buffers, Adam moments) when dtype and
        # device already match, and step() updates them in place: copy, so the caller's stay put.
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    dtype, device = param_kind(clone)
    inputs, targets = inputs.to(device), targets.to(device)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    before = flat_params(clone).clone()
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        per_example_loss(clone(inputs), targets, loss).mean().backward()
    clip = optim_config.get("grad_clip")
    if clip is not None:
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in clone.parameters() if p.grad is not None))
        if norm > clip:
            torch.nn.utils.clip_grad_norm_(clone.parameters(), clip)
    for group in optimizer.param_groups:
        group["lr"] = lr if lr is not None else lr_at(step, optim_config)
    optimizer.step()
    return flat_params(clone) - before


def checkpoint_update(model: nn.Module, state: dict, optim_config: dict, inputs: torch.Tensor, targets: torch.Tensor,
                      *, loss: str, step: int, wanted: bool) -> torch.Tensor | None:
    """`optimizer_update` from a checkpoint's saved state and lr, or None where not `wanted` or where the
    checkpoint cannot replay it (`update_not_replayable`, said in the log).

    The update is the optimizer's own next one, rebuilt from the checkpoint's optimizer state and lr
    with the gradient of the whole training set (the update of full-batch training; for minibatch
    SGD, its expectation over batches; for Adam-family optimizers, the update the full-batch gradient
    would give). It needs the optimizer's state, so update sharpness is NaN for a checkpoint without
    one (a plain state_dict), unless plain SGD needs none, and for an optimizer gradscope does not
    build (optim.name custom)."""
    why = update_not_replayable(optim_config, state.get("optimizer_state"))
    if wanted and why:
        log.info("step %d: no update sharpness (%s)", step, why)
    if not wanted or why:
        return None
    return optimizer_update(model, state["optimizer_state"], optim_config, inputs, targets, loss=loss, step=step,
                            lr=state["lr"])
