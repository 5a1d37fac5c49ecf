"""Validation against the JSON Schema: reading the schema, filling defaults, one section's settings
for library callers (`section`, `filled`), and what applies to a run (`applicable`)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

# Package data (pyproject.toml), so an installed gradscope fills settings as a clone does.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
SECTIONS = ("data", "model", "optim", "train", "examples", "signals", "curvature", "influence", "progress", "plots",
            "timeline")


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the key, value and what is allowed."""


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
# tests/config/test_defaults.py fails for a key of such an object that has no `x-when`.
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
