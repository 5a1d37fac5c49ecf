"""What a registry entry is and how one is made: a `Table` of described `Column`s.

`described` builds an entry from a type dict (column name -> Arrow type or type pattern) and the
columns' meanings, checking that each column has one and each meaning names a column; `type_text`
writes an Arrow type as the registry does. `RUN_PATHS`, `SWEEP_PATHS` and `DATASET_PATHS` are
`gradscope.layout`'s path patterns without the results/ prefix, as the entries give them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from gradscope import layout

DESCRIPTION = b"description"  # the field-metadata key of a column's meaning


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


RUN_PATHS, SWEEP_PATHS = ({k: _under_results(v) for k, v in d.items()} for d in (layout.RUN, layout.SWEEP))
DATASET_PATHS = {k: _under_results(v) for k, v in layout.DATASET.items()}
