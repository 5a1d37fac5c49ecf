"""Planning's look at data only its code can describe: the per-example input of a `python` data
source (or of a torchvision set gradscope has no shape for), for the model check before any job.

Such a dataset's input (shape, class count) is known only once the user's code has made the data.
`input_of` makes it at planning in a child process that is watched: its resident memory (its own and
its children's) may not pass PROBE_MEMORY_MB and its time may not pass `limits.probe_seconds`; past
either, the child is killed and the check is deferred to the run's train job (which checks the model
with the same message), said in one warning that names the key, the bound and how to lift it. What
the child found is kept under the results folder (`layout.probe_file`), keyed by the data settings
and the fingerprint of the factory's code (`factories.data_code`), so the data are made at planning
once per version of the user's code, not at every plan. An error the user's code raises, or data the
source refuses (a label out of range, a non-finite input), is a problem at planning, with the
source's own message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradscope import factories, layout

log = logging.getLogger(__name__)

PROBE_MEMORY_MB = 1024  # planning's bound: no planning step uses more, whatever the config says
POLL_SECONDS = 0.05
_SAID: set = set()  # (key, reason) of the deferrals warned of in this process


class Deferred(Exception):
    """The data could not be made within planning's bounds; the model is checked at train start."""


class FactoryDataError(ValueError):
    """The user's code (or the data it returned) failed: args[0] is (config key, text)."""


def _key(data_slice: dict, code: dict | None) -> str:
    text = json.dumps({"data": data_slice, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _rss_mb(proc) -> float:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _kill(proc) -> None:
    import psutil

    try:
        victims = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.Error:
        victims = []
    for q in victims:
        try:
            q.kill()
        except psutil.Error:
            pass
    proc.wait()


def _watch(data_slice: dict, seconds: float, memory_mb: float) -> dict:
    """Make the data in a child process within the bounds: {"input": {...}} or {"error": [key, text]}."""
    with tempfile.TemporaryDirectory(prefix="gradscope-probe-") as tmp:
        out, err = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "gradscope.data.probe", str(out)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=os.getcwd())
            proc.stdin.write(json.dumps(data_slice).encode())
            proc.stdin.close()
            start, peak = time.monotonic(), 0.0
            while proc.poll() is None:
                peak = max(peak, _rss_mb(proc))
                if peak > memory_mb:
                    _kill(proc)
                    raise Deferred(f"making its data took more than {memory_mb:.0f} MB, planning's bound")
                if time.monotonic() - start > seconds:
                    _kill(proc)
                    raise Deferred(f"making its data took more than limits.probe_seconds = {seconds:g} s")
                time.sleep(POLL_SECONDS)
        if out.is_file():
            return json.loads(out.read_text())
        tail = " ".join(err.read_text(errors="replace").strip().splitlines()[-3:])
        raise Deferred(f"the process making its data ended with code {proc.returncode} ({tail or 'no message'})")


def input_of(settings: dict, *, results=layout.RESULTS, seconds: float | None) -> dict | None:
    """The dataset's `meta["input"]` ({kind, dim, vocab, n_classes, shape}) as its source makes it;
    None where a bound is passed (or `seconds` is None): the check waits for the train job, and a
    warning (once per data settings and reason) says so. Raises FactoryDataError((key, text)) where the
    source fails on these settings."""
    from gradscope.config import data_slice

    data = {k: v for k, v in data_slice(settings).items() if k != "intervene"}  # a derived set has its parent's input
    gen = data["generator"]
    code = factories.data_code(data)
    key = _key(data, code)
    path = Path(layout.probe_file(key, results))
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        try:
            if seconds is None:
                raise Deferred("limits.probe_seconds is null")
            found = _watch(data, float(seconds), PROBE_MEMORY_MB)
        except Deferred as e:
            if (key, str(e)) not in _SAID:
                _SAID.add((key, str(e)))
                log.warning("data.%s: the model on this data is checked when its train job starts, not now: %s "
                            "(raise limits.probe_seconds, or make its dataset first: planning then reads what it "
                            "made)", gen, e)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(found))
        os.replace(tmp, path)
    if "error" in found:
        key, text = found["error"]
        raise FactoryDataError((key or f"data.{gen}", text))
    return dict(found["input"])


def main(argv: list[str] | None = None) -> None:
    """The child: a data slice on stdin, {"input": ...} or {"error": [key, text]} written to argv[0]."""
    from gradscope.data.dispatch import generate

    out = Path((argv or sys.argv[1:])[0])
    data = json.loads(sys.stdin.read())
    try:
        _, _, meta = generate(data)
        result = {"input": meta["input"]}
    except factories.FactoryError as e:
        result = {"error": [e.key, f"{e.value!r}: {e.reason}"]}
    except ValueError as e:  # the source's own check of the data (labels, finite inputs, file types)
        named = re.match(r"(data(?:\.\w+)+): (.*)", str(e), re.S)  # "data.python.factory: 'm:f', its train split: ..."
        result = {"error": [named[1], named[2]] if named else [None, str(e)]}
    out.write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
