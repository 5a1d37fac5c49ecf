"""Runs as objects in a notebook: one run's settings, dataset, tables and checkpoints; every run's headline.

    import gradscope
    run = gradscope.open_run("results/runs/opposing/seed~0")
    run.metrics                  # metrics.parquet, step an integer
    run.examples                 # every checkpoint's per-example table, step an integer, with the given
                                 # label, the original label and the planted flag beside every example
    run.signals["detections"]    # any table of signals/ (also run.curvature, run.influence, run.progress)
    model = run.checkpoint(run.steps[-1])   # the model in eval mode
    gradscope.open_results("results")       # one row per run, the columns of `gradscope runs`

A run folder is one the workflow wrote (results/runs/<experiment>/<run>) or one a Recorder wrote
(its training artifacts only). For small problems without Snakemake, `analyze` runs the per-example
statistics and the detectors over a list of checkpoints and returns the tables.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import yaml

from gradscope import artifacts, config, layout

from gradscope.report import HEADLINE as HEADLINE_COLUMNS  # noqa: E402  (the headline: report.HEADLINE)


def parse_run_name(name: str) -> dict:
    """`wd~1.0_seed~0` -> {"wd": "1.0", "seed": "0"}: the varying parameters of a run id."""
    return dict(part.split("~", 1) for part in name.split("_") if "~" in part)


def run_folders(results: Path) -> list[Path]:
    """The run folders under `results`: each that holds a resolved config.yaml or a train/ folder (a
    run killed mid-training may have no config.yaml yet: the workflow writes it for the report)."""
    return [f for f in layout.run_folders(results)
            if layout.in_run(f, "config").exists() or layout.in_run(f, "metrics").parent.is_dir()]


# Every status a run can have, in the order a run goes through them (`run_status` decides which).
STATUSES = ("pending", "training", "stopped", "analysing", "done", "failed", "damaged")


def trainer(folder: Path) -> dict | None:
    """Who holds the run's training lock (train/.train.lock, see `gradscope.train.run_lock`), without
    taking it: {"live": whether that process still runs, "holder": the lock's text}; None without
    a lock file. The holder's pid is looked up on this host (a kill -9 leaves the file behind, and
    a pid now used by another program does not count); a holder on another host counts as live."""
    import os
    import re
    import socket

    path = layout.in_run(folder, "train_lock")
    try:
        holder = path.read_text(errors="replace").strip()
    except OSError:
        return None
    m = re.match(r"pid (\d+) on (\S+), since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", holder)
    if not m:  # the lock's holder died before writing its name
        return {"live": False, "holder": holder or "a process that left no name"}
    pid, host = int(m.group(1)), m.group(2)
    if host != socket.gethostname():
        return {"live": True, "holder": holder}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return {"live": False, "holder": holder}
    except PermissionError:  # another user's process
        pass
    try:  # a reused pid: the process there now started after the lock was taken
        import time

        since = time.mktime(time.strptime(m.group(3), "%Y-%m-%d %H:%M:%S"))
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        if boot + ticks / os.sysconf("SC_CLK_TCK") > since + 2:
            return {"live": False, "holder": holder}
    except (OSError, ValueError, IndexError, StopIteration):  # no /proc (macOS): the pid alone
        pass
    return {"live": True, "holder": holder}


def damaged_files(folder: Path) -> list[str]:
    """The run's artifacts that are not whole, one line each naming the file and the command that
    writes it again: its checkpoints by size against the training manifest, its Parquet tables by
    their magic bytes, its JSON files by parsing (`artifacts.damaged_checkpoints`, `damaged_tables`:
    a stat and the two ends of each file). A checkpoint that is not there at all is left out: a results
    folder copied without its checkpoints is whole for everything read from it."""
    checkpoints = artifacts.damaged_checkpoints(layout.in_run(folder, "manifest"))
    return [line for line in checkpoints if Path(line.split(": ", 1)[0]).exists()] + artifacts.damaged_tables(folder)


def run_status(folder: Path, logs_dir: Path | None = None, *, headline: bool = True) -> dict:
    """A run's status and note, and (headline=True) its headline figures as far as it got: what
    `gradscope runs`, `gradscope show`, the dashboards and the index page all show.

    status, the first that holds:
    "training": a live process holds the run's training lock;
    "damaged": an artifact is not whole (a truncated checkpoint or table); the note names the file
    and the command that writes it again;
    "failed": a job's log under `logs_dir` ends in its failure (the note names the rule and the
    log), or training stopped on a non-finite loss (metrics.partial.parquet);
    "stopped": training began and its process is gone (killed: a stale lock or resumable
    checkpoints, no metrics); the same command resumes it;
    "pending": not trained yet;
    "analysing": trained, per-example statistics, curvature or signals not (all) written yet;
    "done": trained and analysed."""
    folder = Path(folder)
    metrics = layout.in_run(folder, "metrics")
    resume = layout.checkpoints_in(layout.in_run(folder, "resume"))
    last = f"; last resumable checkpoint {resume[-1].stem}" if resume else ""
    lock = trainer(folder)
    if lock and lock["live"]:
        return {"status": "training", "note": f"training ({lock['holder'].split(': ', 1)[0]}){last}"}
    damaged = damaged_files(folder)
    if damaged:
        more = f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""
        return {"status": "damaged", "note": damaged[0] + more}
    from gradscope.logs import failed_logs

    failed = failed_logs(logs_dir, folder.parent.name, folder.name) if logs_dir is not None else []
    out = {}
    if failed:
        out = {"status": "failed", "note": f"{failed[0][0]} failed: see {failed[0][1]}"}
    elif layout.in_run(folder, "metrics_partial").exists() and not metrics.exists():
        out = {"status": "failed", "note": "train failed: a non-finite loss stopped training; metrics so far in "
                                           f"{layout.in_run(folder, 'metrics_partial')}"}
    elif not metrics.exists():
        if lock or resume:
            out = {"status": "stopped", "note": "training stopped: its process "
                   + (f"({lock['holder'].split(',', 1)[0]}) " if lock else "") + "is gone (killed?)" + last
                   + ("; the same command (snakemake, or gradscope train) resumes it" if resume
                      else "; the same command (snakemake, or gradscope train) starts it again")}
        else:
            out = {"status": "pending", "note": "not trained yet"}
    summary, curvature = layout.in_run(folder, "signals_summary"), layout.tables_in(folder, "curvature")
    if not out:
        missing = [name for name, have in (("examples", layout.tables_in(folder, "examples")),
                                           ("curvature", curvature), ("signals", summary.exists())) if not have]
        out = ({"status": "analysing", "note": f"trained; not yet written: {', '.join(missing)}"} if missing
               else {"status": "done"})
    if headline and metrics.exists() and summary.exists() and curvature:
        from gradscope import readers, report

        try:  # as pipeline.run_headline reads them
            out.update(report.headline(artifacts.read_parquet(metrics), artifacts.read_json(summary),
                                       readers.read_curvature(curvature)))
        except (OSError, ValueError, KeyError) as e:  # a file the cheap checks above pass but that does not read
            return {"status": "damaged", "note": str(e).splitlines()[0]}
    return out


def runs_rows(results=layout.RESULTS, experiment: str | None = None) -> list[dict]:
    """One row per run under `results`: its id, varying parameters, status and headline figures
    (what `gradscope runs` prints). Failures are read from the logs/ folder beside `results`."""
    results = Path(results)
    rows = []
    for folder in run_folders(results):
        exp, name = folder.parent.name, folder.name
        if experiment and exp != experiment:
            continue
        status = run_status(folder, logs_dir=layout.logs_beside(results))
        rows.append({"run": f"{exp}/{name}", **parse_run_name(name), "status": status["status"],
                     **headline_figures(status if "final_train_acc" in status else headline_of(folder)),
                     **({"note": status["note"]} if "note" in status else {})})
    return rows


def headline_figures(figures: dict) -> dict:
    """The headline (report.HEADLINE, in order) of a run's figures, None where missing or not applicable."""
    from gradscope.report import headline_figures as pick

    return pick(figures)


def headline_of(folder: Path, metrics: pd.DataFrame | None = None) -> dict:
    """A run's figures (report.headline) as far as it got: from its metrics (or, for a run stopped or
    still training, the partial metrics or the rows in its latest resumable checkpoint; or `metrics`
    where given), its signals summary and its curvature tables, each left out where it is missing or
    does not read (the run's status says why)."""
    from gradscope import readers, report

    folder = Path(folder)

    def attempt(read):
        try:
            return read()
        except Exception:  # a damaged or half-written artifact: that part of the headline is missing
            return None

    if metrics is None:
        for name in ("metrics", "metrics_partial"):
            if layout.in_run(folder, name).exists():
                metrics = attempt(lambda: artifacts.read_parquet(layout.in_run(folder, name)))
                break
        else:
            resume = layout.checkpoints_in(layout.in_run(folder, "resume"))
            if resume:
                from gradscope import checkpoints  # torch only for a run still in training

                rows = attempt(lambda: checkpoints.load_state(resume[-1]).get("metrics_rows")) or []
                metrics = pd.DataFrame(rows) if rows else None
    summary_path = layout.in_run(folder, "signals_summary")
    summary = attempt(lambda: artifacts.read_json(summary_path)) if summary_path.exists() else None
    curvature_paths = layout.tables_in(folder, "curvature")
    curvature = attempt(lambda: readers.read_curvature(curvature_paths)) if curvature_paths else None
    return attempt(lambda: report.headline(metrics, summary, curvature)) or {}


def open_results(results=layout.RESULTS, experiment: str | None = None) -> pd.DataFrame:
    """Every run under a results folder, one row each, with the headline columns of `gradscope runs`
    (numbers as numbers) and `path`, the run folder for `open_run`."""
    results = Path(results)
    if not layout.runs_root(results).is_dir():
        raise FileNotFoundError(f"no runs under {layout.runs_root(results)}; run the workflow first (snakemake --cores 2)")
    table = pd.DataFrame(runs_rows(results, experiment))
    if len(table):
        table.insert(1, "path", [str(layout.run_dir(r, results)) for r in table["run"]])
    return table


def open_run(path) -> "RunView":
    """One run folder as an object (see the module docstring)."""
    return RunView(path)


class RunView:
    """A run folder's settings, dataset, tables (as DataFrames, read when first asked) and checkpoints."""

    def __init__(self, path):
        self.path = Path(path)
        config_path = layout.in_run(self.path, "config")
        if not config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder ({config_path.name} is missing); a run folder is "
                                    "results/runs/<experiment>/<run>, or one a gradscope.Recorder wrote")
        self.settings = yaml.safe_load(config_path.read_text()) or {}
        self.id = f"{self.path.parent.name}/{self.path.name}"

    def __repr__(self) -> str:
        have = [name for name in ("metrics", "examples", "signals", "curvature", "influence", "progress")
                if self._has(name)]
        return f"<gradscope run {self.id}: {len(self.steps)} checkpoints; tables: {', '.join(have) or 'none'}>"

    def _has(self, name: str) -> bool:
        return {"metrics": layout.in_run(self.path, "metrics").exists(),
                "examples": bool(layout.tables_in(self.path, "examples")),
                "signals": layout.in_run(self.path, "signals_summary").exists(),
                "curvature": bool(layout.tables_in(self.path, "curvature")),
                "influence": layout.in_run(self.path, "influence_summary").exists(),
                "progress": layout.in_run(self.path, "progress").exists()}[name]

    # ---- settings and dataset ---------------------------------------------------------------
    @property
    def dataset_id(self) -> str:
        """The dataset's id: recorded in the run's config.yaml (or computed from its data block)."""
        return (self.settings.get("dataset") or {}).get("id") or config.dataset_id(self.settings)

    @property
    def dataset(self) -> Path | None:
        """The dataset folder (train.parquet, test.parquet, meta.json) the workflow wrote for this run, where it is."""
        results = self.path.resolve().parents[2]  # results/runs/<experiment>/<run>: a recorder's folder may lie elsewhere
        folder = Path(layout.dataset_file("meta", self.dataset_id, results)).parent
        return folder if folder.exists() else None

    def _dataset_or_raise(self) -> Path:
        if self.dataset is None:
            raise FileNotFoundError(f"{self.id}: its dataset {self.dataset_id} is not under "
                                    f"{self.path.resolve().parents[2] / 'data'}; analyze the run with the workflow first")
        return self.dataset

    @functools.cached_property
    def labels(self) -> pd.DataFrame:
        """split, example_id, label (as given to training), clean_label (the original label) and planted, per example."""
        from gradscope.data import dataset_files
        from gradscope.readers import split_labels

        files = dataset_files(self._dataset_or_raise())
        parts = [split_labels(files[split]).assign(split=split) for split in ("train", "test")]
        table = pd.concat(parts, ignore_index=True)
        return table[["split", "example_id", "label", "clean_label", "planted"]]

    # ---- tables ---------------------------------------------------------------------------------
    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        return artifacts.read_parquet(layout.in_run(self.path, "metrics"))

    @functools.cached_property
    def dynamics(self) -> pd.DataFrame:
        return artifacts.read_parquet(layout.in_run(self.path, "dynamics"))

    @functools.cached_property
    def examples(self) -> pd.DataFrame:
        """Every checkpoint's per-example table, step an integer, with clean_label beside label and planted."""
        files = layout.tables_in(self.path, "examples")
        if not files:
            raise FileNotFoundError(f"{self.id}: no per-example tables under {self.path / 'examples'}; run the workflow")
        table = artifacts.read_partitions(files)
        if self.dataset is not None:
            table = table.merge(self.labels[["split", "example_id", "clean_label"]], on=["split", "example_id"],
                                how="left", validate="many_to_one")
            order = [c for c in table.columns if c != "clean_label"]
            table = table[order[: order.index("label") + 1] + ["clean_label"] + order[order.index("label") + 1:]]
        return table

    @functools.cached_property
    def curvature(self) -> pd.DataFrame:
        from gradscope.readers import read_curvature

        return read_curvature(layout.tables_in(self.path, "curvature")).reset_index(drop=True)

    @functools.cached_property
    def signals(self) -> dict:
        """The signals stage's tables by name (detections, evaluation, groups, ...) and its summary (a dict)."""
        return _Tables(self.path, "signals", layout.SIGNALS)

    @functools.cached_property
    def influence(self) -> dict:
        return _Tables(self.path, "influence", layout.INFLUENCE)

    @functools.cached_property
    def progress(self) -> pd.DataFrame:
        return artifacts.read_parquet(layout.in_run(self.path, "progress"))

    # ---- checkpoints ----------------------------------------------------------------------------
    @functools.cached_property
    def manifest(self) -> dict:
        return artifacts.read_json(layout.in_run(self.path, "manifest"))

    @property
    def steps(self) -> list[int]:
        """The checkpoint steps."""
        if not layout.in_run(self.path, "manifest").exists():
            return []
        return sorted(int(s) for s in self.manifest["checkpoints"])

    def checkpoint(self, step: int, device: str = "cpu"):
        """The model at checkpoint `step`, in eval mode."""
        from gradscope import checkpoints
        from gradscope.models import InputSpec

        if step not in self.steps:
            raise KeyError(f"{self.id} has no checkpoint at step {step}; its steps: {self.steps}")
        path = layout.in_run(self.path, "manifest").parent / self.manifest["checkpoints"][str(step)]
        spec = None
        if self.dataset is not None:
            from gradscope.data import load_meta

            spec = InputSpec.from_dict(load_meta(self.dataset)["input"])
        return checkpoints.load(path, device, model_settings=self.manifest.get("model") or self.settings.get("model"),
                                spec=spec, code=self.manifest.get("code"))[0]

    @property
    def report(self) -> Path | None:
        path = layout.in_run(self.path, "report")
        return path if path.exists() else None

    @property
    def figures(self) -> dict[str, Path]:
        """The run's figures that exist, by name (training, flagged, curvature, ...; gif)."""
        named = {name: layout.in_run(self.path, f"figure_{name}") for name in layout.FIGURES}
        named["gif"] = layout.in_run(self.path, "gif")
        return {k: v for k, v in named.items() if v.exists()}


class _Tables(dict):
    """A stage's tables by name, each read when first asked."""

    def __init__(self, folder: Path, stage: str, names):
        super().__init__()
        self._folder, self._stage, self._names = folder, stage, tuple(names)

    def __missing__(self, name):
        if name not in self._names:
            raise KeyError(f"no {self._stage} table {name!r}; the stage writes {', '.join(self._names)}")
        path = layout.in_run(self._folder, f"{self._stage}_{name}")
        value = artifacts.read_json(path) if path.suffix == ".json" else artifacts.read_parquet(path)
        self[name] = value
        return value

    def keys(self):
        return self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __repr__(self):
        return f"<{self._stage} tables: {', '.join(self._names)}>"

