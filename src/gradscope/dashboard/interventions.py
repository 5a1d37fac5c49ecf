"""The dashboard's Interventions tab: an intervention experiment's effects (gradscope.interventions: each figure's
flagged minus control over seeds, with its interval) against k, one small plot per figure and one line per
detector and action, and its runs' figures, parent's first. Added through `add_view`, as a sweep-level view
(`View.load_sweep`): it reads the sweep's tables (layout.SWEEP's interventions and effects, written by rule
interventions), and only an intervention experiment's page has the tab.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from gradscope import artifacts, layout
from gradscope.dashboard.collect import clean
from gradscope.dashboard.page import Figure, View, add_view
from gradscope.interventions import ARMS, CONFIDENCE, FIGURES

TABLES = ("effects", "interventions")  # the sweep's tables the tab reads (layout.IN_SWEEP)
NO_INTERVENTIONS = "no intervention tables for this experiment yet: run snakemake to make them"
ARM_ORDER = ("parent", *ARMS)  # the runs table's rows: the parent's first


def is_intervention(folders) -> bool:
    """Whether the runs are an intervention's: a run's config.yaml has an `intervene` block (those of runs not
    resolved yet say nothing)."""
    for folder in folders:
        path = layout.in_run(folder, "config")
        if path.exists():
            try:
                if (yaml.safe_load(path.read_text()) or {}).get("intervene"):
                    return True
            except (OSError, yaml.YAMLError):
                continue
    return False


def _value(v):
    return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: clean(_value(v)) for k, v in r.items()} for r in df.astype(object).to_dict("records")]


def load_sweep(experiment: str, results, folders) -> dict | None:
    """The experiment's effects and per-run figures for the page; None where it is no intervention (no tab).
    An intervention whose tables are not written yet (or do not read) gets the tab with a message saying so."""
    paths = {name: layout.sweep_file(name, experiment, results) for name in TABLES}
    if not any(p.exists() for p in paths.values()) and not is_intervention(map(Path, folders)):
        return None
    out = {"figures": [{"key": k, "label": v} for k, v in FIGURES.items()], "confidence": CONFIDENCE,
           "effects": None, "runs": None, "columns": [], "missing": []}
    tables = {}
    absent = [layout.IN_SWEEP[name] for name, path in paths.items() if not path.exists()]
    if absent:
        out["missing"].append(f"{NO_INTERVENTIONS} (not written: {', '.join(absent)})")
    for name, path in paths.items():
        if not path.exists():
            continue
        try:
            tables[name] = artifacts.read_parquet(path)
        except (OSError, ValueError) as e:  # a damaged table: the tab says which
            out["missing"].append(f"{layout.IN_SWEEP[name]} does not read ({str(e).splitlines()[0]}): "
                                  "run snakemake to write it again")
    if "effects" in tables:
        effects = tables["effects"].sort_values(["figure", "detector", "action", "k"], kind="stable")
        out["effects"] = _records(effects)
    if "interventions" in tables:
        runs = tables["interventions"]
        order = runs["arm"].map({a: i for i, a in enumerate(ARM_ORDER)}).fillna(len(ARM_ORDER))
        runs = (runs.assign(_order=order).sort_values(["_order", "detector", "action", "k", "seed", "run_id"],
                                                      kind="stable", na_position="first").drop(columns="_order"))
        out["columns"] = ([f for f in FIGURES if f in runs.columns]
                          + sorted(c for c in runs.columns if c.startswith("test_acc_")))
        out["runs"] = _records(runs)
    return out


SCRIPT = r"""
gradscope.registerView('interventions', ctx => {
  const $ = id => document.getElementById(id);
  const iv = (ctx.data.sweep || {}).interventions;
  const given = v => v !== null && v !== undefined && (typeof v !== 'number' || isFinite(v));
  const num = v => !given(v) ? '–' : typeof v === 'number' ? String(+v.toPrecision(4)) : String(v);
  const esc = v => String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const note = $('gs-iv-note'), conf = `${Math.round(100 * iv.confidence)}%`;
  note.innerHTML = iv.missing.map(m => `<div style="color:#b03a2e">${esc(m)}</div>`).join('');
  // the runs' table under the plots (made once: the view's controls stand above them)
  let table = $('gs-iv-runs');
  if (!table) {
    table = document.createElement('div');
    table.id = 'gs-iv-runs';
    table.style.margin = '10px 0';
    $('view-interventions').appendChild(table);
  }
  // ---- one small plot per figure: effect ± its interval against k, a line per detector and action
  const effects = iv.effects || [];
  const lines = [...new Set(effects.map(e => `${e.detector}\u0000${e.action}`))].sort();
  iv.figures.forEach(f => {
    const el = $('fig-iv_' + f.key), mine = effects.filter(e => e.figure === f.key);
    const measured = mine.some(e => given(e.effect));
    // a figure nothing measured, or no effects table (the note above says why): no plot
    if (el) el.style.display = measured ? '' : 'none';
    if (!measured) return;
    const traces = [], ys = [0], ks = [];
    lines.forEach((key, j) => {
      const [detector, action] = key.split('\u0000');
      const pts = mine.filter(e => e.detector === detector && e.action === action && given(e.effect)).sort((a, b) => a.k - b.k);
      if (!pts.length) return;
      const color = ctx.palette(j), seeds = Math.max(...pts.map(e => e.n_seeds));
      pts.forEach(e => { ks.push(e.k); ys.push(e.effect); if (given(e.ci_low)) ys.push(e.ci_low, e.ci_high); });
      traces.push({type: 'scatter', mode: 'lines+markers', name: `${detector}, ${action} (${seeds} seed${seeds === 1 ? '' : 's'})`,
        x: pts.map(e => e.k), y: pts.map(e => e.effect), line: {color, width: 1.8},
        marker: {size: 9, color, symbol: pts.map(e => e.beyond_spread ? 'circle' : 'circle-open'), line: {color, width: 1.5}},
        error_y: {type: 'data', symmetric: false, visible: true, color, thickness: 1.3, width: 5,
                  array: pts.map(e => given(e.ci_high) ? e.ci_high - e.effect : 0),
                  arrayminus: pts.map(e => given(e.ci_low) ? e.effect - e.ci_low : 0)},
        hovertext: pts.map(e => `${detector}, ${action}, k = ${e.k}<br>effect ${num(e.effect)}` +
          (given(e.ci_low) ? ` [${num(e.ci_low)}, ${num(e.ci_high)}] (${conf} t interval)` : ' (one seed: no interval)') +
          `<br>flagged ${num(e.flagged_mean)}, control ${num(e.control_mean)}, parent ${num(e.parent_mean)}` +
          `<br>${e.n_seeds} seed${e.n_seeds === 1 ? '' : 's'}; beyond the seed-to-seed spread: ${e.beyond_spread ? 'yes' : 'no'}` +
          (given(e.control_sd) ? ` (control sd ${num(e.control_sd)}, effect sd ${num(e.effect_sd)})` : '')),
        hoverinfo: 'text'});
    });
    const lo = Math.min(...ys), hi = Math.max(...ys), pad = 0.08 * ((hi - lo) || Math.abs(hi) || 1);
    const kset = [...new Set(ks)].sort((a, b) => a - b);
    // the legend under the k axis, across the plot (a legend beside it would narrow a small plot)
    ctx.draw('iv_' + f.key, traces, {
      height: 330 + 18 * Math.ceil(traces.length / 2), margin: {l: 60, r: 20, t: 40, b: 45},
      showlegend: true, legend: {orientation: 'h', x: 0, xanchor: 'left', y: -0.2, yanchor: 'top', font: {size: 11}},
      shapes: [{type: 'line', xref: 'paper', yref: 'y', x0: 0, x1: 1, y0: 0, y1: 0, line: {color: '#555', dash: 'dash', width: 1.2}}],
      yaxis: {range: [lo - pad, hi + pad], autorange: false},
      xaxis: kset.length <= 8 ? {tickmode: 'array', tickvals: kset, type: 'linear'} : {type: 'linear'}},
      `no ${f.label} measured`);
  });
  // ---- the runs: arm, detector, k, action, seed and the figures, the parent's first
  if (!iv.runs) { table.innerHTML = ''; return; }
  const label = c => (iv.figures.find(f => f.key === c) || {label: c.replace(/^test_acc_/, 'test accuracy, group ')}).label;
  const head = ['run', 'arm', 'detector', 'k', 'action', 'seed', ...iv.columns.map(label)];
  const ARM = {parent: '#555', flagged: '#d62728', control: '#1f77b4'};
  table.innerHTML = `<div class="gs-note">Each run's figures (${iv.runs.length} runs; the parent's first)</div>` +
    '<table class="gs"><tr>' + head.map(h => `<th>${esc(h)}</th>`).join('') + '</tr>' +
    iv.runs.map(r => `<tr><td class="l">${esc(r.run_id)}</td>` +
      `<td class="l" style="color:${ARM[r.arm] || '#222'}">${esc(r.arm)}</td><td class="l">${esc(num(r.detector))}</td>` +
      `<td>${num(r.k)}</td><td class="l">${esc(num(r.action))}</td><td>${num(r.seed)}</td>` +
      iv.columns.map(c => `<td>${num(r[c])}</td>`).join('') + '</tr>').join('') + '</table>';
});
"""

VIEW = View(
    "interventions", "Interventions",
    [Figure(f"iv_{key}", f"{label}: flagged − control", f"Δ {label}", linked=False, xtitle="k (examples intervened on)")
     for key, label in FIGURES.items()],
    controls=('<style>#view-interventions .gs-grid{grid-template-columns:repeat(auto-fill,minmax(440px,1fr))}'
              '#view-interventions .gs-fig{min-height:0}</style><div id="gs-iv-note"></div>'),
    note=f"Each effect is flagged minus control, paired by seed: its mean over seeds, bars a {CONFIDENCE:.0%} t "
         "interval (none with one seed). Filled markers: beyond the seed-to-seed spread; open: within it (or one "
         "seed: no spread to compare with). Hover a point for the arms' means. A figure no intervention measured "
         "has no plot.",
    load_sweep=load_sweep, script=SCRIPT)

add_view(VIEW)
