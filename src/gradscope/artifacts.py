"""Artifacts on disk: Parquet schemas, metadata, and atomic writes.

Every file is written to a temporary name in its own folder and then renamed, so a file
that exists is complete. Every Parquet file carries key-value metadata
(`gradscope.schema_version`, `gradscope.run_id`, `gradscope.config` as JSON), so a file read
on its own says where it came from, and each column's description as field metadata. Column
names, types and descriptions are defined once, in `gradscope.tables` (the type dicts are
importable from here too).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from gradscope import layout, tables
# The tables' columns and the registry of their meanings, defined in gradscope.tables; importable from here.
from gradscope.tables import (CURVATURE, CURVATURE_ABSENT, DETECTIONS, DYNAMICS, EVALUATION,  # noqa: F401
                              EXAMPLES, GROUP_LOSSES, GROUP_PAIRS, GROUPS, INFLUENCE_CONTRIBUTIONS, INFLUENCE_TOP,
                              LOSS_CHANGES, METRICS, PER_EXAMPLE, PROGRESS, TABLES, Column, Table, projection_type,
                              tables_markdown)

SCHEMA_VERSION = "1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def arrow_schema(columns: dict[str, pa.DataType], meta: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema([pa.field(k, v) for k, v in columns.items()], metadata=meta)


def file_metadata(run_id: str | None, config: dict | None) -> dict[str, str]:
    return {
        "gradscope.schema_version": SCHEMA_VERSION,
        "gradscope.run_id": run_id or "",
        "gradscope.config": json.dumps(config or {}, sort_keys=True),
    }


# ---- atomic writes ----------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; artifacts are ordinary files
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error(path: Path, error: OSError) -> OSError:
    """The error of a failed write, naming the file and why; for a full disk (or quota, or file
    size limit) also the free space there and what to do."""
    code = error.errno
    if code is None and "No space left on device" in str(error):  # pyarrow's errors carry no errno
        code = errno.ENOSPC
    why = os.strerror(code) if code else str(error)
    if code in _DISK_FULL:
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 1e6:.1f} MB free there"
        except OSError:
            free = ""
        return OSError(code, f"cannot write {path}: {why}{free}. Free some space (or write results elsewhere) and "
                             "run the same command again: finished files are kept, this one is written whole or not at all")
    return OSError(code, f"cannot write {path}: {why}")


def write_parquet(df: pd.DataFrame, path, columns: dict[str, pa.DataType] | None, *, table: str | None = None,
                  run_id=None, config=None) -> None:
    """Write `df` with exactly the declared columns and types (inferred when `columns` is None), plus gradscope metadata.

    table: the registry's name of the table (`gradscope.tables.TABLES`): each column it describes
    carries its description as field metadata (b"description"), and a declared column it does not
    describe is an error."""
    meta = file_metadata(run_id, config)
    if table is not None and columns is not None:
        undescribed = [c for c in columns if c not in tables.table(table).descriptions]
        if undescribed:
            raise ValueError(f"{path}: columns {undescribed} are not described in gradscope.tables (table {table!r})")
    if columns is None:
        out = pa.Table.from_pandas(df, preserve_index=False)
        out = out.replace_schema_metadata(meta)
    else:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        out = pa.Table.from_pandas(df[list(columns)], schema=arrow_schema(columns, meta), preserve_index=False)
    if table is not None:
        out = out.cast(tables.with_descriptions(out.schema, table))
    with atomic_path(path) as tmp:
        pq.write_table(out, tmp)


def read_parquet(path, columns=None) -> pd.DataFrame:
    """Read one Parquet file or a Hive-partitioned folder (only `columns`, where given); a missing or
    corrupt file is named."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing artifact: {path}")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise ValueError(f"cannot read Parquet file {path}: {e}; {regenerate_hint(path)}") from e


def read_partitions(paths) -> pd.DataFrame:
    """Read Hive-partitioned files (`.../step=<n>/part-0.parquet`, or folders of them: see
    `layout.partition_files`) into one table with an int64 `step` column."""
    parts = []
    for path in layout.partition_files(paths):
        key, _, value = Path(path).parent.name.partition("=")
        if key != "step" or not value.isdigit():
            raise ValueError(f"{path} is not in a step=<n> partition folder")
        parts.append(read_parquet(path).assign(step=int(value)))
    if not parts:
        raise ValueError("no partition files given")
    table = pd.concat(parts, ignore_index=True)
    return table[["step"] + [c for c in table.columns if c != "step"]]


def read_metadata(path) -> dict:
    """The gradscope key-value metadata of a Parquet file, config decoded."""
    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}
    out = {k: v for k, v in meta.items() if k.startswith("gradscope.")}
    if "gradscope.config" in out:
        out["gradscope.config"] = json.loads(out["gradscope.config"])
    return out


def write_npy(array: np.ndarray, path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_npy(path) -> np.ndarray:
    """np.load, with the file named when it is missing or unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e}); {regenerate_hint(path)}") from None


def write_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_bytes(data: bytes, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj, path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n", path)


def write_yaml(obj, path) -> None:
    write_text(yaml.safe_dump(obj, sort_keys=False), path)


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing artifact: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt JSON file {path}: {e}; {regenerate_hint(path)}") from e


def _producers() -> list[tuple[re.Pattern, str, str, str | None]]:
    """The job that writes each workflow artifact, found from the folder the file lies in:
    (that folder as a regex, the rule, the declared output that `snakemake --force` reruns that
    one job for, and with checkpoint_jobs: per_checkpoint the one-checkpoint output instead)."""
    def folder(pattern: str, end: str = "") -> re.Pattern:
        text = re.escape(pattern)
        for name in ("dataset", "experiment", "run", "step"):
            text = text.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
        return re.compile(text + end)

    R = layout.RUN
    return [
        (folder(layout.DATASET["meta"].rsplit("/", 1)[0] + "/"), "generate_data", layout.DATASET["meta"], None),
        (folder(layout.RUN_DIR + "/train/"), "train", R["metrics"], None),
        (folder(R["examples"].rsplit("/", 1)[0] + "/"), "extract_examples", R["examples_dir"], R["examples"]),
        (folder(R["curvature"].rsplit("/", 1)[0] + "/"), "curvature", R["curvature_dir"], R["curvature"]),
        (folder(R["signals_summary"].rsplit("/", 1)[0] + "/"), "detect_signals", R["signals_summary"], None),
        (folder(R["influence_summary"].rsplit("/", 1)[0] + "/"), "influence", R["influence_summary"], None),
        (folder(R["progress"], "$"), "progress", R["progress"], None),
        (folder(R["config"], "$"), "resolve_config", R["config"], None),
        (folder(layout.SWEEP["report"].rsplit("/", 1)[0] + "/"), "sweep_report", layout.SWEEP["report"], None),
    ]


# The arguments that chose the config of the workflow invocation this process runs in (or was
# started by, as a job): its --configfile files and --config overrides, a JSON list set by
# workflow/rules/common.smk, so that a command printed to write a file again runs that config.
INVOCATION_ENV = "GRADSCOPE_SNAKEMAKE_CONFIG_ARGS"


def invocation_args(configfiles=(), config=(), replace_workflow_config: bool = False) -> list[str]:
    """The Snakemake arguments that give a workflow invocation's config: `--configfile FILE...`
    (paths as given), `--config KEY=VALUE...` (each as Snakemake got it) and
    `--replace-workflow-config`; [] for the workflow's own config/config.yaml alone."""
    args = ["--replace-workflow-config"] if replace_workflow_config else []
    if configfiles:
        args += ["--configfile", *map(str, configfiles)]
    if config:
        args += ["--config", *map(str, config)]
    return args


def current_invocation(path=None) -> list[str] | None:
    """The config arguments of the workflow invocation this process runs in (INVOCATION_ENV); outside
    one, those recorded for the run whose folder holds `path` (its invocation.json, written with its
    config.yaml by rule resolve_config); None when neither is known."""
    try:
        value = json.loads(os.environ[INVOCATION_ENV])
    except (KeyError, ValueError):
        value = _recorded_invocation(path) if path is not None else None
    return [str(a) for a in value] if isinstance(value, list) else None


def _recorded_invocation(path):
    from gradscope import layout

    for folder in Path(path).absolute().parents:
        if folder.name == Path(layout.RUN_DIR).parent.parent.name:  # past the run's folder: results/runs
            return None
        try:
            return json.loads((folder / layout.IN_RUN["invocation"]).read_text())
        except (OSError, ValueError):
            continue
    return None


def record_invocation(run_folder) -> None:
    """Write the run's invocation.json: the config arguments of the workflow invocation this job runs
    in (INVOCATION_ENV), which later fix commands carry (`regenerate_hint`). Written by the jobs
    that start a run (resolve_config, train, import_run); removed where the invocation is unknown
    (the workflow as another's module), so an old one never passes for current."""
    from gradscope import layout

    made_with, record = current_invocation(), Path(run_folder) / layout.IN_RUN["invocation"]
    if made_with is not None:
        write_json(made_with, record)
    else:
        record.unlink(missing_ok=True)


def snakemake_command(*args: str, invocation: list[str] | None = None) -> str:
    """`snakemake --cores 2`, the invocation's config arguments, then `args`: a shell command line
    (each argument quoted where the shell needs it). The config arguments come before `args`, so
    that a target after `--force` is not read as one more config file."""
    import shlex

    words = ["snakemake", "--cores", "2", *(invocation or []), *args]
    # shlex.quote, but a run id's "~" (wd~1.0_seed~0) is left bare: the shell expands it only at a word's start
    return " ".join(w if re.fullmatch(r"[\w@%+=:,./-][\w@%+=:,./~-]*", w) else shlex.quote(w) for w in words)


def regenerate_hint(path, invocation: list[str] | None = None) -> str:
    """What to run to write a damaged artifact again: its job, forced, then the rest of the workflow
    (a plain rerun would not see the damage: the file exists and is newer than its inputs).

    invocation: the arguments that chose the run's config (`invocation_args`), which the commands
    carry (without them, a run of a --configfile is unknown to Snakemake, and the forced target
    fails in an input function). None: those of the workflow invocation this process runs in
    (INVOCATION_ENV); outside one, those recorded in the run's invocation.json; where neither is
    known, the commands say to add them."""
    if invocation is None:
        invocation = current_invocation(path)
    unknown = invocation is None
    text = Path(path).as_posix()
    for pattern, rule, target, one_checkpoint in _producers():
        m = pattern.search(text)
        if m:
            hint = (f"the file is damaged: write it again with "
                    f"`{snakemake_command('--force', target.format(**m.groupdict()), invocation=invocation)}` "
                    f"(reruns that {rule} job")
            if one_checkpoint:
                hint += (f"; with checkpoint_jobs: per_checkpoint, `--force {one_checkpoint.format(**m.groupdict())}` "
                         "reruns that checkpoint's job alone")
            hint += f"), then `{snakemake_command(invocation=invocation)}` for what depends on it"
            if unknown:
                hint += "; add the --configfile and --config the run was made with, if any, to both"
            return hint
    return "the file is damaged: delete it and run the command that wrote it again"


def damaged_checkpoints(manifest_path, invocation: list[str] | None = None) -> list[str]:
    """What is wrong with the checkpoints a training manifest lists, by size against what training
    wrote (a stat per file, cheap enough for every workflow start): one line per file, naming it and
    the command that writes it again (with `invocation`'s config arguments, see `regenerate_hint`);
    [] when all are whole or the manifest records no sizes."""
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return []  # a missing manifest means no trained run; a damaged one is named when read
    out = []
    for step, size in (manifest.get("checkpoint_bytes") or {}).items():
        path = manifest_path.parent / manifest["checkpoints"][step]
        found = path.stat().st_size if path.exists() else None
        if found != size:
            state = "missing" if found is None else f"{found:,} bytes on disk, {size:,} written"
            out.append(f"{path}: {state}; {regenerate_hint(path, invocation)}")
    return out


def damaged_tables(folder, invocation: list[str] | None = None) -> list[str]:
    """The Parquet and JSON artifacts under `folder` that are not whole, by a check cheap enough for
    every workflow start (a dry run too): a Parquet file must begin and end with its magic bytes
    (a truncated or foreign file does not), a JSON file must parse. One line per file, naming it and
    the command that writes it again (with `invocation`'s config arguments, see `regenerate_hint`);
    Snakemake's timestamps alone would call such a file current."""
    out = []
    paths = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names
                   if name.endswith((".parquet", ".json")) and not name.startswith("."))  # "." : a write in progress
    for path in paths:
        problem = _parquet_ends(path) if path.suffix == ".parquet" else check_file(path)
        if problem:
            out.append(f"{path}: {problem}; {regenerate_hint(path, invocation)}")
    return out


def _parquet_ends(path: Path) -> str | None:
    size = path.stat().st_size
    if size < 12:  # magic, footer length, magic
        return f"{size} bytes, too short for Parquet"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, 2)
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        return "not a whole Parquet file (its magic bytes are missing: truncated or overwritten)"
    return None


def check_file(path) -> str | None:
    """None if an artifact reads as a whole file of its kind (a cheap structural check: a zip's
    checksums, a Parquet footer, JSON, an .npy header), else what is wrong with it."""
    import zipfile

    path = Path(path)
    try:
        if path.suffix == ".pt":
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            return None if bad is None else f"record {bad} fails its checksum"
        if path.suffix == ".parquet":
            pq.read_metadata(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # each reader raises its own types for a truncated or foreign file
        return f"{type(e).__name__}: {e}"
    return None


def _jsonable(x):
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
