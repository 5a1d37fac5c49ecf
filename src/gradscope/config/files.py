"""Config files: reading one (a key given twice is an error), and how several combine (`compose`)
as Snakemake combines its default config, `--configfile`s and `--config`."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from gradscope.config.validation import ConfigError

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
