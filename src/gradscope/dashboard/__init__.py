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
from gradscope.dashboard.collect import collect_run, parse_varying, read_metrics, run_status
from gradscope.dashboard.page import VIEWS, Figure, View, add_view, render_index, render_page, run_colours
from gradscope.dashboard import influence as _influence  # noqa: F401, E402  (registers the Influence tab)

# The index, as a sweep's dashboard links it (relative: the pages open from disk anywhere).
INDEX_FROM_SWEEP = Path(os.path.relpath(layout.INDEX, Path(layout.SWEEP["dashboard"]).parent)).as_posix()

__all__ = ["View", "Figure", "add_view", "build_sweep_dashboard", "build_index", "build_dashboards", "default_settings"]
log = logging.getLogger(__name__)

INDEX_COLUMNS = ["final_train_acc", "final_test_acc", "step_generalized", "max_sharpness", "sharpness_threshold",
                 "best_detector", "best_detector_final_auroc"]


def default_settings() -> dict:
    """The `dashboard` block's defaults, from the config schema (their one source)."""
    from gradscope.config import load_schema

    props = load_schema()["properties"]["dashboard"]["properties"]
    return {k: v["default"] for k, v in props.items()}


def build_sweep_dashboard(experiment: str, runs: list[dict], *, results, settings: dict, out, logs_dir=None,
                          index_href: str | None = INDEX_FROM_SWEEP) -> dict:
    """Write one sweep's dashboard. runs: [{"id": "exp/name", "name": ..., "varying": {...}}] ("varying" is
    parsed from the name where missing); each run's folder is results/runs/{id}. Returns the page's data."""
    results = Path(results)
    entries = []
    for run in runs:
        folder = layout.run_dir(run["id"], results)
        status = run_status(folder, logs_dir)
        data = collect_run(folder, max_examples=settings["max_examples"], top_k=settings["top_k"], seed=settings["seed"])
        for view in VIEWS.values():
            if view.load is not None:
                extra = view.load(folder)
                if extra is not None:
                    data[view.key] = extra
        varying = run.get("varying") or parse_varying(run["name"])
        entries.append({"id": run["id"], "name": run["name"], "varying": varying,
                        "varying_text": {k: str(v) for k, v in varying.items()}, **status, "data": data})
    grid_keys = [k for k in dict.fromkeys(k for e in entries for k in e["varying"])
                 if len({str(e["varying"].get(k)) for e in entries}) > 1]
    payload = {"experiment": experiment, "runs": entries, "grid_keys": grid_keys,
               "colors": run_colours(entries, grid_keys), "palette": _palette(),
               "settings": {**settings, "initial_runs": settings.get("initial_runs", 20)}, "logx": _logx(entries)}
    text = render_page(payload, list(VIEWS.values()), title=f"gradscope · {experiment}", index_href=index_href)
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
    metrics = read_metrics(folder)
    if metrics is not None and len(metrics):
        last = metrics.sort_values("step").iloc[-1]
        row.update(final_train_acc=float(last["train_acc"]), final_test_acc=float(last["test_acc"]))
    summary = layout.in_run(folder, "signals_summary")
    if summary.exists():
        s = artifacts.read_json(summary)
        row["step_generalized"] = s.get("generalization", {}).get("step_generalized")
        row.update({k: v for k, v in (s.get("headline") or {}).items() if k in INDEX_COLUMNS})
    curv = layout.tables_in(folder, "curvature")
    if curv:
        c = artifacts.read_partitions(curv)
        row.update(max_sharpness=float(c["sharpness"].max()), sharpness_threshold=float(c["sharpness_threshold"].iloc[0]))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def build_index(experiments: dict[str, list[str]], *, results, out, logs_dir=None, link_reports: bool = False) -> None:
    """Write the index page. experiments: {experiment: [run ids]}; dashboards linked where they exist, sweep
    reports where they exist or, with link_reports (the workflow, which builds them too), always."""
    results, out = Path(results), Path(out)
    sections = []
    for exp, run_ids in experiments.items():
        rows = [index_row(layout.run_dir(rid, results), logs_dir) for rid in run_ids]
        cols = [c for c in INDEX_COLUMNS if any(r.get(c) is not None for r in rows)]
        dash, report = layout.sweep_file("dashboard", exp, results), layout.sweep_file("report", exp, results)
        sections.append({"experiment": exp, "runs": rows, "columns": cols,
                         "href": _rel(dash, out.parent) if dash.exists() else None,
                         "report_href": _rel(report, out.parent) if link_reports or report.exists() else None})
    artifacts.write_text(render_index(sections), out)


def _rel(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


def discover(results) -> dict[str, list[str]]:
    """{experiment: [run ids]} of every run folder under results/runs (a run has a config.yaml or a train/ folder)."""
    found: dict[str, list[str]] = {}
    for folder in layout.run_folders(results):
        if (layout.in_run(folder, "config").exists() or layout.in_run(folder, "metrics").parent.exists()):
            found.setdefault(folder.parent.name, []).append(f"{folder.parent.name}/{folder.name}")
    return found


def build_dashboards(results, *, settings: dict | None = None, logs_dir=None) -> list[Path]:
    """Every sweep's dashboard and the index from what `results` holds now (the `gradscope dashboard` command)."""
    results = Path(results)
    settings = {**default_settings(), **(settings or {})}
    logs_dir = Path(logs_dir) if logs_dir is not None else results.resolve().parent / "logs"
    experiments = discover(results)
    written = []
    for exp, run_ids in experiments.items():
        out = layout.sweep_file("dashboard", exp, results)
        build_sweep_dashboard(exp, [{"id": rid, "name": rid.split("/", 1)[1]} for rid in run_ids], results=results,
                              settings=settings, out=out, logs_dir=logs_dir)
        written.append(out)
    index = results / Path(layout.INDEX).relative_to(layout.RESULTS)
    build_index(experiments, results=results, out=index, logs_dir=logs_dir)
    return [index, *written]
