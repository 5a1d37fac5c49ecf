"""gradscope's workflow as a Snakemake module of another project: a folder outside the clone with
its own Snakefile, its own config and a rule of its own that reads a table gradscope writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CLONE = Path(__file__).resolve().parents[1]
TINY = CLONE / "tests" / "configs" / "tiny.yaml"  # the workflow tests' tiny config
TABLE = "results/runs/flips/seed~0/signals/per_example.parquet"


def project(folder: Path, gradscope_config: dict, *, nested: bool = False) -> Path:
    """The other project: `config: config` (its config file is gradscope's config), or with
    nested, gradscope's settings under a key `gradscope` beside a setting of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"gradscope": gradscope_config, "hardest": 10} if nested else gradscope_config
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "Snakefile").write_text(f"""\
configfile: "config.yaml"


module gradscope:
    snakefile: {json.dumps(str(CLONE / "Snakefile"))}
    config: {'config["gradscope"]' if nested else "config"}


use rule * from gradscope as gradscope_*


rule hardest_examples:
    input:
        {json.dumps(TABLE)},
    output:
        "hardest.csv",
    params:
        n={'config["hardest"]' if nested else 10},
    run:
        import pandas as pd

        table = pd.read_parquet(input[0])
        table.nlargest(params.n, "final_loss")[["example_id", "final_loss"]].to_csv(output[0], index=False)


rule all:
    input:
        rules.hardest_examples.output,
    default_target: True
""")
    return folder


def snakemake(cwd, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env)


def stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None


def test_a_project_runs_gradscope_as_a_module_and_reads_its_parquet(tmp_path):
    cwd = project(tmp_path / "mine", yaml.safe_load(TINY.read_text()))
    in_clone = stamp(CLONE / TABLE)
    proc = snakemake(cwd, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # gradscope's rules ran under their module names, in the project's folder, not in the clone
    assert "gradscope_detect_signals" in proc.stderr + proc.stdout
    assert (cwd / TABLE).exists() and (cwd / "logs/train/flips/seed~0.log").exists()
    assert stamp(CLONE / TABLE) == in_clone
    # the project's rule read gradscope's table
    table = pd.read_parquet(cwd / TABLE)
    expected = table.nlargest(10, "final_loss")[["example_id", "final_loss"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(cwd / "hardest.csv"), expected, check_dtype=False, rtol=1e-12)
    assert len(expected) == 10 and expected["example_id"].between(0, 119).all()
    again = snakemake(cwd, "-n", "--cores", "1")
    assert "Nothing to be done" in again.stdout + again.stderr


def job_counts(out: str) -> dict[str, int]:
    """Jobs per rule from a dry run's job-stats table."""
    return {parts[0]: int(parts[1]) for parts in map(str.split, out.splitlines())
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total"}


def test_the_module_runs_the_config_its_module_statement_passes(tmp_path):
    """gradscope's settings under a key of the project's config, beside a setting of its own: the
    module runs that section (its experiments, its checkpoint_jobs), not the whole file and not
    the clone's config/config.yaml."""
    cfg = yaml.safe_load(TINY.read_text())
    del cfg["experiments"]["mod"]
    cfg["checkpoint_jobs"] = "per_run"
    cwd = project(tmp_path, cfg, nested=True)
    proc = snakemake(cwd, "-n", "--cores", "1", "gradscope_all", "all")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "results/runs/flips/seed~0/report.md" in out and "hardest.csv" in out
    assert "results/runs/mod/" not in out and "grokking" not in out and "opposing" not in out
    counts = job_counts(out)
    assert counts["gradscope_train"] == 1 and counts["hardest_examples"] == 1
    assert counts["gradscope_extract_examples"] == 1  # one job per run: the section's checkpoint_jobs


def test_a_wrong_key_in_the_projects_config_stops_with_gradscopes_error(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"]["mod"]["optim"]["lrr"] = 0.1
    for nested in (False, True):
        cwd = project(tmp_path / str(nested), cfg, nested=nested)
        proc = snakemake(cwd, "--cores", "1")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "invalid gradscope config" in out and "'lrr'" in out and "experiments.mod.optim" in out, out[-3000:]
        assert "allowed:" in out
        assert not (cwd / "results").exists()
