"""Curvature problems with a known answer: a tiny seeded MLP and its exact Hessian, a matrix as an operator,\nreal architectures and their dense Hessian, GGN and Fisher; snapshots that show a model untouched."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from gradscope.operators import CurvatureOperator


N_EXAMPLES = 16


def make_problem(seed: int):
    """Tiny MLP 5-4-3 (39 params) with weights, inputs and targets drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(N_EXAMPLES, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=gen)
    return model, x, y


def flat_fn(model, x, fn):
    """fn(logits) as a function of the parameters flattened in named_parameters order, and theta."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, flat.split(numels), shapes)}
        return fn(functional_call(model, params, (x,)))

    return f, theta


def exact_hessian(model, x, y, loss):
    """Dense Hessian (n, n) of the mean loss w.r.t. the parameters flattened in named_parameters order."""
    f, theta = flat_fn(model, x, lambda logits: per_example_loss(logits, y, loss).mean())
    return torch.func.hessian(f)(theta)


class MatrixOperator(CurvatureOperator):
    """A dense symmetric matrix as an operator (the algorithms take operators only): a known spectrum."""

    name = "matrix"

    def __init__(self, A):
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A

    def _matvec(self, v):
        return self.A @ v


LOSSES = ["cross_entropy", "mse"]


def snapshot(model):
    return {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}


def assert_untouched(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name][0]), name
        assert p.requires_grad == before[name][1], name
        assert p.grad is None, name


def dense_hessian(model, x, y, loss="cross_entropy"):
    """Exact Hessian (n, n) of the mean loss w.r.t. the TRAINABLE parameters (named_parameters order), one
    row per basis vector on a flat-parameter function (torch.autograd.functional.hessian), apart from the
    leaves, eval gate and parameter bookkeeping under test. Not torch.func.hessian (forward-over-reverse)
    here: in torch 2.13 on CPU it gets nn.LayerNorm's weight rows wrong (an asymmetric "Hessian", 0.22 off
    on Linear-LayerNorm-Linear, 0.02 on the encoder below, where central differences of the gradient agree
    with double backward to 1e-11); `test_hvps_through_pytorch_attention_need_the_math_kernel` checks
    against finite differences too."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    shapes, numels = [p.shape for _, p in named], [p.numel() for _, p in named]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(flat):
        params = {name: c.view(s) for (name, _), c, s in zip(named, flat.split(numels), shapes)}
        return per_example_loss(functional_call(model, params, (x,)), y, loss).mean()

    # vmap over the rows is ~3-10x faster, but GroupNorm's double backward does not batch (torch 2.13).
    vectorize = not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernel has no double backward
        return torch.autograd.functional.hessian(f, theta, vectorize=vectorize)


class TokenEncoder(nn.Module):
    """Embedding + positions, a 2-layer nn.TransformerEncoder (PyTorch's own attention), mean-pooled read-out."""

    def __init__(self, vocab=5, seq=3, d=8, classes=3, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=12, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.readout = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.readout(self.encoder(self.embed(tokens) + self.pos).mean(1))


def with_running_stats(model, x):
    """Move BatchNorm's running statistics off their init (three training-mode forwards), then eval mode."""
    model.train()
    with torch.no_grad():
        for scale in (0.5, 1.0, 2.0):
            model(scale * x + 0.3)
    return model.eval()


def real_problem(name: str, seed: int = 0):
    """(model in eval mode, float64; inputs; targets) of one of the architectures below, tiny."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    if name == "transformer":
        model = TokenEncoder().double().eval()
        return model, torch.randint(0, 5, (8, 3), generator=gen), torch.randint(0, 3, (8,), generator=gen)
    config, shape = {
        "resnet_group": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1], "norm": "group", "groups": 2}, (1, 6, 6)),
        "resnet_batch": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1]}, (1, 6, 6)),
        "resnet_1d": ({"kind": "resnet", "base_width": 2, "blocks": [1, 1]}, (1, 8)),
        "vgg_batch": ({"kind": "vgg", "base_width": 1}, (1, 4, 4)),
        "cnn_1d": ({"kind": "cnn", "channels": [3, 4], "activation": "tanh"}, (2, 10)),
    }[name]
    model = build_model(config, InputSpec("dense", int(np.prod(shape)), 0, 3, shape)).double()
    x = torch.randn(8, *shape, generator=gen, dtype=torch.float64)
    return with_running_stats(model, x), x, torch.randint(0, 3, (8,), generator=gen)


def dense_curvatures(model, x, y, loss):
    """The GGN, empirical Fisher and true Fisher (n, n) from their definitions, slowly: the logits'
    Jacobian by torch.autograd.functional.jacobian, the loss Hessian in the logits by
    torch.autograd.functional.hessian, per-example gradients from a loop over single examples."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def params(flat):
        return {name: c.view(p.shape) for (name, p), c in zip(named, flat.split([p.numel() for _, p in named]))}

    def logits_of(flat, inputs=x):
        return functional_call(model, params(flat), (inputs,))

    J = torch.autograd.functional.jacobian(logits_of, theta)  # (N, C, n)
    f = logits_of(theta).detach()  # (N, C)
    N, C = f.shape
    H_out = [torch.autograd.functional.hessian(lambda z, i=i: per_example_loss(z[None], y[i : i + 1], loss)[0], f[i])
             for i in range(N)]  # (C, C) each

    def example_grad(i, label):
        flat = theta.clone().requires_grad_(True)
        value = per_example_loss(logits_of(flat, x[i : i + 1]), torch.tensor([label]), loss)[0]
        return torch.autograd.grad(value, flat)[0]  # (n,)

    ggn = sum(J[i].T @ H_out[i] @ J[i] for i in range(N)) / N
    ef = sum(torch.outer(g, g) for g in (example_grad(i, int(y[i])) for i in range(N))) / N
    if loss == "cross_entropy":  # labels from the model: every class c, weighted by p_ic
        p = f.softmax(1)
        fisher = sum(p[i, c] * torch.outer(g, g) for i in range(N) for c in range(C)
                     for g in [example_grad(i, c)]) / N
    else:  # N(f, I): the gradient at t = f + eps is -J^T eps, E[eps eps^T] = I
        fisher = sum(J[i].T @ J[i] for i in range(N)) / N
    return {"ggn": ggn, "empirical_fisher": ef, "fisher": fisher, "J": J, "example_grad": example_grad}
