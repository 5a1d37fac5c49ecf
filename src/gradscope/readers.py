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


def read_examples(paths, columns=None, *, split: str | None = None, ids=None) -> pd.DataFrame:
    """A run's examples tables (every checkpoint's, or the ones given), as one table with its step column.

    columns: read only these (those of them a file has; step always comes first): the per-example
    projections, grad_proj, are most of a table's bytes, so a stage that does not need them leaves
    them out. split, ids: only the rows of that split, and of those example ids (filtered file by
    file, so only one file's columns are ever in memory whole)."""
    if columns is None and split is None and ids is None:
        return artifacts.read_partitions(paths)
    files = layout.partition_files(paths)
    if not files:
        raise ValueError("no partition files given")
    parts = []
    filters = ([("split", "==", split)] if split is not None else []) + (
        [("example_id", "in", [int(i) for i in ids])] if ids is not None else [])
    for path in files:
        step = _partition_step(path)
        parts.append(_read_filtered(path, columns, filters).assign(step=step))
    table = pd.concat(parts, ignore_index=True)
    return table[["step"] + [c for c in table.columns if c != "step"]]


def _partition_step(path) -> int:
    key, _, value = Path(path).parent.name.partition("=")
    if key != "step" or not value.isdigit():
        raise ValueError(f"{path} is not in a step=<n> partition folder")
    return int(value)


def _read_filtered(path, columns, filters: list) -> pd.DataFrame:
    """One examples file's `columns` (those of them it has; all where None), of the rows `filters`
    (pyarrow's) keep; a missing or damaged file is named as artifacts.read_parquet names it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"missing artifact: {path}")
    try:
        names = pq.read_schema(path).names
        wanted = [c for c in (names if columns is None else dict.fromkeys(columns)) if c in names and c != "step"]
        if not filters:
            return pd.read_parquet(path, columns=wanted)
        return pq.read_table(path, columns=wanted, filters=filters).to_pandas()
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise ValueError(f"cannot read Parquet file {path}: {e}; {artifacts.regenerate_hint(path)}") from e


def projection_matrix(column) -> np.ndarray:
    """A grad_proj column (pandas of arrays, or a pyarrow list array) as one (rows, k) float32 array,
    without a Python object per row where it comes from Arrow."""
    import pyarrow as pa

    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(column)
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    values = list(column)
    return np.stack(values).astype(np.float32) if values else np.zeros((0, 0), np.float32)


def read_projections(path, splits: dict) -> dict:
    """One examples file's grad_proj rows by split: {split: (example ids ascending, (n, k) float32)} for each
    split of `splits` ({split: the example ids wanted, or None for all of them}); read with pyarrow
    (split, example_id and grad_proj only), without a Python object per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not Path(path).exists():
        raise FileNotFoundError(f"missing artifact: {path}")
    try:
        table = pq.read_table(path, columns=["split", "example_id", "grad_proj"])
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise ValueError(f"cannot read Parquet file {path}: {e}; {artifacts.regenerate_hint(path)}") from e
    out = {}
    for split, ids in splits.items():
        mask = pc.equal(table["split"], split)
        if ids is not None:
            mask = pc.and_(mask, pc.is_in(table["example_id"], value_set=pa.array(np.asarray(ids, np.int64))))
        part = table.filter(mask)
        found = part["example_id"].to_numpy()
        order = np.argsort(found, kind="stable")
        rows = projection_matrix(part["grad_proj"])
        out[split] = (found[order], rows[order] if len(order) else rows)
    return out


def checkpoint_projections(files, test_ids, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every training example's and the `test_ids`' grad_proj at each checkpoint of `files` (one
    examples file a checkpoint, in step order): (training ids (n,), (C, n, k) float32, (C, n_test, k)
    float32), read one file at a time (read_projections); each file must hold the same examples.
    progress(c, C): called after the c-th file (1-based) of C."""
    train_ids = train_proj = test_proj = None
    for c, path in enumerate(files):
        got = read_projections(path, {"train": None, "test": test_ids})
        if train_proj is None:
            train_ids, k = got["train"][0], got["train"][1].shape[-1]
            train_proj = np.empty((len(files), len(train_ids), k), np.float32)
            test_proj = np.empty((len(files), len(test_ids), k), np.float32)
        for split, ids, proj in (("train", train_ids, train_proj), ("test", np.asarray(test_ids), test_proj)):
            if not np.array_equal(got[split][0], ids):
                raise ValueError(f"{path}: its {split} examples differ from the first checkpoint's ({len(got[split][0])} "
                                 f"against {len(ids)}); every checkpoint's examples table must hold the same examples")
            proj[c] = got[split][1]
        if progress is not None:
            progress(c + 1, len(files))
    return train_ids, train_proj, test_proj


def examples_files(paths) -> tuple[list, np.ndarray]:
    """A run's examples files (layout.partition_files) in step order, and their steps."""
    files = sorted(layout.partition_files(paths), key=layout.step_of)
    return files, np.array([layout.step_of(f) for f in files], dtype=np.int64)


def last_test_rows(files) -> pd.DataFrame:
    """The last of a run's examples tables' test rows: step, split, example_id, label, loss, pred and correct
    (pred == label where the table has no correct column)."""
    files = sorted(layout.partition_files(files), key=layout.step_of)
    final = read_examples(files[-1:], ["split", "example_id", "label", "loss", "pred", "correct"], split="test")
    if "correct" not in final:
        final["correct"] = final["pred"].to_numpy() == final["label"].to_numpy()
    return final


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
