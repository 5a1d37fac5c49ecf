import copy

import yaml

import pytest

from gradscope.config import ConfigError, checkpoint_steps, dataset_id, expand_runs, load_config, train_slice
from support.workflow import REPO

BASE = {
    "experiments": {
        "grok": {
            "data": {"generator": "modular", "modular": {"p": 11}},
            "optim": {"name": "adamw", "lr": 0.01},
            "grid": {"optim.weight_decay": [0.0, 1.0]},
            "seeds": [0, 1],
        }
    }
}


def config(**changes):
    c = copy.deepcopy(BASE)
    c["experiments"]["grok"].update(changes)
    return c


def test_defaults_are_filled_and_runs_expand_with_readable_ids():
    resolved = load_config(BASE)
    runs = expand_runs(resolved)
    assert [r.id for r in runs] == ["grok/wd~0.0_seed~0", "grok/wd~0.0_seed~1", "grok/wd~1.0_seed~0", "grok/wd~1.0_seed~1"]
    s = runs[2].settings
    assert s["optim"]["weight_decay"] == 1.0 and s["seed"] == 0 and s["device"] == "auto"
    assert s["model"]["depth"] == 2 and s["train"]["checkpoints"] == {"log_spaced": 10}  # schema defaults
    assert s["data"]["modular"]["train_fraction"] == 0.4
    assert runs[2].varying == {"wd": 1.0, "seed": 0}


def test_runs_share_a_dataset_unless_the_data_differ():
    runs = expand_runs(load_config(BASE))
    assert len({dataset_id(r.settings) for r in runs}) == 1
    other = config(data={"generator": "modular", "modular": {"p": 13}})
    assert dataset_id(expand_runs(load_config(other))[0].settings) != dataset_id(runs[0].settings)
    # a setting of a generator not in use does not change the dataset (its block is not in the id) ...
    settings = copy.deepcopy(runs[0].settings)
    settings["data"]["planted_flips"] = {"n_train": 7}
    assert dataset_id(settings) == dataset_id(runs[0].settings)
    # ... and a config that sets one is refused, naming it: it would change nothing
    unused = config(data={"generator": "modular", "modular": {"p": 11}, "planted_flips": {"n_train": 7}})
    with pytest.raises(ConfigError, match=r"bad key at experiments\.grok\.data\.planted_flips: \{'n_train': 7\} is set but "
                                          r"applies to none of the experiment's runs \(data\.generator is 'modular'"):
        load_config(unused)


def test_keys_that_apply_to_none_of_an_experiments_runs_are_refused():
    # an optimizer's key under another optimizer, a schedule's under another schedule, another kind's model key
    bad = config(optim={"name": "adam", "momentum": 0.9, "schedule": {"kind": "cosine", "gamma": 0.5}},
                 model={"depth": 1, "width": 8, "d_head": 4})
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert "experiments.grok.optim.momentum: 0.9 is set but applies to none" in text and "'sgd', 'rmsprop'" in text
    assert "experiments.grok.optim.schedule.gamma: 0.5" in text and "schedule.kind is 'cosine'" in text
    assert "experiments.grok.model.d_head: 4" in text and "model.kind is 'mlp'" in text
    assert "width" not in text.replace("d_head", "")  # what applies is not named
    # a key that applies to some of the runs (a grid over the selector) is fine
    grid = config(optim={"name": "sgd", "momentum": 0.9}, grid={"optim.name": ["sgd", "adam"]})
    assert len(expand_runs(load_config(grid))) == 4  # 2 optimizers x 2 seeds


def test_train_slice_leaves_out_what_training_does_not_use():
    s = expand_runs(load_config(BASE))[0].settings
    sl = train_slice(s)
    assert set(sl) == {"data", "model", "optim", "train", "seed", "device"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"optim": {"name": "adamw", "lrr": 0.1}}, ["'lrr'", "experiments.grok.optim", "allowed:", "lr", "weight_decay"]),
        ({"optim": {"name": "adamx"}}, ["experiments.grok.optim.name", "'adamx'", "allowed:", "'adamw'"]),
        ({"optim": {"lr": -1}}, ["experiments.grok.optim.lr", "-1"]),
        ({"grid": {"optim.weight_decay": [0.0, "big"]}}, ["experiments.grok", "weight_decay", "'big'", "number"]),
        ({"grid": {"optim.nonsense": [1]}}, ["'nonsense'", "allowed:"]),
        ({"train": {"checkpoints": {"every": 5, "at": [1]}}}, ["experiments.grok.train.checkpoints"]),
    ],
)
def test_bad_config_names_key_value_and_what_is_allowed(changes, expected):
    with pytest.raises(ConfigError) as err:
        load_config(config(**changes))
    for text in expected:
        assert text in str(err.value)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="'experimentz'"):
        load_config({**BASE, "experimentz": {}})


@pytest.mark.parametrize("rule", [{"every": 7}, {"at": [3, 50, 999]}, {"log_spaced": 6}])
def test_checkpoint_steps_include_first_and_last(rule):
    steps = checkpoint_steps({"steps": 100, "checkpoints": rule})
    assert steps[0] == 0 and steps[-1] == 100 and steps == sorted(set(steps))
    assert all(0 <= s <= 100 for s in steps)
    if "every" in rule:
        assert steps == list(range(0, 100, 7)) + [100]
    if "at" in rule:
        assert steps == [0, 3, 50, 100]
    if "log_spaced" in rule:
        assert len(steps) <= 6 and 1 in steps


def test_numbers_given_as_text_by_command_line_overrides_are_values():
    c = config(optim={"name": "adamw", "lr": "0.02", "grad_clip": "null"}, train={"steps": "7"})
    s = expand_runs(load_config(c))[0].settings
    assert s["optim"]["lr"] == 0.02 and s["optim"]["grad_clip"] is None and s["train"]["steps"] == 7
    assert s["data"]["generator"] == "modular"


def test_key_order_in_the_file_does_not_change_the_settings():
    a = expand_runs(load_config(BASE))[0].settings
    reordered = {"experiments": {"grok": dict(reversed(list(BASE["experiments"]["grok"].items())))}}
    b = expand_runs(load_config(reordered))[0].settings
    assert repr(a) == repr(b)  # Snakemake compares params by repr


@pytest.mark.parametrize("path", sorted((REPO / "config").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    runs = expand_runs(load_config(yaml.safe_load(path.read_text())))
    assert runs and len({r.id for r in runs}) == len(runs)
