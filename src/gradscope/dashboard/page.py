"""The dashboard page: views (tabs of plotly figures), run colours, and the HTML that carries it all.

A view is a tab: its figures (each a plotly layout built here with plotly's Python API), the
controls above them, and a JavaScript function that draws the figures from the page's data
(`dashboard.js` for the built-in ones). `add_view` adds one more, with a loader that puts
extra per-run data into the page: the hook for later stages (e.g. train-to-test influence).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import plotly.colors as pc
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from gradscope import layout

# The statuses of gradscope.results.run_status (the one place that decides them), each its colour.
STATUS_COLOURS = {"done": "#2ca02c", "analysing": "#ff7f0e", "training": "#1f77b4", "stopped": "#9467bd",
                  "failed": "#d62728", "damaged": "#8c564b", "pending": "#7f7f7f"}
# Statuses whose detail the pages print in full beside the run (what went wrong, and what to run).
PROBLEM_STATUSES = ("damaged", "failed", "stopped")


@dataclass
class Figure:
    id: str  # the div is fig-{id}; the view's script draws it with draw(id, ...)
    title: str
    ytitle: str = ""
    ylog: bool = False
    linked: bool = True  # x is the training step, shared by every linked figure (zoom one, zoom all)
    xtitle: str = ""
    clickable: bool = False  # clicking a point with customdata = an example id adds that example
    wide: bool = False

    def layout(self) -> dict:
        layout = go.Layout(
            title={"text": self.title, "font": {"size": 14}, "x": 0.02},
            margin={"l": 60, "r": 20, "t": 40, "b": 45}, height=340, hovermode="closest",
            paper_bgcolor="white", plot_bgcolor="white", font={"family": "sans-serif", "size": 12},
            legend={"font": {"size": 10}, "itemsizing": "constant"},
            xaxis={"title": {"text": self.xtitle}, "gridcolor": "#e5e5e5", "zeroline": False, "showline": True,
                   "linecolor": "#999"},
            yaxis={"title": {"text": self.ytitle}, "type": "log" if self.ylog else "linear", "gridcolor": "#e5e5e5",
                   "zeroline": False, "showline": True, "linecolor": "#999", "exponentformat": "power"},
        )
        return layout.to_plotly_json()


@dataclass
class View:
    key: str  # tab id, and the name its script registers under
    title: str
    figures: list[Figure]
    controls: str = ""  # HTML above the figures
    note: str = ""  # one line of help under the controls
    load: Callable[[Path], dict | None] | None = None  # extra per-run data from the run folder, at run.data[key]
    script: str = ""  # JavaScript: gradscope.registerView(key, ctx => ...); "" for the built-in views
    # sweep-level data, at data.sweep[key]: load_sweep(experiment, results, run folders) from the sweep's own
    # files (layout.sweep_file); None leaves the tab off that sweep's page (a view that applies to some sweeps only)
    load_sweep: Callable[[str, Path, list[Path]], dict | None] | None = None


def _select(id_: str, label: str, extra: str = "") -> str:
    return f'<label>{label} <select id="{id_}" {extra}></select></label>'


BUILTIN_VIEWS = [
    View("training", "Training", [
        Figure("loss", "loss: train (dotted) and test (solid)", "loss", ylog=True),
        Figure("acc", "accuracy: train (dotted) and test (solid)", "accuracy"),
        Figure("lr", "learning rate", "lr"),
        Figure("clipped", "fraction of steps clipped", "fraction"),
        Figure("grad_norm", "gradient norm (minibatch)", "‖g‖", ylog=True),
        Figure("weight_norm", "weight norm", "‖w‖"),
    ]),
    View("layers", "Optimizer & layers", [
        Figure("adam_lr", "Adam effective lr (median)", "lr / (√v̂ + ε)", ylog=True),
        Figure("adam_snr", "Adam |m̂| / √v̂ (median)", "ratio"),
        Figure("decay_ratio", "update / weight-decay ratio", "ratio", ylog=True),
        Figure("layer_weight_norm", "weight norm per layer", "‖w‖"),
        Figure("tiers", "gradient norm by weight tier: top 5% (reds), middle 90% (blues), bottom 5% (greens)", "‖g‖",
               ylog=True, wide=True),
    ], controls=_select("gs-layer", "layer"),
        note="All layers: the focus run's parameter tensors, one colour each. One layer: that layer in every chosen run."),
    View("curvature", "Curvature", [
        Figure("sharpness", "sharpness (solid) and 2/lr (dashed)", "λ_max", ylog=True),
        Figure("eigenvalues", "top Hessian eigenvalues", "eigenvalue"),
        Figure("update_sharpness", "update sharpness", "uᵀHu / uᵀu"),
        Figure("hessian_trace", "Hessian trace ± standard error", "tr H"),
        Figure("fisher_gn", "Gauss-Newton (solid, ± s.e.) and Fisher (dotted) traces", "trace"),
        Figure("input_jacobian", "input-Jacobian norm", "‖∂f/∂x‖"),
        Figure("input_hessian", "input-Hessian trace", "tr ∂²L/∂x²"),
        Figure("density", "spectral density (Hessian; Gauss-Newton dotted)", "density", ylog=True, linked=False, xtitle="eigenvalue"),
    ], controls=_select("gs-density-step", "spectral density at"),
        note="Eigenvalues and the spectral density: the focus run."),
    View("signals", "Signals", [
        Figure("flagged", "flagged examples per checkpoint", "flagged"),
        Figure("auroc", "AUROC against the planted examples", "AUROC"),
        Figure("ap", "average precision", "AP"),
        Figure("group_losses", "mean loss of the groups of one interval (opposing pairs bold)", "mean loss", ylog=True),
        Figure("dloss", "Δloss at the interval", "examples", linked=False, xtitle="Δloss"),
        Figure("loss_dist", "training loss at a checkpoint", "examples", linked=False, xtitle="loss"),
        Figure("cartography", "dataset cartography (click a point to follow the example)", "confidence", linked=False,
               xtitle="variability", clickable=True, wide=True),
    ], controls=(_select("gs-detector", "detector") + _select("gs-interval", "groups and Δloss of interval")
                 + _select("gs-checkpoint", "loss distribution at")),
        note="All detectors: the focus run, one colour per detector. One detector: every chosen run. Groups, "
             "histograms and cartography: the focus run."),
    View("examples", "Examples", [
        Figure("ex_loss", "loss of the chosen examples (mean dashed)", "loss", ylog=True),
        Figure("ex_p_true", "p(true label)", "p"),
        Figure("ex_margin", "margin", "margin"),
        Figure("ex_grad_norm", "gradient norm", "‖g_i‖", ylog=True),
        Figure("pca", "gradient projections, PCA fitted over all checkpoints (click a point to follow it)", "PC2",
               linked=False, xtitle="PC1", clickable=True, wide=True),
    ], controls=('<label>example ids <input id="gs-ex-ids" size="24" placeholder="e.g. 3, 17, 42"></label>'
                 '<button id="gs-ex-show">show</button><button id="gs-ex-clear">clear</button>'
                 '<span class="gs-sep"></span>' + _select("gs-topk-detector", "top")
                 + '<label>k <input id="gs-topk-k" type="number" min="1" value="5" style="width:3.5em"></label>'
                 + _select("gs-topk-step", "at") + '<button id="gs-topk-add">add top-k</button>'
                 + '<span class="gs-sep"></span><label>PCA at <input id="gs-pca-step" type="range" min="0" value="0">'
                 '</label> <span id="gs-pca-label"></span><div id="gs-ex-note" class="gs-note"></div>'),
        note="The focus run. Planted examples solid, others dotted; solid markers in the PCA: planted (orange), the "
             "detector's top-k at that checkpoint (blue), both (red)."),
]
VIEWS: dict[str, View] = {v.key: v for v in BUILTIN_VIEWS}


def add_view(view: View) -> None:
    """Add a tab to every dashboard built after this call (replacing one of the same key).

    view.load(run_folder) returns that run's data for the view (JSON-ready, or None when the run
    has none); view.script registers the drawing function:
    `gradscope.registerView("influence", ctx => ctx.draw("influence_top", traces, {}, "no influence yet"))`,
    where ctx.runs are the chosen runs, ctx.focus the focus run, run.data[view.key] the loaded data.
    view.load_sweep(experiment, results, run_folders) returns the sweep's data, at ctx.data.sweep[view.key]; where
    it returns None the tab is left off that sweep's page."""
    if (view.load is not None or view.load_sweep is not None) and not view.script:
        raise ValueError(f"view {view.key!r} loads data but has no script to draw it")
    VIEWS[view.key] = view


# ---- colours ------------------------------------------------------------------------------------
def run_colours(runs: list[dict], grid_keys: list[str]) -> dict:
    """{"run": {run_id: colour}, key: {run_id: colour}}: each run its own colour, or coloured by a grid value
    (numbers along Viridis by rank, other values from a qualitative palette)."""
    qual = pc.qualitative.D3 + pc.qualitative.Set2 + pc.qualitative.Dark24
    out = {"run": {r["id"]: qual[i % len(qual)] for i, r in enumerate(runs)}}
    for key in grid_keys:
        values = sorted({r["varying"].get(key) for r in runs}, key=lambda v: (not isinstance(v, (int, float)), str(v) if not isinstance(v, (int, float)) else v))
        numeric = all(isinstance(v, (int, float)) for v in values)
        if numeric and len(values) > 1:
            scale = pc.sample_colorscale("Viridis", [0.9 * i / (len(values) - 1) for i in range(len(values))])
        else:
            scale = [qual[i % len(qual)] for i in range(len(values))]
        colour_of = dict(zip(map(str, values), scale))
        out[key] = {r["id"]: colour_of[str(r["varying"].get(key))] for r in runs}
    return out


# ---- the page --------------------------------------------------------------------------------------
CSS = """
body{font-family:sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 18px;background:#263238;color:#fff;display:flex;gap:18px;align-items:baseline}
header h1{font-size:18px;margin:0} header a{color:#9cf} header .sub{color:#ccc;font-size:13px}
#gs-controls{display:flex;flex-wrap:wrap;gap:14px;padding:10px 18px;background:#fff;border-bottom:1px solid #ddd;align-items:flex-start;font-size:13px}
#gs-controls fieldset{border:1px solid #ddd;padding:4px 8px;margin:0} #gs-controls legend{font-size:12px;color:#666}
#gs-runs{min-width:260px;font-size:12px}
label{margin-right:8px;font-size:13px} select,input,button{font-size:13px}
#gs-tabs{display:flex;gap:2px;padding:8px 18px 0;border-bottom:1px solid #ccc;background:#f0f0f0}
#gs-tabs button{border:1px solid #ccc;border-bottom:none;background:#e4e4e4;padding:6px 14px;cursor:pointer;border-radius:4px 4px 0 0}
#gs-tabs button.active{background:#fff;font-weight:bold}
.gs-view{display:none;padding:8px 18px} .gs-view.active{display:block}
.gs-view .gs-viewcontrols{padding:6px 0;font-size:13px} .gs-note{color:#666;font-size:12px;padding:2px 0}
.gs-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.gs-fig{background:#fff;border:1px solid #e2e2e2;min-height:340px} .gs-fig.wide{grid-column:1/-1}
.gs-sep{display:inline-block;width:16px}
table.gs{border-collapse:collapse;font-size:13px;background:#fff} table.gs td,table.gs th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.gs th{background:#eee} table.gs td.l{text-align:left}
.st{padding:1px 6px;border-radius:3px;color:#fff;font-size:11px}
.gs-problems{padding:6px 18px;background:#fff4f0;border-bottom:1px solid #e8c4b8;font-size:12px}
.gs-problems li{margin:2px 0} .gs-detail{color:#666;font-size:11px;margin-left:6px}
"""


def _controls(grid_keys: list[str], grid_values: dict, n_runs: int) -> str:
    filters = "".join(
        f'<label>{html.escape(k)} <select id="gs-filter-{html.escape(k)}"><option value="">all</option>'
        + "".join(f'<option value="{html.escape(str(v))}">{html.escape(str(v))}</option>' for v in grid_values[k])
        + "</select></label><br>" for k in grid_keys)
    colour = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>' for k in ["run", *grid_keys])
    return (
        '<div id="gs-controls">'
        + (f"<fieldset><legend>sweep group</legend>{filters}</fieldset>" if grid_keys else "")
        + f'<fieldset><legend>runs (ctrl/shift-click for several)</legend><select id="gs-runs" multiple size="{min(8, max(3, n_runs))}"></select>'
          '<br><button id="gs-all">all shown</button></fieldset>'
        + '<fieldset><legend>view</legend>' + _select("gs-focus", "focus run") + "<br>"
        + f'<label>colour by <select id="gs-color">{colour}</select></label></fieldset>'
        + '<fieldset><legend>steps (zooming any plot zooms all)</legend>'
          '<label>from <input id="gs-step-lo" type="number" style="width:6em"></label>'
          '<label>to <input id="gs-step-hi" type="number" style="width:6em"></label>'
          '<button id="gs-step-reset">all steps</button><br><label><input id="gs-logx" type="checkbox"> log step axis</label>'
          "</fieldset></div>")


def _view_html(view: View) -> str:
    figs = "".join(f'<div class="gs-fig{" wide" if f.wide else ""}" id="fig-{f.id}"></div>' for f in view.figures)
    controls = f'<div class="gs-viewcontrols">{view.controls}</div>' if view.controls else ""
    note = f'<div class="gs-note">{html.escape(view.note)}</div>' if view.note else ""
    return f'<section class="gs-view" id="view-{view.key}">{controls}{note}<div class="gs-grid">{figs}</div></section>'


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_page(payload: dict, views: list[View], *, title: str, index_href: str | None) -> str:
    """The whole page: plotly.js and the glue inlined, the data as embedded JSON."""
    payload = {**payload, "figures": {f.id: {"layout": f.layout(), "linked": f.linked, "clickable": f.clickable}
                                      for v in views for f in v.figures}}
    grid_values = {k: sorted({str(r["varying"].get(k)) for r in payload["runs"]}) for k in payload["grid_keys"]}
    glue = resources.files("gradscope.dashboard").joinpath("dashboard.js").read_text()
    tabs = "".join(f'<button data-view="{v.key}">{html.escape(v.title)}</button>' for v in views)
    link = f' <a href="{html.escape(index_href)}">all experiments</a>' if index_href else ""
    n_runs = len(payload["runs"])
    statuses = {}
    for r in payload["runs"]:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    sub = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    problems = [r for r in payload["runs"] if r["status"] in PROBLEM_STATUSES]
    notice = ("" if not problems else '<ul id="gs-problems" class="gs-problems">' + "".join(
        f'<li><span class="st" style="background:{STATUS_COLOURS[r["status"]]}">{html.escape(r["status"])}</span> '
        f'{html.escape(r["name"])}: {html.escape(r["detail"])}</li>' for r in problems) + "</ul>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f'<header><h1>{html.escape(title)}</h1><span class="sub">{n_runs} run{"s" * (n_runs != 1)}: {html.escape(sub)}</span>{link}</header>{notice}'
        f'{_controls(payload["grid_keys"], grid_values, n_runs)}<nav id="gs-tabs">{tabs}</nav><main>'
        + "".join(_view_html(v) for v in views)
        + f'</main><script type="application/json" id="gs-data">{_json_for_script(payload)}</script>'
        f"<script>{glue}</script>"
        + "".join(f"<script>{v.script}</script>" for v in views if v.script)
        + "<script>gradscope.start();</script></body></html>\n")


def render_index(experiments: list[dict], *, title: str = "gradscope results") -> str:
    """The index over all experiments: one table per experiment, one row per run (status and headline figures)."""
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
             f"<style>{CSS} section{{padding:8px 18px}}</style></head><body><header><h1>{html.escape(title)}</h1>"
             f'<span class="sub">{len(experiments)} experiments, {sum(len(e["runs"]) for e in experiments)} runs</span>'
             "</header>"]
    for exp in experiments:
        link = (f' <a href="{html.escape(exp["href"])}">dashboard</a>' if exp.get("href") else " (no dashboard yet)")
        report = f' · <a href="{html.escape(exp["report_href"])}">{layout.IN_SWEEP["report"]}</a>' if exp.get("report_href") else ""
        cols = exp["columns"]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", "status", *cols])
        rows = []
        for r in exp["runs"]:
            colour = STATUS_COLOURS.get(r["status"], "#777")
            cells = "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols)
            detail = (f'<span class="gs-detail">{html.escape(r["detail"])}</span>'
                      if r["status"] in PROBLEM_STATUSES else "")
            rows.append(f'<tr><td class="l">{html.escape(r["name"])}</td><td class="l"><span class="st" '
                        f'style="background:{colour}" title="{html.escape(r["detail"])}">{html.escape(r["status"])}</span>'
                        f'{detail}</td>{cells}</tr>')
        parts.append(f'<section><h2>{html.escape(exp["experiment"])}{link}{report}</h2>'
                     f'<table class="gs"><tr>{head}</tr>{"".join(rows)}</table></section>')
    parts.append("</body></html>\n")
    return "".join(parts)


def _fmt(v) -> str:
    """A figure as every summary prints it (report.fmt), escaped."""
    from gradscope.report import fmt

    return html.escape(fmt(v))
