"""Before any job: what each run would cost, and whether its model fits its data.

`gradscope validate` and the workflow's start (workflow/rules/common.smk) both call `check`
through `gradscope.config.load_runs`, after the schema and the cross-key checks:

- Limits (the config's top-level `limits` block; its schema says each default): the number of
  checkpoints a run saves, its training job's planned time, and the memory each of its jobs is
  estimated to take (`gradscope.resources.estimate`, the figures a cluster is asked for) against
  this machine's memory. Time and memory only where the settings decide the data's size (the
  built-in generators): resources.py sizes a torchvision, files or python source by a generous
  guess, which would refuse small data on a small machine. Each is counted arithmetically from the settings, so nothing here
  grows with `train.steps`; a run past a limit is refused, naming the key, the value and the
  estimate, and the limit key that would let it through.
- The model: every distinct (model settings, input) is built once, on the CPU, and called on one
  example of its data (zeros of the data's per-example shape and type, in eval mode, without
  gradients); the logits must be (1, n_classes) and some parameter must require grad. The input
  comes from the dataset's meta.json where the dataset exists, else from the settings
  (`input_spec`): the built-in generators fix it, a `files` source is read for it (the input
  array's header or one row, and the labels in chunks for the class count), a known torchvision
  set by name. A `python` data source (or a torchvision set gradscope does not know) is only known
  once its data are made: planning makes them in a watched child process (`gradscope.data.probe`:
  at most 1 GB and `limits.probe_seconds`, once per version of the factory's code), and where
  that passes a bound, the model is checked at the start of its train job instead
  (`gradscope.pipeline.train_run`), with the same message, and a warning says so.
- `examples.proj_dim` at most the parameters the projection covers (more would be padding), or
  at most its default on a model smaller than that.

A model is first built on torch's "meta" device (no memory), to count its parameters; only one
of at most BUILD_LIMIT_PARAMETERS is built for real, a larger one is called on meta tensors
(shapes only). Either way planning stays far below 1 GB whatever the config says.
"""

from __future__ import annotations

import functools
import json
import math
import os
import zipfile
from pathlib import Path

from gradscope import config as cfg
from gradscope import factories, layout, resources
from gradscope.data import probe

DEFAULT_PROJ_DIM = 32  # the schema's examples.proj_dim default
BUILD_LIMIT_PARAMETERS = 20_000_000  # above this a model is checked on the meta device only (no weights allocated)
# The jobs of a trained run whose memory is checked, and those of a run gradscope did not train.
TRAINED_RULES = ("generate_data", "train", "extract_examples", "curvature", "detect_signals", "influence", "progress")
# The generators whose size the settings decide; the sources (torchvision, files, python) are known
# to resources.py only by a generous guess, so their memory and time estimates are not refused.
SIZED = ("planted_flips", "modular", "opposing_features", "digits", "mnist1d")
IMPORTED_RULES = ("generate_data", "import_run", "extract_examples", "curvature", "detect_signals", "influence")


def _fmt(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def machine_memory_mb() -> int:
    """This machine's physical memory in MB (psutil where installed, else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total // 1_000_000)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1_000_000)


def limits(config: dict) -> dict:
    """The config's `limits` block with its defaults (the schema's), max_memory_mb resolved to this machine's."""
    given = dict(config.get("limits") or {})
    schema = cfg._schema()["properties"]["limits"]["properties"]
    out = {k: given.get(k, v.get("default")) for k, v in schema.items()}
    out["memory_source"] = "limits.max_memory_mb" if out["max_memory_mb"] is not None else \
        "this machine's memory; set limits.max_memory_mb to plan for bigger machines"
    if out["max_memory_mb"] is None:
        out["max_memory_mb"] = machine_memory_mb()
    return out


# ---- limits --------------------------------------------------------------------------------
def _checkpoint_problem(train: dict, limit: int) -> str | None:
    n = cfg.checkpoint_count(train)
    rule = train["checkpoints"] if "checkpoints" in train else cfg.section_defaults("train")["checkpoints"]
    if n <= limit:
        return None
    steps = int(train["steps"])
    kind = next(k for k in rule if k != "dense")  # the main rule; a dense window adds to it
    if kind == "every":
        fix = f"allowed: every >= {_fmt(math.ceil(steps / max(limit - 1, 1)))}"
    elif kind == "log_spaced":
        fix = f"allowed: log_spaced <= {_fmt(limit - 1)}"
    else:
        fix = f"allowed: at most {_fmt(limit)} steps"
    if rule.get("dense"):
        fix += f", and fewer in train.checkpoints.dense (every {_fmt(rule['dense']['every'])} steps)"
    return (f"train.checkpoints.{kind}", f"{_fmt(rule[kind]) if kind != 'at' else 'a list'} over train.steps = "
            f"{_fmt(steps)} saves {_fmt(n)} checkpoints, more than limits.max_checkpoints = {_fmt(limit)}; {fix} (or "
            f"raise limits.max_checkpoints)")


def _sizing(settings: dict) -> str:
    d = resources.data_size(settings)
    params, _ = resources.model_size(settings)
    return (f"a {settings['model']['kind']} of about {_fmt(params)} parameters, {_fmt(d['n_train'])} training and "
            f"{_fmt(d['n_test'])} test examples, batch {settings['train']['batch_size'] or 'full'}")


def limit_problems(settings: dict, lim: dict, imported: bool = False) -> list[tuple[str, str]]:
    """(key, text) for each limit one run's settings break; arithmetic only (nothing grows with steps)."""
    out = []
    if not imported:
        problem = _checkpoint_problem(settings["train"], int(lim["max_checkpoints"]))
        if problem:
            return [problem]  # the estimates below count checkpoints too: one message is enough
    if settings["data"]["generator"] not in SIZED:
        return out  # sized by resources.py's generous guess (as CIFAR-100), not by the data: not refused on it
    rules = IMPORTED_RULES if imported else TRAINED_RULES
    if settings["data"]["generator"] != "modular":
        rules = tuple(r for r in rules if r != "progress")
    if not settings.get("influence", {}).get("enabled", True):
        rules = tuple(r for r in rules if r != "influence")
    over = []
    for rule in rules:
        est = resources.estimate(rule, settings)
        if est["mem_mb"] > lim["max_memory_mb"]:
            over.append((rule, est["mem_mb"]))
        if rule == "train" and lim["max_train_minutes"] is not None and est["runtime"] > lim["max_train_minutes"]:
            out.append(("train.steps", f"{_fmt(settings['train']['steps'])} plans an estimated {_fmt(est['runtime'])} "
                                       f"minutes of training ({_sizing(settings)}), more than limits.max_train_minutes "
                                       f"= {_fmt(lim['max_train_minutes'])}; allowed: fewer steps or a smaller model "
                                       f"or data (or raise limits.max_train_minutes)"))
    if over:
        rule, mb = max(over, key=lambda r: r[1])
        jobs = ", ".join(f"{r} {mb_ / 1000:,.1f} GB" for r, mb_ in over)
        key = _memory_key(settings, rules, lim["max_memory_mb"])
        value = settings
        for part in key.split("."):
            value = value[part]
        out.append((key, f"{_fmt(value) if isinstance(value, (int, float)) else repr(value)}: a run needs an estimated "
                         f"{mb / 1000:,.1f} GB of memory in its {rule} job ({jobs}; {_sizing(settings)}), more than "
                         f"limits.max_memory_mb = "
                             f"{_fmt(lim['max_memory_mb'])} MB ({lim['memory_source']}); allowed: a smaller model, "
                             f"data or batch (or raise limits.max_memory_mb)"))
    return out


DATA_SIZE_KEYS = {"planted_flips": "n_train", "opposing_features": "n_train", "modular": "p", "mnist1d": "num_samples",
                  "digits": "train_fraction"}
MODEL_SIZE_KEYS = {"mlp": "width", "transformer": "d_model", "cnn": "channels", "resnet": "base_width",
                   "vgg": "base_width"}


def _memory_key(settings: dict, rules, limit_mb: int) -> str:
    """The setting that makes a run too big: its data's size where the schema's default data of the
    same generator would fit, else its model's width where the default model of its kind would."""
    import copy

    def fits(s):
        return all(resources.estimate(r, s)["mem_mb"] <= limit_mb for r in rules)

    gen, kind = settings["data"]["generator"], settings["model"]["kind"]
    trial = copy.deepcopy(settings)
    trial["data"][gen] = {**cfg.section("data", {"generator": gen})[gen], "seed": settings["data"][gen].get("seed", 0)}
    if fits(trial):
        return f"data.{gen}.{DATA_SIZE_KEYS[gen]}"
    trial = copy.deepcopy(settings)
    trial["model"] = {**settings["model"], **{k: v for k, v in cfg.section("model", {"kind": kind}).items()
                                              if k == MODEL_SIZE_KEYS.get(kind)}}
    if kind in MODEL_SIZE_KEYS and fits(trial):
        return f"model.{MODEL_SIZE_KEYS[kind]}"
    return "train.batch_size" if settings["train"]["batch_size"] is None else "model"


# ---- the input of one example ----------------------------------------------------------------
VISION_SHAPES = {"MNIST": [1, 28, 28], "FashionMNIST": [1, 28, 28], "KMNIST": [1, 28, 28], "CIFAR10": [3, 32, 32],
                 "CIFAR100": [3, 32, 32], "SVHN": [3, 32, 32]}


class Unknown(Exception):
    """The data's input is known only once its data are made (a python source): checked at train start."""


def input_spec(settings: dict, results=layout.RESULTS) -> tuple[dict, str]:
    """({kind, dim, vocab, n_classes, shape}, where it came from) of a run's data, without making the data.

    Raises Unknown where only making the data tells; ValueError (naming the data key) where the
    settings cannot make data at all."""
    meta = Path(layout.dataset_file("meta", cfg.dataset_id(settings), results))
    if meta.is_file():
        try:
            made = json.loads(meta.read_text())
            if made.get("code") == factories.data_code(settings["data"]):  # not made by code edited since
                return dict(made["input"]), f"the dataset {meta}"
        except (OSError, ValueError, KeyError):
            pass  # a damaged meta file: the dataset is made again, so derive the input from the settings
    data = settings["data"]
    gen = data["generator"]
    g = data[gen]
    if gen == "modular":
        return {"kind": "tokens", "dim": 2, "vocab": int(g["p"]), "n_classes": int(g["p"]), "shape": [2]}, "the settings"
    if gen == "opposing_features" and 2 * int(g["patch"]) > int(g["side"]):
        raise ValueError(("data.opposing_features.patch", f"{g['patch']}: two background patches of side {g['patch']} do "
                                                          f"not fit in a {g['side']}x{g['side']} image; allowed: "
                                                          f"1..{int(g['side']) // 2} (at most side/2)"))
    if gen in ("planted_flips", "opposing_features", "digits", "mnist1d"):
        d = resources.data_size(settings)
        shape = [1, 40] if gen == "mnist1d" else [d["features"]]
        return {"kind": "dense", "dim": d["features"], "vocab": 0, "n_classes": d["classes"], "shape": shape}, "the settings"
    if gen == "torchvision" and g.get("name") in VISION_SHAPES:
        shape = VISION_SHAPES[g["name"]]
        return ({"kind": "dense", "dim": math.prod(shape), "vocab": 0, "n_classes": resources._VISION_SIZES[g["name"]][3],
                 "shape": shape}, "the settings")
    if gen == "files":
        return _files_spec(g)
    raise Unknown(gen)


@functools.lru_cache(maxsize=64)
def _files_spec_cached(train: str, test: str | None, x_key: str, y_key: str, shape: tuple | None, stamp: tuple):
    paths = [train] + ([test] if test else [])
    per_example, largest = None, -1
    for path in paths:
        x_shape, labels_max = _peek(Path(path), x_key, y_key)
        per_example = per_example or x_shape
        largest = max(largest, labels_max)
    if shape is not None:
        per_example = list(shape)
    per_example = list(per_example) or [1]
    return ({"kind": "dense", "dim": math.prod(per_example), "vocab": 0, "n_classes": max(largest + 1, 2),
             "shape": per_example}, f"{', '.join(paths)}")


def _files_spec(g: dict) -> tuple[dict, str]:
    stamp = tuple((p, Path(p).stat().st_mtime_ns, Path(p).stat().st_size) if Path(p).is_file() else (p,)
                  for p in (g["train"], g.get("test")) if p)
    if not all(len(s) == 3 for s in stamp):
        raise Unknown("files")  # a missing file is said by generate_data (data.files.train: no such file)
    try:
        return _files_spec_cached(g["train"], g.get("test"), g["x_key"], g["y_key"],
                                  tuple(g["shape"]) if g.get("shape") else None, stamp)
    except Unknown:
        raise
    except Exception:  # an unreadable file is named by generate_data, with the file and its reason
        raise Unknown("files") from None


CHUNK = 1 << 20  # labels read this many at a time: a label array of any length costs a few MB


def _peek(path: Path, x_key: str, y_key: str) -> tuple[list[int], int]:
    """(per-example input shape, largest label) of one .npz or Parquet file, reading the input's
    header (or one row) and the labels in chunks."""
    import numpy as np

    if path.suffix.lower() == ".npz":
        with zipfile.ZipFile(path) as z:
            def header(name):
                f = z.open(name + ".npy")
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                return f, shape, fortran, dtype

            f, x_shape, _, _ = header(x_key)
            f.close()
            f, y_shape, _, dtype = header(y_key)
            largest = -1
            with f:
                left = int(np.prod(y_shape))
                while left:
                    n = min(left, CHUNK)
                    chunk = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype, count=n)
                    largest, left = max(largest, int(chunk.max())), left - n
        return list(x_shape[1:]), largest
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from gradscope.data import _column_array

    file = pq.ParquetFile(path)
    first = next(file.iter_batches(batch_size=1, columns=[x_key]))
    import pyarrow as pa

    x_shape = list(_column_array(pa.chunked_array([first.column(0)]), f"column {x_key!r} of {path}").shape[1:])
    largest = -1
    for batch in file.iter_batches(batch_size=CHUNK, columns=[y_key]):
        largest = max(largest, int(pc.max(batch.column(0)).as_py()))
    return x_shape, largest


# ---- the model on one example ----------------------------------------------------------------
def _shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _key_of(model: dict, error: str) -> str:
    """The model key a built-in model's construction error is about."""
    if model["kind"] == "python":
        return "model.factory"
    if "groups" in error:
        return "model.groups"
    if "pooling" in error and model["kind"] == "cnn":
        return "model.channels"
    if "activation" in error:
        return "model.activation"
    return "model.kind"


def _value_text(model: dict, key: str):
    return repr(model[key.split(".", 1)[1]])


@functools.lru_cache(maxsize=256)
def _model_problem(model_json: str, spec_json: str, trainable_only: bool) -> tuple[tuple[str, str] | None, int | None]:
    """((key, text) or None, parameters the projection covers) of one model settings on one input; cached."""
    import torch

    from gradscope import factories
    from gradscope.models import InputSpec, build_model

    model, spec_d = json.loads(model_json), json.loads(spec_json)
    spec = InputSpec.from_dict(spec_d)
    what = f"{model['factory']!r}" if model["kind"] == "python" else f"model.kind {model['kind']!r}"
    dtype = torch.long if spec.kind == "tokens" else torch.float32
    example = f"one example of the data, shape {_shape_text((1, *spec.shape))} {str(dtype).split('.')[-1]}"

    def problem(key, text):
        return (key, f"{_value_text(model, key)}: {text}"), None

    with torch.random.fork_rng(devices=[]):  # leave the caller's random state as it was
        built, device = None, "meta"
        try:
            with torch.device("meta"):
                built = build_model(model, spec)
            n_all = sum(p.numel() for p in built.parameters())
        except Exception:  # code that does not run on the meta device (e.g. loads weights): built for real below
            n_all = None
        if n_all is None or n_all <= BUILD_LIMIT_PARAMETERS:
            device = "cpu"
            try:
                built = build_model(model, spec)
            except factories.FactoryError as e:
                return problem("model.factory", e.reason)
            except Exception as e:
                key = _key_of(model, str(e))
                return problem(key, f"building it for the data's input {_shape_text(spec.shape)} "
                                    f"({spec.kind}, {spec.n_classes} classes) fails: {e}")
        params = [p for p in built.parameters()]
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            return problem("model.factory" if model["kind"] == "python" else "model.kind",
                           f"the model has no trainable parameters (none of its {len(params)} parameter tensors "
                           "requires grad); allowed: a model with at least one parameter that requires grad")
        x = torch.zeros((1, *spec.shape), dtype=dtype, device=device)
        built.eval()
        try:
            with torch.no_grad():
                out = built(x)
        except Exception as e:
            if device == "meta" and isinstance(e, NotImplementedError):
                out = None  # an operation meta tensors lack: the shape is checked by the train job
            else:
                return problem(_key_of(model, str(e)) if model["kind"] != "python" else "model.factory",
                               f"calling {what} on {example} raised {type(e).__name__}: {e}; expected a model taking "
                               f"(batch, *input_shape) = (batch, {', '.join(map(str, spec.shape))})")
        want = (1, spec.n_classes)
        if out is not None and (not isinstance(out, torch.Tensor) or tuple(out.shape) != want):
            got = _shape_text(tuple(out.shape)) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            return problem("model.factory" if model["kind"] == "python" else "model.kind",
                           f"on {example} it gives logits of shape {got}; expected (1, n_classes) = "
                           f"{_shape_text(want)}: one output per class of the data ({spec.n_classes} classes)")
        covered = sum(p.numel() for p in (trainable if trainable_only else params))
    return None, int(covered)


def model_problem(model: dict, spec: dict, trainable_only: bool = True) -> tuple[tuple[str, str] | None, int | None]:
    """((key, text) or None, parameters the gradient projection covers) of a model settings on an input spec."""
    spec = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()}
    return _model_problem(json.dumps(model, sort_keys=True), json.dumps(spec, sort_keys=True), bool(trainable_only))


def check_model(model: dict, spec, trainable_only: bool = True) -> None:
    """`model_problem` as a ConfigError: for the train job of a run whose input was not known at
    planning (a python data source)."""
    spec_d = spec if isinstance(spec, dict) else {"kind": spec.kind, "dim": spec.dim, "vocab": spec.vocab,
                                                    "n_classes": spec.n_classes, "shape": list(spec.shape)}
    found, _ = model_problem(cfg.filled("model", model), spec_d, trainable_only)
    if found:
        raise cfg.ConfigError(f"invalid gradscope config:\n  bad value at {found[0]}: {found[1]}")


# ---- all runs --------------------------------------------------------------------------------
def check(config: dict, runs: list, *, build_models: bool = True, results=layout.RESULTS) -> None:
    """Every limit and model problem of the runs, at once, as one ConfigError (see the module docstring)."""
    lim = limits(config)
    found: dict[str, tuple[str, list[str]]] = {}  # message -> (experiment, its runs)
    per_experiment: dict[str, int] = {}
    for run in runs:
        s = run.settings
        per_experiment[run.experiment] = per_experiment.get(run.experiment, 0) + 1
        problems = limit_problems(s, lim, imported=bool(run.checkpoints))
        if build_models and not problems and not run.checkpoints:
            try:
                try:
                    spec, _ = input_spec(s, results)
                except Unknown:
                    spec = probe.input_of(s, results=results, seconds=lim["probe_seconds"])  # None: deferred
            except ValueError as e:
                if not (e.args and isinstance(e.args[0], tuple)):
                    raise
                problems.append(e.args[0])
                spec = None
            if spec is not None:
                problem, covered = model_problem(s["model"], spec, s["examples"]["trainable_only"])
                if problem:
                    problems.append(problem)
                elif covered is not None and int(s["examples"]["proj_dim"]) > max(covered, DEFAULT_PROJ_DIM):
                    # (the default itself is let through on a model smaller than it: a few padded columns)
                    problems.append(("examples.proj_dim", f"{_fmt(s['examples']['proj_dim'])} is more than the "
                                     f"{_fmt(covered)} {'trainable ' * bool(s['examples']['trainable_only'])}parameters "
                                     f"of the model (a projection that wide is mostly padding); allowed: "
                                     f"1..{_fmt(max(covered, DEFAULT_PROJ_DIM))}"))
        for key, text in problems:
            found.setdefault(f"bad value at experiments.{run.experiment}.{key}: {text}", (run.experiment, []))[1].append(
                run.name)
    if found:
        lines = [text + ("" if len(names) == per_experiment[exp] else f" (run{'s' * (len(names) > 1)} {', '.join(names)})")
                 for text, (exp, names) in found.items()]
        raise cfg.ConfigError("invalid gradscope config:\n  " + "\n  ".join(lines))
