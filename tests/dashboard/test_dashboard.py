"""The dashboards: their data (unit tests), and the pages of the tiny workflow run (conftest's `done`) in a
real headless browser.

The browser is Debian's chromium driven by chromedriver through selenium. Where it cannot start
the browser tests skip with the reason, unless GRADSCOPE_REQUIRE_BROWSER=1 (set by .ci/run): then
they fail.
"""

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradscope import artifacts
from gradscope.cli import main
from gradscope.dashboard import collect, page
from support.workflow import snakemake
from support.browser import console_errors, figure, open_page


# ---- data, without a browser ---------------------------------------------------------------------
def test_selection_keeps_planted_and_flagged_and_fills_to_the_cap():
    ids = np.arange(100)
    planted = ids % 10 == 0  # 10 planted
    chosen = collect.select_examples(ids, planted, {3, 4, 5}, max_examples=30, seed=0)
    assert len(chosen) == 30 and set(ids[planted]) | {3, 4, 5} <= set(chosen)
    assert np.array_equal(chosen, collect.select_examples(ids, planted, {3, 4, 5}, max_examples=30, seed=0))
    # planted and flagged are kept past the cap; nothing else is added
    assert set(collect.select_examples(ids, planted, {3}, max_examples=5, seed=0)) == set(ids[planted]) | {3}


def test_run_status_from_the_artifacts(tmp_path):
    run = tmp_path / "results" / "runs" / "exp" / "a~1_seed~0"
    (run / "train").mkdir(parents=True)
    assert collect.run_status(run)["status"] == "pending"
    logs = tmp_path / "logs" / "train" / "exp"
    logs.mkdir(parents=True)
    (logs / "a~1_seed~0.log").write_text("2026-01-01 00:00:00,000 ERROR gradscope: failed\nTraceback ...\n")
    failed = collect.run_status(run, tmp_path / "logs")
    assert failed["status"] == "failed" and failed["detail"].startswith("train failed: see ") and "a~1_seed~0.log" in failed["detail"]
    metrics = pd.DataFrame({c: [0.0] for c in artifacts.METRICS}).astype({"step": int, "clipped": bool})
    artifacts.write_parquet(metrics, run / "train" / "metrics.partial.parquet", artifacts.METRICS)
    assert collect.run_status(run)["status"] == "failed" and collect.read_metrics(run) is not None
    artifacts.write_parquet(metrics, run / "train" / "metrics.parquet", artifacts.METRICS)
    assert collect.run_status(run)["status"] == "analysing"
    assert collect.parse_varying("a~1_lr~0.5_opt~adam_seed~0") == {"a": 1, "lr": 0.5, "opt": "adam", "seed": 0}


def test_page_data_is_safe_inside_a_script_element():
    text = page._json_for_script({"x": "</script><script>alert(1)</script>", "y": collect.clean([float("nan"), 1 / 3])})
    assert "</script>" not in text and json.loads(text) == {"x": "</script><script>alert(1)</script>", "y": [None, 0.333333]}


def test_a_view_can_be_added(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "VIEWS", dict(page.VIEWS))
    with pytest.raises(ValueError, match="no script"):
        page.add_view(page.View("influence", "Influence", [], load=lambda folder: {}))
    page.add_view(page.View("influence", "Influence", [page.Figure("influence_top", "top proponents")],
                            load=lambda folder: {"n": 1}, script="gradscope.registerView('influence', ctx => {});"))
    payload = {"runs": [], "grid_keys": [], "colors": {"run": {}}, "palette": [], "settings": {}, "logx": False}
    text = page.render_page(payload, list(page.VIEWS.values()), title="t", index_href=None)
    assert 'data-view="influence"' in text and 'id="fig-influence_top"' in text and "registerView('influence'" in text


# ---- one tiny workflow run, its pages in a browser ---------------------------------------------------
@pytest.fixture(scope="module")
def built(done, tmp_path_factory):
    """The tiny config's complete workflow run (conftest's `done`: `rule all` writes the dashboards and the
    index), plus a copy of its results with one run failed and one not trained, rebuilt by `gradscope
    dashboard` as a results folder mid-sweep would be."""
    cwd = done
    partial = tmp_path_factory.mktemp("partial") / "results"
    shutil.copytree(cwd / "results", partial, ignore=shutil.ignore_patterns("*.html", "*.png", "*.gif", "*.pt"))
    failed = partial / "runs" / "mod" / "wd~1.0_seed~0"
    for sub in ("examples", "curvature", "signals"):
        shutil.rmtree(failed / sub)
    (failed / "train" / "metrics.parquet").rename(failed / "train" / "metrics.partial.parquet")
    (partial / "runs" / "mod" / "wd~2.0_seed~0").mkdir()
    (partial / "runs" / "mod" / "wd~2.0_seed~0" / "config.yaml").write_text("{}\n")  # resolved, not trained
    result = CliRunner().invoke(main, ["dashboard", "--results", str(partial)])
    assert result.exit_code == 0, result.output
    return {"results": cwd / "results", "partial": partial, "cli_output": result.output}


def test_workflow_writes_the_pages(built):
    results = built["results"]
    for rel in ("index.html", "sweeps/flips/dashboard.html", "sweeps/mod/dashboard.html"):
        text = (results / rel).read_text()
        assert "http://" not in text.split("<script")[0] and text.rstrip().endswith("</html>"), rel
    index = (results / "index.html").read_text()
    assert "sweeps/flips/dashboard.html" in index and "sweeps/mod/dashboard.html" in index
    assert "wrote" in built["cli_output"] and "mod/dashboard.html" in built["cli_output"]
    # nothing to redo: the pages are up to date with their inputs
    assert "Nothing to be done" in snakemake(results.parent, "-n", "--cores", "1", "results/index.html").stdout + \
        snakemake(results.parent, "-n", "--cores", "1", "results/index.html").stderr


def test_pages_load_and_every_view_draws(built, browser):
    for name in ("flips", "mod"):
        path = built["results"] / "sweeps" / name / "dashboard.html"
        open_page(browser, path)
        views = browser.execute_script("return Object.keys(gradscope.views)")
        assert views[:5] == ["training", "layers", "curvature", "signals", "examples"]  # then any added view
        drawn = {}
        for view in views:
            browser.execute_script("gradscope.show(arguments[0])", view)
            ids = browser.execute_script(
                "return [...document.querySelectorAll('#view-' + arguments[0] + ' .gs-fig')].map(e => e.id.slice(4))", view)
            for fid in ids:
                drawn[fid] = figure(browser, fid)
                assert drawn[fid] is not None, f"{name}: figure {fid} of view {view} was not drawn"
        expected = ["loss", "acc", "lr", "grad_norm", "weight_norm", "layer_weight_norm", "tiers", "sharpness",
                    "eigenvalues", "hessian_trace", "fisher_gn", "flagged", "group_losses", "loss_dist", "cartography", "pca"]
        if name == "flips":  # planted labels: scored detectors; SGD: no Adam state
            expected += ["auroc", "ap", "dloss"]
            assert "no Adam state" in drawn["adam_lr"]["empty"]
        else:
            expected += ["adam_lr", "adam_snr"]
        assert [f for f in expected if not drawn[f]["points"]] == [], f"{name}: empty figures"
        assert "curvature.density: false" in drawn["density"]["empty"]
        assert console_errors(browser) == [], name
    open_page(browser, built["results"] / "index.html")
    assert browser.find_element("link text", "dashboard") and console_errors(browser) == []


def test_run_picker_and_step_range_change_the_plots(built, browser):
    open_page(browser, built["results"] / "sweeps" / "mod" / "dashboard.html")
    both = figure(browser, "loss")["names"]
    assert {"wd~0.0_seed~0 test", "wd~1.0_seed~0 test"} <= set(both)
    browser.execute_script("gradscope.setRuns(['mod/wd~1.0_seed~0'])")
    one = figure(browser, "loss")
    assert set(one["names"]) == {"wd~1.0_seed~0 train", "wd~1.0_seed~0 test"}
    # the sweep-group filter: wd = 0.0 leaves only that run in the picker
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "gs-filter-wd")).select_by_visible_text("0.0")
    shown = browser.execute_script("return [...document.getElementById('gs-runs').options].filter(o => !o.hidden).map(o => o.value)")
    assert shown == ["mod/wd~0.0_seed~0"]
    Select(browser.find_element("id", "gs-filter-wd")).select_by_visible_text("all")
    Select(browser.find_element("id", "gs-runs")).select_by_value("mod/wd~0.0_seed~0")
    assert set(figure(browser, "loss")["names"]) == {"wd~0.0_seed~0 train", "wd~0.0_seed~0 test"}
    assert figure(browser, "loss")["ys"] != one["ys"]
    # the step range: typed in, every linked figure follows; zooming one figure moves the others
    logx = browser.find_element("id", "gs-logx")
    if logx.is_selected():
        logx.click()
    for fid, value in (("gs-step-lo", "5"), ("gs-step-hi", "15")):
        box = browser.find_element("id", fid)
        box.clear()
        box.send_keys(value + "\n")
    time.sleep(0.3)
    assert [round(v, 6) for v in figure(browser, "acc")["range"]] == [5, 15]
    browser.execute_script("Plotly.relayout(document.getElementById('fig-loss'), {'xaxis.range': [2, 8]})")
    time.sleep(0.3)
    assert [round(v, 6) for v in figure(browser, "weight_norm")["range"]] == [2, 8]
    assert browser.find_element("id", "gs-step-lo").get_attribute("value") == "2"
    browser.execute_script("gradscope.show('curvature')")
    assert [round(v, 6) for v in figure(browser, "sharpness")["range"]] == [2, 8]
    assert console_errors(browser) == []


def test_example_picker_shows_the_chosen_trajectories(built, browser):
    open_page(browser, built["results"] / "sweeps" / "flips" / "dashboard.html")
    browser.execute_script("gradscope.show('examples')")
    ids = browser.execute_script("return gradscope.data.runs[0].data.examples.ids.slice(0, 2)")
    box = browser.find_element("id", "gs-ex-ids")
    box.clear()
    box.send_keys(f"{ids[0]}, {ids[1]}")
    browser.find_element("id", "gs-ex-show").click()
    names = figure(browser, "ex_loss")["names"]
    assert names[0].startswith("mean of all") and [n.split(" (")[0] for n in names[1:]] == [f"example {i}" for i in ids]
    assert "chosen" in figure(browser, "pca")["names"]
    # the top-k of a detector at a checkpoint adds its examples
    browser.find_element("id", "gs-ex-clear").click()
    browser.find_element("id", "gs-topk-add").click()
    assert len(figure(browser, "ex_p_true")["names"]) == 1 + 5
    # a run mid-sweep: the CLI's pages mark the failed and the pending run
    open_page(browser, built["partial"] / "sweeps" / "mod" / "dashboard.html")
    labels = browser.execute_script("return [...document.getElementById('gs-runs').options].map(o => o.text)")
    assert labels == ["wd~0.0_seed~0", "wd~1.0_seed~0 [failed]", "wd~2.0_seed~0 [pending]"]
    browser.execute_script("gradscope.setRuns(['mod/wd~1.0_seed~0', 'mod/wd~2.0_seed~0'])")
    assert figure(browser, "loss")["names"] == ["wd~1.0_seed~0 train", "wd~1.0_seed~0 test"]  # its partial metrics
    browser.execute_script("gradscope.show('examples')")
    assert "failed" in figure(browser, "ex_loss")["empty"]
    assert console_errors(browser) == []


def test_influence_tab_shows_the_chosen_test_example(built, browser):
    # The Influence tab (gradscope.dashboard.influence): the focus run's chosen test example's top
    # proponents and opponents as they are in influence/top.parquet; another test example, other bars;
    # clicking a bar follows that training example in the Examples tab.
    from selenium.webdriver.support.ui import Select

    open_page(browser, built["results"] / "sweeps" / "flips" / "dashboard.html")
    browser.execute_script("gradscope.show('influence')")
    top = pd.read_parquet(built["results"] / "runs" / "flips" / "seed~0" / "influence" / "top.parquet")
    select = Select(browser.find_element("id", "gs-inf-test"))
    first = int(select.first_selected_option.get_attribute("value"))
    mine = top[top["test_id"] == first].sort_values(["kind", "rank"], ascending=[False, True])
    bars = figure(browser, "inf_top")
    np.testing.assert_allclose(bars["ys"][0], mine["score"].to_numpy(), rtol=1e-5)
    assert figure(browser, "inf_contrib")["points"] == 6 * 3  # 3 proponents and 3 opponents x 3 checkpoints
    other = select.options[1].get_attribute("value")
    select.select_by_value(other)
    assert figure(browser, "inf_top")["ys"] != bars["ys"]
    train_id = int(top[(top["test_id"] == int(other)) & (top["kind"] == "opponent") & (top["rank"] == 1)]["train_id"].item())
    browser.execute_script("gradscope.addExamples([arguments[0]])", train_id)
    assert train_id in browser.execute_script("return gradscope.state.chosen")
    assert console_errors(browser) == []
