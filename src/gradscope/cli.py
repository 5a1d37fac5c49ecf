"""The gradscope command line: inspect runs and validate configs.

The workflow itself runs through Snakemake (`snakemake --cores N`); these commands read what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
import yaml

# What `gradscope runs` lists, computed where notebooks get it too (gradscope.open_results).
from gradscope.results import HEADLINE_COLUMNS, parse_run_name, run_folders, run_status  # noqa: E402,F401


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
    from gradscope.results import runs_rows

    folders = run_folders(results)
    rows = runs_rows(results, experiment)
    if not rows and experiment and folders:
        known = sorted({f.parent.name for f in folders})
        raise click.ClickException(f"no runs of experiment {experiment!r} under {results / 'runs'}; its experiments: "
                                   f"{', '.join(known)}")
    if not rows:
        raise click.ClickException(f"no runs under {results / 'runs'}; run the workflow first (snakemake --cores 2)")
    if any("note" in r for r in rows):  # last, where its long text does not push the figures away
        rows = [{**{k: v for k, v in r.items() if k != "note"}, "note": r.get("note", "")} for r in rows]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        click.echo(pd.DataFrame(rows).to_string(index=False, na_rep="–"))


@main.command()
@click.argument("run")
@click.option("--results", type=click.Path(path_type=Path), default="results", show_default=True,
              help="Results folder of a workflow run.")
def show(run: str, results: Path):
    """Print one run's summary: its settings, headline figures and artifacts. RUN is e.g. grokking/wd~1.0_seed~0."""
    from gradscope import layout

    folder = layout.run_dir(run, results)
    if not layout.in_run(folder, "config").exists():
        known = ", ".join(f"{p.parent.name}/{p.name}" for p in run_folders(results)) or "none"
        raise click.ClickException(f"no run {run!r} under {results / 'runs'}; known runs: {known}")
    from gradscope import artifacts

    from gradscope.config import applicable

    # what applies to the run only (a config.yaml written before trimming shows the same)
    settings = applicable(yaml.safe_load(layout.in_run(folder, "config").read_text()) or {})
    click.echo(f"run {run}")
    for section in ("data", "model", "optim", "train"):
        click.echo(f"  {section}: {settings.get(section)}")
    for key, value in run_status(folder, logs_dir=results.parent / "logs").items():
        click.echo(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    click.echo("artifacts:")
    damaged = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "pca_frames" not in p.parts and not p.name.startswith(".")):
        problem = artifacts.check_file(path)
        click.echo(f"  {path.relative_to(folder)}" + (f"  DAMAGED ({problem})" if problem else ""))
        damaged += [path] if problem else []
    for path in damaged:
        click.echo(f"{path}: {artifacts.regenerate_hint(path)}", err=True)


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

    from gradscope import artifacts, layout, pipeline
    from gradscope.config import ConfigError, dataset_id, load_config_files, load_runs, run_config, train_slice
    from gradscope.train import RunLocked

    try:  # the runs Snakemake would plan for --configfile CONFIG (docs/configuration.md)
        runs = {r.id: r for r in load_runs(load_config_files([config_path]), check_device=True)[1]}
    except ConfigError as e:
        raise click.ClickException(str(e) if not str(e).startswith("invalid") else f"{config_path}: {e}")
    if run not in runs:
        raise click.ClickException(f"no run {run!r} in {config_path}; its runs: {', '.join(runs)}")
    if runs[run].checkpoints:
        raise click.ClickException(f"{run} is not trained by gradscope: its experiment's source is "
                                   f"{runs[run].settings['source']}; analyze it with snakemake")
    settings = runs[run].settings
    files = {split: layout.dataset_file(split, dataset_id(settings), results) for split in layout.DATASET}
    if not Path(files["meta"]).exists():
        pipeline.generate_data(train_slice(settings)["data"], train_path=files["train"], test_path=files["test"],
                               meta_path=files["meta"])
    out = layout.run_dir(run, results)
    artifacts.write_yaml(run_config(settings), layout.in_run(out, "config"))  # as rule resolve_config writes it
    logging.basicConfig(level=logging.WARNING)
    with click.progressbar(length=settings["train"]["steps"], label=f"training {run}") as bar:
        last = [0]

        def advance(step: int) -> None:
            bar.update(step - last[0])
            last[0] = step

        try:
            metrics = pipeline.train(train_slice(settings), dataset=files,
                                     out_dir=layout.in_run(out, "metrics").parent, run_id=run, progress=advance)
        except (RunLocked, FloatingPointError, OSError) as e:  # a held lock, divergence, a full disk
            raise click.ClickException(str(e))
    final = metrics.iloc[-1]
    click.echo(f"{run}: step {int(final['step'])}, train acc {final['train_acc']:.3f}, test acc {final['test_acc']:.3f}; "
               f"wrote {layout.in_run(out, 'metrics').parent}")


@main.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="CONFIG...")
@click.option("--default", "default", type=click.Path(path_type=Path), default="config/config.yaml", show_default=True,
              help="The workflow's own config file, which Snakemake reads first (skipped where it does not exist).")
@click.option("--device-check/--no-device-check", default=True, show_default=True,
              help="Check that device: cuda has a CUDA device here (off on a cluster's login node).")
def validate(configs: tuple[Path, ...], default: Path, device_check: bool):
    """Check config files and list the runs that `snakemake --configfile CONFIG...` plans, one per line.

    The files combine as Snakemake combines them here (docs/configuration.md): the default
    config first; a file with `experiments` replaces the experiments before it unless it sets
    `extend_experiments: true`. Every problem stops here, before any job, naming the key, the
    value and what is allowed."""
    from gradscope.config import ConfigError, load_config_files, load_runs

    try:
        _, runs = load_runs(load_config_files(configs, default=default), check_device=device_check)
    except ConfigError as e:
        if not str(e).startswith("invalid"):  # a file that does not read names itself
            raise click.ClickException(str(e))
        read = [str(default)] * default.exists() + [str(c) for c in configs if c.resolve() != default.resolve()]
        raise click.ClickException(f"{' then '.join(read)}: {e}")
    for run in runs:
        click.echo(run.id)


@main.command()
@click.argument("table", required=False)
def schema(table: str | None):
    """Describe the Parquet tables gradscope writes: all of them, one TABLE (e.g. examples), or a Parquet file.

    Each column with its type and meaning; a file's meanings come from its field metadata (for a file
    written before it carried them, from the table its path matches)."""
    from gradscope import tables

    try:
        click.echo(tables.schema_text(table))
    except (LookupError, ValueError) as e:
        raise click.ClickException(str(e))


@main.command()
@click.option("--results", type=click.Path(path_type=Path), default="results", show_default=True,
              help="Results folder of a workflow run.")
@click.option("--max-examples", type=int, default=None,
              help="Training examples per run carried by the pages (default: the schema's dashboard.max_examples).")
@click.option("--open", "open_", is_flag=True, help="Open the index in a web browser when done.")
def dashboard(results: Path, max_examples: int | None, open_: bool):
    """Build the interactive dashboards (one per experiment, and results/index.html) from what RESULTS holds now.

    Runs still training or failed are included and marked so (failures read from ../logs beside
    RESULTS). The pages open from disk, with no server and no network."""
    from gradscope.dashboard import build_dashboards, discover

    if not discover(results):
        raise click.ClickException(f"no runs under {results / 'runs'}; run the workflow first (snakemake --cores 2)")
    written = build_dashboards(results, settings=None if max_examples is None else {"max_examples": max_examples})
    for path in written:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if open_:
        import webbrowser

        webbrowser.open(written[0].resolve().as_uri())


@main.command("doctor")
def doctor_command():
    """Check this installation: python, torch, snakemake, the package data and the optional extras,
    one line each, with the install command for each missing piece. Exits nonzero only when a
    required piece is missing."""
    from gradscope import doctor

    lines, ok = doctor.report()
    click.echo("\n".join(lines))
    if not ok:
        raise SystemExit(1)
