"""The workflow on a real Slurm cluster, through workflow/profiles/slurm and snakemake-executor-plugin-slurm.

A single-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm) is started for
this module by tests/slurm/start_cluster.sh, which installs the packages when they are
missing, and stopped afterwards by tests/slurm/stop_cluster.sh, which stops only the daemons
it started (by their process ids). Where that cannot work (not root, no package access, the
plugin not installed) the tests are skipped with the reason; with GRADSCOPE_REQUIRE_SLURM=1
(.ci/run sets it) they fail instead, so CI always runs them.

The test cluster keeps no accounting database, so the plugin is told to ask squeue instead
of sacct for job states and to check early (`SLURM_ARGS`); Slurm's own record of every job
is the job-completion log (JobCompType=jobcomp/filetxt) in the cluster's folder.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from support.workflow import REPO, SIGNALS_FILES, TINY, copy_workflow, planned

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]

REQUIRED = os.environ.get("GRADSCOPE_REQUIRE_SLURM") == "1"
PROFILE = str(REPO / "workflow" / "profiles" / "slurm")
# What a cluster without an accounting database needs, and quicker status checks for a test.
SLURM_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--slurm-no-account", "--latency-wait", "5"]


def cannot_run(reason: str):
    if REQUIRED:
        pytest.fail(f"GRADSCOPE_REQUIRE_SLURM=1 but {reason}")
    print(f"\nSKIPPED Slurm tests: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Environment variables that point Slurm's commands at a running cluster."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        cannot_run("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    if sys.platform != "linux" or shutil.which("bash") is None:
        cannot_run("needs Linux with bash")
    if os.geteuid() != 0 and shutil.which("scontrol") is None:
        cannot_run("not root, and no Slurm installed to use")
    folder = tmp_path_factory.mktemp("slurm")
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "tests/slurm/start_cluster.sh"), str(folder)], capture_output=True, text=True)
    print(f"\nSlurm cluster start (install if needed): {time.perf_counter() - t0:.1f} s\n{proc.stderr.strip()}")
    if proc.returncode == 3:
        cannot_run(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        subprocess.run(["bash", str(REPO / "tests/slurm/stop_cluster.sh"), str(folder)])
        pytest.fail(f"the Slurm cluster did not start:\n{proc.stdout}\n{proc.stderr}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    own = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if own.startswith("export SLURM_CONF="):
        env["SLURM_CONF"] = own.split("=", 1)[1]
    # Jobs run Snakemake and the scripts in this interpreter's environment (sbatch --export=ALL).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    yield {"env": env, "folder": folder, "own": bool(own)}
    subprocess.run(["bash", str(REPO / "tests/slurm/stop_cluster.sh"), str(folder)], check=False)


def job_record(cluster, jid: str) -> dict:
    """Slurm's record of a finished job: state, folder, memory (MB) and time limit (minutes).

    From the job-completion log of the test cluster, or `scontrol show job` on a cluster that
    was already running (it keeps finished jobs for MinJobAge seconds)."""
    if cluster["own"]:
        lines = (cluster["folder"] / "jobcomp.txt").read_text().splitlines()
        fields = next(dict(f.split("=", 1) for f in line.split() if "=" in f) for line in lines
                      if line.startswith(f"JobId={jid} "))
        tres, limit = fields["Tres"], int(fields["TimeLimit"])
    else:
        text = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True,
                              env=cluster["env"]).stdout
        fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
        tres = fields["TRES"]
        h, m, _ = (int(x) for x in fields["TimeLimit"].split("-")[-1].split(":"))
        limit = 60 * h + m
    mem = re.search(r"mem=(\d+(?:\.\d+)?)([MG])", tres)
    return {"state": fields["JobState"], "workdir": fields["WorkDir"], "time_min": limit,
            "mem_mb": round(float(mem.group(1)) * (1024 if mem.group(2) == "G" else 1))}


def submitted_ids(output: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", output)


LONGER = "experiments={'flips': {'train': {'steps': 20000, 'log_every': 1000, 'checkpoints': {'every': 5000}}}}"
TRAIN = "results/runs/flips/seed~0/train/metrics.parquet"


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Three workflows run side by side on the cluster (each mostly waits on the scheduler):

    - "tiny": the tiny config, to the end;
    - "retry": flips' training made longer; its cluster job is cancelled (scancel, as by a
      preemption or a node failure) once it has stored a checkpoint at step 5000;
    - "failing": flips' training over a damaged dataset, with --retries 0.
    """
    tiny = yaml.safe_load(TINY.read_text())
    base = tmp_path_factory.mktemp("slurm_runs")
    cwds = {name: copy_workflow(base / name, tiny) for name in ("tiny", "retry", "failing")}
    sys.path.insert(0, str(REPO / "src"))
    from gradscope.config import dataset_id, expand_runs, load_config

    flips = next(r for r in expand_runs(load_config(tiny)) if r.id == "flips/seed~0")
    data = cwds["failing"] / "results/data" / dataset_id(flips.settings)
    data.mkdir(parents=True)
    for name in ("train.parquet", "test.parquet", "meta.json"):  # a damaged dataset: training cannot read it
        (data / name).write_text("not a dataset")
    args = {"tiny": [], "retry": [TRAIN, "--config", LONGER], "failing": [TRAIN, "--retries", "0"]}

    procs, logs, t0 = {}, {}, time.perf_counter()
    for name, cwd in cwds.items():
        logs[name] = (base / f"{name}.out").open("w+")
        procs[name] = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", PROFILE, *SLURM_ARGS, *args[name]],
                                       cwd=cwd, env=cluster["env"], stdout=logs[name], stderr=subprocess.STDOUT,
                                       start_new_session=True)
    elapsed, cancelled, deadline = {}, [], time.time() + 1500
    store = cwds["retry"] / "results/runs/flips/seed~0/train/resume"
    try:
        while len(elapsed) < len(procs) and time.time() < deadline:
            for name, proc in procs.items():
                if name not in elapsed and proc.poll() is not None:
                    elapsed[name] = time.perf_counter() - t0
            if not cancelled and (store / "step_00005000.pt").exists():
                running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %Z"], capture_output=True, text=True,
                                         env=cluster["env"]).stdout.splitlines()
                cancelled = [line.split()[0] for line in running if line.split()[1:] == [str(cwds["retry"])]]
                if cancelled:
                    subprocess.run(["scancel", *cancelled], check=True, env=cluster["env"])
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    print("\n" + ", ".join(f"{name} {t:.0f} s" for name, t in elapsed.items()))
    results = {}
    for name, cwd in cwds.items():
        logs[name].seek(0)
        results[name] = {"cwd": cwd, "out": logs[name].read(), "rc": procs[name].returncode}
    results["retry"]["cancelled"] = cancelled
    return results


def _log_of(out: str, jid: str) -> str:
    m = re.search(rf"submitted with SLURM jobid {jid} \(log: ([^)]*)\)", out)
    return m.group(1) if m else ""


def test_tiny_config_runs_on_slurm(cluster, runs):
    cwd, out = runs["tiny"]["cwd"], runs["tiny"]["out"]
    assert runs["tiny"]["rc"] == 0, out[-5000:]
    # every output of the tiny config
    for run in ("flips/seed~0", "mod/wd~0.0_seed~0", "mod/wd~1.0_seed~0"):
        steps = (0, 15, 30) if run.startswith("flips") else (0, 10, 20)
        for rel in ["config.yaml", "train/metrics.parquet", "train/manifest.json", "signals/detections.parquet",
                    "signals/groups.parquet", "signals/summary.json", *SIGNALS_FILES, "figures/training.png", "figures/flagged.png",
                    "figures/curvature.png", "figures/gradient_pca.gif", "report.md",
                    *(f"examples/step={s}/part-0.parquet" for s in steps),
                    *(f"curvature/step={s}/part-0.parquet" for s in steps)]:
            assert (cwd / "results/runs" / run / rel).is_file(), f"{run}/{rel}"
    for exp in ("flips", "mod"):
        for rel in ("runs.parquet", "detectors.parquet", "report.md", "comparison.png", "sharpness.png"):
            assert (cwd / "results/sweeps" / exp / rel).is_file(), f"{exp}/{rel}"
    assert planned(cwd) == {}  # nothing left to do

    # Slurm ran them: every job Snakemake submitted has a COMPLETED record in Slurm's job log,
    # run in this folder, with the memory and time the workflow asked for
    ids = submitted_ids(out)
    assert len(ids) >= 15, out[-3000:]
    records = {jid: job_record(cluster, jid) for jid in ids}
    for record in records.values():
        assert record["state"] == "COMPLETED" and record["workdir"] == str(cwd), record
    train_jobs = [records[j] for j in ids if "/rule_train/" in _log_of(out, j)]
    assert len(train_jobs) == 3 and all(r["mem_mb"] == 1000 and r["time_min"] == 15 for r in train_jobs), train_jobs
    # the per-checkpoint jobs of each run went in as one submission (Snakemake group)
    groups = [line for line in out.splitlines() if "submitted with SLURM" in line and "/group_checkpoints_" in line]
    assert len(groups) == 3, groups  # one per run
    # the local rule (resolve_config) stayed off the cluster
    assert "rule_resolve_config" not in out and "rule_train" in out


def test_killed_cluster_training_job_is_retried_and_resumes(cluster, runs):
    """The cancelled training job is resubmitted by --retries (the profile's `retries: 1`),
    with twice the memory and time, and resumes from its last checkpoint."""
    cwd, out, cancelled = runs["retry"]["cwd"], runs["retry"]["out"], runs["retry"]["cancelled"]
    assert cancelled, f"the training job finished before it could be cancelled:\n{out[-4000:]}"
    assert runs["retry"]["rc"] == 0, out[-5000:]
    ids = [j for j in submitted_ids(out) if "/rule_train/" in _log_of(out, j)]
    assert len(ids) == 2 and ids[0] == cancelled[0], out[-3000:]
    first, retry = job_record(cluster, ids[0]), job_record(cluster, ids[1])
    assert first["state"] == "CANCELLED" and retry["state"] == "COMPLETED", (first, retry)
    assert (retry["mem_mb"], retry["time_min"]) == (2 * first["mem_mb"], 2 * first["time_min"])
    log = (cwd / "logs/train/flips/seed~0.log").read_text()
    resumed = re.search(r"resuming flips/seed~0 from its checkpoint at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 5000, log[-2000:]
    metrics = pd.read_parquet(cwd / TRAIN)
    assert metrics["step"].iloc[-1] == 20000 and len(metrics) == 21  # whole: logged before and after the kill


def test_failed_cluster_job_stops_the_workflow_and_shows_its_log(cluster, runs):
    cwd, out = runs["failing"]["cwd"], runs["failing"]["out"]
    assert runs["failing"]["rc"] != 0
    assert "Error in rule train" in out and "failed, SLURM status is: 'FAILED'" in out, out[-4000:]
    assert "logs/train/flips/seed~0.log" in out  # the rule's log, shown with the error
    slurm_log = re.search(r"(\S*/\.snakemake/slurm_logs/rule_train/\S*\.log)", out)
    assert slurm_log and Path(slurm_log.group(1)).is_file(), out[-4000:]  # the cluster job's log, kept
    assert "Exiting because a job execution failed" in out
    ids = submitted_ids(out)
    assert len(ids) == 1 and job_record(cluster, ids[0])["state"] == "FAILED"
    assert not (cwd / TRAIN).exists()
