"""Checkpoint schedules: the steps a run saves (`checkpoint_steps`: every, at or log_spaced, and a
dense window), counted without building the list (`checkpoint_count`)."""

from __future__ import annotations

import math

import numpy as np

from gradscope.config.validation import ConfigError

# The most checkpoints a run may have whatever its limits say (the schema's maximum of
# limits.max_checkpoints): checkpoint_steps refuses more before it builds any list.
MAX_CHECKPOINTS = 100_000


def _rule(train: dict) -> dict:
    """train.checkpoints, or the schema's default where a train section leaves it out."""
    if "checkpoints" in train:
        return train["checkpoints"]
    from gradscope.config.validation import section_defaults

    return section_defaults("train")["checkpoints"]


def _dense(train: dict) -> tuple[int, int, int] | None:
    """The dense window of train.checkpoints (dense: {from, to, every}) clipped to 0..train.steps,
    as (first, last, every) of the arithmetic progression first, first + every, ... <= last; None
    without one or where it holds no step."""
    dense, steps = train.get("checkpoints", {}).get("dense"), int(train["steps"])
    if not dense:
        return None
    first, last, every = max(int(dense["from"]), 0), min(int(dense["to"]), steps), int(dense["every"])
    return (first, first + (last - first) // every * every, every) if last >= first else None


def _main_rule(rule: dict) -> str:
    """The main checkpoint rule's key (every, at or log_spaced), whatever order the keys are in."""
    return next(k for k in rule if k != "dense")


def _dense_overlap(train: dict, first: int, last: int, every: int) -> int:
    """How many steps of the dense progression the main rule saves too, counted arithmetically."""
    steps, rule = int(train["steps"]), train["checkpoints"]
    in_dense = lambda s: first <= s <= last and (s - first) % every == 0  # noqa: E731
    if "every" in rule:  # multiples of e in the progression (x = 0 mod e, x = first mod every), and the last step
        e = int(rule["every"])
        g = math.gcd(e, every)
        n = 0
        if first % g == 0:
            j = (-first // g) * pow(every // g, -1, e // g) % (e // g)
            x0, period = first + j * every, e // g * every
            n = (last - x0) // period + 1 if x0 <= last else 0
        return n + (steps % e != 0 and in_dense(steps))
    if "at" in rule:
        return sum(in_dense(s) for s in {int(s) for s in rule["at"] if 0 < int(s) < steps} | {0, steps})
    return sum(in_dense(s) for s in _main_steps(train) | {0, steps})  # log_spaced at most MAX_CHECKPOINTS: a bounded list


def checkpoint_count(train: dict) -> int:
    """How many checkpoints `checkpoint_steps` gives, counted without building the list (for a
    log-spaced schedule, an upper bound where log_spaced is above MAX_CHECKPOINTS; a dense window
    adds its steps the main rule does not save)."""
    steps, rule = int(train["steps"]), _rule(train)
    if "every" in rule:
        every = int(rule["every"])
        n = steps // every + 1 + (steps % every != 0)  # 0, every, 2 every, ... and the last step
    elif "at" in rule:
        n = len({int(s) for s in rule["at"] if 0 < int(s) < steps} | {0, steps})
    elif int(rule["log_spaced"]) > MAX_CHECKPOINTS:
        n = min(int(rule["log_spaced"]) + 1, steps + 1)
    else:
        n = len(_main_steps(train) | {0, steps})
    dense = _dense(train)
    if dense is None:
        return n
    first, last, every = dense
    if "log_spaced" in rule and int(rule["log_spaced"]) > MAX_CHECKPOINTS:
        return min(n + (last - first) // every + 1, steps + 1)  # an upper bound, as above
    return n + (last - first) // every + 1 - _dense_overlap(train, first, last, every)


def _main_steps(train: dict) -> set[int]:
    """The main rule's steps (every, at or log_spaced), without step 0, the last step or a dense window."""
    steps, rule = int(train["steps"]), _rule(train)
    if "every" in rule:
        return set(range(0, steps + 1, int(rule["every"])))
    if "at" in rule:
        return {int(s) for s in rule["at"] if 0 <= int(s) <= steps}
    return set(np.unique(np.round(np.geomspace(1, steps, int(rule["log_spaced"]) - 1)).astype(int)).tolist())


def checkpoint_steps(train: dict) -> list[int]:
    """Checkpoint steps from the train block: always includes 0 and the last step, and with
    checkpoints.dense every `every` steps from `from` to `to` on top of the main rule."""
    steps, rule = int(train["steps"]), _rule(train)
    if ("every" in rule or int(rule.get("log_spaced", 0)) > MAX_CHECKPOINTS or "dense" in rule) \
            and checkpoint_count(train) > MAX_CHECKPOINTS:
        kind = _main_rule(rule) if "dense" not in rule or checkpoint_count({**train, "checkpoints": {
            k: v for k, v in rule.items() if k != "dense"}}) > MAX_CHECKPOINTS else "dense"
        raise ConfigError(f"invalid gradscope config:\n  bad value at train.checkpoints.{kind}: {rule[kind]} over "
                          f"train.steps = {steps} saves {checkpoint_count(train):,} checkpoints; allowed: at most "
                          f"{MAX_CHECKPOINTS:,}")
    chosen = _main_steps(train)
    dense = _dense(train)
    if dense is not None:
        chosen |= set(range(dense[0], dense[1] + 1, dense[2]))
    return sorted(chosen | {0, steps})
