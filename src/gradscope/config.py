"""Configuration: validation against the JSON Schema, defaults, and expansion into runs.

A config holds experiments; an experiment is base settings + a grid + seeds, and expands to
runs. Run ids are readable: the experiment, then the grid values and the seed,
e.g. `grokking/wd~1.0_seed~0`. A dataset id is the generator and a hash of the generator's
block alone, so runs that differ only in model or optimizer share one dataset.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import yaml

from gradscope import factories

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
SECTIONS = ("data", "model", "optim", "train", "examples", "signals", "curvature", "plots")
# Short names for grid keys in run ids; anything else uses the last component of the key.
ABBREVIATIONS = {
    "weight_decay": "wd",
    "momentum": "mom",
    "batch_size": "bs",
    "flip_fraction": "flip",
    "train_fraction": "frac",
    "warmup_steps": "warmup",
}


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the key, value and what is allowed."""


@dataclass(frozen=True)
class Run:
    experiment: str
    name: str  # e.g. "wd~1.0_seed~0"
    settings: dict  # the fully resolved run config: every section, seed, device
    varying: dict = field(default_factory=dict)  # grid values and seed, by short name

    @property
    def id(self) -> str:
        return f"{self.experiment}/{self.name}"


# ---- validation ---------------------------------------------------------------------------
_SCHEMAS: dict = {}  # parsed schema files by (path, mtime): a Snakefile loads the schema more than once


def _schema(path: str | Path | None = None) -> dict:
    """The parsed schema, read once per version of the file. Shared: callers must not modify it."""
    p = Path(path or SCHEMA_PATH)
    key = (str(p.resolve()), p.stat().st_mtime_ns)
    if key not in _SCHEMAS:
        _SCHEMAS[key] = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return _SCHEMAS[key]


def load_schema(path: str | Path | None = None) -> dict:
    return copy.deepcopy(_schema(path))


@functools.lru_cache(maxsize=None)
def _filling_validator_class():
    """Draft 2020-12 validation that also fills in each property's default where it is missing."""

    def properties_with_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema_)

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": properties_with_defaults})


def _validator(schema: dict, fill_defaults: bool):
    return (_filling_validator_class() if fill_defaults else jsonschema.Draft202012Validator)(schema)


def _describe(error: jsonschema.ValidationError, prefix: str) -> str:
    where = ".".join([prefix] + [str(p) for p in error.absolute_path] if prefix else [str(p) for p in error.absolute_path])
    where = where or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"unknown key(s) {', '.join(map(repr, unknown))} at {where}; allowed: {', '.join(allowed) or 'none'}"
    if error.validator == "propertyNames":
        return f"bad key at {where}: {error.message}"
    allowed = ""
    if error.validator == "enum":
        allowed = f"; allowed: {', '.join(map(repr, error.validator_value))}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    hint = f" ({description})" if description else ""
    return f"bad value at {where}: {error.message}{allowed}{hint}"


def validate(config: dict, schema: dict, *, prefix: str = "", fill_defaults: bool = True) -> dict:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError listing every problem."""
    return _check(_validator(schema, fill_defaults), config, prefix)


def _check(validator, config: dict, prefix: str = "") -> dict:
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid gradscope config:\n  " + "\n  ".join(_describe(e, prefix) for e in errors))
    return config


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


def load_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Validate a raw config (as Snakemake or YAML gives it) and return a resolved deep copy."""
    return load_runs(config, schema_path)[0]


def load_runs(config: dict, schema_path: str | Path | None = None) -> tuple[dict, list[Run]]:
    """`load_config` and `expand_runs` in one pass: the resolved config and its runs."""
    config = validate(_coerce_scalars(copy.deepcopy(dict(config))), _schema(schema_path))
    return config, expand_runs(config, schema_path)  # grid values are validated too, before any job starts


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


def expand_runs(config: dict, schema_path: str | Path | None = None) -> list[Run]:
    """All runs of all experiments, in config order; each run's settings validated on their own."""
    schema = _schema(schema_path)
    experiment = _validator({"$defs": schema["$defs"], **schema["$defs"]["experiment"]}, True)
    runs = []
    for exp_name, exp in config["experiments"].items():
        grid = exp.get("grid", {})
        keys = list(grid)
        short = _short_names(keys)
        base = {s: exp[s] for s in SECTIONS if s in exp}
        for values in itertools.product(*(grid[k] for k in keys)):
            for seed in exp.get("seeds", [0]):
                settings = copy.deepcopy(base)
                for k, v in zip(keys, values):
                    _set_dotted(settings, k, v)
                varying = {short[k]: v for k, v in zip(keys, values)}
                name = "_".join([f"{short[k]}~{_format_value(v)}" for k, v in zip(keys, values)] + [f"seed~{seed}"])
                _check(experiment, settings, prefix=f"experiments.{exp_name} (run {name})")
                _check_factories(settings, prefix=f"experiments.{exp_name} (run {name})")
                settings.update(experiment=exp_name, run=name, seed=seed, device=config.get("device", "auto"))
                runs.append(Run(exp_name, name, _sorted(settings), {**varying, "seed": seed}))
    return runs


def _check_factories(settings: dict, prefix: str) -> None:
    """Every "module:function" the run names (its model's, its data source's) must import now,
    not when its job starts."""
    model, data = settings.get("model", {}), settings.get("data", {})
    named = []
    if model.get("kind") == "python":
        named.append(("model.factory", model.get("factory")))
    if data.get("generator") == "python":  # imported now, called by generate_data
        named.append(("data.python.factory", data["python"].get("factory")))
    for key, value in named:
        try:
            factories.resolve(value, key=f"{prefix}.{key}")
        except factories.FactoryError as e:
            raise ConfigError(f"invalid gradscope config:\n  {e}") from None


# ---- slices of a run's settings, one per stage ------------------------------------------
def data_slice(settings: dict) -> dict:
    """The generator and its own block: all that decides a dataset."""
    gen = settings["data"]["generator"]
    return {"generator": gen, gen: settings["data"][gen]}


def dataset_id(settings: dict) -> str:
    d = data_slice(settings)
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{d['generator']}-{digest}"


def train_slice(settings: dict) -> dict:
    """Everything training depends on (and nothing it does not, so plots never retrain)."""
    keys = ("model", "optim", "train", "seed", "device")
    return {"data": data_slice(settings), **{k: settings[k] for k in keys}}


def checkpoint_steps(train: dict) -> list[int]:
    """Checkpoint steps from the train block: always includes 0 and the last step."""
    steps, rule = int(train["steps"]), train.get("checkpoints", {"log_spaced": 10})
    if "every" in rule:
        chosen = set(range(0, steps + 1, int(rule["every"])))
    elif "at" in rule:
        chosen = {int(s) for s in rule["at"] if 0 <= int(s) <= steps}
    else:
        chosen = set(np.unique(np.round(np.geomspace(1, steps, int(rule["log_spaced"]) - 1)).astype(int)).tolist())
    return sorted(chosen | {0, steps})
