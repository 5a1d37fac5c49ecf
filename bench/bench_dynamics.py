"""Overhead of the dynamics log on the default grokking run (a benchmark, not a test).

Trains the default config's grokking run (weight decay 1.0) with the dynamics log at its
default interval and with it off, alternating repeats so machine noise hits both alike, and
prints the wall-time ratio. Target: under 1.10.

    python bench/bench_dynamics.py [--steps 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from gradscope import data, train
from gradscope.config import expand_runs, load_config, train_slice
from gradscope.models import InputSpec

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="override the run's steps (default: the config's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    config = load_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    run = next(r for r in expand_runs(config) if r.id == "grokking/wd~1.0_seed~0")
    settings = train_slice(run.settings)
    settings["device"] = "cpu"
    if args.steps:
        settings["train"]["steps"] = args.steps
    train_df, test_df, meta = data.generate(settings["data"])
    folder = Path(tempfile.mkdtemp())
    data.write_dataset(train_df, test_df, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
    splits = data.load_split(folder, "train")[:2], data.load_split(folder, "test")[:2]
    spec = InputSpec.from_dict(meta["input"])
    default_every = settings["train"]["dynamics_every"]
    times = {"off": [], "on": []}
    for i in range(args.repeats):
        for label, every in (("off", 0), ("on", default_every)):
            s = {**settings, "train": {**settings["train"], "dynamics_every": every}}
            t = time.perf_counter()
            train.train(s, *splits, spec, folder / f"{label}{i}", run.id)
            times[label].append(time.perf_counter() - t)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {run.id}, {settings['train']['steps']} steps, "
          f"log_every {settings['train']['log_every']}, dynamics_every {default_every}")
    print(f"dynamics off: {off:.2f} s   on: {on:.2f} s   (medians of {args.repeats})   ratio on/off: {on / off:.3f}")


if __name__ == "__main__":
    main()
