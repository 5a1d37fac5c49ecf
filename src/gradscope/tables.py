"""What every Parquet table gradscope writes holds: each column's name, type and meaning, defined once.

The type dicts (`METRICS`, `EXAMPLES`, `CURVATURE`, ...) give a table's columns in file order with
their Arrow types; a column whose type is fixed per run (a projection's length) has its type
pattern instead, a string such as "fixed_size_list<float>[{n_layers}]". `TABLES` joins each
type dict with the table's path (from `gradscope.layout`), what a row is, and what each column
means. The meanings reach the files (`artifacts.write_parquet` puts each one in its field's
metadata, key b"description"), `gradscope schema [TABLE]` and the documentation (`tables_markdown`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from gradscope import layout

DESCRIPTION = b"description"  # the field-metadata key of a column's meaning


def projection_type(proj_dim: int, dtype: str = "float32") -> pa.DataType:
    """Fixed-size list type of a gradient projection column."""
    return pa.list_(pa.float16() if dtype == "float16" else pa.float32(), proj_dim)


# ---- table schemas (name -> type), in file order ---------------------------------------
METRICS = {
    "step": pa.int64(),
    "lr": pa.float64(),
    "train_loss": pa.float64(),
    "train_acc": pa.float64(),
    "test_loss": pa.float64(),
    "test_acc": pa.float64(),
    "grad_norm": pa.float64(),
    "clipped": pa.bool_(),
    "clipped_fraction": pa.float64(),
    "weight_norm": pa.float64(),
    "wall_s": pa.float64(),
}

# One row per (logged step, parameter tensor): see gradscope.dynamics.
DYNAMICS = {
    "step": pa.int64(),
    "layer": pa.string(),
    **{name: pa.float64() for name in ("weight_norm", "grad_norm", "grad_norm_top5", "grad_norm_mid90",
                                       "grad_norm_bottom5", "adam_eff_lr_median", "adam_snr_median",
                                       "update_to_decay_ratio")},
}

# Per-checkpoint tables live in Hive partitions (`.../step=<step>/part-0.parquet`): the step is
# in the path, not in the file, so pandas, pyarrow and DuckDB all read a folder of them as one table.
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


DETECTIONS = {
    "step": pa.int64(),
    "example_id": pa.int64(),
    "detector": pa.string(),
    "score": pa.float64(),
    "flagged": pa.bool_(),
}

# A detector's quality against planted truth: per checkpoint (EVALUATION), per run (SWEEP_DETECTORS).
_QUALITY = {
    "n_flagged": pa.int64(),
    "auroc": pa.float64(),
    "average_precision": pa.float64(),
    "precision_at_k": pa.float64(),
    "recall_at_k": pa.float64(),
    "precision": pa.float64(),
    "recall": pa.float64(),
}

EVALUATION = {"detector": pa.string(), "step": pa.int64(), **_QUALITY}

GROUPS = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group": pa.int64(),
    "example_id": pa.int64(),
    "delta_loss": pa.float64(),
}

GROUP_PAIRS = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group_a": pa.int64(),
    "group_b": pa.int64(),
    "size_a": pa.int64(),
    "size_b": pa.int64(),
    "mean_delta_a": pa.float64(),
    "mean_delta_b": pa.float64(),
    "cosine": pa.float64(),
    "opposing": pa.bool_(),
}

GROUP_LOSSES = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "group": pa.int64(),
    "step": pa.int64(),
    "mean_loss": pa.float64(),
}

LOSS_CHANGES = {
    "step_from": pa.int64(),
    "step_to": pa.int64(),
    "example_id": pa.int64(),
    "delta_loss": pa.float64(),
}

PER_EXAMPLE = {
    "example_id": pa.int64(),
    "confidence": pa.float64(),
    "variability": pa.float64(),
    "correctness": pa.float64(),
    "forgetting_events": pa.int64(),
    "never_learned": pa.bool_(),
    "aum": pa.float64(),
    "opposition": pa.float64(),
    "tracin_self_influence": pa.float64(),
    "final_loss": pa.float64(),
    "final_correct": pa.bool_(),
    "planted": pa.bool_(),
    "planted_group": pa.string(),
}

# The timeline stage (gradscope.timeline): steps are float, as a sharpness crossing is interpolated between checkpoints.
TIMELINE_EVENTS = {
    "kind": pa.string(),
    "step": pa.float64(),
    "step_start": pa.float64(),
    "step_end": pa.float64(),
    "resolution": pa.float64(),
    "value": pa.float64(),
    "group_a": pa.int64(),
    "group_b": pa.int64(),
    "step_from": pa.int64(),
}

TIMELINE_LINKS = {
    "step": pa.float64(),
    "value": pa.float64(),
    "resolution": pa.float64(),
    "window": pa.float64(),
    "nearest_crossing_step": pa.float64(),
    "nearest_crossing_kind": pa.string(),
    "crossing_distance": pa.float64(),
    "near_crossing": pa.bool_(),
    "antiphase_distance": pa.float64(),
    "antiphase_active": pa.bool_(),
}

INFLUENCE_TOP = {  # each scored test example's top proponents and opponents
    "test_id": pa.int64(),
    "test_label": pa.int64(),
    "kind": pa.string(),
    "rank": pa.int64(),
    "train_id": pa.int64(),
    "score": pa.float64(),
    "train_label": pa.int64(),
    "train_clean_label": pa.int64(),
    "train_planted": pa.bool_(),
}

INFLUENCE_CONTRIBUTIONS = {  # those pairs' score, checkpoint by checkpoint
    "test_id": pa.int64(),
    "train_id": pa.int64(),
    "kind": pa.string(),
    "step": pa.int64(),
    "lr": pa.float64(),
    "contribution": pa.float64(),
}

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

# One row per checkpoint. Lists: key frequencies (1..p//2) and the spectrum (norm of frequency k at index k-1).
PROGRESS = {
    "step": pa.int64(),
    "train_loss": pa.float64(),
    "test_loss": pa.float64(),
    "restricted_loss": pa.float64(),
    "restricted_loss_all": pa.float64(),
    "excluded_loss": pa.float64(),
    "key_frequencies": pa.list_(pa.int64()),
    "key_fraction": pa.float64(),
    "top_frequencies": pa.list_(pa.int64()),
    "top_fraction": pa.float64(),
    "constant_norm": pa.float64(),
    "embedding_norm": pa.float64(),
    "spectrum": pa.list_(pa.float64()),
    "weight_norm": pa.float64(),
    "weight_norm_logged": pa.bool_(),
}

# A dataset split's table: every column a split can have, in file order; `dataset_columns` picks
# those of one dataset (dense inputs: x and clean_label; token pairs: a and b).
DATASET = {
    "example_id": pa.int64(),
    "label": pa.int64(),
    "planted": pa.bool_(),
    "x": "fixed_size_list<float>[{dim}]",
    "clean_label": pa.int64(),
    "a": pa.int64(),
    "b": pa.int64(),
    "group": pa.string(),
    "source_id": "int64 or string",
    "parent_example_id": pa.int64(),
    "weight": pa.float64(),
}


def dataset_columns(df, meta: dict) -> dict[str, pa.DataType]:
    """The columns (name -> type) of a dataset split's table `df`, whose dataset's meta is `meta`."""
    import pandas as pd

    types = {name: DATASET[name] for name in ("example_id", "label", "planted")}
    if meta["input"]["kind"] == "dense":
        types |= {"x": pa.list_(pa.float32(), meta["input"]["dim"]), "clean_label": DATASET["clean_label"]}
    else:
        types |= {"a": DATASET["a"], "b": DATASET["b"]}
    if "group" in df.columns:  # opposing_features, a spurious feature: the planted group an example belongs to
        types["group"] = DATASET["group"]
    if "source_id" in df.columns:  # the labelled sources: an example's id in the source
        types["source_id"] = pa.int64() if pd.api.types.is_integer_dtype(df["source_id"]) else pa.string()
    types |= {name: DATASET[name] for name in ("parent_example_id", "weight") if name in df.columns}  # interventions
    return types


# The sweep tables' types are inferred when written (their columns follow the grid); these are
# the columns every sweep has, with the types pyarrow infers for them (text: large_string, pandas 3's).
SWEEP_RUNS = {
    "run_id": pa.large_string(),
    "run": pa.large_string(),
    "optimizer": pa.large_string(),
}

SWEEP_DETECTORS = {
    "detector": pa.large_string(),
    "last_step": pa.int64(),
    **_QUALITY,
    "best_auroc": pa.float64(),
    "best_step": "int64 or double",
    "run_id": pa.large_string(),
    "run": pa.large_string(),
}

# An intervention experiment's tables (gradscope.interventions). Its runs' table adds a column test_acc_GROUP per
# planted test group; with its nulls (a parent's detector, k and action), its types are inferred.
INTERVENTION_RUNS = {
    "run_id": pa.large_string(),
    "arm": pa.large_string(),
    "detector": pa.large_string(),
    "k": "int64 or double",
    "action": pa.large_string(),
    "seed": pa.int64(),
    "final_test_acc": pa.float64(),
    "worst_group_test_acc": "double or null",
    "generalization_delay_steps": "int64, double or null",
    "n_loss_spikes": pa.int64(),
    "max_sharpness": pa.float64(),
}
EFFECTS = {
    "detector": pa.string(),
    "k": pa.int64(),
    "action": pa.string(),
    "figure": pa.string(),
    "n_seeds": pa.int64(),
    "parent_mean": pa.float64(),
    "flagged_mean": pa.float64(),
    "control_mean": pa.float64(),
    "effect": pa.float64(),
    "effect_sd": pa.float64(),
    "ci_low": pa.float64(),
    "ci_high": pa.float64(),
    "control_sd": pa.float64(),
    "beyond_spread": pa.bool_(),
}


# ---- the registry ------------------------------------------------------------------------
class Column(NamedTuple):
    name: str
    type: str  # the Arrow type (`type_text`), or a pattern filled per run
    description: str


@dataclass(frozen=True)
class Table:
    name: str  # the short name `gradscope schema` takes
    path: str  # the path pattern under the results folder (gradscope.layout's, without the results/ prefix)
    doc: str  # what a row is
    columns: tuple[Column, ...]

    @property
    def descriptions(self) -> dict[str, str]:
        return {c.name: c.description for c in self.columns}

    @property
    def summary(self) -> str:
        """The doc's first sentence."""
        return re.split(r"(?<=\.)\s+(?=[A-Z])", self.doc, maxsplit=1)[0]


def type_text(t) -> str:
    """An Arrow type as the registry writes it: pyarrow's name, lists without their item field's name
    (which a Parquet round trip changes: item becomes element), e.g. fixed_size_list<float>[8],
    map<string, double>; a string (a type pattern) as it is."""
    if isinstance(t, str):
        return t
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{type_text(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{'large_' * pa.types.is_large_list(t)}list<{type_text(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{type_text(t.key_type)}, {type_text(t.item_type)}>"
    return str(t)


def described(name: str, path: str, doc: str, types: dict, descriptions: dict[str, str]) -> Table:
    """A registry entry: `types`' columns in order, each with its description; every column must have
    a non-empty one, and every description must name a column of `types`."""
    missing = [c for c in types if not str(descriptions.get(c) or "").strip()]
    unknown = [c for c in descriptions if c not in types]
    if missing or unknown:
        raise ValueError(f"table {name}: " + "; ".join(
            [f"columns without a description: {missing}"] * bool(missing) +
            [f"descriptions of columns it does not have: {unknown}"] * bool(unknown)))
    return Table(name, path, " ".join(doc.split()),
                 tuple(Column(c, type_text(t), " ".join(descriptions[c].split())) for c, t in types.items()))


def _under_results(pattern: str) -> str:
    return Path(pattern).relative_to(layout.RESULTS).as_posix()


_RUN, _SWEEP = ({k: _under_results(v) for k, v in d.items()} for d in (layout.RUN, layout.SWEEP))
_DATA = {k: _under_results(v) for k, v in layout.DATASET.items()}

_METRICS = {
    "step": "Training step: the number of updates made before this row.",
    "lr": "The learning rate of that step's update.",
    "train_loss": "Mean loss over the whole training split, in eval mode.",
    "train_acc": "Accuracy over the whole training split, in eval mode.",
    "test_loss": "Mean loss over the whole test split, in eval mode.",
    "test_acc": "Accuracy over the whole test split, in eval mode.",
    "grad_norm": "Norm of the step's batch gradient, before clipping.",
    "clipped": "Whether that step's gradient was clipped (`optim.grad_clip`).",
    "clipped_fraction": "Fraction of the steps since the previous row whose gradient was clipped.",
    "weight_norm": "Norm of all parameters.",
    "wall_s": "Seconds since training started (NaN for a run gradscope did not train).",
}
_METRICS_DOC = ("One row per logged step (every `train.log_every` steps, and the last). A row describes the "
                "parameters *before* that step's update.")
_DATASET = {
    "example_id": "The example's id in its split (0 to n - 1).",
    "label": "The label trained on (after any planted flip).",
    "planted": "Whether the example is planted ground truth (a flipped label, or a planted group's member); the "
               "dataset's meta file lists the planted training ids.",
    "x": "Dense inputs: the input, flattened (the meta file's input shape restores it).",
    "clean_label": "Dense inputs: the label before any planted flip.",
    "a": "Token pairs (modular arithmetic): the first operand.",
    "b": "Token pairs (modular arithmetic): the second operand.",
    "group": "opposing_features, and the labelled sources with a spurious feature: the planted group the example "
             "belongs to (opposing_features: empty for none; spurious: aligned or conflicting).",
    "source_id": "The labelled sources only: the example's id in its source.",
    "parent_example_id": "An intervention's training split only: the example's id in its parent run's dataset.",
    "weight": "An intervention that down-weights (intervene.action downweight): the factor on the example's "
              "training loss.",
}
_DATASET_DOC = ("A dataset's {split} split: one row per example. Its columns depend on the inputs (dense: x and "
                "clean_label; token pairs: a and b). One dataset folder is shared by the runs that differ only "
                "elsewhere.")

TABLES: dict[str, Table] = {t.name: t for t in [
    described("dataset_train", _DATA["train"], _DATASET_DOC.format(split="training"), DATASET, _DATASET),
    described("dataset_test", _DATA["test"], _DATASET_DOC.format(split="test"), DATASET, _DATASET),
    described("metrics", _RUN["metrics"], _METRICS_DOC, METRICS, _METRICS),
    described("metrics_partial", _RUN["metrics_partial"],
              "What a failed or unfinished training logged, with the columns of `metrics`. " + _METRICS_DOC,
              METRICS, _METRICS),
    described("dynamics", _RUN["dynamics"], "Per-layer training dynamics. One row per parameter tensor at every "
              "`train.dynamics_every`-th step (and the last), taken before that step's update: gradients before "
              "clipping, Adam statistics from the optimizer's state before the step.", DYNAMICS, {
        "step": "Training step.",
        "layer": "The parameter tensor's name (`model.named_parameters()`).",
        "weight_norm": "Norm of the tensor.",
        "grad_norm": "Norm of its gradient.",
        "grad_norm_top5": "Norm of the gradient over the tensor's weights in the top 5% by magnitude.",
        "grad_norm_mid90": "Norm of the gradient over the middle 90% of weights by magnitude.",
        "grad_norm_bottom5": "Norm of the gradient over the bottom 5% of weights by magnitude.",
        "adam_eff_lr_median": "Adam-family optimizers: the median effective learning rate lr / (sqrt(v_hat) + eps) "
                              "(NaN where it does not apply).",
        "adam_snr_median": "Adam-family optimizers: the median of abs(m_hat) / sqrt(v_hat), a signal-to-noise ratio "
                           "of the update (NaN where it does not apply).",
        "update_to_decay_ratio": "The ratio of the Adam update's size to the weight decay's size (NaN where it does "
                                 "not apply).",
    }),
    described("examples", _RUN["examples"], "Per-example statistics of both splits at one checkpoint. One row per "
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
    described("curvature", _RUN["curvature"], "Curvature of the training loss at one checkpoint. One row; the "
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
    described("detections", _RUN["signals_detections"], "Detector scores of the training split. One row per "
              "training example, detector and checkpoint the detector scores (`opposing_groups` from the second "
              "checkpoint, `loss_*` once `window` checkpoints exist).", DETECTIONS, {
        "step": "Checkpoint step.",
        "example_id": "Training example.",
        "detector": "Detector name.",
        "score": "The detector's score: higher = more suspect.",
        "flagged": "Whether the detector flags the example.",
    }),
    described("evaluation", _RUN["signals_evaluation"], "Each detector judged against the planted truth. One row per "
              "detector and checkpoint; the figures auroc to recall are NaN without planted truth.", EVALUATION, {
        "detector": "Detector name.",
        "step": "Checkpoint step.",
        "n_flagged": "Examples flagged.",
        "auroc": "AUROC of the score against the planted truth.",
        "average_precision": "Average precision of the score.",
        "precision_at_k": "Precision of the k top scores (k = planted count).",
        "recall_at_k": "Recall of the k top scores (k = planted count).",
        "precision": "Precision of the flags.",
        "recall": "Recall of the flags.",
    }),
    described("groups", _RUN["signals_groups"], "Opposing-signal groups. One row per selected example of each "
              "checkpoint interval: the top-k examples by absolute loss change, each with the group its gradient "
              "direction puts it in.",
              GROUPS, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "group": "Group (0 = largest).",
        "example_id": "Training example.",
        "delta_loss": "The example's loss change over the interval.",
    }),
    described("group_pairs", _RUN["signals_group_pairs"], "One row per pair of groups of each checkpoint "
              "interval.", GROUP_PAIRS, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "group_a": "The first group.",
        "group_b": "The second group.",
        "size_a": "Examples in group_a.",
        "size_b": "Examples in group_b.",
        "mean_delta_a": "Mean loss change of group_a over the interval.",
        "mean_delta_b": "Mean loss change of group_b over the interval.",
        "cosine": "Cosine of the groups' mean projected gradients.",
        "opposing": "Whether the pair opposes (cosine < 0).",
    }),
    described("group_losses", _RUN["signals_group_losses"], "One row per group of each interval and checkpoint: "
              "each group's mean loss at every checkpoint.", GROUP_LOSSES, {
        "step_from": "The interval's first checkpoint (where the group was found).",
        "step_to": "The interval's last checkpoint.",
        "group": "Group (0 = largest).",
        "step": "The checkpoint of the loss.",
        "mean_loss": "The group's mean loss at that checkpoint.",
    }),
    described("loss_changes", _RUN["signals_loss_changes"], "One row per training example and checkpoint "
              "interval: the Δloss distribution of every interval.", LOSS_CHANGES, {
        "step_from": "The interval's first checkpoint.",
        "step_to": "The interval's last checkpoint.",
        "example_id": "Training example.",
        "delta_loss": "Its loss change over the interval.",
    }),
    described("per_example", _RUN["signals_per_example"], "One row per training example over the whole run "
              "(all checkpoints).", PER_EXAMPLE, {
        "example_id": "Training example.",
        "confidence": "Dataset cartography: mean probability of the true label over the checkpoints.",
        "variability": "Dataset cartography: standard deviation of that probability.",
        "correctness": "Dataset cartography: fraction of the checkpoints where the example is correct.",
        "forgetting_events": "Times the example went from correct at one checkpoint to wrong at the next.",
        "never_learned": "Whether the example was never correct.",
        "aum": "Area under the margin: the mean margin over the checkpoints.",
        "opposition": "Mean −cosine to the mean training gradient after step 0 (over the checkpoints after the "
                      "first; all of them where there is one).",
        "tracin_self_influence": "TracIn self-influence: Σ over checkpoints of lr × the squared gradient norm.",
        "final_loss": "Loss at the last checkpoint.",
        "final_correct": "Correct at the last checkpoint.",
        "planted": "Whether the example is planted ground truth.",
        "planted_group": "The planted group's name, empty for none.",
    }),
    described("timeline_events", _RUN["timeline_events"], "The run's timeline (gradscope.timeline): one row per "
              "event, sorted by step. Kinds: loss_spike (the training loss above the median of its previous "
              "`timeline.spike_window` logged values by more than `timeline.spike_margin` of it), sharpness_reach and "
              "sharpness_leave (sharpness rising to and falling below 2/lr between two checkpoints; none where 2/lr "
              "does not apply), antiphase (the top pair of opposing groups' loss changes correlated at most "
              "`timeline.antiphase_threshold` over `timeline.antiphase_window` checkpoint intervals), memorization "
              "and generalization (the headline's step_memorized and step_generalized).", TIMELINE_EVENTS, {
        "kind": "loss_spike, sharpness_reach, sharpness_leave, antiphase, memorization or generalization.",
        "step": "Where the event is: a spike's peak; a crossing interpolated linearly between its two checkpoints; "
                "the middle of an antiphase interval; the logged step of memorization or generalization.",
        "step_start": "The event's first step: a spike's first point above its baseline, the checkpoint before a "
                      "crossing, an antiphase interval's first checkpoint, the logged step before memorization or "
                      "generalization.",
        "step_end": "The event's last step: a spike's last point above its baseline, the checkpoint after a "
                    "crossing, an antiphase interval's last checkpoint, the step of memorization or generalization.",
        "resolution": "How well the tables place the event, in steps: the logging interval (spikes), the checkpoint "
                      "gap around it (crossings), the largest checkpoint gap inside it (antiphase), the logging "
                      "interval before it (memorization, generalization).",
        "value": "The event's size: loss / baseline at a spike's peak; sharpness / (2/lr) at the checkpoint after a "
                 "crossing; the mean correlation of the pair's loss changes over an antiphase interval (negative); "
                 "the accuracy reached at memorization (train) or generalization (test).",
        "group_a": "antiphase: the pair's first group (group numbers are its interval's: see step_from); null on "
                   "the other kinds.",
        "group_b": "antiphase: the pair's second group; null on the other kinds.",
        "step_from": "antiphase: the first checkpoint of the interval where the pair was found (signals "
                     "group_pairs); null on the other kinds.",
    }),
    described("timeline_links", _RUN["timeline_links"], "One row per loss spike of `timeline_events`: its nearest "
              "sharpness crossing and whether the top pair of opposing groups is in antiphase within a window of it. "
              "The counts against the same events shuffled in time are in the stage's summary (layout name "
              "timeline_summary).",
              TIMELINE_LINKS, {
        "step": "The spike's step (its peak).",
        "value": "The spike's loss / baseline at its peak.",
        "resolution": "The coarser of the spike's resolution and its nearest crossing's, in steps: how finely the "
                      "tables can place the two relative to each other.",
        "window": "Steps either side of the spike within which a crossing or an antiphase interval counts as linked: "
                  "`timeline.link_window`, or (null) twice the checkpoint interval the spike lies in.",
        "nearest_crossing_step": "The step of the nearest sharpness crossing (NaN without one).",
        "nearest_crossing_kind": "sharpness_reach or sharpness_leave; null without a crossing.",
        "crossing_distance": "Steps between the spike and its nearest crossing (NaN without one).",
        "near_crossing": "Whether crossing_distance is at most window.",
        "antiphase_distance": "Steps between the spike and the nearest antiphase interval, 0 inside one (NaN "
                              "without one).",
        "antiphase_active": "Whether antiphase_distance is at most window: the pair is in antiphase around the "
                            "spike.",
    }),
    described("influence_top", _RUN["influence_top"], "Train-to-test TracIn-CP: one row per scored test example, "
              "kind and rank, the training example that ranks there among its proponents or opponents.",
              INFLUENCE_TOP, {
        "test_id": "Test example.",
        "test_label": "Its label.",
        "kind": "proponent or opponent.",
        "rank": "Rank within the kind (1 = strongest).",
        "train_id": "Training example.",
        "score": "TracIn-CP: Σ over checkpoints of lr × the inner product of the two examples' projected gradients.",
        "train_label": "The training example's label (as trained on).",
        "train_clean_label": "The training example's label before any planted flip.",
        "train_planted": "Whether the training example is planted.",
    }),
    described("influence_contributions", _RUN["influence_contributions"], "One row per pair of `influence_top` and "
              "checkpoint: that pair's score, checkpoint by checkpoint.", INFLUENCE_CONTRIBUTIONS, {
        "test_id": "Test example.",
        "train_id": "Training example.",
        "kind": "proponent or opponent.",
        "step": "Checkpoint step.",
        "lr": "The learning rate at that checkpoint.",
        "contribution": "That checkpoint's lr × inner product; the contributions of a pair sum to its score.",
    }),
    described("progress", _RUN["progress"], "Progress measures of the grokking circuit (Nanda et al. 2023): one "
              "row per checkpoint, modular add/sub runs only.", PROGRESS, {
        "step": "Checkpoint step.",
        "train_loss": "The model's own loss over all pairs of the training split.",
        "test_loss": "The model's own loss over all pairs of the test split.",
        "restricted_loss": "Training-pair loss of the logits restricted to the key frequencies' directions (and the "
                           "constant).",
        "restricted_loss_all": "The restricted loss over all p² pairs.",
        "excluded_loss": "Training-pair loss of the logits with the key frequencies' directions removed.",
        "key_frequencies": "The key frequencies (list) of the restricted and excluded losses.",
        "key_fraction": "Fraction of the embedding's squared norm in the key frequencies.",
        "top_frequencies": "The top frequencies of the embedding's spectrum (list: this checkpoint's own).",
        "top_fraction": "Fraction of the embedding's squared norm in top_frequencies.",
        "constant_norm": "Norm of the embedding's constant component.",
        "embedding_norm": "Norm of the embedding.",
        "spectrum": "The embedding's Fourier spectrum (list: the norm of frequency k at index k − 1).",
        "weight_norm": "Norm of all parameters.",
        "weight_norm_logged": "Whether training logged the step's weight norm (false where it was not, and the norm "
                              "comes from the checkpoint).",
    }),
    described("sweep_runs", _SWEEP["runs"], "One row per run of the experiment. Its columns: "
              "run_id, run, then the grid values and seed (one column per parameter the runs vary, types inferred, "
              "list values as text), optimizer, then the headline figures of each run (final accuracies and losses, "
              "generalization steps, sharpness and the edge of stability, flag counts, detector AUROCs where the "
              "data plants truth), and its timeline's (report.TIMELINE_SWEEP: loss spikes, the fraction near a 2/lr "
              "crossing and with the top opposing pair in antiphase with the shuffled baseline, the loss-pair "
              "correlation).",
              SWEEP_RUNS, {
        "run_id": "The run's id (experiment/run).",
        "run": "The run's name (its varying parameters).",
        "optimizer": "The run's optimizer (`optim.name`).",
    }),
    described("sweep_detectors", _SWEEP["detectors"], "One row per run and detector: the detector's figures at "
              "its last checkpoint and its best AUROC over checkpoints. Types are inferred; the quality columns "
              "(auroc to best_step) are absent where no run's data plants truth.", SWEEP_DETECTORS, {
        "detector": "Detector name.",
        "last_step": "The detector's last checkpoint.",
        "n_flagged": "Examples flagged there.",
        "auroc": "AUROC there (NaN where undefined).",
        "average_precision": "Average precision there.",
        "precision_at_k": "Precision of the k top scores there (k = planted count).",
        "recall_at_k": "Recall of the k top scores there (k = planted count).",
        "precision": "Precision of the flags there.",
        "recall": "Recall of the flags there.",
        "best_auroc": "The best AUROC over checkpoints.",
        "best_step": "The checkpoint of best_auroc (NaN where no checkpoint has one: the column is then double).",
        "run_id": "The run's id (experiment/run).",
        "run": "The run's name.",
    }),
    described("interventions", _SWEEP["interventions"], "An intervention experiment's runs (gradscope.interventions) "
              "and its parent's runs of the same seeds: one row per run with the figures an intervention is judged "
              "by, plus a column test_acc_GROUP per planted test group GROUP.", INTERVENTION_RUNS, {
        "run_id": "The run's id (experiment/run).",
        "arm": "flagged (the detector's top k intervened on), control (k random examples, as many per label) or "
               "parent (the run intervened on).",
        "detector": "intervene.detector (null for the parent).",
        "k": "intervene.k (null for the parent).",
        "action": "intervene.action: remove, downweight or relabel (null for the parent).",
        "seed": "The training seed (the parent's and its arms' are the same).",
        "final_test_acc": "Test accuracy at the last logged step.",
        "worst_group_test_acc": "The lowest test accuracy over the planted test groups at the last checkpoint "
                                "(null without groups).",
        "generalization_delay_steps": "Steps from memorization to generalization (signals.generalization; null "
                                      "where either never happened).",
        "n_loss_spikes": "Loss spikes in the run's timeline (timeline.spike_window, timeline.spike_margin).",
        "max_sharpness": "The largest sharpness over the checkpoints.",
    }),
    described("effects", _SWEEP["effects"], "An intervention experiment's effects: one row per detector, k, action "
              "and figure (those of `interventions`), the flagged arm minus the control arm, paired by seed.", EFFECTS, {
        "detector": "intervene.detector.",
        "k": "intervene.k.",
        "action": "intervene.action.",
        "figure": "The figure compared (a column of `interventions`).",
        "n_seeds": "Seeds with the figure in both arms.",
        "parent_mean": "The parent runs' mean over those seeds.",
        "flagged_mean": "The flagged arm's mean.",
        "control_mean": "The control arm's mean.",
        "effect": "The mean over seeds of flagged minus control.",
        "effect_sd": "The standard deviation of flagged minus control over seeds (NaN with one).",
        "ci_low": "The effect's 95% t interval, low end (NaN with one seed).",
        "ci_high": "The effect's 95% t interval, high end.",
        "control_sd": "The control arm's standard deviation over seeds: the seed-to-seed spread.",
        "beyond_spread": "Whether the effect's size exceeds both effect_sd and control_sd (false with one seed).",
    }),
]}


class UnknownTable(LookupError):
    """A table name the registry does not have; the message names the known ones."""


def table(name: str) -> Table:
    """The registry's table `name`; an unknown name is an UnknownTable (a LookupError) naming the known ones."""
    if name not in TABLES:
        raise UnknownTable(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def with_descriptions(schema: pa.Schema, name: str) -> pa.Schema:
    """`schema` with each column that table `name` describes carrying its description as field
    metadata (key b"description"); the schema's own metadata is kept."""
    text = table(name).descriptions
    return pa.schema([f.with_metadata({**(f.metadata or {}), DESCRIPTION: text[f.name].encode()}) if f.name in text
                      else f for f in schema], metadata=schema.metadata)


def _segment(pattern: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(pattern)))


def table_for_path(path) -> Table | None:
    """The table a Parquet file is, from its path: the one whose pattern matches the most trailing
    folders of it (any results folder, or a run folder anywhere); None where none or two match as well."""
    parts = Path(path).as_posix().split("/")
    scores = {}
    for t in TABLES.values():
        segments = t.path.split("/")
        n = 0
        while n < min(len(segments), len(parts)) and _segment(segments[-1 - n]).fullmatch(parts[-1 - n]):
            n += 1
        scores[t.name] = n
    best = max(scores.values())
    found = [name for name, n in scores.items() if n == best]
    return TABLES[found[0]] if best and len(found) == 1 else None


# ---- text: the CLI's and the documentation's ----------------------------------------------
def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def listing() -> str:
    """Every table: its name and path, then its doc's first sentence."""
    width = max(map(len, TABLES))
    return "\n".join(f"{t.name.ljust(width)}  {t.path}\n{'':{width}}  {t.summary}" for t in TABLES.values())


def describe(name: str) -> str:
    """One table: its path, doc, and a column / type / description table."""
    t = table(name)
    return "\n".join([f"{t.name}: {t.path}", t.doc, "",
                      *_aligned([("column", "type", "description"), *((c.name, c.type, c.description) for c in t.columns)])])


def describe_file(path) -> str:
    """A Parquet file's columns with their types as written and their descriptions: from its field
    metadata, else (a file written before they were) from the registry's table that its path matches."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    found = table_for_path(path)
    known = found.descriptions if found else {}
    rows, fallback = [], False
    for f in schema:
        own = (f.metadata or {}).get(DESCRIPTION)
        fallback |= own is None and f.name in known
        rows.append((f.name, type_text(f.type), own.decode() if own is not None else known.get(f.name, "")))
    head = [f"{path}: the {found.name} table ({found.path})", found.doc] if found else [
        f"{path}: not a table gradscope's registry knows by its path"]
    note = ["(descriptions from the registry: the file carries none)"] * fallback
    return "\n".join([*head, *note, "", *_aligned([("column", "type", "description"), *rows])])


def schema_text(what: str | None = None) -> str:
    """What `gradscope schema [WHAT]` prints: every table (no WHAT), one table by name, or a Parquet
    file's columns (a path: one ending in .parquet, or an existing file; a folder of partitions, its
    first file). An unknown name is a LookupError naming the known tables; a file that is missing
    or not Parquet, a ValueError."""
    if what is None:
        return listing()
    if Path(what).is_dir():
        parts = sorted(Path(what).rglob("*.parquet"))
        if not parts:
            raise ValueError(f"{what}: a folder with no Parquet file")
        what = parts[0].as_posix()
    if what.endswith(".parquet") or Path(what).is_file():
        try:
            return describe_file(what)
        except FileNotFoundError:
            raise ValueError(f"{what}: no such file") from None
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{what}: not a readable Parquet file ({e})") from None
    return describe(what)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def tables_markdown(level: int = 3) -> str:
    """The whole registry as Markdown: a section per table (a heading of `level`) with its path, doc
    and a column | type | description table. No links."""
    out = []
    for t in TABLES.values():
        out += [f"{'#' * level} {t.name}", "", f"Path under the results folder: `{t.path}`", "", t.doc, "",
                "| column | type | description |", "|---|---|---|",
                *(f"| `{c.name}` | `{_cell(c.type)}` | {_cell(c.description)} |" for c in t.columns), ""]
    return "\n".join(out)
