"""One status per run, the same everywhere (issue 28, item 6): `gradscope runs`, `gradscope show`, the
dashboards' data and the index page all take it from `gradscope.results.run_status`, and a damaged run
never stops the others from being listed or drawn.

The results are a copy of the tiny workflow run (conftest's `done`) with a checkpoint of flips/seed~0
and an examples partition of mod/wd~1.0_seed~0 cut short, mod/wd~0.0_seed~0 left whole, and a run
long/seed~0 trained by `gradscope train` in another process: looked at while it trains, and again
after a SIGKILL (its config.yaml removed, as a killed Snakemake run has none yet: the workflow writes
it for the report).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gradscope import layout
from gradscope.cli import main
from gradscope.results import STATUSES, run_status

LONG = {"device": "cpu", "experiments": {"long": {
    "data": {"generator": "modular", "modular": {"p": 5, "train_fraction": 0.6}},
    "model": {"depth": 1, "width": 8},
    "train": {"steps": 2_000_000, "log_every": 1000, "checkpoints": {"every": 1_000_000}},  # minutes: killed long before
    "signals": {"opposing_groups": {"top_k": 5, "n_groups": 2}}}}}
DAMAGED = {"flips/seed~0": "train/checkpoints/step_00000015.pt", "mod/wd~1.0_seed~0": "examples/step=10/part-0.parquet"}


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def everywhere(results: Path) -> dict:
    """{run id: {where: status}} as `gradscope runs`, `gradscope show`, `gradscope dashboard` (the sweep pages'
    data), the index page and `gradscope.results.run_status` say it; also the dashboard command's output and
    each run's notes."""
    out: dict = {}
    runs = CliRunner().invoke(main, ["runs", "--results", str(results)])
    assert runs.exit_code == 0 and "Traceback" not in runs.output, runs.output
    for line in runs.output.splitlines()[1:]:
        rid, *cells = line.split()
        status = next(c for c in cells if c in STATUSES)
        out.setdefault(rid, {})["runs"] = status
        out[rid]["runs_line"] = line
    for rid in list(out):
        out[rid]["library"] = run_status(results / "runs" / rid, results.parent / "logs")["status"]
        show = CliRunner().invoke(main, ["show", rid, "--results", str(results)])
        assert show.exit_code == 0 and "Traceback" not in show.output, show.output
        out[rid]["show"] = re.search(r"^\s*status: (\S+)", show.output, re.M).group(1)
        out[rid]["show_note"] = re.search(r"^\s*note: (.*)$", show.output, re.M).group(1) \
            if re.search(r"^\s*note: ", show.output, re.M) else ""
    dash = CliRunner().invoke(main, ["dashboard", "--results", str(results)])
    assert dash.exit_code == 0 and "Traceback" not in dash.output, dash.output
    out["_dashboard_output"] = dash.output
    for page in sorted((results / "sweeps").glob("*/dashboard.html")):
        payload = json.loads(re.search(r'<script type="application/json" id="gs-data">(.*?)</script>',
                                       page.read_text(), re.S).group(1))
        for run in payload["runs"]:
            out[run["id"]]["dashboard"] = run["status"]
            out[run["id"]]["dashboard_detail"] = run["detail"]
            out[run["id"]]["data"] = sorted(run["data"])
    index = (results / "index.html").read_text()
    for exp, body in re.findall(r"<section><h2>(\S+)(.*?)</section>", index, re.S):
        for name, status, rest in re.findall(r'<tr><td class="l">([^<]+)</td><td class="l"><span class="st"[^>]*>(\w+)'
                                             r'</span>(.*?)</td>', body):
            out[f"{exp}/{name}"]["index"] = status
            out[f"{exp}/{name}"]["index_detail"] = rest
    return out


def assert_same(seen: dict, rid: str, status: str) -> None:
    got = {where: seen[rid].get(where) for where in ("library", "runs", "show", "dashboard", "index")}
    assert got == dict.fromkeys(got, status), f"{rid}: {got}"


@pytest.fixture(scope="module")
def broken(done, tmp_path_factory):
    base = tmp_path_factory.mktemp("status")
    results = base / "results"
    shutil.copytree(done / "results", results, ignore=shutil.ignore_patterns("*.html", "*.png", "*.gif"))
    for rid, rel in DAMAGED.items():
        cut_short(results / "runs" / rid / rel)
    config = base / "long.yaml"
    config.write_text(yaml.safe_dump(LONG))
    store = results / "runs" / "long" / "seed~0" / "train" / "resume"
    proc = subprocess.Popen([sys.executable, "-c", "from gradscope.cli import main; main()", "train", "long/seed~0",
                             "--config", str(config), "--results", str(results)], cwd=base, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not list(store.glob("step_*.pt")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        (results / "runs" / "long" / "seed~0" / "config.yaml").unlink()
        during = everywhere(results)
        assert proc.poll() is None, "the trainer ended before it was killed: give it more steps"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    after = everywhere(results)
    return {"results": results, "during": during, "after": after}


def test_a_run_in_training_then_killed_has_one_status_everywhere(broken):
    assert_same(broken["during"], "long/seed~0", "training")
    assert "pid " in broken["during"]["long/seed~0"]["dashboard_detail"]
    assert_same(broken["after"], "long/seed~0", "stopped")
    for where in ("runs_line", "show_note", "dashboard_detail", "index_detail"):
        assert "is gone (killed?)" in broken["after"]["long/seed~0"][where], where
    # the killed run alone is listed too (it used to be `no runs under results/runs`)
    alone = CliRunner().invoke(main, ["runs", "-e", "long", "--results", str(broken["results"])])
    assert alone.exit_code == 0 and "long/seed~0" in alone.output and " stopped " in alone.output, alone.output


def test_damaged_runs_are_damaged_everywhere_naming_the_file_and_the_command(broken):
    for seen in (broken["during"], broken["after"]):
        for rid, rel in DAMAGED.items():
            assert_same(seen, rid, "damaged")
            for where in ("runs_line", "show_note", "dashboard_detail", "index_detail"):
                assert rel in seen[rid][where] and "--force" in seen[rid][where], (rid, where, seen[rid][where])
        assert_same(seen, "mod/wd~0.0_seed~0", "done")


def test_the_dashboard_builds_the_other_runs_and_what_a_damaged_run_still_has(broken):
    after = broken["after"]
    for exp in ("flips", "mod", "long"):
        assert f"sweeps/{exp}/dashboard.html" in after["_dashboard_output"]
    for rid in DAMAGED:  # named by the command, with the file
        assert f"{rid}: damaged: " in after["_dashboard_output"]
    assert {"metrics", "curvature", "detectors", "examples"} <= set(after["mod/wd~0.0_seed~0"]["data"])
    # the truncated examples table leaves out only the per-example view; the truncated checkpoint, nothing
    assert "examples" not in after["mod/wd~1.0_seed~0"]["data"]
    assert {"metrics", "curvature", "detectors"} <= set(after["mod/wd~1.0_seed~0"]["data"])
    assert {"metrics", "curvature", "detectors", "examples"} <= set(after["flips/seed~0"]["data"])


def test_the_page_shows_the_damaged_run(broken, browser):
    from support.browser import console_errors, open_page

    open_page(browser, broken["results"] / "sweeps" / "mod" / "dashboard.html")
    labels = browser.execute_script("return [...document.getElementById('gs-runs').options].map(o => o.text)")
    assert labels == ["wd~0.0_seed~0", "wd~1.0_seed~0 [damaged]"]
    notice = browser.find_element("id", "gs-problems").text
    assert DAMAGED["mod/wd~1.0_seed~0"] in notice and "--force" in notice
    browser.execute_script("gradscope.setRuns(['mod/wd~1.0_seed~0'])")
    browser.execute_script("gradscope.show('examples')")
    assert console_errors(browser) == []


def test_the_lock_is_the_one_training_takes(tmp_path):
    from gradscope import train

    assert layout.in_run(tmp_path, "train_lock") == tmp_path / "train" / train.LOCK  # one name, in layout


def test_a_lock_is_live_while_its_holder_runs(tmp_path):
    # without taking it (a trainer starting then would stop, told the run is locked): the holder's pid
    # on this host, and the program it runs; a holder on another host counts as live
    import socket

    from gradscope import train

    run = tmp_path / "runs" / "e" / "r"
    with train.run_lock(run / "train", "e/r"):
        assert run_status(run) == {"status": "training", "note": f"training (pid {os.getpid()} on "
                                                                  f"{socket.gethostname()}, since "
                                   + run_status(run)["note"].split(", since ", 1)[1]}
    lock = run / "train" / train.LOCK
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for text, status in ((f"pid {dead.stdout.strip()} on {socket.gethostname()}, since 2026-01-01 10:00:00: x", "stopped"),
                         (f"pid {os.getpid()} on {socket.gethostname()}, since 2000-01-01 10:00:00: x",
                          "stopped"),  # the pid, reused: its process started long after the lock was taken
                         ("pid 1 on another-host.example, since 2026-01-01 10:00:00: snakemake", "training"),
                         ("", "stopped")):  # killed before it wrote its name
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(text)
        assert run_status(run)["status"] == status, text
    assert "starts it again" in run_status(run)["note"]  # no resumable checkpoint yet


def test_status_is_cheap(broken):
    # a stat and the two ends of each file: a whole run folder in milliseconds (a loose bound, for a loaded machine)
    folder = broken["results"] / "runs" / "mod" / "wd~0.0_seed~0"
    start = time.perf_counter()
    for _ in range(5):
        run_status(folder, headline=False)
    assert (time.perf_counter() - start) / 5 < 0.25
    assert layout.in_run(folder, "metrics").exists()
