"""Traces of the empirical Fisher and the generalized Gauss-Newton (Schraudolph 2002; Martens 2020,
"New insights and perspectives on the natural gradient method"; Kunstner et al. 2019,
"Limitations of the empirical Fisher approximation"), from per-example gradients: exact for the
empirical Fisher, Monte Carlo with labels sampled from the model for the GGN, as K-FAC does
(Martens & Grosse 2015). The matrices themselves are `gradscope.operators.EFOperator`,
`GGNOperator` and `FisherOperator`; a trace from them would be a Hutchinson estimate, where
per-example gradients give the empirical Fisher's exactly.

Per-example gradients of a loss at labels come from `gradscope.examples.per_example_gradients`
(torch.func vmap(grad), the per-example engine's exact reference), one chunk at a time. The
Gauss-Newton trace for mse needs J_i^T c_i for a random cotangent c_i, the gradient of
<f(x_i), c_i>, which is no loss's gradient at a label: that one comes from the same vmap(grad)
helper, `gradscope.per_example_grads.vmap_grad`, applied to <f(x_i), c_i>.
eval: see `gradscope.curvature`. batch_size: at most min(batch_size, 256) examples per pass
(`_common.per_example_chunk`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradscope.curvature._common import DEFAULTS, as_model_input, measured, per_example_chunk
from gradscope.examples import per_example_gradients
from gradscope.parameters import detached_params, trainable_parameters
from gradscope.per_example_grads import vmap_grad


def _sq_grad_norms(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss: str,
                   batch_size: int) -> np.ndarray:
    """|g_i|^2, g_i the gradient of example i's loss at `labels` w.r.t. the trainable parameters,
    float64 (n,), `batch_size` examples at a time (summed tensor by tensor, in named_parameters order)."""
    numels = [p.numel() for _, p in trainable_parameters(model)]
    parts = []
    for i in range(0, len(inputs), batch_size):
        x = as_model_input(model, inputs[i : i + batch_size])
        g = per_example_gradients(model, x, labels[i : i + batch_size].to(x.device), loss=loss, batch_size=len(x))
        parts.append(sum(t.double().pow(2).sum(1) for t in g.split(numels, dim=1)))
    return torch.cat(parts).cpu().numpy()


@measured
def fisher_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                 batch_size: int = DEFAULTS["batch_size"], eval: bool = False) -> float:
    """Trace of the empirical Fisher F = (1/n) sum_i g_i g_i^T, g_i the gradient of example i's loss
    at its true label: tr F = mean_i |g_i|^2, exact, from per-example gradients; the matrix itself
    is `gradscope.operators.EFOperator`."""
    return float(_sq_grad_norms(model, inputs, targets, loss, per_example_chunk(batch_size)).mean())


@torch.no_grad()
def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    params = detached_params(model)
    return torch.cat([functional_call(model, params, (as_model_input(model, inputs[i : i + batch_size]),))
                      for i in range(0, len(inputs), batch_size)])  # (n, classes)


def _vjp_sq_norms(model: nn.Module, inputs: torch.Tensor, cotangents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """|J_i^T c_i|^2 for every example i, J_i = d f(x_i) / d theta (classes, n_params), theta the
    trainable parameters: float64 (n,).

    J_i^T c_i is the gradient of <f(x_i), c_i> with c_i held fixed: per-example gradients by
    vmap(grad) (see the module docstring for why not `per_example_gradients`).
    """
    params = detached_params(model, trainable=True)

    def out_dot(params, xi, ci):
        return (functional_call(model, params, (xi.unsqueeze(0),))[0] * ci).sum()

    parts = []
    for i in range(0, len(inputs), batch_size):
        x = as_model_input(model, inputs[i : i + batch_size])
        g = vmap_grad(out_dot, params, x, cotangents[i : i + batch_size].to(device=x.device),
                      what="<f(x_i), c_i> (the Gauss-Newton trace)")
        parts.append(sum(t.reshape(len(x), -1).double().pow(2).sum(1) for t in g.values()))
    return torch.cat(parts).cpu()


@measured
def gauss_newton_trace(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None = None, *,
                       loss: str = "cross_entropy", samples: int = 1, seed: int = 0, exact: bool = False,
                       batch_size: int = DEFAULTS["batch_size"], eval: bool = False) -> dict:
    """Trace of the generalized Gauss-Newton G = (1/n) sum_i J_i^T H_i J_i: dict(trace, stderr, samples).

    J_i = d f(x_i)/d theta is the Jacobian of the logits, H_i the Hessian of the loss w.r.t. them:
    diag(p_i) - p_i p_i^T for cross-entropy (p_i = softmax(f(x_i))), the identity for mse, so
    G needs no labels (`targets` is accepted for a uniform signature and ignored).

    Monte Carlo (default): for cross-entropy, labels y ~ p_i sampled from the model; the gradient
    of the loss at y is J_i^T (p_i - e_y) and E_y[(p - e_y)(p - e_y)^T] = diag(p) - p p^T, so the
    mean squared per-example gradient norm is unbiased for tr G: the "true" Fisher, unlike the
    empirical one at the data's labels (the matrices themselves: `gradscope.operators.GGNOperator`
    and `FisherOperator`). For mse, outputs t = f(x_i) + eps, eps ~ N(0, I), give gradients
    J_i^T (f - t) = -J_i^T eps with E|J_i^T eps|^2 = |J_i|_F^2 = tr(J_i^T J_i); t is not a class
    label, so these per-example gradients come from vmap(grad) of <f, eps>. `samples` draws per
    example, all in one pass over the inputs repeated `samples` times. stderr is the stratified
    one, sqrt(sum_i s_i^2 / (n^2 samples)) with s_i^2 example i's sample variance over its draws;
    with samples = 1 it is the conservative std over examples / sqrt(n) (between-example spread
    counted as noise).

    exact=True: the deterministic form, sum_c p_ic |J_i^T (p_i - e_c)|^2 (cross-entropy: the
    loss gradient at every label c, weighted by p) or sum_c |J_i^T e_c|^2 = |J_i|_F^2 (mse), over
    all classes: `classes` per-example gradients per example; stderr 0 and samples 0.
    J_i is taken w.r.t. the trainable parameters.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"gauss_newton_trace supports cross_entropy and mse, got {loss!r}")
    if not exact and samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    batch_size = per_example_chunk(batch_size)
    logits = _logits(model, inputs, batch_size)
    n, classes = logits.shape
    probs = logits.double().softmax(dim=1).cpu()  # (n, classes)
    draws = classes if exact else samples
    repeated = inputs.repeat(draws, *[1] * (inputs.dim() - 1))  # one pass for all draws, draw-major
    gen = torch.Generator().manual_seed(seed)
    if loss == "cross_entropy":
        if exact:
            labels = torch.arange(classes).repeat_interleave(n)  # every class for every example
        else:
            labels = torch.multinomial(probs, samples, replacement=True, generator=gen).T.reshape(-1)
        a = _sq_grad_norms(model, repeated, labels.to(inputs.device), loss, batch_size)
    else:
        if exact:
            cot = torch.eye(classes, dtype=torch.float64).repeat_interleave(n, dim=0)  # e_c for every example
        else:
            cot = torch.randn(samples * n, classes, generator=gen, dtype=torch.float64)
        a = _vjp_sq_norms(model, repeated, cot.to(logits.dtype), batch_size).numpy()
    a = a.reshape(draws, n)
    if exact:
        weights = probs.T.numpy() if loss == "cross_entropy" else np.ones_like(a)  # (classes, n)
        return {"trace": float((weights * a).sum(0).mean()), "stderr": 0.0, "samples": 0}
    if samples >= 2:
        stderr = math.sqrt(a.var(axis=0, ddof=1).sum() / (n * n * samples))
    else:
        stderr = float(a[0].std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return {"trace": float(a.mean()), "stderr": stderr, "samples": samples}
