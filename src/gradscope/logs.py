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
# The workflow's per-run rules in order; each job's log lies where gradscope.layout.log puts it.
RUN_RULES = ("train", "extract_examples", "curvature", "detect_signals", "influence", "plots", "plot_density",
             "plot_signals", "animate", "timeline", "plot_timeline", "report")


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
    from gradscope import layout

    out = []
    for rule in RUN_RULES:
        wc = {"experiment": experiment, "run": run}
        per_step = Path(layout.log(rule, "step", logs_dir).format(**wc, step="*"))
        for log in [Path(layout.log(rule, "run", logs_dir).format(**wc)), *sorted(per_step.parent.glob(per_step.name))]:
            if log.is_file() and ended_in_failure(log):
                out.append((rule, log))
    return out
