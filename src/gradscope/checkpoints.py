"""Self-describing checkpoints (after nanoGPT): everything needed to rebuild the model.

A checkpoint holds the model and optimizer state, every RNG state, the step, the input
description (its per-example shape included) and the training settings; `load(path)` rebuilds
the model from it alone: built-in kinds from their settings, a `python` model by calling its
recorded `factory` with its recorded `kwargs` again (imported with the working directory on
sys.path; see `gradscope.models`).
Written atomically, so a checkpoint file that exists is whole; the same state gives the same bytes
(the training loop seeds every generator and keeps wall-clock times out of checkpoints).
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import numpy as np
import torch

from gradscope import artifacts
from gradscope.models import InputSpec, build_model


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save(path, *, model, optimizer, step: int, spec: InputSpec, settings: dict, batch_generator=None, lr: float,
         extra: dict | None = None) -> None:
    """Write a checkpoint atomically; `extra` holds what resuming needs beyond the states (batch order, metrics so far)."""
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
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        **(extra or {}),
    }
    # Serialized in memory first: torch.save names the archive's records after the file it
    # writes, and the temporary file's name is random, which would make the same state give
    # different bytes; a write that fails (a full disk) is then Python's OSError, naming the file.
    buffer = io.BytesIO()
    torch.save(_canonical(state), buffer)
    artifacts.write_bytes(buffer.getbuffer(), path)


def _canonical(value):
    """The same structure with every string interned. Pickle writes a string it has seen as a
    reference to the same object only: a resumed run's keys, read back from a checkpoint, are
    other objects than a fresh run's literals, and would otherwise change the bytes."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_canonical(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_canonical(v) for v in value)
    return value


def restore_rng(rng: dict, batch_generator=None) -> None:
    """Put back every RNG state a checkpoint saved, so training continues with the same draws."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if batch_generator is not None and rng.get("batches") is not None:
        batch_generator.set_state(rng["batches"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_state(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign files raise several types
        raise ValueError(f"cannot read checkpoint {path} ({e}): {artifacts.regenerate_hint(path)}") from e


def load(path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint (in eval mode) and return it with the checkpoint dict."""
    state = load_state(path)
    model = build_model(state["settings"]["model"], InputSpec.from_dict(state["input_spec"]))
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), state
