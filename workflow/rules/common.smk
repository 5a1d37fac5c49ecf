# Config loading and validation, run ids, and the input functions every rule uses.
# Rules never dig into the config themselves: they ask the functions here.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from gradscope import artifacts as gs_artifacts
from gradscope import progress as gs_progress
from gradscope import layout
from gradscope import resources as gs_resources
from gradscope.config import ConfigError, compose, data_slice, dataset_id, load_runs, run_steps
from gradscope.config import SCHEMA_PATH, read_config_file, require_device, train_slice


def _composed_config():
    """gradscope's merge rule (docs/configuration.md; `gradscope.config.compose`), not Snakemake's
    key-by-key merge: the Snakefile's config file, then each --configfile (whose experiments
    replace the earlier ones unless it sets extend_experiments), then --config. Each file is
    read again here, so a duplicate key or a bad file is named with its line and column.
    As a module (AS_MODULE, in the Snakefile): the config its `module` statement passes, which the
    importing workflow composed from its own config files and --config."""
    if AS_MODULE:
        return dict(config)
    given = [Path(f).absolute() for f in workflow.overwrite_configfiles]
    own = [f for f in workflow.configfiles if Path(f).absolute() not in given]
    if workflow.config_settings.replace_workflow_config:
        own = []
    overrides = dict(workflow.config_settings.config or {})
    _SOURCES.extend([os.path.relpath(f) for f in own + given] + ["--config"] * bool(overrides))
    return compose({}, [read_config_file(f) for f in own + given], overrides)


_SOURCES = []  # the config files read, in order, and --config: named in front of a bad key or value


try:
    _composed = _composed_config()
    # Limits and each model on one example of its data (gradscope.preflight): once, where the workflow
    # starts; not again in each job's own Snakemake process (a cluster job, a subprocess).
    CONFIG, _runs = load_runs(_composed, SCHEMA_PATH, preflight=not (workflow.remote_exec or workflow.subprocess_exec))
except ConfigError as e:
    named = str(e).startswith("invalid") and _SOURCES  # (a file that does not read names itself)
    raise WorkflowError(f"{' then '.join(_SOURCES)}: {e}" if named else str(e)) from None
if not AS_MODULE:  # (as a module, `config` is the importing workflow's dict: it stays as that workflow made it)
    config.clear()
    config.update(_composed)  # what Snakemake shows (--report, --lint) is the config that runs


onstart:
    # `device: cuda` is checked where the jobs run, before the first starts: here for a local run;
    # a cluster's jobs run elsewhere, and a dry run runs none (neither is known before this point).
    if workflow.local_exec:
        try:
            require_device(CONFIG["device"])
        except ConfigError as e:
            raise WorkflowError(str(e)) from None
RUNS = {run.id: run for run in _runs}
EXPERIMENTS = sorted({run.experiment for run in RUNS.values()})
# Everything an input function needs per run is computed once here, not once per job: a
# sweep of 100 runs with 20 checkpoints each has about 4,600 jobs (bench/bench_dag.py).
DATASET_OF = {run.id: dataset_id(run.settings) for run in RUNS.values()}
# A file damaged since it was written (a truncated checkpoint, Parquet table or JSON) looks current to
# Snakemake's timestamps: said here, with the command that writes it again, on every start, a dry run
# too (a stat per checkpoint, the two ends of each Parquet file, each JSON parsed); not again in each
# job's own Snakemake process (a cluster job, a subprocess). The command carries this invocation's
# --configfile and --config (without them a run of a --configfile is unknown, and the forced target
# fails in an input function); so do the messages of the jobs it starts (gs_artifacts.INVOCATION_ENV).
if not AS_MODULE:
    _INVOCATION = gs_artifacts.invocation_args(
        [os.path.relpath(f) for f in workflow.overwrite_configfiles], workflow.config_settings.config_args or (),
        workflow.config_settings.replace_workflow_config)
    os.environ[gs_artifacts.INVOCATION_ENV] = json.dumps(_INVOCATION)
else:  # as a module: the importing workflow's invocation is not known here
    _INVOCATION = None
if not (workflow.remote_exec or workflow.subprocess_exec):
    _folders = ([layout.run_dir(run_id) for run_id in RUNS] + [layout.sweep_file("report", e).parent for e in EXPERIMENTS]
                + [Path(layout.dataset_file("meta", d)).parent for d in sorted(set(DATASET_OF.values()))])
    for _line in ([line for run_id in RUNS
                   for line in gs_artifacts.damaged_checkpoints(layout.run_file("manifest", run_id), _INVOCATION)]
                  + [line for folder in _folders for line in gs_artifacts.damaged_tables(folder, _INVOCATION)]):
        print(f"gradscope: damaged artifact {_line}", file=sys.stderr)
DATASETS = {DATASET_OF[run.id]: data_slice(run.settings) for run in RUNS.values()}
STEPS = {run.id: run_steps(run) for run in RUNS.values()}
# Experiments whose runs gradscope did not train (`source`: recorded runs, a folder of checkpoints):
# import_run writes their train/ outputs, and their per-checkpoint jobs read each checkpoint file itself.
EXTERNAL = sorted({run.experiment for run in RUNS.values() if run.checkpoints})
_NAMES = "|".join(EXTERNAL)
# (every path has "/" after the experiment: the lookahead stops at the name's end)
TRAINED_EXPERIMENT = f"(?!(?:{_NAMES})/)[A-Za-z0-9_-]+" if EXTERNAL else "[A-Za-z0-9_-]+"
EXTERNAL_EXPERIMENT = f"(?:{_NAMES})" if EXTERNAL else "(?!)"  # (?!) matches nothing
DATASET_FILES = {run_id: {split: layout.dataset_file(split, d) for split in layout.DATASET} for run_id, d in DATASET_OF.items()}
# The per-checkpoint stages (extract_examples, curvature): one job per run, which pays the start-up
# (interpreter, torch, data) once, or one per checkpoint (checkpoint_jobs). Per checkpoint on a
# cluster, the jobs of one run form one Snakemake group (one submission, packed by the profile's
# group-components) with cluster.group_checkpoint_jobs; local runs ignore groups.
PER_RUN = CONFIG["checkpoint_jobs"] == "per_run"
JOB_PER = "run" if PER_RUN else "step"
CHECKPOINT_GROUP = "checkpoints_{experiment}_{run}" if CONFIG["cluster"]["group_checkpoint_jobs"] and not PER_RUN else None


wildcard_constraints:
    experiment="[A-Za-z0-9_-]+",
    run="[^/]+",
    dataset="[^/]+",
    step="[0-9]+",


def get_run(wc):
    return RUNS[f"{wc.experiment}/{wc.run}"]


def get_data_inputs(wc):
    """The files a `files` data source reads, so that Snakemake regenerates the dataset when they
    change; no inputs for the other generators and sources."""
    data = DATASETS[wc.dataset]
    if data["generator"] != "files" or "intervene" in data:  # (an intervention's dataset: get_parent_inputs)
        return []
    return [data["files"][k] for k in ("train", "test") if data["files"][k]]


_CODE_INPUTS = {}


def get_code_inputs(wc):
    """The source files of the researcher's code a job imports (gradscope.factories.source_files): a
    `python` data factory's for generate_data, a `python` model factory's for the stages that build
    the model, so that an edit of that code reruns them and what depends on them. None otherwise."""
    if "dataset" in wc.keys():
        key, block = ("data", wc.dataset), DATASETS[wc.dataset]
        named = block["python"]["factory"] if block["generator"] == "python" else None
        name = "data.python.factory"
    else:
        key, model = ("model", f"{wc.experiment}/{wc.run}"), get_run(wc).settings["model"]
        named = model.get("factory") if model.get("kind") == "python" else None
        name = "model.factory"
    if key not in _CODE_INPUTS:
        from gradscope import factories as gs_factories

        try:
            _CODE_INPUTS[key] = gs_factories.source_files(named, key=name) if named else []
        except gs_factories.FactoryError as e:
            raise WorkflowError(str(e)) from None
    return _CODE_INPUTS[key]


def get_parent_inputs(wc):
    """What an intervention run's dataset derives from (its slice has `intervene`; gradscope.interventions):
    the parent run's dataset files, its detections and, to relabel, its examples tables. None otherwise."""
    block = DATASETS[wc.dataset].get("intervene")
    if block is None:
        return {}
    parent = RUNS[block["parent_run"]]
    files = {f"parent_{split}": path for split, path in DATASET_FILES[parent.id].items()}
    files["detections"] = layout.run_file("signals_detections", parent.id)
    if block["action"] == "relabel":
        files["examples"] = checkpoint_tables(parent, "examples")
    return files


INTERVENTIONS = sorted({run.experiment for run in RUNS.values() if run.settings.get("intervene")})


def get_intervention_runs(wc):
    """An intervention experiment's runs, then its parent's runs of the same seeds (arm `parent`)."""
    runs = get_experiment_runs(wc)
    parents = sorted({r.settings["intervene"]["parent_run"] for r in runs})
    return runs + [RUNS[p] for p in parents]


INTERVENTION_EXPERIMENT = f"(?:{'|'.join(INTERVENTIONS)})" if INTERVENTIONS else "(?!)"  # (?!) matches nothing


def intervention_record(run, wc):
    """What the interventions stage is told of one run (its own or its parent's): arm and settings, its test split."""
    i = run.settings.get("intervene") if run.experiment == wc.experiment else None
    return {"id": run.id, "arm": i["arm"] if i else "parent", "detector": i and i["detector"], "k": i and i["k"],
            "action": i and i["action"], "seed": run.settings["seed"], "test": DATASET_FILES[run.id]["test"]}


def get_intervention_inputs(wc):
    """Every artifact the interventions stage reads, per run of the experiment and of its parent."""
    runs = get_intervention_runs(wc)
    return {
        "metrics": [layout.run_file("metrics", r.id) for r in runs],
        "summaries": [layout.run_file("signals_summary", r.id) for r in runs],
        "timelines": [layout.run_file("timeline_summary", r.id) for r in runs],
        "curvature": [f for r in runs for f in checkpoint_tables(r, "curvature")],
        "examples": [f for r in runs for f in checkpoint_tables(r, "examples")],
        "tests": sorted({DATASET_FILES[r.id]["test"] for r in runs}),
    }


def get_dataset_files(wc):
    return dict(DATASET_FILES[f"{wc.experiment}/{wc.run}"])


def get_steps(run):
    return STEPS[run.id]


# The experiments whose per-checkpoint stages run one job per run (rules extract_examples and curvature
# with PER_RUN): the trained ones. A run gradscope did not train always has one job per checkpoint
# (extract_examples_per_checkpoint, curvature_per_checkpoint), so an added checkpoint runs its own jobs only.
PER_RUN_EXPERIMENT = TRAINED_EXPERIMENT if PER_RUN else "[A-Za-z0-9_-]+"


def per_checkpoint_jobs(run):
    return not PER_RUN or bool(run.checkpoints)


def checkpoint_tables(run, kind):
    """A run's per-checkpoint tables of `kind` (examples, curvature) as the rules declare them: the
    run's folder of them (one job per run) or one file per checkpoint."""
    if not per_checkpoint_jobs(run):
        return [layout.run_file(f"{kind}_dir", run.id)]
    return [layout.run_file(kind, run.id, step=s) for s in get_steps(run)]


def get_checkpoint_inputs(wc):
    """What a per-checkpoint job reads its checkpoints through: a trained run's manifest, or the
    checkpoint files themselves of a run gradscope did not train (so a checkpoint added to its
    folder plans its own jobs only)."""
    run = get_run(wc)
    if not run.checkpoints:
        return {"manifest": layout.run_file("manifest", run.id)}
    return {"checkpoints": [run.checkpoints[s] for s in get_job_steps(wc)]}


def get_checkpoint_files(wc):
    """{step: file} of the job's checkpoints for a run gradscope did not train; {} for a trained run."""
    run = get_run(wc)
    return {str(s): run.checkpoints[s] for s in get_job_steps(wc)} if run.checkpoints else {}


def get_source_inputs(wc):
    """The files import_run reads: a recorded run's metrics, dynamics and checkpoints, or every
    checkpoint of a folder."""
    run = get_run(wc)
    files = {"checkpoints": list(run.checkpoints.values())}
    if "recorded" in run.settings["source"]:
        folder = run.settings["source"]["recorded"]
        files.update(metrics=layout.in_run(folder, "metrics"), dynamics=layout.in_run(folder, "dynamics"))
    return files


def get_job_steps(wc):
    """The checkpoint steps one job of a per-checkpoint stage covers: the run's, or its own."""
    return [int(wc.step)] if "step" in wc.keys() else get_steps(get_run(wc))


def get_examples_files(wc):
    return checkpoint_tables(get_run(wc), "examples")


def get_curvature_inputs(wc):
    """The dataset files and, with curvature.warm_start, the previous checkpoint's eigenvectors
    (Lanczos starts from them; a per-run job carries them from one checkpoint to the next itself)."""
    files = get_dataset_files(wc)
    run = get_run(wc)
    if run.settings["curvature"]["warm_start"] and per_checkpoint_jobs(run):
        earlier = [s for s in get_steps(run) if s < int(wc.step)]
        if earlier:
            files["warm"] = layout.run_file("eigenvectors", run.id, step=earlier[-1])
    return files


def get_curvature_files(wc):
    return checkpoint_tables(get_run(wc), "curvature")


def get_density_figure(wc):
    """The spectral density figure, for runs that compute the density (an optional report input)."""
    run = get_run(wc)
    return [layout.run_file("figure_density", run.id)] if run.settings["curvature"]["density"] else []


def get_influence_summary(wc):
    """The run's influence summary, for runs with influence.enabled (an optional report input)."""
    run = get_run(wc)
    return [layout.run_file("influence_summary", run.id)] if run.settings["influence"]["enabled"] else []


def get_progress_outputs(wc):
    """The progress table and figure (Nanda et al.'s progress measures), for modular add/sub runs with
    progress.enabled (an optional report input): [table, figure], or none."""
    run = get_run(wc)
    if not (run.settings["progress"]["enabled"] and gs_progress.applies(run.settings["data"])):
        return []
    return [layout.run_file("progress", run.id), layout.run_file("figure_progress", run.id)]


def get_settings(section, key=None):
    """A params value: one section of the run's settings, or one key of it (what a rule depends on).

    Where every run has the same value (same repr, which is what Snakemake compares), it is
    that value rather than a function: a sweep over optimizer settings has thousands of
    per-checkpoint jobs with the same examples and curvature settings, and a plain value
    costs Snakemake no function call per job."""
    pick = (lambda s: s[section]) if key is None else (lambda s: s[section][key])
    values = [pick(run.settings) for run in RUNS.values()]
    if len({repr(v) for v in values}) == 1:
        return values[0]
    return lambda wc: pick(get_run(wc).settings)


def get_experiment_runs(wc):
    return [run for run in RUNS.values() if run.experiment == wc.experiment]


def get_sweep_inputs(wc):
    runs = get_experiment_runs(wc)
    return {
        "reports": [layout.run_file("report", r.id) for r in runs],
        "metrics": [layout.run_file("metrics", r.id) for r in runs],
        "summaries": [layout.run_file("signals_summary", r.id) for r in runs],
        "curvature": [f for r in runs for f in checkpoint_tables(r, "curvature")],
        "timelines": [layout.run_file("timeline_summary", r.id) for r in runs],
        # an intervention experiment's effects and their figure (rule interventions)
        **({name: layout.SWEEP[name].format(experiment=wc.experiment) for name in ("effects", "effects_png")}
           if wc.experiment in INTERVENTIONS else {}),
    }


def get_dashboard_inputs(wc):
    """Every artifact a sweep's dashboard reads, so that it is rebuilt exactly when one changes."""
    runs = get_experiment_runs(wc)
    return {
        "metrics": [layout.run_file("metrics", r.id) for r in runs],
        "manifests": [layout.run_file("manifest", r.id) for r in runs],  # written with dynamics.parquet
        "signals": [layout.run_file(f"signals_{name}", r.id) for r in runs for name in layout.SIGNALS],
        "examples": [f for r in runs for f in checkpoint_tables(r, "examples")],
        "curvature": [f for r in runs for f in checkpoint_tables(r, "curvature")],
        "influence": [layout.run_file(f"influence_{name}", r.id) for r in runs if r.settings["influence"]["enabled"]
                      for name in layout.INFLUENCE],
        "timeline": [layout.run_file(f"timeline_{name}", r.id) for r in runs for name in layout.TIMELINE],
        # an intervention experiment's tables (written by the interventions stage), read by its Interventions tab
        **({name: layout.SWEEP[name].format(experiment=wc.experiment) for name in ("interventions", "effects")}
           if wc.experiment in INTERVENTIONS else {}),
    }


def get_all_targets():
    targets = [layout.SWEEP["report"].format(experiment=e) for e in EXPERIMENTS]
    targets += [layout.run_file("report", r.id) for r in RUNS.values()]
    targets += [layout.INDEX]
    return targets


# ---- resources: what each job asks a cluster for (gradscope.resources), per rule and run ----
# Sized from the run's settings; a profile's or the command line's --set-resources
# RULE:mem_mb=... wins over these.
_ESTIMATES = {}


def _estimate(rule_name, wc):
    if rule_name in ("sweep_report", "interventions"):  # (interventions: its runs and its parent's)
        key = (rule_name, wc.experiment)
        if key not in _ESTIMATES:
            runs = get_experiment_runs(wc) if rule_name == "sweep_report" else get_intervention_runs(wc)
            _ESTIMATES[key] = gs_resources.estimate_sweep([r.settings for r in runs])
    elif rule_name == "dashboard":  # the sweep's runs, one at a time, and every run's page data
        key = (rule_name, wc.experiment)
        if key not in _ESTIMATES:
            runs = get_experiment_runs(wc)
            _ESTIMATES[key] = gs_resources.estimate_dashboard([r.settings for r in runs], CONFIG["dashboard"])
    elif rule_name == "dashboard_index":  # every run's metrics and headline figures
        key = (rule_name,)
        if key not in _ESTIMATES:
            _ESTIMATES[key] = gs_resources.estimate_sweep([r.settings for r in RUNS.values()])
    elif rule_name == "generate_data":
        key = (rule_name, wc.dataset)
        if key not in _ESTIMATES:
            run_id = next(i for i, d in DATASET_OF.items() if d == wc.dataset)
            _ESTIMATES[key] = gs_resources.estimate(rule_name, RUNS[run_id].settings)
    else:
        key = (rule_name, f"{wc.experiment}/{wc.run}")
        if key not in _ESTIMATES:
            _ESTIMATES[key] = gs_resources.estimate(rule_name, RUNS[key[1]].settings, per_run=PER_RUN)
    return _ESTIMATES[key]


def get_mem_mb(rule_name):
    return _sized(rule_name, "mem_mb")


def get_runtime(rule_name):
    return _sized(rule_name, "runtime")


def _sized(rule_name, key):
    """Every rule's memory and time grow with each retry (`attempt`: with --retries, a job killed at its
    limit asks for twice its estimate, then three times ...), from the estimate for the job's run (its
    sweep, its dataset, or all runs, for the rules of _PER_SWEEP). Where every run has the same estimate,
    the function multiplies that number (no estimate looked up per job)."""
    if rule_name not in gs_resources.TORCH_RULES and rule_name not in _PER_SWEEP:
        values = {gs_resources.estimate(rule_name, run.settings, per_run=PER_RUN)[key] for run in RUNS.values()}
        if len(values) == 1:
            return per_attempt(values.pop())
    return lambda wc, attempt: _estimate(rule_name, wc)[key] * attempt


# The rules estimated per sweep, per dataset or once (_estimate), not per run
_PER_SWEEP = ("sweep_report", "interventions", "generate_data", "dashboard", "dashboard_index")


def per_attempt(value):
    """A fixed request (memory, time) that grows with each retry as the estimated ones do."""
    return lambda wc, attempt: value * attempt


def get_threads(rule_name):
    """The rule's threads: the config's `threads` block (one number per heavy stage; the schema's default 1)."""
    return CONFIG["threads"][rule_name]


def get_gpu(rule_name):
    """1 when the run's device is "cuda" (sbatch --gpus=1), else 0 (no GPU request). A plain
    number when every run has the same device (one function call less per job)."""
    devices = {run.settings["device"] for run in RUNS.values()}
    if len(devices) == 1:
        return int(devices == {"cuda"} and rule_name in gs_resources.TORCH_RULES)
    return lambda wc: _estimate(rule_name, wc)["gpu"]
