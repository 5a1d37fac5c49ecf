"""Dashboard page size, build time and load time: the default config's pages, or a synthetic 100-run sweep.

    python bench/bench_dashboard.py results/sweeps/opposing/dashboard.html ...   # time existing pages
    python bench/bench_dashboard.py --synthetic 100 --checkpoints 20             # build and time a big sweep

--synthetic writes a sweep of N runs (2,000 training and 500 test examples, 10% planted, 10
detectors whose scores share a per-example signal, or with --independent-scores never agree, 20
checkpoints, 4 layers of dynamics) in gradscope's own artifact formats under a
temporary folder, builds its dashboard with the default `dashboard` settings, and times it. Every
page is opened in headless chromium (Debian's, through selenium) 3 times: load time is from
navigation to the first view drawn; then the time to show 20 other runs, to switch to each view,
and to move the PCA slider. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope import artifacts
from gradscope.dashboard import build_sweep_dashboard, default_settings

DETECTORS = ["aum", "cartography", "cos_rule", "el2n", "forgetting", "grand", "high_loss", "loss_increasing", "opposing_groups",
             "tracin"]


def scores(rng, planted, n_steps, independent: bool) -> np.ndarray:
    """Detector scores, (checkpoint, detector, example) flattened: independent noise (the worst case: every
    detector's top-k a different set) or, as real detectors do, a shared per-example signal (planted examples
    higher) plus per-detector noise, so that the detectors' top-k overlap."""
    shape = (n_steps, len(DETECTORS), len(planted))
    if independent:
        return rng.random(shape).ravel()
    signal = rng.normal(size=len(planted)) + 2.0 * planted
    return (signal + 0.5 * rng.normal(size=shape)).ravel()


def write_synthetic_run(folder: Path, *, n_train=2000, n_test=500, checkpoints=20, seed=0, independent=False) -> None:
    rng = np.random.default_rng(seed)
    steps = np.unique(np.round(np.geomspace(1, 2000, checkpoints - 1)).astype(int)).tolist()
    steps = [0] + steps + list(range(steps[-1] + 1, steps[-1] + 1 + checkpoints - 1 - len(steps)))
    planted = np.zeros(n_train, bool)
    planted[rng.choice(n_train, n_train // 10, replace=False)] = True
    log = np.arange(0, 2001, 10)
    decay = np.exp(-log / 500)
    artifacts.write_parquet(pd.DataFrame({"step": log, "lr": 0.01, "train_loss": 0.05 + decay, "train_acc": 1 - 0.9 * decay,
                                          "test_loss": 0.3 + decay, "test_acc": 0.8 - 0.7 * decay, "grad_norm": decay + 0.01,
                                          "clipped": False, "clipped_fraction": 0.0, "weight_norm": 10 + log / 1000,
                                          "wall_s": log / 100.0}), folder / "train/metrics.parquet", artifacts.METRICS)
    layers = ["0.weight", "0.bias", "2.weight", "2.bias"]
    dyn = pd.DataFrame([{"step": s, "layer": name, **{c: float(rng.random()) for c in list(artifacts.DYNAMICS)[2:]}}
                        for s in range(0, 2001, 100) for name in layers])
    artifacts.write_parquet(dyn, folder / "train/dynamics.parquet", artifacts.DYNAMICS)
    ids = np.arange(n_train + n_test)
    for s in steps:
        n = n_train + n_test
        ex = pd.DataFrame({"split": ["train"] * n_train + ["test"] * n_test, "example_id": ids, "label": rng.integers(0, 10, n),
                           "loss": rng.exponential(1, n), "pred": rng.integers(0, 10, n), "margin": rng.normal(size=n),
                           "p_true": rng.random(n), "el2n": rng.random(n), "correct": rng.random(n) > 0.5,
                           "grad_norm": rng.exponential(1, n), "grad_dot_mean": rng.normal(size=n),
                           "grad_cos_mean": rng.uniform(-1, 1, n), "planted": np.r_[planted, np.zeros(n_test, bool)],
                           "grad_proj": list(rng.normal(size=(n, 32)).astype(np.float32)),
                           "layer_grad_norm": list(rng.random((n, 4)).astype(np.float32))})
        cols = {**artifacts.EXAMPLES, "grad_proj": artifacts.projection_type(32), "layer_grad_norm": artifacts.projection_type(4)}
        artifacts.write_parquet(ex, folder / f"examples/step={s}/part-0.parquet", cols)
        curv = {"sharpness": 1.0 + rng.random(), "top_eigenvalues": [1.0, 0.5], "lanczos_steps": 10, "lanczos_residual": 1e-4,
                "hessian_trace": 10.0, "hessian_trace_stderr": 0.5, "hutchinson_samples": 50, "hvp_count": 60,
                "fisher_trace": 5.0, "gauss_newton_trace": 6.0, "gauss_newton_stderr": 0.1, "input_jacobian_norm": 0.1,
                "input_hessian_trace": 0.01, "update_sharpness": 0.5, "density_grid": [], "density": [],
                "layer_sharpness": {}, "lr": 0.01, "sharpness_threshold": 200.0, "n_examples": 512, "n_params": 1000,
                "wall_s": 1.0}
        artifacts.write_parquet(pd.DataFrame([curv]), folder / f"curvature/step={s}/part-0.parquet", artifacts.CURVATURE)
    train_ids = ids[:n_train]
    det = pd.DataFrame({"step": np.repeat(steps, n_train * len(DETECTORS)),
                        "example_id": np.tile(train_ids, len(steps) * len(DETECTORS)),
                        "detector": np.tile(np.repeat(DETECTORS, n_train), len(steps)),
                        "score": scores(rng, planted, len(steps), independent), "flagged": False})
    artifacts.write_parquet(det, folder / "signals/detections.parquet", artifacts.DETECTIONS)
    ev = pd.DataFrame([{"detector": d, "step": s, "n_flagged": 200, "auroc": rng.random(), "average_precision": rng.random(),
                        "precision_at_k": 0.5, "recall_at_k": 0.5, "precision": 0.5, "recall": 0.5} for d in DETECTORS for s in steps])
    artifacts.write_parquet(ev, folder / "signals/evaluation.parquet", artifacts.EVALUATION)
    pairs = list(zip(steps[:-1], steps[1:]))
    groups = pd.DataFrame([{"step_from": a, "step_to": b, "group": g, "example_id": int(i), "delta_loss": 0.1}
                           for a, b in pairs for g in range(4) for i in rng.choice(n_train, 12, replace=False)])
    artifacts.write_parquet(groups, folder / "signals/groups.parquet", artifacts.GROUPS)
    gp = pd.DataFrame([{"step_from": a, "step_to": b, "group_a": 0, "group_b": 1, "size_a": 12, "size_b": 12, "mean_delta_a": 0.1,
                        "mean_delta_b": -0.1, "cosine": -0.9, "opposing": True} for a, b in pairs])
    artifacts.write_parquet(gp, folder / "signals/group_pairs.parquet", artifacts.GROUP_PAIRS)
    gl = pd.DataFrame([{"step_from": a, "step_to": b, "group": g, "step": s, "mean_loss": rng.random()}
                       for a, b in pairs for g in range(4) for s in steps])
    artifacts.write_parquet(gl, folder / "signals/group_losses.parquet", artifacts.GROUP_LOSSES)
    lc = pd.DataFrame({"step_from": np.repeat([a for a, _ in pairs], n_train), "step_to": np.repeat([b for _, b in pairs], n_train),
                       "example_id": np.tile(train_ids, len(pairs)), "delta_loss": rng.normal(size=len(pairs) * n_train)})
    artifacts.write_parquet(lc, folder / "signals/loss_changes.parquet", artifacts.LOSS_CHANGES)
    pe = pd.DataFrame({"example_id": train_ids, "confidence": rng.random(n_train), "variability": rng.random(n_train) / 3,
                       "correctness": rng.random(n_train), "forgetting_events": rng.integers(0, 3, n_train),
                       "never_learned": False, "aum": rng.normal(size=n_train), "opposition": rng.normal(size=n_train),
                       "tracin_self_influence": rng.random(n_train), "final_loss": rng.random(n_train),
                       "final_correct": True, "planted": planted, "planted_group": ""})
    artifacts.write_parquet(pe, folder / "signals/per_example.parquet", artifacts.PER_EXAMPLE)
    artifacts.write_json({"generalization": {}, "headline": {}}, folder / "signals/summary.json")
    (folder / "config.yaml").write_text("{}\n")


def synthetic_sweep(root: Path, n_runs: int, checkpoints: int, independent: bool = False) -> list[dict]:
    """One run written, the others hard-linked copies of its files with their own metrics (the page carries
    every run's data, so its size is that of N distinct runs)."""
    base = root / "runs" / "big" / "lr~0_seed~0"
    write_synthetic_run(base, checkpoints=checkpoints, independent=independent)
    runs = []
    for i in range(n_runs):
        name = f"lr~{i}_seed~0"
        folder = root / "runs" / "big" / name
        if i:
            shutil.copytree(base, folder, copy_function=lambda s, d: Path(d).hardlink_to(s))
            (folder / "train/metrics.parquet").unlink()
            m = artifacts.read_parquet(base / "train/metrics.parquet")
            m["test_loss"] *= 1 + i / n_runs
            artifacts.write_parquet(m, folder / "train/metrics.parquet", artifacts.METRICS)
        runs.append({"id": f"big/{name}", "name": name})
    return runs


def time_page(path: Path, repeats: int = 3) -> dict:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    loads, switches, views, slider = [], [], [], []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            driver.get(path.resolve().as_uri())
            while driver.execute_script("return document.body && document.body.dataset.ready") != "1":
                time.sleep(0.01)
            loads.append(time.perf_counter() - start)
            # in-page timings (ms), each step drawn synchronously by Plotly.react
            t = driver.execute_script("""
                const g = gradscope, ids = g.data.runs.map(r => r.id), now = () => performance.now();
                let a = now(); g.setRuns(ids.slice(-20)); const sw = now() - a;
                const out = {};
                for (const v of Object.keys(g.views)) { a = now(); g.show(v); out[v] = now() - a; }
                const ex = g.data.runs[ids.length - 1].data.examples;
                a = now(); if (ex) g.addExamples(ex.ids.slice(0, 5)); out.add_examples = now() - a;
                const s = document.getElementById('gs-pca-step'); a = now();
                for (let i = 0; i <= +s.max; i++) { s.value = i; s.dispatchEvent(new Event('input')); }
                out.pca_step = (now() - a) / (+s.max + 1);
                return [sw, out];""")
            switches.append(t[0])
            views.append(max(v for k, v in t[1].items() if k in ("training", "layers", "curvature", "signals", "examples")))
            slider.append(t[1]["pca_step"])
    finally:
        driver.quit()
    return {"load_s": statistics.median(loads), "show_20_runs_ms": statistics.median(switches),
            "slowest_view_ms": statistics.median(views), "examples_view_step_ms": statistics.median(slider)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pages", nargs="*", type=Path)
    ap.add_argument("--synthetic", type=int, default=0, help="build a synthetic sweep of this many runs")
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-examples", type=int, default=None, help="dashboard.max_examples (default: the schema's)")
    ap.add_argument("--independent-scores", action="store_true",
                    help="detectors that never agree (worst case: the largest union of top-k examples)")
    args = ap.parse_args()
    pages = list(args.pages)
    tmp = None
    if args.synthetic:
        tmp = Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
        start = time.perf_counter()
        runs = synthetic_sweep(tmp, args.synthetic, args.checkpoints, args.independent_scores)
        print(f"synthetic sweep: {len(runs)} runs x {args.checkpoints} checkpoints written in {time.perf_counter() - start:.0f} s")
        out = tmp / "sweeps/big/dashboard.html"
        start = time.perf_counter()
        settings = default_settings()
        if args.max_examples is not None:
            settings["max_examples"] = args.max_examples
        build_sweep_dashboard("big", runs, results=tmp, settings=settings, out=out)
        print(f"built {out} in {time.perf_counter() - start:.1f} s")
        pages.append(out)
    for page in pages:
        t = time_page(page, args.repeats)
        print(f"{page}: {page.stat().st_size / 1e6:.1f} MB, load {t['load_s']:.2f} s (median of {args.repeats}), "
              f"show 20 other runs {t['show_20_runs_ms']:.0f} ms, slowest view switch {t['slowest_view_ms']:.0f} ms, "
              f"PCA slider step {t['examples_view_step_ms']:.0f} ms")
    if tmp is not None:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
