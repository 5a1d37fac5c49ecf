"""Benchmark: per-example gradient statistics, gradscope against the usual tools.

    python bench/bench_examples.py                 # both models, proj_dim 32 and 512
    python bench/bench_examples.py --models mlp --proj-dims 32 --rounds 3 --no-memory

Not a test. Every method computes the same work on the same inputs: each example's exact
gradient norm, its dot product and cosine with the mean gradient of the batch, and its
projection to k dimensions with gradscope's (Kronecker-structured, fixed-seed) projection.
The peers materialize the (batch x parameters) per-example gradients and then compute these
statistics per parameter block (no extra concatenation; the projection of a block is
(b, rows, cols) @ B, then a reduction against A, which is the cheapest way to project
materialized gradients: 2 b n_params k flops). Methods:

  batched_backward  forward + backward of the mean loss (loss.backward(), the reference cost)
  gradscope         gradscope.examples.per_example_stats (all keys, incl. loss, margin, ...)
  vmap              torch.func vmap(grad) over the batch, then the statistics
  opacus            opacus.GradSampleModule(loss_reduction="sum") grad_sample, then the statistics
  backpack          backpack BatchGrad (loss reduction "sum") grad_batch, then the statistics
  loop              one forward/backward per example on the first --loop-batch examples,
                    time per example extrapolated to the full batch

Models: the gradscope MLP 784-256-256-1 (ReLU, 267k parameters) on random Gaussian inputs
with loss "mse" and one output: 0.5 (f(x) - 1)^2 (one_hot of class 0 is the constant target
1, a regression-style loss; cross-entropy with one class has zero gradient); and the
gradscope transformer (Nanda et al.: d_model 128, 4 heads, d_mlp 512, 1 layer) on p = 113
modular addition pairs with cross-entropy. Opacus and BackPACK assume every layer input has
a batch axis; the transformer's positional embedding is indexed by arange (no batch axis),
on which both return wrong-shaped gradients, so for them only the positional lookup is
rewritten to index by arange expanded over the batch (same function).

Timing: one process per (model, proj_dim) runs every method once per round, --rounds rounds
after a warm-up, so that changes of the machine's load hit every method alike; printed: the
median and the minimum wall time over rounds, and the ratio to the batched backward by
median, by minimum and by median CPU time (process_time, all threads). Torch's default
threads unless OMP_NUM_THREADS is set. Memory: every (model, method) also runs twice in a
fresh subprocess; "peak MB" is its ru_maxrss (peak resident set, whole process) and "+MB" the
increase of ru_maxrss over the process after imports, model and data were set up, i.e. what
the method itself added at its peak (--no-memory skips this). The results of every method
are checked against gradscope's (max relative difference printed).

Also printed: bytes per example and write throughput of the gradscope examples Parquet table
(gradscope.artifacts.write_parquet with gradscope.pipeline.examples_columns) for float16 and
float32 projections at proj_dim 32 and 512.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gradscope import examples  # noqa: E402
from gradscope.losses import per_example_loss  # noqa: E402
from gradscope.models import InputSpec, build_model  # noqa: E402

METHODS = ["batched_backward", "gradscope", "vmap", "opacus", "backpack", "loop"]
PEERS = ["vmap", "opacus", "backpack", "loop"]
SEED = 0


# ---- models and data (deterministic: every subprocess builds the same) ----------------------
def setup(name: str, batch: int):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    if name == "mlp":
        spec = InputSpec("dense", 784, 0, 1)
        model = build_model({"kind": "mlp", "depth": 2, "width": 256, "activation": "relu"}, spec)
        x = torch.randn(batch, 784, generator=gen)
        y = torch.zeros(batch, dtype=torch.long)
        return model, x, y, "mse"
    if name == "transformer":
        p = 113
        spec = InputSpec("tokens", 2, p, p)
        model = build_model({"kind": "transformer"}, spec)
        x = torch.randint(p, (batch, 2), generator=gen)
        y = (x[:, 0] + x[:, 1]) % p
        return model, x, y, "cross_entropy"
    raise ValueError(name)


def batch_positions(model):
    """For Opacus/BackPACK: index the transformer's positional embedding by arange expanded over the batch."""
    if not hasattr(model, "pos_embed"):
        return model

    def residual(self, tokens, last_only=False):
        seq = torch.cat([tokens, torch.full_like(tokens[:, :1], self.eq_token)], dim=1)
        pos = torch.arange(seq.shape[1], device=seq.device).expand_as(seq)
        x = self.embed(seq) + self.pos_embed(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=last_only and i == len(self.blocks) - 1)
        return x

    model.residual = types.MethodType(residual, model)
    return model


# ---- the statistics from materialized per-example gradients ----------------------------------
def stats_from_blocks(blocks: dict, model, factors) -> dict:
    """blocks: {param name: (b, *shape)} -> grad_norm, grad_cos_mean, grad_proj (as gradscope)."""
    sq = dots = proj = None
    mean_sq = 0.0
    for name, _ in model.named_parameters():
        g = blocks[name]
        b = g.shape[0]
        flat = g.reshape(b, -1)
        mean = flat.mean(0)
        s, d, p = flat.pow(2).sum(1), flat @ mean, factors[name].project(g)
        sq, dots, proj = (s, d, p) if sq is None else (sq + s, dots + d, proj + p)
        mean_sq += float(mean.pow(2).sum())
    norm = sq.sqrt()
    return {"grad_norm": norm, "grad_cos_mean": dots / (norm * math.sqrt(mean_sq)), "grad_proj": proj}


# ---- methods: each returns a callable doing the whole work once, returning the statistics ----
def make_method(method, model, x, y, loss, k, loop_batch):
    factors = examples.projection_factors(model, k, SEED)
    names = [n for n, _ in model.named_parameters()]

    if method == "batched_backward":
        def run():
            model.zero_grad(set_to_none=True)
            per_example_loss(model(x), y, loss).mean().backward()
            return None
        return run

    if method == "gradscope":
        def run():
            out = examples.per_example_stats(model, x, y, loss=loss, proj_dim=k, seed=SEED, batch_size=len(x))
            return {key: torch.from_numpy(out[key]) for key in ("grad_norm", "grad_cos_mean", "grad_proj")}
        return run

    if method == "vmap":
        params = {n: p.detach() for n, p in model.named_parameters()}

        def one(prm, xi, yi):
            logits = torch.func.functional_call(model, prm, (xi.unsqueeze(0),))
            return per_example_loss(logits, yi.unsqueeze(0), loss)[0]

        def run():
            g = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, y)
            with torch.no_grad():
                return stats_from_blocks(g, model, factors)
        return run

    if method == "opacus":
        from opacus import GradSampleModule

        gsm = GradSampleModule(batch_positions(model), batch_first=True, loss_reduction="sum")

        def run():
            gsm.zero_grad(set_to_none=True)
            per_example_loss(gsm(x), y, loss).sum().backward()
            with torch.no_grad():
                blocks = {n: p.grad_sample for n, p in gsm._module.named_parameters()}
                return stats_from_blocks(blocks, model, factors)
        return run

    if method == "backpack":
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        bp_model = extend(batch_positions(model))
        if loss == "mse":  # 0.5 * sum (f - 1)^2 over the batch, the same loss as gradscope's "mse"
            loss_fn = extend(torch.nn.MSELoss(reduction="sum"))
            target = torch.ones(len(x), 1)
            value = lambda out: 0.5 * loss_fn(out, target)  # noqa: E731
        else:
            loss_fn = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
            value = lambda out: loss_fn(out, y)  # noqa: E731

        def run():
            bp_model.zero_grad(set_to_none=True)
            with backpack(BatchGrad()):
                value(bp_model(x)).backward()
            with torch.no_grad():
                blocks = {n: p.grad_batch for n, p in bp_model.named_parameters()}
                return stats_from_blocks(blocks, model, factors)
        return run

    if method == "loop":
        xs, ys = x[:loop_batch], y[:loop_batch]
        params = [p for p in model.parameters()]

        def run():
            grads = []
            for i in range(len(xs)):
                value = per_example_loss(model(xs[i : i + 1]), ys[i : i + 1], loss)[0]
                grads.append(torch.autograd.grad(value, params))
            with torch.no_grad():
                blocks = {n: torch.stack([g[j] for g in grads]) for j, n in enumerate(names)}
                return stats_from_blocks(blocks, model, factors)
        return run
    raise ValueError(method)


def _methods(model_name, methods, k, batch, loop_batch):
    """Callables for the requested methods; each peer wraps its own copy of the model."""
    model, x, y, loss = setup(model_name, batch)
    out, errors = {}, {}
    for method in methods:
        try:
            m = model if method in ("batched_backward", "gradscope", "vmap", "loop") else copy.deepcopy(model)
            out[method] = make_method(method, m, x, y, loss, k, loop_batch)
        except Exception as e:  # a peer that cannot run this model is reported, not fatal
            errors[method] = f"{type(e).__name__}: {e}"[:300]
    return out, errors


def memory_worker(model_name: str, method: str, k: int, batch: int, loop_batch: int, out: str) -> None:
    """Peak RSS of one method in a fresh process: two runs after set-up."""
    warnings.filterwarnings("ignore")
    result = {}
    try:
        fns, errors = _methods(model_name, [method], k, batch, loop_batch)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if method in fns:
            fns[method]()
            fns[method]()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = {"peak_mb": rss1 / 1024, "added_mb": (rss1 - rss0) / 1024, "error": errors.get(method)}
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"[:300]}
    Path(out).write_text(json.dumps(result))


def time_methods(model_name: str, methods: list[str], k: int, batch: int, rounds: int, loop_batch: int) -> dict:
    """Round-robin timing in one process: every round runs every method once, so a change of
    the machine's load hits all methods alike. Returns per method: wall times (s, full batch;
    the loop's extrapolated), CPU times, the statistics of the first run, or the error."""
    warnings.filterwarnings("ignore")
    fns, errors = _methods(model_name, methods, k, batch, loop_batch)
    res = {m: {"error": e} for m, e in errors.items()}
    scale = {m: batch / loop_batch if m == "loop" else 1.0 for m in fns}
    for m, fn in list(fns.items()):  # warm-up; keep the first result for the checks
        try:
            res[m] = {"stats": fn(), "wall": [], "cpu": []}
            fn()
        except Exception as e:
            res[m] = {"error": f"{type(e).__name__}: {e}"[:300]}
            del fns[m]
    for _ in range(rounds):
        for m, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            res[m]["wall"].append((time.perf_counter() - w) * scale[m])
            res[m]["cpu"].append((time.process_time() - c) * scale[m])
    return res


# ---- Parquet throughput ------------------------------------------------------------------------
LAYERS = 6  # per-layer gradient norms stored per example: the MLP's 3 weights and 3 biases


def parquet_throughput(n_rows: int) -> list[dict]:
    import pandas as pd

    from gradscope import artifacts
    from gradscope.pipeline import examples_columns

    rng = np.random.default_rng(0)
    rows = []
    for k in (32, 512):
        for dtype in ("float16", "float32"):
            proj = rng.standard_normal((n_rows, k)).astype(dtype)
            df = pd.DataFrame({
                "split": "train", "example_id": np.arange(n_rows), "label": rng.integers(0, 113, n_rows),
                "loss": rng.random(n_rows), "pred": rng.integers(0, 113, n_rows), "margin": rng.standard_normal(n_rows),
                "p_true": rng.random(n_rows), "el2n": rng.random(n_rows), "correct": rng.random(n_rows) < 0.5,
                "grad_norm": rng.random(n_rows), "grad_dot_mean": rng.standard_normal(n_rows),
                "grad_cos_mean": rng.uniform(-1, 1, n_rows), "planted": rng.random(n_rows) < 0.1, "grad_proj": list(proj),
                "layer_grad_norm": list(rng.random((n_rows, LAYERS)).astype(np.float32)),
            })
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "part-0.parquet"
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    artifacts.write_parquet(df, path, examples_columns(k, dtype, LAYERS), run_id="bench", config={})
                    times.append(time.perf_counter() - t0)
                size = path.stat().st_size
            t = statistics.median(times)
            rows.append({"proj_dim": k, "dtype": dtype, "bytes_per_example": size / n_rows,
                         "raw_proj_bytes": k * np.dtype(dtype).itemsize, "rows_per_s": n_rows / t,
                         "mb_per_s": size / t / 2**20})
    return rows


# ---- driver -------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "transformer"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--proj-dims", nargs="+", type=int, default=[32, 512])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loop-batch", type=int, default=64)
    ap.add_argument("--parquet-rows", type=int, default=20000)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    ap.add_argument("--memory-worker", nargs=3, metavar=("MODEL", "METHOD", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--time-worker", nargs=2, metavar=("MODEL", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        m, meth, k = args.memory_worker
        memory_worker(m, meth, int(k), args.batch, args.loop_batch, args.out)
        return
    if args.time_worker:
        m, k = args.time_worker
        torch.save(time_methods(m, args.methods, int(k), args.batch, args.rounds, args.loop_batch), args.out)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; batch {args.batch}; {args.rounds} timed rounds "
          f"after warm-up, methods interleaved; loop on {args.loop_batch} examples, extrapolated")
    # Everything heavy runs in subprocesses: Linux carries a process's peak RSS across exec, so
    # the parent stays small for the memory workers' ru_maxrss to be theirs.
    common = ["--batch", str(args.batch), "--loop-batch", str(args.loop_batch)]
    for model_name in args.models:
        for k in args.proj_dims:
            mem = {}
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "times.pt")
                subprocess.run([sys.executable, __file__, "--time-worker", model_name, str(k), "--out", out,
                                "--rounds", str(args.rounds), "--methods", *args.methods, *common], check=True)
                res = torch.load(out, weights_only=False)
                if not args.no_memory:
                    for method in args.methods:
                        out = str(Path(tmp) / f"{method}.json")
                        subprocess.run([sys.executable, __file__, "--memory-worker", model_name, method, str(k),
                                        "--out", out, *common], check=True)
                        mem[method] = json.loads(Path(out).read_text())
            report(model_name, k, res, mem, args.batch)
    print(f"\nParquet examples table (gradscope.artifacts.write_parquet, pipeline.examples_columns), "
          f"{args.parquet_rows} rows:")
    print(f"  {'proj_dim':>8} {'dtype':>8} {'bytes/example':>14} {'(proj raw)':>11} {'rows/s':>12} {'MB/s':>8}")
    for r in parquet_throughput(args.parquet_rows):
        print(f"  {r['proj_dim']:>8} {r['dtype']:>8} {r['bytes_per_example']:>14.1f} {r['raw_proj_bytes']:>11} "
              f"{r['rows_per_s']:>12,.0f} {r['mb_per_s']:>8.1f}")
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def report(model_name, k, res, mem, batch):
    n_params = sum(p.numel() for p in setup(model_name, 2)[0].parameters())
    print(f"\n== {model_name} ({n_params:,} parameters), batch {batch}, proj_dim {k}")
    med = {m: statistics.median(r["wall"]) for m, r in res.items() if "wall" in r}
    low = {m: min(r["wall"]) for m, r in res.items() if "wall" in r}
    cpu = {m: statistics.median(r["cpu"]) for m, r in res.items() if "cpu" in r}
    base = "batched_backward"
    ref = res.get("gradscope", {}).get("stats")
    print(f"  {'method':<17} {'median ms':>10} {'min ms':>9} {'examples/s':>11} {'x bwd':>7} {'x bwd min':>9} "
          f"{'x bwd cpu':>9} {'peak MB':>8} {'+MB':>6}  check vs gradscope (max rel. diff)")
    for method, r in res.items():
        if "error" in r:
            print(f"  {method:<17} failed: {r['error']}")
            continue
        ratio = lambda d, m=method: f"{d[m] / d[base]:.2f}" if base in d else "-"  # noqa: E731
        m = mem.get(method, {})
        peak = f"{m['peak_mb']:8.0f} {m['added_mb']:6.0f}" if "peak_mb" in m else f"{'-':>8} {'-':>6}"
        check = ""
        if ref is not None and r.get("stats") is not None and method != "gradscope":
            errs = []
            for key in ("grad_norm", "grad_cos_mean", "grad_proj"):
                if key == "grad_cos_mean" and method == "loop":
                    continue  # the loop's mean gradient is over its own sub-batch
                a = r["stats"][key].double()
                b = ref[key][: len(a)].double()
                errs.append(f"{key} {float((a - b).abs().max() / b.abs().max()):.0e}")
            check = ", ".join(errs)
        note = " (extrapolated)" if method == "loop" else ""
        print(f"  {method:<17} {med[method] * 1e3:>10.1f} {low[method] * 1e3:>9.1f} {batch / med[method]:>11,.0f} "
              f"{ratio(med):>7} {ratio(low):>9} {ratio(cpu):>9} {peak}  {check}{note}")
    peers = {m: med[m] for m in PEERS if m in med}
    if peers and "gradscope" in med and base in med:
        fastest = min(peers, key=peers.get)
        g = med["gradscope"]
        print(f"  gradscope: {g / med[base]:.2f}x a batched backward (median; {low['gradscope'] / low[base]:.2f}x by "
              f"minimum, {cpu['gradscope'] / cpu[base]:.2f}x by CPU time); {peers[fastest] / g:.1f}x faster than the "
              f"fastest peer ({fastest}; {min(low[p] for p in peers) / low['gradscope']:.1f}x by minimum)")


if __name__ == "__main__":
    main()
