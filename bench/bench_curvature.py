"""Top Hessian eigenvalue: gradscope's Lanczos against a PyHessian-style power iteration.

    PYTHONPATH=src python bench/bench_curvature.py [seed] [train_steps]

Models: an MLP 784-256-256-10 trained `train_steps` (default 200) full-batch SGD steps (lr 0.1)
on 1024 Gaussian examples labelled by a random tanh-MLP teacher, 10% of labels flipped
(gradscope.data's planted_flips; at init the spectrum is degenerate), curvature on those 1024;
and the modular-arithmetic transformer trained `train_steps` AdamW steps (minibatches of 512)
on the a+b mod 113 training pairs (30%), curvature on a fixed seeded subset of 1024 of them, as
the pipeline measures curvature on a fixed subset (all 3831 pairs cost ~4 s per HVP on
2 busy CPU threads). One float32 HVP closure of the mean cross-entropy is shared by every method:

- reference: Lanczos, 80 steps, on a float64 copy of the model, from another start vector
  (printed: its distance to the float32 60-step Lanczos below);
- lanczos, to true 1e-3: the fewest Lanczos steps whose top Ritz value is within 1e-3 relative
  of the reference (T's leading j x j block is what j steps give, so one 60-step run tells);
- lanczos, self-stop: stops when the top Ritz value moves by < 1e-3 relative (power's rule);
- lanczos, residual stop: stops when the top Ritz pair's residual |Hy - theta y| (known from T
  for free) is <= 1e-3 |theta|, which bounds the distance from theta to an eigenvalue;
- power, PyHessian stop: v <- Hv / |Hv|, estimate v.Hv, stop when it moves by < 1e-3 relative
  (|new - old| / (|old| + 1e-6), as PyHessian's `eigenvalues`) or after 100 iterations;
- power, to true 1e-3: the fewest power iterations whose estimate is within 1e-3 relative of
  the reference (searched up to 1000).

HVP counts are deterministic; wall times (a fresh run of exactly that many HVPs, the shared
gradient graph built beforehand, not counted) depend on the machine's load. The ratio column
is power's HVPs over Lanczos's for the same criterion.
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch

from gradscope.curvature import hvp_fn, lanczos, lanczos_tridiagonal, tridiagonal
from gradscope.data import generate
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from gradscope.optim import build_optimizer

TOL = 1e-3
TIGHTER = (1e-4,)  # also reported: HVPs to these true accuracies (float32 HVPs: ~1e-5 is the floor)
POWER_MAX = 100
POWER_SEARCH = 1000
HISTORY = 60
REF_ITERS = 80
SUBSET = 1024


def power_iteration(hvp, n, *, max_iters, tol, seed, dtype, stop=True, target=None):
    """PyHessian's power iteration (Gaussian start): the estimate after each HVP.

    Stops by PyHessian's rule if `stop`; else, given `target`, at the first estimate within `tol` of it.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    v = v / v.norm()
    estimates, eig = [], None
    for _ in range(max_iters):
        hv = hvp(v)
        new = float(hv @ v)
        estimates.append(new)
        v = hv / hv.norm()
        if stop and eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            break
        if target is not None and abs(new - target) / abs(target) <= tol:
            break
        eig = new
    return estimates


def lanczos_history(hvp, n, *, iters, seed, dtype):
    """Top Ritz value after each of the first `iters` Lanczos steps (same start vector as `lanczos`),
    and its residual |H y - theta y| = beta_j |last entry of T_j's top eigenvector| (inf where unknown)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    alphas, betas, _ = lanczos_tridiagonal(hvp, q, iters=iters)
    tops, residuals = [], []
    for j in range(1, len(alphas) + 1):
        theta, S = np.linalg.eigh(tridiagonal(alphas[:j], betas[: j - 1]))
        tops.append(float(theta[-1]))
        residuals.append(float(betas[j - 1] * abs(S[-1, -1])) if j - 1 < len(betas) else np.inf)
    return tops, residuals


def first_within(estimates, ref, tol):
    hits = [i + 1 for i, e in enumerate(estimates) if abs(e - ref) / abs(ref) <= tol]
    return hits[0] if hits else None


def first_settled(estimates, tol):
    for i in range(1, len(estimates)):
        if abs(estimates[i] - estimates[i - 1]) / (abs(estimates[i - 1]) + 1e-6) < tol:
            return i + 1
    return len(estimates)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train(model, x, y, optim, steps, batch_size, seed):
    opt = build_optimizer(model.parameters(), optim)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=gen)[:batch_size] if batch_size < len(y) else slice(None)
        opt.zero_grad(set_to_none=True)
        per_example_loss(model(x[idx]), y[idx], "cross_entropy").mean().backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
        return per_example_loss(logits, y, "cross_entropy").mean().item(), (logits.argmax(1) == y).float().mean().item()


def mlp_problem(seed, steps):
    train_df, _, meta = generate({"generator": "planted_flips", "planted_flips": dict(
        n_train=1024, n_test=16, n_features=784, n_classes=10, teacher="mlp", teacher_width=64, flip_fraction=0.1,
        seed=seed)})
    x = torch.from_numpy(np.stack(train_df["x"].to_numpy()))
    y = torch.tensor(train_df["label"].to_numpy())
    torch.manual_seed(seed)
    model = build_model({"kind": "mlp", "depth": 2, "width": 256}, InputSpec.from_dict(meta["input"]))
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    return "mlp 784-256-256-10", model, x, y, optim, len(y), np.arange(len(y))


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
    return "transformer (a+b mod 113)", model, x, y, optim, 512, subset


def bench(problem, steps, seed, rows, tighter):
    name, model, x_train, y_train, optim, batch_size, subset = problem
    start = time.perf_counter()
    loss, acc = train(model, x_train, y_train, optim, steps, batch_size, seed)
    model.eval()
    x, y = x_train[subset], y_train[subset]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {n_params} params; {steps} {optim['name']} steps (lr {optim['lr']}, batch {batch_size} of "
          f"{len(y_train)}) in {time.perf_counter() - start:.0f} s: train loss {loss:.4f}, acc {acc:.3f}; "
          f"curvature on {len(y)} examples", flush=True)
    dtype = next(model.parameters()).dtype
    (hvp, n), build_s = timed(lambda: hvp_fn(model, x, y, loss="cross_entropy"))
    hist, residuals = lanczos_history(hvp, n, iters=HISTORY, seed=seed, dtype=dtype)
    ref64, _ = hvp_fn(copy.deepcopy(model).double(), x, y, loss="cross_entropy")
    ref_run = lanczos(ref64, n, iters=REF_ITERS, seed=seed + 12345)
    ref = float(ref_run.eigenvalues[-1])
    print(f"reference top eigenvalue {ref:.6g} (float64 Lanczos, {REF_ITERS} steps; float32 Lanczos, {HISTORY} "
          f"steps from another start: rel. diff {abs(hist[-1] - ref) / abs(ref):.1e}); second "
          f"{ref_run.eigenvalues[-2]:.6g}; gradient graph built in {build_s:.2f} s", flush=True)

    power_all = power_iteration(hvp, n, max_iters=POWER_SEARCH, tol=min(TIGHTER), seed=seed, dtype=dtype,
                                stop=False, target=ref)
    for tol in (TOL, *TIGHTER):
        lz, pw = first_within(hist, ref, tol), first_within(power_all, ref, tol)
        tighter.append(dict(model=name, tol=tol, lanczos=lz, power=pw))

    def lanczos_row(method, m):
        res, wall = timed(lambda: lanczos(hvp, n, iters=m, seed=seed, dtype=dtype))
        top = float(res.eigenvalues[-1])
        return dict(model=name, method=method, hvps=res.steps, wall=wall, err=abs(top - ref) / abs(ref))

    def power_row(method, m, stop):
        est, wall = timed(lambda: power_iteration(hvp, n, max_iters=m, tol=TOL, seed=seed, dtype=dtype, stop=stop))
        return dict(model=name, method=method, hvps=len(est), wall=wall, err=abs(est[-1] - ref) / abs(ref))

    m_true = first_within(hist, ref, TOL)
    lz_true = lanczos_row("lanczos, to true 1e-3", m_true if m_true else HISTORY)
    lz_stop = lanczos_row("lanczos, self-stop 1e-3", first_settled(hist, TOL))
    settled = [i + 1 for i, (t, r) in enumerate(zip(hist, residuals)) if r <= TOL * abs(t)]
    lz_res = lanczos_row("lanczos, residual stop 1e-3", settled[0] if settled else HISTORY)
    p_stop = power_row(f"power, PyHessian stop ({POWER_MAX} max)", POWER_MAX, True)
    p_true_m = first_within(power_all, ref, TOL)
    if p_true_m is None:
        p_true = power_row(f"power, to true 1e-3 (not in {POWER_SEARCH})", POWER_SEARCH, False)
        p_true["hvps_note"] = f">{POWER_SEARCH}"
    else:
        p_true = power_row("power, to true 1e-3", p_true_m, False)
    p_stop["ratio"] = p_stop["hvps"] / lz_stop["hvps"]
    p_true["ratio"] = p_true["hvps"] / lz_true["hvps"]
    rows += [lz_true, lz_stop, lz_res, p_true, p_stop]


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {seed}, tolerance {TOL}")
    rows: list[dict] = []
    tighter: list[dict] = []
    problems = [mlp_problem]
    try:
        build_model({"kind": "transformer"}, InputSpec("tokens", 2, 5, 5))
        problems.append(transformer_problem)
    except ValueError as e:
        print(f"transformer skipped: {e}")
    for problem in problems:
        bench(problem(seed, steps), steps, seed, rows, tighter)
    print(f"\n{'model':<27} {'method':<36} {'HVPs':>6} {'wall s':>8} {'rel. error':>10} {'power/ours':>10}")
    for r in rows:
        hvps = r.get("hvps_note", str(r["hvps"]))
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else ""
        print(f"{r['model']:<27} {r['method']:<36} {hvps:>6} {r['wall']:>8.3f} {r['err']:>10.1e} {ratio:>10}")

    print("\nHVPs to reach a true relative accuracy (from the same runs):")
    print(f"{'model':<27} {'tolerance':>9} {'lanczos':>8} {'power':>8} {'power/ours':>10}")
    for t in tighter:
        lz, pw = t["lanczos"], t["power"]
        ratio = f"{pw / lz:.1f}x" if lz and pw else ""
        print(f"{t['model']:<27} {t['tol']:>9.0e} {lz or f'>{HISTORY}':>8} {pw or f'>{POWER_SEARCH}':>8} {ratio:>10}")


if __name__ == "__main__":
    main()
