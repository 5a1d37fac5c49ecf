"""Checks across keys: what the schema alone cannot say (`CROSS_CHECKS`), and the factories a run
names, imported when the config is loaded."""

from __future__ import annotations

from gradscope import dataset_facts, factories
from gradscope.config.validation import ConfigError, _schema

# ---- checks across keys: what the schema alone cannot say ---------------------------------
# Each check takes one run's settings (defaults filled in) and returns (key, message) pairs,
# the key dotted from the experiment; expand_runs reports them all at once. A new section's
# cross-field rules are one more function in CROSS_CHECKS.
def train_size(data: dict) -> int | None:
    """Training examples of a data block, where the settings alone decide it (else None)."""
    gen = data["generator"]
    block = data.get(gen, {})
    if gen in ("planted_flips", "opposing_features"):
        return int(block["n_train"])
    if gen == "modular":
        return int(round(block["train_fraction"] * dataset_facts.modular_pairs(block["p"], block["op"])))
    if gen == "digits":
        return int(round(block["train_fraction"] * dataset_facts.DIGITS))
    return block.get("subsample_train")  # the labelled sources: known only when subsampled


_is_prime = dataset_facts.is_prime  # gradscope.config's name for it; its one home is gradscope.dataset_facts


def _check_checkpoints(s: dict) -> list:
    steps, rule = s["train"]["steps"], s["train"]["checkpoints"]
    beyond = sorted({v for v in rule.get("at", []) if v > steps})
    return [("train.checkpoints.at", f"step(s) {', '.join(map(str, beyond))} beyond train.steps = {steps} would be "
                                     f"dropped; allowed: steps 0..{steps}")] if beyond else []


def _check_opposing_groups(s: dict) -> list:
    out, groups, n = [], s["signals"]["opposing_groups"], train_size(s["data"])
    if "opposing_groups" not in s["signals"]["detectors"]:
        return out
    if n is not None and groups["top_k"] > n:
        out.append(("signals.opposing_groups.top_k", f"{groups['top_k']} is more than the {n} training examples (it "
                                                      f"would flag every one); allowed: 1..{n}"))
    if groups["n_groups"] > groups["top_k"]:
        out.append(("signals.opposing_groups.n_groups", f"{groups['n_groups']} groups of top_k = {groups['top_k']} "
                                                         f"examples would be groups of one; allowed: 2..{groups['top_k']}"
                                                         " (at most top_k)"))
    return out


def _check_detectors(s: dict) -> list:
    if s["signals"]["detectors"]:
        return []
    known = _schema()["$defs"]["signals"]["properties"]["detectors"]["items"]["enum"]
    return [("signals.detectors", f"[] runs no detector; allowed: one or more of {', '.join(known)}")]


def _check_curvature(s: dict) -> list:
    # subset_size above the training set is not checked: the subset is then the whole set (its
    # ids are in each curvature table's metadata), what a default of 512 should mean on small data.
    c = s["curvature"]
    if c["top_k"] > c["lanczos_iters"]:
        return [("curvature.top_k", f"{c['top_k']} eigenvalues need at least as many Lanczos steps, but "
                                    f"curvature.lanczos_iters = {c['lanczos_iters']}; allowed: top_k <= lanczos_iters")]
    return []


def _check_optim(s: dict) -> list:
    o = s["optim"]
    if o["nesterov"] and (o["name"] != "sgd" or o["momentum"] <= 0):
        why = (f"optim.name is {o['name']!r}" if o["name"] != "sgd" else f"optim.momentum is {o['momentum']}")
        return [("optim.nesterov", f"true needs optim.name 'sgd' with optim.momentum > 0, but {why}; allowed: "
                                   "false, or a momentum in (0, 1]")]
    return []


def _check_data(s: dict) -> list:
    d = s["data"]
    if d["generator"] == "modular" and d["modular"]["op"] == "div" and not dataset_facts.is_prime(d["modular"]["p"]):
        return [("data.modular.p", f"{d['modular']['p']} is not prime, and op 'div' needs a prime modulus (every b "
                                   "must have an inverse); allowed: a prime p, or op add, sub or mul")]
    block = d.get(d["generator"], {})
    if block.get("spurious") is not None and block.get("label_noise", 0) > 0:  # the labelled sources
        key = f"data.{d['generator']}"
        return [(f"{key}.label_noise", f"{block['label_noise']} together with {key}.spurious: both would plant the "
                                       "ground truth (the flipped labels, the conflicting group); allowed: label_noise 0 "
                                       "with a spurious feature, or spurious null")]
    return []


CROSS_CHECKS = [_check_data, _check_optim, _check_checkpoints, _check_detectors, _check_opposing_groups,
                _check_curvature]


def _check_factories(settings: dict, prefix: str) -> None:
    """Every "module:function" the run names (its model's, its data source's) must import now,
    not when its job starts."""
    model, data = settings.get("model", {}), settings.get("data", {})
    named = []
    if model.get("kind") == "python":
        named.append(("model.factory", model.get("factory")))
    if data.get("generator") == "python":  # imported now, called by generate_data
        named.append(("data.python.factory", data["python"].get("factory")))
    for key, value in named:
        try:
            factories.resolve(value, key=f"{prefix}.{key}")
        except factories.FactoryError as e:
            raise ConfigError(f"invalid gradscope config:\n  {e}") from None
