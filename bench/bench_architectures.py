"""Benchmark: gradscope's per-example statistics on common architectures, against a batched backward and the peers.

    python bench/bench_architectures.py                       # every architecture, proj_dim 32 and 1024
    python bench/bench_architectures.py --archs resnet18_gn conv1d --proj-dims 32 --rounds 2
    OMP_NUM_THREADS=1 python bench/bench_architectures.py --threads 1

Not a test. Per architecture (float32, eval mode, CPU, random inputs of the right shape,
cross-entropy over 10 classes), every method does the work of bench_examples.py on the same
inputs: each example's exact gradient norm, its dot product and cosine with the batch's mean
gradient, and its projection to proj_dim with gradscope's fixed-seed Kronecker projection.
Methods (bench_examples.make_method; the peers then compute the statistics from materialized
per-example gradients with bench_examples.stats_from_blocks):

  batched_backward  forward + backward of the mean loss (the reference cost)
  gradscope         gradscope.examples.per_example_stats(..., batch_size=batch, layer_norms=False)
  vmap              torch.func vmap(grad) over the batch, then the statistics
  opacus            opacus GradSampleModule(loss_reduction="sum"); Opacus records activations in
                    training mode only, so its copy is in training mode with dropout off (the same
                    function); it refuses BatchNorm (a layer with buffers), nn.MultiheadAttention
                    and nn.LSTM (it wants its own DP versions): printed as failed
  backpack          BackPACK BatchGrad (where it supports the model; a failure is printed)

Architectures (the CNNs' widths are a quarter of the originals, to keep CPU time sane; batch
64 for the ResNets, 128 for VGG and the transformer, 1024 for conv1d, 256 for the LSTM, so that
a batched backward takes about 0.1-0.3 s for the first four on one core; --batch overrides):
  resnet18_gn  gradscope.models "resnet" (ResNet-18 in the CIFAR form: 3x3 stem, 4 stages x 2
               BasicBlocks, widths 16/32/64/128, base_width 16 = 64 / 4), GroupNorm (8 groups), 32x32x3
  resnet18_bn  the same with BatchNorm (eval mode: running statistics)
  vgg11_bn     gradscope.models "vgg" (VGG-11-BN, channels 64..512 scaled by 16/64 = 1/4, global
               average pool and one linear read-out), 32x32x3
  transformer  2-layer nn.TransformerEncoder (d_model 128, 4 heads, ff 512, batch_first, dropout 0.1
               but eval), token embedding (vocab 1000) + learned positions nn.Embedding(arange(32)),
               mean pooling, Linear head; sequences of 32 tokens
  conv1d       Conv1d(1,32,5,pad 2)-ReLU-Conv1d(32,32,3,stride 2)-ReLU-Conv1d(32,32,3,stride 2)-flatten-
               Linear(288,10) on MNIST-1D (inputs (1, 40) and labels of its training split, made by
               gradscope.data from the mnist1d package's templates, seed 0: nothing is downloaded)
  lstm         nn.LSTM(1 feature over 40 steps, hidden 64, batch_first) + Linear(64,10) on the last
               state, on the same MNIST-1D: its 4 LSTM tensors fall back to vmap(grad) in gradscope
  conv3d_in    Conv3d(1,8,3,pad 1)-InstanceNorm3d(affine)-ReLU-Conv3d(8,16,3,stride 2,pad 1)-InstanceNorm3d-
               ReLU-Conv3d(16,32,3,stride 2,pad 1)-ReLU-mean-Linear(32,10) on random 16x16x16 volumes, batch 32
  rms_mixer    token Embedding(1000, 128) + learned positions, 2 pre-norm residual MLP blocks (nn.RMSNorm,
               Linear 128-256-128, GELU), nn.RMSNorm, mean pooling, Linear head; 32 tokens, batch 128
  embbag       nn.EmbeddingBag(10000, 64, mode "mean") over one bag per example of 1 to 32 tokens (a 1-D
               input with offsets; token 0 absent) + Linear(64,64)-ReLU-Linear(64,10), batch 1024

The BatchNorm variants get random running statistics (means in [-0.2, 0.2], variances in
[0.5, 2]) so that eval-mode normalization is not the identity. Opacus and BackPACK assume
every layer input has a batch axis: for them only, the transformer's positions index arange
expanded over the batch (the same function).

Timing: one fresh process per architecture; in it every (method, proj_dim) runs once per round,
--rounds rounds after a warm-up, so that changes of the machine's load hit every method
alike; median and minimum wall time. Torch's default threads unless --threads (on a loaded shared
machine, --threads 1 is much less noisy: see bench/README.md). --runs N repeats everything in N
fresh processes (bench/runs.py) and judges the target on gradscope's median ratio over them. Checks: each
method's grad_norm against the vmap peer's (max over examples of |a - b| / |b|); a peer
that is off by more than 1e-3 is marked "wrong" and is not counted as the fastest peer.
Target: an architecture made only of fast-path layers (no fallback parameter) costs at
most 2.5 batched backwards at proj_dim 32 (median ratio).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_examples import SEED, make_method  # noqa: E402  (also puts src/ on sys.path)
from runs import child, repeat, spread, without, write_json  # noqa: E402

from gradscope import examples  # noqa: E402
from gradscope.data import generate_mnist1d  # noqa: E402
from gradscope.models import InputSpec, build_model  # noqa: E402

PEERS = ["vmap", "opacus", "backpack"]
METHODS = ["batched_backward", "gradscope", *PEERS]
TARGET = 2.5
WRONG = 1e-3  # a peer whose grad_norm is off by more than this (relative) is not a valid peer
N_CLASSES = 10


# ---- architectures ------------------------------------------------------------------------------
class TokenTransformer(nn.Module):
    """Embedding + learned positions, a torch nn.TransformerEncoder, mean pooling, a linear head."""

    def __init__(self, vocab=1000, length=32, d_model=128, heads=4, ff=512, layers=2, n_classes=N_CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes)
        self.batch_positions = False  # True for Opacus/BackPACK: positions with a batch axis

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        if self.batch_positions:
            pos = pos.expand_as(tokens)
        return self.head(self.encoder(self.embed(tokens) + self.pos(pos)).mean(1))


class SeqLSTM(nn.Module):
    """A (1, length) signal read as `length` steps of one feature; the last hidden state to a linear head."""

    def __init__(self, hidden=64, n_classes=N_CLASSES):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):  # (b, 1, length)
        out, _ = self.lstm(x.transpose(1, 2))
        return self.head(out[:, -1])


class RMSMixer(nn.Module):
    """Embedding + learned positions, pre-norm residual MLP blocks with nn.RMSNorm, mean pooling, a linear head."""

    def __init__(self, vocab=1000, length=32, d=128, hidden=256, blocks=2, n_classes=N_CLASSES):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.RMSNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
                                    for _ in range(blocks))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, n_classes)
        self.batch_positions = False  # True for Opacus/BackPACK: positions with a batch axis

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        if self.batch_positions:
            pos = pos.expand_as(tokens)
        h = self.embed(tokens) + self.pos(pos)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h).mean(1))


class BagNet(nn.Module):
    """One EmbeddingBag bag per example from its tokens (0: absent), an MLP head."""

    def __init__(self, vocab=10000, d=64, n_classes=N_CLASSES):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, d, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, n_classes))

    def forward(self, tokens):  # (b, 32)
        keep = tokens != 0
        lengths = keep.sum(1)
        return self.mlp(self.bag(tokens[keep], lengths.cumsum(0) - lengths))


def bags(b: int, gen) -> torch.Tensor:
    """b rows of 32 token ids, each keeping its first 1 to 32 (the rest 0, absent)."""
    tokens = torch.randint(1, 10000, (b, 32), generator=gen)
    lengths = torch.randint(1, 33, (b, 1), generator=gen)
    return tokens.masked_fill(torch.arange(32) >= lengths, 0)


def conv3d_net():
    return nn.Sequential(nn.Conv3d(1, 8, 3, padding=1, bias=False), nn.InstanceNorm3d(8, affine=True), nn.ReLU(),
                         nn.Conv3d(8, 16, 3, stride=2, padding=1, bias=False), nn.InstanceNorm3d(16, affine=True), nn.ReLU(),
                         nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(32, N_CLASSES))


def conv1d_net():
    return nn.Sequential(nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 32, 3, stride=2), nn.ReLU(),
                         nn.Conv1d(32, 32, 3, stride=2), nn.Flatten(), nn.Linear(32 * 9, N_CLASSES))


def mnist1d(b: int, _gen=None) -> tuple[torch.Tensor, torch.Tensor]:
    """b examples of MNIST-1D's training split: inputs (b, 1, 40) and labels."""
    train, _, _ = generate_mnist1d(num_samples=10 * -(-2 * b // 10), train_split=0.8, seed=0, label_noise=0.0,
                                   subsample_train=None, subsample_test=None, standardize=None)
    x = torch.tensor(np.stack(train["x"].to_numpy()[:b]), dtype=torch.float32).reshape(b, 1, 40)
    return x, torch.tensor(train["label"].to_numpy()[:b])


IMAGE = InputSpec("dense", 3 * 32 * 32, 0, N_CLASSES, (3, 32, 32))
# name: (builder, batch, data maker(batch, generator) -> inputs, or (inputs, labels))
ARCHS = {
    "resnet18_gn": (lambda: build_model({"kind": "resnet", "base_width": 16, "norm": "group", "groups": 8}, IMAGE),
                    64, lambda b, g: torch.randn(b, 3, 32, 32, generator=g)),
    "resnet18_bn": (lambda: build_model({"kind": "resnet", "base_width": 16, "norm": "batch"}, IMAGE),
                    64, lambda b, g: torch.randn(b, 3, 32, 32, generator=g)),
    "vgg11_bn": (lambda: build_model({"kind": "vgg", "base_width": 16, "norm": "batch"}, IMAGE),
                 128, lambda b, g: torch.randn(b, 3, 32, 32, generator=g)),
    "transformer": (TokenTransformer, 128, lambda b, g: torch.randint(1000, (b, 32), generator=g)),
    "conv1d": (conv1d_net, 1024, mnist1d),
    "lstm": (SeqLSTM, 256, mnist1d),
    "conv3d_in": (conv3d_net, 32, lambda b, g: torch.randn(b, 1, 16, 16, 16, generator=g)),
    "rms_mixer": (RMSMixer, 128, lambda b, g: torch.randint(1000, (b, 32), generator=g)),
    "embbag": (BagNet, 1024, bags),
}


def setup(arch: str, batch: int | None = None):
    """(model in eval mode, x, y, batch), deterministic."""
    build, default_batch, inputs = ARCHS[arch]
    batch = batch or default_batch
    torch.manual_seed(SEED)
    model = build().eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # non-trivial running statistics
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(SEED + 1)
    data = inputs(batch, gen)
    x, y = data if isinstance(data, tuple) else (data, torch.randint(N_CLASSES, (batch,), generator=gen))
    return model, x, y, batch


def opacus_train_mode(model) -> None:
    """Opacus records activations only of modules in training mode: train mode, with the function
    of eval mode (dropout probabilities 0; BatchNorm kept in eval mode, which Opacus refuses anyway)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def make(method: str, model, x, y, k: int):
    """One method's callable (bench_examples.make_method); the peers wrap their own copy of the model."""
    if method in ("opacus", "backpack"):
        model = copy.deepcopy(model)
        if hasattr(model, "batch_positions"):
            model.batch_positions = True
    if method == "opacus":
        opacus_train_mode(model)
    return make_method(method, model, x, y, "cross_entropy", k, 1)


# ---- timing --------------------------------------------------------------------------------------
def time_arch(arch: str, proj_dims: list[int], rounds: int, batch: int | None) -> dict:
    """{(method, k): {"wall": [...], "grad_norm": tensor} or {"error": str}}, methods interleaved per round."""
    model, x, y, batch = setup(arch, batch)
    fns, res = {}, {}
    for k in proj_dims:
        for method in METHODS:
            if method == "batched_backward" and k != proj_dims[0]:
                continue  # the reference does not depend on k
            try:
                fns[method, k] = make(method, model, x, y, k)
            except Exception as e:  # a peer that cannot wrap this model is reported, not fatal
                res[method, k] = {"error": f"{type(e).__name__}: {e}"[:200]}
    for key, fn in list(fns.items()):  # warm-up; keep the first result for the checks
        try:
            out = fn()
            res[key] = {"wall": [], "grad_norm": None if out is None else torch.as_tensor(out["grad_norm"])}
        except Exception as e:
            res[key] = {"error": f"{type(e).__name__}: {e}"[:200]}
            del fns[key]
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            res[key]["wall"].append(time.perf_counter() - t0)
    return {"batch": batch, "n_params": sum(p.numel() for p in model.parameters()),
            "fallback": examples.fallback_parameters(model, x, y), "res": res}


def table(out: dict, proj_dims: list[int]) -> dict:
    """One architecture's results as plain numbers (what a process of a run hands back): batch, size,
    fallback tensors and, per proj_dim, every method's row (`summarize`)."""
    return {"batch": out["batch"], "n_params": out["n_params"], "fallback": out["fallback"],
            "rows": {str(k): summarize(out, k, proj_dims[0]) for k in proj_dims}}


def rel_diff(a, b) -> float:
    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


# ---- report --------------------------------------------------------------------------------------
def summarize(out: dict, k: int, k0: int) -> dict:
    """Per method at proj_dim k: median/min ms, ratios to the batched backward, check vs vmap."""
    res = out["res"]
    bwd = res.get(("batched_backward", k0), {})
    ref = res.get(("vmap", k), {}).get("grad_norm")
    rows = {}
    for method in METHODS:
        r = res.get((method, k0 if method == "batched_backward" else k))
        if r is None:
            continue
        if "error" in r:
            rows[method] = {"error": r["error"]}
            continue
        row = {"med": statistics.median(r["wall"]), "min": min(r["wall"])}
        if "wall" in bwd:
            row["x_bwd"] = row["med"] / statistics.median(bwd["wall"])
            row["x_bwd_min"] = row["min"] / min(bwd["wall"])
        if ref is not None and r["grad_norm"] is not None:
            row["check"] = rel_diff(r["grad_norm"], ref)
        rows[method] = row
    valid = {m: rows[m] for m in PEERS if "med" in rows.get(m, {}) and rows[m].get("check", 0.0) <= WRONG}
    if valid and "med" in rows.get("gradscope", {}):
        fastest = min(valid, key=lambda m: valid[m]["med"])
        rows["gradscope"]["peer"] = fastest
        rows["gradscope"]["x_peer"] = valid[fastest]["med"] / rows["gradscope"]["med"]
    return rows


def print_arch(arch: str, out: dict, proj_dims: list[int]) -> None:
    """One architecture's table (`table`): every method at every proj_dim."""
    fb = out["fallback"]
    print(f"\n== {arch}: {out['n_params']:,} parameters, batch {out['batch']}; fallback (vmap) parameter tensors: "
          f"{len(fb)}{' (' + ', '.join(fb) + ')' if fb else ''}")
    print(f"  {'method':<17} {'proj':>5} {'median ms':>10} {'min ms':>9} {'x bwd':>7} {'x bwd min':>9}  "
          f"grad_norm vs vmap (max rel. diff)")
    for k in proj_dims:
        for method, row in out["rows"][str(k)].items():
            if method == "batched_backward" and k != proj_dims[0]:
                continue
            kk = "-" if method == "batched_backward" else str(k)
            if "error" in row:
                print(f"  {method:<17} {kk:>5} failed: {row['error']}")
                continue
            check = "" if "check" not in row or method == "vmap" else f"{row['check']:.1e}"
            if row.get("check", 0.0) > WRONG:
                check += "  WRONG (not counted as a peer)"
            print(f"  {method:<17} {kk:>5} {row['med'] * 1e3:>10.1f} {row['min'] * 1e3:>9.1f} "
                  f"{row.get('x_bwd', float('nan')):>7.2f} {row.get('x_bwd_min', float('nan')):>9.2f}  {check}")


def print_tables(results: dict, proj_dims: list[int]) -> None:
    for k in proj_dims:
        print(f"\n-- proj_dim {k}: gradscope per_example_stats against a batched backward and the fastest valid peer "
              f"(median; min in parentheses)")
        print(f"  {'architecture':<13} {'batch':>5} {'fallback':>8} {'bwd ms':>8} {'gradscope ms':>13} "
              f"{'x bwd':>13} {'fastest peer':>13} {'peer ms':>9} {'peer/gs':>8} {'gs vs vmap':>10}")
        for arch, out in results.items():
            rows = out["rows"][str(k)]
            bwd, gs = rows.get("batched_backward", {}), rows.get("gradscope", {})
            if "med" not in gs or "med" not in bwd:
                print(f"  {arch:<13} failed: {gs.get('error') or bwd.get('error')}")
                continue
            peer = gs.get("peer")
            peer_ms = f"{rows[peer]['med'] * 1e3:9.1f}" if peer else f"{'-':>9}"
            x_peer = f"{gs['x_peer']:8.1f}" if peer else f"{'-':>8}"
            check = f"{gs['check']:.1e}" if "check" in gs else "-"
            print(f"  {arch:<13} {out['batch']:>5} {len(out['fallback']):>8} {bwd['med'] * 1e3:>8.1f} "
                  f"{gs['med'] * 1e3:>13.1f} {gs['x_bwd']:>6.2f} ({gs['x_bwd_min']:>4.2f}) {peer or '-':>13} "
                  f"{peer_ms} {x_peer} {check:>10}")
    k = 32 if 32 in proj_dims else proj_dims[0]
    print(f"\ntarget: <= {TARGET}x a batched backward at proj_dim {k} for architectures made only of fast-path "
          f"layers (median ratio)")
    for arch, out in results.items():
        gs = out["rows"][str(k)].get("gradscope", {})
        if out["fallback"]:
            verdict = f"not applicable ({len(out['fallback'])} fallback tensors)"
        elif "x_bwd" not in gs:
            verdict = "failed"
        else:
            verdict = f"{'meets' if gs['x_bwd'] <= TARGET else 'MISSES'} ({gs['x_bwd']:.2f}x; {gs['x_bwd_min']:.2f}x by min)"
        print(f"  {arch:<13} {verdict}")


def separately(argv: list[str], archs: list[str], show: bool) -> dict:
    """{arch: table}: each architecture in a fresh process of its own, so that one architecture's peers
    (gigabytes of per-example gradients) do not shape the allocator that the next one is timed with."""
    argv = without(argv, "--archs")
    return {arch: child(__file__, [*argv, "--archs", arch], show)[arch] for arch in archs}


def print_runs(runs: list[dict], proj_dims: list[int]) -> None:
    """gradscope's ratio to the batched backward in each fresh run, its median over runs, and the target on it."""
    k0 = 32 if 32 in proj_dims else proj_dims[0]

    def ratios(arch, k):
        return [r[arch]["rows"][str(k)]["gradscope"]["x_bwd"] for r in runs
                if "x_bwd" in r[arch]["rows"][str(k)].get("gradscope", {})]

    print(f"\ngradscope / batched backward over {len(runs)} fresh runs: median (min-max), then each run")
    for k in proj_dims:
        print(f"-- proj_dim {k}")
        for arch in runs[0]:
            vals = ratios(arch, k)
            if vals:
                print(f"  {arch:<13} {spread(vals):>20}   {' '.join(f'{v:.2f}' for v in vals)}")
    print("-- the batched backward itself, ms in each run (the reference moves between processes)")
    for arch in runs[0]:
        ms = [r[arch]["rows"][str(proj_dims[0])]["batched_backward"]["med"] * 1e3 for r in runs
              if "med" in r[arch]["rows"][str(proj_dims[0])].get("batched_backward", {})]
        print(f"  {arch:<13} {' '.join(f'{v:.1f}' for v in ms)}")
    print(f"\ntarget: <= {TARGET}x a batched backward at proj_dim {k0} for architectures made only of fast-path "
          f"layers (median over runs)")
    for arch in runs[0]:
        vals, fallback = ratios(arch, k0), runs[0][arch]["fallback"]
        if fallback:
            verdict = f"not applicable ({len(fallback)} fallback tensors)"
        elif not vals:
            verdict = "failed"
        else:
            med = statistics.median(vals)
            above = sum(v > TARGET for v in vals)
            verdict = f"{'meets' if med <= TARGET else 'MISSES'} ({med:.2f}x; {above} of {len(vals)} runs above)"
        print(f"  {arch:<13} {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--proj-dims", nargs="+", type=int, default=[32, 1024])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="one batch size for every architecture (default: each its own)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat everything in this many fresh processes and report gradscope's ratios over them")
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runs > 1:
        print_runs(repeat(__file__, args.runs, run=lambda argv: separately(argv, args.archs, False)), args.proj_dims)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    if len(args.archs) > 1:  # each in a fresh process of its own, whose header and tables print as it ends
        results = separately(sys.argv[1:], args.archs, show=True)
    else:
        arch = args.archs[0]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; {args.rounds} timed rounds after a warm-up, "
              f"methods interleaved", flush=True)
        results = {arch: table(time_arch(arch, args.proj_dims, args.rounds, args.batch), args.proj_dims)}
        print_arch(arch, results[arch], args.proj_dims)
    if args.json_out:  # a process of a larger run: its summary goes back to the parent
        write_json(args.json_out, results)
        return
    print_tables(results, args.proj_dims)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average at the end: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
