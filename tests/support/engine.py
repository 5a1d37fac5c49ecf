"""Training and per-example statistics at small scale: a tiny run's settings and data, the loop reference
of the per-example statistics, killing a job mid-run."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import time

import numpy as np
import torch

from gradscope import data
from gradscope.config import expand_runs, load_config, train_slice
from gradscope.examples import SEED_STRIDE, layer_names, per_example_stats, random_projection
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec


def kill_when_checkpointed(cmd, store, min_step, env=None, **popen):
    """Start cmd, SIGKILL its whole process group once a checkpoint at >= min_step is stored."""
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.stem.split("_")[1]) >= min_step for p in store.glob("step_*.pt")):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the job was not killed mid-run: {proc.stderr.read().decode()[-2000:]}"


def setup_run(tmp_path, **optim):
    cfg = {"device": "cpu", "experiments": {"t": {
        "data": {"generator": "planted_flips", "planted_flips": {"n_train": 64, "n_test": 32, "n_features": 4}},
        "model": {"depth": 1, "width": 8},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, **optim},
        "train": {"steps": 12, "batch_size": 16, "log_every": 4, "checkpoints": {"every": 5}},
    }}}
    settings = train_slice(expand_runs(load_config(cfg))[0].settings)
    tr, te, meta = data.generate(settings["data"])
    folder = tmp_path / "data"
    data.write_dataset(tr, te, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
    splits = data.load_split(folder, "train")[:2], data.load_split(folder, "test")[:2]
    return settings, splits, InputSpec.from_dict(meta["input"])


# float64 where the model allows it; OneHot emits float32, so that model stays float32.
TOL = {torch.float64: {}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def loop_reference(model, x, y, loss):
    """One forward/backward per example on a copy of the model."""
    model = copy.deepcopy(model)
    rows = {k: [] for k in ("loss", "pred", "margin", "p_true", "el2n", "correct")}
    grads = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        logits = model(x[i : i + 1])
        value = per_example_loss(logits, y[i : i + 1], loss)[0]
        value.backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                for p in model.parameters() if p.requires_grad]))
        z, t = logits[0].detach(), int(y[i])
        rows["loss"].append(value.item())
        rows["pred"].append(int(z.argmax()))
        rows["margin"].append(z[t].item() - max(z[j].item() for j in range(len(z)) if j != t))
        rows["p_true"].append((z[t].exp() / z.exp().sum()).item())
        out = [(z[j].exp() / z.exp().sum()).item() if loss == "cross_entropy" else z[j].item() for j in range(len(z))]
        rows["el2n"].append(math.sqrt(sum((o - (j == t)) ** 2 for j, o in enumerate(out))))
        rows["correct"].append(rows["pred"][-1] == t)
    ref = {k: np.array(v) for k, v in rows.items()}
    return ref, torch.stack(grads)  # (n, n_params)


def expected_grad_stats(grads, mean):
    norms = grads.norm(dim=1)
    dots = grads @ mean
    return {"grad_norm": norms, "grad_dot_mean": dots, "grad_cos_mean": dots / (norms * mean.norm())}


def documented_projection(model, proj_dim, seed):
    """Dense "gaussian" projection from the seeding rule in the gradscope.projection docstring, built here independently."""
    blocks = []
    for i, (name, p) in enumerate(model.named_parameters()):
        gen = torch.Generator().manual_seed(seed * SEED_STRIDE + i)
        if p.dim() >= 2:
            A = torch.randn(p.shape[0], proj_dim, generator=gen)
            B = torch.randn(p[0].numel(), proj_dim, generator=gen)
            block = torch.stack([torch.kron(A[:, j], B[:, j]) for j in range(proj_dim)], dim=1)
        else:
            block = torch.randn(p.numel(), proj_dim, generator=gen)
        if p.requires_grad:
            blocks.append(block / math.sqrt(proj_dim))
    return torch.cat(blocks).to(next(model.parameters()).dtype)


def check(stats, ref, grads, mean, dtype):
    tol = TOL[dtype]
    for key in ("loss", "margin", "p_true", "el2n"):
        torch.testing.assert_close(torch.from_numpy(stats[key]), torch.tensor(ref[key], dtype=dtype), **tol, msg=key)
    np.testing.assert_array_equal(stats["pred"], ref["pred"])
    np.testing.assert_array_equal(stats["correct"], ref["correct"])
    for key, value in expected_grad_stats(grads, mean).items():
        torch.testing.assert_close(torch.from_numpy(stats[key]), value, **tol, msg=key)


def check_everything(model, x, y, loss, *, batch_size, proj_dim=6, seed=3, projection="gaussian"):
    """All statistics, layer norms and the projection against the loop (the "gaussian" projection
    rebuilt from its documented seeding here; "hadamard" from its dense form, itself checked
    against its definition in tests/test_projection.py)."""
    dtype = next(model.parameters()).dtype
    ref, grads = loop_reference(model, x, y, loss)
    mean = grads.mean(dim=0)
    stats = per_example_stats(model, x, y, loss=loss, batch_size=batch_size, proj_dim=proj_dim, seed=seed,
                              layer_norms=True, projection=projection)
    check(stats, ref, grads, mean, dtype)
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    layer = torch.stack([g.norm(dim=1) for g in grads.split(sizes, dim=1)], dim=1)
    assert stats["layer_grad_norm"].shape == (len(x), len(sizes)) == (len(x), len(layer_names(model)))
    torch.testing.assert_close(torch.from_numpy(stats["layer_grad_norm"]), layer, **TOL[dtype])
    R = (documented_projection(model, proj_dim, seed) if projection == "gaussian"
         else random_projection(model, proj_dim, seed, projection=projection))
    expected = (grads @ R).float()
    scale = expected.abs().max().item()
    torch.testing.assert_close(torch.from_numpy(stats["grad_proj"]), expected, rtol=1e-4, atol=1e-5 * scale)
    return stats
