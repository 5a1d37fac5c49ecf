"""The tables of what a run trains on and logs while training: the dataset's splits, the metrics, the dynamics."""

from __future__ import annotations

import pyarrow as pa

from gradscope.tables._registry import DATASET_PATHS, RUN_PATHS, described

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


# This module's registry entries, in the registry's order.
ENTRIES = (
    described("dataset_train", DATASET_PATHS["train"], _DATASET_DOC.format(split="training"), DATASET, _DATASET),
    described("dataset_test", DATASET_PATHS["test"], _DATASET_DOC.format(split="test"), DATASET, _DATASET),
    described("metrics", RUN_PATHS["metrics"], _METRICS_DOC, METRICS, _METRICS),
    described("metrics_partial", RUN_PATHS["metrics_partial"],
              "What a failed or unfinished training logged, with the columns of `metrics`. " + _METRICS_DOC,
              METRICS, _METRICS),
    described("dynamics", RUN_PATHS["dynamics"], "Per-layer training dynamics. One row per parameter tensor at every "
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
)
