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

HEADLINE_COLUMNS = ["final_train_acc", "final_test_acc", "generalization_delay_steps", "max_sharpness",
                    "sharpness_threshold", "final_auroc_high_loss", "best_auroc_cos_rule"]


def parse_run_name(name: str) -> dict:
    """`wd~1.0_seed~0` -> {"wd": "1.0", "seed": "0"}: the varying parameters of a run id."""
    return dict(part.split("~", 1) for part in name.split("_") if "~" in part)


def run_folders(results: Path) -> list[Path]:
    """The run folders under `results` that hold a resolved config.yaml."""
    return [f for f in layout.run_folders(results) if layout.in_run(f, "config").exists()]


def run_status(folder: Path, logs_dir: Path | None = None) -> dict:
    """Headline figures of a finished run; the stage reached for one in progress.

    status: "done", "analysed" (no report yet), "trained", "training" (resumable checkpoints, no
    metrics yet), "not trained", "<rule> failed" (that job's log under `logs_dir` ends in its
    failure; "note" names the log), or "damaged" (an artifact does not read; "note" says which
    and how to regenerate it)."""
    from gradscope import pipeline
    from gradscope.logs import failed_logs

    metrics, summary = layout.in_run(folder, "metrics"), layout.in_run(folder, "signals_summary")
    curvature = layout.tables_in(folder, "curvature")
    failed = failed_logs(logs_dir, folder.parent.name, folder.name) if logs_dir is not None else []
    if not (metrics.exists() and summary.exists() and curvature):
        if failed:
            return {"status": f"{failed[0][0]} failed", "note": f"see {failed[0][1]}"}
        if layout.in_run(folder, "metrics_partial").exists() and not metrics.exists():
            return {"status": "train failed", "note": f"see {layout.in_run(folder, 'metrics_partial')}"}
        if metrics.exists():
            return {"status": "trained"}
        return {"status": "training" if any(layout.in_run(folder, "resume").glob("step_*.pt")) else "not trained"}
    try:
        head = pipeline.run_headline(metrics_path=metrics, summary_path=summary, curvature_paths=curvature)
    except (OSError, ValueError, KeyError) as e:
        return {"status": "damaged", "note": str(e).splitlines()[0]}
    done = layout.in_run(folder, "report").exists()
    if not done and failed:
        return {"status": f"{failed[0][0]} failed", "note": f"see {failed[0][1]}", **head}
    return {"status": "done" if done else "analysed", **head}


def runs_rows(results="results", experiment: str | None = None) -> list[dict]:
    """One row per run under `results`: its id, varying parameters, status and headline figures
    (what `gradscope runs` prints). Failures are read from the logs/ folder beside `results`."""
    results = Path(results)
    rows = []
    for folder in run_folders(results):
        exp, name = folder.parent.name, folder.name
        if experiment and exp != experiment:
            continue
        status = run_status(folder, logs_dir=results.parent / "logs")
        rows.append({"run": f"{exp}/{name}", **parse_run_name(name), "status": status["status"],
                     **{k: status.get(k) for k in HEADLINE_COLUMNS if k in status},
                     **({"note": status["note"]} if "note" in status else {})})
    return rows


def open_results(results="results", experiment: str | None = None) -> pd.DataFrame:
    """Every run under a results folder, one row each, with the headline columns of `gradscope runs`
    (numbers as numbers) and `path`, the run folder for `open_run`."""
    results = Path(results)
    if not (results / "runs").is_dir():
        raise FileNotFoundError(f"no runs under {results / 'runs'}; run the workflow first (snakemake --cores 2)")
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
        from gradscope.pipeline import split_labels

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
        from gradscope.pipeline import read_curvature

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
                                spec=spec)[0]

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


def analyze(checkpoints, *, data, model: dict | None = None, loss: str = "cross_entropy", examples: dict | None = None,
            signals: dict | None = None, lr: float | dict | None = None, device: str = "cpu") -> dict:
    """The per-example statistics and the detectors over checkpoints, in memory, without Snakemake.

    checkpoints: {step: file} or a list of files (step from each name, as for a checkpoint folder),
    gradscope's own or plain state_dicts (then `model`, the model section that rebuilds them, is
    needed). data: a data block. lr: the learning rate (one number, or {step: lr}) for the
    detectors that weight by it; 1 where not given. examples, signals: those sections' settings.
    Returns {"examples": the per-example table (both splits), "detections", "evaluation" (against
    the planted truth, where the data plants one), "groups", "group_pairs", "per_example"}."""
    import tempfile

    from gradscope import data as gdata
    from gradscope import external, opposing, pipeline, scoring
    from gradscope import signals as gsignals

    if not isinstance(checkpoints, dict):
        files = [Path(p) for p in checkpoints]
        steps = [external.step_of(p.name) for p in files]
        if None in steps:
            raise ValueError(f"no step number in {files[steps.index(None)]}; pass {{step: file}} instead")
        checkpoints = dict(zip(steps, files))
    checkpoints = {int(s): str(p) for s, p in sorted(checkpoints.items())}
    train, test, meta = gdata.generate(data)
    with tempfile.TemporaryDirectory(prefix="gradscope-analyze-") as tmp:
        folder = Path(tmp)
        files = gdata.dataset_files(folder)
        gdata.write_dataset(train, test, meta, files["train"], files["test"], files["meta"])
        parts = []
        for step, path in checkpoints.items():
            parts.append(layout.partition_file(folder / "examples", "examples", step))
            pipeline.extract_examples(config.filled("examples", examples), loss=loss, device=device, dataset=folder,
                                      step=step, out=parts[-1], run_id="analyze", checkpoints={str(step): path},
                                      model=model)
        table = pipeline.read_examples(parts)  # as the workflow's stages read them (the file's types)
    settings = config.filled("signals", signals)
    rates = None if lr is None else (pd.Series(lr) if isinstance(lr, dict) else pd.Series({min(checkpoints): float(lr)}))
    tr = gsignals.Trajectories.from_table(table, lr=rates)
    planted = (meta.get("planted") or {}).get("train_ids") or None
    detections = gsignals.detect(tr, settings)
    groups, pairs, _ = opposing.find_groups(tr, **settings["opposing_groups"])
    return {"examples": table, "detections": detections, "evaluation": scoring.evaluate(detections, planted),
            "groups": groups, "group_pairs": pairs, "per_example": gsignals.per_example(tr, planted)}
