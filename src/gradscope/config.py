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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import yaml

from gradscope import factories

# Package data (pyproject.toml), so an installed gradscope fills settings as a clone does.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
SECTIONS = ("data", "model", "optim", "train", "examples", "signals", "curvature", "influence", "progress", "plots",
            "timeline")
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
    # A run gradscope did not train (an experiment's `source`): {step: checkpoint file}; empty for a trained run.
    checkpoints: dict = field(default_factory=dict)

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
    if error.validator in ("minItems", "minProperties"):
        allowed = f"; allowed: at least {error.validator_value} entr{'y' if error.validator_value == 1 else 'ies'}"
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


# ---- one section's settings for library callers -----------------------------------------
def section(name: str, given: dict | None = None, **overrides) -> dict:
    """One config section (`model`, `train`, `curvature`, ...) as the workflow would resolve it:
    `given` and `overrides` over the schema's defaults, validated. The schema is the one place a
    default lives; library functions that take a section fill it here, so a notebook gets the
    same model and estimators as the workflow. A bad key or value raises ConfigError naming it."""
    schema = _schema()
    if name not in schema["$defs"]["experiment"]["properties"] or name in ("grid", "seeds"):
        raise ValueError(f"unknown config section {name!r}; allowed: {', '.join(SECTIONS)}")
    value = copy.deepcopy(dict(given or {}))
    value.update(overrides)
    sub = {"$defs": schema["$defs"], **schema["$defs"][name]}
    return validate(value, sub, prefix=name)


def section_defaults(name: str) -> dict:
    """The schema's defaults of one section (the model's are those of an MLP)."""
    return section(name)


_DEFAULT_KEYS: dict = {}  # section -> its defaults, for `filled`'s check (read once: a job's schema does not change)


def filled(name: str, given: dict | None) -> dict:
    """`section(name, given)`, or `given` itself where it already holds every setting that has a
    default (a section the workflow resolved): for library functions called in a loop, which
    should not validate their section again at every call."""
    if name not in _DEFAULT_KEYS:
        _DEFAULT_KEYS[name] = section_defaults(name)
    if isinstance(given, dict) and _holds_all(given, _DEFAULT_KEYS[name]):
        return given
    return section(name, given)


def _holds_all(given: dict, defaults: dict) -> bool:
    return all(k in given and (not (isinstance(v, dict) and v) or isinstance(given[k], dict) and _holds_all(given[k], v))
               for k, v in defaults.items())


# ---- what applies to a run: the resolved config a reader is shown --------------------------
# An object in the schema whose keys depend on one of its own keys names that key in
# `x-selector` (model: kind; optim: name; optim.schedule: kind; data: generator), and each of
# its other keys says in `x-when` for which values of it the key applies: a list, or `all`.
# tests/test_defaults.py fails for a key of such an object that has no `x-when`.
def applicable(settings: dict) -> dict:
    """A copy of a run's settings (or of any part of them that has the experiment's sections)
    holding only what applies to the run: the chosen data generator's block, the model keys of
    its kind, the optimizer keys of its optimizer and the schedule keys of its schedule.

    For reading only: the resolved config.yaml of a run and `gradscope show`. The jobs, run
    ids, dataset ids and what reruns depend on the full settings; `section` (or `validate`)
    fills a trimmed section back to them, each dropped key at its default."""
    schema = _schema()
    sections = schema["$defs"]["experiment"]["properties"]
    return {k: _applicable(v, sections[k], schema) if k in SECTIONS else copy.deepcopy(v) for k, v in settings.items()}


def _dropped(given, kept, prefix: str = "", node: dict | None = None) -> dict[str, tuple]:
    """{dotted key: (value, why)} of what `applicable` left out of `given`: the keys a config sets that
    its run does not use (an optimizer's key under another optimizer, another model kind's key ...)."""
    schema = _schema()
    out = {}
    for key, value in given.items():
        path = f"{prefix}{key}"
        sub = _resolved((node or {}).get("properties", {}).get(key, {}), schema) if node is not None else \
            _resolved(schema["$defs"]["experiment"]["properties"].get(key, {}), schema)
        if key not in kept:
            parent = node or {}
            selector = parent.get("x-selector")
            chosen = given.get(selector, parent.get("properties", {}).get(selector, {}).get("default"))
            when = sub.get("x-when")
            if when is None and selector == "generator":  # a data generator's block
                when = [key]
            why = f"{prefix}{selector} is {chosen!r}; it applies to {selector} " + ", ".join(map(repr, when or []))
            out[path] = (value, why)
        elif isinstance(value, dict) and isinstance(kept.get(key), dict) and "properties" in sub:
            out.update(_dropped(value, kept[key], path + ".", sub))
    return out


def _resolved(node: dict, schema: dict) -> dict:
    while "$ref" in node:  # only local references, "#/$defs/NAME"
        node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _applicable(value, node: dict, schema: dict):
    node = _resolved(node, schema)
    properties = node.get("properties")
    if not isinstance(value, dict) or not isinstance(properties, dict):
        return copy.deepcopy(value)
    selector = node.get("x-selector")
    chosen = value.get(selector, properties.get(selector, {}).get("default")) if selector else None
    out = {}
    for key, sub in value.items():
        when = properties.get(key, {}).get("x-when", "all")
        if selector and key != selector and when != "all" and chosen not in when:
            continue
        out[key] = _applicable(sub, properties[key], schema) if key in properties else copy.deepcopy(sub)
    return out


# ---- config files: reading them, and how several combine ----------------------------------
DEFAULT_CONFIG = Path("config") / "config.yaml"  # the Snakefile's `configfile:`, relative to the working directory


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last silently)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice in one mapping (first on line {seen[key] + 1}); "
                            "YAML would keep only the last", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_config_file(path: str | Path) -> dict:
    """A YAML (or JSON) config file as a dict; a ConfigError names the file, and the line and
    column of a syntax error, for anything else (a missing, binary, empty or non-mapping file).

    It refuses exactly what Snakemake refuses in a --configfile (and more: a key given twice):
    an empty file, or one of comments only, is refused as Snakemake refuses it ("Config file
    must be given as JSON or YAML with keys at top level", naming no file); `{}` is a config."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read this config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}, line {line}, column {column}: not a text file (byte {raw[e.start]:#04x} is not "
                          "UTF-8); a config is a YAML or JSON file") from None
    if "\x00" in text:
        at = text.index("\x00")
        line, column = text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
        raise ConfigError(f"{path}, line {line}, column {column}: not a text file (a NUL byte); a config is a YAML or "
                          "JSON file") from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(str(m) for m in (e.context, e.problem) if m)
        raise ConfigError(f"{path}{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if value is None:
        what = "is empty" if not text.strip() else "holds no keys (only comments, or null)"
        raise ConfigError(f"{path}: this config file {what}; a config is a mapping of keys (experiments, device, ...), "
                          "as Snakemake requires (write {} for a file that sets nothing)")
    if not isinstance(value, dict):
        kind = {str: "text", list: "a list"}.get(type(value), type(value).__name__)
        raise ConfigError(f"{path}, line 1, column 1: a config is a mapping of keys (experiments, device, ...), but this "
                          f"file holds {kind}: {str(value)[:60]!r}")
    return value


def check_config_file(path: str | Path) -> None:
    """Raise the ConfigError of `read_config_file` for a file that exists but does not read as a
    config (the Snakefile calls it before its `configfile:`, whose own message names no line)."""
    if Path(path).exists():
        read_config_file(path)


def compose(default: dict | None, files: list[dict] = (), overrides: dict | None = None) -> dict:
    """The config Snakemake runs: the default config file, then each `--configfile`, then `--config`.

    The rule (docs/configuration.md): experiments are whole units, never merged key by key.
    A config file that has `experiments` replaces every experiment before it, unless it sets
    `extend_experiments: true`: then its experiments are added, each replacing a same-named
    one whole. A file's other top-level keys (device, cluster, ...) replace those before it,
    mappings key by key. `--config KEY=VALUE` overrides come last and are merged key by key
    into what is there (so `--config 'experiments={g: {train: {steps: 50}}}'` changes one value
    of experiment g).
    """
    result = copy.deepcopy(dict(default or {}))
    result.pop("extend_experiments", None)
    for raw in files:
        raw = copy.deepcopy(dict(raw))
        extend = raw.pop("extend_experiments", False)
        if "experiments" in raw:
            experiments = raw.pop("experiments")
            if extend is True and isinstance(experiments, dict) and isinstance(result.get("experiments"), dict):
                result["experiments"] = {**result["experiments"], **experiments}
            else:
                result["experiments"] = experiments
        if extend not in (True, False):  # left for the schema to name: it allows true or false
            result["extend_experiments"] = extend
        _merge(result, raw)
    _merge(result, copy.deepcopy(dict(overrides or {})))
    return result


def _merge(into: dict, update: dict) -> None:
    """Snakemake's update_config: mappings merged key by key, anything else replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def load_config_files(files, *, default: str | Path | None = DEFAULT_CONFIG, overrides: dict | None = None,
                      replace_workflow_config: bool = False) -> dict:
    """`compose` of config files by path: what `snakemake --configfile FILE...` runs from the
    working directory, as the workflow composes it (`_composed_config` in workflow/rules/common.smk).
    default: the workflow's own config file (skipped where it does not exist, as Snakemake does
    when config files are given, and where it is one of `files`: read once, in its place among
    them); None for none. overrides: `--config`, as `snakemake.cli.parse_config` parses it.
    replace_workflow_config: Snakemake's --replace-workflow-config (the default is not read).
    A file that does not read as a config raises a ConfigError naming it."""
    given = [Path(f).absolute() for f in files]
    own = default is not None and not replace_workflow_config and Path(default).exists() \
        and Path(default).absolute() not in given
    return compose({}, [read_config_file(f) for f in [default] * own + list(files)], overrides)


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
            if chosen["detector"] not in source.settings["signals"]["detectors"]:
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


# ---- checks across keys: what the schema alone cannot say ---------------------------------
# Each check takes one run's settings (defaults filled in) and returns (key, message) pairs,
# the key dotted from the experiment; expand_runs reports them all at once. A new section's
# cross-field rules are one more function in CROSS_CHECKS.
def train_size(data: dict) -> int | None:
    """Training examples of a data block, where the settings alone decide it (else None)."""
    gen = data["generator"]
    block = data.get(gen, {})
    if gen in ("planted_flips", "opposing_features"):
        return int(block["n_train"])
    if gen == "modular":
        pairs = block["p"] * (block["p"] - 1 if block["op"] == "div" else block["p"])
        return int(round(block["train_fraction"] * pairs))
    if gen == "digits":
        return int(round(block["train_fraction"] * 1797))
    return block.get("subsample_train")  # the labelled sources: known only when subsampled


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def _check_checkpoints(s: dict) -> list:
    steps, rule = s["train"]["steps"], s["train"]["checkpoints"]
    beyond = sorted({v for v in rule.get("at", []) if v > steps})
    return [("train.checkpoints.at", f"step(s) {', '.join(map(str, beyond))} beyond train.steps = {steps} would be "
                                     f"dropped; allowed: steps 0..{steps}")] if beyond else []


def _check_opposing_groups(s: dict) -> list:
    out, groups, n = [], s["signals"]["opposing_groups"], train_size(s["data"])
    if "opposing_groups" not in s["signals"]["detectors"]:
        return out
    if n is not None and groups["top_k"] > n:
        out.append(("signals.opposing_groups.top_k", f"{groups['top_k']} is more than the {n} training examples (it "
                                                      f"would flag every one); allowed: 1..{n}"))
    if groups["n_groups"] > groups["top_k"]:
        out.append(("signals.opposing_groups.n_groups", f"{groups['n_groups']} groups of top_k = {groups['top_k']} "
                                                         f"examples would be groups of one; allowed: 2..{groups['top_k']}"
                                                         " (at most top_k)"))
    return out


def _check_detectors(s: dict) -> list:
    if s["signals"]["detectors"]:
        return []
    known = _schema()["$defs"]["signals"]["properties"]["detectors"]["items"]["enum"]
    return [("signals.detectors", f"[] runs no detector; allowed: one or more of {', '.join(known)}")]


def _check_curvature(s: dict) -> list:
    # subset_size above the training set is not checked: the subset is then the whole set (its
    # ids are in each curvature table's metadata), what a default of 512 should mean on small data.
    c = s["curvature"]
    if c["top_k"] > c["lanczos_iters"]:
        return [("curvature.top_k", f"{c['top_k']} eigenvalues need at least as many Lanczos steps, but "
                                    f"curvature.lanczos_iters = {c['lanczos_iters']}; allowed: top_k <= lanczos_iters")]
    return []


def _check_optim(s: dict) -> list:
    o = s["optim"]
    if o["nesterov"] and (o["name"] != "sgd" or o["momentum"] <= 0):
        why = (f"optim.name is {o['name']!r}" if o["name"] != "sgd" else f"optim.momentum is {o['momentum']}")
        return [("optim.nesterov", f"true needs optim.name 'sgd' with optim.momentum > 0, but {why}; allowed: "
                                   "false, or a momentum in (0, 1]")]
    return []


def _check_data(s: dict) -> list:
    d = s["data"]
    if d["generator"] == "modular" and d["modular"]["op"] == "div" and not _is_prime(d["modular"]["p"]):
        return [("data.modular.p", f"{d['modular']['p']} is not prime, and op 'div' needs a prime modulus (every b "
                                   "must have an inverse); allowed: a prime p, or op add, sub or mul")]
    block = d.get(d["generator"], {})
    if block.get("spurious") is not None and block.get("label_noise", 0) > 0:  # the labelled sources
        key = f"data.{d['generator']}"
        return [(f"{key}.label_noise", f"{block['label_noise']} together with {key}.spurious: both would plant the "
                                       "ground truth (the flipped labels, the conflicting group); allowed: label_noise 0 "
                                       "with a spurious feature, or spurious null")]
    return []


CROSS_CHECKS = [_check_data, _check_optim, _check_checkpoints, _check_detectors, _check_opposing_groups,
                _check_curvature]


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
    """The generator and its own block: all that decides a dataset. An intervention's run adds what
    derives its training set from its parent's (`intervention_slice`)."""
    gen = settings["data"]["generator"]
    block = settings["data"][gen]
    if isinstance(block, dict) and block.get("spurious", 0) is None:  # (added later: a dataset without one keeps its id)
        block = {k: v for k, v in block.items() if k != "spurious"}
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


# The most checkpoints a run may have whatever its limits say (the schema's maximum of
# limits.max_checkpoints): checkpoint_steps refuses more before it builds any list.
MAX_CHECKPOINTS = 100_000


def _dense(train: dict) -> tuple[int, int, int] | None:
    """The dense window of train.checkpoints (dense: {from, to, every}) clipped to 0..train.steps,
    as (first, last, every) of the arithmetic progression first, first + every, ... <= last; None
    without one or where it holds no step."""
    dense, steps = train.get("checkpoints", {}).get("dense"), int(train["steps"])
    if not dense:
        return None
    first, last, every = max(int(dense["from"]), 0), min(int(dense["to"]), steps), int(dense["every"])
    return (first, first + (last - first) // every * every, every) if last >= first else None


def _main_rule(rule: dict) -> str:
    """The main checkpoint rule's key (every, at or log_spaced), whatever order the keys are in."""
    return next(k for k in rule if k != "dense")


def _dense_overlap(train: dict, first: int, last: int, every: int) -> int:
    """How many steps of the dense progression the main rule saves too, counted arithmetically."""
    steps, rule = int(train["steps"]), train["checkpoints"]
    in_dense = lambda s: first <= s <= last and (s - first) % every == 0  # noqa: E731
    if "every" in rule:  # multiples of e in the progression (x = 0 mod e, x = first mod every), and the last step
        e = int(rule["every"])
        g = math.gcd(e, every)
        n = 0
        if first % g == 0:
            j = (-first // g) * pow(every // g, -1, e // g) % (e // g)
            x0, period = first + j * every, e // g * every
            n = (last - x0) // period + 1 if x0 <= last else 0
        return n + (steps % e != 0 and in_dense(steps))
    if "at" in rule:
        return sum(in_dense(s) for s in {int(s) for s in rule["at"] if 0 < int(s) < steps} | {0, steps})
    return sum(in_dense(s) for s in _main_steps(train) | {0, steps})  # log_spaced at most MAX_CHECKPOINTS: a bounded list


def checkpoint_count(train: dict) -> int:
    """How many checkpoints `checkpoint_steps` gives, counted without building the list (for a
    log-spaced schedule, an upper bound where log_spaced is above MAX_CHECKPOINTS; a dense window
    adds its steps the main rule does not save)."""
    steps, rule = int(train["steps"]), train.get("checkpoints", {"log_spaced": 10})
    if "every" in rule:
        every = int(rule["every"])
        n = steps // every + 1 + (steps % every != 0)  # 0, every, 2 every, ... and the last step
    elif "at" in rule:
        n = len({int(s) for s in rule["at"] if 0 < int(s) < steps} | {0, steps})
    elif int(rule["log_spaced"]) > MAX_CHECKPOINTS:
        n = min(int(rule["log_spaced"]) + 1, steps + 1)
    else:
        n = len(_main_steps(train) | {0, steps})
    dense = _dense(train)
    if dense is None:
        return n
    first, last, every = dense
    if "log_spaced" in rule and int(rule["log_spaced"]) > MAX_CHECKPOINTS:
        return min(n + (last - first) // every + 1, steps + 1)  # an upper bound, as above
    return n + (last - first) // every + 1 - _dense_overlap(train, first, last, every)


def _main_steps(train: dict) -> set[int]:
    """The main rule's steps (every, at or log_spaced), without step 0, the last step or a dense window."""
    steps, rule = int(train["steps"]), train.get("checkpoints", {"log_spaced": 10})
    if "every" in rule:
        return set(range(0, steps + 1, int(rule["every"])))
    if "at" in rule:
        return {int(s) for s in rule["at"] if 0 <= int(s) <= steps}
    return set(np.unique(np.round(np.geomspace(1, steps, int(rule["log_spaced"]) - 1)).astype(int)).tolist())


def checkpoint_steps(train: dict) -> list[int]:
    """Checkpoint steps from the train block: always includes 0 and the last step, and with
    checkpoints.dense every `every` steps from `from` to `to` on top of the main rule."""
    steps, rule = int(train["steps"]), train.get("checkpoints", {"log_spaced": 10})
    if ("every" in rule or int(rule.get("log_spaced", 0)) > MAX_CHECKPOINTS or "dense" in rule) \
            and checkpoint_count(train) > MAX_CHECKPOINTS:
        kind = _main_rule(rule) if "dense" not in rule or checkpoint_count({**train, "checkpoints": {
            k: v for k, v in rule.items() if k != "dense"}}) > MAX_CHECKPOINTS else "dense"
        raise ConfigError(f"invalid gradscope config:\n  bad value at train.checkpoints.{kind}: {rule[kind]} over "
                          f"train.steps = {steps} saves {checkpoint_count(train):,} checkpoints; allowed: at most "
                          f"{MAX_CHECKPOINTS:,}")
    chosen = _main_steps(train)
    dense = _dense(train)
    if dense is not None:
        chosen |= set(range(dense[0], dense[1] + 1, dense[2]))
    return sorted(chosen | {0, steps})
