"""The examples and signals stages over checkpoints, in memory, without Snakemake: `gradscope.analyze`,
for checkpoints a researcher already has and a notebook (the workflow runs the same stage functions,
`gradscope.pipeline`, one job each)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from gradscope import config, external, layout, opposing, pipeline, readers, scoring
from gradscope import data as gdata
from gradscope import signals as gsignals


def analyze(checkpoints, *, data, model: dict | None = None, loss: str = "cross_entropy", examples: dict | None = None,
            signals: dict | None = None, lr: float | dict | None = None, device: str = "auto") -> dict:
    """The per-example statistics and the detectors over checkpoints, in memory, without Snakemake.

    checkpoints: {step: file} or a list of files (step from each name, as for a checkpoint folder),
    gradscope's own or plain state_dicts (then `model`, the model section that rebuilds them, is
    needed). data: a data block. lr: the learning rate (one number, or {step: lr}) for the
    detectors that weight by it; 1 where not given. examples, signals: those sections' settings.
    device: as the config's ("auto": CUDA when present).
    Returns {"examples": the per-example table (both splits), "detections", "evaluation" (against
    the planted truth, where the data plants one), "groups", "group_pairs", "per_example"}."""
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
        table = readers.read_examples(parts)  # as the workflow's stages read them (the file's types)
    settings = config.filled("signals", signals)
    rates = None if lr is None else (pd.Series(lr) if isinstance(lr, dict) else pd.Series({min(checkpoints): float(lr)}))
    tr = gsignals.Trajectories.from_table(table, lr=rates)
    planted = (meta.get("planted") or {}).get("train_ids") or None
    detections = gsignals.detect(tr, settings)
    groups, pairs, _ = opposing.find_groups(tr, **settings["opposing_groups"])
    return {"examples": table, "detections": detections, "evaluation": scoring.evaluate(detections, planted),
            "groups": groups, "group_pairs": pairs, "per_example": gsignals.per_example(tr, planted)}
