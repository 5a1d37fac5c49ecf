"""How long a 100-run sweep takes to build its DAG and dry-run, against a bare Snakefile of the same shape.

    python bench/bench_dag.py [--runs 100] [--checkpoints 20] [--repeats 1]

Writes, in temporary folders, (1) gradscope's workflow with a config of one experiment whose grid
has `runs` points (seed 0), `checkpoints` checkpoints a run, and (2) a bare Snakefile with the
same rules, wildcards, paths and dependencies whose rules only `touch` their outputs, with the
runs and steps as plain Python lists. Times `snakemake -n --cores 1 --quiet rules` (parse, DAG,
dry-run summary; the same flags for both) from a fresh process, checks both plan the same jobs
per rule, and prints both times and the ratio. docs/cluster.md quotes this script's output. The
gradscope copy is made by the tests' `copy_workflow`, so it needs the test extra installed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

BARE = r'''
# A bare workflow of gradscope's shape: the same rules, wildcards and dependencies, shell rules touching files.
RUNS = {runs!r}
STEPS = {steps!r}
DATASET = "planted_flips-0123456789"
SIGNALS = ["detections.parquet", "evaluation.parquet", "groups.parquet", "group_pairs.parquet", "group_losses.parquet",
           "loss_changes.parquet", "per_example.parquet", "summary.json"]
SIGNAL_FIGURES = ["group_losses", "loss_changes", "cartography"]

wildcard_constraints:
    experiment="[A-Za-z0-9_-]+",
    run="[^/]+",
    dataset="[^/]+",
    step="[0-9]+",

rule all:
    input:
        "results/sweeps/bench/report.md",
        expand("results/runs/bench/{{run}}/report.md", run=RUNS),
        "results/index.html",

rule generate_data:
    output: "results/data/{{dataset}}/train.parquet", "results/data/{{dataset}}/test.parquet", "results/data/{{dataset}}/meta.json"
    log: "logs/generate_data/{{dataset}}.log"
    shell: "touch {{output}} {{log}}"

rule resolve_config:
    output: "results/runs/{{experiment}}/{{run}}/config.yaml"
    log: "logs/resolve_config/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule train:
    input: expand("results/data/{{d}}/{{f}}", d=DATASET, f=["train.parquet", "test.parquet", "meta.json"])
    output: "results/runs/{{experiment}}/{{run}}/train/metrics.parquet", "results/runs/{{experiment}}/{{run}}/train/manifest.json", directory("results/runs/{{experiment}}/{{run}}/train/checkpoints")
    log: "logs/train/{{experiment}}/{{run}}.log"
    benchmark: "benchmarks/train/{{experiment}}/{{run}}.tsv"
    shell: "touch {{output}} {{log}}"

rule extract_examples:
    input:
        expand("results/data/{{d}}/{{f}}", d=DATASET, f=["train.parquet", "test.parquet", "meta.json"]),
        "results/runs/{{experiment}}/{{run}}/train/manifest.json",
    output: "results/runs/{{experiment}}/{{run}}/examples/step={{step}}/part-0.parquet"
    log: "logs/extract_examples/{{experiment}}/{{run}}/step={{step}}.log"
    benchmark: "benchmarks/extract_examples/{{experiment}}/{{run}}/step={{step}}.tsv"
    shell: "touch {{output}} {{log}}"

rule curvature:
    input:
        expand("results/data/{{d}}/{{f}}", d=DATASET, f=["train.parquet", "test.parquet", "meta.json"]),
        "results/runs/{{experiment}}/{{run}}/train/manifest.json",
    output: "results/runs/{{experiment}}/{{run}}/curvature/step={{step}}/part-0.parquet"
    log: "logs/curvature/{{experiment}}/{{run}}/step={{step}}.log"
    benchmark: "benchmarks/curvature/{{experiment}}/{{run}}/step={{step}}.tsv"
    shell: "touch {{output}} {{log}}"

rule detect_signals:
    input:
        lambda wc: expand("results/runs/{{e}}/{{r}}/examples/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/data/" + DATASET + "/meta.json",
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
    output: expand("results/runs/{{{{experiment}}}}/{{{{run}}}}/signals/{{f}}", f=SIGNALS)
    log: "logs/detect_signals/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule influence:
    input:
        lambda wc: expand("results/runs/{{e}}/{{r}}/examples/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        "results/data/" + DATASET + "/train.parquet",
        "results/data/" + DATASET + "/test.parquet",
    output: expand("results/runs/{{{{experiment}}}}/{{{{run}}}}/influence/{{f}}", f=["top.parquet", "contributions.parquet", "summary.json"])
    log: "logs/influence/{{experiment}}/{{run}}.log"
    benchmark: "benchmarks/influence/{{experiment}}/{{run}}.tsv"
    shell: "touch {{output}} {{log}}"

rule plot_signals:
    input:
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        "results/data/" + DATASET + "/meta.json",
        expand("results/runs/{{{{experiment}}}}/{{{{run}}}}/signals/{{f}}", f=SIGNALS[2:7]),
    output: expand("results/runs/{{{{experiment}}}}/{{{{run}}}}/figures/{{f}}.png", f=SIGNAL_FIGURES)
    log: "logs/plot_signals/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule plots:
    input:
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        "results/runs/{{experiment}}/{{run}}/signals/summary.json",
        lambda wc: expand("results/runs/{{e}}/{{r}}/curvature/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
    output: "results/runs/{{experiment}}/{{run}}/figures/training.png", "results/runs/{{experiment}}/{{run}}/figures/flagged.png", "results/runs/{{experiment}}/{{run}}/figures/curvature.png"
    log: "logs/plots/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule animate:
    input:
        lambda wc: expand("results/runs/{{e}}/{{r}}/examples/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/runs/{{experiment}}/{{run}}/signals/detections.parquet",
    output: "results/runs/{{experiment}}/{{run}}/figures/gradient_pca.gif", directory("results/runs/{{experiment}}/{{run}}/figures/pca_frames")
    log: "logs/animate/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule timeline:
    input:
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        lambda wc: expand("results/runs/{{e}}/{{r}}/curvature/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/runs/{{experiment}}/{{run}}/signals/group_losses.parquet",
        "results/runs/{{experiment}}/{{run}}/signals/group_pairs.parquet",
        "results/runs/{{experiment}}/{{run}}/signals/summary.json",
    output: "results/runs/{{experiment}}/{{run}}/timeline/events.parquet", "results/runs/{{experiment}}/{{run}}/timeline/links.parquet", "results/runs/{{experiment}}/{{run}}/timeline/summary.json"
    log: "logs/timeline/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule plot_timeline:
    input:
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        lambda wc: expand("results/runs/{{e}}/{{r}}/curvature/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/runs/{{experiment}}/{{run}}/timeline/events.parquet",
        "results/runs/{{experiment}}/{{run}}/timeline/summary.json",
        "results/runs/{{experiment}}/{{run}}/signals/group_losses.parquet",
    output: "results/runs/{{experiment}}/{{run}}/figures/timeline.png"
    log: "logs/plot_timeline/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule report:
    input:
        "results/runs/{{experiment}}/{{run}}/config.yaml",
        "results/runs/{{experiment}}/{{run}}/train/metrics.parquet",
        "results/runs/{{experiment}}/{{run}}/signals/summary.json",
        lambda wc: expand("results/runs/{{e}}/{{r}}/curvature/step={{s}}/part-0.parquet", e=wc.experiment, r=wc.run, s=STEPS),
        "results/runs/{{experiment}}/{{run}}/figures/training.png",
        "results/runs/{{experiment}}/{{run}}/figures/flagged.png",
        "results/runs/{{experiment}}/{{run}}/figures/curvature.png",
        "results/runs/{{experiment}}/{{run}}/figures/gradient_pca.gif",
        expand("results/runs/{{{{experiment}}}}/{{{{run}}}}/figures/{{f}}.png", f=SIGNAL_FIGURES),
        "results/runs/{{experiment}}/{{run}}/influence/summary.json",
        "results/runs/{{experiment}}/{{run}}/timeline/summary.json",
        "results/runs/{{experiment}}/{{run}}/figures/timeline.png",
    output: "results/runs/{{experiment}}/{{run}}/report.md"
    log: "logs/report/{{experiment}}/{{run}}.log"
    shell: "touch {{output}} {{log}}"

rule sweep_report:
    input:
        expand("results/runs/bench/{{r}}/report.md", r=RUNS),
        expand("results/runs/bench/{{r}}/train/metrics.parquet", r=RUNS),
        expand("results/runs/bench/{{r}}/signals/summary.json", r=RUNS),
        expand("results/runs/bench/{{r}}/curvature/step={{s}}/part-0.parquet", r=RUNS, s=STEPS),
        expand("results/runs/bench/{{r}}/timeline/summary.json", r=RUNS),
    output: "results/sweeps/{{experiment}}/runs.parquet", "results/sweeps/{{experiment}}/detectors.parquet", "results/sweeps/{{experiment}}/comparison.png", "results/sweeps/{{experiment}}/sharpness.png", "results/sweeps/{{experiment}}/report.md"
    log: "logs/sweep_report/{{experiment}}.log"
    shell: "touch {{output}} {{log}}"

rule dashboard:
    input:
        expand("results/runs/bench/{{r}}/train/metrics.parquet", r=RUNS),
        expand("results/runs/bench/{{r}}/train/manifest.json", r=RUNS),
        expand("results/runs/bench/{{r}}/signals/{{f}}", r=RUNS, f=SIGNALS),
        expand("results/runs/bench/{{r}}/examples/step={{s}}/part-0.parquet", r=RUNS, s=STEPS),
        expand("results/runs/bench/{{r}}/curvature/step={{s}}/part-0.parquet", r=RUNS, s=STEPS),
        expand("results/runs/bench/{{r}}/influence/{{f}}", r=RUNS, f=["top.parquet", "contributions.parquet", "summary.json"]),
        expand("results/runs/bench/{{r}}/timeline/{{f}}", r=RUNS, f=["events.parquet", "links.parquet", "summary.json"]),
    output: "results/sweeps/{{experiment}}/dashboard.html"
    log: "logs/dashboard/{{experiment}}.log"
    shell: "touch {{output}} {{log}}"

rule dashboard_index:
    input: "results/sweeps/bench/dashboard.html"
    output: "results/index.html"
    log: "logs/dashboard_index/index.log"
    shell: "touch {{output}} {{log}}"
'''


def sweep_config(n_runs: int, n_checkpoints: int) -> dict:
    """One experiment, a 2-key grid of n_runs points (seed 0), n_checkpoints checkpoints a run."""
    a = next(k for k in range(int(n_runs**0.5), 0, -1) if n_runs % k == 0)
    lrs = [round(0.01 * (i + 1), 4) for i in range(a)]
    wds = [round(0.001 * i, 4) for i in range(n_runs // a)]
    every = 100
    return {
        "device": "cpu",
        "checkpoint_jobs": "per_checkpoint",  # the shape with the most jobs (the bare file's shape)
        "experiments": {
            "bench": {
                "data": {"generator": "planted_flips", "planted_flips": {"n_train": 200, "n_test": 100}},
                "model": {"depth": 1, "width": 16},
                "train": {"steps": every * (n_checkpoints - 1), "checkpoints": {"every": every}},
                "grid": {"optim.lr": lrs, "optim.weight_decay": wds},
                "seeds": [0],
            }
        },
    }


def gradscope_workflow(dest: Path, config: dict) -> Path:
    """The workflow as the tests copy it (tests/support/workflow.py: Snakefile, rules, scripts, envs, the config)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.workflow import copy_workflow

    return copy_workflow(dest, config)


def bare_workflow(dest: Path, config: dict) -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from gradscope.config import checkpoint_steps, expand_runs, load_config

    runs = expand_runs(load_config(config))
    steps = checkpoint_steps(runs[0].settings["train"])
    (dest / "Snakefile").write_text(BARE.format(runs=[r.name for r in runs], steps=steps))
    return dest


ARGS = ["-n", "--cores", "1", "--quiet", "rules"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dry_run(cwd: Path) -> tuple[float, float, dict[str, int]]:
    """Wall-clock and CPU seconds of one `snakemake -n` in a fresh process, and its jobs per rule."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    t0, c0 = time.perf_counter(), _cpu()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *ARGS], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    counts, in_table = {}, False
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return elapsed, cpu, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="time each this many times, report the best")
    args = ap.parse_args()
    config = sweep_config(args.runs, args.checkpoints)
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        gs, bare = Path(tmp) / "gradscope", Path(tmp) / "bare"
        gs.mkdir()
        bare.mkdir()
        gradscope_workflow(gs, config)
        bare_workflow(bare, config)
        wall = {"gradscope": [], "bare": []}
        cpu = {"gradscope": [], "bare": []}
        counts = {}
        for _ in range(args.repeats):  # alternate, so that a change in the machine's load hits both
            for name, cwd in (("bare", bare), ("gradscope", gs)):
                w, c, counts[name] = dry_run(cwd)
                wall[name].append(w)
                cpu[name].append(c)
        if counts["bare"] != counts["gradscope"]:
            raise SystemExit(f"the two workflows plan different jobs:\nbare      {counts['bare']}\ngradscope {counts['gradscope']}")
    print(f"{args.runs} runs x {args.checkpoints} checkpoints: {counts['gradscope'].get('total')} jobs "
          f"(snakemake {' '.join(ARGS)}; best of {args.repeats})")
    print(f"{'':16}{'wall s':>8}{'cpu s':>8}")
    for name in ("bare", "gradscope"):
        print(f"{name:16}{min(wall[name]):8.1f}{min(cpu[name]):8.1f}")
    print(f"{'ratio':16}{min(wall['gradscope']) / min(wall['bare']):8.2f}{min(cpu['gradscope']) / min(cpu['bare']):8.2f}")


if __name__ == "__main__":
    main()
