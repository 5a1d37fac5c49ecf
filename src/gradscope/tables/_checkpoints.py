"""The tables measured at each checkpoint: per-example statistics (`examples`) and the curvature.

Both live in Hive partitions (`.../step=<step>/part-0.parquet`): the step is in the path, not in
the file, so pandas, pyarrow and DuckDB all read a folder of them as one table.
"""

from __future__ import annotations

import pyarrow as pa

from gradscope.tables._registry import RUN_PATHS, described


def projection_type(proj_dim: int, dtype: str = "float32") -> pa.DataType:
    """Fixed-size list type of a gradient projection column."""
    return pa.list_(pa.float16() if dtype == "float16" else pa.float32(), proj_dim)


EXAMPLES = {
    "split": pa.string(),
    "example_id": pa.int64(),
    "label": pa.int64(),
    "loss": pa.float64(),
    "pred": pa.int64(),
    "margin": pa.float64(),
    "p_true": pa.float64(),
    "el2n": pa.float64(),
    "correct": pa.bool_(),
    "grad_norm": pa.float64(),
    "grad_dot_mean": pa.float64(),
    "grad_cos_mean": pa.float64(),
    "planted": pa.bool_(),
}
# Its columns whose type is fixed per run (`examples_columns` fills them in), as type patterns.
EXAMPLES_PER_RUN = {
    "grad_proj": "fixed_size_list<float or halffloat>[{proj_dim}]",
    "layer_grad_norm": "fixed_size_list<float>[{n_layers}]",
}


def examples_columns(proj_dim: int, proj_dtype: str, n_layers: int | None = None) -> dict:
    """Columns of a per-example table; with n_layers, also the per-layer gradient norms (names in the metadata)."""
    columns = {**EXAMPLES, "grad_proj": projection_type(proj_dim, proj_dtype)}
    if n_layers is not None:
        columns["layer_grad_norm"] = projection_type(n_layers, "float32")
    return columns


CURVATURE = {
    "sharpness": pa.float64(),
    "top_eigenvalues": pa.list_(pa.float64()),
    "lanczos_steps": pa.int64(),
    "lanczos_residual": pa.float64(),
    "hessian_trace": pa.float64(),
    "hessian_trace_stderr": pa.float64(),
    "hutchinson_samples": pa.int64(),
    "hvp_count": pa.int64(),
    "fisher_trace": pa.float64(),
    "gauss_newton_trace": pa.float64(),
    "gauss_newton_stderr": pa.float64(),
    "input_jacobian_norm": pa.float64(),
    "input_hessian_trace": pa.float64(),
    "update_sharpness": pa.float64(),
    "density_grid": pa.list_(pa.float64()),
    "density": pa.list_(pa.float64()),
    "layer_sharpness": pa.map_(pa.string(), pa.float64()),
    "ggn_top_eigenvalue": pa.float64(),
    "ggn_top_eigenvalues": pa.list_(pa.float64()),
    "ggn_lanczos_steps": pa.int64(),
    "ggn_mvp_count": pa.int64(),
    "ggn_density_grid": pa.list_(pa.float64()),
    "ggn_density": pa.list_(pa.float64()),
    "lr": pa.float64(),
    "sharpness_threshold": pa.float64(),
    "n_examples": pa.int64(),
    "n_params": pa.int64(),
    "wall_s": pa.float64(),
}
# What a curvature row holds for a measure that did not run (gradscope.curvature.compute_curvature
# returns only the measures that ran): NaN, an empty list or map, a count of 0.
CURVATURE_ABSENT = {name: ([] if isinstance(t, pa.ListType) else {} if isinstance(t, pa.MapType)
                           else 0 if pa.types.is_integer(t) else float("nan")) for name, t in CURVATURE.items()}

# This module's registry entries, in the registry's order.
ENTRIES = (
    described("examples", RUN_PATHS["examples"], "Per-example statistics of both splits at one checkpoint. One row per "
              "example; the checkpoint's step is in the folder name (Hive partition `step=<n>`), not in the file. "
              "Measured in eval mode; cosines against the mean *training* gradient.",
              {**EXAMPLES, **EXAMPLES_PER_RUN}, {
        "split": "train or test.",
        "example_id": "The example's id in its split.",
        "label": "The label trained on (after any planted flip).",
        "loss": "The example's loss (the run's loss function).",
        "pred": "The predicted class (largest logit).",
        "margin": "True logit − largest other.",
        "p_true": "Softmax probability of the true label.",
        "el2n": "Norm of softmax − one-hot (EL2N).",
        "correct": "Whether pred is the label.",
        "grad_norm": "Norm of the example's loss gradient.",
        "grad_dot_mean": "Inner product of the example's gradient with the mean training gradient.",
        "grad_cos_mean": "Cosine between the example's gradient and the mean training gradient.",
        "planted": "Whether the example is planted ground truth (the dataset's planted flag).",
        "grad_proj": "The example's gradient projected to `examples.proj_dim` dimensions (`examples.projection`; "
                     "fixed-size list, float32 or float16 as `examples.proj_dtype`).",
        "layer_grad_norm": "Fixed-size list: the norm of the example's gradient per parameter tensor, names in the "
                           "file's `gradscope.config` metadata, `layer_names`.",
    }),
    described("curvature", RUN_PATHS["curvature"], "Curvature of the training loss at one checkpoint. One row; the "
              "checkpoint's step is in the folder name (Hive partition `step=<n>`). Measured in eval mode on a "
              "fixed, seeded subset of the training set (the same at every step), whose example ids are in the file "
              "metadata (`subset_ids`). A measure that did not run reads NaN, an empty list or map, or a count of 0.",
              CURVATURE, {
        "sharpness": "The Hessian's largest eigenvalue (Lanczos).",
        "top_eigenvalues": "The top-k Hessian eigenvalues (list, largest first).",
        "lanczos_steps": "Lanczos steps run.",
        "lanczos_residual": "The largest relative Ritz residual of the top-k: each value is within that fraction of "
                            "an eigenvalue.",
        "hessian_trace": "The Hessian's trace (Hutchinson estimate).",
        "hessian_trace_stderr": "Standard error of hessian_trace.",
        "hutchinson_samples": "Probe vectors of the Hutchinson estimate.",
        "hvp_count": "Hessian-vector products, block ones included.",
        "fisher_trace": "Trace of the empirical Fisher (NaN unless `fisher`).",
        "gauss_newton_trace": "Trace of the generalized Gauss-Newton matrix, with labels sampled from the model "
                              "(NaN unless `gauss_newton_samples`).",
        "gauss_newton_stderr": "Standard error of gauss_newton_trace.",
        "input_jacobian_norm": "Mean Frobenius norm of the logits' Jacobian with respect to the input (NaN unless "
                               "`input_sensitivity`, and for token inputs).",
        "input_hessian_trace": "Mean trace of the loss Hessian with respect to the input (NaN unless "
                               "`input_sensitivity`, and for token inputs).",
        "update_sharpness": "u'Hu / |u|² along the optimizer's next update u (NaN when off or undefined).",
        "density_grid": "Grid of the Hessian's spectral density (list, empty unless `density`).",
        "density": "The spectral density on density_grid (list, empty unless `density`).",
        "layer_sharpness": "Map: each parameter tensor's top Hessian-block eigenvalue (empty unless `per_layer`).",
        "ggn_top_eigenvalue": "The generalized Gauss-Newton's largest eigenvalue (NaN unless `ggn`).",
        "ggn_top_eigenvalues": "Its top-k eigenvalues (list, empty unless `ggn`).",
        "ggn_lanczos_steps": "Lanczos steps on the generalized Gauss-Newton (0 unless `ggn`).",
        "ggn_mvp_count": "GGN-vector products (0 unless `ggn`; hvp_count counts the Hessian's).",
        "ggn_density_grid": "Grid of the generalized Gauss-Newton's spectral density (empty unless `ggn` and "
                            "`density`).",
        "ggn_density": "Its spectral density (empty unless `ggn` and `density`).",
        "lr": "The run's learning rate (`optim.lr`).",
        "sharpness_threshold": "The stability threshold: 2/lr, 2(1 + momentum)/lr for SGD with momentum; null under "
                               "an adaptive optimizer, where it does not apply (report.edge_assessed).",
        "n_examples": "Examples in the subset.",
        "n_params": "Trainable parameters (the Hessian's size).",
        "wall_s": "Seconds the measures took.",
    }),
)
