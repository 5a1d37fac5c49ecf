"""A sweep's table of runs (its runs.parquet): one row per run, with the run's grid values and its
headline figures in the columns `gradscope runs` and the index show."""

from __future__ import annotations

import pandas as pd

from gradscope.report import HEADLINE


def sweep_table(rows: list[dict], runs: list[dict]) -> pd.DataFrame:
    """The table from one row of figures per run (runs: [{id, name, varying}]): the run and its grid values,
    then the headline figures (report.HEADLINE: every one a column, null where missing or not applicable),
    then the run's other figures. Columns vary with the grid, so their types are inferred; list-valued grid
    values become text."""
    table = pd.DataFrame(rows)
    figures = {k for r in rows for k in r} - {"run_id", "run", "optimizer"} - {k for run in runs for k in run["varying"]}
    table = table.reindex(columns=[c for c in table.columns if c not in figures] + HEADLINE
                          + [c for c in table.columns if c in figures and c not in HEADLINE])
    return table.apply(lambda col: col.map(str) if col.map(lambda v: isinstance(v, (list, tuple))).any() else col)
