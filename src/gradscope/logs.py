"""Send a stage's logging, warnings and any traceback to its log file (readable with tail -f)."""

from __future__ import annotations

import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def log_to(path):
    """Log INFO and above to `path` (appending); an exception is logged there with its traceback, then re-raised."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    except BaseException:
        logging.getLogger("gradscope").exception("failed")
        print(f"gradscope: failed; see {path}", file=sys.stderr)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


# A line that `log_to` writes: "<date> <time>,<ms> LEVEL logger: message".
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) (\S+): (.*)$")
# The workflow's rules in order, each with its per-run log(s) under logs/<rule>/<experiment>/.
RUN_RULES = ("train", "extract_examples", "curvature", "detect_signals", "plots", "plot_signals", "animate", "report")


def ended_in_failure(path) -> bool:
    """Whether the last entry of a `log_to` log is its failure line (logs append: an earlier
    failure followed by a later attempt's lines is not a failure)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return False
    for line in reversed(lines):
        m = _LINE.match(line)
        if m:
            return m.group(1) == "ERROR" and m.group(3) == "failed"
    return False


def failed_logs(logs_dir, experiment: str, run: str) -> list[tuple[str, Path]]:
    """(rule, log) of each job of one run whose log ends in a failure, in workflow order."""
    out = []
    for rule in RUN_RULES:
        base = Path(logs_dir) / rule / experiment
        for log in [base / f"{run}.log", *sorted((base / run).glob("*.log"))]:
            if log.is_file() and ended_in_failure(log):
                out.append((rule, log))
    return out
