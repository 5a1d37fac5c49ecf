"""Mutation testing: plant each bug of `mutants.MUTANTS` alone in a copy of the repository, run the
tests named for it, and report whether they catch it (killed) or not (survived).

    python tests/mutations/run.py              # every mutant; exit status 1 if any survives
    python tests/mutations/run.py --only adamw_is_adam tracin_lr_left
    python tests/mutations/run.py --list

The copy (git's tracked and untracked-but-not-ignored files, in a temporary folder) is imported
ahead of the editable install through PYTHONPATH, so the working tree is never modified. First
the named tests run once unmutated: they must pass, or a kill would mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mutants import MUTANTS  # noqa: E402


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def copy_repo(dest: Path) -> None:
    for rel in repo_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)


def pytest(copy: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy / "src"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - start
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or [""]
    return proc.returncode, last[0], time.perf_counter() - start


def apply(copy: Path, mutant) -> None:
    path = copy / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        raise SystemExit(f"{mutant.id}: the original snippet occurs {text.count(mutant.original)} times in {mutant.path}")
    path.write_text(text.replace(mutant.original, mutant.replacement))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"unknown mutant(s): {sorted(set(args.only) - {m.id for m in MUTANTS})}")
    if args.list:
        for m in chosen:
            print(f"{m.id:34s} {m.path}: {m.why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gradscope-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        copy_repo(clean)
        tests = sorted({t for m in chosen for t in m.tests})
        rc, last, wall = pytest(clean, tests, args.timeout * 2)
        print(f"baseline (unmutated): {last} [{wall:.0f} s]", flush=True)
        if rc != 0:
            print("the named tests fail without any mutant; fix that first")
            return 2
        survived = []
        for m in chosen:
            work = Path(tmp) / m.id
            shutil.copytree(clean, work)
            apply(work, m)
            rc, last, wall = pytest(work, list(m.tests), args.timeout)
            status = "killed" if rc not in (0, 5) else "SURVIVED"  # 5: no tests collected
            if rc == 5 or rc == 0:
                survived.append(m.id)
            print(f"{status:8s} {m.id:34s} {wall:5.0f} s  {last}", flush=True)
            shutil.rmtree(work)
    print(f"{len(chosen) - len(survived)} killed, {len(survived)} survived of {len(chosen)} mutants"
          + (f": {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
