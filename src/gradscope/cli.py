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


@main.command("train")
@click.argument("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="config/config.yaml", show_default=True, help="Config file that defines the run.")
@click.option("--results", type=click.Path(path_type=Path), default="results", show_default=True,
              help="Results folder (the same layout as the workflow's).")
def train_command(run: str, config_path: Path, results: Path):
    """Train one run of a config outside Snakemake, with a progress bar. RUN is e.g. grokking/wd~1.0_seed~0.

    Generates the run's dataset if it is missing, then writes results/runs/RUN/config.yaml and
    train/ exactly as the workflow's train rule does; a killed run resumes when started again.
    """
    import logging

    from gradscope import artifacts, pipeline
    from gradscope.config import ConfigError, dataset_id, expand_runs, load_config, train_slice

    try:
        runs = {r.id: r for r in expand_runs(load_config(yaml.safe_load(config_path.read_text()) or {}))}
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}")
    if run not in runs:
        raise click.ClickException(f"no run {run!r} in {config_path}; its runs: {', '.join(runs)}")
    settings = runs[run].settings
    data_dir = results / "data" / dataset_id(settings)
    if not (data_dir / "meta.json").exists():
        pipeline.generate_data(train_slice(settings)["data"], train_path=data_dir / "train.parquet",
                               test_path=data_dir / "test.parquet", meta_path=data_dir / "meta.json")
    out = results / "runs" / run
    artifacts.write_yaml(settings, out / "config.yaml")
    logging.basicConfig(level=logging.WARNING)
    with click.progressbar(length=settings["train"]["steps"], label=f"training {run}") as bar:
        last = [0]

        def advance(step: int) -> None:
            bar.update(step - last[0])
            last[0] = step

        metrics = pipeline.train(train_slice(settings), data_dir=data_dir, out_dir=out / "train", run_id=run,
                                 progress=advance)
    final = metrics.iloc[-1]
    click.echo(f"{run}: step {int(final['step'])}, train acc {final['train_acc']:.3f}, test acc {final['test_acc']:.3f}; "
               f"wrote {out / 'train'}")


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
