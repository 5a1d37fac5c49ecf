"""Sensitivity of the model to its input: the input-Jacobian norm of Novak et al. 2018,
"Sensitivity and generalization in neural networks", and the trace of the loss Hessian w.r.t.
the input (exact for small inputs, else Hutchinson per example). eval: see `gradscope.curvature`."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradscope.curvature._common import DEFAULTS, as_model_input, measured, per_example_chunk
from gradscope.losses import per_example_loss
from gradscope.parameters import detached_params


def _input_jacobian_sq_norms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d f(x_i) / d x_i|_F^2 per example, float64 (b,): row c of every Jacobian in one backward pass."""
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for c in range(logits.shape[1]):
        (row,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)
        out += row.reshape(len(x), -1).double().pow(2).sum(1)
    return out


def _input_hessian_traces(gx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """tr(d^2 loss_i / d x_i^2) per example, float64 (b,), from gx = d(sum_i loss_i)/dx (b, dim):
    the HVP with the basis vector e_j (for all examples at once) has entry j = H_i[j, j]."""
    out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    if gx.requires_grad:  # else the loss is linear in x: zero Hessian
        for j in range(gx.shape[1]):
            (hj,) = torch.autograd.grad(gx[:, j].sum(), x, retain_graph=True)
            out += hj.reshape(len(x), -1)[:, j].double()
    return out


def _input_hessian_probes(gx: torch.Tensor, x: torch.Tensor, probes: int, gen: torch.Generator) -> torch.Tensor:
    """z_ik^T H_i z_ik for Rademacher z_ik, float64 (probes, b): Hutchinson's samples per example."""
    out = torch.zeros(probes, len(x), dtype=torch.float64)
    for k in range(probes):
        z = (torch.randint(0, 2, gx.shape, generator=gen) * 2 - 1).to(gx)  # drawn even if unused: same stream
        if gx.requires_grad:
            (hz,) = torch.autograd.grad(gx, x, grad_outputs=z, retain_graph=True)
            out[k] = (z * hz.reshape(len(x), -1)).double().sum(1).cpu()
    return out


@measured
def input_sensitivity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                      probes: int = 32, seed: int = 0, exact_max_dim: int = 256,
                      batch_size: int = DEFAULTS["batch_size"],
                      eval: bool = False) -> dict:
    """Sensitivity to the input, averaged over examples: dict(input_jacobian_norm, input_hessian_trace,
    input_hessian_trace_stderr).

    - input_jacobian_norm: mean_i |d f(x_i) / d x_i|_F, the Frobenius norm of the logits'
      Jacobian w.r.t. the example's own input (one backward pass per class).
    - input_hessian_trace: mean_i tr(d^2 loss_i / d x_i^2). Exact when the input has at most
      `exact_max_dim` entries (one input HVP per basis vector e_j, reading off entry j; stderr 0),
      else Hutchinson with `probes` Rademacher probes per example (stderr over the probes).

    Each example's outputs must depend on its own input only (true in eval mode, which the
    measure requires: see `gradscope.curvature`): the passes run on a whole chunk of examples at
    once. Defined for float (dense) inputs only: for integer token ids the input is discrete, and
    every value is NaN.
    """
    if not inputs.is_floating_point():
        return {"input_jacobian_norm": math.nan, "input_hessian_trace": math.nan,
                "input_hessian_trace_stderr": math.nan}
    n, dim = len(inputs), int(np.prod(inputs.shape[1:]))
    exact = dim <= exact_max_dim
    if not exact and probes < 2:
        raise ValueError(f"probes must be >= 2 for Hutchinson, got {probes}")
    params = detached_params(model)
    gen = torch.Generator().manual_seed(seed)
    jac_norms, traces, probe_sums = [], [], torch.zeros(probes, dtype=torch.float64)
    chunk = per_example_chunk(batch_size)  # a Jacobian row and input HVPs per example: at most 256 at once
    for start in range(0, n, chunk):
        x = as_model_input(model, inputs[start : start + chunk]).detach().requires_grad_(True)
        y = targets[start : start + chunk].to(x.device)
        with torch.enable_grad():
            logits = functional_call(model, params, (x,))  # (b, classes)
            jac_norms.append(_input_jacobian_sq_norms(logits, x).sqrt().cpu())
            (gx,) = torch.autograd.grad(per_example_loss(logits, y, loss).sum(), x, create_graph=True)
            gx = gx.reshape(len(x), -1)  # (b, dim)
            if exact:
                traces.append(_input_hessian_traces(gx, x).cpu())
            else:
                quad = _input_hessian_probes(gx, x, probes, gen)  # (probes, b)
                probe_sums += quad.sum(1)
                traces.append(quad.mean(0))
    # Probes are independent: the spread of the per-probe means over all examples gives the stderr.
    stderr = 0.0 if exact else float((probe_sums / n).std() / math.sqrt(probes))
    return {"input_jacobian_norm": float(torch.cat(jac_norms).mean()),
            "input_hessian_trace": float(torch.cat(traces).mean()), "input_hessian_trace_stderr": stderr}
