"""What each rule's job asks a cluster for, estimated from a run's settings.

Snakemake passes these to the scheduler (`mem_mb` -> sbatch --mem, `runtime` in minutes -> -t,
`gpu` -> --gpus). The estimates only need to be safe and to grow with the work: a bigger
model, more data, more steps or checkpoints ask for more. They are deliberately generous
(a queue wait costs less than a job killed at its limit), every rule's grow with each retry
(Snakemake's `attempt`: twice on the second, three times on the third; common.smk), and any of
them can be overridden per rule from a profile or the command line
(`--set-resources train:mem_mb=8000`), which wins over these. Threads are the config's
`threads` block (use_threads: what a job's script sets them to).

Memory is a fixed base (Python with torch, numpy, pandas and pyarrow imported: about 350 MB
resident, measured on the tiny test config) plus the large tensors of the job; time is a
fixed start-up allowance plus the job's floating-point work at a conservative rate. A job asks
for a GPU only when the run's `device` is "cuda"; "auto" asks for none (on a cluster, set
`device: cuda` to get GPU nodes; "auto" still uses a GPU if the node it lands on has one).
"""

from __future__ import annotations

import math

from gradscope import dataset_facts

BASE_MB = 800  # interpreter, torch, numpy, pandas, pyarrow: ~350 MB resident, with headroom
MIN_RUNTIME = 10  # minutes: start-up, imports, reading and writing Parquet
# Deliberately low rates (small models keep both far from their peaks): 5 GFLOP/s on CPU
# cores, 50 GFLOP/s on a GPU.
FLOPS_PER_MINUTE = {"cpu": 300e9, "cuda": 3000e9}
SAFETY = 2.0  # on every estimate
TORCH_RULES = ("train", "import_run", "extract_examples", "curvature")  # the rules that put work on the device
# The train rule's threads (Snakemake sets OMP_NUM_THREADS from it), and `gradscope train`'s: a CPU run's
# floating-point sums depend on the thread count, so both train with the same number to give the same numbers.
TRAIN_THREADS = 1
# The stages whose threads the config's `threads` block sets (each rule's `threads:`, the schema's defaults 1)
THREADED_STAGES = ("train", "import_run", "extract_examples", "curvature", "influence", "detect_signals", "dashboard")


def data_size(settings: dict) -> dict:
    """Examples in each split, the input width the model sees, and the classes. `settings`, here and
    below: a run's resolved settings (every default filled from the schema, as the workflow has them)."""
    data = settings["data"]
    gen = data["generator"]
    g = data[gen]
    known = dataset_facts.split_sizes(data)  # (n_train, n_test) where the settings decide them
    if gen == "modular":
        p = int(g["p"])
        return {"n_train": known[0], "n_test": known[1], "tokens": 2, "vocab": p, "features": 0, "classes": p}
    if gen == "mnist1d":
        size = {"n_train": known[0], "n_test": known[1], "features": 40, "classes": 10}
    elif gen in ("torchvision", "files", "python"):
        # Known torchvision sets by name; anything else is sized as CIFAR-100 (60,000 colour images), generously.
        size = dict(zip(("n_train", "n_test", "features", "classes"),
                        _VISION_SIZES.get(g.get("name"), (50000, 10000, 3072, 100))))
    elif gen == "digits":  # scikit-learn's 1,797 8x8 images
        size = {"n_train": known[0], "n_test": known[1], "features": 64, "classes": 10}
    elif gen == "opposing_features":
        size = {"n_train": known[0], "n_test": known[1], "features": int(g["side"]) ** 2,
                "classes": int(g["n_classes"])}
    else:  # planted_flips
        size = {"n_train": known[0], "n_test": known[1], "features": int(g["n_features"]),
                "classes": int(g["n_classes"])}
    for split in ("train", "test"):
        if g.get(f"subsample_{split}") is not None:
            size[f"n_{split}"] = min(size[f"n_{split}"], int(g[f"subsample_{split}"]))
    return {"tokens": 0, "vocab": 0, **size}


# torchvision dataset name -> (train examples, test examples, input numbers, classes)
_VISION_SIZES = {"CIFAR10": (50000, 10000, 3072, 10), "CIFAR100": (50000, 10000, 3072, 100),
                 "MNIST": (60000, 10000, 784, 10), "FashionMNIST": (60000, 10000, 784, 10),
                 "KMNIST": (60000, 10000, 784, 10), "SVHN": (73257, 26032, 3072, 10)}


def model_size(settings: dict) -> tuple[int, int]:
    """(parameters, activations per example): counted from the model settings, without building it."""
    m, d = settings["model"], data_size(settings)
    kind = m["kind"]
    if kind == "transformer":
        dm, heads, dh = int(m["d_model"]), int(m["n_heads"]), int(m["d_head"])
        dmlp, layers, seq = int(m["d_mlp"]), int(m["n_layers"]), d["tokens"] + 1
        params = (d["vocab"] + 1 + seq) * dm + layers * (4 * dm * heads * dh + 2 * dm * dmlp + dmlp + dm) + dm * d["classes"]
        acts = layers * seq * (4 * dm + 3 * heads * dh + heads * seq + dmlp)
        return params, acts
    if kind in ("resnet", "vgg"):
        return _conv_net_size(m, d)
    if kind == "cnn":
        channels = [int(c) for c in m["channels"]]
        side, prev, params, acts = max(1, math.isqrt(max(d["features"], 1))), 1, 0, 0
        for ch in channels:
            params += 9 * prev * ch + ch
            acts += 2 * ch * side * side
            prev, side = ch, max(1, side // 2)
        return params + prev * side * side * d["classes"] + d["classes"], acts
    # mlp (and the fallback for any other kind): input encoding, hidden layers, output layer
    depth, width = int(m["depth"]), int(m["width"])
    if d["tokens"] and m["input_encoding"] == "embedding":
        embed = int(m["embed_dim"])
        params, fan_in = d["vocab"] * embed, d["tokens"] * embed
    else:
        params, fan_in = 0, d["tokens"] * d["vocab"] if d["tokens"] else d["features"]
    acts = fan_in
    for _ in range(depth):
        params += fan_in * width + width
        acts += 2 * width
        fan_in = width
    return params + fan_in * d["classes"] + d["classes"], acts + d["classes"]


def _conv_net_size(m: dict, d: dict) -> tuple[int, int]:
    """ResNet and VGG of gradscope.models: parameters exactly, activations roughly (each conv output three
    times: conv, norm, activation). Input (channels, *spatial) from the data's "shape" where data_size gives
    one, else a one-channel square image of `features` pixels."""
    shape = list(d.get("shape") or [])
    in_ch, nd, spatial = (shape[0], len(shape) - 1, math.prod(shape[1:])) if len(shape) >= 2 else (1, 2, d["features"])
    k, width, norm = 3**nd, int(m["base_width"]), m["norm"] or "none"

    def conv(c_in, c_out, kernel=k):  # weights, plus the bias (no norm) or the norm's scale and shift
        return kernel * c_in * c_out + (c_out if norm == "none" else 2 * c_out)

    spatial = max(spatial, 1)
    if m["kind"] == "resnet":
        params, acts, c = conv(in_ch, width), 3 * width * spatial, width
        for i, n in enumerate(m["blocks"]):
            out = width * 2**i
            for j in range(int(n)):
                if i > 0 and j == 0:
                    spatial = max(1, spatial // 2**nd)
                params += conv(c, out) + conv(out, out) + (conv(c, out, 1) if (i > 0 and j == 0) or c != out else 0)
                acts, c = acts + 6 * out * spatial, out
    else:
        from gradscope.models import VGG11  # torch loads only for configs with a VGG

        params, acts, c = 0, 0, in_ch
        for v in VGG11:
            if v == "M":
                spatial = max(1, -(-spatial // 2**nd))
                continue
            out = max(1, v * width // 64)
            params, acts, c = params + conv(c, out), acts + 3 * out * spatial, out
    return params + c * d["classes"] + d["classes"], acts + d["classes"]


def n_checkpoints(settings: dict) -> int:
    from gradscope.config import checkpoint_count  # counted, not listed: nothing here grows with train.steps

    return checkpoint_count(settings["train"])


def _mb(n_bytes: float) -> float:
    return n_bytes / 1e6


def _round_mb(mb: float) -> int:
    return int(math.ceil((BASE_MB + SAFETY * mb) / 500.0) * 500)


def _round_min(flops: float, device: str = "cpu") -> int:
    return int(math.ceil((MIN_RUNTIME + SAFETY * flops / FLOPS_PER_MINUTE[device]) / 5.0) * 5)


def estimate(rule: str, settings: dict, *, per_run: bool = False) -> dict:
    """{"mem_mb", "runtime", "gpu"} of one rule's job for one run, before retries. per_run: the
    per-checkpoint rules (extract_examples, curvature) cover every checkpoint in one job
    (checkpoint_jobs: per_run), which takes as long as their per-checkpoint jobs together."""
    d = data_size(settings)
    n = d["n_train"] + d["n_test"]
    width_in = d["tokens"] or d["features"]
    params, acts = model_size(settings)
    train, ex, curv = settings["train"], settings["examples"], settings["curvature"]
    steps = int(train["steps"])
    batch = int(train["batch_size"] or d["n_train"])
    ckpts = n_checkpoints(settings)
    proj_dim = int(ex["proj_dim"])
    data_bytes = 8 * n * (width_in + 4)
    mem, flops = 0.0, 0.0
    if rule == "generate_data":
        mem = _mb(4 * data_bytes)
        flops = 100.0 * n * max(width_in, 1)
    elif rule == "train":
        # weights, gradient, two optimizer moments, the resume checkpoint and its copy; activations of a batch
        mem = _mb(4 * params * 6 + 4 * 3 * acts * batch + data_bytes)
        evals = steps / max(int(train["log_every"]), 1)
        flops = 6.0 * params * batch * steps + 2.0 * params * n * evals
    elif rule == "import_run":
        # a run gradscope did not train: each checkpoint evaluated on both splits, and its mean training gradient
        mem = _mb(4 * 4 * params + 4 * 3 * acts * 8192 + data_bytes)
        flops = ckpts * 8.0 * params * n
    elif rule == "extract_examples":
        chunk = int(ex["batch_size"])
        # one chunk of per-example gradients (and their projections), activations, the whole table
        mem = _mb(4 * 3 * params * chunk + 4 * 3 * acts * chunk + n * (4 * proj_dim + 100) + data_bytes)
        flops = n * (8.0 * params + 4.0 * params * proj_dim / max(math.sqrt(params), 1.0))
    elif rule == "curvature":
        subset = min(int(curv["subset_size"]), d["n_train"])
        hvps = int(curv["lanczos_iters"]) + int(curv["trace_max_samples"])
        # Lanczos basis (float64), a double-backward graph over the subset
        mem = _mb(8 * params * (int(curv["lanczos_iters"]) + 4) + 4 * 6 * acts * subset + 4 * 4 * params + data_bytes)
        flops = 12.0 * params * subset * hvps
    elif rule in ("detect_signals", "animate"):
        mem = _mb(4 * n * ckpts * (4 * proj_dim + 100))
        flops = 50.0 * n * ckpts * proj_dim
    elif rule == "influence":
        # every checkpoint's table in memory, and a block of 512 test examples' scores against all training examples
        n_test = d["n_test"] if not settings["influence"]["test_examples"] else min(
            d["n_test"], int(settings["influence"]["test_examples"]))
        mem = _mb(4 * n * ckpts * (4 * proj_dim + 100) + 8 * 3 * 512 * d["n_train"])
        flops = 2.0 * n_test * d["n_train"] * ckpts * proj_dim
    elif rule == "progress":
        # one checkpoint's model and the logits over all p^2 pairs (float64) with their restricted and excluded
        # copies; a forward pass over the pairs and two projections per checkpoint
        pairs, classes = d["vocab"] ** 2, d["classes"]
        mem = _mb(4 * 4 * params + 8 * 4 * pairs * classes + 4 * acts * pairs + data_bytes)
        flops = ckpts * (2.0 * params * pairs * 3 + 8.0 * pairs * classes * 2 * 5)
    elif rule in ("plots", "report", "timeline"):  # timeline: the metrics, curvature and group tables
        mem = _mb(100 * ckpts * 1000)
    if per_run and rule in ("extract_examples", "curvature"):
        flops *= ckpts
    gpu = settings.get("device") == "cuda" and rule in TORCH_RULES
    return {"mem_mb": _round_mb(mem), "runtime": _round_min(flops, "cuda" if gpu else "cpu"), "gpu": int(gpu)}


def estimate_sweep(runs_settings: list[dict]) -> dict:
    """The sweep report of an experiment reads every run's metrics and curvature tables."""
    total = sum(n_checkpoints(s) + int(s["train"]["steps"]) // max(int(s["train"]["log_every"]), 1)
                for s in runs_settings)
    return {"mem_mb": _round_mb(_mb(200 * total)), "runtime": _round_min(1e4 * total), "gpu": 0}


# The dashboard keeps at most this many detectors' top-k per checkpoint (gradscope.signals registers about a dozen)
DETECTORS_BOUND = 16


def estimate_dashboard(runs_settings: list[dict], dashboard: dict) -> dict:
    """A sweep's dashboard (gradscope.dashboard.build_sweep_dashboard): it reads one run's tables at a time
    (every checkpoint's examples table, with its gradient projections, and the signals tables) and keeps each
    run's page data: the sampled examples' trajectories and PCA at every checkpoint (`dashboard.max_examples`,
    every planted example and each detector's top_k per checkpoint), its metrics and histograms, then writes
    the page as one text. The largest run's tables plus every run's page data, three copies of the latter
    (the data, its JSON, the page). Measured: a 100-run sweep of 2,000 training and 500 test examples at 20
    checkpoints peaked at 0.66 GB (bench/bench_dashboard.py)."""
    tables, page, rows = 0.0, 0.0, 0
    for s in runs_settings:
        d = data_size(s)
        n_train, n = d["n_train"], d["n_train"] + d["n_test"]
        ckpts, proj_dim = n_checkpoints(s), int(s["examples"]["proj_dim"])
        logged = int(s["train"]["steps"]) // max(int(s["train"]["log_every"]), 1) + 1
        kept = min(n_train, int(dashboard["max_examples"]) + DETECTORS_BOUND * ckpts * int(dashboard["top_k"])
                   + n_train // 10)  # the cap, the detectors' top-k, planted examples (generously a tenth)
        # the examples table in pandas (projections as one array object per row) and its training rows' copy;
        # the signals tables (detections, loss changes) of the training examples; the sampled projections' PCA
        run_tables = (2 * n * ckpts * (8 * proj_dim + 400) + 600 * n_train * ckpts
                      + 3 * 8 * kept * ckpts * proj_dim)
        tables = max(tables, run_tables)
        # trajectories (4 columns) and the PCA (2) per checkpoint, cartography (9) as base64 float32; metrics and
        # histograms as JSON numbers
        page += 3 * (kept * (6 * ckpts + 9) * 4 * 4 / 3 + logged * 12 * 20 + ckpts * 4 * 40 * 10)
        rows += n * ckpts + logged
    return {"mem_mb": _round_mb(_mb(tables + page)), "runtime": _round_min(2e5 * rows), "gpu": 0}


def use_threads(n: int, *, torch_threads: bool = True) -> dict:
    """Have this job's numeric libraries use `n` threads (its rule's `threads:`, from the config's `threads`
    block; Snakemake also sets OMP_NUM_THREADS to it): torch's intra-op threads (torch_threads: the torch
    stages; the others do not import torch) and the BLAS pools numpy has loaded (threadpoolctl, where
    installed). Logs what each uses, and returns it: {"threads", "omp_num_threads", "torch", "blas"}."""
    import logging
    import os

    n = max(int(n), 1)
    used = {"threads": n, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if torch_threads:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        used["torch"] = torch.get_num_threads()
    try:
        import numpy  # noqa: F401  (loads its BLAS, which threadpoolctl then sees)
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # no threadpoolctl: OMP_NUM_THREADS (Snakemake's) holds for the pools
        pass
    else:
        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            threadpool_limits(n, user_api="blas")
            used["blas"] = max(p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas")
    logging.getLogger(__name__).info("threads: %d (%s)", n, ", ".join(
        f"{k} {v}" for k, v in used.items() if k != "threads"))
    return used
