"""gradscope.layout is the one place an artifact path is spelled: the rules, the input functions,
the scripts and the library name artifacts through it, and its helpers fill and read them."""

import ast
import re
from pathlib import Path

import pytest

from gradscope import layout

REPO = Path(__file__).resolve().parents[1]

# What an artifact path looks like when spelled out: a results/ or logs/ folder, one of the
# artifacts' file names, or a file named by its checkpoint's step (layout.BY_STEP: a checkpoint,
# its timing file, a GIF frame), as a pattern (step_{step:08d}.pt, step_{}.png in an f-string), a
# glob (step_*.pt) or a name (step_00000006.pt); a user's own checkpoints (step_100.pt) are not.
FILE_NAMES = sorted({Path(p).name for p in [*layout.IN_RUN.values(), *layout.IN_SWEEP.values(), *layout.DATASET.values(),
                                            layout.INDEX]} - {"checkpoints", "resume", "examples", "curvature",
                                          "config.yaml"})  # also the name of the user's config/config.yaml
SPELLED = re.compile(r"(^|[\"'/])(results|logs|benchmarks)/|step_(\{|\*|\d{8}\b)|"
                     + "|".join(re.escape(n) for n in FILE_NAMES))
# A root's name alone (a default such as results="results", logs beside it: parent / "logs").
ROOTS = {layout.RESULTS, layout.LOGS, layout.BENCHMARKS}


def _spelled(text: str) -> bool:
    return bool(SPELLED.search(text)) or text in ROOTS


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a Python file that are not docstrings (what the code uses as values)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    # an f-string also whole, its fields as {} (f"step_{s:08d}.png": "step_{}.png"), beside its pieces
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings] + \
        [(n.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in n.values))
         for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]


def test_no_artifact_path_is_spelled_outside_the_layout_module():
    found = []
    for path in sorted([*(REPO / "src" / "gradscope").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        if path.name == "layout.py":
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for line, text in _code_strings(path) if _spelled(text)]
    for path in sorted([REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(_spelled(s[1:-1]) for s in re.findall(r"\"[^\"]*\"|'[^']*'", code)) and "config/" not in code:
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "artifact paths spelled outside gradscope.layout:\n" + "\n".join(found)


def test_the_check_would_catch_a_spelled_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Writes results/runs/x/train/metrics.parquet (a docstring may say so)."""\n'
                   'OUT = "results/runs/x/report.md"\nNAME = "metrics.parquet"\n'
                   'def name(step, results="results"):\n'
                   '    """step_00000006.pt, in step_*.pt (a docstring)."""\n'
                   '    found = sorted(results.glob("step_*.pt")) + [results.parent / "logs"]\n'
                   '    return f"step_{step:08d}.pt", f"frames/step_{int(step):08d}.png", "step_00000006.timing.json"\n'
                   'USERS = ("step_100.pt", "step_from", "results of the run", "results_dir")\n')
    assert sorted(t for _, t in _code_strings(bad) if _spelled(t)) == sorted([
        "results/runs/x/report.md", "metrics.parquet", "results", "step_*.pt", "logs", "step_{}.pt",
        "frames/step_{}.png", "step_00000006.timing.json"])


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


def test_files_named_by_step_keep_their_names_and_do_not_collide(tmp_path):
    from gradscope import checkpoints

    # the names on disk, as before layout spelled them
    assert layout.checkpoint_name(6) == checkpoints.checkpoint_name(6) == "step_00000006.pt"
    assert layout.step_file("timing", 6) == "step_00000006.timing.json"
    assert layout.step_file("frame", 6.0) == "step_00000006.png"  # a step read back from a table as a float
    # every artifact has its own path, and one step's files their own names
    assert len(set(layout.IN_RUN.values())) == len(layout.IN_RUN)
    assert len(set(layout.IN_SWEEP.values())) == len(layout.IN_SWEEP)
    assert len({layout.step_file(name, 6) for name in layout.BY_STEP}) == len(layout.BY_STEP)
    # the checkpoint glob finds checkpoints only (not their timing files), in step order
    for step in (100, 2, 30):
        for name in layout.BY_STEP:
            (tmp_path / layout.step_file(name, step)).write_text("")
    found = layout.checkpoints_in(tmp_path)
    assert found == [tmp_path / layout.checkpoint_name(s) for s in (2, 30, 100)]
    assert [layout.checkpoint_step(p) for p in found] == [2, 30, 100]
    with pytest.raises(ValueError, match="not named as a checkpoint"):
        layout.checkpoint_step(tmp_path / layout.step_file("timing", 2))
    assert layout.checkpoints_in(tmp_path / "missing") == []
    # the roots beside a results folder
    assert layout.runs_root("r") == Path("r/runs") and layout.logs_beside("w/results") == Path("w/logs")
