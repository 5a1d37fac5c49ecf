"""The gradscope command line: inspect runs and validate configs.

The workflow itself runs through Snakemake (`snakemake --cores N`); these commands read what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
import yaml

HEADLINE_COLUMNS = ["final_train_acc", "final_test_acc", "generalization_delay_steps", "max_sharpness",
                    "sharpness_threshold", "final_auroc_high_loss", "best_auroc_cos_rule"]


def parse_run_name(name: str) -> dict:
    """`wd~1.0_seed~0` -> {"wd": "1.0", "seed": "0"}: the varying parameters of a run id."""
    return dict(part.split("~", 1) for part in name.split("_") if "~" in part)


def run_folders(results: Path) -> list[Path]:
    return sorted(p.parent for p in (results / "runs").glob("*/*/config.yaml"))


def run_status(folder: Path) -> dict:
    """Headline figures of a finished run; the stage reached for one in progress."""
    from gradscope import pipeline

    metrics, summary = folder / "train" / "metrics.parquet", folder / "signals" / "summary.json"
    curvature = sorted(folder.glob("curvature/step=*/part-0.parquet"))
    if not (metrics.exists() and summary.exists() and curvature):
        stage = "trained" if metrics.exists() else "not trained"
        return {"status": stage}
    head = pipeline.run_headline(metrics_path=metrics, summary_path=summary, curvature_paths=curvature)
    return {"status": "done" if (folder / "report.md").exists() else "analysed", **head}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradscope")
def main():
    """gradscope: how neural networks train (opposing signals, curvature, grokking).

    Run the workflow with `snakemake --cores N` in the repository; these commands read its results.
    """


@main.command()
@click.option("--results", type=click.Path(path_type=Path), default="results", show_default=True,
              help="Results folder of a workflow run.")
@click.option("--experiment", "-e", default=None, help="Only runs of this experiment.")
def runs(results: Path, experiment: str | None):
    """List runs with their varying parameters and headline figures."""
    rows = []
    for folder in run_folders(results):
        exp, name = folder.parent.name, folder.name
        if experiment and exp != experiment:
            continue
        status = run_status(folder)
        rows.append({"run": f"{exp}/{name}", **parse_run_name(name), "status": status["status"],
                     **{k: status.get(k) for k in HEADLINE_COLUMNS if k in status}})
    if not rows:
        raise click.ClickException(f"no runs under {results / 'runs'}; run the workflow first (snakemake --cores 2)")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        click.echo(pd.DataFrame(rows).to_string(index=False, na_rep="–"))


@main.command()
@click.argument("run")
@click.option("--results", type=click.Path(path_type=Path), default="results", show_default=True,
              help="Results folder of a workflow run.")
def show(run: str, results: Path):
    """Print one run's summary: its settings, headline figures and artifacts. RUN is e.g. grokking/wd~1.0_seed~0."""
    folder = results / "runs" / run
    if not (folder / "config.yaml").exists():
        known = ", ".join(f"{p.parent.name}/{p.name}" for p in run_folders(results)) or "none"
        raise click.ClickException(f"no run {run!r} under {results / 'runs'}; known runs: {known}")
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    click.echo(f"run {run}")
    for section in ("data", "model", "optim", "train"):
        click.echo(f"  {section}: {settings.get(section)}")
    for key, value in run_status(folder).items():
        click.echo(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    click.echo("artifacts:")
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "pca_frames" not in p.parts and not p.name.startswith(".")):
        click.echo(f"  {path.relative_to(folder)}")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(config: Path):
    """Check a config file against the schema and list the runs it defines."""
    from gradscope.config import ConfigError, expand_runs, load_config

    try:
        resolved = load_config(yaml.safe_load(config.read_text()) or {})
    except ConfigError as e:
        raise click.ClickException(f"{config}: {e}")
    for run in expand_runs(resolved):
        click.echo(run.id)
