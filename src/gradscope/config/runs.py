"""Expansion into runs: loading a config (`load_config`, `load_runs`), an experiment's grid and seeds
as runs (`expand_runs`), an experiment with a `source` (recorded runs or checkpoints) and one with
an `intervene` block, and the run names."""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradscope.config.checks import CROSS_CHECKS, _check_checkpoints, _check_factories, train_size
from gradscope.config.schedule import checkpoint_steps
from gradscope.config.validation import (SECTIONS, ConfigError, _check, _dropped, _schema, _validator, applicable,
                                         validate)

# Short names for grid keys in run ids; anything else uses the last component of the key.
ABBREVIATIONS = {
    "weight_decay": "wd",
    "momentum": "mom",
    "batch_size": "bs",
    "flip_fraction": "flip",
    "train_fraction": "frac",
    "warmup_steps": "warmup",
}


@dataclass(frozen=True)
class Run:
    experiment: str
    name: str  # e.g. "wd~1.0_seed~0"
    settings: dict  # the fully resolved run config: every section, seed, device
    varying: dict = field(default_factory=dict)  # grid values and seed, by short name
    # A run gradscope did not train (an experiment's `source`): {step: checkpoint file}; empty for a trained run.
    checkpoints: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.experiment}/{self.name}"


def _coerce_scalars(value):
    """Numbers, booleans and nulls given as text become values: `snakemake --config` passes nested
    values as strings (e.g. experiments="{g: {optim: {lr: 0.02}}}" gives lr "0.02"). No schema
    field takes numeric-looking text, so this never changes a real string."""
    if isinstance(value, dict):
        return {k: _coerce_scalars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_scalars(v) for v in value]
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "none", "~"):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def load_config(config: dict, schema_path: str | Path | None = None, *, check_device: bool = False) -> dict:
    """Validate a raw config (as Snakemake or YAML gives it) and return a resolved deep copy."""
    return load_runs(config, schema_path, check_device=check_device, preflight=False)[0]


def load_runs(config: dict, schema_path: str | Path | None = None, *, check_device: bool = False,
              preflight: bool = True, build_models: bool = True) -> tuple[dict, list[Run]]:
    """`load_config` and `expand_runs` in one pass: the resolved config and its runs.

    check_device: also check that `device: cuda` has a CUDA device here (where the jobs run;
    off on a cluster's login node, whose jobs run elsewhere).
    preflight: also check each run's cost against `limits` and (build_models) its model on one
    example of its data (`gradscope.preflight`), so `gradscope validate` and the workflow's start
    refuse what no job could do."""
    given = _coerce_scalars(copy.deepcopy(dict(config)))
    config = validate(copy.deepcopy(given), _schema(schema_path))
    config.pop("extend_experiments", None)  # a directive of one config file (see `compose`), not a setting
    if check_device:
        require_device(config.get("device", "auto"))
    runs = expand_runs(config, schema_path, given=given)  # grid values are validated too, before any job starts
    if preflight:
        from gradscope import preflight as checks

        checks.check(config, runs, build_models=build_models)
    return config, runs


def require_device(device: str) -> None:
    """A ConfigError for `device: cuda` where torch sees no CUDA device."""
    if device != "cuda":
        return
    import torch  # only here: validating a CPU config does not load torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, " + ("built with CUDA " + torch.version.cuda if torch.version.cuda
                                                 else "a CPU-only build")
        raise ConfigError(f"invalid gradscope config:\n  bad value at device: 'cuda', but torch sees no CUDA device "
                          f"here ({build}); allowed here: 'auto' (CUDA when present, else CPU) or 'cpu'")


# ---- runs ---------------------------------------------------------------------------------
def _format_value(v) -> str:
    text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return re.sub(r"[^\w.,+-]", "-", text)


def _short_names(keys: list[str]) -> dict[str, str]:
    short = {k: ABBREVIATIONS.get(k.split(".")[-1], k.split(".")[-1]) for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def _set_dotted(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = copy.deepcopy(value)


def _sorted(value):
    """Dicts with keys in sorted order, recursively. Rule params are compared by repr, so key
    order must not depend on how the config file happened to be written."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def expand_runs(config: dict, schema_path: str | Path | None = None, *, given: dict | None = None) -> list[Run]:
    """All runs of all experiments, in config order; each run's settings validated on their own.

    given: the config as written, before defaults were filled in: a key it sets that applies to
    none of an experiment's runs (momentum under adam, a width for a transformer) is an error."""
    schema = _schema(schema_path)
    experiment = _validator({"$defs": schema["$defs"], **schema["$defs"]["experiment"]}, True)
    runs, problems = [], []
    for exp_name, exp in config["experiments"].items():
        if exp.get("intervene") is not None:  # after the parents' runs are known (below)
            continue
        if exp.get("source") is not None:
            written = (given or config)["experiments"][exp_name]
            found, trouble = _external_runs(exp_name, exp, written, config.get("device", "auto"), experiment)
            runs += found
            problems += trouble
            continue
        grid = exp.get("grid", {})
        keys = list(grid)
        short = _short_names(keys)
        repeated = _repeated_grid_values(grid, prefix=f"experiments.{exp_name}.grid")
        if repeated:
            problems += repeated
            continue
        base = {s: exp[s] for s in SECTIONS if s in exp}
        found, n_runs = {}, len(exp.get("seeds", [0])) * int(np.prod([len(grid[k]) for k in keys]))
        unused = None  # keys the experiment sets that apply to none of its runs
        for values in itertools.product(*(grid[k] for k in keys)):
            for seed in exp.get("seeds", [0]):
                settings = copy.deepcopy(base)
                for k, v in zip(keys, values):
                    _set_dotted(settings, k, v)
                varying = {short[k]: v for k, v in zip(keys, values)}
                name = "_".join([f"{short[k]}~{_format_value(v)}" for k, v in zip(keys, values)] + [f"seed~{seed}"])
                if given is not None:
                    written = {s: copy.deepcopy(given["experiments"][exp_name][s]) for s in SECTIONS
                               if s in given["experiments"][exp_name]}
                    for k, v in zip(keys, values):
                        _set_dotted(written, k, v)
                    dropped = _dropped(written, applicable(written))
                    unused = dropped if unused is None else {k: v for k, v in unused.items() if k in dropped}
                _check(experiment, settings, prefix=f"experiments.{exp_name} (run {name})")
                _check_factories(settings, prefix=f"experiments.{exp_name} (run {name})")
                for check in CROSS_CHECKS:
                    for key, text in check(settings):
                        found.setdefault(f"bad value at experiments.{exp_name}.{key}: {text}", []).append(name)
                settings.update(experiment=exp_name, run=name, seed=seed, device=config.get("device", "auto"))
                runs.append(Run(exp_name, name, _sorted(settings), {**varying, "seed": seed}))
        problems += [text + ("" if len(names) == n_runs else f" (run{'s' * (len(names) > 1)} {', '.join(names)})")
                     for text, names in found.items()]
        problems += [f"bad key at experiments.{exp_name}.{key}: {value!r} is set but applies to none of the experiment's "
                     f"runs ({why})" for key, (value, why) in sorted((unused or {}).items())]
    for exp_name, exp in config["experiments"].items():
        if exp.get("intervene") is not None:
            found, trouble = _intervention_runs(exp_name, exp, (given or {}).get("experiments", {}).get(exp_name),
                                                config["experiments"], runs, config.get("device", "auto"), experiment)
            runs += found
            problems += trouble
    order = list(config["experiments"])
    runs.sort(key=lambda r: order.index(r.experiment))  # config order (sorted() is stable within an experiment)
    names = [r.id for r in runs]
    problems += [f"run id {i!r} comes from two different grid points (their values print alike); make the values "
                 "distinct as text" for i in sorted({i for i in names if names.count(i) > 1})]
    if problems:
        raise ConfigError("invalid gradscope config:\n  " + "\n  ".join(problems))
    return runs


def _external_runs(exp_name: str, exp: dict, written: dict, device: str, validator) -> tuple[list[Run], list[str]]:
    """The runs of an experiment whose `source` names recorded runs or a folder of checkpoints
    (gradscope.external), and the problems found; nothing is trained for them."""
    from gradscope import external

    prefix = f"experiments.{exp_name}"
    source = exp["source"]
    try:
        kind = external.kind(source)
    except external.SourceError as e:
        return [], [f"bad value at {prefix}.source: {e}"]
    unused = [k for k in ("grid", "seeds") if k in written]
    if kind == "recorded":
        unused += [k for k in external.TRAINING if k in written]
    if kind == "recorded" and "glob" in (written.get("source") or {}):
        unused.append("source.glob")
    if unused:
        why = "a recorded run's config.yaml gives them" if kind == "recorded" else "the runs are given, not swept"
        return [], [f"bad key at {prefix}.{k}: set, but the experiment's source is {kind} ({why}); remove it"
                    for k in unused]
    runs, problems = [], []
    paths = source["recorded"] if kind == "recorded" else [source["checkpoints"]]
    for path in [paths] if isinstance(paths, str) else paths:
        key = f"{prefix}.source.{kind}"
        try:
            if kind == "recorded":
                recorded = external.recorded_settings(path, key)
                files = external.recorded_checkpoints(path)
                seed = recorded.pop("seed")
                settings = {**copy.deepcopy({s: exp[s] for s in SECTIONS if s in exp}), **recorded}
            else:
                files = external.discover(path, source["glob"], key)
                settings = copy.deepcopy({s: exp[s] for s in SECTIONS if s in exp})
                if max(files) < 1:
                    raise external.SourceError(f"{key}: {path} holds a checkpoint at step 0 only; a run needs a later one")
                settings["train"]["steps"] = max(files)  # the run's length is its last checkpoint's step
                seed = 0
        except external.SourceError as e:
            problems.append(f"bad value at {e}")
            continue
        name = external.run_name(path)
        settings["source"] = {kind: Path(path).as_posix(), **({"glob": source["glob"]} if kind == "checkpoints" else {})}
        try:
            _check(validator, settings, prefix=f"{prefix} (run {name})")
            _check_factories(settings, prefix=f"{prefix} (run {name})")
        except ConfigError as e:
            problems.append(str(e).split("\n", 1)[-1].strip())
            continue
        problems += [f"bad value at {prefix}.{key}: {text}" for check in CROSS_CHECKS if check is not _check_checkpoints
                     for key, text in check(settings)]
        settings.update(experiment=exp_name, run=name, seed=seed, device=device)
        runs.append(Run(exp_name, name, _sorted(settings), {"seed": seed}, checkpoints=files))
    return runs, problems


# What an intervention experiment may set besides `intervene` (the rest is its parent's).
INTERVENTION_KEYS = ("intervene", "grid", "seeds")


def _intervention_runs(exp_name: str, exp: dict, written: dict | None, experiments: dict, runs: list[Run], device: str,
                       validator) -> tuple[list[Run], list[str]]:
    """The runs of an experiment with an `intervene` block (gradscope.interventions): per grid point
    (over intervene.<key> only) and seed, a `flagged` and a `control` arm, each with the settings of the
    parent's run of that seed and `intervene` resolved: its parent run, arm and checkpoint step."""
    from gradscope import interventions

    prefix = f"experiments.{exp_name}"
    block = exp["intervene"]
    parent = block["parent"]
    written = written if written is not None else {k: exp[k] for k in INTERVENTION_KEYS if k in exp}
    problems = [f"bad key at {prefix}.{k}: set, but an intervention retrains with its parent's settings "
                f"({prefix}.intervene.parent: {parent!r}); allowed here: {', '.join(INTERVENTION_KEYS)}"
                for k in written if k not in INTERVENTION_KEYS]
    grid = exp.get("grid", {})
    problems += [f"bad key at {prefix}.grid.{k}: an intervention sweeps intervene.<key> only (its other settings "
                 "are its parent's)" for k in grid if not k.startswith("intervene.")]
    own = experiments.get(parent)
    if own is None or own.get("intervene") is not None or own.get("source") is not None:
        trained = [n for n, e in experiments.items() if e.get("intervene") is None and e.get("source") is None]
        why = ("is itself an intervention" if own is not None and own.get("intervene") is not None else
               "has a source (gradscope did not train it)" if own is not None else "is not an experiment of this config")
        return [], problems + [f"bad value at {prefix}.intervene.parent: {parent!r} {why}; allowed: "
                               f"{', '.join(map(repr, trained)) or 'none (define the parent experiment)'}"]
    if own.get("grid"):
        return [], problems + [f"bad value at {prefix}.intervene.parent: {parent!r} has a grid "
                               f"({', '.join(own['grid'])}); a parent has one run per seed: make an experiment "
                               "with the grid point you want to intervene on"]
    parents = {r.settings["seed"]: r for r in runs if r.experiment == parent}
    seeds = written.get("seeds", sorted(parents))
    problems += [f"bad value at {prefix}.seeds: seed {s} has no run in the parent {parent!r} (its seeds: "
                 f"{sorted(parents)})" for s in seeds if s not in parents]
    if problems or not parents:
        return [], problems
    keys = list(grid)
    short = _short_names(keys)
    problems += _repeated_grid_values(grid, prefix=f"{prefix}.grid")
    found, out = {}, []
    for values in itertools.product(*(grid[k] for k in keys)):
        for seed in seeds:
            source = parents[seed]
            settings = {k: copy.deepcopy(v) for k, v in source.settings.items()
                        if k in SECTIONS}
            settings["intervene"] = copy.deepcopy(block)
            for k, v in zip(keys, values):
                _set_dotted(settings, k, v)
            point = "_".join(f"{short[k]}~{_format_value(v)}" for k, v in zip(keys, values))
            _check(validator, settings, prefix=f"{prefix} (grid point {point or 'the only one'})")
            chosen = settings["intervene"]
            steps = run_steps(source)
            step = steps[-1] if chosen["step"] == "last" else chosen["step"]
            if step not in steps:
                found.setdefault(f"bad value at {prefix}.intervene.step: {chosen['step']!r} is not a checkpoint "
                                 f"step of {source.id} (its steps: {_spans_text(steps)})", None)
            method = "loss_trajectory" if chosen["detector"].startswith("loss_") else chosen["detector"]  # (its three scores)
            if method not in source.settings["signals"]["detectors"]:
                found.setdefault(f"bad value at {prefix}.intervene.detector: {chosen['detector']!r} is not run by "
                                 f"the parent (its signals.detectors: {', '.join(source.settings['signals']['detectors'])})",
                                 None)
            n = train_size(source.settings["data"])
            if n is not None and chosen["k"] >= n:
                found.setdefault(f"bad value at {prefix}.intervene.k: {chosen['k']} is not below the parent's "
                                 f"{n} training examples", None)
            for arm in interventions.ARMS:
                name = "_".join(p for p in (point, f"arm~{arm}", f"seed~{seed}") if p)
                run_settings = copy.deepcopy(settings)
                run_settings["intervene"].update(step=step, arm=arm, parent_run=source.id)
                run_settings.update(experiment=exp_name, run=name, seed=seed, device=device)
                varying = {**{short[k]: v for k, v in zip(keys, values)}, "arm": arm, "seed": seed}
                out.append(Run(exp_name, name, _sorted(run_settings), varying))
    return out, problems + list(found)


def _spans_text(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else f"{', '.join(map(str, steps[:6]))}, ..., {steps[-1]}"


def run_steps(run: Run) -> list[int]:
    """The checkpoint steps of a run: its schedule, or the checkpoints its source holds."""
    return sorted(run.checkpoints) if run.checkpoints else checkpoint_steps(run.settings["train"])


def _repeated_grid_values(grid: dict, prefix: str) -> list[str]:
    """A value listed twice in one grid key would list its runs twice."""
    out = []
    for key, values in grid.items():
        texts = [json.dumps(v, sort_keys=True) for v in values]
        for text in dict.fromkeys(t for t in texts if texts.count(t) > 1):
            out.append(f"bad value at {prefix}.{key}: {json.loads(text)!r} is listed {texts.count(text)} times in "
                       f"{values!r}; allowed: distinct values (each gives its own runs)")
    return out
