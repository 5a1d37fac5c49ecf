"""Self-describing checkpoints (after nanoGPT): everything needed to rebuild the model.

A checkpoint holds the model and optimizer state, every RNG state, the step, the input
description and the training settings; `load(path)` rebuilds the model from it alone.
Written atomically, so a checkpoint file that exists is whole.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from gradscope import artifacts
from gradscope.models import InputSpec, build_model


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save(path, *, model, optimizer, step: int, spec: InputSpec, settings: dict, batch_generator=None, lr: float) -> None:
    state = {
        "step": step,
        "lr": lr,
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "input_spec": spec.__dict__,
        "settings": settings,  # the training slice of the run config
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "batches": None if batch_generator is None else batch_generator.get_state(),
        },
    }
    with artifacts.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign files raise several types
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e


def load(path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint (in eval mode) and return it with the checkpoint dict."""
    state = load_state(path)
    model = build_model(state["settings"]["model"], InputSpec.from_dict(state["input_spec"]))
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), state
