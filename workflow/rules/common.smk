# Config loading and validation, run ids, and the input functions every rule uses.
# Rules never dig into the config themselves: they ask the functions here.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from gradscope.config import ConfigError, checkpoint_steps, data_slice, dataset_id, expand_runs, load_config, train_slice


try:
    CONFIG = load_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as e:
    raise WorkflowError(str(e)) from None
RUNS = {run.id: run for run in expand_runs(CONFIG)}
EXPERIMENTS = sorted({run.experiment for run in RUNS.values()})
DATASETS = {dataset_id(run.settings): data_slice(run.settings) for run in RUNS.values()}


wildcard_constraints:
    experiment="[A-Za-z0-9_-]+",
    run="[^/]+",
    dataset="[^/]+",
    step="[0-9]+",


def get_run(wc):
    return RUNS[f"{wc.experiment}/{wc.run}"]


def run_dir(run):
    return f"results/runs/{run.id}"


def get_dataset_files(wc):
    folder = f"results/data/{dataset_id(get_run(wc).settings)}"
    return {"train": f"{folder}/train.parquet", "test": f"{folder}/test.parquet", "meta": f"{folder}/meta.json"}


def get_steps(run):
    return checkpoint_steps(run.settings["train"])


def get_examples_files(wc):
    run = get_run(wc)
    return [f"{run_dir(run)}/examples/step={s}/part-0.parquet" for s in get_steps(run)]


def get_curvature_files(wc):
    run = get_run(wc)
    return [f"{run_dir(run)}/curvature/step={s}/part-0.parquet" for s in get_steps(run)]


def get_settings(section):
    """A params function giving one section of the run's settings (what a rule depends on)."""
    return lambda wc: get_run(wc).settings[section]


def get_experiment_runs(wc):
    return [run for run in RUNS.values() if run.experiment == wc.experiment]


def get_sweep_inputs(wc):
    runs = get_experiment_runs(wc)
    return {
        "reports": [f"{run_dir(r)}/report.md" for r in runs],
        "metrics": [f"{run_dir(r)}/train/metrics.parquet" for r in runs],
        "summaries": [f"{run_dir(r)}/signals/summary.json" for r in runs],
        "curvature": [f"{run_dir(r)}/curvature/step={s}/part-0.parquet" for r in runs for s in get_steps(r)],
    }


def get_all_targets():
    targets = [f"results/sweeps/{e}/report.md" for e in EXPERIMENTS]
    targets += [f"{run_dir(r)}/report.md" for r in RUNS.values()]
    return targets
