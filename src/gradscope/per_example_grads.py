"""Per-example gradients by torch.func vmap(grad), with a loop over examples where vmap fails.

`vmap_grad` is the one place where per-example gradients are formed one by one: the
per-example engine's fallback parameters and `gradscope.examples.per_example_gradients` (the
gradient of each example's loss, `loss_gradients`), and the curvature traces
(`gradscope.curvature.traces`: the gradient of <f(x_i), c_i>). Where an operation has no
batching rule (the float64 LSTM's in-place cell), the same single-example gradients come from
a loop over the examples, with a warning naming what they are of: exact either way.

Also `dense`, the small helper of flat gradients that the engine and gradscope.examples share
(their detached parameter copies are `gradscope.parameters.detached_params`).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gradscope.losses import per_example_loss

log = logging.getLogger(__name__)


def dense(t: torch.Tensor) -> torch.Tensor:
    """A gradient as a dense tensor (an Embedding with sparse=True gives sparse ones)."""
    return t.to_dense() if t.is_sparse else t


def vmap_grad(fn: Callable, params: dict[str, torch.Tensor], *batched: torch.Tensor, what: str,
              randomness: str = "error") -> dict[str, torch.Tensor]:
    """{name: (b, *shape)}: grad(fn)(params, *(a[i] for a in batched)) of every example i, by vmap over
    the leading axis of each of `batched` (params shared). `fn` sees one example without its batch
    axis. Where vmap fails (RuntimeError), the same gradients one example at a time, and a warning
    names `what` they are of. `randomness` is vmap's."""
    per_example = grad(fn)
    try:
        return vmap(per_example, in_dims=(None,) + (0,) * len(batched), randomness=randomness)(params, *batched)
    except RuntimeError as e:  # ops without a batching rule (the float64 LSTM's in-place cell): one at a time
        log.warning("vmap(grad) failed (%s); per-example gradients of %s by a loop over examples",
                    str(e).splitlines()[0], what)
        rows = [per_example(params, *(a[i] for a in batched)) for i in range(len(batched[0]))]
        return {k: torch.stack([r[k] for r in rows]) for k in params}


def loss_gradients(model: nn.Module, params: dict, names: list[str], x: torch.Tensor, y: torch.Tensor,
                   loss: str) -> dict[str, torch.Tensor]:
    """Gradients of each example's loss w.r.t. params[names] only (the others held fixed): {name: (b, *shape)}."""
    fixed = {k: v.detach() for k, v in params.items() if k not in names}

    def one(sub, xi, yi):
        # vmap strips the batch dimension; the model and loss expect one.
        logits = functional_call(model, {**fixed, **sub}, (xi.unsqueeze(0),))
        return per_example_loss(logits, yi.unsqueeze(0), loss)[0]

    sub = {k: params[k].detach() for k in names}
    return vmap_grad(one, sub, x, y, what=", ".join(names), randomness="different")
