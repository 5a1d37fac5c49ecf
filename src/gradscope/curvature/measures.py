"""Every measure of one `curvature` config section at once: what the workflow's curvature job
stores for a checkpoint (`gradscope.pipeline.write_curvature` writes it as a table row).

Memory: every forward and backward sees at most `batch_size` examples (the setting; the operators
sum their products over micro-batches, see `gradscope.operators`; the per-example measures, Fisher,
Gauss-Newton and input sensitivity, at most min(batch_size, 256), a parameter vector per example).
Each measure logs one line with its time."""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import nn

from gradscope import config
from gradscope.curvature._common import measured, per_example_chunk
from gradscope.curvature.hessian import LAYER_ITERS, flat_update, layer_top, rayleigh
from gradscope.curvature.hutchinson import MIN_SAMPLES, hutchinson_trace
from gradscope.curvature.lanczos import lanczos_top
from gradscope.curvature.sensitivity import input_sensitivity
from gradscope.curvature.slq import slq_density
from gradscope.curvature.traces import fisher_trace, gauss_newton_trace
from gradscope.operators import GGNOperator, HessianOperator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _timed(what: str, n: int, batch_size: int):
    started = time.perf_counter()
    yield
    log.info("curvature: %s on %d examples (micro-batches of %d) in %.2f s", what, n, batch_size,
             time.perf_counter() - started)


def _hessian_measures(hessian: HessianOperator, s: dict, *, warm, return_eigenvectors: bool) -> dict:
    """Top-k eigenvalues (certified Lanczos stop, warm start) and the Hutchinson trace of the Hessian."""
    top = lanczos_top(hessian, k=s["top_k"], iters=s["lanczos_iters"], tol=s["lanczos_tol"] or None, seed=s["seed"],
                      warm=warm, return_eigenvectors=return_eigenvectors)
    tr = hutchinson_trace(hessian, tol=s["trace_tol"], min_samples=min(MIN_SAMPLES, s["trace_max_samples"]),
                          max_samples=s["trace_max_samples"], seed=s["seed"])
    values = [float(v) for v in top.eigenvalues]
    out = {"top_eigenvalues": values, "sharpness": values[0], "lanczos_steps": top.steps,
           "lanczos_residual": top.residual, "hessian_trace": tr["trace"], "hessian_trace_stderr": tr["stderr"],
           "hutchinson_samples": tr["n_samples"]}
    if return_eigenvectors:
        out["eigenvectors"] = top.eigenvectors
    return out


def _ggn_measures(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, s: dict, *, loss: str) -> dict:
    """The GGN's top-k eigenvalues (certified Lanczos stop, random start) and, with s["density"],
    its spectral density; ggn_mvp_count counts its matrix-vector products."""
    ggn = GGNOperator(model, inputs, targets, loss=loss, batch_size=s["batch_size"])
    top = lanczos_top(ggn, k=s["top_k"], iters=s["lanczos_iters"], tol=s["lanczos_tol"] or None, seed=s["seed"])
    out = {"ggn_top_eigenvalues": [float(v) for v in top.eigenvalues], "ggn_top_eigenvalue": float(top.eigenvalues[0]),
           "ggn_lanczos_steps": top.steps}
    if s["density"]:
        dens = slq_density(ggn, iters=s["density_iters"], seed=s["seed"])
        out["ggn_density_grid"], out["ggn_density"] = dens["grid"].tolist(), dens["density"].tolist()
    out["ggn_mvp_count"] = ggn.matvecs
    return out


@measured
def compute_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, settings: dict | None = None, *,
                      loss: str = "cross_entropy", warm=None, update=None, return_eigenvectors: bool = False,
                      eval: bool = False) -> dict:
    """The measures of one `curvature` config section (filled from the schema's defaults and
    validated by `gradscope.config.section`) on these examples; the keys of the measures that
    ran, nothing for the others.

    Always: top_eigenvalues (top_k, largest first, Lanczos stopped by `converged(top_k,
    lanczos_tol)` or after lanczos_iters steps, from `warm` vectors if given), sharpness,
    lanczos_steps, lanczos_residual (the largest relative Ritz residual of the k: each is within
    that fraction of an eigenvalue, whether or not the tolerance was met), hessian_trace,
    hessian_trace_stderr, hutchinson_samples, hvp_count (Hessian-vector products of every kind,
    full or one-block), n_examples, n_params (the trainable parameters, the operators'
    coordinates), wall_s. With the settings: fisher -> fisher_trace; gauss_newton_samples > 0 ->
    gauss_newton_trace, gauss_newton_stderr; input_sensitivity -> input_jacobian_norm,
    input_hessian_trace (NaN for token inputs); density -> density_grid, density (lists; SLQ with
    density_iters HVPs); per_layer -> layer_sharpness ({parameter name: top block eigenvalue});
    ggn -> ggn_top_eigenvalues, ggn_top_eigenvalue, ggn_lanczos_steps, ggn_mvp_count (GGN-vector
    products), and with density ggn_density_grid, ggn_density. `update` (a flat update vector,
    see `gradscope.curvature.replay.optimizer_update`) -> update_sharpness. return_eigenvectors
    adds eigenvectors, the top-k unit Ritz vectors (k, n_params) float64 in the order of
    top_eigenvalues. The model runs in eval mode throughout (eval: see `gradscope.curvature`).
    batch_size: the most examples per forward (see the module docstring).
    """
    s = config.section("curvature", settings)
    start = time.perf_counter()
    n, b = int(inputs.shape[0]), s["batch_size"]
    with _timed("Hessian top eigenvalues and trace", n, b):
        hessian = HessianOperator(model, inputs, targets, loss=loss, batch_size=b)
        out = _hessian_measures(hessian, s, warm=warm, return_eigenvectors=return_eigenvectors)
    if s["fisher"]:
        with _timed("empirical Fisher trace", n, per_example_chunk(b)):
            out["fisher_trace"] = fisher_trace(model, inputs, targets, loss=loss, batch_size=b)
    if s["gauss_newton_samples"]:
        with _timed("Gauss-Newton trace", n, per_example_chunk(b)):
            gn = gauss_newton_trace(model, inputs, targets, loss=loss, samples=s["gauss_newton_samples"],
                                    seed=s["seed"], batch_size=b)
        out["gauss_newton_trace"], out["gauss_newton_stderr"] = gn["trace"], gn["stderr"]
    if s["input_sensitivity"]:
        with _timed("input sensitivity", n, per_example_chunk(b)):
            sens = input_sensitivity(model, inputs, targets, loss=loss, seed=s["seed"], batch_size=b)
        out["input_jacobian_norm"] = sens["input_jacobian_norm"]
        out["input_hessian_trace"] = sens["input_hessian_trace"]
    if update is not None:
        with _timed("update sharpness", n, b):
            out["update_sharpness"] = rayleigh(hessian, flat_update(model, update))
    if s["density"]:
        with _timed("Hessian spectral density", n, b):
            dens = slq_density(hessian, iters=s["density_iters"], seed=s["seed"])
        out["density_grid"], out["density"] = dens["grid"].tolist(), dens["density"].tolist()
    block_products = 0
    if s["per_layer"]:
        with _timed("per-layer sharpness", n, b):
            out["layer_sharpness"], block_products = layer_top(hessian, iters=LAYER_ITERS, seed=s["seed"])
    if s["ggn"]:
        with _timed("GGN top eigenvalues" + (" and density" if s["density"] else ""), n, b):
            out |= _ggn_measures(model, inputs, targets, s, loss=loss)
    out["hvp_count"] = hessian.matvecs + block_products
    out |= {"n_examples": n, "n_params": hessian.n, "wall_s": time.perf_counter() - start}
    return out
