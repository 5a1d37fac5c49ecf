"""The workflow's artifacts read back as the stages and the results API use them: a run's
per-checkpoint examples and curvature tables and eigenvectors (and which of a list of tables are one
run's), its checkpoint files through its manifest, a dataset's planted truth and the labels of its splits. File formats are `gradscope.artifacts`;
paths `gradscope.layout`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gradscope import artifacts, layout
from gradscope.signals import edge_assessed


def read_examples(paths) -> pd.DataFrame:
    """A run's examples tables (every checkpoint's, or the ones given), as one table with its step column."""
    return artifacts.read_partitions(paths)


def examples_at(paths, step: int) -> pd.DataFrame:
    """split, example_id and pred of a run's examples table at `step` (not the projections), among `paths`."""
    at = [p for p in layout.partition_files(paths) if layout.step_of(p) == step]
    if not at:
        raise FileNotFoundError(f"missing artifact: the parent's examples table at step {step} "
                                f"(among {', '.join(map(str, paths))})")
    return artifacts.read_parquet(at[0], columns=["split", "example_id", "pred"])


def read_curvature(paths) -> pd.DataFrame:
    """A run's curvature tables, by step. sharpness_threshold is NaN where 2/lr does not apply
    (signals.edge_assessed): also in a table written before the stage recorded it so, from the
    optimizer in the file's metadata."""
    files = layout.partition_files(paths)
    table = artifacts.read_partitions(files).sort_values("step")
    if files and "sharpness_threshold" in table:
        optim = (artifacts.read_metadata(files[0]).get("gradscope.config") or {}).get("optim") or {}
        if optim.get("name") and not edge_assessed(optim["name"]):
            table["sharpness_threshold"] = np.nan
    return table


def read_eigenvectors(path, n_params: int) -> np.ndarray:
    """A checkpoint's top eigenvectors (k, n_params) (the curvature stage's .npy), checked to be
    non-empty and of the model's `n_params` trainable coordinates."""
    vectors = artifacts.read_npy(path)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] != n_params:
        raise ValueError(f"{path}: expected eigenvectors of shape (k, {n_params}), found {vectors.shape}")
    return vectors


def run_of(path) -> str:
    """The run id (experiment/run) of a per-checkpoint table as a rule is given it: the
    step=<n>/<file> itself or its kind's folder (examples/, curvature/) in the run's folder."""
    path = Path(path)
    in_partition = path.name in layout.IN_PARTITION.values() and path.parent.name.startswith("step=")
    folder = path.parents[2] if in_partition else path.parent
    return f"{folder.parent.name}/{folder.name}"


def run_files(paths, run_id: str) -> list:
    """The paths among `paths` (per-checkpoint tables of several runs) that are run `run_id`'s."""
    return [p for p in paths if run_of(p) == run_id]


def checkpoint_file(manifest_path, step: int) -> Path:
    """The checkpoint file of `step` that a run's manifest lists; a KeyError names the steps it has."""
    manifest = artifacts.read_json(manifest_path)
    if str(step) not in manifest["checkpoints"]:
        raise KeyError(f"{manifest_path} has no checkpoint at step {step}; it has {sorted(map(int, manifest['checkpoints']))}")
    return Path(manifest_path).parent / manifest["checkpoints"][str(step)]


def planted_truth(meta_path) -> tuple[list | None, dict | None]:
    """The dataset's planted training ids and named planted groups, each None where the data
    plants none (flip_fraction 0 plants an empty list: nothing to score against either)."""
    planted = artifacts.read_json(meta_path).get("planted") or {}
    return planted.get("train_ids") or None, planted.get("groups") or None


def split_labels(path, ids: np.ndarray | None = None) -> pd.DataFrame:
    """example_id, label, clean_label (the label where the data has no noise) and planted of a dataset
    split's table: of `ids`, in order, or of every example."""
    names = pq.read_schema(path).names
    df = artifacts.read_parquet(path, columns=[c for c in ("example_id", "label", "clean_label", "planted") if c in names])
    df = df.set_index("example_id")
    if ids is not None:
        df = df.loc[ids]
    return pd.DataFrame({"example_id": df.index.to_numpy(), "label": df["label"].to_numpy(),
                         "clean_label": (df["clean_label"] if "clean_label" in df else df["label"]).to_numpy(),
                         "planted": (df["planted"] if "planted" in df else pd.Series(False, index=df.index)).to_numpy()})
