import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gradscope import artifacts

COLUMNS = {"step": pa.int64(), "wall_s": pa.float64()}


def test_parquet_carries_schema_and_metadata(tmp_path):
    path = tmp_path / "m.parquet"
    artifacts.write_parquet(pd.DataFrame({"step": [0, 1], "wall_s": [0.5, 1.5], "extra": 1}), path, COLUMNS,
                            run_id="e/r", config={"lr": 0.1})
    back = pd.read_parquet(path)
    assert list(back.columns) == ["step", "wall_s"]
    meta = artifacts.read_metadata(path)
    assert meta["gradscope.run_id"] == "e/r" and meta["gradscope.config"] == {"lr": 0.1}
    assert meta["gradscope.schema_version"] == artifacts.SCHEMA_VERSION
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # an ordinary file, not a private temp file


def test_failed_write_leaves_nothing_that_looks_complete(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(path) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        artifacts.read_parquet(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        artifacts.read_parquet(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        artifacts.read_json(broken)


def test_missing_column_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="wall_s"):
        artifacts.write_parquet(pd.DataFrame({"step": [1]}), tmp_path / "x.parquet", COLUMNS)


def test_partitions_read_back_with_their_step(tmp_path):
    cols = {"loss": pa.float64()}
    for step in (0, 10):
        artifacts.write_parquet(pd.DataFrame({"loss": [step + 0.5]}), tmp_path / f"step={step}" / "part-0.parquet", cols)
    table = artifacts.read_partitions(sorted(tmp_path.glob("step=*/part-0.parquet")))
    assert list(table.columns) == ["step", "loss"] and list(table["step"]) == [0, 10]
    whole = pd.read_parquet(tmp_path)  # the folder is a Hive-partitioned dataset for pandas too
    assert sorted(whole["loss"]) == [0.5, 10.5]
    with pytest.raises(ValueError, match="partition"):
        artifacts.read_partitions([tmp_path / "x" / "part-0.parquet"])


def test_npy_round_trip_and_bad_files_are_named(tmp_path):
    vecs = np.arange(12, dtype=np.float32).reshape(2, 6)
    artifacts.write_npy(vecs, tmp_path / "eigenvectors.npy")
    assert np.array_equal(artifacts.read_npy(tmp_path / "eigenvectors.npy"), vecs)
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "eigenvectors.npy").read_bytes()[:60])  # a crash mid-copy
    with pytest.raises(ValueError, match="cut.npy"):
        artifacts.read_npy(tmp_path / "cut.npy")
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        artifacts.read_npy(tmp_path / "absent.npy")
