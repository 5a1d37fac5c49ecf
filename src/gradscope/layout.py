"""Where every artifact lies: one path pattern per artifact, the only place one is spelled.

Patterns use Snakemake's wildcards ({dataset}, {experiment}, {run}, {step}). The rules declare
them (`DATASET`, `RUN`, `SWEEP`, `INDEX`, `log`, `benchmark`); input functions, the CLI, the
dashboard and the reports fill them (`run_file`, `in_run`, `sweep_file`, `step_file`) or read what a
folder holds (`tables_in`, `partition_files`, `checkpoints_in`). The layout, for one run `{experiment}/{run}`:

    results/data/{dataset}/            train.parquet, test.parquet, meta.json
    results/runs/{experiment}/{run}/   config.yaml, report.md
        train/                         metrics.parquet, manifest.json, dynamics.parquet,
                                       checkpoints/step_{step:08d}.pt (resume/ while training, each
                                       checkpoint beside its step_{step:08d}.timing.json)
        examples/step={step}/          part-0.parquet (one per checkpoint, Hive-partitioned)
        curvature/step={step}/         part-0.parquet, eigenvectors.npy
        signals/, influence/, timeline/ one table per output, summary.json
        figures/                       PNGs, the GIF and its frames (pca_frames/step_{step:08d}.png)
    results/sweeps/{experiment}/       runs.parquet, detectors.parquet, comparison.png, sharpness.png,
                                       report.md, dashboard.html; an intervention's interventions.parquet,
                                       effects.parquet, effects.png
    results/index.html                 the dashboards' index
    logs/{rule}/..., benchmarks/{rule}/...
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = "results"
LOGS, BENCHMARKS = "logs", "benchmarks"

# ---- datasets: one folder per dataset id, shared by the runs that differ only elsewhere ----
DATASET = {split: f"{RESULTS}/data/{{dataset}}/{name}" for split, name in
           (("train", "train.parquet"), ("test", "test.parquet"), ("meta", "meta.json"))}

# ---- one run's artifacts, relative to its folder ----
SIGNALS = ("detections", "evaluation", "groups", "group_pairs", "group_losses", "loss_changes", "per_example", "summary")
INFLUENCE = ("top", "contributions", "summary")
TIMELINE = ("events", "links", "summary")  # the timeline stage (gradscope.timeline): events, their links, the summary
FIGURES = ("training", "flagged", "curvature", "density", "group_losses", "loss_changes", "cartography", "progress",
           "timeline")

# Per-checkpoint artifacts: one partition folder step=<n> per checkpoint, under one folder per
# kind; a partition holds these files.
PARTITIONED = {"examples": "examples", "curvature": "curvature", "eigenvectors": "curvature"}
IN_PARTITION = {"examples": "part-0.parquet", "curvature": "part-0.parquet", "eigenvectors": "eigenvectors.npy"}

# Files named by their checkpoint's step, zero-padded so that names sort in step order: the
# checkpoints in IN_RUN["checkpoints"] (and in IN_RUN["resume"] while training, each beside its
# timing file: the wall-clock times kept out of the checkpoint, so the same state gives the same
# bytes) and the GIF's frames in IN_RUN["frames"]. Each kind has its own suffix: no glob of one
# matches another's files.
BY_STEP = {"checkpoint": "step_{step:08d}.pt", "timing": "step_{step:08d}.timing.json", "frame": "step_{step:08d}.png"}

IN_RUN = {
    "config": "config.yaml",
    "invocation": "invocation.json",  # the --configfile and --config that made the run (artifacts.invocation_args)
    "report": "report.md",
    "metrics": "train/metrics.parquet",
    "metrics_partial": "train/metrics.partial.parquet",  # what a failed or unfinished training logged
    "manifest": "train/manifest.json",
    "dynamics": "train/dynamics.parquet",
    "checkpoints": "train/checkpoints",
    "resume": "train/resume",
    "train_lock": "train/.train.lock",  # held while a process trains the run (gradscope.train.run_lock)
    **{f"{kind}_dir": kind for kind in ("examples", "curvature")},
    **{name: f"{PARTITIONED[name]}/step={{step}}/{file}" for name, file in IN_PARTITION.items()},
    "gif": "figures/gradient_pca.gif",
    "frames": "figures/pca_frames",
    **{f"signals_{name}": f"signals/{name}.{'json' if name == 'summary' else 'parquet'}" for name in SIGNALS},
    **{f"influence_{name}": f"influence/{name}.{'json' if name == 'summary' else 'parquet'}" for name in INFLUENCE},
    **{f"timeline_{name}": f"timeline/{name}.{'json' if name == 'summary' else 'parquet'}" for name in TIMELINE},
    **{f"figure_{name}": f"figures/{name}.png" for name in FIGURES},
    "progress": "progress/progress.parquet",  # progress measures of modular add/sub runs (gradscope.progress)
}
RUN_DIR = f"{RESULTS}/runs/{{experiment}}/{{run}}"
RUN = {name: f"{RUN_DIR}/{rel}" for name, rel in IN_RUN.items()}

# ---- one experiment's (sweep's) artifacts, and the index over all of them ----
IN_SWEEP = {"runs": "runs.parquet", "detectors": "detectors.parquet", "comparison": "comparison.png",
            "sharpness": "sharpness.png", "report": "report.md", "dashboard": "dashboard.html",
            # an intervention experiment's (gradscope.interventions): its runs' figures, parent included, the
            # effects (flagged minus control over seeds) and their figure
            "interventions": "interventions.parquet", "effects": "effects.parquet", "effects_png": "effects.png"}
SWEEP = {name: f"{RESULTS}/sweeps/{{experiment}}/{rel}" for name, rel in IN_SWEEP.items()}
INDEX = f"{RESULTS}/index.html"


# ---- logs and benchmark records: one per job, by rule and by what the job covers ----
def _job(root: str, rule: str, per: str, ext: str) -> str:
    tail = {"run": "{experiment}/{run}", "step": "{experiment}/{run}/step={step}", "experiment": "{experiment}",
            "dataset": "{dataset}", "once": "index"}[per]
    return f"{root}/{rule}/{tail}.{ext}"


def log(rule: str, per: str = "run", logs=LOGS) -> str:
    """The log of one job of `rule`; `per` is what one job covers: run, step, experiment, dataset or once."""
    return _job(Path(logs).as_posix(), rule, per, "log")


def benchmark(rule: str, per: str = "run") -> str:
    return _job(BENCHMARKS, rule, per, "tsv")


# ---- filling the patterns ----
def _split(run_id: str) -> dict:
    experiment, _, run = run_id.partition("/")
    return {"experiment": experiment, "run": run}


def runs_root(results=RESULTS) -> Path:
    """The folder of every run under a results root (runs/; a run is runs/<experiment>/<run>)."""
    return Path(results) / "runs"


def logs_beside(results=RESULTS) -> Path:
    """The logs folder of the workflow that wrote a results root: beside it (results/../logs)."""
    return Path(results).parent / LOGS


def run_dir(run_id: str, results=RESULTS) -> Path:
    return runs_root(results) / run_id


def run_folders(results=RESULTS) -> list[Path]:
    """Every run folder under a results root (runs/<experiment>/<run>), whatever it holds."""
    return sorted(p for p in runs_root(results).glob("*/*") if p.is_dir())


def run_file(name: str, run_id: str, **wildcards) -> str:
    """The workflow's path of one run's artifact, e.g. run_file("examples", "grokking/wd~1.0_seed~0", step=10)."""
    return RUN[name].format(**_split(run_id), **wildcards)


def in_run(folder, name: str, **wildcards) -> Path:
    """An artifact's path inside a run folder (any results root: the CLI's --results)."""
    return Path(folder) / IN_RUN[name].format(**wildcards)


def dataset_file(split: str, dataset: str, results=RESULTS) -> str:
    """train, test or meta of one dataset id, under the workflow's results folder or another root."""
    return (Path(results) / Path(DATASET[split].format(dataset=dataset)).relative_to(RESULTS)).as_posix()


# What planning found by making a dataset only its code describes (gradscope.data.probe), per data
# settings and code fingerprint: no job writes or reads it, `rm` is always safe.
PROBE = f"{RESULTS}/data/.probe/{{key}}.json"


def probe_file(key: str, results=RESULTS) -> str:
    return (Path(results) / Path(PROBE.format(key=key)).relative_to(RESULTS)).as_posix()


def sweep_file(name: str, experiment: str, results=RESULTS) -> Path:
    return Path(results) / "sweeps" / experiment / IN_SWEEP[name]


def partition_file(folder, name: str, step: int) -> Path:
    """One checkpoint's `name` (examples, curvature, eigenvectors) inside its kind's folder (a per-run job's output)."""
    return Path(folder) / f"step={step}" / IN_PARTITION[name]


def step_of(path) -> int:
    """The checkpoint step of a per-checkpoint file, from its partition folder (step=<n>)."""
    return int(Path(path).parent.name.partition("=")[2])


def step_file(name: str, step: int) -> str:
    """The file name of one checkpoint's `name` (checkpoint, timing, frame), e.g. step_file("checkpoint", 6)."""
    return BY_STEP[name].format(step=int(step))


def checkpoint_name(step: int) -> str:
    """A checkpoint's file name in a run's train/checkpoints or train/resume (checkpoints.checkpoint_name)."""
    return step_file("checkpoint", step)


def checkpoints_in(folder) -> list[Path]:
    """The checkpoint files in a folder (a run's train/checkpoints or train/resume), in name (= step) order."""
    return sorted(Path(folder).glob(BY_STEP["checkpoint"].replace("{step:08d}", "*")))


def checkpoint_step(path) -> int:
    """The step of a checkpoint file, from its name (step_00000006.pt: 6)."""
    head, _, tail = BY_STEP["checkpoint"].partition("{step:08d}")
    found = re.fullmatch(re.escape(head) + r"(\d+)" + re.escape(tail), Path(path).name)
    if found is None:
        raise ValueError(f"{path} is not named as a checkpoint ({BY_STEP['checkpoint']})")
    return int(found.group(1))


def tables_in(folder, name: str) -> list[Path]:
    """A run folder's per-checkpoint files of `name` (examples, curvature, eigenvectors), in step order."""
    return sorted(Path(folder).glob(IN_RUN[name].replace("{step}", "*")), key=step_of)


def partition_files(paths) -> list[Path]:
    """Per-checkpoint tables from what a rule was given: the step=<n>/part-0.parquet files
    themselves, or a run's examples/ or curvature/ folder (the per-run jobs' output), expanded
    to its partitions in step order."""
    out = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if path.is_dir():
            parts = sorted(path.glob(f"step=*/{IN_PARTITION['examples']}"), key=step_of)
            if not parts:
                raise FileNotFoundError(f"missing artifact: {path} holds no step=<n>/part-0.parquet")
            out += parts
        else:
            out.append(path)
    return out
