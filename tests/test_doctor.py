"""`gradscope doctor` and the install commands that gradscope's optional features name when their extra is missing."""

import sys
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gradscope import config, data, doctor
from gradscope.cli import main

REPO = Path(__file__).resolve().parents[1]


def lines_of(output: str) -> dict[str, str]:
    """doctor's lines by what they check: `[vision]`, `torch`, ... (the word after the status)."""
    return {line.split()[1]: line for line in output.splitlines()}


def test_doctor_reports_torch_and_the_extras():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = lines_of(result.output)
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    assert lines["torch"].startswith("ok") and f"torch {torch.__version__}: {build}" in lines["torch"]
    assert "device auto -> " + ("cuda" if torch.cuda.is_available() else "cpu") in lines["torch"]
    for name in ("python", "snakemake", "package", "duckdb", "chromium"):
        assert name in lines, result.output
    for extra in ("slurm", "vision", "lightning", "huggingface", "docs"):
        assert f"[{extra}]" in lines, result.output


def test_a_missing_extra_is_reported_with_its_pip_install(monkeypatch):
    installed = doctor.version
    monkeypatch.setattr(doctor, "version", lambda name: None if name == "torchvision" else installed(name))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output  # an optional extra: no error
    hint = doctor.install_hint("vision")
    assert hint.startswith(f"pip install torch=={torch.__version__.split('+')[0]} ") and "[vision]'" in hint
    assert lines_of(result.output)["[vision]"] == (f"missing  [vision] torchvision (torchvision not installed) "
                                                   f"(for {doctor.EXTRAS['vision'].purpose}): {hint}")


def test_a_missing_required_piece_fails(monkeypatch):
    installed = doctor.version
    monkeypatch.setattr(doctor, "version", lambda name: None if name == "snakemake" else installed(name))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1 and "missing  snakemake (not installed) (required): pip install" in result.output
    monkeypatch.setattr(doctor, "version", installed)

    def unreadable(path=None):
        raise FileNotFoundError("config.schema.yaml")

    monkeypatch.setattr(config, "load_schema", unreadable)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1 and lines_of(result.output)["package"].startswith("missing  package data "), result.output


def test_install_hints_follow_the_installation(monkeypatch, tmp_path):
    pin = f"torch=={torch.__version__.split('+')[0]}"
    monkeypatch.setattr(doctor, "editable_clone", lambda: None)  # installed from a wheel or the index
    assert doctor.install_hint("vision") == f"pip install {pin} 'gradscope[vision]'"
    assert doctor.install_hint("slurm") == "pip install 'gradscope[slurm]'"  # no torch in it
    monkeypatch.setattr(doctor, "editable_clone", lambda: tmp_path)  # editable from a clone
    monkeypatch.chdir(tmp_path)
    assert doctor.install_hint("lightning") == f"pip install {pin} -e '.[lightning]'"
    monkeypatch.chdir(REPO)
    assert doctor.install_hint("docs") == f"pip install -e '{tmp_path}[docs]'"


def test_this_clone_is_the_editable_install():
    """The tests run where `pip install -e .` was run (.ci/run); its hints install from this clone."""
    assert doctor.editable_clone().resolve() == REPO.resolve()


def test_the_extras_are_those_of_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(doctor.EXTRAS) == set(extras) - {"test", "peers"}  # what users install; test and peers are ours
    for name, spec in doctor.EXTRAS.items():
        listed = {canonicalize_name(Requirement(r).name) for r in extras[name]}
        assert listed <= set(spec.packages), (name, listed)


def test_the_torchvision_source_names_its_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # its import raises ImportError
    with pytest.raises(ImportError, match="needs torchvision") as raised:
        data.import_torchvision()
    assert doctor.install_hint("vision") in str(raised.value) and "gradscope doctor" in str(raised.value)
