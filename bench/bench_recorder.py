"""Benchmark: the overhead of gradscope.recorder.Recorder at its defaults on a plain minibatch loop.

    python bench/bench_recorder.py                               # both cases, 3000 steps, 3 rounds (~2-3 min here)
    python bench/bench_recorder.py --steps 2000 --rounds 5 --breakdown
    python bench/bench_recorder.py --cases digits_mlp --breakdown

Not a test. Each case is an ordinary PyTorch loop (shuffled minibatches of 64 drawn epoch by
epoch from the training split, forward, cross-entropy, zero_grad, backward, optimizer.step), run

  bare      the loop alone
  recorder  the same loop with a Recorder at its defaults (log_every "auto", checkpoints
            {log_spaced: 10}, dynamics_every "auto"): before_update(step) after backward,
            after_update(step + 1) after optimizer.step(), finish() at the end, into a fresh
            temporary folder each round

with the same seed and the same number of steps, bare then recorder in each of --rounds rounds
(after one untimed warm-up round) so that changes of the machine's load hit both alike. Cases:

  digits_mlp    data {"generator": "digits", "digits": {}} (1,348 train / 449 test, 64 features),
                model {"kind": "mlp", "width": 256} (64-256-256-10, ReLU), SGD lr 0.05 momentum 0.9
  mnist1d_cnn   data {"generator": "mnist1d", "mnist1d": {}} (4,000 train / 1,000 test, (1, 40)),
                model {"kind": "cnn"} (Conv1d 16, 32 channels, max pools, linear head), Adam lr 1e-3

Per case: bare and recorder time per step (median over rounds; the recorder's time is the loop's
steps plus finish(), which writes metrics.parquet, dynamics.parquet and the manifest), the ratio
recorder / bare (median over rounds and range), the same ratio by process CPU time (steadier when
other processes load the machine), what the recorder wrote (metrics rows, checkpoints, dynamics
rows, the interval auto logging settled on), and the target: ratio at most 1.05 (PASS/FAIL).

Part of the overhead is fixed per run, whatever the number of steps: the evaluations of the whole
splits that fall on checkpoint steps (the last step always; others where the auto schedule lands
on one) and the checkpoint saves, plus finish(). It is timed in every recorded round (the recorder's evaluate and
checkpoint save are wrapped: microseconds on about 30 calls a run) and the ratio without it is
printed as "per step": what the overhead tends to in a long run. The constructor (it loads the
data block itself, writes config.yaml, evaluates and checkpoints step 0) is timed on its own and
is in neither ratio. --breakdown adds one instrumented recorder run per case (not in the ratios):
time in before_update (dynamics rows, the rest: grad norm and bookkeeping), after_update
(evaluation at checkpoint and at other steps, checkpoint saves, the rest) and finish(), as shares
of the bare loop. Check: the final parameters of the bare and the recorded loop are equal (the
recorder must not touch the loop's RNG or model).

Threads: torch.set_num_threads(1) by default (the workflow's jobs run with threads: 1, and one
thread is much less noisy on this shared 2-core machine); --threads N to change it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gradscope import data  # noqa: E402
from gradscope.models import build_model  # noqa: E402
from gradscope.recorder import Recorder  # noqa: E402

TARGET = 1.05
SEED = 0
CASES = {
    "digits_mlp": dict(data={"generator": "digits", "digits": {}}, model={"kind": "mlp", "width": 256},
                       optim=("sgd", {"lr": 0.05, "momentum": 0.9})),
    "mnist1d_cnn": dict(data={"generator": "mnist1d", "mnist1d": {}}, model={"kind": "cnn"},
                        optim=("adam", {"lr": 1e-3})),
}


class Case:
    def __init__(self, name: str, batch: int):
        c = CASES[name]
        self.name, self.batch, self.block, self.settings, self.optim = name, batch, c["data"], c["model"], c["optim"]
        (self.x, self.y), (self.x_test, self.y_test), self.spec = data.load(self.block)

    def run(self, steps: int, folder: Path | None, meter: Meter | None = None) -> dict:
        """One training run of `steps` steps; with `folder`, recorded there. Returns timings and what was written."""
        torch.manual_seed(SEED)
        model = build_model(self.settings, self.spec)
        name, kw = self.optim
        opt = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)(model.parameters(), **kw)
        gen = torch.Generator().manual_seed(SEED)
        n = len(self.y)
        rec, setup_s = None, 0.0
        if folder is not None:
            t = time.perf_counter()
            rec = Recorder(folder, model=model, optimizer=opt, model_settings=self.settings, data=self.block,
                           steps=steps, batch_size=self.batch, seed=SEED)
            setup_s = time.perf_counter() - t
            if meter is not None:
                meter.attach(rec)
        order, pos = torch.randperm(n, generator=gen), 0
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(steps):
            if pos + self.batch > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + self.batch]
            pos += self.batch
            loss = F.cross_entropy(model(self.x[idx]), self.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if rec is not None:
                rec.before_update(step)
            opt.step()
            if rec is not None:
                rec.after_update(step + 1)
        out = {"setup_s": setup_s}
        if rec is not None:
            t, c = time.perf_counter(), time.process_time()
            metrics = rec.finish()
            out["finish_s"], out["finish_cpu_s"] = time.perf_counter() - t, time.process_time() - c
            out.update(rows=len(metrics), checkpoints=len(sorted((folder / "train" / "checkpoints").glob("step_*.pt"))),
                       dynamics_rows=len(rec.layer_rows), log_every=rec.log_every)
        out["loop_s"], out["loop_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["params"] = [p.detach().clone() for p in model.parameters()]
        return out


class Meter:
    """Times the recorder's rarely called parts in a recorded run, by wrapping them (a few microseconds per call,
    on about 30 calls a run): evaluation at checkpoint steps and at the other (auto) steps, checkpoint saves,
    dynamics rows. With `per_call`, also every before_update and after_update (about 1 us more per step: used
    only by --breakdown, outside the timed rounds). The constructor's step-0 work is not counted."""

    def __init__(self, per_call: bool = False):
        self.per_call, self.rec, self.s, self.cpu, self.n = per_call, None, {}, {}, {}

    def add(self, key: str, seconds: float, cpu_s: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + seconds
        self.cpu[key] = self.cpu.get(key, 0.0) + cpu_s
        self.n[key] = self.n.get(key, 0) + 1

    def wrap(self, obj, attr: str, key):
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                if self.rec is not None:
                    self.add(key() if callable(key) else key, time.perf_counter() - t, time.process_time() - c)

        setattr(obj, attr, wrapped)
        return obj, attr, fn

    @contextlib.contextmanager
    def installed(self):
        import gradscope.recorder as recmod
        import gradscope.train as trainmod

        def eval_key():  # the recorder sets rec.step before it evaluates
            return "eval_checkpoint" if self.rec.step in self.rec.save_at else "eval_auto"

        originals = [self.wrap(trainmod, "evaluate", eval_key), self.wrap(recmod.checkpoints, "save", "save"),
                     self.wrap(recmod.dynamics, "layer_dynamics", "dynamics")]
        try:
            yield self
        finally:
            for obj, attr, fn in originals:
                setattr(obj, attr, fn)

    def attach(self, rec) -> None:
        """Called right after the constructor: count from here on."""
        self.rec = rec
        if self.per_call:
            for attr in ("before_update", "after_update"):
                self.wrap(rec, attr, attr)

    def fixed_s(self, cpu: bool = False) -> float:
        """Work the checkpoint schedule fixes per run, whatever the number of steps: the evaluations at
        checkpoint steps and the checkpoint saves (finish() is added by the caller); wall or CPU time."""
        d = self.cpu if cpu else self.s
        return d.get("eval_checkpoint", 0.0) + d.get("save", 0.0)


def ms_per_step(seconds: float, steps: int) -> str:
    return f"{1e3 * seconds / steps:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as the workflow's jobs)")
    ap.add_argument("--breakdown", action="store_true", help="also one instrumented recorder run per case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}) (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} CPUs, load average {load}; "
          f"{args.steps} steps, batch {args.batch}, {args.rounds} timed rounds after a warm-up; target: recorder / bare "
          f"<= {TARGET}")
    t_all = time.perf_counter()
    verdicts = []
    for name in args.cases:
        case = Case(name, args.batch)
        bare_s, rec_s, ratios, steady, setups, same, info = [], [], [], [], [], True, None
        cpu_ratios, cpu_steady = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds + 1):  # round 0: warm-up, not timed
                bare = case.run(args.steps, None)
                meter = Meter()
                with meter.installed():
                    rec = case.run(args.steps, Path(tmp) / f"round{r}", meter)
                same = same and all(torch.equal(a, b) for a, b in zip(bare["params"], rec["params"]))
                if r == 0:
                    continue
                bare_s.append(bare["loop_s"])
                rec_s.append(rec["loop_s"])
                ratios.append(rec["loop_s"] / bare["loop_s"])
                fixed = meter.fixed_s() + rec["finish_s"]
                steady.append((rec["loop_s"] - fixed) / bare["loop_s"])
                cpu_ratios.append(rec["loop_cpu_s"] / bare["loop_cpu_s"])
                cpu_steady.append((rec["loop_cpu_s"] - meter.fixed_s(cpu=True) - rec["finish_cpu_s"])
                                  / bare["loop_cpu_s"])
                setups.append(rec["setup_s"])
                info = {**rec, "meter": meter}
        b, rc, ratio = statistics.median(bare_s), statistics.median(rec_s), statistics.median(ratios)
        st, setup, m = statistics.median(steady), statistics.median(setups), info["meter"]
        ok, ok_steady = ratio <= TARGET, st <= TARGET
        verdicts.append((name, ratio, ok, st, ok_steady))
        print(f"\n{name}: data {case.block['generator']} ({len(case.y)} train / {len(case.y_test)} test), model "
              f"{case.settings}, {case.optim[0]} {case.optim[1]}")
        print(f"  bare       {ms_per_step(b, args.steps)} ms/step   rounds: "
              + " ".join(ms_per_step(t, args.steps) for t in bare_s))
        print(f"  recorder   {ms_per_step(rc, args.steps)} ms/step   rounds: "
              + " ".join(ms_per_step(t, args.steps) for t in rec_s) + "   (the steps and finish())")
        print(f"  ratio      {ratio:.3f}x (median; range {min(ratios):.3f}-{max(ratios):.3f}; rounds "
              + " ".join(f"{x:.3f}" for x in ratios) + f")   {'PASS' if ok else 'FAIL'} (target <= {TARGET})")
        print(f"  CPU ratio  {statistics.median(cpu_ratios):.3f}x (process CPU time, median; range {min(cpu_ratios):.3f}-"
              f"{max(cpu_ratios):.3f}): less hit by other processes on a loaded machine than wall time")
        print(f"  wrote      {info['rows']} metrics rows, {info['checkpoints']} checkpoints, {info['dynamics_rows']} "
              f"dynamics rows; auto log_every settled at {info['log_every']}")
        print(f"  fixed      per run, whatever the steps (last round): {m.n.get('eval_checkpoint', 0) // 2} evaluations at "
              f"checkpoint steps {1e3 * m.s.get('eval_checkpoint', 0.0):.0f} ms, {m.n.get('save', 0)} checkpoint saves "
              f"{1e3 * m.s.get('save', 0.0):.0f} ms, finish() {1e3 * info['finish_s']:.0f} ms")
        print(f"  per step   ratio without that fixed work: {st:.3f}x (median; range {min(steady):.3f}-{max(steady):.3f})"
              f"   {'PASS' if ok_steady else 'FAIL'}; what is left: {m.n.get('eval_auto', 0) // 2} other evaluations "
              f"{1e3 * m.s.get('eval_auto', 0.0):.0f} ms, {m.n.get('dynamics', 0)} dynamics calls "
              f"{1e3 * m.s.get('dynamics', 0.0):.0f} ms, and every step's before_update/after_update; "
              f"by CPU time {statistics.median(cpu_steady):.3f}x")
        print(f"  setup      Recorder(...) {1e3 * setup:.0f} ms (median; loads the data block, writes config.yaml, "
              f"evaluates and checkpoints step 0; not in the ratios) = {setup / b:.2f}x the bare loop")
        print(f"  check      final parameters bare == recorded: {'yes' if same else 'NO'}")
        if args.breakdown:
            breakdown(case, args.steps, b)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average at the end: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"target (recorder / bare <= {TARGET}, median over rounds): "
          + "; ".join(f"{n} {r:.3f}x {'PASS' if ok else 'FAIL'} (per step, fixed work excluded: {st:.3f}x "
                      f"{'PASS' if oks else 'FAIL'})" for n, r, ok, st, oks in verdicts))


def breakdown(case: Case, steps: int, bare_s: float) -> None:
    """One instrumented recorder run (not in the ratios): where the recorder's time goes."""
    meter = Meter(per_call=True)
    with tempfile.TemporaryDirectory() as d, meter.installed():
        out = case.run(steps, Path(d) / "run", meter)
    s, n = meter.s, meter.n
    bu, au = s.get("before_update", 0.0), s.get("after_update", 0.0)
    own = out["loop_s"] - bu - au - out["finish_s"]  # this run's loop without the recorder's calls
    print(f"  breakdown  one instrumented recorder run: {1e3 * out['loop_s']:.0f} ms, of which the loop's own work "
          f"{1e3 * own:.0f} ms (the bare median above: {1e3 * bare_s:.0f} ms); shares of the loop's own work:")
    ev = s.get("eval_checkpoint", 0.0) + s.get("eval_auto", 0.0)
    rows = [("before_update", bu, n.get("before_update", 0)),
            ("  dynamics rows (layer_dynamics)", s.get("dynamics", 0.0), n.get("dynamics", 0)),
            ("  the rest (grad norm, bookkeeping)", bu - s.get("dynamics", 0.0), n.get("before_update", 0)),
            ("after_update", au, n.get("after_update", 0)),
            ("  evaluation at checkpoint steps", s.get("eval_checkpoint", 0.0), n.get("eval_checkpoint", 0) // 2),
            ("  evaluation at other steps (auto)", s.get("eval_auto", 0.0), n.get("eval_auto", 0) // 2),
            ("  checkpoint saves", s.get("save", 0.0), n.get("save", 0)),
            ("  the rest (schedule, bookkeeping)", au - ev - s.get("save", 0.0), n.get("after_update", 0)),
            ("finish()", out["finish_s"], 1),
            ("all the recorder's calls", bu + au + out["finish_s"], 2 * n.get("before_update", 0) + 1)]
    for label, sec, calls in rows:
        print(f"    {label:37s} {1e3 * sec:8.1f} ms {100 * sec / own:6.2f}%  {calls:5d} calls "
              f"{1e6 * sec / max(calls, 1):9.1f} us each")


if __name__ == "__main__":
    main()
