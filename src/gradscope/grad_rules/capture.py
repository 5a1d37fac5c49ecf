"""Capture of a forward pass: every call of a registered torch function goes to its rule.

A TorchFunctionMode sees each call of F.linear, F.conv2d, F.embedding, F.layer_norm, ... that
the model makes, whether through a module or a functional call, and recognizes the
parameters by identity. So shared and tied weights (several calls with one tensor) and
functional uses (attention's out-projection) are seen, which module hooks are not.

Phases: "probe" records every use as it comes (the engine compares shapes at batch 1 and 2
to find each use's batch axis); "capture" follows the plan the probe made: for use i,
`Batched(axis)`, `Broadcast()` (an input without batch axis, like positions indexed by
arange: its output is expanded along a new batch axis 0), or None (not needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch.overrides import TorchFunctionMode

from gradscope.grad_rules.base import RULES


@dataclass(frozen=True)
class Batched:
    """Plan of a use whose input has its batch axis at `axis` (what its features are given)."""

    axis: int


@dataclass(frozen=True)
class Broadcast:
    """Plan of a use whose input has no batch axis: its output is expanded along a new batch axis 0,
    and its features see no batch axis in the input (axis None)."""

    axis: ClassVar[None] = None


# The plan of one use: None where the capture does not need it.
Mode = Union[Batched, Broadcast, None]


@dataclass
class Use:
    names: dict  # attribute ("weight", "bias") -> parameter name, tracked ones only
    inp: torch.Tensor  # the input as saved (a copy in safe mode)
    out: torch.Tensor  # the tensor whose gradient is this use's output-gradient
    features: object  # features(inp, G, axis, batch, attrs) -> {attr: feature}
    shape: tuple  # input shape as called
    axes: tuple  # batch axes the rule allows
    broadcastable: bool
    versions: tuple
    src: tuple  # the tensors the model really used, for the in-place check
    mode: Mode = None


class Capture(TorchFunctionMode):
    def __init__(self, names_by_id: dict[int, str]):
        super().__init__()
        self.names_by_id = names_by_id
        self.phase = None
        self.plan: list[Mode] | None = None
        self.uses: list[Use | None] = []
        self.batch = 0
        self.safe = False

    def start(self, phase: str, *, batch: int, plan: list[Mode] | None = None, safe: bool = False) -> None:
        self.phase, self.batch, self.plan, self.safe, self.uses = phase, batch, plan, safe, []

    def stop(self) -> list:
        self.phase = None
        uses, self.uses = self.uses, []
        return uses

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = RULES.get(func) if self.phase is not None else None
        if rule is None:
            return func(*args, **kwargs)
        return rule(self, func, args, kwargs)

    def use(self, inp, out, params: dict, features, *, broadcastable: bool = False, batch_axes=(0,)):
        """Called by a rule: record one use of `params` (attr -> tensor) and return what the model gets."""
        names = {a: self.names_by_id[id(t)] for a, t in params.items() if t is not None and id(t) in self.names_by_id}
        if not names or not torch.is_tensor(inp) or not torch.is_tensor(out):
            return out
        i = len(self.uses)
        mode = None
        if self.phase == "capture":
            if self.plan is None or i >= len(self.plan):
                raise RuntimeError("the model made more parameter calls than in the probe (data-dependent control "
                                   "flow); use method='vmap'")
            mode = self.plan[i]
            if mode is None:
                self.uses.append(None)
                return out
            if isinstance(mode, Batched) and (inp.dim() <= mode.axis or inp.shape[mode.axis] != self.batch):
                raise RuntimeError(f"input {tuple(inp.shape)} lacks batch axis {mode.axis} of size {self.batch}; "
                                   "use method='vmap'")
        ret = out
        if isinstance(mode, Broadcast):
            out = ret = out.expand(self.batch, *out.shape)
        saved = inp.detach()
        if self.safe:  # the model may overwrite tensors in place: keep copies, hand it a copy
            saved, ret = saved.clone(), out.clone()
        self.uses.append(Use(names, saved, out, features, tuple(inp.shape), tuple(batch_axes), broadcastable,
                             (inp._version, out._version), (inp, out), mode))
        return ret

    def tampered(self) -> bool:
        return any(u is not None and (u.src[0]._version != u.versions[0] or u.src[1]._version != u.versions[1])
                   for u in self.uses)
