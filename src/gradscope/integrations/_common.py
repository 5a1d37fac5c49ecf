"""What the framework callbacks share: checking the Recorder's arguments early, and finding the
optimizer and device the recorder should use."""

from __future__ import annotations

import importlib.util
import inspect
import sys

import torch

from gradscope.recorder import Recorder, RecorderError, model_settings_of


def torchvision_first() -> None:
    """Import torchvision (where installed and not yet imported) the way gradscope's torchvision data
    source does: the frameworks import it on their own (Lightning through torchmetrics), and PyPI's
    torchvision beside a CPU build of torch fails to import otherwise (`gradscope.data.import_torchvision`)."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    from gradscope import data

    try:
        data.import_torchvision()
    except (ImportError, RuntimeError):  # the framework's own import then says what is wrong
        pass


# Given by the trainer when training starts, not by the user.
_FROM_TRAINER = ("model", "optimizer")


def check_arguments(who: str, recorder_kwargs: dict) -> None:
    """A TypeError now, when the callback is made, for what the Recorder would refuse at train start."""
    for name in _FROM_TRAINER:
        if name in recorder_kwargs:
            raise TypeError(f"{who}: {name}= is taken from the trainer when training starts; leave it out")
    allowed = set(inspect.signature(Recorder).parameters) - {"folder", "data", "steps", *_FROM_TRAINER}
    unknown = sorted(set(recorder_kwargs) - allowed)
    if unknown:
        raise TypeError(f"{who}: unexpected argument(s) {', '.join(unknown)}; the Recorder takes "
                        f"{', '.join(sorted(allowed))}")
    # How the analysis rebuilds the model: checked now, before any training time is spent.
    model_settings_of(recorder_kwargs.get("model_factory"), recorder_kwargs.get("model_kwargs"),
                      recorder_kwargs.get("model_settings"))


def recorded_model(module: torch.nn.Module, model_attr: str | None, who: str) -> torch.nn.Module:
    """The module itself, or its attribute `model_attr` (e.g. "net"): the model that maps inputs to logits."""
    if model_attr is None:
        return module
    model = module
    for part in model_attr.split("."):
        if not hasattr(model, part):
            raise RecorderError(f"{who}: model_attr={model_attr!r}, but {type(module).__name__} has no attribute "
                                f"{model_attr!r}")
        model = getattr(model, part)
    if not isinstance(model, torch.nn.Module):
        raise RecorderError(f"{who}: model_attr={model_attr!r} is a {type(model).__name__}, not a torch.nn.Module")
    return model


def unwrap_optimizer(optimizer):
    """The torch optimizer inside a wrapper (accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer): the recorder reads its param_groups, state and state_dict, and
    `optim_settings` names only the exact torch classes."""
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def device_of(model: torch.nn.Module) -> str:
    """Where the recorder evaluates: the device of the model's parameters (the trainer has put it there)."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return "auto"
    return str(param.device)  # "cpu", "cuda:0", ...: what torch.device reads back

def check_aligned(recorder: Recorder, trainer_step: int, who: str) -> None:
    """The recorder and the trainer must start at the same optimizer step."""
    if recorder.step != trainer_step:
        raise RecorderError(f"{who}: the trainer starts at optimizer step {trainer_step}, but the recording in "
                            f"{recorder.folder} is at step {recorder.step}. A trainer resumed from its own checkpoint "
                            "needs a recording resumed (resume=True) at the same step; otherwise record into a new "
                            "folder from step 0")
