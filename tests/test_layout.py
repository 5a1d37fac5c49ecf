"""gradscope.layout is the one place an artifact path is spelled: the rules, the input functions,
the scripts and the library name artifacts through it, and its helpers fill and read them."""

import ast
import re
from pathlib import Path

import pytest

from gradscope import layout

REPO = Path(__file__).resolve().parents[1]

# What an artifact path looks like when spelled out: a results/ or logs/ folder, or one of the
# artifacts' file names.
FILE_NAMES = sorted({Path(p).name for p in [*layout.IN_RUN.values(), *layout.IN_SWEEP.values(), *layout.DATASET.values(),
                                            layout.INDEX]} - {"checkpoints", "resume", "examples", "curvature", "pca_frames",
                                          "config.yaml"})  # also the name of the user's config/config.yaml
SPELLED = re.compile(r"(^|[\"'/])(results|logs|benchmarks)/|" + "|".join(re.escape(n) for n in FILE_NAMES))


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a Python file that are not docstrings (what the code uses as values)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_artifact_path_is_spelled_outside_the_layout_module():
    found = []
    for path in sorted([*(REPO / "src" / "gradscope").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        if path.name == "layout.py":
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for line, text in _code_strings(path) if SPELLED.search(text)]
    for path in sorted([REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(SPELLED.search(s) for s in re.findall(r"\"[^\"]*\"|'[^']*'", code)) and "config/" not in code:
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "artifact paths spelled outside gradscope.layout:\n" + "\n".join(found)


def test_the_check_would_catch_a_spelled_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Writes results/runs/x/train/metrics.parquet (a docstring may say so)."""\n'
                   'OUT = "results/runs/x/report.md"\nNAME = "metrics.parquet"\n')
    assert [t for _, t in _code_strings(bad) if SPELLED.search(t)] == ["results/runs/x/report.md", "metrics.parquet"]


def test_patterns_fill_into_the_workflow_layout():
    run = "grokking/wd~1.0_seed~0"
    assert layout.run_file("metrics", run) == "results/runs/grokking/wd~1.0_seed~0/train/metrics.parquet"
    assert layout.run_file("examples", run, step=30) == "results/runs/grokking/wd~1.0_seed~0/examples/step=30/part-0.parquet"
    assert layout.run_file("eigenvectors", run, step=3) == "results/runs/grokking/wd~1.0_seed~0/curvature/step=3/eigenvectors.npy"
    assert layout.dataset_file("meta", "modular-abc", "elsewhere") == "elsewhere/data/modular-abc/meta.json"
    assert layout.sweep_file("report", "grokking", "r") == Path("r/sweeps/grokking/report.md")
    assert layout.log("curvature", "step") == "logs/curvature/{experiment}/{run}/step={step}.log"
    assert layout.log("sweep_report", "experiment") == "logs/sweep_report/{experiment}.log"
    # a pattern filled from a run's folder is the same file as the workflow's path
    folder = layout.run_dir(run, "results")
    assert layout.in_run(folder, "curvature", step=7).as_posix() == layout.run_file("curvature", run, step=7)
    assert layout.partition_file(layout.run_file("curvature_dir", run), "eigenvectors", 7).as_posix() == \
        layout.run_file("eigenvectors", run, step=7)


def test_partitions_are_found_in_step_order_from_files_or_their_folder(tmp_path):
    folder = tmp_path / "runs" / "e" / "r"
    for step in (100, 2, 30):
        path = layout.in_run(folder, "examples", step=step)
        path.parent.mkdir(parents=True)
        path.write_text("")
    expected = [layout.in_run(folder, "examples", step=s) for s in (2, 30, 100)]
    assert layout.tables_in(folder, "examples") == expected
    assert layout.partition_files([layout.in_run(folder, "examples_dir")]) == expected
    assert layout.partition_files(expected[::-1]) == expected[::-1]  # files given are kept as given
    assert layout.tables_in(folder, "curvature") == []
    with pytest.raises(FileNotFoundError, match="holds no step"):
        layout.partition_files([layout.in_run(folder, "curvature_dir").mkdir(parents=True) or layout.in_run(folder, "curvature_dir")])
    assert layout.run_folders(tmp_path) == [folder]
