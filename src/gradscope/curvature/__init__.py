"""Curvature of the training loss, as curvlinops (f-dangel/curvlinops) organizes it: the matrices are
the operators of `gradscope.operators` (Hessian, generalized Gauss-Newton, empirical and true
Fisher), and each algorithm is one module taking any operator, with the schema's defaults
(`curvature` block):

- `gradscope.curvature.lanczos`: top eigenvalues (`lanczos_top`), certified stop, warm starts;
- `gradscope.curvature.slq`: spectral density by stochastic Lanczos quadrature (`slq_density`);
- `gradscope.curvature.hutchinson`: trace by Hutchinson's estimator (`hutchinson_trace`).

On a model: `gradscope.curvature.hessian` (the Hessian's top eigenvalues, per-layer sharpness,
trace, density and update sharpness), `gradscope.curvature.traces` (empirical Fisher and
Gauss-Newton traces from per-example gradients), `gradscope.curvature.sensitivity` (sensitivity
to the input), `gradscope.curvature.replay` (the optimizer's update at a checkpoint, replayed)
and `gradscope.curvature.measures` (`compute_curvature`: one config section's measures at once,
the curvature job's row). The algorithms and measures are importable from here.

Every Hessian here is that of the MEAN loss over the given examples w.r.t. the trainable
parameters (requires_grad=True; frozen ones are constants and cost nothing), flattened in
`model.named_parameters()` order, reached through Hessian-vector products (HVPs); the Hessian
itself is never formed. Vectors of parameter length (eigenvectors, updates, `n_params`) count
trainable parameters only. All functions are pure computation: the model is never mutated (no
`.grad` is written, requires_grad is untouched, buffers are never written).

Curvature is defined on the model in eval mode (BatchNorm on its running statistics, no
dropout): every measure goes through `gradscope.modes.eval_mode`, so a model with such layers
left in training mode is an error naming them (in training mode BatchNorm would couple the
examples and overwrite its running statistics), unless the call passes eval=True, which switches
to eval mode for the call and restores the flags after. The forward passes run under
`sdpa_kernel(SDPBackend.MATH)`: PyTorch's fused attention kernels (the CPU flash kernel among
them) have no double backward, so HVPs through nn.MultiheadAttention / nn.TransformerEncoder
need the plain-math attention (`gradscope.operators.measuring`).

Memory: every measure takes `batch_size` (the schema's curvature.batch_size) and no forward or
backward sees more examples than that: the operators sum their products over micro-batches (the
graph recorded once where the examples fit one), the per-example measures take chunks of it, and
the update replay sums its full-training-set gradient over micro-batches (BatchNorm in training
mode: with the whole set's statistics, see `gradscope.curvature.replay`). The results are those of
one batch to float rounding; `compute_curvature` logs one line per measure with its time.
"""

from gradscope.curvature.hessian import (LAYER_ITERS, hessian_trace, layer_top_eigenvalues, spectral_density,
                                         top_eigenvalues, update_sharpness)
from gradscope.curvature.hutchinson import hutchinson_trace
from gradscope.curvature.lanczos import (TopEigen, converged, lanczos_top, lanczos_tridiagonal, ritz_residuals,
                                         start_vector, tridiagonal)
from gradscope.curvature.measures import compute_curvature
from gradscope.curvature.replay import optimizer_update
from gradscope.curvature.sensitivity import input_sensitivity
from gradscope.curvature.slq import slq_density, smoothed_density
from gradscope.curvature.traces import fisher_trace, gauss_newton_trace

__all__ = [
    "LAYER_ITERS", "TopEigen", "compute_curvature", "converged", "fisher_trace", "gauss_newton_trace", "hessian_trace",
    "hutchinson_trace", "input_sensitivity", "lanczos_top", "lanczos_tridiagonal", "layer_top_eigenvalues",
    "optimizer_update", "ritz_residuals", "slq_density", "smoothed_density", "spectral_density", "start_vector",
    "top_eigenvalues", "tridiagonal", "update_sharpness",
]
