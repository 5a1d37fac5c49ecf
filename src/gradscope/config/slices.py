"""Slices of a run's settings, one per stage: what decides its dataset (`data_slice`, `dataset_id`),
its training (`train_slice`), and what its resolved config.yaml holds (`run_config`)."""

from __future__ import annotations

import hashlib
import json

from gradscope.config.validation import applicable

ADDED_LATER = ("spurious", "noise", "planted_ids", "planted_key")  # source keys whose null leaves the id as it was


# ---- slices of a run's settings, one per stage ------------------------------------------
def data_slice(settings: dict) -> dict:
    """The generator and its own block: all that decides a dataset. An intervention's run adds what
    derives its training set from its parent's (`intervention_slice`)."""
    gen = settings["data"]["generator"]
    block = settings["data"][gen]
    if isinstance(block, dict):  # keys added later, when null: a dataset without them keeps its id
        block = {k: v for k, v in block.items() if not (k in ADDED_LATER and v is None)}
    out = {"generator": gen, gen: block}
    if settings.get("intervene"):
        out["intervene"] = intervention_slice(settings)
    return out


def intervention_slice(settings: dict) -> dict:
    """What decides an intervention run's training set (gradscope.interventions): its parent run, the
    detector and checkpoint step whose scores rank the examples, k, the action (and its weight), the
    arm, and the seed (the control's draw)."""
    i = settings["intervene"]
    keys = ("parent_run", "detector", "step", "k", "action", "arm") + (("weight",) if i["action"] == "downweight" else ())
    return {**{k: i[k] for k in keys}, "seed": settings["seed"]}


def dataset_id(settings: dict) -> str:
    d = data_slice(settings)
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{d['generator']}-{'derived-' if 'intervene' in d else ''}{digest}"


def run_config(settings: dict) -> dict:
    """What a run's config.yaml holds: the settings that apply to the run (`applicable`) and the id
    of its dataset (the folder results/data/<id>/ it was trained and analyzed on)."""
    return {**applicable(settings), "dataset": {"id": dataset_id(settings)}}


def train_slice(settings: dict) -> dict:
    """Everything training depends on (and nothing it does not, so plots never retrain)."""
    keys = ("model", "optim", "train", "seed", "device")
    return {"data": data_slice(settings), **{k: settings[k] for k in keys}}
