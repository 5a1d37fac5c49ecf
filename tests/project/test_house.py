"""The house a newcomer changes (issue 33): the module drawing, read from the code.

- Every module of src/gradscope sits on one layer of `LAYERS` (a new module is placed there, which
  is where a newcomer reads where it belongs); no import, at module level or inside a function,
  reaches a higher layer.
- No cycle among module-level imports (a function-level import is how a module uses one above
  it only in the CLI's lazy loading; it is held to the layers all the same).
- No module in src/ over MAX_LINES lines unless its opening docstring says why, in a line that
  starts "Length:".
- Test modules import no other test module: shared helpers live in tests/support/ and fixtures in
  conftest.py.
- Tests mirror src/: a test of a top-level module gradscope.X is tests/test_X.py; of a module of a
  package, tests/<package>/ (tests/curvature/test_lanczos.py for gradscope.curvature.lanczos);
  tests that run the whole workflow with Snakemake in tests/workflow/, tests of the repository
  itself (README, docs, install, this file) in tests/project/.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
from support.workflow import REPO

SRC = REPO / "src" / "gradscope"
MAX_LINES = 450

# The module drawing, bottom first: a module imports only from its own layer or below.
LAYERS = {
    "foundation": [  # facts, names and plain helpers every layer uses; no computation on data
        "gradscope", "gradscope.layout", "gradscope.dataset_facts", "gradscope.factories", "gradscope.losses",
        "gradscope.modes", "gradscope.parameters", "gradscope.logs", "gradscope.schemas", "gradscope.doctor", "gradscope.device",
        "gradscope.config*",
    ],
    "computation": [  # tensors and tables in, tensors and tables out: no files
        "gradscope.models", "gradscope.activations", "gradscope.convnets", "gradscope.transformer", "gradscope.model_input", "gradscope.optim", "gradscope.hadamard", "gradscope.projection*", "gradscope.grad_rules*",
        "gradscope.engine*", "gradscope.examples", "gradscope.per_example*", "gradscope.operators",
        "gradscope.curvature*", "gradscope.signals", "gradscope.opposing", "gradscope.scoring", "gradscope.timeline",
        "gradscope.influence", "gradscope.interventions", "gradscope.resources", "gradscope.data.common",
        "gradscope.data.generators", "gradscope.data.labelled", "gradscope.data.spurious", "gradscope.data.sources",
        "gradscope.data.noise",
        "gradscope.data.dispatch",
    ],
    "artifacts": [  # what is written and read: tables, checkpoints, datasets, recorded runs, planning
        "gradscope.tables*", "gradscope.artifacts", "gradscope.checkpoints", "gradscope.dynamics", "gradscope.data",
        "gradscope.data.io", "gradscope.data.probe", "gradscope.readers", "gradscope.external", "gradscope.train",
        "gradscope.recorder", "gradscope.integrations*", "gradscope.progress", "gradscope.preflight",
        "gradscope.config.runs",  # planning the runs: recorded and external runs, interventions, the preflight
    ],
    "presentation": [  # figures, reports, summaries and dashboards of the artifacts
        "gradscope._figures", "gradscope.plots", "gradscope.progress_plots", "gradscope.signal_plots",
        "gradscope.timeline_plots", "gradscope.intervention_plots", "gradscope.animate", "gradscope.report*",
        "gradscope.detections", "gradscope.sweep_table", "gradscope.results", "gradscope.dashboard*",
    ],
    "entry": ["gradscope.pipeline", "gradscope.analysis", "gradscope.cli"],  # what the rules' scripts and the shell call
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    best = None  # the longest pattern that matches decides
    for rank, patterns in enumerate(LAYERS.values()):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern) and (best is None or len(pattern) > best[0]):
                best = (len(pattern), rank)
    if best is None:
        raise KeyError(module)
    return best[1]


def imports(module: str, *, top_level_only: bool) -> set[str]:
    """The gradscope modules `module` imports (a `from gradscope import x` names gradscope.x where x is a module)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = []
    if top_level_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.Try, ast.If)):
                nodes.extend(ast.walk(node))
            else:
                nodes.append(node)
    else:
        nodes = list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in MODULES and m != module}


def test_every_module_has_a_place_in_the_drawing():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules on a layer of LAYERS (tests/project/test_house.py): {unplaced}"


def _reexport(module: str, target: str) -> bool:
    """A package's __init__ importing its own modules (to re-export their names) is no dependency of its own."""
    return MODULES[module].name == "__init__.py" and target.startswith(module + ".")


def test_no_import_reaches_a_higher_layer():
    names = list(LAYERS)
    upward = [f"{m} ({names[layer_of(m)]}) imports {t} ({names[layer_of(t)]})"
              for m in MODULES for t in imports(m, top_level_only=False)
              if layer_of(t) > layer_of(m) and not _reexport(m, t)]
    assert not upward, "imports up the layers:\n" + "\n".join(sorted(upward))


def test_no_cycle_among_module_level_imports():
    graph = {m: {t for t in imports(m, top_level_only=True)
                 if not (t == m.rpartition(".")[0] or m == t.rpartition(".")[0])}  # a package and its own modules
             for m in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_long_module_without_a_stated_reason():
    long = []
    for module, path in sorted(MODULES.items()):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if not any(line.strip().startswith("Length:") for line in doc.splitlines()):
                long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, f"over {MAX_LINES} lines with no 'Length:' reason in the opening docstring:\n" + "\n".join(long)


TESTS = REPO / "tests"


@pytest.mark.parametrize("path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS)))
def test_a_test_module_imports_no_other_test_module(path):
    tree = ast.parse(path.read_text())
    named = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    named |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    others = sorted(m for m in named if m.split(".")[-1].startswith("test_"))
    assert not others, f"{path.relative_to(TESTS)} imports {others}: move what it shares to tests/support/"


def test_the_drawing_catches_an_upward_import(tmp_path, monkeypatch):
    # the check itself can fail: a computation module that imports the report is caught
    fake = tmp_path / "gradscope" / "signals.py"
    fake.parent.mkdir()
    fake.write_text("from gradscope import report\n")
    monkeypatch.setitem(MODULES, "gradscope.signals", fake)
    with pytest.raises(AssertionError, match=r"gradscope.signals \(computation\) imports gradscope.report"):
        test_no_import_reaches_a_higher_layer()


# Test folders: the packages of src/gradscope a test folder may be named after, and the two others.
TEST_FOLDERS = {"config", "data", "curvature", "dashboard", "grad_rules", "integrations", "report", "tables",
                "workflow", "project"}


def test_every_test_file_lies_where_a_newcomer_looks_for_it():
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    misplaced = []
    for path in TESTS.rglob("test_*.py"):
        rel = path.relative_to(TESTS)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        if folder is not None and (len(rel.parts) > 2 or folder not in TEST_FOLDERS
                                   or folder not in packages | {"workflow", "project"}):
            misplaced.append(str(rel))
    assert not misplaced, (f"test files outside tests/ and its folders {sorted(TEST_FOLDERS)}: {misplaced} "
                           "(a folder names a package of src/gradscope, or is workflow/ or project/)")
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), "two test files share a basename (tests/ has no __init__.py files)"
