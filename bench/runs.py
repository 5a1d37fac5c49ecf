"""Repeat a benchmark in fresh processes (`--runs N` of bench_architectures.py and bench_projections.py).

On this shared 2-core machine one process's ratios can sit far from another's for the same code,
because the reference itself moves: the batched backward of the Conv1d net took 16, 26 and 35 ms
in three consecutive processes of one throwaway script. Page faults are a large part of it
(minor faults cost about 3.5 us each here, and how many a call takes depends on the allocator's
state). Rounds inside one process do not average that out; runs in fresh processes do. Each run
is the script itself with `--runs` removed and `--json-out FILE` added: it prints its usual
tables (not shown) and writes its summary to FILE. bench_architectures.py makes each run of one
fresh process per architecture.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def without(argv: list[str], flag: str) -> list[str]:
    """argv without `flag` and the values after it (up to the next option), or `flag=...`."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a == flag
            if skip or a.startswith(flag + "="):
                continue
        if not skip:
            out.append(a)
    return out


def child(script: str, argv: list[str], show: bool = False) -> dict:
    """The JSON summary of one fresh run of `script` with `argv` (its tables printed when `show`)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.json"
        subprocess.run([sys.executable, script, *argv, "--json-out", str(path)], check=True,
                       stdout=None if show else subprocess.DEVNULL)
        return json.loads(path.read_text())


def repeat(script: str, runs: int, run=None) -> list[dict]:
    """`runs` fresh runs of `script` with this process's arguments (less --runs): their JSON summaries, or what
    `run(argv)` returns for each, where given (a run made of several processes)."""
    argv = without(sys.argv[1:], "--runs")
    results = []
    for i in range(runs):
        results.append(run(argv) if run else child(script, argv))
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"run {i + 1} of {runs} done (load average {load})", flush=True)
    return results


def spread(values: list[float]) -> str:
    """'median (min-max)' of ratios."""
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary))
