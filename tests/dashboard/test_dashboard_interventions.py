"""The dashboard's Interventions tab (gradscope.dashboard.interventions): its data from an intervention
experiment's hand-written tables (interventions and effects, as rule interventions writes them; no workflow),
no tab for another sweep, the message where the tables are missing, and the tab in headless chromium
(conftest's `browser`): a plot per measured figure, the runs' table, no console errors."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from gradscope import artifacts, interventions, layout, tables
from gradscope.dashboard import build_sweep_dashboard, default_settings
from gradscope.dashboard import interventions as iv_tab

EXP, PARENT = "iv", "flips"
SEEDS = (0, 1, 2)
KS = (10, 20)
DETECTORS = ("aum", "el2n")
STEPS = np.arange(0, 101, 10)


def write_run(results, run_id, *, intervene=None):
    """A run folder as far as the dashboard needs it: its config.yaml (an intervention's with its `intervene`
    block) and its metrics."""
    folder = layout.run_dir(run_id, results)
    folder.mkdir(parents=True)
    settings = {"optim": {"name": "sgd", "grad_clip": None}, **({"intervene": intervene} if intervene else {})}
    layout.in_run(folder, "config").write_text(yaml.safe_dump(settings))
    loss = 2.0 * np.exp(-STEPS / 40) + 0.05
    metrics = pd.DataFrame({"step": STEPS, "lr": 0.5, "train_loss": loss, "train_acc": 1 - loss / 3, "test_loss": loss,
                            "test_acc": 1 - loss / 2.5, "grad_norm": 1.0, "clipped": False, "clipped_fraction": 0.0,
                            "weight_norm": 10.0, "wall_s": STEPS / 100})
    artifacts.write_parquet(metrics, layout.in_run(folder, "metrics"), artifacts.METRICS)
    return folder


def intervention_runs() -> list[dict]:
    """The experiment's runs: per detector, k and seed a flagged and a control arm (removing el2n's top k helps,
    more with k; aum's as much as random), no planted groups (worst-group accuracy not measured)."""
    rng = np.random.default_rng(0)
    runs = []
    for det in DETECTORS:
        for k in KS:
            for seed in SEEDS:
                for arm in interventions.ARMS:
                    gain = (0.004 * k if det == "el2n" else 0.0) if arm == "flagged" else 0.0
                    runs.append({"run_id": f"{EXP}/det~{det}_k~{k}_arm~{arm}_seed~{seed}", "arm": arm, "detector": det,
                                 "k": k, "action": "remove", "seed": seed,
                                 "final_test_acc": 0.8 + gain + 0.01 * rng.normal(),
                                 "worst_group_test_acc": None,
                                 "generalization_delay_steps": float(40 + (seed * 10 if arm == "flagged" else 0)),
                                 "n_loss_spikes": int(rng.integers(0, 4)),
                                 "max_sharpness": 3.0 + 0.2 * rng.normal()
                                 - (0.5 if det == "el2n" and arm == "flagged" else 0)})
    parents = [{"run_id": f"{PARENT}/seed~{s}", "arm": "parent", "detector": None, "k": None, "action": None, "seed": s,
                "final_test_acc": 0.79 + 0.01 * s, "worst_group_test_acc": None, "generalization_delay_steps": 40.0,
                "n_loss_spikes": 1, "max_sharpness": 3.1} for s in SEEDS]
    return runs + parents  # as the stage writes them: its own runs, then the parent's


def write_sweep(results, *, tables_written=True) -> list[dict]:
    """An intervention experiment's run folders and, as rule interventions writes them, its two tables; the
    dashboard's runs list."""
    rows = intervention_runs()
    mine = [r for r in rows if r["arm"] != "parent"]
    for r in mine:
        write_run(results, r["run_id"], intervene={"parent": PARENT, "detector": r["detector"], "k": r["k"],
                                                   "action": r["action"], "arm": r["arm"]})
    if tables_written:
        table = pd.DataFrame(rows)
        artifacts.write_parquet(table, layout.sweep_file("interventions", EXP, results), None, table="interventions",
                                run_id=EXP)
        artifacts.write_parquet(interventions.effects(table), layout.sweep_file("effects", EXP, results), tables.EFFECTS,
                                table="effects", run_id=EXP)
    return [{"id": r["run_id"], "name": r["run_id"].split("/", 1)[1]} for r in mine]


def build(tmp_path, runs, results, experiment=EXP):
    out = tmp_path / f"{experiment}.html"
    payload = build_sweep_dashboard(experiment, runs, results=results, settings=default_settings(), out=out,
                                    index_href=None)
    return payload, out


def embedded(path) -> dict:
    """The page's data as it carries it (its JSON script element)."""
    text = path.read_text()
    return json.loads(re.search(r'<script type="application/json" id="gs-data">(.*?)</script>', text, re.S).group(1))


# ---- data, without a browser ---------------------------------------------------------------------
def test_the_page_carries_the_effects_and_the_runs(tmp_path):
    results = tmp_path / "results"
    runs = write_sweep(results)
    _, out = build(tmp_path, runs, results)
    text = out.read_text()
    assert 'data-view="interventions"' in text and "registerView('interventions'" in text
    data = embedded(out)["sweep"]["interventions"]
    effects = artifacts.read_parquet(layout.sweep_file("effects", EXP, results))
    assert len(data["effects"]) == len(effects) == len(DETECTORS) * len(KS) * len(interventions.FIGURES)
    shown = pd.DataFrame(data["effects"]).set_index(["detector", "k", "action", "figure"]).sort_index()
    table = effects.set_index(["detector", "k", "action", "figure"]).sort_index()
    assert shown.index.equals(table.index)
    for col in ("n_seeds", "parent_mean", "flagged_mean", "control_mean", "effect", "effect_sd", "ci_low", "ci_high",
                "control_sd"):  # rounded to 6 significant digits; NaN (worst-group accuracy) as null
        np.testing.assert_allclose(shown[col].astype(float), table[col].astype(float), rtol=1e-5, equal_nan=True)
    assert shown["beyond_spread"].tolist() == table["beyond_spread"].tolist()
    assert shown.loc[("el2n", 20, "remove", "final_test_acc"), "effect"] > 0.05  # the fixture's planted effect
    assert [f["key"] for f in data["figures"]] == list(interventions.FIGURES)
    assert [f["label"] for f in data["figures"]] == list(interventions.FIGURES.values())
    # the runs' table: one row per run, the parent's first
    rows = data["runs"]
    assert len(rows) == len(intervention_runs()) and [r["arm"] for r in rows[:3]] == ["parent"] * 3
    assert rows[0] == {"run_id": f"{PARENT}/seed~0", "arm": "parent", "detector": None, "k": None, "action": None,
                       "seed": 0, "final_test_acc": 0.79, "worst_group_test_acc": None,
                       "generalization_delay_steps": 40, "n_loss_spikes": 1, "max_sharpness": 3.1}
    assert data["columns"] == list(interventions.FIGURES) and data["missing"] == []
    by_id = {r["run_id"]: r for r in rows}
    written = artifacts.read_parquet(layout.sweep_file("interventions", EXP, results)).set_index("run_id")
    for run_id, r in written.iterrows():
        assert by_id[run_id]["final_test_acc"] == pytest.approx(r["final_test_acc"], rel=1e-5)


def test_no_tab_for_a_sweep_that_is_no_intervention(tmp_path):
    results = tmp_path / "results"
    names = ["lr~0.1_seed~0", "lr~0.5_seed~0"]
    for n in names:
        write_run(results, f"{PARENT}/{n}")
    payload, out = build(tmp_path, [{"id": f"{PARENT}/{n}", "name": n} for n in names], results, experiment=PARENT)
    text = out.read_text()
    assert payload["sweep"] == {} and embedded(out)["sweep"] == {}
    assert 'data-view="interventions"' not in text and "registerView('interventions'" not in text
    assert 'id="fig-iv_final_test_acc"' not in text and 'data-view="timeline"' in text  # the other tabs stay


def test_an_intervention_without_its_tables_says_so(tmp_path):
    results = tmp_path / "results"
    runs = write_sweep(results, tables_written=False)
    payload, out = build(tmp_path, runs, results)
    data = payload["sweep"]["interventions"]
    assert data["effects"] is None and data["runs"] is None
    assert data["missing"] == [f"{iv_tab.NO_INTERVENTIONS} (not written: {layout.IN_SWEEP['effects']}, "
                               f"{layout.IN_SWEEP['interventions']})"]
    assert 'data-view="interventions"' in out.read_text()
    # the effects written, the runs' table not (yet): the plots, and the message for the table
    write_sweep(tmp_path / "other")
    layout.sweep_file("interventions", EXP, tmp_path / "other").unlink()
    data = iv_tab.load_sweep(EXP, tmp_path / "other", [])
    assert data["effects"] and data["runs"] is None and layout.IN_SWEEP["interventions"] in data["missing"][0]
    # a damaged table: named, with what to run
    layout.sweep_file("effects", EXP, tmp_path / "other").write_bytes(b"not parquet")
    data = iv_tab.load_sweep(EXP, tmp_path / "other", [])
    assert data["effects"] is None and any("does not read" in m and "snakemake" in m for m in data["missing"])


# ---- the tab in a browser --------------------------------------------------------------------------
def test_interventions_tab_draws_a_plot_per_measured_figure(tmp_path, tall):
    from support.browser import console_errors, figure, open_page

    browser = tall
    results = tmp_path / "results"
    runs = write_sweep(results)
    _, out = build(tmp_path, runs, results)
    open_page(browser, out)
    browser.execute_script("gradscope.show('interventions')")
    effects = artifacts.read_parquet(layout.sweep_file("effects", EXP, results))
    for key in ("final_test_acc", "generalization_delay_steps", "n_loss_spikes", "max_sharpness"):
        fig = figure(browser, f"iv_{key}")
        assert fig["names"] == [f"{d}, remove ({len(SEEDS)} seeds)" for d in DETECTORS], key
        for d, ys in zip(DETECTORS, fig["ys"]):  # the effects against k, as the table has them
            mine = effects[(effects["figure"] == key) & (effects["detector"] == d)].sort_values("k")
            np.testing.assert_allclose(ys, mine["effect"], rtol=1e-5)
        layout_ = browser.execute_script("const l = document.getElementById('fig-iv_' + arguments[0]).layout;"
                                         "return {x: l.xaxis.title.text, y: l.yaxis.title.text, shapes: l.shapes,"
                                         " range: l.yaxis.range}", key)
        assert layout_["x"] == "k (examples intervened on)" and layout_["y"] == f"Δ {interventions.FIGURES[key]}"
        assert [(s["y0"], s["y1"], s["line"]["dash"]) for s in layout_["shapes"]] == [(0, 0, "dash")]  # the zero line
        assert layout_["range"][0] < 0 < layout_["range"][1]
    # worst-group accuracy: no planted groups, nothing measured: no plot
    assert browser.execute_script("return document.getElementById('fig-iv_worst_group_test_acc').style.display") == "none"
    hover = browser.execute_script("return document.getElementById('fig-iv_final_test_acc').data[1].hovertext[1]")
    row = effects.query("figure == 'final_test_acc' and detector == 'el2n' and k == 20").iloc[0]
    assert "el2n, remove, k = 20" in hover and "3 seeds" in hover and "beyond the seed-to-seed spread: yes" in hover
    assert f"flagged {float(f'{row.flagged_mean:.4g}'):g}" in hover and "control " in hover and "parent " in hover
    # the runs' table: a row per run, the parent's first, the figures' labels as headers
    cells = browser.execute_script("return [...document.querySelectorAll('#gs-iv-runs tr')].map(r => "
                                   "[...r.children].map(c => c.textContent))")
    assert cells[0][:6] == ["run", "arm", "detector", "k", "action", "seed"]
    assert cells[0][6:] == list(interventions.FIGURES.values())
    assert len(cells) == 1 + len(intervention_runs())
    assert [c[1] for c in cells[1:4]] == ["parent"] * 3 and cells[1][0] == f"{PARENT}/seed~0" and cells[1][2] == "–"
    assert {c[1] for c in cells[4:]} == set(interventions.ARMS)
    assert browser.find_element("id", "gs-iv-note").text == ""
    png = tmp_path / "interventions.png"
    browser.save_screenshot(str(png))
    assert png.stat().st_size > 10_000
    assert console_errors(browser) == []

    # an intervention whose tables are not written: the tab says so
    other = tmp_path / "pending"
    _, out = build(tmp_path, write_sweep(other, tables_written=False), other)
    open_page(browser, out)
    browser.execute_script("gradscope.show('interventions')")
    assert iv_tab.NO_INTERVENTIONS in browser.find_element("id", "gs-iv-note").text
    shown = browser.execute_script("return [...document.querySelectorAll('#view-interventions .gs-fig')]"
                                   ".filter(e => e.style.display !== 'none').map(e => e.id)")
    assert shown == []  # no empty plots: the line above says why
    png = tmp_path / "pending.png"
    browser.save_screenshot(str(png))
    assert browser.find_element("id", "gs-iv-runs").text == ""
    assert console_errors(browser) == []
