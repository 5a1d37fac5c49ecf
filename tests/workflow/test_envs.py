"""The conda environments (envs/*.yaml, for `snakemake --sdm conda`) list what pyproject.toml lists."""

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from support.workflow import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def pip_requirements(env: dict) -> tuple[dict[str, Requirement], list[str]]:
    """The env's pip requirements by canonical name, and its other pip lines (e.g. `-e ..`)."""
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs, other = {}, []
    for line in pip:
        if line.startswith("-"):
            other.append(line)
        else:
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs, other


def test_there_is_an_environment():
    assert ENVS, "no envs/*.yaml"


@pytest.mark.parametrize("path", ENVS, ids=[p.name for p in ENVS])
def test_environment_lists_the_dependencies_of_pyproject(path):
    env = yaml.safe_load(path.read_text())
    reqs, other = pip_requirements(env)
    project = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["dependencies"]}
    assert set(reqs) == set(project), (f"{path.name} and pyproject.toml disagree: only in the env: "
                                       f"{sorted(set(reqs) - set(project))}, only in pyproject: {sorted(set(project) - set(reqs))}")
    for name, req in project.items():  # the same version bounds where pyproject sets any
        if name != "torch":
            assert reqs[name].specifier == req.specifier, (name, str(reqs[name].specifier), str(req.specifier))
    # torch: pinned in the env, to the version the install command (README, .ci/run) pins
    pinned = [s for s in reqs["torch"].specifier if s.operator == "=="]
    assert pinned, f"{path.name} must pin torch (torch==X)"
    readme_pin = re.search(r"pip install torch==([\d.]+)", (REPO / "README.md").read_text()).group(1)
    assert pinned[0].version == readme_pin
    # gradscope itself, from this checkout (the path is relative to the env file)
    editable = [o.split(None, 1)[1] for o in other if o.startswith("-e ")]
    assert editable and (path.parent / editable[0] / "pyproject.toml").resolve() == (REPO / "pyproject.toml").resolve()
    # a Python that pyproject allows
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = re.match(r"python\s*=*\s*([\d.]+)", python).group(1)
    assert Version(version) in SpecifierSet(PYPROJECT["requires-python"])
