"""Interactive HTML dashboards: one per sweep (`results/sweeps/{experiment}/dashboard.html`) and an index
over all experiments (`results/index.html`).

Each page is one self-contained file (plotly.js, the glue script and the data inlined) that opens
from disk with no server and no network. The pages read only gradscope's own artifacts (see
`collect`), so `gradscope dashboard` builds the same pages from whatever a results folder holds
now, runs in training or failed included. Views are tabs of plotly figures with a shared step
axis (`page.VIEWS`); `add_view` adds one.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from gradscope import artifacts, layout
from gradscope.report import HEADLINE
from gradscope.results import headline_figures, headline_of
from gradscope.dashboard.collect import collect_run, parse_varying, read_metrics, run_status
from gradscope.dashboard.page import VIEWS, Figure, View, add_view, render_index, render_page, run_colours
from gradscope.dashboard import influence as _influence  # noqa: F401, E402  (registers the Influence tab)
from gradscope.dashboard import timeline as _timeline  # noqa: F401, E402  (registers the Timeline tab)
from gradscope.dashboard import interventions as _interventions  # noqa: F401, E402  (the Interventions tab)

# The index, as a sweep's dashboard links it (relative: the pages open from disk anywhere).
INDEX_FROM_SWEEP = Path(os.path.relpath(layout.INDEX, Path(layout.SWEEP["dashboard"]).parent)).as_posix()

__all__ = ["View", "Figure", "add_view", "build_sweep_dashboard", "build_index", "build_dashboards", "default_settings"]
log = logging.getLogger(__name__)

INDEX_COLUMNS = HEADLINE  # the headline figures of every summary (report.HEADLINE)


def default_settings() -> dict:
    """The `dashboard` block's defaults, from the config schema (their one source)."""
    from gradscope.config import load_schema

    props = load_schema()["properties"]["dashboard"]["properties"]
    return {k: v["default"] for k, v in props.items()}


def build_sweep_dashboard(experiment: str, runs: list[dict], *, results, settings: dict, out, logs_dir=None,
                          index_href: str | None = INDEX_FROM_SWEEP) -> dict:
    """Write one sweep's dashboard. runs: [{"id": "exp/name", "name": ..., "varying": {...}}] ("varying" is
    parsed from the name where missing); each run's folder is results/runs/{id}, the sweep's own files (an
    intervention's effects: the Interventions tab) results/sweeps/{experiment}. Returns the page's data."""
    results = Path(results)
    folders = [layout.run_dir(run["id"], results) for run in runs]
    # the sweep-level views' data (from the sweep's own files); a view whose loader returns None is left off
    sweep = {key: data for key, view in VIEWS.items() if view.load_sweep is not None
             and (data := view.load_sweep(experiment, results, folders)) is not None}
    views = [v for v in VIEWS.values() if v.load_sweep is None or v.key in sweep]
    entries = []
    for run, folder in zip(runs, folders):
        status = run_status(folder, logs_dir)
        data = collect_run(folder, max_examples=settings["max_examples"], top_k=settings["top_k"], seed=settings["seed"])
        problems = data.pop("problems", [])
        for view in views:
            if view.load is not None:
                try:
                    extra = view.load(folder)
                except (OSError, ValueError) as e:  # a damaged file: the view shows nothing for this run
                    problems.append(str(e).splitlines()[0])
                    extra = None
                if extra is not None:
                    data[view.key] = extra
        if problems and status["status"] != "damaged":  # a file the cheap checks pass but that does not read
            status = {"status": "damaged", "detail": problems[0]}
        if problems:
            log.warning("dashboard of %s: %s is damaged: %s", experiment, run["id"], "; ".join(problems))
        varying = run.get("varying") or parse_varying(run["name"])
        entries.append({"id": run["id"], "name": run["name"], "varying": varying,
                        "varying_text": {k: str(v) for k, v in varying.items()}, **status, "data": data})
    grid_keys = [k for k in dict.fromkeys(k for e in entries for k in e["varying"])
                 if len({str(e["varying"].get(k)) for e in entries}) > 1]
    payload = {"experiment": experiment, "runs": entries, "grid_keys": grid_keys,
               "colors": run_colours(entries, grid_keys), "palette": _palette(),
               "settings": {**default_settings(), **settings}, "logx": _logx(entries),
               "sweep": sweep}
    text = render_page(payload, views, title=f"gradscope · {experiment}", index_href=index_href)
    artifacts.write_text(text, out)
    log.info("dashboard of %s: %d runs, %.1f MB", experiment, len(entries), len(text.encode()) / 1e6)
    return payload


def _palette() -> list[str]:
    import plotly.colors as pc

    return pc.qualitative.D3 + pc.qualitative.Dark2


def _logx(entries) -> bool:
    """Start on a log step axis where the checkpoints are log-spaced (they span more than two decades)."""
    steps = sorted({s for e in entries for s in (e["data"].get("examples") or {}).get("step", []) if s > 0})
    return len(steps) > 2 and steps[-1] / steps[0] > 100


def index_row(folder: Path, logs_dir=None) -> dict:
    """One run's row of the index: its status and, as far as it got, its headline figures."""
    row = {"name": folder.name, **run_status(folder, logs_dir)}
    try:  # a damaged run: its status says which file; the figures that read are shown
        metrics = read_metrics(folder)
    except (OSError, ValueError) as e:
        metrics, row = None, _damaged(row, e)
    # the headline figures as far as the run got, as `gradscope runs` and the reports show them (report.HEADLINE)
    row.update(headline_figures(headline_of(folder, metrics=metrics)))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _damaged(row: dict, error: Exception) -> dict:
    """The row of a run with a file that does not read: damaged, naming the file, unless it already is."""
    return row if row["status"] == "damaged" else {**row, "status": "damaged", "detail": str(error).splitlines()[0]}


def build_index(experiments: dict[str, list[str]], *, results, out, logs_dir=None, link_reports: bool = False) -> None:
    """Write the index page. experiments: {experiment: [run ids]}; dashboards linked where they exist, sweep
    reports where they exist or, with link_reports (the workflow, which builds them too), always."""
    results, out = Path(results), Path(out)
    sections = []
    for exp, run_ids in experiments.items():
        rows = [index_row(layout.run_dir(rid, results), logs_dir) for rid in run_ids]
        cols = list(INDEX_COLUMNS)  # every one, – where missing or not applicable: as `gradscope runs` shows them
        dash, report = layout.sweep_file("dashboard", exp, results), layout.sweep_file("report", exp, results)
        sections.append({"experiment": exp, "runs": rows, "columns": cols,
                         "href": _rel(dash, out.parent) if dash.exists() else None,
                         "report_href": _rel(report, out.parent) if link_reports or report.exists() else None})
    artifacts.write_text(render_index(sections), out)


def _rel(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


def discover(results) -> dict[str, list[str]]:
    """{experiment: [run ids]} of every run folder under results/runs (a run has a config.yaml or a train/ folder:
    the runs `gradscope runs` lists)."""
    from gradscope.results import run_folders

    found: dict[str, list[str]] = {}
    for folder in run_folders(results):
        found.setdefault(folder.parent.name, []).append(f"{folder.parent.name}/{folder.name}")
    return found


def build_dashboards(results, *, settings: dict | None = None, logs_dir=None, statuses: dict | None = None) -> list[Path]:
    """Every sweep's dashboard and the index from what `results` holds now (the `gradscope dashboard` command).
    statuses: a dict to fill with each run's {"status", "detail"} as the pages show them, by run id."""
    results = Path(results)
    settings = {**default_settings(), **(settings or {})}
    logs_dir = Path(logs_dir) if logs_dir is not None else layout.logs_beside(results.resolve())
    experiments = discover(results)
    written = []
    for exp, run_ids in experiments.items():
        out = layout.sweep_file("dashboard", exp, results)
        payload = build_sweep_dashboard(exp, [{"id": rid, "name": rid.split("/", 1)[1]} for rid in run_ids],
                                        results=results, settings=settings, out=out, logs_dir=logs_dir)
        if statuses is not None:
            statuses.update({r["id"]: {"status": r["status"], "detail": r["detail"]} for r in payload["runs"]})
        written.append(out)
    index = results / Path(layout.INDEX).relative_to(layout.RESULTS)
    build_index(experiments, results=results, out=index, logs_dir=logs_dir)
    return [index, *written]
