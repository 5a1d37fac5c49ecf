"""Top Hessian eigenvalues: gradscope's Lanczos against a PyHessian-style power iteration.

    PYTHONPATH=src python bench/bench_curvature.py [seed] [train_steps] [delta]
    PYTHONPATH=src python bench/bench_curvature.py --runs [seed]   # HVPs per run only

Models: an MLP 784-256-256-10 trained `train_steps` (default 200) full-batch SGD steps (lr 0.1)
on 1024 Gaussian examples labelled by a random tanh-MLP teacher, 10% of labels flipped
(gradscope.data's planted_flips), curvature on those 1024; and the modular-arithmetic
transformer trained `train_steps` AdamW steps (minibatches of 512) on the a+b mod 113 training
pairs (30%), curvature on a fixed seeded subset of 1024 of them, as the pipeline measures
curvature on a fixed subset; and the edge-of-stability experiment's MLP (its lr 0.25 run:
full-batch GD, MSE) at step 1000, where its top eigenvalues crowd just under 2/lr. The top
eigenvectors are also taken `delta` steps (default 10) before the end, as at the previous
checkpoint of a run, for the warm starts. One float32 HessianOperator of the mean loss is shared
by every method:

- reference: Lanczos, 80 steps, on a float64 copy of the model, from another start vector;
- gradscope, tol 1e-3: `lanczos_top(..., tol=1e-3)`, the library's stop (each top Ritz value's
  residual <= 1e-3 of it, which bounds its distance to an eigenvalue), from a random start
  ("cold") or from the top eigenvectors `delta` steps earlier ("warm");
- lanczos, oracle: the fewest Lanczos steps whose top Ritz value is within 1e-3 relative of the
  reference (T's leading j x j block is what j steps give, so one 60-step run tells);
- power, PyHessian: v <- Hv / |Hv|, estimate v.Hv, stop when it moves by < 1e-3 relative
  (|new - old| / (|old| + 1e-6), as PyHessian's `eigenvalues`) or after 100 iterations, from a
  Gaussian start (PyHessian's); its error is what that rule leaves;
- power, oracle: the fewest power iterations within 1e-3 of the reference (searched to 1000),
  cold or from the same warm start vector as Lanczos.

Then the top 5: gradscope's Lanczos (tol 1e-3 on all five) against PyHessian's top_n = 5 (power
iteration per eigenvalue, each orthogonalized against those found, 100 iterations, tol 1e-3).
Last, HVPs per run (issue 14: what a run's curvature jobs cost, not a ratio to power
iteration, which from one start vector is bounded by the spectral gap): each model trained
again with CHECKPOINTS checkpoints spread over its steps, the top eigenvalue at each by
`lanczos_top` on a `HessianOperator` (tol 1e-3, the certified stop), cold at every checkpoint
or warm from the previous checkpoint's eigenvector (curvature.warm_start); the operator counts
the products.

HVP counts are deterministic; wall times depend on the machine's load.
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch

from gradscope.curvature import lanczos_top, lanczos_tridiagonal, start_vector, tridiagonal
from gradscope.operators import HessianOperator
from gradscope.data import generate
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from gradscope.optim import build_optimizer

TOL = 1e-3
POWER_MAX = 100
POWER_SEARCH = 1000
HISTORY = 60
REF_ITERS = 80
SUBSET = 1024
TOP_N = 5
PYHESSIAN = f"power, PyHessian ({POWER_MAX} max), cold"
CHECKPOINTS = 6  # per run, for the HVPs per run


def power_iteration(hvp, q, *, max_iters, tol, stop=True, target=None, found=()):
    """PyHessian's power iteration from q: the estimate after each HVP. Stops by PyHessian's rule
    if `stop`; else, given `target`, at the first estimate within `tol` of it. `found`: unit
    vectors to orthogonalize against before each HVP (PyHessian's deflation for top_n > 1)."""
    v = q / q.norm()
    estimates, eig = [], None
    for _ in range(max_iters):
        for u in found:
            v = v - (u @ v) * u
        v = v / v.norm()
        hv = hvp(v)
        new = float(hv @ v)
        estimates.append(new)
        v = hv / hv.norm()
        if stop and eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            break
        if target is not None and abs(new - target) / abs(target) <= tol:
            break
        eig = new
    return estimates, v


def pyhessian_top_n(hvp, n, top_n, *, seed, dtype):
    """PyHessian's `eigenvalues(top_n=...)`: one power iteration per eigenvalue, each from a fresh
    Gaussian vector, deflated against the eigenvectors found: (eigenvalues, HVPs)."""
    gen = torch.Generator().manual_seed(seed)
    found, vals, hvps = [], [], 0
    for _ in range(top_n):
        q = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
        est, v = power_iteration(hvp, q, max_iters=POWER_MAX, tol=TOL, found=found)
        for u in found:
            v = v - (u @ v) * u
        found.append(v / v.norm())
        vals.append(est[-1])
        hvps += len(est)
    return np.array(vals), hvps


def lanczos_history(hvp, q, iters):
    """Top Ritz value after each of the first `iters` Lanczos steps from q."""
    alphas, betas, _, _ = lanczos_tridiagonal(hvp, q, iters=iters)
    return [float(np.linalg.eigvalsh(tridiagonal(alphas[:j], betas[: j - 1]))[-1]) for j in range(1, len(alphas) + 1)]


def first_within(estimates, ref, tol):
    return next((i + 1 for i, e in enumerate(estimates) if abs(e - ref) / abs(ref) <= tol), None)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train(model, x, y, opt, steps, batch_size, gen, loss):
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=gen)[:batch_size] if batch_size < len(y) else slice(None)
        opt.zero_grad(set_to_none=True)
        per_example_loss(model(x[idx]), y[idx], loss).mean().backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
        return per_example_loss(logits, y, loss).mean().item(), (logits.argmax(1) == y).float().mean().item()


def flips_mlp(seed, data: dict, model: dict):
    """planted_flips data (an MLP teacher) and a seeded MLP on it: (model, x, y)."""
    train_df, _, meta = generate({"generator": "planted_flips", "planted_flips": dict(
        teacher="mlp", **data, seed=seed)})
    x = torch.from_numpy(np.stack(train_df["x"].to_numpy()))
    y = torch.tensor(train_df["label"].to_numpy())
    torch.manual_seed(seed)
    return build_model({"kind": "mlp", "depth": 2, **model}, InputSpec.from_dict(meta["input"])), x, y


def mlp_problem(seed, steps):
    model, x, y = flips_mlp(seed, dict(n_train=1024, n_test=16, n_features=784, n_classes=10, teacher_width=64,
                                       flip_fraction=0.1), {"width": 256})
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    return "mlp 784-256-256-10", model, x, y, optim, len(y), np.arange(len(y)), "cross_entropy", steps


def eos_problem(seed, steps):
    """config/experiments/edge_of_stability.yaml's lr 0.25 run, 1000 steps: at the edge of
    stability, where the top eigenvalues crowd together just under 2/lr = 8."""
    model, x, y = flips_mlp(seed, dict(n_train=1000, n_test=200, n_features=20, n_classes=4, teacher_width=32,
                                       flip_fraction=0.0), {"width": 128, "activation": "tanh"})
    optim = {"name": "sgd", "lr": 0.25, "momentum": 0.0, "weight_decay": 0.0}
    return "mlp 20-128-128-4, EoS (mse)", model, x, y, optim, len(y), np.arange(len(y)), "mse", 1000


def transformer_problem(seed, steps):
    train_df, _, meta = generate({"generator": "modular", "modular": dict(p=113, op="add", train_fraction=0.3,
                                                                          seed=seed)})
    x = torch.tensor(train_df[["a", "b"]].to_numpy())
    y = torch.tensor(train_df["label"].to_numpy())
    torch.manual_seed(seed)
    model = build_model({"kind": "transformer", "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512,
                         "n_layers": 1, "layer_norm": False}, InputSpec("tokens", 2, 113, 113))
    optim = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 1.0}
    subset = np.sort(np.random.default_rng(seed).permutation(len(y))[:SUBSET])
    return "transformer (a+b mod 113)", model, x, y, optim, 512, subset, "cross_entropy", steps


def bench(problem, delta, seed, rows, topn_rows):
    name, model, x_train, y_train, optim, batch_size, subset, loss_name, steps = problem
    start = time.perf_counter()
    opt, gen = build_optimizer(model.parameters(), optim), torch.Generator().manual_seed(seed)
    x, y = x_train[subset], y_train[subset]
    dtype = next(model.parameters()).dtype
    train(model, x_train, y_train, opt, steps - delta, batch_size, gen, loss_name)
    earlier = lanczos_top(HessianOperator(model, x, y, loss=loss_name), k=TOP_N, iters=HISTORY, tol=1e-5,
                          seed=seed + 1, return_eigenvectors=True)
    warm = earlier.eigenvectors  # (TOP_N, n), largest first
    loss, acc = train(model, x_train, y_train, opt, delta, batch_size, gen, loss_name)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {n_params} params; {steps} {optim['name']} steps (lr {optim['lr']}, batch {batch_size} of "
          f"{len(y_train)}) in {time.perf_counter() - start:.0f} s: train loss {loss:.4f}, acc {acc:.3f}; "
          f"curvature on {len(y)} examples; warm starts from step {steps - delta}", flush=True)
    hvp = HessianOperator(model, x, y, loss=loss_name)  # called as a function by the power iterations
    n = hvp.n
    ref64 = HessianOperator(copy.deepcopy(model).double(), x, y, loss=loss_name)
    refs = lanczos_top(ref64, k=TOP_N, iters=REF_ITERS, tol=None, seed=seed + 12345).eigenvalues
    ref = float(refs[0])
    print(f"reference top eigenvalues {np.round(refs, 5).tolist()} (float64 Lanczos, {REF_ITERS} steps); at step "
          f"{steps - delta}: {np.round(earlier.eigenvalues, 5).tolist()}", flush=True)

    def add(method, hvps, wall, estimate, baseline=None):
        rows.append(dict(model=name, method=method, hvps=hvps, wall=wall, err=abs(estimate - ref) / abs(ref),
                         baseline=baseline))

    cold_q = start_vector(n, seed, dtype, "cpu")
    warm_q = start_vector(n, seed, dtype, "cpu", warm=warm[:1])
    for label, w in (("cold", None), ("warm", warm[:1])):
        res, wall = timed(lambda: lanczos_top(hvp, k=1, iters=HISTORY, tol=TOL, seed=seed, warm=w))
        add(f"gradscope, tol 1e-3, {label}", res.steps, wall, float(res.eigenvalues[0]), baseline=PYHESSIAN)
    for label, q in (("cold", cold_q), ("warm", warm_q)):
        m = first_within(lanczos_history(hvp, q, HISTORY), ref, TOL) or HISTORY
        res, wall = timed(lambda: lanczos_top(hvp, k=1, iters=m, tol=None, seed=seed,
                                              warm=None if q is cold_q else warm[:1]))
        add(f"lanczos, oracle, {label}", m, wall, float(res.eigenvalues[0]), baseline=f"power, oracle, {label}")
    (est, _), wall = timed(lambda: power_iteration(hvp, cold_q, max_iters=POWER_MAX, tol=TOL))
    add(PYHESSIAN, len(est), wall, est[-1])
    for label, q in (("cold", cold_q), ("warm", warm_q)):
        (est, _), wall = timed(lambda: power_iteration(hvp, q, max_iters=POWER_SEARCH, tol=TOL, stop=False, target=ref))
        add(f"power, oracle, {label}", len(est), wall, est[-1])

    for label, w in (("cold", None), ("warm", warm)):
        res, wall = timed(lambda: lanczos_top(hvp, k=TOP_N, iters=HISTORY, tol=TOL, seed=seed, warm=w))
        got = res.eigenvalues
        topn_rows.append(dict(model=name, method=f"gradscope, tol 1e-3, {label}", hvps=res.steps, wall=wall,
                              err=float(np.max(np.abs(got - refs) / np.abs(refs)))))
    (got, hvps), wall = timed(lambda: pyhessian_top_n(hvp, n, TOP_N, seed=seed, dtype=dtype))
    topn_rows.append(dict(model=name, method=f"power, PyHessian top_n={TOP_N}", hvps=hvps, wall=wall,
                          err=float(np.max(np.abs(np.sort(got)[::-1] - refs) / np.abs(refs)))))


def table(rows, title):
    print(f"\n{title}")
    print(f"{'model':<29} {'method':<36} {'HVPs':>5} {'wall s':>7} {'rel. error':>10}   {'fewer HVPs than'}")
    by = {(r["model"], r["method"]): r for r in rows}
    for r in rows:
        base = by.get((r["model"], r.get("baseline")))
        vs = f"{base['hvps'] / r['hvps']:.1f}x: {base['method']}" if base else ""
        print(f"{r['model']:<29} {r['method']:<36} {r['hvps']:>5} {r['wall']:>7.3f} {r['err']:>10.1e}   {vs}")


def bench_run(problem, seed):
    """HVPs of the top eigenvalue at each of CHECKPOINTS checkpoints of one run, cold and warm."""
    name, model, x_train, y_train, optim, batch_size, subset, loss_name, steps = problem
    opt, gen = build_optimizer(model.parameters(), optim), torch.Generator().manual_seed(seed)
    x, y = x_train[subset], y_train[subset]
    at = np.linspace(0, steps, CHECKPOINTS).astype(int)
    cold, warm, wall, previous, done = [], [], [0.0, 0.0], None, 0
    for step in at:
        train(model, x_train, y_train, opt, int(step) - done, batch_size, gen, loss_name)
        done = int(step)
        model.eval()
        for i, (counts, start) in enumerate(((cold, None), (warm, previous))):
            op = HessianOperator(model, x, y, loss=loss_name)
            top, seconds = timed(lambda: lanczos_top(op, k=1, iters=HISTORY, tol=TOL, seed=seed, warm=start,
                                                     return_eigenvectors=i == 1))
            counts.append(op.matvecs)
            wall[i] += seconds
            if i == 1:
                previous = top.eigenvectors
        model.train()
    print(f"{name}: checkpoints at steps {at.tolist()}; HVPs per checkpoint cold {cold}, warm {warm}", flush=True)
    return dict(model=name, checkpoints=len(at), cold=sum(cold), warm=sum(warm), cold_s=wall[0], warm_s=wall[1])


def runs_table(run_rows):
    print(f"\nHVPs per run ({CHECKPOINTS} checkpoints, top eigenvalue, tol {TOL}; warm = curvature.warm_start):")
    print(f"{'model':<29} {'HVPs cold':>9} {'HVPs warm':>9} {'cold s':>7} {'warm s':>7}")
    for r in run_rows:
        print(f"{r['model']:<29} {r['cold']:>9} {r['warm']:>9} {r['cold_s']:>7.2f} {r['warm_s']:>7.2f}")


def main():
    if sys.argv[1:2] == ["--runs"]:
        seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
        runs_table([bench_run(problem(seed, 200), seed) for problem in (mlp_problem, transformer_problem, eos_problem)])
        return
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    delta = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {seed}, tolerance {TOL}")
    rows: list[dict] = []
    topn_rows: list[dict] = []
    for problem in (mlp_problem, transformer_problem, eos_problem):
        bench(problem(seed, steps), delta, seed, rows, topn_rows)
    for r in topn_rows:
        r["baseline"] = f"power, PyHessian top_n={TOP_N}" if r["method"].startswith("gradscope") else None
    table(rows, "Top eigenvalue, to 1e-3 relative (last column: the named method's HVPs over this one's):")
    table(topn_rows, f"Top {TOP_N} eigenvalues, tolerance 1e-3 (rel. error: the worst of the {TOP_N}):")
    runs_table([bench_run(problem(seed, steps), seed) for problem in (mlp_problem, transformer_problem, eos_problem)])


if __name__ == "__main__":
    main()
