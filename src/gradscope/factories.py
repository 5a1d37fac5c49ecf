"""The researcher's own code, named in the config as "package.module:function".

A model (and a data source) may come from a function of the researcher's: the config names it
by its import path, a module and an attribute separated by a colon (the entry-point syntax of
Python packaging, e.g. "my_models:small_cnn" or "lab.nets:build"). `resolve` imports the
module with the working directory on sys.path (where snakemake or the CLI is started; a folder
of the workflow beside the config is importable without installing anything) and returns the
callable. Every failure is a FactoryError naming the config key, the value and the reason, so
a bad name stops the run when the config is validated, before any job starts.

The researcher's code is part of a result's provenance: `source_files` names the files a factory's
code is read from (the module named and the module that defines the callable), which the
workflow declares as inputs of the stages that import it, so an edit reruns them; `fingerprint`
is the sha256 of those files as this process imported them, which a checkpoint (and a dataset's
meta) records, so that a model is never rebuilt around weights made by other code
(`check_code`, `CodeChangedError`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Callable

_NAME = r"[A-Za-z_]\w*"
PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"  # also the schema's pattern for these keys


class FactoryError(ValueError):
    """A "module:function" value that cannot be used; the message names the key, the value and why."""

    def __init__(self, key: str, value, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}: cannot use {value!r}: {reason}")


class CodeChangedError(FactoryError):
    """A checkpoint (or dataset) made by other code than the factory's source holds now."""


def resolve(value, *, key: str) -> Callable:
    """The callable "package.module:attr[.attr...]" names; FactoryError if it cannot be had."""
    if not isinstance(value, str) or not re.match(PATTERN, value):
        raise FactoryError(key, value, "expected 'package.module:function' (an importable module, a colon, a name)")
    module_name, _, attr = value.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # kept: checkpoints rebuilt later in the process import the same way
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name) and module_name[len(e.name):][:1] in ("", "."):
            top = module_name.split(".")[0]
            found = sys.modules.get(top) if e.name != top else None
            at = None if found is None else getattr(found, "__file__", None) or list(getattr(found, "__path__", []))
            where = "" if found is None else f"; {top!r} is the package at {at}, which shadows any folder of that name"
            raise FactoryError(key, value, f"no module named {e.name!r} (searched sys.path, which includes the "
                                           f"working directory {cwd}){where}") from None
        raise FactoryError(key, value, f"importing {module_name} failed: {e}") from e
    except Exception as e:  # the module's own code raised while importing
        raise FactoryError(key, value, f"importing {module_name} raised {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(key, value, f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(key, value, f"{attr} is a {type(obj).__name__}, not a function or class")
    for path, module in _files_of(module_name, obj):
        _digest(path, module)  # the code as imported now: what this process runs, whatever the file holds later
    return obj


# ---- the code as provenance ------------------------------------------------------------------

# sha256 of each source file as this process first read it after importing its module (per
# module object: a module imported again, after leaving sys.modules, is read again): Python keeps
# running the code it imported, so a file edited later changes neither what runs here nor its
# fingerprint (a fresh process, a workflow job, reads the new file). importlib.reload is not seen.
_DIGESTS: dict[str, tuple[object, str]] = {}


def _files_of(module_name: str, obj) -> list[tuple[Path, object]]:
    """(file, module) of `obj`'s source: the named module's, and the defining module's where that is another."""
    candidates = [sys.modules.get(module_name)]
    target = inspect.unwrap(obj)
    for thing in (target, getattr(target, "func", None), type(target)):  # a function or class, a partial, an instance
        if thing is not None and (inspect.isfunction(thing) or inspect.isclass(thing) or inspect.ismethod(thing)):
            candidates.append(inspect.getmodule(thing))
            break
    files = []
    for module in candidates:
        name = getattr(module, "__file__", None)
        if name and name.endswith(".py") and os.path.isfile(name):
            path = Path(name).resolve()
            if path not in [f for f, _ in files]:
                files.append((path, module))
    return files


def _digest(path: Path, module) -> str:
    held = _DIGESTS.get(str(path))
    if held is None or held[0] is not module:
        held = _DIGESTS[str(path)] = (module, hashlib.sha256(path.read_bytes()).hexdigest())
    return held[1]


def _shown(path: Path) -> str:
    """A path relative to the working directory where it lies below it (what the workflow declares), else absolute."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def source_files(value, *, key: str) -> list[str]:
    """The files the code of factory `value` is read from (relative to the working directory where
    below it): the module it names and, where another, the module defining the callable. The
    workflow declares them as inputs of every stage that imports the factory."""
    obj = resolve(value, key=key)
    return [_shown(p) for p, _ in _files_of(value.partition(":")[0], obj)]


def fingerprint(value, *, key: str) -> dict:
    """{"factory": value, "files": [...], "sha256": ...}: the sha256 over the factory's source files
    (`source_files`) as this process imported them. A callable without a source file (built
    into Python) has "sha256": None."""
    obj = resolve(value, key=key)
    files = _files_of(value.partition(":")[0], obj)
    if not files:
        return {"factory": value, "files": [], "sha256": None}
    h = hashlib.sha256()
    for path, module in files:
        h.update(_digest(path, module).encode())
    return {"factory": value, "files": [_shown(p) for p, _ in files], "sha256": h.hexdigest()}


def model_code(model_settings: dict | None) -> dict | None:
    """{"model.factory": {"factory", "sha256"}} for a `python` model section; None for a built-in kind."""
    if not isinstance(model_settings, dict) or model_settings.get("kind") != "python":
        return None
    found = fingerprint(model_settings.get("factory"), key="model.factory")
    return {"model.factory": {"factory": found["factory"], "sha256": found["sha256"]}}


def data_code(data_settings: dict | None) -> dict | None:
    """{"data.python.factory": {"factory", "sha256"}} for a `python` data source; None for the others."""
    if not isinstance(data_settings, dict) or data_settings.get("generator") != "python":
        return None
    found = fingerprint((data_settings.get("python") or {}).get("factory"), key="data.python.factory")
    return {"data.python.factory": {"factory": found["factory"], "sha256": found["sha256"]}}


def check_code(recorded: dict | None, now: dict | None, *, what) -> None:
    """Raise CodeChangedError where a factory's code differs from the code `what` (a checkpoint,
    a dataset) recorded; `recorded` None (made before gradscope recorded code, or a built-in
    model) passes. The message names the factory (key and value), its files and both fingerprints."""
    if not recorded or not now:
        return
    for key, then in recorded.items():
        current = now.get(key)
        if current is None or then.get("sha256") is None or current.get("sha256") is None:
            continue
        if then["sha256"] != current["sha256"] or then.get("factory") != current.get("factory"):
            files = source_files(current["factory"], key=key)
            raise CodeChangedError(
                key, current["factory"],
                f"{what} was made by other code: saved with {then.get('factory')} at fingerprint "
                f"sha256:{then['sha256'][:16]}, and the source now ({', '.join(files) or 'no file'}) has fingerprint "
                f"sha256:{current['sha256'][:16]}. The weights belong to the model the old code built; put the code "
                "back as it was, or run the stages that made it again (the workflow reruns them: the factory's "
                "source is one of their inputs)")
