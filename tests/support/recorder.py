"""Recording a hand-written PyTorch loop with gradscope.recorder.Recorder."""

import random

import numpy as np
import torch

from gradscope import config, data
from gradscope.losses import per_example_loss
from gradscope.models import build_model
from gradscope.optim import build_optimizer
from gradscope.recorder import Recorder


DATA = {"generator": "digits", "digits": {"label_noise": 0.1, "train_fraction": 0.3}}
STEPS, BATCH = 40, 32


def resolved(optim=None, **train):
    """The training slice of a run, as the workflow resolves it."""
    train = {"steps": STEPS, "batch_size": BATCH, "log_every": 5, "checkpoints": {"log_spaced": 5},
             "dynamics_every": 10, **train}
    return {"data": config.data_slice({"data": config.section("data", DATA)}),
            "model": config.section("model", {"kind": "mlp", "width": 16, "depth": 1}),
            "optim": config.section("optim", optim or {"name": "sgd", "lr": 0.1, "momentum": 0.9}),
            "train": config.section("train", train), "seed": 4, "device": "cpu"}


def hand_loop(settings, folder, *, stop_at=None, resume=False, scaler=None, accumulate=1, **recorder_kw):
    """A plain PyTorch loop, drawing batches as the train stage does, recording into `folder`."""
    (x, y), _, spec = data.load(settings["data"])
    seed = settings["seed"]
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    batches = torch.Generator().manual_seed(seed)
    model = build_model(settings["model"], spec)
    opt = build_optimizer(model.parameters(), settings["optim"])
    train = settings["train"]
    kw = dict(model_settings=settings["model"], data=settings["data"], steps=train["steps"], batch_size=train["batch_size"],
              log_every=train["log_every"], checkpoints=train["checkpoints"], dynamics_every=train["dynamics_every"],
              seed=seed, device="cpu")
    rec = Recorder(folder, model=model, optimizer=opt, scaler=scaler, resume=resume, batch_generator=batches,
                   **{**kw, **recorder_kw})
    n, cursor, order = len(y), len(y), None
    if rec.step:  # resumed: the epoch's order and the cursor, as the loop left them in rec.loop_state
        order, cursor = rec.loop_state["order"], rec.loop_state["cursor"]
    for step in range(rec.step, train["steps"]):
        if step == stop_at:
            return rec
        opt.zero_grad(set_to_none=True)
        if cursor + BATCH > n:
            order, cursor = torch.randperm(n, generator=batches), 0
        idx, cursor = order[cursor:cursor + BATCH], cursor + BATCH
        model.train()
        for part in idx.chunk(accumulate):  # gradient accumulation: micro-batches summed into .grad
            loss = per_example_loss(model(x[part]), y[part], "cross_entropy").sum() / len(idx)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        rec.before_update(step)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        rec.loop_state.update(order=order, cursor=cursor)
        rec.after_update(step + 1)
    rec.finish()
    return rec
