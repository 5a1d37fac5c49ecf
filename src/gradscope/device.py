"""The `device` setting: "auto" means CUDA when torch sees it, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks CUDA when present; "cuda" without CUDA is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)
