"""The dashboard's Influence tab: a test example's top proponents and opponents (the influence stage,
gradscope.influence) and their contributions checkpoint by checkpoint. Added through `add_view`."""

from __future__ import annotations

from pathlib import Path

from gradscope import artifacts, layout
from gradscope.dashboard.page import Figure, View, add_view

# Test examples a page carries per run: those the report lists first, then by id; contributions
# for each one's strongest CONTRIB_PER_KIND proponents and opponents.
MAX_TESTS = 200
CONTRIB_PER_KIND = 3


def load(folder: Path) -> dict | None:
    """The run's influence tables, trimmed for the page; None where the run has none (yet)."""
    if not layout.in_run(folder, "influence_summary").exists():
        return None
    summary = artifacts.read_json(layout.in_run(folder, "influence_summary"))
    top = artifacts.read_parquet(layout.in_run(folder, "influence_top"))
    contrib = artifacts.read_parquet(layout.in_run(folder, "influence_contributions"))
    shown = [e["test_id"] for e in summary.get("examples", [])]
    order = list(dict.fromkeys(shown + sorted(top["test_id"].unique().tolist())))[:MAX_TESTS]
    tests = {}
    top = top[top["test_id"].isin(order)]
    strong = top[top["rank"] <= CONTRIB_PER_KIND][["test_id", "train_id", "kind"]]
    contrib = contrib.merge(strong, on=["test_id", "train_id", "kind"]).sort_values("step")
    for test_id, rows in top.groupby("test_id", sort=False):
        rows = rows.sort_values(["kind", "rank"], ascending=[False, True])  # proponents first
        mine = contrib[contrib["test_id"] == test_id]
        tests[str(test_id)] = {
            "label": int(rows["test_label"].iloc[0]),
            "kind": rows["kind"].tolist(), "rank": rows["rank"].tolist(), "train_id": rows["train_id"].tolist(),
            "score": rows["score"].round(6).tolist(), "train_label": rows["train_label"].tolist(),
            "clean": rows["train_clean_label"].tolist(), "planted": rows["train_planted"].tolist(),
            "contrib": [{"train_id": int(t), "kind": k, "value": g["contribution"].round(6).tolist()}
                        for (t, k), g in mine.groupby(["train_id", "kind"], sort=False)],
        }
    steps = sorted(contrib["step"].unique().tolist()) if len(contrib) else summary.get("steps", [])
    return {"order": [str(t) for t in order], "tests": tests, "steps": steps, "proj_dim": summary.get("proj_dim"),
            "flipped": summary.get("flipped_opponents")}


SCRIPT = r"""
gradscope.registerView('influence', ctx => {
  const sel = document.getElementById('gs-inf-test'), note = document.getElementById('gs-inf-note');
  const run = ctx.focus, inf = run && run.data.influence;
  if (!sel.dataset.wired) { sel.dataset.wired = '1'; sel.addEventListener('change', () => gradscope.render()); }
  if (!inf) {
    sel.innerHTML = ''; sel.dataset.run = '';
    note.textContent = run ? `no influence tables for ${run.name} (${run.status})` : 'no run chosen';
    ctx.draw('inf_top', [], {}, note.textContent); ctx.draw('inf_contrib', [], {}, note.textContent);
    return;
  }
  if (sel.dataset.run !== run.id) {
    sel.dataset.run = run.id;
    sel.innerHTML = inf.order.map(t => `<option value="${t}">test ${t} (label ${inf.tests[t].label})</option>`).join('');
  }
  const t = inf.tests[sel.value] || inf.tests[inf.order[0]];
  const names = [], scores = [], colors = [], ids = [], hover = [];
  for (let i = 0; i < t.kind.length; i++) {
    const flipped = t.planted[i] && t.train_label[i] !== t.clean[i];
    names.push(`${t.kind[i] === 'proponent' ? 'P' : 'O'}${t.rank[i]}: #${t.train_id[i]}`);
    scores.push(t.score[i]); ids.push(t.train_id[i]);
    colors.push(flipped ? '#d62728' : (t.planted[i] ? '#ff7f0e' : (t.kind[i] === 'proponent' ? '#1f77b4' : '#7f7f7f')));
    hover.push(`train #${t.train_id[i]}<br>label ${t.train_label[i]} (true ${t.clean[i]})${flipped ? ', flipped' : (t.planted[i] ? ', planted' : '')}<br>score ${t.score[i].toPrecision(4)}`);
  }
  ctx.draw('inf_top', [{type: 'bar', x: names, y: scores, marker: {color: colors}, customdata: ids,
                        hovertext: hover, hoverinfo: 'text', name: 'TracIn-CP'}], {});
  const traces = t.contrib.map((c, i) => ({
    type: 'scatter', mode: 'lines+markers', x: inf.steps, y: c.value, name: `${c.kind} #${c.train_id}`,
    line: {dash: c.kind === 'proponent' ? 'solid' : 'dot', color: ctx.palette(i)}}));
  ctx.draw('inf_contrib', traces, {});
  const f = inf.flipped && inf.flipped.opponent;
  note.textContent = `k = ${inf.proj_dim}; red: flipped label, orange: other planted; click a bar to follow that `
    + 'training example in the Examples tab' + (f ? `. Flipped examples of the test example's true class among the `
    + `top opponents: ${(100 * f.rate).toFixed(1)}% (chance ${(100 * f.chance).toFixed(1)}%)` : '');
});
"""

VIEW = View(
    "influence", "Influence",
    [Figure("inf_top", "top proponents (score > 0) and opponents (< 0) of the test example, TracIn-CP",
            "score", linked=False, xtitle="training example", clickable=True, wide=True),
     Figure("inf_contrib", "contribution per checkpoint (lr × ⟨g_train, g_test⟩): strongest 3 of each kind",
            "contribution", wide=True)],
    controls='<label>test example <select id="gs-inf-test"></select></label><div id="gs-inf-note" class="gs-note"></div>',
    note="The focus run: train-to-test influence from the stored gradient projections (influence/*.parquet).",
    load=load, script=SCRIPT)

add_view(VIEW)
