"""One source of truth for settings: every default lives in the schema, and what a reader is
shown of a run (its resolved config.yaml, `gradscope show`) is what applies to it.

- A library function's keyword default for a setting must be the schema's default of that
  setting (checked by introspection over every public function of the library), and a library
  caller that leaves a section out gets what the workflow builds from the schema-filled section.
- Every key of a schema object whose keys depend on a selector (`x-selector`: model.kind,
  optim.name, optim.schedule.kind, data.generator) says where it applies (`x-when`), and a key
  marked as not applying really changes nothing: trimming it away (config.applicable) gives the
  same model, optimizer and schedule.
"""

import copy
import inspect

import pandas as pd
import pytest
import torch
import yaml

from gradscope import (analysis, animate, config, convnets, curvature, data, detections, examples, influence, losses,
                       models, opposing, optim, plots, progress, signal_plots, signals, train, transformer)
from gradscope.config import applicable, dataset_id, load_runs, load_schema, run_config, section, section_defaults
from gradscope.models import InputSpec, build_model

DENSE, TOKENS = InputSpec("dense", 6, 0, 3), InputSpec("tokens", 2, 7, 7)
IMAGES = InputSpec("dense", 3 * 8 * 8, 0, 3, shape=(3, 8, 8))


def run_settings(experiment: dict) -> dict:
    """The settings the workflow resolves for the one run of an experiment."""
    # (build_models=False: some cases pair a model with the default data only to read its settings)
    return load_runs({"experiments": {"e": experiment}, "device": "cpu"}, build_models=False)[1][0].settings


# ---- 1. a keyword default for a setting is the schema's default --------------------------------
# Each module's public functions and classes, and the config sections whose keys their
# parameters mirror (the first section holding a parameter's name decides its default).
MIRRORS = {
    examples: ["examples", "train"],  # proj_dim, seed, batch_size, projection, trainable_only; loss
    losses: ["train"],
    models: ["model"],
    transformer: ["model"],  # the model kinds of their own modules (gradscope.models re-exports them)
    convnets: ["model"],
    optim: ["optim"],
    train: ["train"],
    data: [],  # generators take each setting without a default (data.generate fills their block)
    signals: ["signals"],
    detections: ["signals"],
    opposing: [("signals", "opposing_groups")],
    influence: ["influence"],
    analysis: ["examples", "train"],  # analyze: loss
    plots: ["plots"],
    signal_plots: ["plots"],
    animate: ["plots"],
    # curvature's modules, each against the curvature block (not "train": their batch_size arguments
    # are chunk sizes, not the minibatch)
    **{module: ["curvature"] for module in (curvature.lanczos, curvature.slq, curvature.hutchinson, curvature.hessian,
                                           curvature.traces, curvature.sensitivity, curvature.replay,
                                           curvature.measures)},
    progress: ["progress", "plots"],
}


def _defaults(where) -> dict:
    name, *block = (where,) if isinstance(where, str) else where
    value = section_defaults(name)
    for key in block:
        value = value[key]
    return value


def _keyword_defaults(module):
    """(qualified name, parameter, default) of every public function, method and class of `module`."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        targets = [(name, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            targets += [(f"{name}.{m}", f) for m, f in vars(obj).items()
                        if inspect.isfunction(f) and (m == "__init__" or not m.startswith("_"))]
        for qualname, function in targets:
            for p in inspect.signature(function).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    yield qualname, p.name, p.default


def drifted_defaults() -> list[str]:
    out = []
    for module, sections in MIRRORS.items():
        defaults = [_defaults(s) for s in sections]
        for qualname, parameter, value in _keyword_defaults(module):
            owner = next((d for d in defaults if parameter in d), None)
            if owner is None:
                continue
            want = owner[parameter]
            same = (list(value) == list(want)) if isinstance(value, (list, tuple)) and isinstance(want, (list, tuple)) \
                else (type(value) is type(want) or {type(value), type(want)} <= {int, float}) and value == want
            if not same:
                out.append(f"{module.__name__}.{qualname}({parameter}={value!r}), but the schema's default is {want!r}")
    return out


def test_every_keyword_default_of_a_setting_is_the_schemas():
    assert drifted_defaults() == []


def test_a_drifted_keyword_default_is_found(monkeypatch):
    """The check above can fail: a function planted with proj_dim=64 (the schema says 32)."""
    def per_example_thing(model, *, proj_dim: int = 64, seed: int = 0):
        return model

    per_example_thing.__module__ = examples.__name__
    monkeypatch.setattr(examples, "per_example_thing", per_example_thing, raising=False)
    assert drifted_defaults() == ["gradscope.examples.per_example_thing(proj_dim=64), but the schema's default is 32"]


def test_the_check_reads_the_settings_it_should():
    """Guards against a MIRRORS table that silently matches nothing."""
    seen = {(m.__name__, q, p) for m in MIRRORS for q, p, _ in _keyword_defaults(m)}
    for expected in [("gradscope.examples", "per_example_stats", "proj_dim"),
                     ("gradscope.examples", "per_example_stats", "batch_size"),
                     ("gradscope.examples", "mean_gradient", "batch_size"),
                     ("gradscope.convnets", "ResNet.__init__", "base_width"),
                     ("gradscope.transformer", "Transformer.__init__", "d_head"),
                     ("gradscope.analysis", "analyze", "loss"),
                     ("gradscope.plots", "plot_training", "dpi")]:
        assert expected in seen


# A keyword default that is a setting under another name: (module, qualified name, parameter) ->
# (section, key) of the schema. Checked like the keywords that share the setting's name.
ALIASES = {
    **{("gradscope.curvature.lanczos", "lanczos_top", p): ("curvature", k)
       for p, k in (("k", "top_k"), ("iters", "lanczos_iters"), ("tol", "lanczos_tol"))},
    **{("gradscope.curvature.hessian", "top_eigenvalues", p): ("curvature", k)
       for p, k in (("k", "top_k"), ("iters", "lanczos_iters"), ("tol", "lanczos_tol"))},
    ("gradscope.curvature.slq", "slq_density", "iters"): ("curvature", "density_iters"),
    ("gradscope.curvature.hessian", "spectral_density", "iters"): ("curvature", "density_iters"),
    ("gradscope.curvature.hutchinson", "hutchinson_trace", "tol"): ("curvature", "trace_tol"),
    ("gradscope.curvature.hutchinson", "hutchinson_trace", "max_samples"): ("curvature", "trace_max_samples"),
    ("gradscope.curvature.hessian", "hessian_trace", "tol"): ("curvature", "trace_tol"),
    ("gradscope.curvature.hessian", "hessian_trace", "max_samples"): ("curvature", "trace_max_samples"),
    ("gradscope.curvature.traces", "gauss_newton_trace", "samples"): ("curvature", "gauss_newton_samples"),
    ("gradscope.animate", "layout_projection", "n_points"): ("plots", "gif_points"),
    ("gradscope.animate", "render_projection_animation", "n_points"): ("plots", "gif_points"),
    ("gradscope.analysis", "analyze", "device"): ("device",),
}
# Keywords named so in every module: the training loss, which the curvature modules' MIRRORS leave out.
NAME_ALIASES = {"loss": ("train", "loss")}
# Keyword defaults that no setting decides, and why. A keyword in none of the schema's names, ALIASES
# and these is an error: a renamed keyword (iters for lanczos_iters) cannot hide from the check.
NOT_SETTINGS = {
    "eval": "the mode switch for a model left in training mode (gradscope.modes), not a setting",
    "return_eigenvectors": "what a library call returns, not a setting",
    "exact": "the exact Gauss-Newton trace for tests and small models; the workflow samples",
    "title": "a figure's title, made by the stage",
    "last_only": "the transformer's forward on the last position only, an internal fast path",
    ("gradscope.examples", "per_example_stats", "method"): "the engine, auto or a reference (vmap, loop) for tests",
    ("gradscope.examples", "per_example_stats", "layer_norms"): "an extra output the training dynamics ask for",
    ("gradscope.losses", "one_hot", "dtype"): "a tensor's type",
    ("gradscope.train", "evaluate", "chunk"): "a chunk size of the evaluation, not a batch size",
    ("gradscope.train", "train", "run_id"): "the run's name in the logs, given by the stage",
    ("gradscope.opposing", "kmeans", "n_init"): "k-means restarts, a constant of the method",
    ("gradscope.opposing", "kmeans", "max_iter"): "k-means iterations, a constant of the method",
    ("gradscope.opposing", "find_groups", "n_init"): "as kmeans",
    ("gradscope.influence", "top_influences", "block"): "a block size of the computation",
    ("gradscope.influence", "shown_examples", "per_kind"): "rows the report shows",
    ("gradscope.curvature.lanczos", "start_vector", "mix"): "the warm start's share of a random vector, a constant",
    ("gradscope.curvature.slq", "slq_density", "runs"): "SLQ runs per density: the workflow uses one",
    ("gradscope.curvature.slq", "slq_density", "sigma"): "the density's Gaussian smoothing, a constant",
    ("gradscope.curvature.hessian", "spectral_density", "runs"): "as slq_density",
    ("gradscope.curvature.hessian", "spectral_density", "sigma"): "as slq_density",
    ("gradscope.curvature.hessian", "layer_top", "iters"): "per-layer Lanczos steps (hessian.LAYER_ITERS), no setting",
    ("gradscope.curvature.hessian", "layer_top_eigenvalues", "iters"): "as layer_top",
    ("gradscope.curvature.traces", "fisher_trace", "batch_size"): "a chunk size of the computation, not the minibatch",
    ("gradscope.curvature.traces", "gauss_newton_trace", "batch_size"): "a chunk size, as fisher_trace",
    ("gradscope.curvature.sensitivity", "input_sensitivity", "batch_size"): "a chunk size, as fisher_trace",
    ("gradscope.curvature.sensitivity", "input_sensitivity", "probes"): "Hutchinson probes of the input Hessian, a constant",
    ("gradscope.curvature.sensitivity", "input_sensitivity", "exact_max_dim"): "below it the input trace is exact",
    ("gradscope.signal_plots", "strongest_pairs", "n"): "how many pairs a figure draws",
    ("gradscope.animate", "fit_pca", "n_components"): "the animation's 2-D plane",
    ("gradscope.animate", "robust_limits", "lo_pct"): "the animation's axis limits",
    ("gradscope.animate", "robust_limits", "hi_pct"): "the animation's axis limits",
    ("gradscope.animate", "robust_limits", "margin"): "the animation's axis limits",
    ("gradscope.animate", "select_examples", "seed"): "the stage passes the run's seed",
    ("gradscope.animate", "layout_projection", "seed"): "the stage passes the run's seed",
    ("gradscope.animate", "render_projection_animation", "seed"): "the stage passes the run's seed",
}


def unclassified_defaults() -> list[str]:
    """Keyword defaults (not None) of the MIRRORS modules that match no setting by name, no ALIASES entry
    and no NOT_SETTINGS entry."""
    out = []
    for module, sections in MIRRORS.items():
        defaults = [_defaults(s) for s in sections]
        for qualname, parameter, value in _keyword_defaults(module):
            key = (module.__name__, qualname, parameter)
            if value is None or any(parameter in d for d in defaults) or key in ALIASES or parameter in NAME_ALIASES \
                    or key in NOT_SETTINGS or parameter in NOT_SETTINGS:
                continue
            out.append(f"{module.__name__}.{qualname}({parameter}={value!r})")
    return out


def aliased_drift() -> list[str]:
    out = []
    for module in MIRRORS:
        for qualname, parameter, value in _keyword_defaults(module):
            where = ALIASES.get((module.__name__, qualname, parameter)) or NAME_ALIASES.get(parameter)
            if where is None or value is None:
                continue
            want = load_schema()["properties"]["device"]["default"] if where == ("device",) else \
                section_defaults(where[0])[where[1]]
            if not ((type(value) is type(want) or {type(value), type(want)} <= {int, float}) and value == want):
                out.append(f"{module.__name__}.{qualname}({parameter}={value!r}), but {'.'.join(where)} defaults to {want!r}")
    return out


def test_a_keyword_that_is_a_setting_under_another_name_has_its_default():
    assert aliased_drift() == []
    assert all((m, q, p) in {(mod.__name__, qn, pn) for mod in MIRRORS for qn, pn, _ in _keyword_defaults(mod)}
               for m, q, p in ALIASES), "an ALIASES entry names a keyword that no longer exists"


def test_every_keyword_default_is_a_setting_or_said_not_to_be():
    assert unclassified_defaults() == []


def test_a_renamed_keyword_cannot_hide(monkeypatch):
    """lanczos_top(n_iters=100) (the schema says lanczos_iters: 50): no name matches, and it is caught."""
    def lanczos_top(operator, *, k: int = 1, n_iters: int = 100, tol: float = 0.001, seed: int = 0):
        return operator

    lanczos_top.__module__ = curvature.lanczos.__name__
    monkeypatch.setattr(curvature.lanczos, "lanczos_top", lanczos_top)
    assert unclassified_defaults() == ["gradscope.curvature.lanczos.lanczos_top(n_iters=100)"]


# ---- 2. an empty section gives what the workflow builds from the schema -------------------------
@pytest.mark.parametrize("kind, spec", [("mlp", DENSE), ("mlp", TOKENS), ("transformer", TOKENS), ("cnn", IMAGES),
                                        ("resnet", IMAGES), ("vgg", IMAGES)])
def test_a_model_from_a_bare_section_is_the_workflows(kind, spec):
    workflow = run_settings({"data": {"generator": "modular"}, "model": {"kind": kind}})["model"]
    torch.manual_seed(0)
    bare = build_model({} if kind == "mlp" else {"kind": kind}, spec)
    torch.manual_seed(0)
    full = build_model(workflow, spec)
    a, b = bare.state_dict(), full.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    if kind == "mlp":  # the schema's width, not the 64 build_model once used
        assert max(p.shape[0] for p in bare.parameters() if p.ndim == 2) == section_defaults("model")["width"]


def test_training_from_bare_sections_is_the_workflows(tmp_path):
    """model {}, optim {} and train {steps} give the workflow's run: the same metrics and the
    same dynamics log (the schema's dynamics_every, not 0)."""
    block = {"n_train": 40, "n_test": 20, "n_features": 4}
    workflow = run_settings({"data": {"generator": "planted_flips", "planted_flips": block}, "train": {"steps": 4}})
    tr, te, meta = data.generate({"generator": "planted_flips", "planted_flips": block})
    spec = InputSpec.from_dict(meta["input"])
    data.write_dataset(tr, te, meta, tmp_path / "d" / "train.parquet", tmp_path / "d" / "test.parquet",
                       tmp_path / "d" / "meta.json")
    splits = [data.load_split(tmp_path / "d", s)[:2] for s in ("train", "test")]
    bare = {"data": workflow["data"], "model": {}, "optim": {}, "train": {"steps": 4}, "seed": 0, "device": "cpu"}
    full = {k: workflow[k] for k in ("data", "model", "optim", "train", "seed", "device")}
    a = train.train(bare, *splits, spec, tmp_path / "bare", "bare").drop(columns="wall_s")
    b = train.train(full, *splits, spec, tmp_path / "full", "full").drop(columns="wall_s")
    pd.testing.assert_frame_equal(a, b)
    dyn_a, dyn_b = (pd.read_parquet(tmp_path / r / "dynamics.parquet") for r in ("bare", "full"))
    assert len(dyn_a) > 0 and sorted(dyn_a["step"].unique()) == [0, 4]
    pd.testing.assert_frame_equal(dyn_a.drop(columns=[c for c in dyn_a if "wall" in c]),
                                  dyn_b.drop(columns=[c for c in dyn_b if "wall" in c]))


def test_optimizer_and_schedule_from_bare_sections_are_the_workflows():
    workflow = run_settings({"data": {"generator": "modular"}})["optim"]
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    a, b = optim.build_optimizer([p], {}), optim.build_optimizer([q], workflow)
    assert type(a) is type(b) and [{k: v for k, v in g.items() if k != "params"} for g in a.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in b.param_groups]
    assert [optim.lr_at(s, {}, 10) for s in range(10)] == [optim.lr_at(s, workflow, 10) for s in range(10)]


# ---- 3. where each key applies -----------------------------------------------------------------
def selector_objects(node, where=""):
    """(where, object schema) of every schema object under `node` that has an x-selector."""
    if isinstance(node, dict):
        if "x-selector" in node:
            yield where, node
        for key, value in node.items():
            yield from selector_objects(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from selector_objects(value, f"{where}[{i}]")


def test_every_key_of_a_selected_object_says_where_it_applies():
    found = dict(selector_objects(config.load_schema()))
    assert {"$defs.data", "$defs.model", "$defs.optim", "$defs.optim.properties.schedule"} <= set(found)
    for where, node in found.items():
        selector = node["x-selector"]
        choices = node["properties"][selector]["enum"]
        for key, sub in node["properties"].items():
            if key == selector:
                continue
            when = sub.get("x-when")
            assert when == "all" or (isinstance(when, list) and when and set(when) <= set(choices)), \
                f"{where}.properties.{key}: x-when {when!r}; give `all` or a list of {selector} values from {choices}"


def test_the_selectors_choices_are_what_the_code_builds():
    schema = config.load_schema()["$defs"]
    assert schema["model"]["properties"]["kind"]["enum"] == list(models.MODEL_KINDS)
    assert schema["optim"]["properties"]["name"]["enum"] == [*optim.OPTIMIZERS, optim.CUSTOM]  # custom: never built
    assert set(schema["data"]["properties"]["generator"]["enum"]) == set(data.GENERATORS) | set(data.SOURCES)


# Values other than the default for every model, optimizer and schedule key: set where they do
# not apply, they must change nothing. A new key fails the set checks below until it has one.
OTHER_MODEL = {"channels": [4], "base_width": 8, "blocks": [1, 1], "norm": "group", "groups": 2, "factory": "nowhere:f",
               "kwargs": {"a": 1}, "depth": 1, "width": 7, "activation": "tanh", "input_encoding": "embedding",
               "embed_dim": 5, "d_model": 16, "n_heads": 2, "d_head": 4, "d_mlp": 8, "n_layers": 2, "layer_norm": True,
               "init": "nanda", "init_scale": 2.0}
OTHER_OPTIM = {"lr": 0.05, "momentum": 0.5, "nesterov": True, "alpha": 0.5, "weight_decay": 0.1, "betas": [0.5, 0.6],
               "eps": 0.01, "warmup_steps": 2, "grad_clip": 1.0}
OTHER_SCHEDULE = {"min_lr_ratio": 0.5, "step_size": 3, "gamma": 0.5, "metric": "test_loss", "factor": 0.3, "patience": 0,
                  "threshold": 0.2}


def _properties(*path) -> dict:
    node = config.load_schema()["$defs"]
    for key in path:
        node = node[key]
    return node["properties"]


def test_every_key_has_a_value_to_try():
    assert set(OTHER_MODEL) == set(_properties("model")) - {"kind"}
    assert set(OTHER_OPTIM) == set(_properties("optim")) - {"name", "schedule"}
    assert set(OTHER_SCHEDULE) == set(_properties("optim", "properties", "schedule")) - {"kind"}


def _with_others(chosen: dict, others: dict, name: str) -> dict:
    """`chosen` plus every other key at its other value where it does not apply (and the schema allows it)."""
    trimmed = applicable({name: section(name, chosen)})[name]
    out = dict(chosen)
    for key, value in others.items():
        if key not in trimmed:
            try:
                section(name, {**out, key: value})
            except config.ConfigError:  # not allowed together (e.g. model.init nanda for an MLP)
                continue
            out[key] = value
    return out


@pytest.mark.parametrize("kind, spec", [("mlp", DENSE), ("mlp", TOKENS), ("transformer", TOKENS), ("cnn", IMAGES),
                                        ("resnet", IMAGES), ("vgg", IMAGES)])
def test_model_keys_that_do_not_apply_change_nothing(kind, spec):
    full = section("model", _with_others({"kind": kind}, OTHER_MODEL, "model"))
    trimmed = applicable({"model": full})["model"]
    assert set(full) - set(trimmed), "nothing was trimmed"
    torch.manual_seed(0)
    a = build_model(full, spec).state_dict()
    torch.manual_seed(0)
    b = build_model(trimmed, spec).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_model_keys_that_apply_are_kept():
    """The converse: a key kept for a kind does change that kind's model (so x-when is not too wide)."""
    for kind, spec in [("mlp", TOKENS), ("transformer", TOKENS), ("cnn", IMAGES), ("resnet", IMAGES), ("vgg", IMAGES)]:
        kept = applicable({"model": section("model", {"kind": kind})})["model"]
        for key in set(kept) - {"kind"}:
            base = {"kind": kind, **({"input_encoding": "embedding"} if key == "embed_dim" else {}),
                    **({"norm": "group"} if key == "groups" else {})}
            torch.manual_seed(0)
            a = build_model(base, spec)
            torch.manual_seed(0)
            b = build_model({**base, key: OTHER_MODEL[key]}, spec)
            sa, sb = a.state_dict(), b.state_dict()
            differs = list(sa) != list(sb) or any(sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]) for k in sa) \
                or str(a) != str(b)
            assert differs, f"model.{key} is kept for kind {kind} but changes nothing there"


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "plateau"])
def test_optim_keys_that_do_not_apply_change_nothing(name, schedule):
    chosen = _with_others({"name": name, "momentum": 0.0 if name == "sgd" else 0.5}, OTHER_OPTIM, "optim")
    chosen["schedule"] = {"kind": schedule, **{k: v for k, v in OTHER_SCHEDULE.items()
                                                if k not in applicable({"optim": section("optim", {"schedule": {
                                                    "kind": schedule}})})["optim"]["schedule"]}}
    full = section("optim", chosen)
    trimmed = applicable({"optim": full})["optim"]
    assert set(full) - set(trimmed) and (schedule == "plateau" or set(full["schedule"]) - set(trimmed["schedule"]))
    steps = []
    for cfg in (full, trimmed):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5))
        opt = optim.build_optimizer([p], cfg)
        plateau = optim.Plateau(cfg.get("schedule"))
        lrs = []
        for step in range(12):
            lr = optim.lr_at(step, cfg, 12) * plateau.scale
            lrs.append(lr)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            (p ** 2).sum().backward()
            opt.step()
            plateau.observe({"train_loss": 1.0, "test_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5})
        steps.append((lrs, p.detach().clone(), optim.sharpness_threshold(cfg)))
    assert steps[0][0] == steps[1][0] and torch.equal(steps[0][1], steps[1][1]) and steps[0][2] == steps[1][2]


# ---- 4. the resolved config and `gradscope show` hold what applies ----------------------------
MOD_MLP = {"data": {"generator": "modular"}, "model": {"kind": "mlp"}}
MOD_TRANSFORMER = {"data": {"generator": "modular"}, "model": {"kind": "transformer"}, "optim": {"name": "adamw"}}


def test_a_modular_mlp_run_lists_only_its_own_settings():
    shown = applicable(run_settings(MOD_MLP))
    assert set(shown["data"]) == {"generator", "modular"}
    assert "d_head" not in shown["model"] and "channels" not in shown["model"] and shown["model"]["width"] == 128
    assert set(shown["optim"]) == {"name", "lr", "momentum", "nesterov", "weight_decay", "warmup_steps", "grad_clip",
                                   "schedule"}
    assert shown["optim"]["schedule"] == {"kind": "constant"}
    assert shown["curvature"] == run_settings(MOD_MLP)["curvature"]  # sections without a selector are whole


def test_a_transformer_run_lists_d_head_and_not_width():
    shown = applicable(run_settings(MOD_TRANSFORMER))
    assert "d_head" in shown["model"] and "width" not in shown["model"] and "init_scale" in shown["model"]
    assert "betas" in shown["optim"] and "momentum" not in shown["optim"]


@pytest.mark.parametrize("experiment", [MOD_MLP, MOD_TRANSFORMER,
                                        {"data": {"generator": "digits"}, "model": {"kind": "cnn"},
                                         "optim": {"name": "rmsprop", "schedule": {"kind": "plateau"}}},
                                        {"data": {"generator": "planted_flips"},
                                         "optim": {"schedule": {"kind": "cosine", "min_lr_ratio": 0.1}}}])
def test_the_trimmed_config_resolves_to_the_same_settings(experiment):
    """Round trip: the trimmed config, validated again, is the run's full settings (every key
    dropped was at its default), and its ids are the run's."""
    settings = run_settings(experiment)
    shown = applicable(settings)
    again = {s: section(s, shown[s]) for s in config.SECTIONS}
    assert again == {s: settings[s] for s in config.SECTIONS}
    assert config.dataset_id(shown) == config.dataset_id(settings)
    assert applicable({**settings, **again}) == shown


def test_applicable_leaves_the_full_settings_alone_and_reads_partial_ones():
    settings = run_settings(MOD_MLP)
    before = copy.deepcopy(settings)
    applicable(settings)
    assert settings == before  # the jobs' settings are not touched
    assert applicable({}) == {} and applicable({"model": {"width": 3}}) == {"model": {"width": 3}}  # kind mlp by default
    assert applicable({"model": {"kind": "transformer", "width": 3}}) == {"model": {"kind": "transformer"}}


@pytest.mark.workflow
@pytest.mark.slow
def test_resolve_config_writes_the_trimmed_config_and_show_prints_it(tmp_path):
    from click.testing import CliRunner
    from support.workflow import copy_workflow, snakemake

    from gradscope.cli import main

    cfg = {"device": "cpu", "experiments": {"mlp": {**MOD_MLP, "train": {"steps": 5}},
                                            "tf": {**MOD_TRANSFORMER, "train": {"steps": 5}}}}
    cwd = copy_workflow(tmp_path / "wf", cfg)
    targets = ["results/runs/mlp/seed~0/config.yaml", "results/runs/tf/seed~0/config.yaml"]
    snakemake(cwd, "--cores", "1", *targets)
    mlp, tf = (yaml.safe_load((cwd / t).read_text()) for t in targets)
    _, runs = load_runs(cfg)
    assert mlp == run_config(runs[0].settings) and tf == run_config(runs[1].settings)
    assert mlp == {**applicable(runs[0].settings), "dataset": {"id": dataset_id(runs[0].settings)}}
    assert set(mlp["data"]) == {"generator", "modular"} and "d_head" not in mlp["model"] and "width" in mlp["model"]
    assert "d_head" in tf["model"] and "width" not in tf["model"]
    result = CliRunner().invoke(main, ["show", "tf/seed~0", "--results", str(cwd / "results")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("settings:") + 1
    block = [line for line in lines[start:][:next((i for i, line in enumerate(lines[start:]) if not line.startswith(" ")),
                                                   None)]]
    shown = yaml.safe_load("\n".join(line[2:] for line in block))  # show prints the settings as YAML
    assert "d_head" in shown["model"] and "width" not in shown["model"]
