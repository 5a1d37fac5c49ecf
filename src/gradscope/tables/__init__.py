"""What every Parquet table gradscope writes holds: each column's name, type and meaning, defined once.

The type dicts (`METRICS`, `EXAMPLES`, `CURVATURE`, ...) give a table's columns in file order with
their Arrow types; a column whose type is fixed per run (a projection's length) has its type
pattern instead, a string such as "fixed_size_list<float>[{n_layers}]". `TABLES` joins each
type dict with the table's path (from `gradscope.layout`), what a row is, and what each column
means. The meanings reach the files (`artifacts.write_parquet` puts each one in its field's
metadata, key b"description"), `gradscope schema [TABLE]` and the documentation (`tables_markdown`).

One module per stage of the tables, every name importable from here (this module: the registry
`TABLES` in its order, its look-ups and its text for the CLI and the documentation):

- `gradscope.tables._registry`: what an entry is (`Table`, `Column`), `described`, `type_text`;
- `gradscope.tables._training`: the dataset's splits, the metrics and the dynamics;
- `gradscope.tables._checkpoints`: the per-checkpoint examples and curvature tables;
- `gradscope.tables._signals`: the signals stage's detections, groups and per-example figures;
- `gradscope.tables._analyses`: the timeline, influence and progress tables;
- `gradscope.tables._sweep`: a sweep's and an intervention experiment's tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from gradscope.tables import _analyses, _checkpoints, _signals, _sweep, _training
from gradscope.tables._analyses import INFLUENCE_CONTRIBUTIONS, INFLUENCE_TOP, PROGRESS, TIMELINE_EVENTS, TIMELINE_LINKS
from gradscope.tables._checkpoints import (CURVATURE, CURVATURE_ABSENT, EXAMPLES, EXAMPLES_PER_RUN, examples_columns,
                                           projection_type)
from gradscope.tables._registry import DESCRIPTION, Column, Table, described, type_text
from gradscope.tables._signals import (DETECTIONS, EVALUATION, GROUP_LOSSES, GROUP_PAIRS, GROUPS, LOSS_CHANGES,
                                       PER_EXAMPLE)
from gradscope.tables._sweep import EFFECTS, INTERVENTION_RUNS, SWEEP_DETECTORS, SWEEP_RUNS
from gradscope.tables._training import DATASET, DYNAMICS, METRICS, dataset_columns

__all__ = [
    "CURVATURE", "CURVATURE_ABSENT", "DATASET", "DESCRIPTION", "DETECTIONS", "DYNAMICS", "EFFECTS", "EVALUATION",
    "EXAMPLES", "EXAMPLES_PER_RUN", "GROUPS", "GROUP_LOSSES", "GROUP_PAIRS", "INFLUENCE_CONTRIBUTIONS", "INFLUENCE_TOP",
    "INTERVENTION_RUNS", "LOSS_CHANGES", "METRICS", "PER_EXAMPLE", "PROGRESS", "SWEEP_DETECTORS", "SWEEP_RUNS",
    "TABLES", "TIMELINE_EVENTS", "TIMELINE_LINKS", "Column", "Table", "UnknownTable", "dataset_columns", "describe",
    "describe_file", "described", "examples_columns", "listing", "projection_type", "schema_text", "table",
    "table_for_path", "tables_markdown", "type_text", "with_descriptions",
]

# ---- the registry ------------------------------------------------------------------------
TABLES: dict[str, Table] = {t.name: t for t in [*_training.ENTRIES, *_checkpoints.ENTRIES, *_signals.ENTRIES,
                                                 *_analyses.ENTRIES, *_sweep.ENTRIES]}


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
