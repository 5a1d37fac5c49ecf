"""The dashboard's Timeline tab (gradscope.dashboard.timeline): its data from hand-written timeline files in
a run folder (no workflow), and the tab in headless chromium (conftest's `browser`): its panels, their
linked zoom, and no console errors."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from gradscope import artifacts
from gradscope.dashboard import build_sweep_dashboard, default_settings
from gradscope.dashboard import timeline as tl

STEPS = np.arange(0, 401, 5)
CHECKPOINTS = np.arange(0, 401, 25)
SPIKES = [120, 250, 330]


def write_run(folder, *, timeline=True, optim="sgd"):
    """A run folder as the stages leave it, by hand: metrics with three loss spikes, sharpness rising to 2/lr = 4
    (SGD, lr 0.5) or with no 2/lr (Adam), the signals' group losses of two intervals, and the timeline stage's
    events, links and summary."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"optim": {"name": optim, "grad_clip": None}}))
    loss = 2.0 * np.exp(-STEPS / 150) + 0.05
    for s in SPIKES:
        loss[STEPS == s] *= 3
    metrics = pd.DataFrame({"step": STEPS, "lr": 0.5, "train_loss": loss, "train_acc": 1 - loss / 3, "test_loss": loss * 1.2,
                            "test_acc": 1 - loss / 2.5, "grad_norm": 1.0, "clipped": False, "clipped_fraction": 0.0,
                            "weight_norm": 10.0, "wall_s": STEPS / 100})
    artifacts.write_parquet(metrics, folder / "train" / "metrics.parquet", artifacts.METRICS)
    for s in CHECKPOINTS:
        sharp = min(4.4, 0.5 + s / 25) + (0.3 * np.sin(s / 20) if s > 100 else 0)
        part = folder / "curvature" / f"step={s}" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        pd.DataFrame({"sharpness": [sharp], "top_eigenvalues": [[sharp, sharp / 2]], "lr": [0.5],
                      "sharpness_threshold": [4.0 if optim == "sgd" else np.nan]}).to_parquet(part)
    (folder / "signals").mkdir()
    rows, pairs = [], []
    for a, b in ((0, 200), (200, 400)):
        for g in range(3):
            for s in CHECKPOINTS:
                wiggle = (-1) ** g * 0.2 * np.sin(s / 15) if g < 2 else 0.0
                rows.append({"step_from": a, "step_to": b, "group": g, "step": s,
                             "mean_loss": 1.5 * np.exp(-s / 200) + 0.3 + wiggle + 0.1 * g})
        pairs.append({"step_from": a, "step_to": b, "group_a": 0, "group_b": 1, "size_a": 10, "size_b": 12,
                      "mean_delta_a": -0.1, "mean_delta_b": 0.1, "cosine": -0.62, "opposing": True})
    pd.DataFrame(rows).to_parquet(folder / "signals" / "group_losses.parquet")
    pd.DataFrame(pairs).to_parquet(folder / "signals" / "group_pairs.parquet")
    if not timeline:
        return folder
    nan = np.nan
    ev = [("loss_spike", 120, 115, 130, 5, 3.1, nan, nan, nan), ("loss_spike", 250, 245, 255, 5, 1.2, nan, nan, nan),
          ("loss_spike", 330, 325, 335, 5, 0.6, nan, nan, nan),
          ("sharpness_reach", 110, 100, 125, 25, 4.0, nan, nan, nan), ("sharpness_leave", 140, 125, 150, 25, 4.0, nan, nan, nan),
          ("sharpness_reach", 240, 225, 250, 25, 4.0, nan, nan, nan),
          ("memorization", 60, 50, 75, 25, nan, nan, nan, nan), ("generalization", 200, 175, 200, 25, nan, nan, nan, nan),
          ("antiphase", 260, 230, 290, 25, -0.8, 0, 1, 200), ("antiphase", 330, 310, 350, 25, -0.7, 0, 1, 200),
          ("antiphase", 110, 100, 120, 25, -0.9, 2, 0, 0)]
    # as gradscope.timeline writes them: steps and values float, the pair's columns nullable integers
    events = pd.DataFrame(ev, columns=["kind", "step", "step_start", "step_end", "resolution", "value", "group_a", "group_b",
                                       "step_from"]).astype({c: float for c in ("step", "step_start", "step_end", "resolution")})
    events = events.astype({c: "Int64" for c in ("group_a", "group_b", "step_from")})
    links = pd.DataFrame({"step": np.array(SPIKES, float), "value": [3.1, 1.2, 0.6], "resolution": [25.0, 25.0, 25.0],
                          "window": [25.0, 25.0, 25.0], "nearest_crossing_step": [110.0, 240.0, 240.0],
                          "nearest_crossing_kind": ["sharpness_reach", "sharpness_reach", "sharpness_reach"],
                          "crossing_distance": [10.0, 10.0, 90.0], "near_crossing": [True, True, False],
                          "antiphase_distance": [0.0, 0.0, 0.0], "antiphase_active": [True, True, True]})
    if optim != "sgd":  # no 2/lr: no crossings
        events = events[~events["kind"].str.startswith("sharpness")]
        links = links.assign(nearest_crossing_step=nan, nearest_crossing_kind=None, crossing_distance=nan, near_crossing=False)
    (folder / "timeline").mkdir()
    events.to_parquet(folder / "timeline" / "events.parquet")
    links.to_parquet(folder / "timeline" / "links.parquet")
    summary = {"n_spikes": 3, "n_crossings": 3 if optim == "sgd" else 0, "n_antiphase": 3,
               "spikes_near_crossing": 2, "spikes_near_crossing_fraction": 2 / 3, "spikes_near_crossing_expected": 0.3,
               "spikes_near_crossing_expected_sd": 0.23, "spikes_near_crossing_p": 0.04,
               "spikes_with_antiphase": 3, "spikes_with_antiphase_fraction": 1.0, "spikes_with_antiphase_expected": 0.47,
               "spikes_with_antiphase_expected_sd": 0.27, "spikes_with_antiphase_p": float("nan"), "window": None,
               "window_min": 25.0, "window_max": 50.0, "spike_resolution": 5.0, "crossing_resolution_max": 25.0,
               "antiphase_resolution_max": 25.0, "resolution": "loss spikes are placed to within the logging interval (5 steps).",
               "pair": {"group_a": 0, "group_b": 1, "step_from": 200, "step_to": 400, "cosine": -0.62},
               "loss_group_correlation": 0.41}
    if optim != "sgd":
        summary.update(spikes_near_crossing=None, spikes_near_crossing_expected=None)
    (folder / "timeline" / "summary.json").write_text(json.dumps(summary))  # NaN as Python writes it
    return folder


# ---- data, without a browser ---------------------------------------------------------------------
def test_timeline_data_from_the_run_folder(tmp_path):
    run = write_run(tmp_path / "run")
    data = tl.load(run)
    json.dumps(data, allow_nan=False)  # JSON-ready: NaN became null
    assert [s["step"] for s in data["spikes"]] == SPIKES
    assert [s["near_crossing"] for s in data["spikes"]] == [True, True, False]
    assert data["spikes"][0] == {"step": 120, "value": 3.1, "resolution": 5, "start": 115, "end": 130, "window": 25,
                                 "nearest_crossing": 110, "nearest_kind": "sharpness_reach", "distance": 10.0,
                                 "near_crossing": True, "antiphase_active": True}
    assert [e["step"] for e in data["reach"]] == [110, 240] and [e["step"] for e in data["leave"]] == [140]
    assert [e["step"] for e in data["generalization"]] == [200] and [e["step"] for e in data["memorization"]] == [60]
    assert [(e["start"], e["end"], e["a"], e["b"], e["from"]) for e in data["antiphase"]] == [
        (100, 120, 2, 0, 0), (230, 290, 0, 1, 200), (310, 350, 0, 1, 200)]
    pair = data["pair"]  # the summary's top pair
    assert (pair["a"], pair["b"], pair["from"], pair["to"], pair["cosine"]) == (0, 1, 200, 400, -0.62)
    losses = pd.read_parquet(run / "signals" / "group_losses.parquet")
    mine = losses[(losses["step_from"] == 200) & (losses["group"] == 1)].sort_values("step")
    assert pair["step"] == CHECKPOINTS.tolist() and np.allclose(pair["loss_b"], mine["mean_loss"], rtol=1e-5)
    assert data["summary"]["spikes_near_crossing"] == 2 and data["summary"]["spikes_with_antiphase_p"] is None


def test_top_pair_and_runs_without_a_timeline(tmp_path):
    ev = pd.DataFrame({"step_start": [0, 50, 10], "step_end": [40, 60, 50], "value": [-0.5, -0.9, -0.99],
                       "group_a": [1, 3, 1], "group_b": [2, 4, 2], "step_from": [0, 0, 100]})
    assert tl.antiphase_pair(ev) == (100, 1, 2)  # 40 steps against 10 and 40: the tie goes to the stronger (0.99)
    assert tl.antiphase_pair(ev.iloc[:0]) is None
    assert tl.load(write_run(tmp_path / "old", timeline=False)) is None  # older results: no tab content
    # without the summary's pair: the one the antiphase events name longest (0 and 1 of the groups of 200 -> 400)
    run = write_run(tmp_path / "run")
    summary = json.loads((run / "timeline" / "summary.json").read_text())
    (run / "timeline" / "summary.json").write_text(json.dumps({**summary, "pair": None}))
    assert (tl.load(run)["pair"]["a"], tl.load(run)["pair"]["from"]) == (0, 200)
    # group losses not written (yet): the events still show, without the pair's curves
    (run / "signals" / "group_losses.parquet").unlink()
    data = tl.load(run)
    assert data["pair"] is None and len(data["antiphase"]) == 3
    settings = default_settings()
    runs = [{"id": "tl/lr~0.5_seed~0", "name": "lr~0.5_seed~0"}, {"id": "tl/lr~0.5_seed~1", "name": "lr~0.5_seed~1"}]
    results = tmp_path / "results"
    write_run(results / "runs" / "tl" / "lr~0.5_seed~0")
    write_run(results / "runs" / "tl" / "lr~0.5_seed~1", timeline=False)
    payload = build_sweep_dashboard("tl", runs, results=results, settings=settings, out=tmp_path / "d.html", index_href=None)
    assert ["timeline" in r["data"] for r in payload["runs"]] == [True, False]
    text = (tmp_path / "d.html").read_text()
    assert 'data-view="timeline"' in text and 'id="fig-tl_groups"' in text and "registerView('timeline'" in text


# ---- the tab in a browser --------------------------------------------------------------------------
def legend(driver, fid):
    return driver.execute_script("return document.getElementById('fig-' + arguments[0]).data.map(t => t.name)", fid)


def test_timeline_tab_draws_linked_panels(tmp_path, tall):
    from support.browser import console_errors, figure, open_page

    browser = tall

    results = tmp_path / "results"
    names = {"sgd": "lr~0.5_opt~sgd", "adam": "lr~0.5_opt~adam", "old": "lr~0.5_opt~old"}
    write_run(results / "runs" / "tl" / names["sgd"])
    write_run(results / "runs" / "tl" / names["adam"], optim="adam")
    write_run(results / "runs" / "tl" / names["old"], timeline=False)
    out = tmp_path / "dashboard.html"
    build_sweep_dashboard("tl", [{"id": f"tl/{n}", "name": n} for n in names.values()], results=results,
                          settings=default_settings(), out=out, index_href=None)
    open_page(browser, out)
    browser.execute_script("gradscope.setRuns(arguments[0]); gradscope.show('timeline')",
                           [f"tl/{n}" for n in names.values()])
    loss, sharp, groups = (figure(browser, f) for f in ("tl_loss", "tl_sharpness", "tl_groups"))
    assert loss["names"] == ["training loss", "loss spike near a 2/lr crossing", "loss spike, no crossing near"]
    assert loss["points"] == len(STEPS) + 3
    assert sharp["names"] == ["sharpness λ_max", "2/lr", "sharpness reaches 2/lr", "sharpness leaves 2/lr"]
    assert groups["names"] == ["group 0", "group 1"]
    # every marker named in a legend: the spikes carried down, the shaded intervals, the event lines
    assert {"antiphase interval", "loss spike (step)", "generalization step", "memorization step"} <= set(legend(browser, "tl_groups"))
    assert {"generalization step", "memorization step"} <= set(legend(browser, "tl_loss"))
    shapes = browser.execute_script("return document.getElementById('fig-tl_groups').layout.shapes.filter(s => s.type === 'rect')"
                                    ".map(s => [s.x0, s.x1])")
    assert shapes == [[230, 290], [310, 350]]  # the top pair's antiphase intervals
    summary = browser.find_element("id", "gs-tl-summary").text
    assert "2 of 3 (67%); by chance 30% ± 23%, p = 0.04; 3 2/lr crossings" in summary
    assert "±25 to ±50" in summary and "spikes 5, crossings ≤ 25, antiphase ≤ 25" in summary
    assert "3 of 3 (100%); by chance 47% ± 27%; 3 antiphase intervals" in summary  # p NaN: left out
    assert "no 2/lr crossings" in summary and "no timeline for this run: run snakemake to make it" in summary
    png = tmp_path / "timeline.png"
    browser.save_screenshot(str(png))
    assert png.stat().st_size > 10_000

    # linked zoom: zooming one panel zooms the others, either way round
    browser.execute_script("Plotly.relayout(document.getElementById('fig-tl_loss'), {'xaxis.range': [100, 200]})")
    assert [round(v, 6) for v in figure(browser, "tl_groups")["range"]] == [100, 200]
    assert [round(v, 6) for v in figure(browser, "tl_sharpness")["range"]] == [100, 200]
    browser.execute_script("Plotly.relayout(document.getElementById('fig-tl_groups'), {'xaxis.range': [220, 360]})")
    assert [round(v, 6) for v in figure(browser, "tl_loss")["range"]] == [220, 360]
    assert [round(v, 6) for v in figure(browser, "tl_sharpness")["range"]] == [220, 360]
    browser.execute_script("gradscope.setRange(null)")

    # no 2/lr under Adam: the title says so, and there is no 2/lr line or crossing
    browser.execute_script("document.getElementById('gs-focus').value = arguments[0];"
                           "document.getElementById('gs-focus').dispatchEvent(new Event('change'))", f"tl/{names['adam']}")
    sharp = figure(browser, "tl_sharpness")
    assert sharp["names"] == ["sharpness λ_max"]
    assert "no 2/lr" in browser.execute_script("return document.getElementById('fig-tl_sharpness').layout.title.text")
    assert figure(browser, "tl_loss")["names"] == ["training loss", "loss spike"]
    # a run without timeline files: every panel says what to run
    browser.execute_script("document.getElementById('gs-focus').value = arguments[0];"
                           "document.getElementById('gs-focus').dispatchEvent(new Event('change'))", f"tl/{names['old']}")
    for fid in ("tl_loss", "tl_sharpness", "tl_groups"):
        assert "no timeline for this run: run snakemake to make it" in figure(browser, fid)["empty"]
    assert console_errors(browser) == []
