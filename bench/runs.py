"""Repeat a benchmark in fresh processes (`--runs N` of bench_architectures.py and bench_projections.py).

On this shared 2-core machine one process's ratios can sit far from another's for the same code,
because the reference itself moves: the batched backward of the Conv1d net took 16, 26 and 35 ms
in three consecutive processes of one throwaway script. Page faults are a large part of it
(minor faults cost about 3.5 us each here, and how many a call takes depends on the allocator's
state). Rounds inside one process do not average that out; runs in fresh processes do. Each run is the script itself with `--runs` removed and `--json-out FILE` added:
it prints its usual tables (not shown) and writes its summary to FILE.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child_argv(argv: list[str]) -> list[str]:
    """argv without `--runs N` (or `--runs=N`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--runs":
            skip = True
        elif not a.startswith("--runs="):
            out.append(a)
    return out


def repeat(script: str, runs: int) -> list[dict]:
    """The JSON summaries of `runs` fresh runs of `script` with this process's arguments."""
    results = []
    argv = child_argv(sys.argv[1:])
    for i in range(runs):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "run.json"
            subprocess.run([sys.executable, script, *argv, "--json-out", str(path)], check=True,
                           stdout=subprocess.DEVNULL)
            results.append(json.loads(path.read_text()))
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"run {i + 1} of {runs} done (load average {load})", flush=True)
    return results


def spread(values: list[float]) -> str:
    """'median (min-max)' of ratios."""
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary))
