"""Benchmark: the cost and the accuracy of the projection kinds at large k.

    python bench/bench_projections.py                        # everything (about 5 minutes on 2 cores)
    python bench/bench_projections.py --proj-dims 1024 --no-memory --no-quality
    python bench/bench_projections.py --proj-dims 4096 --parts 1024 4096 --no-memory --no-quality

Not a test. Model: the gradscope MLP 784-256-256-10 (ReLU, 269k parameters), cross-entropy,
batch 1024 of Gaussian inputs labelled by a random linear teacher, after 30 steps of SGD
(so the gradients are those of a partly fitted network, not of the initialization).

Cost: per proj_dim k, in one process, each method in its own rounds alternating with the batched
backward (so that the machine's load hits both alike, and one kind's large temporaries do not
slow another: measured here with a throwaway script, the hadamard call at k = 4096 took 2.44x the
backward in rounds of its own and 2.74-2.87x in rounds shared with the Gaussian kind, whose call at
that k allocates hundreds of megabytes), the median wall time of
  batched_backward   forward and backward of the mean loss (the reference cost)
  gaussian           per_example_stats(projection="gaussian"): norms, cosines, projection
  hadamard           per_example_stats(projection="hadamard")
  output_pass        allocate the (1024, k) float32 output and make one multiply-add pass over it:
                     what any projection pays at least once per layer that reaches all k outputs
printed as ratios to the batched backward. Torch's default threads (2 here) unless
OMP_NUM_THREADS is set. `--runs N` repeats the cost table in N fresh processes and prints the
median and range of each ratio over them (bench/runs.py: why one process is not enough here).

Memory (--no-memory skips): per_example_stats over 50,000 examples at k = 1024 in a fresh
subprocess for each kind; "+MB" is the rise of the peak resident set (ru_maxrss) over the
process after imports, model and data were set up, against the size of the projection output
(n x k float32).

Accuracy (--no-quality skips): the exact per-example gradients of 256 examples (vmap), all
32,640 pairs, |projected cosine - exact cosine| at the median and the 99th percentile, for
each kind and for a dense i.i.d. Gaussian projection of the same k (drawn in row blocks),
and the kinds' ratios to the dense Gaussian.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from gradscope import examples  # noqa: E402
from runs import repeat, spread, write_json  # noqa: E402
from gradscope.models import InputSpec, build_model  # noqa: E402

KINDS = ("gaussian", "hadamard")


def setup(n: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"kind": "mlp", "depth": 2, "width": 256, "activation": "relu"},
                        InputSpec("dense", 784, 0, 10))
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(784, 10, generator=gen)
    x = torch.randn(max(n, 1024), 784, generator=gen)
    y = (x @ teacher).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:1024]), y[:1024]).backward()
        opt.step()
    return model.eval(), x[:n], y[:n]


def time_costs(k: int, rounds: int) -> dict:
    model, x, y = setup(1024)

    def backward():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    u, v = torch.randn(1024, k), torch.randn(1024, k)

    def output_pass():  # allocate the (b, k) output and make one multiply-add pass over it: a floor
        torch.zeros(1024, k).addcmul_(u, v)

    methods = {"output_pass": output_pass}
    for kind in KINDS:
        methods[kind] = (lambda kind=kind: examples.per_example_stats(model, x, y, proj_dim=k, batch_size=1024,
                                                                      projection=kind))
    out, backward_s = {}, []
    for name, f in methods.items():  # each in its own rounds with the backward: see the module docstring
        med = interleaved({"batched_backward": backward, name: f}, rounds)
        out[name] = med[name] / med["batched_backward"]
        backward_s.append(med["batched_backward"])
    return out | {"backward_s": statistics.median(backward_s)}


def interleaved(methods: dict, rounds: int) -> dict:
    """Median wall time of each method over `rounds` rounds (every method once per round), after a warm-up
    (factor cache, allocator)."""
    for f in methods.values():
        f()
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, f in methods.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def time_parts(k: int, rounds: int) -> dict:
    """Where the hadamard kind's time goes at k, as ratios to the batched backward: the probe that
    checks the rules on two examples, the forward and backward to the captured outputs, one chunk's
    statistics with every projection switched off (norms and cosines), and the whole call."""
    from gradscope import projection as pj

    model, x, y = setup(1024)
    engine = examples._Engine(model, "cross_entropy", k, 0, "auto", True, "hadamard")
    engine.make_plan(x[:2], y[:2])
    acc = torch.zeros(1024, k)
    kinds = (pj.SampledHadamard, pj.Injection, pj.CountSketch)
    saved = {(c, m): getattr(c, m) for c in kinds for m in ("add_tokens", "add_project") if m in vars(c)}

    def without_projection():
        for c, m in saved:
            setattr(c, m, lambda self, acc, *a: None)
        try:
            engine.chunk(x, y, None, 1024, acc)
        finally:
            for (c, m), f in saved.items():
                setattr(c, m, f)

    def backward():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    methods = {"batched_backward": backward, "probe": lambda: engine.make_plan(x[:2], y[:2]),
               "capture": lambda: engine._capture_pass(x, y, True), "norms_cosines": without_projection,
               "whole_call": lambda: examples.per_example_stats(model, x, y, proj_dim=k, batch_size=1024,
                                                                projection="hadamard")}
    med = interleaved(methods, rounds)
    return {name: med[name] / med["batched_backward"] for name in methods}


def memory_worker(kind: str, k: int, n: int) -> None:
    model, x, y = setup(n)
    examples.per_example_stats(model, x[:8], y[:8], proj_dim=k, projection=kind)  # factors built, imports done
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = examples.per_example_stats(model, x, y, proj_dim=k, batch_size=1024, projection=kind)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rise_mb": (after - before) / 1024, "output_mb": out["grad_proj"].nbytes / 2**20}))


def memory(kind: str, k: int, n: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--memory-worker", kind, str(k), str(n)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def quality(ks: list[int], n: int = 256) -> list[dict]:
    model, x, y = setup(n, seed=1)
    flat = examples.per_example_gradients(model, x, y)  # (n, n_params) float32
    iu = torch.triu_indices(n, n, 1)

    def cos(z):
        z = z.double()
        z = z / z.norm(dim=1, keepdim=True)
        return (z @ z.T)[iu[0], iu[1]]

    exact = cos(flat)
    rows = []
    for k in ks:
        gen = torch.Generator().manual_seed(12345 + k)
        z = torch.zeros(n, k)
        for s in range(0, flat.shape[1], 8192):
            block = flat[:, s : s + 8192]
            z += block @ torch.randn(block.shape[1], k, generator=gen)
        errs = {"dense gaussian": (cos(z) - exact).abs()}
        for kind in KINDS:
            errs[kind] = (cos(examples.project_gradients(flat, model, k, seed=7, projection=kind)) - exact).abs()
        q = {name: (float(e.quantile(0.5)), float(e.quantile(0.99))) for name, e in errs.items()}
        rows.append({"k": k, **q})
    return rows


def print_runs(runs: list[dict], proj_dims: list[int]) -> None:
    print(f"cost over {len(runs)} fresh runs: ratio to the batched backward, median (min-max)")
    print(f"{'k':>6} {'gaussian':>20} {'hadamard':>20} {'output pass':>20}   hadamard in each run")
    for k in map(str, proj_dims):
        cells = "".join(f"{spread([r[k][m] for r in runs]):>21}" for m in ("gaussian", "hadamard", "output_pass"))
        each = " ".join(f"{r[k]['hadamard']:.2f}" for r in runs)
        print(f"{k:>6}{cells}   {each}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proj-dims", type=int, nargs="+", default=[32, 256, 1024, 4096])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory-n", type=int, default=50_000)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--parts", type=int, nargs="*", metavar="K",
                    help="also break the hadamard kind's cost down at these k (probe, capture, norms and cosines)")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the cost table in this many fresh processes (only it: memory, accuracy and parts "
                         "are skipped) and print each ratio's median and range over them")
    ap.add_argument("--memory-worker", nargs=3, metavar=("KIND", "K", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        kind, k, n = args.memory_worker
        memory_worker(kind, int(k), int(n))
        return
    if args.runs > 1:
        print_runs(repeat(__file__, args.runs), args.proj_dims)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MLP 784-256-256-10, batch 1024")
    print("\ncost: median time / batched backward (norms + cosines + projection)")
    print(f"{'k':>6} {'backward ms':>12} {'gaussian':>9} {'hadamard':>9} {'output pass':>12}")
    costs = {}
    for k in args.proj_dims:
        r = costs[str(k)] = time_costs(k, args.rounds)
        print(f"{k:>6} {r['backward_s'] * 1e3:>12.1f} {r['gaussian']:>8.2f}x {r['hadamard']:>8.2f}x "
              f"{r['output_pass']:>11.2f}x", flush=True)
    write_json(args.json_out, costs)
    if args.json_out:  # a run of --runs: the cost table only
        return
    if args.parts:
        print("\nhadamard, parts of one call / batched backward (the chunk's norms and cosines include the capture)")
        print(f"{'k':>6} {'probe':>7} {'capture':>8} {'norms+cosines':>14} {'whole call':>11}")
        for k in args.parts:
            r = time_parts(k, args.rounds)
            print(f"{k:>6} {r['probe']:>6.2f}x {r['capture']:>7.2f}x {r['norms_cosines']:>13.2f}x "
                  f"{r['whole_call']:>10.2f}x", flush=True)
    if not args.no_memory:
        print(f"\nmemory: per_example_stats over {args.memory_n} examples at k = 1024, fresh process per kind")
        for kind in KINDS:
            m = memory(kind, 1024, args.memory_n)
            print(f"{kind:>9}: peak RSS +{m['rise_mb']:.0f} MB for a {m['output_mb']:.0f} MB projection "
                  f"({m['rise_mb'] / m['output_mb']:.2f}x the output)", flush=True)
    if not args.no_quality:
        print("\naccuracy: |projected cosine - exact cosine| over all pairs of 256 examples (median, 99th pct)")
        print(f"{'k':>6} {'dense gaussian':>18} {'gaussian':>18} {'hadamard':>18}   ratio to dense (med, p99)")
        for row in quality(args.proj_dims):
            d = row["dense gaussian"]
            cells = "".join(f"{row[n][0]:>9.4f} {row[n][1]:>8.4f}" for n in ("dense gaussian",) + KINDS)
            ratios = "  ".join(f"{n}: {row[n][0] / d[0]:.2f}, {row[n][1] / d[1]:.2f}" for n in KINDS)
            print(f"{row['k']:>6} {cells}   {ratios}", flush=True)


if __name__ == "__main__":
    main()
