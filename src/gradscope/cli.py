"""The gradscope command line: inspect runs and validate configs.

The workflow itself runs through Snakemake (`snakemake --cores N`); these commands read what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
import yaml

from gradscope import layout

# What `gradscope runs` lists, computed where notebooks get it too (gradscope.open_results).
from gradscope.results import HEADLINE_COLUMNS, parse_run_name, run_folders, run_status  # noqa: E402,F401


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradscope")
def main():
    """gradscope: how neural networks train (opposing signals, curvature, grokking).

    Run the workflow with `snakemake --cores N` in the repository; these commands read its results.
    """


@main.command()
@click.option("--results", type=click.Path(path_type=Path), default=layout.RESULTS, show_default=True,
              help="Results folder of a workflow run.")
@click.option("--experiment", "-e", default=None, help="Only runs of this experiment.")
def runs(results: Path, experiment: str | None):
    """List runs with their status, varying parameters and headline figures.

    The status is the one the dashboards and the index show: training, stopped (its trainer was
    killed), failed, damaged (a truncated checkpoint or table), pending, analysing or done; the
    note says what went wrong and what to run."""
    from gradscope.results import runs_rows

    folders = run_folders(results)
    rows = runs_rows(results, experiment)
    if not rows and experiment and folders:
        known = sorted({f.parent.name for f in folders})
        raise click.ClickException(f"no runs of experiment {experiment!r} under {layout.runs_root(results)}; its experiments: "
                                   f"{', '.join(known)}")
    if not rows:
        raise click.ClickException(f"no runs under {layout.runs_root(results)}; run the workflow first (snakemake --cores 2)")
    if any("note" in r for r in rows):  # last, where its long text does not push the figures away
        rows = [{**{k: v for k, v in r.items() if k != "note"}, "note": r.get("note", "")} for r in rows]
    from gradscope.report import fmt  # every figure as every summary prints it: – where missing or not applicable

    table = pd.DataFrame(rows)
    fixed = {"run", "status", "note", *HEADLINE_COLUMNS}  # the grid values of every experiment right after the run
    table = table[["run", *[c for c in table if c not in fixed], *[c for c in table if c in fixed and c != "run"]]]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        click.echo(table.apply(lambda col: col.map(fmt)).to_string(index=False))


@main.command()
@click.argument("run")
@click.option("--results", type=click.Path(path_type=Path), default=layout.RESULTS, show_default=True,
              help="Results folder of a workflow run.")
def show(run: str, results: Path):
    """Print one run's summary: its settings, headline figures and artifacts. RUN is e.g. grokking/wd~1.0_seed~0."""
    folder = layout.run_dir(run, results)
    config_path = layout.in_run(folder, "config")
    if not (config_path.exists() or layout.in_run(folder, "metrics").parent.is_dir()):  # the runs `runs` lists
        known = ", ".join(f"{p.parent.name}/{p.name}" for p in run_folders(results)) or "none"
        raise click.ClickException(f"no run {run!r} under {layout.runs_root(results)}; known runs: {known}")
    from gradscope import artifacts

    from gradscope.config import applicable

    # what applies to the run only (a config.yaml written before trimming shows the same)
    settings = applicable((yaml.safe_load(config_path.read_text()) if config_path.exists() else None) or {})
    click.echo(f"run {run}")
    click.echo("settings:")  # as YAML, the form of the run's config.yaml
    shown = {section: settings[section] for section in ("data", "model", "optim", "train") if section in settings}
    click.echo("\n".join("  " + line for line in yaml.safe_dump(shown, sort_keys=False).splitlines()))
    listing, damaged, frames = [], [], Path(layout.IN_RUN["frames"]).name  # the GIF's frames: not listed
    for path in sorted((p for p in folder.rglob("*") if p.is_file() and frames not in p.parts
                        and not p.name.startswith(".")), key=_natural):  # step=4 before step=17
        problem = artifacts.check_file(path)
        listing.append(f"  {path.relative_to(folder)}" + (f"  DAMAGED ({problem})" if problem else ""))
        damaged += [path] if problem else []
    status = run_status(folder, logs_dir=layout.logs_beside(results))
    if damaged and status["status"] != "damaged":  # this fuller check (a checkpoint's checksums) found what the quick one did not
        status = {"status": "damaged", "note": f"{damaged[0]}: {artifacts.regenerate_hint(damaged[0])}"}
    _echo_figures(folder, status)
    click.echo("artifacts:")
    for line in listing:
        click.echo(line)
    for path in damaged:
        click.echo(f"{path}: {artifacts.regenerate_hint(path)}", err=True)
    if (settings.get("model") or {}).get("kind") == "python":  # the factory's code edited since training?
        from gradscope import checkpoints

        changed = checkpoints.code_changed(layout.in_run(folder, "manifest"))
        if changed:
            click.echo(f"model code changed since training: {changed}", err=True)


def _natural(path: Path) -> list:
    """Sort key of a path with its numbers compared as numbers: step=4 before step=17, step=17 before step=300."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _echo_figures(folder: Path, status: dict) -> None:
    """`show`'s status and figures: the headline (report.HEADLINE) as `runs`, the reports and the index show
    it, then the run's other figures; each formatted by report.fmt (– where missing or not applicable)."""
    from gradscope.report import HEADLINE, fmt
    from gradscope.results import headline_figures, headline_of

    figures = status if "final_train_acc" in status else {**headline_of(folder), **status}
    for key in ("status", "note"):
        if key in status:
            click.echo(f"{key}: {status[key]}")
    click.echo("headline:")
    for key, value in headline_figures(figures).items():
        click.echo(f"  {key}: {fmt(value)}")
    others = {k: v for k, v in figures.items() if k not in HEADLINE and k not in ("status", "note")}
    if others:
        click.echo("other figures:")
        for key, value in others.items():
            click.echo(f"  {key}: {fmt(value)}")


@main.command("train")
@click.argument("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="config/config.yaml", show_default=True, help="Config file that defines the run.")
@click.option("--results", type=click.Path(path_type=Path), default=layout.RESULTS, show_default=True,
              help="Results folder (the same layout as the workflow's).")
def train_command(run: str, config_path: Path, results: Path):
    """Train one run of a config outside Snakemake, with a progress bar. RUN is e.g. grokking/wd~1.0_seed~0.

    Generates the run's dataset if it is missing, then writes results/runs/RUN/config.yaml and
    train/ exactly as the workflow's train rule does (with the rule's thread count, the config's threads.train: the
    same numbers); a killed run resumes when started again.
    """
    import logging

    from gradscope import artifacts, pipeline
    from gradscope.config import ConfigError, dataset_id, load_config_files, load_runs, run_config, train_slice
    from gradscope.train import RunLocked

    try:  # the runs Snakemake would plan for --configfile CONFIG (docs/configuration.md)
        config, planned = load_runs(load_config_files([config_path]), check_device=True)[:2]
        runs = {r.id: r for r in planned}
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
    artifacts.write_json(artifacts.invocation_args([config_path]), layout.in_run(out, "invocation"))
    logging.basicConfig(level=logging.WARNING)
    with click.progressbar(length=settings["train"]["steps"], label=f"training {run}") as bar:
        last = [0]

        def advance(step: int) -> None:
            bar.update(step - last[0])
            last[0] = step

        try:
            metrics = pipeline.train_run(train_slice(settings), dataset=files, out_dir=layout.in_run(out, "metrics").parent,
                                         run_id=run, progress=advance, threads=config["threads"]["train"])
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
        raise click.ClickException(_named(e, configs, default))
    for run in runs:
        click.echo(run.id)


def _named(error: Exception, configs, default: Path | None, overrides: dict | None = None,
           replace_workflow_config: bool = False) -> str:
    """A ConfigError's message naming the files it comes from: a file that does not read names
    itself; a bad key or value is named with the files read, in order (and --config)."""
    if not str(error).startswith("invalid"):
        return str(error)
    configs = [Path(c) for c in configs]
    own = default is not None and not replace_workflow_config and Path(default).exists() \
        and Path(default).absolute() not in [c.absolute() for c in configs]
    read = [str(default)] * own + [str(c) for c in configs] + ["--config"] * bool(overrides)
    return f"{' then '.join(read)}: {error}"


@main.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                                       "help_option_names": ["--help"]})
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED, metavar="[SNAKEMAKE ARGS]...")
def run_command(snakemake_args: tuple[str, ...]):
    """Check the config Snakemake will run, then run `snakemake SNAKEMAKE ARGS...` (e.g. `gradscope run
    --cores 2 --configfile mine.yaml`).

    The config is composed from the arguments exactly as the workflow composes it: the workflow's
    config/config.yaml, each --configfile, then --config (and --replace-workflow-config, --directory,
    --profile). A file that does not read (a YAML error, an empty file, a file that is not YAML) or a
    bad key or value stops here, with a message naming the file; Snakemake parses --configfile files
    itself before the workflow starts, and its own message names none. Then Snakemake runs with the
    same arguments, and its exit status is this command's."""
    import os
    import subprocess
    import sys

    from gradscope.config import DEFAULT_CONFIG, ConfigError, load_config_files, load_runs

    argv = list(snakemake_args)
    try:  # Snakemake's own parser (profiles included); arguments it refuses (or --help) are for Snakemake
        import contextlib
        import io

        from snakemake.cli import parse_args, parse_config

        # what parsing prints ("Using profile ...", --version, a usage error), Snakemake prints below
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            _, args = parse_args(argv)
        overrides = parse_config(args.config)
    except (Exception, SystemExit):
        args = None
    if args is not None:
        workdir = Path(args.directory) if args.directory else Path(".")
        default = workdir / DEFAULT_CONFIG
        configs = [Path(f) for f in args.configfile or ()]
        if configs or default.exists():  # else Snakemake names the missing config/config.yaml
            try:
                load_runs(load_config_files(configs, default=default, overrides=overrides,
                                            replace_workflow_config=args.replace_workflow_config))
            except ConfigError as e:
                raise click.ClickException(_named(e, configs, default, overrides, args.replace_workflow_config))
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *argv], env=os.environ.copy())
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Snakemake has the same Ctrl-C, and stops its jobs: wait for it
        code = proc.wait()
    raise SystemExit(code)


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
@click.option("--results", type=click.Path(path_type=Path), default=layout.RESULTS, show_default=True,
              help="Results folder of a workflow run.")
@click.option("--max-examples", type=int, default=None,
              help="Training examples per run carried by the pages (default: the schema's dashboard.max_examples).")
@click.option("--open", "open_", is_flag=True, help="Open the index in a web browser when done.")
def dashboard(results: Path, max_examples: int | None, open_: bool):
    """Build the interactive dashboards (one per experiment, and results/index.html) from what RESULTS holds now.

    Runs still training, stopped, failed or damaged are included and marked so, with what went wrong
    (failures read from ../logs beside RESULTS); each is named here too, and the others are built
    whole. The pages open from disk, with no server and no network."""
    from gradscope.dashboard import build_dashboards, discover
    from gradscope.dashboard.page import PROBLEM_STATUSES

    if not discover(results):
        raise click.ClickException(f"no runs under {layout.runs_root(results)}; run the workflow first (snakemake --cores 2)")
    statuses: dict = {}
    written = build_dashboards(results, settings=None if max_examples is None else {"max_examples": max_examples},
                               statuses=statuses)
    for path in written:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    for run_id, status in statuses.items():
        if status["status"] in PROBLEM_STATUSES:
            click.echo(f"{run_id}: {status['status']}: {status['detail']}", err=True)
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
