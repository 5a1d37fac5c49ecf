"""The researcher's own code, named in the config as "package.module:function".

A model (and a data source) may come from a function of the researcher's: the config names it
by its import path, a module and an attribute separated by a colon (the entry-point syntax of
Python packaging, e.g. "my_models:small_cnn" or "lab.nets:build"). `resolve` imports the
module with the working directory on sys.path (where snakemake or the CLI is started; a folder
of the workflow beside the config is importable without installing anything) and returns the
callable. Every failure is a FactoryError naming the config key, the value and the reason, so
a bad name stops the run when the config is validated, before any job starts.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Callable

_NAME = r"[A-Za-z_]\w*"
PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"  # also the schema's pattern for these keys


class FactoryError(ValueError):
    """A "module:function" value that cannot be used; the message names the key, the value and why."""

    def __init__(self, key: str, value, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}: cannot use {value!r}: {reason}")


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
    return obj
