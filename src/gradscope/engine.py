"""The per-example engine: the probe that plans a capture, and the statistics of one chunk.

The method of gradscope.examples (its module docstring: what is exact, the cost model). A probe
on two examples (`Engine.make_plan`) runs the model under a capture (gradscope.grad_rules.capture)
at batch 1 and 2 to find each use's batch axis (`Batched`, `Broadcast` or not needed), and checks
that the gradient each parameter's rule rebuilds from the captured tensors equals autograd's;
those that do are "fast", the others go to the vmap(grad) fallback (gradscope.per_example_grads).
Each chunk (`Engine.chunk`) is then one forward and one backward to the captured outputs, the
rules' features turned into squared norms, dots with the mean gradient and the projection.

Pure computation, below the library's pipeline: a model and tensors in, tensors out.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from gradscope.grad_rules import Explicit, Stat, combine
from gradscope.grad_rules.capture import Batched, Broadcast, Capture, Mode
from gradscope.losses import per_example_loss
from gradscope.parameters import detached_params
from gradscope.per_example_grads import dense, loss_gradients
from gradscope.projection_map import Projection

log = logging.getLogger(__name__)

METHODS = ("auto", "vmap")  # the engine, or every parameter through the vmap(grad) fallback (the reference)


@contextmanager
def one_thread():
    """Run the probe's tiny operations on one intra-op thread: on a busy machine every
    multi-threaded kernel waits for its slowest thread, which costs far more than the work."""
    old = torch.get_num_threads()
    if old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def call_mode(use, s1: tuple | None) -> Mode:
    """Plan of one use from its input shapes at batch 1 (s1) and batch 2 (use.shape)."""
    s2 = use.shape
    if s1 is None or len(s1) != len(s2):
        return None
    diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
    if not diff:
        return Broadcast() if use.broadcastable else None
    if len(diff) == 1 and (s1[diff[0]], s2[diff[0]]) == (1, 2) and diff[0] in use.axes:
        return Batched(diff[0])
    return None


def check_method(method: str) -> None:
    """A ValueError naming the known methods unless `method` is one of them."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


class Engine:
    """The statistics of the parameters `names` of `model` (their projection maps `factors`, to proj_dim),
    chunk by chunk: `make_plan` probes the model on two examples, then `chunk` runs once per chunk."""

    def __init__(self, model: nn.Module, loss: str, names: list[str], factors: dict[str, Projection], proj_dim: int,
                 method: str = "auto"):
        check_method(method)
        self.model, self.loss, self.method = model, loss, method
        self.names = list(names)
        self.shapes = {name: p.shape for name, p in model.named_parameters()}
        self.factors = factors
        self.proj_dim = proj_dim
        # Detached copies; the included ones require grad: gradients flow to captured outputs, never to .grad.
        self.params = detached_params(model, grad_for=self.names)
        self.frozen = {name: p.detach() for name, p in model.named_parameters()}
        self.plan: list[Mode] | None = None  # per use of the probe
        self.fast: set[str] = set()
        self.fallback: list[str] = list(self.names)
        self.capture = None
        self.peak_bytes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.capture = None

    # -- probe ------------------------------------------------------------------------------
    def make_plan(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.method != "auto" or not self.names:
            return
        self.capture = Capture({id(self.params[n]): n for n in self.names})
        with one_thread():
            self._probe(x, y)
        self.fallback = [n for n in self.names if n not in self.fast]
        if self.fallback:
            log.info("per-example engine: vmap fallback for %s", ", ".join(self.fallback))

    def _forward(self, x, params, phase, **kw):
        cap = self.capture
        cap.start(phase, batch=len(x), **kw)
        try:
            with cap:
                out = functional_call(self.model, params, (x,))
            tampered = cap.tampered()
        finally:
            uses = cap.stop()
        return out, uses, tampered

    def _probe(self, x, y):
        """Find each use's batch axis, then check the rebuilt gradients on two examples against autograd."""
        x2, y2 = (x[:2], y[:2]) if len(x) >= 2 else (torch.cat([x, x]), torch.cat([y, y]))
        with torch.no_grad():
            _, uses1, _ = self._forward(x[:1], self.params, "probe")
        with torch.enable_grad():
            logits, uses, _ = self._forward(x2, self.params, "probe", safe=True)
        shapes1 = [u.shape for u in uses1]
        if len(shapes1) != len(uses):  # data-dependent calls: nothing is trusted
            return
        plan = [call_mode(u, s1) for u, s1 in zip(uses, shapes1)]
        bad = {n for u, m in zip(uses, plan) if m is None for n in u.names.values()}  # a use no plan captures
        if any(isinstance(m, Broadcast) for m in plan):
            with torch.enable_grad():
                expanded, uses, _ = self._forward(x2, self.params, "capture", plan=plan, safe=True)
            if expanded.shape == logits.shape and torch.allclose(expanded.detach(), logits.detach(), rtol=1e-5,
                                                                 atol=1e-6):
                logits = expanded
            else:  # the model does not broadcast that output as assumed: those parameters fall back
                bad |= {n for u, m in zip(uses, plan) if isinstance(m, Broadcast) for n in u.names.values()}
                plan = [None if isinstance(m, Broadcast) else m for m in plan]
                with torch.enable_grad():
                    logits, uses, _ = self._forward(x2, self.params, "capture", plan=plan, safe=True)
            uses = [u for u in uses if u is not None]
            plan_used = [m for m in plan if m is not None]
        else:
            plan_used = plan
        # Every included parameter: the gradient rebuilt from its uses == autograd's.
        with torch.enable_grad():
            value = per_example_loss(logits, y2, self.loss).sum()
            outs = [u.out for u in uses if u.out.requires_grad]
            got = torch.autograd.grad(value, outs + [self.params[n] for n in self.names], allow_unused=True)
        out_grads = dict(zip([id(u) for u in uses if u.out.requires_grad], got[: len(outs)]))
        ref = dict(zip(self.names, got[len(outs):]))
        feats = self._features(uses, [out_grads.get(id(u)) for u in uses], plan_used, len(x2))
        with torch.no_grad():
            checked, errors, bounds = [], [], []
            for name in self.names:
                if name in bad:
                    continue
                r = ref[name]
                r = torch.zeros_like(self.params[name]) if r is None else dense(r)
                f = feats.get(name)
                s = torch.zeros_like(r) if f is None else f.sum(r.shape)
                checked.append(name)
                errors.append(torch.linalg.vector_norm(s - r))
                bounds.append(1e-4 * torch.linalg.vector_norm(r) + 1e-8 * max(1, s.numel()) ** 0.5)
            agree = (torch.stack(errors) <= torch.stack(bounds)).tolist() if checked else []
        fast = {name for name, ok in zip(checked, agree) if ok}
        self.fast = fast
        # The capture plan: a use is needed when one of its parameters is fast.
        self.plan = [m if m is not None and any(n in fast for n in u.names.values()) else None
                     for u, m in zip(uses1, plan)] if len(uses1) == len(plan) else None

    def _features(self, uses, grads, modes, batch) -> dict:
        """Per parameter name: the combined feature of all its uses (None grads: output unused by the loss)."""
        per_name: dict[str, list] = {}
        for u, g, m in zip(uses, grads, modes):
            if g is None or m is None:
                continue
            for attr, f in u.features(u.inp, g, m.axis, batch, set(u.names)).items():
                per_name.setdefault(u.names[attr], []).append(f)
        return {n: combine(fs, self.shapes[n]) for n, fs in per_name.items()}

    # -- one chunk ----------------------------------------------------------------------------
    def _capture_pass(self, x, y, sums: bool):
        """Forward and backward to the captured outputs; with `sums`, also the batch-summed gradient of
        every fast parameter from the same backward (a plain backward's weight-gradient kernels)."""
        for safe in (False, True):  # redo with copies when the model overwrote a captured tensor
            try:
                with torch.enable_grad():
                    logits, uses, tampered = self._forward(x, self.params, "capture", plan=self.plan, safe=safe)
            except RuntimeError:
                if safe:
                    raise
                continue  # e.g. an in-place operation on a broadcast (expanded) output
            if not tampered:
                break
        live = [u for u in uses if u is not None]
        with torch.enable_grad():
            losses = per_example_loss(logits, y, self.loss)
            outs = [u for u in live if u.out.requires_grad]
            fast = sorted(self.fast) if sums else []
            got = torch.autograd.grad(losses.sum(), [u.out for u in outs] + [self.params[n] for n in fast],
                                      allow_unused=True) if outs else []
        by_id = dict(zip([id(u) for u in outs], got[: len(outs)]))
        totals = {n: dense(g) for n, g in zip(fast, got[len(outs):]) if g is not None}
        feats = self._features(live, [by_id.get(id(u)) for u in live], [u.mode for u in live], len(x))
        feats = {n: f for n, f in feats.items() if n in self.fast}
        return losses.detach(), logits.detach(), feats, totals

    def _plain(self, x, y):
        with torch.no_grad():
            logits = functional_call(self.model, self.frozen, (x,))
            return per_example_loss(logits, y, self.loss), logits, {}, {}

    def chunk(self, x, y, mean: dict | None, n_total: int, acc: torch.Tensor):
        """Statistics of one chunk; its projection is added into `acc` (len(x), k). With mean None,
        the mean gradient is that of this chunk: it is returned as (sums over the chunk, 1 / n_total),
        the scale applied to the dots only."""
        losses, logits, feats, totals = self._capture_pass(x, y, mean is None) if self.fast else self._plain(x, y)
        fb = {}
        if self.fallback:
            fb = loss_gradients(self.model, self.frozen, self.fallback, x, y, self.loss)
        with torch.no_grad():
            for name, g in fb.items():
                feats[name] = Explicit(dense(g))
            self.peak_bytes = max(self.peak_bytes, sum(f.nbytes() for f in feats.values()))
            scale = 1.0
            if mean is None:
                mean, scale = {}, 1.0 / n_total
                for name in self.names:
                    f = feats.get(name)
                    if name in totals:
                        mean[name] = totals[name]
                    else:
                        mean[name] = f.sum(self.shapes[name]) if f is not None else self.params[name].new_zeros(
                            self.shapes[name])
            stats: dict[str, Stat] = {}
            for name in self.names:
                f = feats.get(name)
                if f is None:  # unused by the loss: checked zero by the probe
                    z = self.params[name].new_zeros(len(x))
                    stats[name] = Stat(z, z)
                else:
                    stats[name] = f.stats(mean[name], self.factors[name], acc)
            if scale != 1.0:
                for st in stats.values():
                    st.dot = st.dot * scale
        return losses, logits, stats, mean, scale
