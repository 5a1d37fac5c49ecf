"""The workflow's stages as library calls: read artifacts, compute, write artifacts.

One function per Snakemake rule; the scripts in scripts/ and the CLI only adapt arguments
to these. Computation lives below (data, train, examples, signals, detections, influence,
interventions, curvature, plots, animate, report); file formats in `artifacts`, reading them
back in `readers`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Only what every stage needs loads here: the stages that run torch import it themselves, so that
# a job that reads tables and draws (signals, plots, reports) starts without it (about 1.5 s).
from gradscope import artifacts, config, detections, layout, report, scoring, signals, tables
from gradscope.readers import (checkpoint_file, examples_at, planted_truth, read_curvature, read_eigenvectors,
                               read_examples, run_files, split_labels)
from gradscope.sweep_table import sweep_table
from gradscope.tables import EFFECTS, TIMELINE_EVENTS, TIMELINE_LINKS
from gradscope.tables import examples_columns  # noqa: F401 (pipeline.examples_columns, as before)

log = logging.getLogger(__name__)


def generate_data(data_config: dict, *, train_path, test_path, meta_path) -> None:
    from gradscope import data, factories

    train, test, meta = data.generate(data_config)
    code = factories.data_code(data_config)  # the data factory's code as it ran (python sources only)
    if code is not None:
        meta = {**meta, "code": code}
    data.write_dataset(train, test, meta, train_path, test_path, meta_path)
    log.info("generated %s: %d train, %d test examples", data_config["generator"], len(train), len(test))


def derive_data(data_config: dict, *, parent: dict, detections_path, examples_paths, train_path, test_path,
                meta_path) -> None:
    """An intervention run's dataset (gradscope.interventions): its parent's dataset (`parent`: the parent
    dataset's files), with the examples of its arm chosen from the parent's detections at the step and
    removed, down-weighted or relabelled to the parent's predictions there (its examples table at the step,
    among examples_paths)."""
    from gradscope import data, interventions

    spec = data_config["intervene"]
    files = data.dataset_files(parent)
    train, test = artifacts.read_parquet(files["train"]), artifacts.read_parquet(files["test"])
    examples = examples_at(examples_paths, spec["step"]) if spec["action"] == "relabel" else None
    train, test, meta, chosen = interventions.intervene(train, test, artifacts.read_json(files["meta"]),
                                                        artifacts.read_parquet(detections_path), spec, examples)
    meta["class_counts"] = data.check_dataset(train, test, meta["input"], f"{spec['parent_run']}'s dataset, intervened on")
    meta = {**meta, "generator": data_config,
            "intervention": {**spec, "parent_dataset": Path(files["meta"]).parent.name, **chosen}}
    data.write_dataset(train, test, meta, train_path, test_path, meta_path)
    log.info("derived %s from %s: %s %d examples (%s arm)", Path(meta_path).parent.name, spec["parent_run"],
             spec["action"], len(chosen["chosen_ids"]), spec["arm"])


def train_run(settings: dict, *, dataset, out_dir, run_id: str, progress=None, threads: int | None = None) -> pd.DataFrame:
    """dataset: the dataset's files as the rule declares them, or its folder (data.dataset_files).
    threads: torch's intra-op threads while training (default: the train rule's, resources.TRAIN_THREADS),
    so that the rule and `gradscope train` sum in the same order and write the same numbers."""
    import torch

    from gradscope import data
    from gradscope import train as training
    from gradscope.models import InputSpec
    from gradscope.resources import TRAIN_THREADS

    spec = InputSpec.from_dict(data.load_meta(dataset)["input"])
    if settings["data"]["generator"] in ("python", "torchvision", "files"):  # input not always known when planning
        from gradscope import preflight

        preflight.check_model(settings["model"], spec)  # a ConfigError naming model.factory or the key
    x, y, table = data.load_split(dataset, "train")
    weighted = table is not None and "weight" in table  # an intervention's downweight (gradscope.interventions)
    train_split = (x, y, torch.tensor(table["weight"].to_numpy(), dtype=torch.float32)) if weighted else (x, y)
    test_split = data.load_split(dataset, "test")[:2]
    before = torch.get_num_threads()
    torch.set_num_threads(threads or TRAIN_THREADS)
    try:
        return training.train(settings, train_split, test_split, spec, out_dir, run_id, progress=progress)
    finally:
        torch.set_num_threads(before)


def open_checkpoint(step: int, *, dataset, device, manifest=None, checkpoints: dict | None = None,
                    model: dict | None = None):
    """The model (eval mode) and checkpoint dict at `step`: through a run's manifest, or from
    `checkpoints` ({step: file}: a run gradscope did not train). A plain state_dict is loaded into
    the model that `model` (the run's model section) builds for the dataset's inputs."""
    from gradscope import checkpoints as ckpt
    from gradscope import data
    from gradscope.models import InputSpec

    path = Path(checkpoints[str(step)]) if checkpoints else checkpoint_file(manifest, step)
    spec = InputSpec.from_dict(data.load_meta(dataset)["input"])
    return ckpt.load(path, device=device, model_settings=model, spec=spec)


def extract_examples(settings: dict, *, loss: str, device: str, dataset, step: int, out, run_id: str, manifest=None,
                     checkpoints: dict | None = None, model: dict | None = None) -> pd.DataFrame:
    """Per-example statistics of both splits at one checkpoint; cosines against the mean *training* gradient.

    dataset: the dataset's files as the rule declares them, or its folder (data.dataset_files);
    the checkpoint: see `open_checkpoint` (manifest, or checkpoints and model)."""
    from gradscope import data, examples, projection
    from gradscope.models import resolve_device

    settings = config.filled("examples", settings)  # each stage's section: what it leaves out takes the schema's default
    dev = resolve_device(device)
    model, _ = open_checkpoint(step, dataset=dataset, device=dev, manifest=manifest, checkpoints=checkpoints, model=model)
    x_train, y_train, train_df = data.load_split(dataset, "train")
    trainable_only = settings["trainable_only"]
    mean_grad = examples.mean_gradient(model, x_train.to(dev), y_train.to(dev), loss=loss, batch_size=settings["batch_size"],
                                       trainable_only=trainable_only)
    tables = []
    for split in ("train", "test"):
        x, y, df = (x_train, y_train, train_df) if split == "train" else data.load_split(dataset, split)
        stats = examples.per_example_stats(model, x.to(dev), y.to(dev), loss=loss, proj_dim=settings["proj_dim"],
                                           seed=settings["seed"], batch_size=settings["batch_size"], mean_grad=mean_grad,
                                           layer_norms=True, trainable_only=trainable_only,
                                           projection=settings["projection"])
        proj = stats.pop("grad_proj").astype(np.float16 if settings["proj_dtype"] == "float16" else np.float32)
        stats["layer_grad_norm"] = list(stats.pop("layer_grad_norm").astype(np.float32))
        tables.append(pd.DataFrame({"split": split, "example_id": df["example_id"].to_numpy(),
                                    "label": df["label"].to_numpy(), **stats, "planted": df["planted"].to_numpy(),
                                    "grad_proj": list(proj)}))
    table = pd.concat(tables, ignore_index=True)
    names = examples.layer_names(model, trainable_only)
    artifacts.write_parquet(table, out, examples_columns(settings["proj_dim"], settings["proj_dtype"], len(names)),
                            table="examples", run_id=run_id,
                            config={"examples": settings, "loss": loss, "step": step, "layer_names": names,
                                    "projection": projection.resolve_kind(settings["projection"], settings["proj_dim"]),
                                    "mode": "eval"})  # checkpoints.load gives the model in eval mode
    return table


def detect_signals(settings: dict, *, examples_paths, meta_path, metrics_path, out: dict, run_id: str) -> dict:
    """Every configured detector on the training split, scored against the planted truth where the data has one.

    out: a path for each of layout.SIGNALS (the tables of docs/artifacts.md)."""
    missing = [k for k in layout.SIGNALS if k not in out]
    if missing:
        raise ValueError(f"detect_signals needs output paths for {missing}")
    settings = config.filled("signals", settings)
    planted, planted_groups = planted_truth(meta_path)
    metrics = artifacts.read_parquet(metrics_path)
    tr = detections.read_trajectories(examples_paths, metrics.set_index("step")["lr"], settings)  # the columns it needs
    tables, found = detections.analyze(tr, metrics, settings, planted, planted_groups)
    summary = {"run_id": run_id, "settings": settings, **found}
    schemas = {"detections": artifacts.DETECTIONS, "evaluation": artifacts.EVALUATION, "groups": artifacts.GROUPS,
               "group_pairs": artifacts.GROUP_PAIRS, "group_losses": artifacts.GROUP_LOSSES,
               "loss_changes": artifacts.LOSS_CHANGES, "per_example": artifacts.PER_EXAMPLE}
    for name, table in tables.items():
        artifacts.write_parquet(table, out[name], schemas[name], table=name, run_id=run_id, config={"signals": settings})
    artifacts.write_json(summary, out["summary"])
    log.info("signals: %d detectors, %d checkpoints, %d training examples; %d opposing group pairs",
             tables["detections"]["detector"].nunique(), len(tr.steps), len(tr.example_ids),
             int(tables["group_pairs"]["opposing"].sum()))
    return summary


def compute_influence(settings: dict, *, examples_paths, metrics_path, train_path, test_path, out: dict,
                      run_id: str) -> dict:
    """Train-to-test TracIn-CP (gradscope.influence) from the stored projections of every checkpoint, of the test
    examples influence.choose_test picks (it logs which), block by block, logging its progress. out: a path for each
    of layout.INFLUENCE."""
    from gradscope import influence, readers

    settings = config.filled("influence", settings)
    t0 = time.perf_counter()
    files, steps = readers.examples_files(examples_paths)
    lr = signals.lr_at(artifacts.read_parquet(metrics_path).set_index("step")["lr"], steps)
    test_ids, chosen = influence.choose_test(all_test := np.unique((final := readers.last_test_rows(files))["example_id"]),
                                             settings, final)
    train_ids, train_proj, test_proj = readers.checkpoint_projections(files, test_ids, influence.progress_log("read checkpoint"))
    top = influence.top_influences(train_proj, test_proj, lr, settings["top_k"], block_size=settings["block_size"],
                                   progress=influence.progress_log("scored test x training pairs"))
    train_df, test_df = split_labels(train_path, train_ids), split_labels(test_path, test_ids)
    rows, contributions = influence.influence_tables(top, steps=steps, lr=lr, test_ids=test_ids, train=train_df,
                                                     test=test_df)
    provenance = {"influence": settings}
    artifacts.write_parquet(rows, out["top"], artifacts.INFLUENCE_TOP, table="influence_top", run_id=run_id,
                            config=provenance)
    artifacts.write_parquet(contributions, out["contributions"], artifacts.INFLUENCE_CONTRIBUTIONS,
                            table="influence_contributions", run_id=run_id, config=provenance)
    summary = {"run_id": run_id, "settings": settings, "steps": steps.tolist(), "lr": lr.tolist(), "n_train": len(train_ids),
               "n_test_scored": len(test_ids), "n_test": len(all_test), "test_chosen": chosen, "proj_dim": train_proj.shape[-1],
               **influence.findings(rows, train_df, final, test_ids, settings["report_examples"]),
               "seconds": round(time.perf_counter() - t0, 3)}
    artifacts.write_json(summary, out["summary"])
    log.info("influence: %d of %d test x %d training examples over %d checkpoints (k = %d) in %.2f s", len(test_ids),
             len(all_test), len(train_ids), len(steps), train_proj.shape[-1], summary["seconds"])
    return summary


def write_curvature(settings: dict, *, optim: dict, loss: str, device: str, dataset, step: int, out,
                    eigenvectors_out, run_id: str, warm=None, manifest=None, checkpoints: dict | None = None,
                    model: dict | None = None):
    """Curvature at one checkpoint on a fixed, seeded subset of the training set (the same at every step).

    eigenvectors_out: the .npy of the top-k eigenvectors (float32, (k, n_params), n_params the
    trainable parameters), or a (0, n_params) array unless `eigenvectors` or `warm_start` is set.
    warm: the previous checkpoint's eigenvectors file, where Lanczos starts (`warm_start`).
    dataset: the dataset's files as the rule declares them, or its folder (data.dataset_files).
    The model is measured in eval mode (checkpoints.load returns it so), as the metadata records.
    Update sharpness: see `curvature.replay.checkpoint_update`. The checkpoint: see `open_checkpoint`.
    """
    from gradscope import curvature, data, parameters
    from gradscope import train as training
    from gradscope.curvature.replay import checkpoint_update
    from gradscope.models import resolve_device

    dev = resolve_device(device)
    model, state = open_checkpoint(step, dataset=dataset, device=dev, manifest=manifest, checkpoints=checkpoints,
                                   model=model)
    n_params = parameters.n_trainable(model)  # the Hessian's coordinates: trainable parameters only
    start = None if warm is None else read_eigenvectors(warm, n_params)  # checked before any work
    x, y, _ = data.load_split(dataset, "train")
    x, y = x.to(dev), y.to(dev)
    subset = np.sort(np.random.default_rng(settings["seed"]).permutation(len(y))[: settings["subset_size"]])
    update = checkpoint_update(model, state, optim, x, y, loss=loss, step=step, wanted=settings["update_sharpness"],
                               batch_size=settings["batch_size"])
    keep = settings["eigenvectors"] or settings["warm_start"]
    result = curvature.compute_curvature(model, x[subset], y[subset], settings, loss=loss, warm=start, update=update,
                                         return_eigenvectors=keep)
    vectors = result.pop("eigenvectors", None)
    artifacts.write_npy(vectors.astype(np.float32) if keep else np.zeros((0, n_params), np.float32), eigenvectors_out)
    # The table has every column: a measure that did not run reads NaN (lists empty, counts 0).
    # 2/lr where it is the stability threshold (report.edge_assessed); null under an adaptive optimizer
    threshold = training.sharpness_threshold(optim) if report.edge_assessed(optim["name"]) else float("nan")
    row = {**artifacts.CURVATURE_ABSENT, **result, "lr": optim["lr"], "sharpness_threshold": threshold}
    artifacts.write_parquet(pd.DataFrame([row]), out, artifacts.CURVATURE, table="curvature", run_id=run_id,
                            config={"curvature": settings, "optim": optim, "loss": loss, "step": step,
                                    "subset_ids": subset.tolist(), "mode": "eval"})
    log.info("step %d: sharpness %.4g (2/lr %.4g; %d Lanczos steps), trace %.4g ± %.2g, update sharpness %.4g, "
             "GGN top eigenvalue %.4g, %d HVPs, %d GGN products", step, result["sharpness"], row["sharpness_threshold"],
             result["lanczos_steps"], result["hessian_trace"], result["hessian_trace_stderr"],
             row["update_sharpness"], row["ggn_top_eigenvalue"], result["hvp_count"], row["ggn_mvp_count"])
    return row


def render_plots(settings: dict, *, metrics_path, summary_path, curvature_paths, training_png, flagged_png,
                 curvature_png, run_id: str) -> None:
    from gradscope import plots  # matplotlib loads only in the jobs that draw (each job is a fresh process)

    metrics = artifacts.read_parquet(metrics_path)
    per_step = pd.DataFrame(artifacts.read_json(summary_path)["per_step"])
    dpi = config.filled("plots", settings)["dpi"]
    plots.plot_training(metrics, training_png, title=f"{run_id}: loss and accuracy", dpi=dpi)
    plots.plot_flagged(per_step, flagged_png, title=f"{run_id}: flagged examples", dpi=dpi)
    plots.plot_curvature(read_curvature(curvature_paths), metrics, curvature_png, title=f"{run_id}: curvature", dpi=dpi)


def render_signal_plots(settings: dict, *, metrics_path, meta_path, groups_path, group_pairs_path, group_losses_path,
                        loss_changes_path, per_example_path, out: dict, run_id: str) -> None:
    """out: paths of group_losses, loss_changes and cartography PNGs."""
    from gradscope import signal_plots  # matplotlib loads only in the jobs that draw

    planted, planted_groups = planted_truth(meta_path)
    composition = scoring.group_composition(artifacts.read_parquet(groups_path), planted, planted_groups)
    dpi = config.filled("plots", settings)["dpi"]
    signal_plots.plot_group_losses(artifacts.read_parquet(group_losses_path), artifacts.read_parquet(group_pairs_path),
                                   composition, artifacts.read_parquet(metrics_path), out["group_losses"],
                                   title=f"{run_id}: loss of opposing groups", dpi=dpi)
    signal_plots.plot_loss_changes(artifacts.read_parquet(loss_changes_path), planted, out["loss_changes"],
                                   title=f"{run_id}: per-example loss change between checkpoints", dpi=dpi)
    signal_plots.plot_cartography(artifacts.read_parquet(per_example_path), out["cartography"],
                                  title=f"{run_id}: dataset cartography", dpi=dpi)


def render_density(settings: dict, *, curvature_paths, out, run_id: str) -> None:
    from gradscope import plots  # matplotlib loads only in the jobs that draw

    table = read_curvature(curvature_paths)
    what = "Hessian and Gauss-Newton" if any(len(v) for v in table.get("ggn_density", [])) else "Hessian"
    plots.plot_density(table, out, title=f"{run_id}: {what} spectral density",
                       dpi=config.filled("plots", settings)["dpi"])


def write_progress(settings: dict, *, data_settings: dict, loss: str, dataset, manifest, metrics_path, out,
                   figure, run_id: str, dpi: int) -> pd.DataFrame:
    """The progress stage: the table (`out`, Parquet) and its figure beside the loss curves (`figure`)."""
    from gradscope import plots  # matplotlib loads only in the jobs that draw
    from gradscope.progress import compute_progress  # torch loads only in the jobs that need it

    table = compute_progress(settings, data_settings=data_settings, loss=loss, dataset=dataset, manifest=manifest,
                             metrics_path=metrics_path, run_id=run_id)
    artifacts.write_parquet(table, out, tables.PROGRESS, table="progress", run_id=run_id,
                            config={"progress": settings, "data": data_settings, "loss": loss, "mode": "eval"})
    plots.plot_progress(table, artifacts.read_parquet(metrics_path), figure,
                        title=f"{run_id}: progress measures (Nanda et al. 2023)", dpi=dpi)
    return table


def render_animation(settings: dict, *, examples_paths, detections_path, gif_path, frames_dir, run_id: str) -> None:
    from gradscope import animate  # matplotlib loads only in the jobs that draw

    settings = config.filled("plots", settings)
    table = read_examples(examples_paths)
    train = table[table["split"] == "train"]
    detections = artifacts.read_parquet(detections_path)
    flagged = detections.loc[detections["detector"] == "cos_rule", ["step", "example_id", "flagged"]]
    steps = sorted(train["step"].unique())
    Path(frames_dir).mkdir(parents=True, exist_ok=True)
    frames = [Path(frames_dir) / layout.step_file("frame", s) for s in steps]
    animate.render_projection_animation(train, flagged, gif_path, frames, n_points=settings["gif_points"],
                                        frame_duration_s=settings["frame_duration_s"], dpi=settings["dpi"],
                                        title=f"{run_id}: gradient projections")


def write_timeline(settings: dict, *, metrics_path, curvature_paths, group_losses_path, group_pairs_path, summary_path,
                   out: dict, run_id: str) -> dict:
    """The run's timeline (gradscope.timeline.build): loss spikes, sharpness crossings of 2/lr (none where it does
    not apply), the top opposing pair's antiphase intervals and the generalization events, each spike linked to
    them against the same events shuffled in time. Its figure is `render_timeline` (rule plot_timeline), so that
    a plotting setting redraws it without writing these tables again.

    out: paths of events, links (tables) and summary (JSON)."""
    from gradscope import timeline

    settings = config.filled("timeline", settings)
    metrics, curvature = artifacts.read_parquet(metrics_path), read_curvature(curvature_paths)
    group_losses, group_pairs = artifacts.read_parquet(group_losses_path), artifacts.read_parquet(group_pairs_path)
    head = report.headline(metrics, artifacts.read_json(summary_path), curvature)
    events, links, summary = timeline.build(metrics, curvature, group_losses, group_pairs, head, settings)
    steps = {k: None if report.fmt(head.get(k)) == report.MISSING else head[k]  # NaN (never): null in the JSON
             for k in ("step_memorized", "step_generalized")}
    summary = {"run_id": run_id, "settings": settings, "edge_applies": head.get("sharpness_threshold") is not None,
               "sharpness_threshold": head.get("sharpness_threshold"), **steps, **summary}
    provenance = {"timeline": settings}
    artifacts.write_parquet(events, out["events"], TIMELINE_EVENTS, table="timeline_events", run_id=run_id,
                            config=provenance)
    artifacts.write_parquet(links, out["links"], TIMELINE_LINKS, table="timeline_links", run_id=run_id,
                            config=provenance)
    artifacts.write_json(summary, out["summary"])
    log.info("timeline: %d loss spikes, %d sharpness crossings, %d antiphase intervals; %s of the spikes near a "
             "crossing (%s expected), %s with antiphase (%s expected)", summary["n_spikes"], summary["n_crossings"],
             summary["n_antiphase"], report.fmt(summary["spikes_near_crossing_fraction"]),
             report.fmt(summary["spikes_near_crossing_expected"]), report.fmt(summary["spikes_with_antiphase_fraction"]),
             report.fmt(summary["spikes_with_antiphase_expected"]))
    return summary


def render_timeline(settings: dict, *, metrics_path, curvature_paths, events_path, summary_path, group_losses_path,
                    out, run_id: str):
    """The timeline figure (gradscope.timeline_plots) from the timeline stage's tables: settings is the plots block."""
    from gradscope import timeline, timeline_plots  # matplotlib loads only in the jobs that draw

    pair = artifacts.read_json(summary_path)["pair"]
    pair_losses = timeline.pair_losses(artifacts.read_parquet(group_losses_path), pair) if pair else None
    return timeline_plots.plot_timeline(artifacts.read_parquet(metrics_path), read_curvature(curvature_paths),
                                        artifacts.read_parquet(events_path), pair_losses, pair, out,
                                        title=f"{run_id}: timeline", dpi=config.filled("plots", settings)["dpi"])


def run_headline(*, metrics_path, summary_path, curvature_paths) -> dict:
    return report.headline(artifacts.read_parquet(metrics_path), artifacts.read_json(summary_path),
                           read_curvature(curvature_paths))


def write_run_report(*, run_id: str, config_path, metrics_path, summary_path, curvature_paths, figures: dict, out,
                     influence_path=None, progress_path=None, timeline_path=None) -> None:
    """figures: paths of training, flagged, curvature, gif (and timeline), made relative to the report's folder;
    influence_path: the influence summary, where the run computes one; progress_path: the progress
    table (gradscope.progress), where the run has one; timeline_path: the timeline summary (write_timeline)."""
    folder = Path(out).parent
    rel = {k: Path(v).relative_to(folder).as_posix() for k, v in figures.items() if v}
    head = run_headline(metrics_path=metrics_path, summary_path=summary_path, curvature_paths=curvature_paths)
    text = report.render_run_report(run_id, config_yaml=Path(config_path).read_text(), head=head,
                                    summary=artifacts.read_json(summary_path),
                                    curvature=read_curvature(curvature_paths), figures=rel,
                                    influence=artifacts.read_json(influence_path) if influence_path else None,
                                    progress=artifacts.read_parquet(progress_path) if progress_path else None,
                                    timeline=artifacts.read_json(timeline_path) if timeline_path else None)
    artifacts.write_text(text, out)


def write_sweep_report(experiment: str, runs: list[dict], *, metrics_paths, summary_paths, curvature_paths, plots_settings,
                       runs_path, detectors_path, comparison_png, sharpness_png, report_path,
                       timeline_paths=None, effects_path=None, effects_png=None) -> pd.DataFrame:
    """runs: [{id, name, varying}] in the order of metrics_paths/summary_paths (and timeline_paths: each run's
    timeline summary, whose report.TIMELINE_SWEEP figures become columns); curvature_paths: all runs' files."""
    from gradscope import plots  # matplotlib loads only in the jobs that draw

    rows, metrics_by_run, curvature_by_run, detector_rows = [], {}, {}, []
    timeline_paths = list(timeline_paths) if timeline_paths else [None] * len(runs)
    for run, metrics_path, summary_path, timeline_path in zip(runs, metrics_paths, summary_paths, timeline_paths):
        mine = run_files(curvature_paths, run["id"])
        metrics_by_run[run["name"]] = artifacts.read_parquet(metrics_path)
        curvature_by_run[run["name"]] = read_curvature(mine)
        head = run_headline(metrics_path=metrics_path, summary_path=summary_path, curvature_paths=mine)
        rows.append({"run_id": run["id"], "run": run["name"], **run["varying"],
                     **({"optimizer": run["optimizer"]} if "optimizer" in run else {}), **head,
                     **(report.timeline_figures(artifacts.read_json(timeline_path)) if timeline_path else {})})
        per_step = pd.DataFrame(artifacts.read_json(summary_path)["per_step"])
        detector_rows.append(report.detector_table(per_step).assign(run_id=run["id"], run=run["name"]))
    detectors = pd.concat(detector_rows, ignore_index=True)
    artifacts.write_parquet(detectors, detectors_path, None, table="sweep_detectors", run_id=experiment,
                            config={"experiment": experiment})
    table = sweep_table(rows, runs)
    artifacts.write_parquet(table, runs_path, None, table="sweep_runs", run_id=experiment,
                            config={"experiment": experiment, "runs": runs})
    plots.plot_sweep(metrics_by_run, comparison_png, title=f"{experiment}: accuracy of every run", dpi=plots_settings["dpi"])
    plots.plot_sweep_sharpness(curvature_by_run, metrics_by_run, sharpness_png, title=f"{experiment}: sharpness of every run",
                               dpi=plots_settings["dpi"])
    text = report.render_sweep_report(experiment, table, detectors, Path(comparison_png).name, Path(sharpness_png).name)
    if effects_path:  # an intervention experiment (rule interventions)
        text += "\n" + "\n\n".join(report.intervention_lines(artifacts.read_parquet(effects_path),
                                                                Path(effects_png).name)) + "\n"
    artifacts.write_text(text, report_path)
    return table


def write_interventions(experiment: str, runs: list[dict], *, metrics_paths, summary_paths, timeline_paths,
                        curvature_paths, examples_paths, plots_settings, runs_path, effects_path, effects_png) -> pd.DataFrame:
    """An intervention experiment's tables and figure (gradscope.interventions). runs: [{id, arm, detector, k, action,
    seed, test}] in the order of metrics_paths, summary_paths and timeline_paths (its runs, then the parent's with
    arm "parent"; `test` each run's test split); curvature_paths and examples_paths: every run's files. Worst-group
    test accuracy is read from each run's last examples table (its test rows' `correct`) and its test split's `group`."""
    from gradscope import interventions, intervention_plots

    rows = []
    tests = {}
    for run, metrics_path, summary_path, timeline_path in zip(runs, metrics_paths, summary_paths, timeline_paths):
        head = run_headline(metrics_path=metrics_path, summary_path=summary_path,
                            curvature_paths=run_files(curvature_paths, run["id"]))
        last = max(layout.partition_files(run_files(examples_paths, run["id"])), key=layout.step_of)
        if run["test"] not in tests:
            tests[run["test"]] = artifacts.read_parquet(run["test"])
        # the test rows' correctness only, not the per-example projections that make up most of the table
        groups = interventions.group_accuracy(artifacts.read_parquet(last, columns=["split", "example_id", "correct"]),
                                              tests[run["test"]])
        rows.append({k: run[k] for k in ("id", "arm", "detector", "k", "action", "seed")}
                    | interventions.run_row(head, artifacts.read_json(timeline_path), groups))
    table = pd.DataFrame(rows).rename(columns={"id": "run_id"})
    effects = interventions.effects(table)
    artifacts.write_parquet(table, runs_path, None, table="interventions", run_id=experiment,
                            config={"experiment": experiment, "runs": runs})
    artifacts.write_parquet(effects, effects_path, EFFECTS, table="effects", run_id=experiment,
                            config={"experiment": experiment, "confidence": interventions.CONFIDENCE})
    intervention_plots.plot_effects(effects, effects_png, title=f"{experiment}: effect of each intervention "
                                    "(flagged minus control)", dpi=plots_settings["dpi"])
    return effects
