"""`gradscope doctor`: what this installation has, what it lacks, and the command that adds each missing piece.

One line per item, `ok` or `missing`:

- required: python, torch (its version, CPU or CUDA build, whether CUDA is available here and the
  device `device: auto` picks), snakemake, and gradscope's package data (the config schema and the
  dashboard's script: without the schema no config validates);
- optional, each with the pip install that adds it: the Slurm executor plugin (`[slurm]`, for
  `snakemake --profile workflow/profiles/slurm`), torchvision (`[vision]`), Lightning
  (`[lightning]`), transformers + accelerate (`[huggingface]`), mkdocs-material + mkdocstrings
  (`[docs]`), duckdb (SQL over the artifacts; the tests), and chromium + chromedriver (the
  dashboard's browser tests).

A missing optional piece is not an error: the exit status is nonzero only when a required one is
missing or broken. The install commands are made here (EXTRAS, install_hint), and the errors of
gradscope's optional features quote them, so each is written once. This module imports no torch
at import time: those errors import it cheaply.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

TORCH = "2.13.0"  # the torch the README installs; pinned in hints only where torch itself is missing


class Extra(NamedTuple):
    packages: tuple[str, ...]  # its distributions, as pip names them
    purpose: str  # what in gradscope needs it
    needs_torch: bool  # installed with torch pinned in the same command, so pip keeps this torch build


# The optional extras of pyproject.toml ([project.optional-dependencies]).
EXTRAS = {
    "slurm": Extra(("snakemake-executor-plugin-slurm",), "snakemake --profile workflow/profiles/slurm", False),
    "vision": Extra(("torchvision",), "the torchvision data source, data.generator: torchvision", True),
    "lightning": Extra(("lightning",), "gradscope.integrations.lightning", True),
    "huggingface": Extra(("transformers", "accelerate"), "gradscope.integrations.huggingface", True),
    "docs": Extra(("mkdocs-material", "mkdocstrings", "mkdocstrings-python"), "the documentation site, mkdocs build", False),
}
# Optional pieces outside the extras: (what they are for, the command that adds them).
DUCKDB = ("SQL over the artifacts, as in docs/results.md", "pip install duckdb")
# tests/dashboard/test_dashboard.py drives chromium through chromedriver (the binaries on PATH, else /usr/bin);
# .ci/run installs Debian's packages.
BROWSER = ("the dashboard's browser tests, tests/dashboard/test_dashboard.py", "apt-get install chromium chromium-driver")


class Check(NamedTuple):
    name: str  # what is checked, e.g. "[vision] torchvision"
    ok: bool
    detail: str = ""  # its version, build, or what is wrong
    purpose: str = ""  # what needs it (optional pieces)
    fix: str = ""  # the command that adds it where it is missing
    required: bool = False

    def line(self) -> str:
        text = f"{'ok' if self.ok else 'missing':8} {self.name}" + (f" {self.detail}" if self.detail else "")
        text += f" (for {self.purpose})" if self.purpose else ""
        if not self.ok:
            text += (" (required)" if self.required else "") + (f": {self.fix}" if self.fix else "")
        return text


def version(distribution: str) -> str | None:
    """The installed version of a distribution, or None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def editable_clone() -> Path | None:
    """The clone gradscope is installed editable from (pip's direct_url.json, PEP 610), else None."""
    try:
        info = json.loads(importlib.metadata.distribution("gradscope").read_text("direct_url.json") or "{}")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not info.get("dir_info", {}).get("editable") or not info.get("url", "").startswith("file:"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(info["url"]).path))


def install_hint(extra: str) -> str:
    """The pip install that adds one extra to this environment: from the clone where gradscope is
    installed editable from one, else from the package index; with the installed torch release
    pinned where the extra depends on torch (unpinned, pip may replace a CUDA build of torch)."""
    pin = f"torch=={(version('torch') or TORCH).split('+')[0]} " if EXTRAS[extra].needs_torch else ""
    clone = editable_clone()
    if clone is None:
        return f"pip install {pin}'gradscope[{extra}]'"
    where = "." if clone.resolve() == Path.cwd().resolve() else str(clone)
    return f"pip install {pin}-e '{where}[{extra}]'"


def missing_message(extra: str, what: str) -> str:
    """The ImportError text of a gradscope feature whose extra is not installed."""
    return f"{what} needs {' and '.join(EXTRAS[extra].packages)}: {install_hint(extra)} (`gradscope doctor` lists what is missing)"


def _torch() -> Check:
    try:
        import torch

        from gradscope.device import resolve_device
    except Exception as e:  # noqa: BLE001  (a broken install fails in many ways)
        return Check("torch", False, f"cannot be imported ({type(e).__name__}: {e})", fix=f"pip install torch=={TORCH}",
                     required=True)
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    available = "CUDA available" if torch.cuda.is_available() else "CUDA not available"
    return Check("torch", True, f"{torch.__version__}: {build}, {available}, device auto -> {resolve_device('auto')}")


def _package_data() -> Check:
    from importlib import resources

    try:
        from gradscope import config

        config.load_schema()
        if not resources.files("gradscope.dashboard").joinpath("dashboard.js").is_file():
            raise FileNotFoundError("gradscope/dashboard/dashboard.js")
    except Exception as e:  # noqa: BLE001
        return Check("package data", False, f"({type(e).__name__}: {e})", fix="reinstall gradscope: its build "
                     "lacks package data (pyproject.toml [tool.setuptools.package-data])", required=True)
    return Check("package data:", True, "the config schema and the dashboard script")


def _distributions(name: str, packages, purpose: str, fix: str) -> Check:
    """One optional piece made of python distributions: ok where all are installed."""
    versions = {p: version(p) for p in packages}
    absent = [p for p, v in versions.items() if v is None]
    shown = ", ".join(p if v is None else f"{p} {v}" for p, v in versions.items())
    return Check(f"{name}{' ' if name else ''}{shown}", not absent, f"({', '.join(absent)} not installed)" if absent else "",
                 purpose, fix)


def checks() -> list[Check]:
    """Every item `gradscope doctor` reports, required ones first."""
    py = ".".join(map(str, sys.version_info[:3]))
    found = [Check("python", sys.version_info >= (3, 10), py, fix="gradscope needs python >= 3.10", required=True),
             _torch()]
    snakemake = version("snakemake")
    found.append(Check("snakemake", snakemake is not None, snakemake or "(not installed)",
                       fix="pip install 'snakemake>=9,<10'", required=True))
    found.append(_package_data())
    found += [_distributions(f"[{extra}]", spec.packages, spec.purpose, install_hint(extra)) for extra, spec in EXTRAS.items()]
    found.append(_distributions("", ["duckdb"], *DUCKDB))
    binaries = {b: shutil.which(b) or (f"/usr/bin/{b}" if Path(f"/usr/bin/{b}").exists() else None)
                for b in ("chromium", "chromedriver")}
    absent = [b for b, at in binaries.items() if at is None]
    found.append(Check(", ".join(f"{b} {at or ''}".strip() for b, at in binaries.items()), not absent,
                       f"({', '.join(absent)} not found)" if absent else "", *BROWSER))
    return found


def report() -> tuple[list[str], bool]:
    """The lines to print, and whether every required piece is there."""
    found = checks()
    return [c.line() for c in found], all(c.ok for c in found if c.required)
