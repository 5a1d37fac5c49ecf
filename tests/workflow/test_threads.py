"""The config's `threads` block reaches the heavy rules' jobs (Snakemake's plan), a bad value stops the
workflow naming the key, and a job run at 2 threads uses 2 (its log says what torch and OMP_NUM_THREADS
were). The setting itself and the memory that grows on retry: tests/test_resources_threads.py."""

import copy
import re

import pytest
import yaml

from gradscope import layout, resources
from support.workflow import BASE, TINY, copy_workflow, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def planned_threads(cwd, *args) -> dict[str, set[int]]:
    """The threads of each planned job, by rule, from a dry run's job listing (a job of 1 thread has no line)."""
    proc = snakemake(cwd, "-n", *args)
    jobs: dict[str, list[int]] = {}
    current: list[int] = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.fullmatch(r"\s*(?:local)?rule (\w+):", line):  # indented: a job of a group
            current = jobs.setdefault(m.group(1), [])
            current.append(1)
        elif (m := re.fullmatch(r"\s*threads: (\d+)", line)) and current:
            current[-1] = int(m.group(1))
    return {rule: set(t) for rule, t in jobs.items()}


def test_each_stages_threads_reach_its_jobs_and_the_rest_stay_at_one(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["threads"] = {stage: 2 for stage in resources.THREADED_STAGES}
    plan = planned_threads(copy_workflow(tmp_path / "wf", config), "--cores", "2")
    assert {rule for rule, t in plan.items() if t == {2}} == set(resources.THREADED_STAGES) - {"import_run"}  # (no source)
    assert all(t == {1} for rule, t in plan.items() if rule not in resources.THREADED_STAGES)
    config["threads"] = {"curvature": 3, "influence": 2}  # each stage its own, Snakemake's --cores the cap
    plan = planned_threads(copy_workflow(tmp_path / "some", config), "--cores", "2")
    assert plan["curvature"] == plan["influence"] == {2} and plan["extract_examples"] == plan["train"] == {1}
    # the default: every job on one thread, as before the setting
    plan = planned_threads(copy_workflow(tmp_path / "default", yaml.safe_load(TINY.read_text())), "--cores", "2")
    assert all(t == {1} for t in plan.values()), plan


def test_a_bad_threads_value_stops_the_workflow_naming_the_key(tmp_path):
    config = {**yaml.safe_load(TINY.read_text()), "threads": {"curvature": 0}}
    proc = snakemake(copy_workflow(tmp_path / "wf", config), "-n", "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"config/config\.yaml: invalid gradscope config:\s+bad value at threads\.curvature: 0", out), out[-2000:]


def test_a_curvature_job_at_two_threads_uses_two(tmp_path):
    config = copy.deepcopy(BASE)
    config["threads"] = {"curvature": 2}
    cwd = copy_workflow(tmp_path / "wf", config)
    run = "e/seed~0"
    snakemake(cwd, "--cores", "2", layout.run_file("curvature", run, step=0),
              layout.run_file("examples", run, step=0))  # one job of each (and the data and training)
    text = (cwd / layout.log("curvature", "step").format(experiment="e", run="seed~0", step=0)).read_text()
    # what the job's torch and OpenMP pools were set to, from the job's own process
    assert re.search(r"INFO gradscope\.resources: threads: 2 \(omp_num_threads 2, torch 2\b", text), text
    text = (cwd / layout.log("extract_examples", "step").format(experiment="e", run="seed~0", step=0)).read_text()
    assert "threads: 1 (omp_num_threads 1, torch 1" in text  # the default
