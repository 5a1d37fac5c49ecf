"""Self-describing checkpoints (after nanoGPT): everything needed to rebuild the model.

A checkpoint holds the model and optimizer state, every RNG state, the step, the input
description (its per-example shape included) and the training settings; `load(path)` rebuilds
the model from it alone: built-in kinds from their settings, a `python` model by calling its
recorded `factory` with its recorded `kwargs` again (imported with the working directory on
sys.path; see `gradscope.models`). A `python` model's checkpoint also records the fingerprint of
the factory's source (`code`, see `gradscope.factories.fingerprint`), and `load` refuses to
rebuild it under other code (a CodeChangedError naming the factory and both fingerprints);
checkpoints written before gradscope recorded it load as before.
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

from gradscope import artifacts, factories, layout
from gradscope.models import InputSpec, build_model


def checkpoint_name(step: int) -> str:
    """A checkpoint's file name (step_00000006.pt): layout.BY_STEP, where it is spelled."""
    return layout.checkpoint_name(step)


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
    code = factories.model_code(settings.get("model"))  # the code that built the model (python models only)
    if code is not None:
        state["code"] = code
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
    if path.suffix == ".safetensors":
        return {"model_state": _read_safetensors(path)}
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign files raise several types
        raise ValueError(f"cannot read checkpoint {path} ({e}): {artifacts.regenerate_hint(path)}") from e


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"{path} is a safetensors file, and reading it needs the safetensors package: "
                         "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path} as safetensors ({e}): {artifacts.regenerate_hint(path)}") from e


def check_code(state: dict, path, model_settings: dict | None = None) -> None:
    """Refuse a checkpoint whose model was built by other code than its factory's source now (a
    CodeChangedError naming the factory, the file and both fingerprints). `model_settings`: the
    model section for a checkpoint that records none (a plain state_dict); one recording no code
    (a built-in model, or written before gradscope recorded it) passes."""
    settings = state.get("settings") if isinstance(state.get("settings"), dict) else {}
    model = settings.get("model", model_settings)
    factories.check_code(state.get("code"), factories.model_code(model), what=f"checkpoint {path}")


def same_code(state: dict) -> bool:
    """Whether a checkpoint of gradscope's own was made by the code its factory holds now (resuming must not mix)."""
    try:
        check_code(state, "")
    except factories.CodeChangedError:
        return False
    return True


def code_changed(manifest_path) -> str | None:
    """Why a run's checkpoints would not load under the code its model factory holds now (the
    CodeChangedError's message for the last checkpoint its manifest lists), or None: what `gradscope
    show` says. Only the checkpoint's small records are read (memory-mapped)."""
    manifest_path = Path(manifest_path)
    try:
        files = artifacts.read_json(manifest_path)["checkpoints"]
        path = manifest_path.parent / files[max(files, key=int)]
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if not is_own(state):
            return None
        check_code(state, path)
    except factories.CodeChangedError as e:
        return str(e)
    except Exception:  # no manifest, a damaged file, a factory that does not import: said elsewhere
        return None
    return None


def is_own(state) -> bool:
    """A checkpoint gradscope wrote (the train stage or a Recorder): it rebuilds its model itself."""
    return isinstance(state, dict) and "settings" in state and "input_spec" in state and "model_state" in state


# Where other loops keep the weights inside the dict they save (Lightning: state_dict; many
# scripts: model_state_dict), and the prefixes wrappers add to every key (DDP, torch.compile).
_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model_state", "model")
_PREFIXES = ("module.", "_orig_mod.")


def plain_weights(state, path) -> dict:
    """The parameter and buffer tensors of a checkpoint that is not gradscope's own: a state_dict,
    or a dict holding one under a usual key (state_dict, model_state_dict, model_state, model)."""
    if isinstance(state, dict) and not _all_tensors(state):
        for key in _WEIGHT_KEYS:
            if isinstance(state.get(key), dict) and _all_tensors(state[key]):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        keys = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a model state_dict (found {keys}); a checkpoint of your own loop is "
                         f"torch.save(model.state_dict(), path), a dict holding it under one of "
                         f"{', '.join(_WEIGHT_KEYS)}, or a .safetensors file")
    return state


def _all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def load_weights(model: torch.nn.Module, weights: dict, path) -> None:
    """Put `weights` into `model`; keys that do not match (after removing a DDP or torch.compile
    prefix) raise a ValueError naming the file, the missing and the unexpected keys."""
    expected = set(model.state_dict())
    for prefix in _PREFIXES:
        if not set(weights) & expected and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        def some(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "") if keys else "none"
        raise ValueError(f"{path}: its keys do not match the model: missing {some(missing)}; unexpected "
                         f"{some(unexpected)}. Check the experiment's model settings (kind, factory, kwargs) against "
                         "the model this checkpoint was saved from")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # same keys, other shapes
        raise ValueError(f"{path}: its tensors do not fit the model: {e}. Check the experiment's model settings "
                         "against the model this checkpoint was saved from") from None


def load(path, device: str | torch.device = "cpu", *, model_settings: dict | None = None,
         spec: InputSpec | None = None, code: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint (in eval mode) and return it with the checkpoint dict.

    gradscope's own checkpoints rebuild themselves. Any other (a plain state_dict in a .pt, .pth,
    .bin or .ckpt file, or a .safetensors file) is loaded into the model that `model_settings`
    (a run's `model` section) builds for `spec`; its dict then holds model_state, and
    optimizer_state and lr are None (what it does not record); `code`, where given (the factory
    fingerprint recorded when the run was imported), must match its factory's source now.

    A checkpoint whose model was built by other code than the factory's source now raises
    `factories.CodeChangedError` (see `check_code`)."""
    state = load_state(path)
    if is_own(state):
        check_code(state, path)
        model = build_model(state["settings"]["model"], InputSpec.from_dict(state["input_spec"]))
        model.load_state_dict(state["model_state"])
        return model.to(device).eval(), state
    if model_settings is None or spec is None:
        raise ValueError(f"{path} is not a gradscope checkpoint (it records no model to rebuild): give the model "
                         "settings and the input spec it was trained with")
    weights = plain_weights(state, path)
    check_code({"code": code}, path, model_settings)
    model = build_model(model_settings, spec)
    load_weights(model, weights, path)
    return model.to(device).eval(), {"model_state": weights, "optimizer_state": None, "lr": None}
