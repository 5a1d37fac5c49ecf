"""The dashboard's Timeline tab: one run's loss spikes, sharpness against 2/lr and its top opposing
pair's group losses on one step axis, with the links between them (the timeline stage,
gradscope.timeline: the run's timeline events, links and summary). Added through `add_view`.

The panels share the page's step axis: zooming one zooms them all (and every other tab's). The
training loss and the sharpness come from the data the Training and Curvature tabs already carry
(run.data.metrics, run.data.curvature); this loader adds the events, the links of each spike, the
summary, and the loss curves of the pair of groups the antiphase events name.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gradscope import artifacts, layout
from gradscope.dashboard.collect import clean
from gradscope.dashboard.page import Figure, View, add_view

NO_TIMELINE = "no timeline for this run: run snakemake to make it"


def path(folder, name: str) -> Path:
    """A run's timeline file (layout's timeline_{name})."""
    return layout.in_run(folder, f"timeline_{name}")


def _num(v):
    return None if v is None or (not isinstance(v, (str, dict, list)) and pd.isna(v)) else v


def _int(v):
    return None if _num(v) is None else int(v)


def _bool(v):
    return None if _num(v) is None else bool(v)


def antiphase_pair(antiphase: pd.DataFrame) -> tuple[int, int, int] | None:
    """(step_from, group_a, group_b) of the pair the antiphase events name (the timeline stage names one,
    its top pair): where they name several, the one in antiphase longest (summed interval length), ties
    to the strongest |correlation|; None without antiphase events."""
    d = antiphase.dropna(subset=["group_a", "group_b", "step_from"])
    if d.empty:
        return None
    d = d.assign(length=(d["step_end"] - d["step_start"]).astype(float).fillna(0),
                 strength=d["value"].astype(float).abs().fillna(0))
    agg = (d.groupby(["step_from", "group_a", "group_b"], sort=True)
           .agg(length=("length", "sum"), strength=("strength", "max")).reset_index()
           .sort_values(["length", "strength"], ascending=False, kind="stable"))
    best = agg.iloc[0]
    return int(best["step_from"]), int(best["group_a"]), int(best["group_b"])


def pair_losses(folder: Path, pair: tuple[int, int, int]) -> dict | None:
    """The pair's two mean-loss curves over every checkpoint (signals/group_losses.parquet) and its
    cosine (group_pairs.parquet); None where the signals stage has not written them."""
    losses_path, pairs_path = layout.in_run(folder, "signals_group_losses"), layout.in_run(folder, "signals_group_pairs")
    if not losses_path.exists():
        return None
    step_from, a, b = pair
    losses = artifacts.read_parquet(losses_path)
    losses = losses[losses["step_from"] == step_from]
    la = losses[losses["group"] == a].groupby("step")["mean_loss"].mean()
    lb = losses[losses["group"] == b].groupby("step")["mean_loss"].mean()
    if la.empty or lb.empty:
        return None
    both = pd.concat({"a": la, "b": lb}, axis=1).sort_index()
    out = {"a": a, "b": b, "from": step_from, "to": _int(losses["step_to"].iloc[0]), "cosine": None,
           "step": clean(both.index.to_numpy()), "loss_a": clean(both["a"].to_numpy()), "loss_b": clean(both["b"].to_numpy())}
    if pairs_path.exists():
        pairs = artifacts.read_parquet(pairs_path)
        p = pairs[(pairs["step_from"] == step_from)
                  & (((pairs["group_a"] == a) & (pairs["group_b"] == b)) | ((pairs["group_a"] == b) & (pairs["group_b"] == a)))]
        if len(p):
            out["cosine"] = clean(p["cosine"].iloc[0])
    return out


def load(folder: Path) -> dict | None:
    """The run's timeline for the page; None where the run has none yet (older results, or the stage
    has not run). Spikes carry their links (links.parquet); the pair is the summary's (the run's top
    pair of opposing groups), else the one the antiphase events name, with its groups' loss curves."""
    folder = Path(folder)
    if not path(folder, "events").exists():
        return None
    events = artifacts.read_parquet(path(folder, "events")).sort_values("step", kind="stable")
    links = artifacts.read_parquet(path(folder, "links")) if path(folder, "links").exists() else None
    summary = artifacts.read_json(path(folder, "summary")) if path(folder, "summary").exists() else None
    link_of = {} if links is None else {round(float(r["step"]), 6): r for r in links.to_dict("records")}

    def kind(name):
        return events[events["kind"] == name].to_dict("records")

    def point(r):  # steps stay floats: a crossing is interpolated between checkpoints
        return {"step": _num(r["step"]), "value": _num(r.get("value")), "resolution": _num(r.get("resolution")),
                "start": _num(r.get("step_start")), "end": _num(r.get("step_end"))}

    spikes = []
    for r in kind("loss_spike"):
        link = link_of.get(round(float(r["step"]), 6), {})
        spikes.append({**point(r), "window": _num(link.get("window")),
                       "nearest_crossing": _num(link.get("nearest_crossing_step")),
                       "nearest_kind": _num(link.get("nearest_crossing_kind")),
                       "distance": _num(link.get("crossing_distance")), "near_crossing": _bool(link.get("near_crossing")),
                       "antiphase_active": _bool(link.get("antiphase_active"))})
    antiphase = events[events["kind"] == "antiphase"]
    intervals = [{"start": _num(r["step_start"]), "end": _num(r["step_end"]), "value": _num(r["value"]),
                  "a": _int(r.get("group_a")), "b": _int(r.get("group_b")), "from": _int(r.get("step_from"))}
                 for r in antiphase.to_dict("records")]
    top = (summary or {}).get("pair")
    pair = ((int(top["step_from"]), int(top["group_a"]), int(top["group_b"])) if isinstance(top, dict)
            else antiphase_pair(antiphase))
    out = {"spikes": spikes, "antiphase": intervals,
           **{k: [point(r) for r in kind(e)]
              for k, e in (("reach", "sharpness_reach"), ("leave", "sharpness_leave"),
                           ("generalization", "generalization"), ("memorization", "memorization"))},
           "pair": pair_losses(folder, pair) if pair else None, "summary": summary}
    return clean(out)


SCRIPT = r"""
gradscope.registerView('timeline', ctx => {
  const $ = id => document.getElementById(id);
  const NONE = 'no timeline for this run: run snakemake to make it';
  const num = (v, d) => (v === null || v === undefined || !isFinite(v)) ? '–' : (d === undefined ? String(+(+v).toPrecision(3)) : (+v).toFixed(d));
  // ---- a row per chosen run: how many spikes fall near a crossing, and with an antiphase pair active,
  // against the same events shuffled in time
  const given = v => v !== null && v !== undefined;
  const row = run => {
    const t = run.data.timeline, s = t && t.summary;
    if (!t) return `<td class="l">${run.name}</td><td class="l" colspan="6">${NONE}</td>`;
    if (!s) return `<td class="l">${run.name}</td><td>${t.spikes.length}</td><td class="l" colspan="5">no timeline summary</td>`;
    // k of n spikes, and the fraction expected of the same events shuffled in time (mean ± sd over the shuffles)
    const pct = v => given(v) ? `${(100 * v).toFixed(0)}%` : '–';
    const part = (k, n, what) => !n ? `no ${what}s` : !given(s[k]) ? '–' :
      `${s[k]} of ${s.n_spikes}` + (given(s[k + '_fraction']) ? ` (${pct(s[k + '_fraction'])})` : '') +
      `; by chance ${pct(s[k + '_expected'])}` + (given(s[k + '_expected_sd']) ? ` ± ${pct(s[k + '_expected_sd'])}` : '') +
      (given(s[k + '_p']) ? `, p = ${num(s[k + '_p'])}` : '') + `; ${n} ${what}${n === 1 ? '' : 's'}`;
    const win = given(s.window) ? `±${num(s.window)}` : given(s.window_min)
      ? `±${num(s.window_min)}` + (s.window_max > s.window_min ? ` to ±${num(s.window_max)}` : '') : '–';
    const res = [given(s.spike_resolution) ? `spikes ${num(s.spike_resolution)}` : '',
                 given(s.crossing_resolution_max) ? `crossings ≤ ${num(s.crossing_resolution_max)}` : '',
                 given(s.antiphase_resolution_max) ? `antiphase ≤ ${num(s.antiphase_resolution_max)}` : ''].filter(Boolean).join(', ')
      || (typeof s.resolution === 'number' ? num(s.resolution) : '–');
    const note = typeof s.resolution === 'string' ? s.resolution.replace(/"/g, '&quot;') : '';
    return `<td class="l">${run.name}</td><td>${s.n_spikes}</td>` +
      `<td class="l">${part('spikes_near_crossing', s.n_crossings, '2/lr crossing')}</td>` +
      `<td class="l">${part('spikes_with_antiphase', s.n_antiphase, 'antiphase interval')}</td>` +
      `<td>${given(s.loss_group_correlation) ? num(s.loss_group_correlation, 2) : '–'}</td>` +
      `<td>${win}</td><td class="l" title="${note}"${note ? ' style="text-decoration:underline dotted;cursor:help"' : ''}>${res}</td>`;
  };
  $('gs-tl-summary').innerHTML = !ctx.runs.length ? 'no run chosen' :
    '<table class="gs"><tr><th>run</th><th>loss spikes</th><th>near a 2/lr crossing</th><th>with an antiphase pair active</th>' +
    '<th title="correlation of the training loss\'s oscillation with the pair\'s loss difference">r(loss, pair Δ)</th>' +
    '<th>window (steps)</th><th>resolution (steps)</th></tr>' + ctx.runs.map(r => `<tr>${row(r)}</tr>`).join('') + '</table>';

  const run = ctx.focus, t = run && run.data.timeline;
  const why = !run ? 'no run chosen' : `${run.name}: ${NONE}`;
  const ids = ['tl_loss', 'tl_sharpness', 'tl_groups'];
  // fixed margins (the legend inside the right one) and the same x extent in every panel: the step axes line up
  const base = {height: 270, margin: {l: 80, r: 270, t: 34, b: 40, autoexpand: false},
                legend: {x: 1.01, xanchor: 'left', y: 1, yanchor: 'top', font: {size: 10}}, showlegend: true};
  if (!t) { ids.forEach(id => ctx.draw(id, [], base, why)); return; }
  const X = s => ctx.xs([s])[0];
  const m = run.data.metrics, c = run.data.curvature;
  // the value of a series at a step: linear between its two neighbours (crossings lie between checkpoints)
  function at(steps, ys, s) {
    if (!steps || !steps.length) return null;
    let j = steps.findIndex(v => v >= s);
    if (j === 0 || (j > 0 && steps[j] === s)) return ys[j];
    if (j < 0) return ys[steps.length - 1];
    const [x0, x1, y0, y1] = [steps[j - 1], steps[j], ys[j - 1], ys[j]];
    if (y0 === null || y1 === null) return y0 === null ? y1 : y0;
    return y0 + (y1 - y0) * (s - x0) / (x1 - x0);
  }
  const vline = (s, color, dash, width) => ({type: 'line', xref: 'x', yref: 'paper', x0: X(s), x1: X(s), y0: 0, y1: 1,
                                             line: {color, dash, width: width || 1.5}, layer: 'below'});
  const key = (name, line, marker) => Object.assign({type: 'scatter', x: [null], y: [null], name, hoverinfo: 'skip',
                                                     styleKey: true, legendrank: 1100},
                                                    marker ? {mode: 'markers', marker} : {mode: 'lines', line});
  // generalization (green dashed) and memorization (brown dash-dot) steps: on every panel
  const GEN = '#2ca02c', MEM = '#8c564b', SPIKE = '#d62728', ANTI = 'rgba(148, 103, 189, 0.22)';
  const events = [], eventKeys = [];
  t.generalization.forEach(e => events.push(vline(e.step, GEN, 'dash', 2)));
  t.memorization.forEach(e => events.push(vline(e.step, MEM, 'dashdot', 2)));
  if (t.generalization.length) eventKeys.push(key('generalization step', {color: GEN, dash: 'dash', width: 2}));
  if (t.memorization.length) eventKeys.push(key('memorization step', {color: MEM, dash: 'dashdot', width: 2}));
  // every panel spans the same steps, padded alike: an invisible marker at the first and last step of them all
  const all = [m && m.step, c && c.step, t.pair && t.pair.step,
               [...t.spikes, ...t.reach, ...t.leave, ...t.generalization, ...t.memorization].map(e => e.step),
               t.antiphase.flatMap(e => [e.start, e.end])].flat().filter(v => v !== null && v !== undefined);
  const lo = Math.min(...all), hi = Math.max(...all);
  const anchored = traces => {
    const data = traces.filter(d => !d.styleKey), y = data.flatMap(d => Array.from(d.y)).find(v => v !== null && isFinite(v));
    return data.length && all.length ? [...traces, {type: 'scatter', mode: 'markers', x: [X(lo), X(hi)], y: [y, y], showlegend: false,
                                                    hoverinfo: 'skip', marker: {size: 13, opacity: 0}, styleKey: true}] : traces;
  };
  const spikeLines = t.spikes.map(e => vline(e.step, 'rgba(214, 39, 40, 0.35)', 'dot', 1));
  const spikeKey = t.spikes.length ? [key('loss spike (step)', {color: 'rgba(214, 39, 40, 0.6)', dash: 'dot', width: 1})] : [];

  // ---- 1: training loss, spikes marked (filled: within the window of a 2/lr crossing)
  const loss = [];
  if (m && m.train_loss) loss.push({type: 'scatter', mode: m.step.length > 60 ? 'lines' : 'lines+markers', x: ctx.xs(m.step),
                                    y: m.train_loss, name: 'training loss', line: {color: '#1f77b4', width: 1.5},
                                    marker: {size: 3, color: '#1f77b4'}, customdata: m.step,
                                    hovertemplate: 'step %{customdata}<br>train loss %{y:.4g}<extra></extra>'});
  const spikeTrace = (list, name, open) => ({
    type: 'scatter', mode: 'markers', name, x: list.map(e => X(e.step)),
    y: list.map(e => (m && m.train_loss ? at(m.step, m.train_loss, e.step) : null) ?? e.value),
    marker: {symbol: open ? 'triangle-up-open' : 'triangle-up', size: 11, color: SPIKE, line: {color: SPIKE, width: 1.5}},
    hovertext: list.map(e => `loss spike at step ${num(e.step)}` + (e.start !== null ? ` (${num(e.start)}–${num(e.end)})` : '') +
      (e.value !== null ? `<br>loss / baseline ${num(e.value)}` : '') +
      `<br>nearest 2/lr crossing: ${e.nearest_crossing === null ? 'none' : `step ${num(e.nearest_crossing)}` +
        (e.nearest_kind ? ` (${e.nearest_kind === 'sharpness_reach' ? 'reach' : 'leave'})` : '') + `, ${num(e.distance)} steps away`}` +
      `<br>antiphase pair active: ${e.antiphase_active === null ? '–' : (e.antiphase_active ? 'yes' : 'no')}` +
      (e.window !== null ? `<br>window ±${num(e.window)} steps` : '') +
      (e.resolution !== null ? `<br>resolution ${num(e.resolution)} steps` : '')),
    hoverinfo: 'text'});
  const near = t.spikes.filter(e => e.near_crossing), far = t.spikes.filter(e => !e.near_crossing);
  if (near.length) loss.push(spikeTrace(near, 'loss spike near a 2/lr crossing', false));
  if (far.length) loss.push(spikeTrace(far, c && (c.sharpness_threshold || []).some(v => v !== null)
                                              ? 'loss spike, no crossing near' : 'loss spike', true));
  const lossLog = !m || !m.train_loss || m.train_loss.every(v => v === null || v > 0);
  ctx.draw('tl_loss', anchored([...loss, ...eventKeys]),
           Object.assign({}, base, {shapes: events, yaxis: {type: lossLog ? 'log' : 'linear'}}),
           `${run.name}: no training metrics`);

  // ---- 2: sharpness against 2/lr (left out where it does not apply), reach and leave marked
  const sh = [], edge = c && (c.sharpness_threshold || []).some(v => v !== null);
  if (c && c.sharpness) {
    sh.push({type: 'scatter', mode: 'lines+markers', x: ctx.xs(c.step), y: c.sharpness, name: 'sharpness λ_max',
             line: {color: '#ff7f0e', width: 1.8}, marker: {size: 5, color: '#ff7f0e'}, customdata: c.step,
             hovertemplate: 'step %{customdata}<br>λ_max %{y:.4g}<extra></extra>'});
    if (edge) sh.push({type: 'scatter', mode: 'lines', x: ctx.xs(c.step), y: c.sharpness_threshold, name: '2/lr',
                       line: {color: '#555', dash: 'dash', width: 1.5}, customdata: c.step,
                       hovertemplate: 'step %{customdata}<br>2/lr %{y:.4g}<extra></extra>'});
    for (const [list, name, symbol] of [[t.reach, 'sharpness reaches 2/lr', 'triangle-up'], [t.leave, 'sharpness leaves 2/lr', 'triangle-down']])
      if (list.length) sh.push({type: 'scatter', mode: 'markers', name, x: list.map(e => X(e.step)),
                                y: list.map(e => at(c.step, c.sharpness, e.step) ?? e.value),
                                marker: {symbol, size: 12, color: '#000', line: {color: '#fff', width: 1}},
                                hovertext: list.map(e => `${name} at step ${num(e.step)}` +
                                  (e.start !== null ? ` (between checkpoints ${num(e.start)} and ${num(e.end)})` : '')),
                                hoverinfo: 'text'});
  }
  ctx.draw('tl_sharpness', sh.length ? anchored([...sh, ...spikeKey, ...eventKeys]) : [],
           Object.assign({}, base, {shapes: [...spikeLines, ...events],
                                    title: {text: edge ? 'sharpness against 2/lr (dashed), crossings marked'
                                                       : 'sharpness (no 2/lr: it does not apply to adaptive optimizers)'}}),
           `${run.name}: no curvature`);

  // ---- 3: the top opposing pair's group losses, their antiphase intervals shaded
  const p = t.pair, gl = [];
  const shown = p ? t.antiphase.filter(e => e.from === p.from && ((e.a === p.a && e.b === p.b) || (e.a === p.b && e.b === p.a))) : [];
  if (p) {
    for (const [g, ys, color] of [[p.a, p.loss_a, '#1f77b4'], [p.b, p.loss_b, '#d62728']])
      gl.push({type: 'scatter', mode: 'lines+markers', x: ctx.xs(p.step), y: ys, name: `group ${g}`,
               line: {color, width: 2}, marker: {size: 5, color}, customdata: p.step,
               hovertemplate: `group ${g}<br>step %{customdata}<br>mean loss %{y:.4g}<extra></extra>`});
    if (shown.length) gl.push(key('antiphase interval', null, {symbol: 'square', size: 13, color: ANTI}));
  }
  const rects = shown.map(e => ({type: 'rect', xref: 'x', yref: 'paper', x0: X(e.start), x1: X(e.end), y0: 0, y1: 1,
                                 fillcolor: ANTI, line: {width: 0}, layer: 'below'}));
  const others = t.antiphase.length - shown.length;
  const title = p ? `losses of the opposing pair ${p.a} and ${p.b} (groups of steps ${p.from} → ${p.to}` +
                    (p.cosine !== null ? `, cos ${num(p.cosine, 2)}` : '') + '); antiphase shaded' +
                    (others > 0 ? ` (${others} more interval${others === 1 ? '' : 's'} of other pairs)` : '')
                  : 'group losses of the top opposing pair';
  const lossLogG = !p || [...p.loss_a, ...p.loss_b].every(v => v === null || v > 0);
  ctx.draw('tl_groups', gl.length ? anchored([...gl, ...spikeKey, ...eventKeys]) : [],
           Object.assign({}, base, {shapes: [...rects, ...spikeLines, ...events], title: {text: title},
                                    yaxis: {type: lossLogG ? 'log' : 'linear'}}),
           `${run.name}: no antiphase pair` + (t.antiphase.length ? ' with its group losses' : ''));
});
"""

VIEW = View(
    "timeline", "Timeline",
    [Figure("tl_loss", "training loss, loss spikes marked (filled: within the window of a 2/lr crossing)", "train loss",
            ylog=True, wide=True),
     Figure("tl_sharpness", "sharpness against 2/lr (dashed), crossings marked", "λ_max", wide=True),
     Figure("tl_groups", "group losses of the top opposing pair; antiphase shaded", "group mean loss", ylog=True,
            wide=True)],
    controls=('<style>#view-timeline .gs-fig{min-height:0}#view-timeline .gs-grid{gap:4px}</style>'
              '<div id="gs-tl-summary" style="margin:2px 0 4px"></div>'),
    note="The focus run's timeline (timeline/*.parquet): one step axis, zoom any panel and all follow. Dotted red "
         "lines: the loss spikes, carried down to the other panels. Above: each chosen run's spikes against the "
         "shuffled baseline.",
    load=load, script=SCRIPT)

add_view(VIEW)
