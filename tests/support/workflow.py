"""Running the whole workflow with Snakemake in a temporary folder: the tiny config, a copy of the
workflow, dry-run plans."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


REPO = Path(__file__).resolve().parents[2]  # the repository root
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SIGNALS_FILES = [f"signals/{name}.parquet" for name in ("evaluation", "group_pairs", "group_losses", "loss_changes",
                                                       "per_example")]
SIGNALS_FILES += [f"figures/{name}.png" for name in ("group_losses", "loss_changes", "cartography")]


def snakemake(cwd, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_workflow(dest: Path, config: dict) -> Path:
    """The workflow, and user_code/ (the example factories a `python` model or data source names,
    imported from the working directory), copied into `dest` with `config` as its config file."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "scripts", "envs", "user_code"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    (dest / "config").mkdir()
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def planned(cwd, *args) -> dict[str, int]:
    """Jobs per rule that a dry run plans, from Snakemake's job-stats table."""
    proc = snakemake(cwd, "-n", "--cores", "1", "--quiet", "rules", *args)
    out = proc.stdout + proc.stderr
    # `--quiet rules` prints the job-count table: one "<rule> <count>" line per planned rule.
    counts, in_table = {}, False
    for line in out.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] != "total":
                counts[parts[0]] = int(parts[1])
        elif in_table and parts and not set(line.strip()) <= {"-", " "}:
            in_table = False
    return counts


TIMES = {"wall_s"}


BASE = {"device": "cpu", "experiments": {"e": {
    "data": {"generator": "planted_flips", "planted_flips": {"n_train": 120, "n_test": 60, "n_features": 6}},
    "model": {"depth": 1, "width": 16},
    "optim": {"name": "sgd", "lr": 0.2},
    "train": {"steps": 30, "log_every": 5, "checkpoints": {"every": 15}},
    "signals": {"opposing_groups": {"top_k": 5, "n_groups": 2}},
    "curvature": {"subset_size": 64, "lanczos_iters": 8},
}}}
