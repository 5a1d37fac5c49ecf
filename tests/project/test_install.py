"""gradscope installed from a wheel, not from the clone: the files it reads at run time (the config
schema, the dashboard's script) must be package data, or an installed gradscope fails.

The wheel is built from a copy of the clone's packaging files (pyproject.toml, README.md, src/), so
no build/ folder is left in the clone and no stale build/lib of an earlier build can hide a missing
file. It is installed (not editable) into a fresh virtual environment whose .pth file lists this
environment's site-packages, so torch and the other dependencies are not installed again; the
commands run from tmp_path, outside the clone, with nothing of the clone importable.
"""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradscope import artifacts
from support.workflow import REPO

pytestmark = pytest.mark.slow


def run(args, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh virtual environment with gradscope's wheel installed in it: its python and gradscope
    command, and a working directory outside the clone."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # Offline and quick: setuptools of this environment (the `test` extra) builds it.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "wheels", source],
        cwd=tmp)
    wheel = next((tmp / "wheels").glob("gradscope-*.whl"))

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    # After the venv's own site-packages: this environment's (torch, pip, ...; its .pth files are not
    # read from there, so the clone's editable install of gradscope is not on the path).
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    return {"python": python, "gradscope": bin_dir / "gradscope", "venv": venv, "cwd": work}


def test_gradscope_is_imported_from_the_installed_wheel(installed):
    out = run([installed["python"], "-c", "import gradscope; print(gradscope.__file__)"], cwd=installed["cwd"]).stdout
    where = Path(out.strip()).resolve()
    assert where.is_relative_to(installed["venv"].resolve()) and not where.is_relative_to(REPO), where


def test_validate_reads_the_schema(installed):
    config = installed["cwd"] / "mine.yaml"
    config.write_text("device: cpu\nexperiments:\n  tiny:\n    data: {generator: modular, modular: {p: 7}}\n"
                      "    train: {steps: 5}\n    seeds: [0, 1]\n")
    out = run([installed["gradscope"], "validate", config], cwd=installed["cwd"]).stdout
    assert out.split() == ["tiny/seed~0", "tiny/seed~1"], out
    config.write_text("experiments:\n  tiny:\n    train: {stepz: 5}\n")  # a key the schema does not know
    proc = subprocess.run([installed["gradscope"], "validate", config], cwd=installed["cwd"], capture_output=True, text=True)
    assert proc.returncode != 0 and "stepz" in proc.stderr, proc.stderr


def test_library_fills_settings_from_the_schema(installed):
    code = ("from gradscope import config\n"
            "train = config.section('train', {'steps': 3})\n"
            "assert train['steps'] == 3 and 'log_every' in train, train\n"
            "assert config.filled('curvature', {})['lanczos_iters'] > 0\n"
            "from gradscope import doctor\n"  # not editable: the extras come from the package index
            "assert doctor.install_hint('slurm') == \"pip install 'gradscope[slurm]'\", doctor.install_hint('slurm')\n"
            "print('ok')")
    assert run([installed["python"], "-c", code], cwd=installed["cwd"]).stdout.strip() == "ok"


def test_dashboard_builds_the_pages(installed):
    results = installed["cwd"] / "results"
    folder = results / "runs" / "tiny" / "wd~1.0_seed~0"  # a run with its config and metrics, nothing more yet
    (folder / "train").mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    metrics = pd.DataFrame({c: [0.0, 1.0] for c in artifacts.METRICS}).astype({"step": int, "clipped": bool})
    artifacts.write_parquet(metrics, folder / "train" / "metrics.parquet", artifacts.METRICS)
    out = run([installed["gradscope"], "dashboard", "--results", results], cwd=installed["cwd"]).stdout
    assert "index.html" in out and "tiny/dashboard.html" in out, out
    page = (results / "sweeps" / "tiny" / "dashboard.html").read_text()
    assert "the glue between the page's controls" in page  # dashboard.js, inlined from the package


def test_doctor_finds_the_package_data(installed):
    out = run([installed["gradscope"], "doctor"], cwd=installed["cwd"]).stdout
    assert "ok       package data:" in out and "ok       torch " in out, out
