"""Each rule's cluster resources: estimated from the run's settings, overridable, GPUs only for CUDA."""

import copy
import re

import pytest
import yaml

from gradscope import resources
from gradscope.config import expand_runs, load_config
from support.workflow import REPO, TINY, copy_workflow, snakemake

RULES = ("generate_data", "train", "extract_examples", "curvature", "detect_signals", "animate", "plots", "timeline",
         "report")


def run_settings(config: dict, run_id: str | None = None) -> dict:
    runs = expand_runs(load_config(config))
    return next(r for r in runs if run_id in (None, r.id)).settings


def bigger(config: dict) -> dict:
    """The flips experiment of the tiny config with a larger model and data set."""
    c = copy.deepcopy(config)
    c["experiments"]["flips"]["data"]["planted_flips"].update(n_train=60000, n_test=10000, n_features=784, n_classes=10)
    c["experiments"]["flips"]["model"].update(depth=3, width=2048)
    c["experiments"]["flips"]["train"].update(steps=5000, checkpoints={"every": 2500})
    c["experiments"]["flips"]["curvature"].update(subset_size=5000, lanczos_iters=30, trace_max_samples=50)
    return c


def test_estimates_grow_with_the_model_the_data_and_the_steps():
    tiny = yaml.safe_load(TINY.read_text())
    small, big = run_settings(tiny, "flips/seed~0"), run_settings(bigger(tiny), "flips/seed~0")
    for rule in RULES:
        a, b = resources.estimate(rule, small), resources.estimate(rule, big)
        assert a["mem_mb"] >= resources.BASE_MB and a["runtime"] >= resources.MIN_RUNTIME
        assert b["mem_mb"] >= a["mem_mb"] and b["runtime"] >= a["runtime"], rule
    for rule in ("train", "extract_examples", "curvature"):
        a, b = resources.estimate(rule, small), resources.estimate(rule, big)
        assert b["mem_mb"] > a["mem_mb"] and b["runtime"] > a["runtime"], rule
    longer = copy.deepcopy(big)
    longer["train"]["steps"] *= 10
    assert resources.estimate("train", longer)["runtime"] > resources.estimate("train", big)["runtime"]


def test_parameter_counts_match_the_built_models():
    from gradscope.models import InputSpec, build_model

    tiny = yaml.safe_load(TINY.read_text())
    transformer = copy.deepcopy(tiny)
    transformer["experiments"]["mod"]["model"] = {"kind": "transformer", "d_model": 32, "n_heads": 2, "d_head": 8,
                                                  "d_mlp": 64}
    embedding = copy.deepcopy(tiny)
    embedding["experiments"]["mod"]["model"].update(input_encoding="embedding", embed_dim=5)
    for config, run_id in ((tiny, "flips/seed~0"), (tiny, "mod/wd~0.0_seed~0"), (transformer, "mod/wd~0.0_seed~0"),
                           (embedding, "mod/wd~0.0_seed~0")):
        s = run_settings(config, run_id)
        d = resources.data_size(s)
        spec = InputSpec(kind="tokens" if d["tokens"] else "dense", dim=d["tokens"] or d["features"], vocab=d["vocab"],
                         n_classes=d["classes"])
        model = build_model(s["model"], spec)
        assert resources.model_size(s)[0] == sum(p.numel() for p in model.parameters()), (run_id, s["model"])


def test_gpu_only_for_cuda_and_only_for_torch_rules():
    tiny = yaml.safe_load(TINY.read_text())
    for device in ("cpu", "auto"):
        s = run_settings({**tiny, "device": device})
        assert all(resources.estimate(rule, s)["gpu"] == 0 for rule in RULES)
    s = run_settings({**tiny, "device": "cuda"})
    assert {rule for rule in RULES + ("import_run",) if resources.estimate(rule, s)["gpu"]} == set(resources.TORCH_RULES)


def dry_run_resources(cwd, *args) -> dict[str, list[dict]]:
    """Each planned job's resources, by rule, from a dry run's job listing."""
    proc = snakemake(cwd, "-n", *args)
    out = proc.stdout + proc.stderr
    jobs: dict[str, list[dict]] = {}
    current: dict = {}
    for line in out.splitlines():
        if m := re.fullmatch(r"\s*(?:local)?rule (\w+):", line):  # indented: a job of a group
            current = {}
            jobs.setdefault(m.group(1), []).append(current)
        elif line.strip().startswith("resources: "):
            current.update(kv.split("=", 1) for kv in line.split(": ", 1)[1].split(", "))
    return jobs


@pytest.mark.workflow
@pytest.mark.slow
def test_rules_ask_for_what_the_config_needs_and_overrides_win(tmp_path):
    tiny = yaml.safe_load(TINY.read_text())
    cfg = bigger(tiny)
    cfg["device"] = "cuda"
    cwd = copy_workflow(tmp_path / "wf", cfg)
    jobs = dry_run_resources(cwd, "--cores", "1", "--set-resources", "plots:mem_mb=4321")
    expected = resources.estimate("train", run_settings(cfg, "flips/seed~0"))
    data = resources.estimate("generate_data", run_settings(cfg, "flips/seed~0"))
    assert data["mem_mb"] > resources.BASE_MB and str(data["mem_mb"]) in {j["mem_mb"] for j in jobs["generate_data"]}
    flips_train = next(j for j in jobs["train"] if int(j["mem_mb"]) == expected["mem_mb"])
    assert int(flips_train["runtime"]) == expected["runtime"] and flips_train["gpu"] == "1"
    mod_train = [j for j in jobs["train"] if j is not flips_train]
    assert all(int(j["mem_mb"]) < expected["mem_mb"] for j in mod_train)  # the bigger model asks for more
    assert all(j["gpu"] == "1" for j in jobs["extract_examples"]) and all("gpu" not in j for j in jobs["plots"])
    assert {j["mem_mb"] for j in jobs["plots"]} == {"4321"}  # the command line wins over the estimate
    for rule in RULES + ("sweep_report", "resolve_config"):
        assert all("mem_mb" in j and "runtime" in j for j in jobs[rule]), rule


@pytest.mark.workflow
@pytest.mark.slow
def test_slurm_profile_plans_one_submission_per_run_for_its_checkpoint_jobs(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    profile = ["--profile", str(REPO / "workflow/profiles/slurm")]
    # checkpoint_jobs: per_run: one extract_examples and one curvature job per run, no groups
    cwd = copy_workflow(tmp_path / "run", {**yaml.safe_load(TINY.read_text()), "checkpoint_jobs": "per_run"})
    proc = snakemake(cwd, "-n", *profile, "--set-resources", "train:slurm_partition=gpu")
    out = proc.stdout + proc.stderr
    assert "slurm_partition=gpu" in out and out.count("rule train:") == 3  # the profile parses; overrides reach rules
    assert "Group job" not in out and out.count("rule extract_examples:") == 3 and out.count("rule curvature:") == 3

    per_checkpoint = yaml.safe_load(TINY.read_text())  # the default: one job per checkpoint
    cwd = copy_workflow(tmp_path / "wf", per_checkpoint)
    proc = snakemake(cwd, "-n", *profile)
    out = proc.stdout + proc.stderr
    groups = re.findall(r"Group job (checkpoints_\S+) ", out)
    assert sorted(groups) == ["checkpoints_flips_seed~0", "checkpoints_mod_wd~0.0_seed~0", "checkpoints_mod_wd~1.0_seed~0"]
    # every extract_examples and curvature job of a run is inside its run's group
    grouped = re.findall(r"\n    rule (\w+):", out)
    assert grouped.count("extract_examples") == 9 and grouped.count("curvature") == 9

    off = {**per_checkpoint, "cluster": {"group_checkpoint_jobs": False}}
    cwd = copy_workflow(tmp_path / "off", off)
    proc = snakemake(cwd, "-n", *profile)
    assert "Group job" not in proc.stdout + proc.stderr


def test_data_size_of_the_new_sources():
    from gradscope.resources import data_size
    assert data_size({"data": {"generator": "mnist1d", "mnist1d": {"num_samples": 5005, "train_split": 0.8}}})[
        "n_train"] == 4000
    cifar = data_size({"data": {"generator": "torchvision", "torchvision": {"name": "CIFAR10", "subsample_train": 1000}}})
    assert (cifar["n_train"], cifar["n_test"], cifar["features"], cifar["classes"]) == (1000, 10000, 3072, 10)


def test_data_size_of_digits_and_opposing_features_is_that_of_the_generated_data():
    # (before: both were sized as planted_flips' defaults, 2,000 + 1,000 examples of 20 features)
    from gradscope import data
    from gradscope.config import section
    from gradscope.resources import data_size

    for gen, block in (("digits", {"train_fraction": 0.2}), ("opposing_features", {"n_train": 30, "n_test": 12, "side": 6})):
        settings = {"data": {"generator": gen, gen: section("data", {"generator": gen, gen: block})[gen]}}
        train, test, meta = data.generate(settings["data"])
        got = data_size(settings)
        assert (got["n_train"], got["n_test"]) == (len(train), len(test)), gen
        assert (got["features"], got["classes"]) == (meta["input"]["dim"], meta["input"]["n_classes"]), gen
