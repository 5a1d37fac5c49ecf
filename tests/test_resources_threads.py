"""Resources that fit the work: the config's `threads` block (each heavy stage's threads, schema default 1),
resources.use_threads (what a job's script sets and logs), the dashboard's memory estimate (from its runs'
examples, checkpoints and dashboard.max_examples) and every rule's memory and time growing with Snakemake's
`attempt` (the functions of workflow/rules/common.smk, called as Snakemake calls them).

The workflow side (the threads reaching each rule's jobs, one real job using them) is
tests/workflow/test_threads.py."""

import copy
import logging
import re
from types import SimpleNamespace

import pytest
import torch
import yaml

from gradscope import resources
from gradscope.config import ConfigError, expand_runs, load_config, load_schema
from support.workflow import REPO, TINY

RULES = REPO / "workflow" / "rules"


def tiny() -> dict:
    return yaml.safe_load(TINY.read_text())


# ---- the setting ----

def test_threads_default_to_one_for_every_heavy_stage_as_gradscope_train_does():
    block = load_schema()["properties"]["threads"]
    assert tuple(block["properties"]) == resources.THREADED_STAGES
    assert load_config(tiny())["threads"] == {stage: 1 for stage in resources.THREADED_STAGES}
    assert resources.TRAIN_THREADS == block["properties"]["train"]["default"]  # the rule and `gradscope train` agree
    assert load_config({**tiny(), "threads": {"curvature": 2}})["threads"]["curvature"] == 2


@pytest.mark.parametrize("value, said", [
    ({"curvature": 0}, r"threads\.curvature: 0 is less than the minimum of 1"),
    ({"train": "two"}, r"threads\.train: 'two' is not of type 'integer'"),
    ({"curvatur": 2}, r"unknown key\(s\) 'curvatur' at threads; allowed: curvature, "),
    (4, r"bad value at threads: 4 is not of type 'object'"),
])
def test_an_invalid_threads_value_is_refused_naming_the_key(value, said):
    with pytest.raises(ConfigError, match=said):
        load_config({**tiny(), "threads": value})


def test_each_heavy_rule_reads_its_threads_from_the_setting_and_no_rule_hardcodes_more():
    read = {}
    for path in RULES.glob("*.smk"):
        for rule, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            if m := re.search(r"^    threads: (.*)$", body, re.M):
                read[rule] = m.group(1).split("#")[0].strip()
    for stage in resources.THREADED_STAGES:
        assert read[stage] == f'get_threads("{stage}")', stage
    assert {rule: t for rule, t in read.items() if rule not in resources.THREADED_STAGES and t != "1"} == {}


def test_use_threads_sets_torch_and_blas_and_logs_the_count(caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="gradscope.resources"):
            used = resources.use_threads(2)
        assert used["torch"] == torch.get_num_threads() == 2
        assert used.get("blas", 2) == 2
        assert re.search(r"threads: 2 \(.*torch 2", caplog.text)
        assert "torch" not in resources.use_threads(1, torch_threads=False)
    finally:
        resources.use_threads(before)


# ---- the dashboard's memory ----

def dashboard_estimate(config: dict, runs: int | None = None) -> dict:
    """The flips sweep's dashboard; runs: that many runs like its first (a sweep's size without expanding one)."""
    cfg = load_config(config)
    settings = [r.settings for r in expand_runs(cfg) if r.experiment == "flips"]
    return resources.estimate_dashboard(settings[:1] * runs if runs else settings, cfg["dashboard"])


def sized(config: dict, *, n_train=2000, n_test=500, checkpoints=20, max_examples=None) -> dict:
    c = copy.deepcopy(config)
    flips = c["experiments"]["flips"]
    flips["data"]["planted_flips"].update(n_train=n_train, n_test=n_test)
    flips["train"].update(steps=2000, log_every=10, checkpoints={"log_spaced": checkpoints})
    flips["seeds"] = [0]
    if max_examples is not None:
        c["dashboard"] = {"max_examples": max_examples}
    return c


def test_dashboard_memory_grows_with_the_examples_the_checkpoints_the_runs_and_max_examples():
    base = dashboard_estimate(sized(tiny()))["mem_mb"]
    assert base >= resources.BASE_MB
    assert dashboard_estimate(sized(tiny(), n_train=200000, n_test=50000))["mem_mb"] > base
    assert dashboard_estimate(sized(tiny(), checkpoints=200))["mem_mb"] > base
    assert dashboard_estimate(sized(tiny()), runs=400)["mem_mb"] > base
    many = {"n_train": 200000, "n_test": 1000}
    assert (dashboard_estimate(sized(tiny(), **many, max_examples=50000), runs=50)["mem_mb"]
            > dashboard_estimate(sized(tiny(), **many), runs=50)["mem_mb"])


def test_dashboard_estimate_covers_the_measured_peak():
    # bench/bench_dashboard.py: a 100-run sweep of 2,000 training and 500 test examples at 20 checkpoints
    # peaked at 0.66 GB
    assert dashboard_estimate(sized(tiny()), runs=100)["mem_mb"] >= 2 * 660


# ---- every request grows with `attempt`: the functions of common.smk ----

def common_resources(config: dict) -> dict:
    """The resources section of workflow/rules/common.smk (plain Python, the file's last section), run
    with the names it uses from the rest of the file, as the workflow has them for `config`."""
    text = (RULES / "common.smk").read_text()
    marker = "# ---- resources:"
    assert marker in text, "common.smk's resources section moved: update this test"
    cfg = load_config(config)
    runs = {r.id: r for r in expand_runs(cfg)}
    ns = {"gs_resources": resources, "RUNS": runs, "PER_RUN": cfg["checkpoint_jobs"] == "per_run", "CONFIG": cfg,
          "DATASET_OF": {}, "get_intervention_runs": lambda wc: [],
          "get_experiment_runs": lambda wc: [r for r in runs.values() if r.experiment == wc.experiment]}
    exec(compile(text[text.index(marker):], str(RULES / "common.smk"), "exec"), ns)
    return ns


def requested_rules() -> set[str]:
    """The names the rules pass to get_mem_mb (and get_runtime)."""
    return {m for path in RULES.glob("*.smk") for m in re.findall(r'get_mem_mb\("(\w+)"\)', path.read_text())}


def test_no_rule_asks_for_a_fixed_memory_or_time():
    for path in RULES.glob("*.smk"):
        fixed = re.findall(r"^\s+(?:mem_mb|runtime)=\d+", path.read_text(), re.M)
        assert not fixed, f"{path.name}: {fixed} does not grow on retry (common.smk per_attempt does)"


def test_every_rules_memory_and_time_grow_with_attempt():
    ns = common_resources(tiny())
    wc = SimpleNamespace(experiment="flips", run="seed~0")
    rules = requested_rules() - {"generate_data", "interventions"}  # (per dataset, per intervention sweep)
    assert {"dashboard", "dashboard_index", "report", "sweep_report", "train"} <= rules
    for rule in rules:
        for key in ("get_mem_mb", "get_runtime"):
            f = ns[key](rule)
            assert callable(f), (rule, key)
            one = f(wc, 1)
            assert one > 0 and f(wc, 2) == 2 * one and f(wc, 3) == 3 * one, (rule, key)
    fixed = ns["per_attempt"](500)
    assert (fixed(wc, 1), fixed(wc, 2)) == (500, 1000)


def test_the_dashboard_rule_asks_for_its_estimate_which_grows_with_the_data():
    wc = SimpleNamespace(experiment="flips")
    small = common_resources(sized(tiny()))["get_mem_mb"]("dashboard")
    big_config = sized(tiny(), n_train=400000, n_test=100000, checkpoints=100)
    big = common_resources(big_config)["get_mem_mb"]("dashboard")
    assert small(wc, 1) == dashboard_estimate(sized(tiny()))["mem_mb"]
    assert big(wc, 1) == dashboard_estimate(big_config)["mem_mb"] > small(wc, 1)
    assert big(wc, 2) == 2 * big(wc, 1)


def test_threads_of_the_rules_come_from_the_config():
    ns = common_resources({**tiny(), "threads": {"influence": 2}})
    assert ns["get_threads"]("influence") == 2 and ns["get_threads"]("curvature") == 1
