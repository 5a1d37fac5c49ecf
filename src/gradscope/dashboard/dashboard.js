// gradscope dashboard: the glue between the page's controls and its plotly figures.
// All charting is plotly.js (Plotly.react / Plotly.relayout); this file only picks the data
// for the chosen runs, examples and steps, and keeps the step axes of all figures linked.
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('gs-data').textContent);
  const RUNS = D.runs;
  const BY_ID = Object.fromEntries(RUNS.map(r => [r.id, r]));
  const CONFIG = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d']};
  const TIER_HUES = {top5: 0, mid90: 215, bottom5: 130};
  const state = {selected: [], focus: null, colorBy: 'run', range: null, logx: D.logx, layer: 'all',
                 detector: 'all', interval: 0, checkpoint: null, densityStep: null, chosen: [], pcaIndex: null,
                 view: null};
  const views = {};
  const cache = {};
  const $ = id => document.getElementById(id);

  // ---- data helpers -------------------------------------------------------------------------
  function f32(b64) {
    const s = atob(b64), u = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return new Float32Array(u.buffer);
  }
  function decoded(run, key, b64) {
    const k = run.id + '|' + key;
    if (!(k in cache)) cache[k] = f32(b64);
    return cache[k];
  }
  const finite = v => (v === null || v === undefined || !isFinite(v)) ? null : v;
  function row(run, col, i) {  // one example's trajectory (array over checkpoints)
    const ex = run.data.examples, t = ex.step.length, a = decoded(run, col, ex.traj[col]);
    return Array.from(a.subarray(i * t, (i + 1) * t), finite);
  }
  function xs(steps) { return state.logx ? steps.map(s => s + 1) : steps; }
  function runColor(run) { return (D.colors[state.colorBy] || D.colors.run)[run.id]; }
  function selectedRuns() { return state.selected.map(id => BY_ID[id]); }
  function focusRun() { return BY_ID[state.focus]; }
  function palette(i) { return D.palette[i % D.palette.length]; }
  function shade(family, i, n) {
    const light = n <= 1 ? 45 : 28 + 44 * i / (n - 1);
    return `hsl(${TIER_HUES[family]}, 75%, ${light}%)`;
  }

  // ---- figures --------------------------------------------------------------------------------
  function stepAxis() {
    const ax = {type: state.logx ? 'log' : 'linear', title: {text: state.logx ? 'step + 1 (log scale)' : 'step'}};
    if (state.range) {
      const [lo, hi] = state.range;
      ax.range = state.logx ? [Math.log10(Math.max(lo, 0) + 1), Math.log10(hi + 1)] : [lo, hi];
      ax.autorange = false;
    } else ax.autorange = true;
    return ax;
  }
  function draw(id, traces, patch, empty) {
    const el = $('fig-' + id);
    if (!el) return;
    const spec = D.figures[id];
    traces = traces.filter(t => t.styleKey || !t.y || Array.from(t.y).some(v => v !== null && isFinite(v)));  // all NaN: nothing measured
    if (!traces.some(t => !t.styleKey)) traces = [];  // a legend of line styles alone draws nothing
    const layout = JSON.parse(JSON.stringify(spec.layout));
    for (const [k, v] of Object.entries(patch || {}))
      layout[k] = (v && typeof v === 'object' && !Array.isArray(v) && layout[k]) ? Object.assign({}, layout[k], v) : v;
    if (spec.linked) layout.xaxis = Object.assign({}, layout.xaxis, stepAxis());
    if (!traces.length) {
      layout.annotations = [{text: empty || 'nothing to show for the chosen runs', showarrow: false,
                             xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: {size: 13, color: '#888'}}];
      layout.xaxis = Object.assign({}, layout.xaxis, {visible: false});
      layout.yaxis = Object.assign({}, layout.yaxis, {visible: false});
    }
    constantRange(traces, layout);
    el.dataset.traces = traces.length;
    Plotly.react(el, traces, layout, CONFIG);
    if (!el.dataset.wired) {
      el.dataset.wired = '1';
      if (spec.linked) el.on('plotly_relayout', ev => onRelayout(ev));
      if (spec.clickable) el.on('plotly_click', ev => {
        const p = ev.points && ev.points[0];
        if (p && p.customdata !== undefined) addExamples([Array.isArray(p.customdata) ? p.customdata[0] : p.customdata]);
      });
    }
  }
  // A series that never changes (a constant learning rate) on plotly's default axis reads as zero (-1..1):
  // its axis spans the value instead, ±50% (a decade either side on a log axis; ±1 around 0).
  function constantRange(traces, layout) {
    if (!traces.length || (layout.yaxis && layout.yaxis.range) || traces.some(t => t.type && t.type !== 'scatter')) return;
    const ys = traces.flatMap(t => Array.from(t.y || [])).filter(v => v !== null && isFinite(v));
    if (!ys.length) return;
    const lo = Math.min(...ys), hi = Math.max(...ys), scale = Math.max(Math.abs(lo), Math.abs(hi));
    if (hi - lo > 1e-9 * scale) return;
    const v = (lo + hi) / 2, log = layout.yaxis && layout.yaxis.type === 'log';
    const range = log && v > 0 ? [Math.log10(v) - 1, Math.log10(v) + 1] : (v === 0 ? [-1, 1] : [v - Math.abs(v) / 2, v + Math.abs(v) / 2]);
    layout.yaxis = Object.assign({}, layout.yaxis, {range, autorange: false});
  }
  function onRelayout(ev) {
    let r;
    if (ev['xaxis.autorange']) r = null;
    else if ('xaxis.range[0]' in ev) r = [ev['xaxis.range[0]'], ev['xaxis.range[1]']];
    else if (Array.isArray(ev['xaxis.range'])) r = ev['xaxis.range'].slice();
    else return;
    if (r && state.logx) r = r.map(v => Math.pow(10, v) - 1);
    if (r) r = r.map(v => Math.round(v * 1000) / 1000);
    const same = (a, b) => (a === null && b === null) || (a && b && Math.abs(a[0] - b[0]) < 1e-6 * (1 + Math.abs(a[0])) &&
                                                         Math.abs(a[1] - b[1]) < 1e-6 * (1 + Math.abs(a[1])));
    if (same(r, state.range)) return;
    setRange(r);
  }
  function setRange(r) {
    state.range = r;
    $('gs-step-lo').value = r ? r[0] : '';
    $('gs-step-hi').value = r ? r[1] : '';
    const ax = stepAxis(), upd = {'xaxis.autorange': ax.autorange};
    if (ax.range) upd['xaxis.range'] = ax.range;
    for (const id of Object.keys(D.figures)) {
      const el = $('fig-' + id);
      if (D.figures[id].linked && el && el._fullLayout && el.offsetParent !== null && +el.dataset.traces > 0)
        Plotly.relayout(el, upd);
    }
  }

  // ---- built-in views -------------------------------------------------------------------------
  function lines(runs, get, opts) {  // one trace per run from get(run) -> {x, y} or null
    const out = [];
    for (const run of runs) {
      const d = get(run);
      if (!d || !d.y || !d.y.some(v => v !== null && isFinite(v))) continue;  // nothing measured: no empty trace
      out.push(Object.assign({type: 'scatter', mode: d.x.length > 40 ? 'lines' : 'lines+markers', x: xs(d.x), y: d.y, name: run.name,
                              legendgroup: run.id, marker: {size: 4, color: runColor(run)},
                              line: {color: runColor(run), width: 1.8}, hovertemplate: `${run.name}<br>step %{customdata}<br>%{y:.4g}<extra></extra>`,
                              customdata: d.x}, opts || {}, d.extra || {}));
    }
    return out;
  }
  const metric = col => run => run.data.metrics && {x: run.data.metrics.step, y: run.data.metrics[col]};
  const curv = col => run => run.data.curvature && run.data.curvature[col] && {x: run.data.curvature.step, y: run.data.curvature[col]};
  function missing(runs, key, what) {
    const none = runs.filter(r => !r.data[key]).map(r => `${r.name} (${r.status})`);
    return none.length ? `no ${what} for ${none.slice(0, 4).join(', ')}${none.length > 4 ? ', …' : ''}` : `no ${what}`;
  }

  // Legend entries of the line styles (no data, drawn in grey): which dash is train and which test.
  const styleKey = () => [['train', 'dot'], ['test', 'solid']].map(([name, dash]) => ({
    type: 'scatter', mode: 'lines', x: [null], y: [null], name: `${name} (${dash === 'dot' ? 'dotted' : 'solid'})`,
    legendgroup: 'style', legendrank: 1, line: {dash, color: '#666', width: 1.8}, hoverinfo: 'skip', styleKey: true}));
  views.training = function () {
    const runs = selectedRuns(), why = missing(runs, 'metrics', 'training metrics');
    const both = (train, test) => {  // the runs once in the legend (their test line), then the two line styles
      const out = [...lines(runs, metric(train), {showlegend: false}).map(t => (t.line = {dash: 'dot', color: t.marker.color, width: 1.8}, t.name += ' train', t)),
                   ...lines(runs, metric(test)).map(t => (t.name += ' test', t))];
      return out.length ? [...out, ...styleKey()] : out;
    };
    const legend = {showlegend: true};
    draw('loss', both('train_loss', 'test_loss'), legend, why);
    draw('acc', both('train_acc', 'test_acc'), legend, why);
    draw('lr', lines(runs, metric('lr')), {}, why);
    // clipping off (optim.grad_clip null): say so rather than draw a line at 0
    const clipping = runs.filter(r => !(r.data.optim && r.data.optim.grad_clip === null));
    draw('clipped', lines(clipping, metric('clipped_fraction')), {},
         runs.length && !clipping.length ? 'gradient clipping is off for the chosen runs (optim.grad_clip: null)' : why);
    draw('grad_norm', lines(runs, metric('grad_norm')), {}, why);
    draw('weight_norm', lines(runs, metric('weight_norm')), {}, why);
  };

  function layerSeries() {
    // "all layers": the focus run's layers, one colour each; one layer: every chosen run that has it.
    const out = [];
    if (state.layer === 'all') {
      const run = focusRun(), dyn = run && run.data.dynamics;
      if (dyn) dyn.layers.forEach((name, i) => out.push({run, dyn, li: i, name, color: palette(i)}));
    } else {
      for (const run of selectedRuns()) {
        const dyn = run.data.dynamics, li = dyn ? dyn.layers.indexOf(state.layer) : -1;
        if (li >= 0) out.push({run, dyn, li, name: run.name, color: runColor(run)});
      }
    }
    return out;
  }
  views.layers = function () {
    const sel = $('gs-layer'), names = new Set();
    selectedRuns().forEach(r => r.data.dynamics && r.data.dynamics.layers.forEach(n => names.add(n)));
    const want = ['all', ...names];
    if (sel.options.length !== want.length || want.some((n, i) => sel.options[i].value !== n)) {
      sel.innerHTML = want.map(n => `<option value="${n}">${n === 'all' ? 'all layers (focus run)' : n}</option>`).join('');
      if (!want.includes(state.layer)) state.layer = 'all';
      sel.value = state.layer;
    }
    const series = layerSeries(), why = 'no dynamics.parquet (train.dynamics_every: 0, or not trained yet)';
    const per = (col, logy) => series.filter(s => s.dyn[col]).map(s => ({
      type: 'scatter', mode: 'lines+markers', x: xs(s.dyn.step), y: s.dyn[col][s.li], name: s.name,
      marker: {size: 4, color: s.color}, line: {color: s.color, width: 1.6},
      hovertemplate: `${s.name}<br>${s.dyn.layers[s.li]}<br>%{y:.4g}<extra></extra>`}));
    const adamWhy = series.length ? 'no Adam state (the optimizer is not Adam-family)' : why;
    draw('adam_lr', per('adam_eff_lr_median'), {}, adamWhy);
    draw('adam_snr', per('adam_snr_median'), {}, adamWhy);
    draw('decay_ratio', per('update_to_decay_ratio'), {}, series.length ? 'no weight decay or no Adam state' : why);
    draw('layer_weight_norm', per('weight_norm'), {}, why);
    const tiers = [];
    for (const [family, col, label] of [['top5', 'grad_norm_top5', 'top 5%'], ['mid90', 'grad_norm_mid90', 'middle 90%'],
                                        ['bottom5', 'grad_norm_bottom5', 'bottom 5%']]) {
      series.forEach((s, i) => {
        if (!s.dyn[col]) return;
        const c = shade(family, i, series.length);
        tiers.push({type: 'scatter', mode: 'lines', x: xs(s.dyn.step), y: s.dyn[col][s.li], name: `${label}: ${s.name}`,
                    legendgroup: family, line: {color: c, width: 1.6},
                    hovertemplate: `${label} of weights<br>${s.name}<br>${s.dyn.layers[s.li]}<br>%{y:.4g}<extra></extra>`});
      });
    }
    draw('tiers', tiers, {}, why);
  };

  views.curvature = function () {
    const runs = selectedRuns(), why = missing(runs, 'curvature', 'curvature');
    draw('sharpness', [...lines(runs, curv('sharpness')),
                       ...lines(runs, curv('sharpness_threshold'), {mode: 'lines', showlegend: false}).map(t => (t.line = {dash: 'dash', color: t.marker.color, width: 1.2}, t.name += ' 2/lr', t))],
         runs.some(r => r.data.curvature && (r.data.curvature.sharpness_threshold || []).some(v => v !== null)) ? {} :
           {title: {text: 'sharpness (no 2/lr: it does not apply to adaptive optimizers)'}}, why);
    const run = focusRun(), c = run && run.data.curvature;
    const eig = [];
    if (c) {
      const k = Math.max(0, ...c.top_eigenvalues.map(v => v.length));
      for (let i = 0; i < k; i++) eig.push({type: 'scatter', mode: 'lines+markers', x: xs(c.step), name: `λ${i + 1}`,
                                            y: c.top_eigenvalues.map(v => finite(v[i])), line: {color: palette(i)},
                                            marker: {size: 5, color: palette(i)}});
      const top = Math.max(...c.top_eigenvalues.flat().filter(v => v !== null && isFinite(v)));
      const thr = (c.sharpness_threshold || []).filter(v => v !== null);
      if (thr.length && Math.min(...thr) < 20 * top)  // 2/lr far above the spectrum would flatten it: left out
        eig.push({type: 'scatter', mode: 'lines', x: xs(c.step), y: c.sharpness_threshold, name: '2/lr',
                  line: {dash: 'dash', color: '#555'}});
    }
    draw('eigenvalues', eig, {title: {text: `top Hessian eigenvalues: ${run ? run.name : ''}`}}, why);
    draw('update_sharpness', lines(runs, curv('update_sharpness')), {}, why);
    const withErr = (col, err) => run => run.data.curvature && run.data.curvature[col] &&
      {x: run.data.curvature.step, y: run.data.curvature[col],
       extra: run.data.curvature[err] ? {error_y: {type: 'data', array: run.data.curvature[err], visible: true, thickness: 1}} : {}};
    draw('hessian_trace', lines(runs, withErr('hessian_trace', 'hessian_trace_stderr')), {}, why);
    draw('fisher_gn', [...lines(runs, withErr('gauss_newton_trace', 'gauss_newton_stderr')).map(t => (t.name += ' Gauss-Newton', t)),
                       ...lines(runs, curv('fisher_trace'), {showlegend: true}).map(t => (t.line = {dash: 'dot', color: t.marker.color}, t.marker.symbol = 'diamond', t.name += ' Fisher', t))],
         {}, why);
    const noInput = 'no input sensitivity (curvature.input_sensitivity: false, or token inputs)';
    draw('input_jacobian', lines(runs, curv('input_jacobian_norm')), {}, noInput);
    draw('input_hessian', lines(runs, curv('input_hessian_trace')), {}, noInput);
    const dsel = $('gs-density-step'), dens = c ? c.density : {}, dsteps = Object.keys(dens || {});
    fillSelect(dsel, dsteps.map(s => [s, `step ${s}`]), state.densityStep);
    state.densityStep = dsel.value || null;
    const d = state.densityStep && dens[state.densityStep];
    const g = d && c.ggn_density ? c.ggn_density[state.densityStep] : null;  // with curvature.ggn
    draw('density', d ? [{type: 'scatter', mode: 'lines', x: d.grid, y: d.density, name: `Hessian, step ${state.densityStep}`,
                          line: {color: '#1f77b4'}, fill: 'tozeroy'},
                         ...(g ? [{type: 'scatter', mode: 'lines', x: g.grid, y: g.density,
                                   name: `Gauss-Newton, step ${state.densityStep}`, line: {color: '#d62728', dash: 'dot'}}] : [])]
                       : [], {},
         'no spectral density (curvature.density: false)');
  };

  function detectorsShown() {
    if (state.detector !== 'all') return selectedRuns().map(run => ({run, det: state.detector, color: runColor(run), name: run.name}));
    const run = focusRun();
    return run && run.data.detectors ? Object.keys(run.data.detectors).map((det, i) => ({run, det, color: palette(i), name: det})) : [];
  }
  views.signals = function () {
    const run = focusRun(), why = missing(selectedRuns(), 'detectors', 'signals');
    const dets = new Set();
    selectedRuns().forEach(r => r.data.detectors && Object.keys(r.data.detectors).forEach(d => dets.add(d)));
    fillSelect($('gs-detector'), [['all', 'all detectors (focus run)'], ...[...dets].sort().map(d => [d, d])], state.detector);
    state.detector = $('gs-detector').value;
    const per = col => detectorsShown().filter(s => s.run.data.detectors && s.run.data.detectors[s.det]).map(s => {
      const e = s.run.data.detectors[s.det];
      return {type: 'scatter', mode: 'lines+markers', x: xs(e.step), y: e[col], name: s.name,
              line: {color: s.color}, marker: {size: 5, color: s.color},
              hovertemplate: `${s.det}, ${s.run.name}<br>step %{customdata}<br>%{y:.4g}<extra></extra>`, customdata: e.step};
    });
    draw('flagged', per('n_flagged'), {}, why);
    draw('auroc', per('auroc'), {}, 'no planted truth to score against');
    draw('ap', per('average_precision'), {}, 'no planted truth to score against');
    // opposing groups of one checkpoint interval, the focus run's
    const groups = (run && run.data.groups) || [];
    fillSelect($('gs-interval'), groups.map((g, i) => [String(i), `steps ${g.from} → ${g.to}`]), String(state.interval));
    state.interval = +($('gs-interval').value || 0);
    const g = groups[state.interval], gt = [];
    if (g) {
      const opposed = new Map();
      g.pairs.filter(p => p.opposing).forEach(p => { opposed.set(p.a, p); opposed.set(p.b, p); });
      g.groups.forEach((gr, i) => {
        const p = opposed.get(gr.group);
        gt.push({type: 'scatter', mode: 'lines+markers', x: xs(gr.step), y: gr.mean_loss,
                 name: `group ${gr.group}${gr.size ? ` (n=${gr.size})` : ''}${p ? `, opposes ${p.a === gr.group ? p.b : p.a} (cos ${p.cosine.toFixed(2)})` : ''}`,
                 line: {color: palette(i), width: p ? 3 : 1, dash: p ? 'solid' : 'dot'}, marker: {size: p ? 6 : 3, color: palette(i)}});
      });
    }
    draw('group_losses', gt, g ? {shapes: [{type: 'rect', xref: 'x', yref: 'paper', x0: xs([g.from])[0], x1: xs([g.to])[0], y0: 0, y1: 1,
                                             fillcolor: '#f0c040', opacity: 0.25, line: {width: 0}}]} : {},
         run ? `no opposing groups for ${run.name}` : 'no run chosen');
    const ex = run && run.data.examples;
    const key = g ? `${g.from}-${g.to}` : null;
    draw('dloss', hist(ex && ex.dloss_hist && ex.dloss_hist[key]), {barmode: 'overlay', title: {text: g ? `Δloss, steps ${g.from} → ${g.to} (all training examples)` : 'Δloss'}},
         'no loss changes');
    const steps = ex ? ex.step.map(String) : [];
    fillSelect($('gs-checkpoint'), steps.map(s => [s, `step ${s}`]), state.checkpoint || steps[steps.length - 1]);
    state.checkpoint = $('gs-checkpoint').value || null;
    draw('loss_dist', hist(ex && ex.loss_hist && ex.loss_hist[state.checkpoint]),
         {barmode: 'overlay', title: {text: `training loss at step ${state.checkpoint} (all training examples)`}}, 'no per-example losses');
    const ca = ex && ex.cartography && Object.fromEntries(Object.entries(ex.cartography).map(
      ([k, v]) => [k, typeof v === 'string' ? Array.from(decoded(run, 'cart_' + k, v), finite) : v]));
    const cart = [];
    if (ca) {
      const text = ex.ids.map((id, i) => `example ${id}, label ${ex.label[i]}${ex.planted[i] ? ', PLANTED' + (ca.planted_group[i] ? ' (' + ca.planted_group[i] + ')' : '') : ''}` +
        `<br>confidence ${fmt(ca.confidence[i])}, variability ${fmt(ca.variability[i])}, correctness ${fmt(ca.correctness[i])}` +
        `<br>AUM ${fmt(ca.aum[i])}, forgetting ${ca.forgetting_events[i]}, opposition ${fmt(ca.opposition[i])}` +
        `<br>TracIn ${fmt(ca.tracin_self_influence[i])}, final loss ${fmt(ca.final_loss[i])}`);
      for (const planted of [false, true]) {
        const idx = ex.ids.map((_, i) => i).filter(i => !!ex.planted[i] === planted);
        if (!idx.length) continue;
        cart.push({type: 'scatter', mode: 'markers', name: planted ? 'planted' : 'not planted',
                   x: idx.map(i => ca.variability[i]), y: idx.map(i => ca.confidence[i]), text: idx.map(i => text[i]),
                   customdata: idx.map(i => ex.ids[i]), hovertemplate: '%{text}<extra></extra>',
                   marker: {size: planted ? 8 : 6, symbol: planted ? 'x' : 'circle', color: idx.map(i => ca.correctness[i]),
                            colorscale: [[0, '#d62728'], [0.5, '#f2b701'], [1, '#1f77b4']], cmin: 0, cmax: 1, line: {width: 0},
                            colorbar: planted ? undefined : {title: {text: 'correctness'}, len: 0.8}, opacity: 0.8}});
      }
    }
    draw('cartography', cart, {legend: {orientation: 'h', x: 0, y: 1.08}}, 'no cartography (signals not computed)');
  }
  function hist(h) {
    if (!h) return [];
    const mid = h.edges.slice(0, -1).map((e, i) => (e + h.edges[i + 1]) / 2), w = h.edges[1] - h.edges[0];
    const out = [{type: 'bar', x: mid, y: h.clean, width: w, name: 'not planted', marker: {color: '#7f9fbf'}, opacity: 0.75}];
    if (h.planted.some(v => v > 0)) out.push({type: 'bar', x: mid, y: h.planted, width: w, name: 'planted', marker: {color: '#d62728'}, opacity: 0.75});
    return out;
  }
  const fmt = v => v === null || v === undefined ? '–' : (+v).toPrecision(3);

  function exampleIndex(ex, id) { return ex.ids.indexOf(id); }
  views.examples = function () {
    const run = focusRun(), ex = run && run.data.examples;
    const dets = ex ? Object.keys(ex.topk) : [];
    fillSelect($('gs-topk-detector'), dets.map(d => [d, d]), $('gs-topk-detector').value || (dets.includes('cos_rule') ? 'cos_rule' : dets[0]));
    const steps = ex ? ex.step.map(String) : [];
    fillSelect($('gs-topk-step'), steps.map(s => [s, `step ${s}`]), $('gs-topk-step').value || steps[steps.length - 1]);
    const note = [], traces = {loss: [], p_true: [], margin: [], grad_norm: []};
    if (ex) {
      const found = state.chosen.filter(id => exampleIndex(ex, id) >= 0);
      const absent = state.chosen.filter(id => exampleIndex(ex, id) < 0);
      if (absent.length) note.push(`not in this run's sample of ${ex.ids.length} of ${ex.n_train} training examples (dashboard.max_examples): ${absent.join(', ')}`);
      for (const col of Object.keys(traces)) {
        traces[col].push({type: 'scatter', mode: 'lines', x: xs(ex.step), y: ex.mean[col], name: `mean of all ${ex.n_train}`,
                          line: {color: '#222', width: 3, dash: 'dash'}});
        found.forEach((id, j) => {
          const i = exampleIndex(ex, id), c = palette(j);
          traces[col].push({type: 'scatter', mode: 'lines+markers', x: xs(ex.step), y: row(run, col, i),
                            name: `example ${id} (label ${ex.label[i]}${ex.planted[i] ? ', planted' : ''})`,
                            line: {color: c, width: 1.8, dash: ex.planted[i] ? 'solid' : 'dot'}, marker: {size: 5, color: c}});
        });
      }
    }
    $('gs-ex-note').textContent = note.join('; ') || (state.chosen.length ? `showing ${state.chosen.join(', ')}` : 'no examples chosen: type ids, click a point (cartography, PCA) or add a detector\'s top-k');
    const why = ex ? '' : (run ? `no per-example statistics for ${run.name} (${run.status})` : 'no run chosen');
    draw('ex_loss', traces.loss, {}, why);
    draw('ex_p_true', traces.p_true, {}, why);
    draw('ex_margin', traces.margin, {}, why);
    draw('ex_grad_norm', traces.grad_norm, {}, why);
    drawPca(run, ex, why);
  };
  function drawPca(run, ex, why) {  // gradient-projection PCA at one checkpoint, axes fixed over all checkpoints
    const slider = $('gs-pca-step');
    const pca = ex && ex.pca;
    slider.max = ex ? ex.step.length - 1 : 0;
    if (state.pcaIndex === null || state.pcaIndex > +slider.max) state.pcaIndex = +slider.max;
    slider.value = state.pcaIndex;
    const pts = [];
    if (pca) {
      const t = state.pcaIndex, n = ex.ids.length, xy = decoded(run, 'pca', pca.xy);
      const step = ex.step[t];
      $('gs-pca-label').textContent = `step ${step}`;
      const det = $('gs-topk-detector').value, top = new Set(((ex.topk[det] || {})[String(step)]) || []);
      const cats = {ordinary: ['#b0b0b0', 5, 'ordinary'], planted: ['#ff7f0e', 7, 'planted'],
                    flagged: ['#1f77b4', 7, `top-${D.settings.top_k} ${det}`], both: ['#d62728', 8, `planted & top-${D.settings.top_k} ${det}`]};
      for (const [cat, [color, size, label]] of Object.entries(cats)) {
        const idx = [];
        for (let i = 0; i < n; i++) {
          const c = ex.planted[i] ? (top.has(ex.ids[i]) ? 'both' : 'planted') : (top.has(ex.ids[i]) ? 'flagged' : 'ordinary');
          if (c === cat) idx.push(i);
        }
        if (!idx.length) continue;
        pts.push({type: 'scatter', mode: 'markers', name: `${label} (${idx.length})`, x: idx.map(i => finite(xy[(t * n + i) * 2])),
                  y: idx.map(i => finite(xy[(t * n + i) * 2 + 1])), customdata: idx.map(i => ex.ids[i]),
                  hovertemplate: 'example %{customdata}<extra></extra>', marker: {color, size, opacity: 0.8}});
      }
      const mine = state.chosen.map(id => exampleIndex(ex, id)).filter(i => i >= 0);
      if (mine.length) pts.push({type: 'scatter', mode: 'markers+text', name: 'chosen', x: mine.map(i => xy[(t * n + i) * 2]),
                                 y: mine.map(i => xy[(t * n + i) * 2 + 1]), text: mine.map(i => String(ex.ids[i])),
                                 textposition: 'top center', customdata: mine.map(i => ex.ids[i]),
                                 marker: {size: 12, color: 'rgba(0,0,0,0)', line: {color: '#000', width: 2}}});
    }
    draw('pca', pts, pca ? {xaxis: {range: pca.xrange, title: {text: `PC1 (${(100 * pca.explained[0]).toFixed(0)}% of variance)`}},
                            yaxis: {range: pca.yrange, title: {text: `PC2 (${(100 * pca.explained[1]).toFixed(0)}%)`}}} : {},
         why || 'no gradient projections');
  }

  // ---- controls -------------------------------------------------------------------------------
  function fillSelect(sel, options, value) {
    const html = options.map(([v, t]) => `<option value="${v}">${t}</option>`).join('');
    if (sel.dataset.html !== html) { sel.innerHTML = html; sel.dataset.html = html; }
    if (value !== null && value !== undefined && options.some(([v]) => v === String(value))) sel.value = String(value);
  }
  function visibleRuns() {
    return RUNS.filter(r => D.grid_keys.every(k => {
      const v = $('gs-filter-' + k).value;
      return v === '' || r.varying_text[k] === v;
    }));
  }
  function syncRunPicker() {
    const shown = new Set(visibleRuns().map(r => r.id));
    for (const opt of $('gs-runs').options) {
      opt.hidden = !shown.has(opt.value);
      if (opt.hidden) opt.selected = false;
    }
    state.selected = [...$('gs-runs').selectedOptions].map(o => o.value);
    const focus = state.selected.includes(state.focus) ? state.focus : state.selected[0] || null;
    fillSelect($('gs-focus'), state.selected.map(id => [id, BY_ID[id].name]), focus);
    state.focus = $('gs-focus').value || null;
  }
  function addExamples(ids) {
    for (const id of ids) if (Number.isInteger(id) && !state.chosen.includes(id)) state.chosen.push(id);
    $('gs-ex-ids').value = state.chosen.join(', ');
    render(true);
  }
  function render(all) {
    for (const [key, view] of Object.entries(views)) {
      const sec = $('view-' + key);
      if (sec && sec.classList.contains('active')) {
        try { view({state, data: D, draw, runs: selectedRuns(), focus: focusRun(), xs, runColor, palette}); }
        catch (e) { console.error(e); throw e; }
      } else if (sec) sec.dataset.stale = '1';
    }
  }
  function show(key) {
    state.view = key;
    document.querySelectorAll('.gs-view').forEach(s => s.classList.toggle('active', s.id === 'view-' + key));
    document.querySelectorAll('#gs-tabs button').forEach(b => b.classList.toggle('active', b.dataset.view === key));
    render();
  }
  function start() {
    const runsSel = $('gs-runs');
    const attr = t => String(t).replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
    runsSel.innerHTML = RUNS.map(r => `<option value="${r.id}" title="${attr(r.detail)}">${r.name}${r.status === 'done' ? '' : ' [' + r.status + ']'}</option>`).join('');
    const initial = RUNS.filter(r => r.data.metrics).slice(0, D.settings.initial_runs);
    for (const opt of runsSel.options) opt.selected = initial.some(r => r.id === opt.value);
    for (const k of D.grid_keys) $('gs-filter-' + k).addEventListener('change', () => { syncRunPicker(); render(); });
    runsSel.addEventListener('change', () => { syncRunPicker(); render(); });
    $('gs-all').addEventListener('click', () => { for (const o of runsSel.options) o.selected = !o.hidden; syncRunPicker(); render(); });
    $('gs-focus').addEventListener('change', () => { state.focus = $('gs-focus').value; render(); });
    $('gs-color').addEventListener('change', () => { state.colorBy = $('gs-color').value; render(); });
    $('gs-logx').checked = state.logx;
    $('gs-logx').addEventListener('change', () => { state.logx = $('gs-logx').checked; render(); });
    const applyRange = () => {
      const lo = parseFloat($('gs-step-lo').value), hi = parseFloat($('gs-step-hi').value);
      if (!isFinite(lo) && !isFinite(hi)) setRange(null);
      else if (isFinite(lo) && isFinite(hi) && hi > lo) setRange([lo, hi]);  // else wait for the other bound
    };
    for (const id of ['gs-step-lo', 'gs-step-hi']) {
      $(id).addEventListener('change', applyRange);
      $(id).addEventListener('keydown', ev => { if (ev.key === 'Enter') applyRange(); });
    }
    $('gs-step-reset').addEventListener('click', () => setRange(null));
    $('gs-layer').addEventListener('change', () => { state.layer = $('gs-layer').value; render(); });
    $('gs-detector').addEventListener('change', () => { state.detector = $('gs-detector').value; render(); });
    $('gs-interval').addEventListener('change', () => { state.interval = +$('gs-interval').value; render(); });
    $('gs-checkpoint').addEventListener('change', () => { state.checkpoint = $('gs-checkpoint').value; render(); });
    $('gs-density-step').addEventListener('change', () => { state.densityStep = $('gs-density-step').value; render(); });
    const readIds = () => { state.chosen = []; addExamples(($('gs-ex-ids').value.match(/-?\d+/g) || []).map(Number)); };
    $('gs-ex-ids').addEventListener('change', readIds);
    $('gs-ex-show').addEventListener('click', readIds);
    $('gs-ex-clear').addEventListener('click', () => { state.chosen = []; $('gs-ex-ids').value = ''; render(); });
    $('gs-topk-add').addEventListener('click', () => {
      const ex = focusRun() && focusRun().data.examples;
      if (!ex) return;
      const ids = ((ex.topk[$('gs-topk-detector').value] || {})[$('gs-topk-step').value] || []);
      addExamples(ids.slice(0, +$('gs-topk-k').value || 5));
    });
    $('gs-topk-detector').addEventListener('change', () => render());
    $('gs-pca-step').addEventListener('input', () => {
      state.pcaIndex = +$('gs-pca-step').value;
      const run = focusRun();
      drawPca(run, run && run.data.examples, '');
    });
    document.querySelectorAll('#gs-tabs button').forEach(b => b.addEventListener('click', () => show(b.dataset.view)));
    syncRunPicker();
    show(Object.keys(views)[0]);
    document.body.dataset.ready = '1';
  }

  // The hook for more views (gradscope.dashboard.add_view): a script calls
  // gradscope.registerView(key, fn); fn(ctx) draws with ctx.draw(figureId, traces, layoutPatch, emptyText).
  window.gradscope = {state, data: D, views, render, show, setRange, addExamples, start, draw, xs, runColor, palette,
                      registerView(key, fn) { views[key] = fn; },
                      setRuns(ids) { for (const o of $('gs-runs').options) o.selected = ids.includes(o.value); syncRunPicker(); render(); }};
})();
