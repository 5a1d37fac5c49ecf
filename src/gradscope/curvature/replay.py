"""The optimizer's own update at a checkpoint, by replaying one training step: the direction along
which `gradscope.curvature.hessian.update_sharpness` (compute_curvature's update_sharpness)
measures the curvature the step sees.

Not a curvature measure but a replay of a training step, so it runs in training mode, as training
does (BatchNorm on batch statistics): on a deep copy of the model, whose buffers absorb the change.

Micro-batches (`batch_size`, the `curvature.batch_size` setting): the gradient of the mean loss over
all the inputs (the whole training set in the workflow) is the sum over micro-batches of
sum_i loss_i / N, so memory holds one micro-batch. BatchNorm in training mode couples the examples
(batch statistics over all N), so micro-batches would change the update: instead the replay keeps
the statistics of the whole set, exactly, at the price of extra passes (`_FullBatchNorm`): one pass
per BatchNorm layer computes its mean and variance over all N (each layer's input depends on the
earlier layers' statistics), one pass takes the gradient with the statistics held as variables, and
one reverse pass per layer carries the gradient through its statistics into the parameters (the
adjoint of the statistics' triangular dependence). The result is the one-batch update to float
rounding, with memory of one micro-batch, but 2L + 1 passes for L BatchNorm layers, of which 2L partial
(to the layer): on gradscope's default ResNet (20 BatchNorm layers, [3, 32, 32], float32, CPU) about
10x the time of the one-batch gradient (117 s against 12 s for 1,024 examples in micro-batches of
128). Without BatchNorm the micro-batches cost no extra pass. A BatchNorm module called more than once per forward
(shared) cannot be handled so: the replay then runs all N in one batch, with a log line saying so.
Dropout draws its masks per pass, so with dropout no two replays agree anyway.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time

import torch
from torch import nn

from gradscope.curvature._common import DEFAULTS
from gradscope.losses import per_example_loss
from gradscope.optim import CUSTOM, build_optimizer, lr_at
from gradscope.parameters import flat_params, param_kind

log = logging.getLogger(__name__)


def _add(total, part):
    """A running sum over micro-batches, in float64 (None: nothing reached yet)."""
    if part is None:
        return total
    part = part.double() if part.is_floating_point() else part
    return part if total is None else total + part


class _Stop(Exception):
    """Ends a forward pass at the BatchNorm layer a pass is about (its value: what it computed there)."""

    def __init__(self, value=None):
        super().__init__()
        self.value = value


class _FullBatchNorm:
    """The BatchNorm modules (training mode) of the replay's clone, made to normalize with given
    statistics of the whole set (`stats`: module -> (mean, biased variance) per channel), found
    and differentiated pass by pass (see the module docstring). Patches the clone's modules' forward."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        self.order: list[nn.Module] = []  # in call order, as their statistics are found
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.counts: dict[nn.Module, int] = {}  # values per channel over the whole set
        self.target, self.weights, self.acc, self.calls = None, None, None, {}
        for m in self.modules:
            m.forward = functools.partial(self._forward, m)  # an instance attribute: nn.Module.__call__ runs it

    def _forward(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dims, view = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        if m not in self.stats:  # the first layer without statistics: this pass collects them (Chan et al.)
            xd = x.detach().double()  # the statistics accumulate in float64 over the micro-batches
            count, mean = xd.numel() // xd.shape[1], xd.mean(dims)
            m2 = (xd - mean.view(view)).pow(2).sum(dims)
            if self.acc is None:
                self.acc = [m, count, mean, m2]
            else:
                _, n_a, mean_a, m2_a = self.acc
                n, delta = n_a + count, mean - mean_a
                self.acc = [m, n, mean_a + delta * count / n, m2_a + m2 + delta.pow(2) * n_a * count / n]
            raise _Stop()
        mean, var = (t.to(x.dtype) for t in self.stats[m])  # float64 while collecting; a no-op on the leaves
        if m is self.target:  # <w, this layer's statistics>, this micro-batch's share; d/d mean of var is 0
            w_mean, w_var = self.weights
            value = (x.sum(dims) * w_mean).sum() + ((x - mean.detach().view(view)).pow(2).sum(dims) * w_var).sum()
            raise _Stop(value / self.counts[m])
        self.calls[m] = self.calls.get(m, 0) + 1
        # x * scale + shift with per-channel scale and shift, as PyTorch's own kernel: the graph saves
        # x only (the statistics' gradients flow through the per-channel tensors).
        scale = torch.rsqrt(var + m.eps) if m.weight is None else m.weight * torch.rsqrt(var + m.eps)
        shift = -mean * scale if m.bias is None else m.bias - mean * scale
        return x * scale.view(view) + shift.view(view)

    def collect(self, run_chunks) -> None:
        """Pass after pass, the statistics of the next layer in call order, until a forward completes."""
        while True:
            self.acc, stopped = None, False
            with torch.no_grad():
                for run in run_chunks():
                    try:
                        run()
                    except _Stop:
                        stopped = True
            if not stopped:
                return
            m, n, mean, m2 = self.acc
            self.stats[m], self.counts[m] = (mean, m2 / n), n
            self.order.append(m)

    def gradient(self, params: list, run_chunks) -> list:
        """d (mean loss) / d params with the whole set's statistics, summed over micro-batches."""
        dtype = params[0].dtype if params else torch.get_default_dtype()
        leaves = {m: tuple(t.detach().to(dtype).requires_grad_(True) for t in self.stats[m]) for m in self.order}
        self.stats = leaves
        flat_leaves = [t for m in self.order for t in leaves[m]]
        total, adj = [None] * len(params), [None] * len(flat_leaves)
        with torch.enable_grad():
            for run in run_chunks():
                self.calls = {}
                grads = torch.autograd.grad(run(), params + flat_leaves, allow_unused=True)
                if any(c > 1 for c in self.calls.values()):
                    raise _Shared()
                total = [_add(t, g) for t, g in zip(total, grads[: len(params)])]
                adj = [_add(t, g) for t, g in zip(adj, grads[len(params):])]
            # Reverse: w_k is final once every later layer has passed its share down.
            for k in reversed(range(len(self.order))):
                w = adj[2 * k : 2 * k + 2]
                if all(t is None for t in w):
                    continue
                self.target = self.order[k]
                self.weights = [torch.zeros_like(s) if t is None else t.to(s.dtype)
                                for s, t in zip(leaves[self.target], w)]
                earlier = flat_leaves[: 2 * k]
                for run in run_chunks():
                    try:
                        run()
                        raise RuntimeError("the forward did not reach the BatchNorm layer it did before")
                    except _Stop as stop:
                        grads = torch.autograd.grad(stop.value, params + earlier, allow_unused=True)
                    total = [_add(t, g) for t, g in zip(total, grads[: len(params)])]
                    adj[: 2 * k] = [_add(t, g) for t, g in zip(adj[: 2 * k], grads[len(params):])]
                self.target = None
        return total


class _Shared(Exception):
    """A BatchNorm module called more than once per forward."""


def micro_batch_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str,
                          batch_size: int) -> bool:
    """Write d (mean loss over all inputs) / d p into p.grad of the model's parameters (None where not
    reached), `batch_size` examples per forward; BatchNorm in training mode with the whole set's
    statistics (`_FullBatchNorm`). False (nothing written) where that cannot be done: a shared
    BatchNorm module, which the caller then runs in one batch."""
    n = len(inputs)
    params = [p for p in model.parameters() if p.requires_grad]

    def run_chunks():
        for start in range(0, n, batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            yield functools.partial(_chunk, x, y)

    def _chunk(x, y):
        return per_example_loss(model(x), y, loss).sum() / n

    norms = _FullBatchNorm(model)
    started = time.perf_counter()
    try:
        if norms.modules:
            norms.collect(run_chunks)
        grads = norms.gradient(params, run_chunks)
    except _Shared:
        return False
    finally:
        for m in norms.modules:
            del m.forward  # the class's forward again
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype)
    if norms.modules:
        log.info("update replay: %d examples in micro-batches of %d, BatchNorm statistics of the whole set "
                 "(%d layers, %d passes), %.1f s", n, batch_size, len(norms.order), 2 * len(norms.order) + 1,
                 time.perf_counter() - started)
    return True


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
                     lr: float | None = None, batch_size: int | None = DEFAULTS["batch_size"]) -> torch.Tensor:
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
    batch_size: at most this many inputs per forward (the schema's curvature.batch_size; None: all at
    once; see the module docstring).
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
    chunked = batch_size is not None and len(inputs) > batch_size
    if chunked and not micro_batch_gradients(clone, inputs, targets, loss=loss, batch_size=batch_size):
        log.info("update replay: a BatchNorm module is called more than once per forward; its batch statistics "
                 "need all %d examples in one batch (memory not bounded by batch_size %d)", len(inputs), batch_size)
        chunked = False
    if not chunked:
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
                      *, loss: str, step: int, wanted: bool,
                      batch_size: int | None = DEFAULTS["batch_size"]) -> torch.Tensor | None:
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
    started = time.perf_counter()
    update = optimizer_update(model, state["optimizer_state"], optim_config, inputs, targets, loss=loss, step=step,
                              lr=state["lr"], batch_size=batch_size)
    log.info("step %d: update replayed on %d examples (micro-batches of %s) in %.1f s", step, len(inputs),
             batch_size or len(inputs), time.perf_counter() - started)
    return update
