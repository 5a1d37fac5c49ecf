"""What the dataset feeds a model (InputSpec): dense features of a per-example shape, or token ids;
every model kind is built for one, and a checkpoint stores it (as a dict) to rebuild its model."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """What the dataset feeds the model."""

    kind: str  # "dense" (float features) or "tokens" (long token ids)
    dim: int  # number of features (dense: the product of shape) or number of tokens per example (tokens)
    vocab: int  # token vocabulary size (tokens); 0 for dense
    n_classes: int  # number of output classes
    # Per-example input shape: (dim,) for flat features and tokens, (channels, length) for 1-D
    # signals, (channels, height, width) for images. Left out, it is (dim,).
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape) or (int(self.dim),)
        object.__setattr__(self, "shape", shape)  # frozen: set once, here
        if self.kind == "dense" and math.prod(shape) != self.dim:
            raise ValueError(f"input shape {list(shape)} has {math.prod(shape)} entries, but dim is {self.dim}")

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        """From a dataset's meta["input"] or a checkpoint's input_spec (either may lack "shape")."""
        return cls(kind=d["kind"], dim=int(d["dim"]), vocab=int(d.get("vocab", 0)), n_classes=int(d["n_classes"]),
                   shape=tuple(d.get("shape") or ()))
