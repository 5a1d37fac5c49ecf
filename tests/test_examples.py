"""Per-example statistics against a plain loop of one backward pass per example.

Every statistic of the fast engine (hooks on Linear, Conv2d and Embedding; vmap(grad) for the
rest) is checked against single-example backward passes on random shapes, and the
projection against a dense matrix built here from the documented seeding rule.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import gradscope.examples as ex
import gradscope.grad_rules.base
from gradscope import grad_rules
from gradscope.examples import (
    fallback_parameters,
    layer_names,
    mean_gradient,
    per_example_gradients,
    per_example_stats,
    random_projection,
)
from gradscope.losses import per_example_loss
from gradscope.models import InputSpec, build_model
from support.engine import TOL, check, check_everything, documented_projection, expected_grad_stats, loop_reference

MLP = {"kind": "mlp", "depth": 2, "width": 16, "activation": "tanh"}
DENSE = InputSpec("dense", 7, 0, 5)
TOKENS = InputSpec("tokens", 2, 11, 11)
LOSSES = ["cross_entropy", "mse"]


def make(kind: str, n: int, seed: int):
    """Model and fresh random data; model weights from seed, data from seed + 1."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "dense":
        model = build_model(MLP, DENSE).double()
        x = torch.randn(n, DENSE.dim, generator=gen, dtype=torch.float64)
    else:
        model = build_model({**MLP, "input_encoding": kind, "embed_dim": 3}, TOKENS)
        if kind == "embedding":
            model = model.double()
        x = torch.randint(TOKENS.vocab, (n, TOKENS.dim), generator=gen)
    y = torch.randint(model.body[-1].out_features, (n,), generator=gen)
    return model, x, y


# ---- more model families --------------------------------------------------------------------
class ConvNet(nn.Module):
    """Conv2d -> tanh -> Linear head; shapes from a seeded generator."""

    def __init__(self, gen: torch.Generator, n_classes: int):
        super().__init__()
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
        self.shape = (r(1, 3), r(5, 8), r(5, 8))
        kernel = (r(1, 3), r(1, 3))
        if r(0, 3) == 0:
            padding, stride = "same", 1
        else:
            padding, stride = (r(0, 2), r(0, 1)), (r(1, 2), r(1, 2))
        self.conv = nn.Conv2d(self.shape[0], r(2, 4), kernel, stride=stride, padding=padding,
                              dilation=(r(1, 2), 1), bias=bool(r(0, 1)))
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *self.shape)).numel()
        self.head = nn.Linear(flat, n_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


class TokenMixer(nn.Module):
    """Embedding + positional Embedding(arange) + attention-like token mixing from per-token Linears.

    `self.v` is applied twice (shared weights); the sequence is pooled by mean.
    """

    def __init__(self, vocab: int, length: int, d: int, n_classes: int, padding_idx=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.pos = nn.Embedding(length, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.out = nn.Linear(d, n_classes)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        att = (self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(h.shape[-1])).softmax(-1)
        h = h + att @ self.v(h)
        return self.out(torch.tanh(self.v(h)).mean(1))


class Normed(nn.Module):
    """Linear -> LayerNorm -> raw nn.Parameter scale -> Linear: LayerNorm and the scale fall back to vmap."""

    def __init__(self, d_in: int, width: int, n_classes: int):
        super().__init__()
        self.lin1 = nn.Linear(d_in, width)
        self.ln = nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.randn(width))
        self.lin2 = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.lin2(torch.tanh(self.ln(self.lin1(x)) * self.scale))


class TiedUnembed(nn.Module):
    """The embedding matrix also unembeds (used outside its module): the probe must send it to vmap."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lin = nn.Linear(d, d)

    def forward(self, tokens):
        return torch.tanh(self.lin(self.embed(tokens))).mean(1) @ self.embed.weight.T


class Odd(nn.Module):
    """Sequence-first Linear (batch on axis 1), a grouped Conv2d (vmap fallback) and an unused Linear."""

    def __init__(self, vocab: int, d: int, n_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.seq_first = nn.Linear(d, d)
        self.grouped = nn.Conv2d(2, 2, 1, groups=2)
        self.unused = nn.Linear(d, 2)
        self.out = nn.Linear(d, n_classes)

    def forward(self, tokens):
        h = torch.tanh(self.seq_first(self.embed(tokens).transpose(0, 1))).transpose(0, 1)  # (T, b, d) inside
        h = self.grouped(h.reshape(h.shape[0], 2, -1, h.shape[-1] // 2)).reshape(h.shape)
        return self.out(h.mean(1))


def tokens(gen, n, length, vocab):
    # A small vocabulary makes tokens repeat within a sequence.
    return torch.randint(vocab, (n, length), generator=gen)


# ---- reference ------------------------------------------------------------------------------


# ---- the original MLPs ----------------------------------------------------------------------
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["dense", "embedding", "onehot"])
def test_matches_loop(kind, loss):
    model, x, y = make(kind, 13, seed=len(kind) + len(loss))
    dtype = next(model.parameters()).dtype
    ref, grads = loop_reference(model, x, y, loss)
    mean = grads.mean(dim=0)
    torch.testing.assert_close(mean_gradient(model, x, y, loss=loss, batch_size=4), mean, **TOL[dtype])
    stats = per_example_stats(model, x, y, loss=loss, batch_size=4)
    check(stats, ref, grads, mean, dtype)
    assert stats["grad_proj"].shape == (13, 32) and stats["grad_proj"].dtype == np.float32
    assert fallback_parameters(model, x, y, loss=loss) == []  # everything on the fast path


@pytest.mark.parametrize("kind", ["dense", "embedding"])
def test_chunking_does_not_change_results(kind):
    model, x, y = make(kind, 23, seed=3)
    torch.testing.assert_close(mean_gradient(model, x, y, batch_size=5), mean_gradient(model, x, y))
    small = per_example_stats(model, x, y, batch_size=5)
    whole = per_example_stats(model, x, y, batch_size=64)  # one chunk: the mean comes from the same pass
    assert small.keys() == whole.keys()
    for key in small:
        torch.testing.assert_close(torch.from_numpy(small[key]), torch.from_numpy(whole[key]), msg=key)


# ---- every supported layer type and the fallback, on random shapes --------------------------
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_conv2d_matches_loop(seed, loss):
    gen = torch.Generator().manual_seed(100 + seed)
    torch.manual_seed(seed)
    model = ConvNet(gen, n_classes=3).double()
    x = torch.randn(9, *model.shape, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (9,), generator=gen)
    assert fallback_parameters(model, x, y, loss=loss) == []
    check_everything(model, x, y, loss, batch_size=4)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("length,d,padding_idx", [(3, 8, None), (9, 3, 0), (5, 2, 1)])
def test_token_model_matches_loop(length, d, padding_idx, loss):
    # (3, 8): Gram forms; (9, 3) and (5, 2): T (in + out) > in * out, so explicit per-example
    # weight gradients; repeated tokens in every sequence (vocabulary 4), padding rows.
    gen = torch.Generator().manual_seed(length * d)
    torch.manual_seed(length + d)
    model = TokenMixer(vocab=4, length=length, d=d, n_classes=3, padding_idx=padding_idx).double()
    x, y = tokens(gen, 11, length, 4), torch.randint(3, (11,), generator=gen)
    assert fallback_parameters(model, x, y, loss=loss) == []  # pos (no batch axis) is broadcast, not vmapped
    check_everything(model, x, y, loss, batch_size=4)


def test_embedding_segment_sums(monkeypatch):
    # Long sequences: the embedding norm by segment sums over distinct tokens instead of a T x T Gram.
    monkeypatch.setattr(grad_rules.base, "EMBEDDING_GRAM_MAX_T", 2)
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = TokenMixer(vocab=5, length=12, d=4, n_classes=3, padding_idx=2).double()
    x, y = tokens(gen, 7, 12, 5), torch.randint(3, (7,), generator=gen)
    check_everything(model, x, y, "cross_entropy", batch_size=3)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("layer_norm", [False, True])
def test_transformer_matches_loop(layer_norm, loss):
    spec = InputSpec("tokens", 2, 5, 5)
    config = {"kind": "transformer", "d_model": 8, "n_heads": 2, "d_head": 3, "d_mlp": 12, "n_layers": 2,
              "layer_norm": layer_norm}
    torch.manual_seed(7)
    try:
        model = build_model(config, spec).double()
    except ValueError as e:
        if "unknown model kind" in str(e):
            pytest.skip(f"gradscope.models has no transformer yet: {e}")
        raise
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(spec.vocab, (10, 2), generator=gen)
    x[:3, 1] = x[:3, 0]  # sequences [a, a, =] repeat a token
    y = torch.randint(spec.n_classes, (10,), generator=gen)
    assert fallback_parameters(model, x, y, loss=loss) == []  # LayerNorm has its own rule
    check_everything(model, x, y, loss, batch_size=4)


@pytest.mark.parametrize("loss", LOSSES)
def test_layer_norm_rule_and_raw_parameter_fallback(loss):
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    model = Normed(5, 6, 4).double()
    x, y = torch.randn(10, 5, generator=gen, dtype=torch.float64), torch.randint(4, (10,), generator=gen)
    assert sorted(fallback_parameters(model, x, y, loss=loss)) == ["scale"]
    check_everything(model, x, y, loss, batch_size=3)


def test_parameter_used_outside_its_module_goes_to_fallback():
    gen = torch.Generator().manual_seed(10)
    torch.manual_seed(10)
    model = TiedUnembed(vocab=6, d=4).double()
    x, y = tokens(gen, 9, 3, 6), torch.randint(6, (9,), generator=gen)
    assert fallback_parameters(model, x, y) == ["embed.weight"]
    check_everything(model, x, y, "cross_entropy", batch_size=4)


def test_batch_axis_grouped_conv_unused_module():
    gen = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    model = Odd(vocab=5, d=4, n_classes=3).double()
    x, y = tokens(gen, 9, 4, 5), torch.randint(3, (9,), generator=gen)
    assert fallback_parameters(model, x, y) == []  # grouped convolutions have their own rule
    stats = check_everything(model, x, y, "cross_entropy", batch_size=4)
    unused = [i for i, name in enumerate(layer_names(model)) if name.startswith("unused")]
    assert (stats["layer_grad_norm"][:, unused] == 0).all()


def test_single_example():
    model, x, y = make("dense", 1, seed=16)
    stats = check_everything(model, x, y, "cross_entropy", batch_size=4)
    np.testing.assert_allclose(stats["grad_cos_mean"], [1.0])


def test_inplace_activation_after_linear():
    # ReLU(inplace=True) overwrites the Linear's output: the engine must notice and copy it.
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double()
    gen = torch.Generator().manual_seed(11)
    x, y = torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randint(3, (8,), generator=gen)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "mse", batch_size=8)


class ScaledPositions(nn.Module):
    """Positional embedding (no batch axis) scaled in place: the broadcast output must be copied."""

    def __init__(self):
        super().__init__()
        self.embed, self.pos, self.out = nn.Embedding(5, 4), nn.Embedding(3, 4), nn.Linear(4, 3)

    def forward(self, tokens):
        pos = self.pos(torch.arange(3, device=tokens.device))
        pos.mul_(2.0)
        return self.out(torch.tanh(self.embed(tokens) + pos).mean(1))


def test_inplace_on_broadcast_output():
    torch.manual_seed(17)
    model = ScaledPositions().double()
    gen = torch.Generator().manual_seed(17)
    x, y = tokens(gen, 7, 3, 5), torch.randint(3, (7,), generator=gen)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=7)


def test_vmap_reference_method_agrees():
    gen = torch.Generator().manual_seed(12)
    torch.manual_seed(12)
    model = TokenMixer(vocab=4, length=4, d=3, n_classes=3).double()
    x, y = tokens(gen, 9, 4, 4), torch.randint(3, (9,), generator=gen)
    fast = per_example_stats(model, x, y, batch_size=4, proj_dim=5, layer_norms=True)
    slow = per_example_stats(model, x, y, batch_size=4, proj_dim=5, layer_norms=True, method="vmap")
    assert fast.keys() == slow.keys()
    for key in fast:
        torch.testing.assert_close(torch.from_numpy(fast[key]), torch.from_numpy(slow[key]), msg=key)
    with pytest.raises(ValueError, match="unknown method"):
        per_example_stats(model, x, y, method="loop")


def test_per_example_gradients():
    model, x, y = make("embedding", 9, seed=13)
    _, grads = loop_reference(model, x, y, "mse")
    torch.testing.assert_close(per_example_gradients(model, x, y, loss="mse", batch_size=4), grads)


# ---- projection -----------------------------------------------------------------------------
def test_projection_follows_seeding_rule():
    model, x, y = make("embedding", 11, seed=5)
    _, grads = loop_reference(model, x, y, "cross_entropy")
    R = documented_projection(model, 8, seed=7)
    # Equal up to float32 rounding (the library scales A by 1/sqrt(k) before the product).
    torch.testing.assert_close(random_projection(model, 8, seed=7), R, rtol=1e-6, atol=0)
    stats = per_example_stats(model, x, y, proj_dim=8, seed=7, batch_size=3)
    torch.testing.assert_close(torch.from_numpy(stats["grad_proj"]), (grads @ R).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex.project_gradients(grads, model, 8, seed=7), grads @ R)


def test_projection_seed_determinism():
    model, x, y = make("dense", 9, seed=6)
    a = per_example_stats(model, x, y, seed=1, batch_size=2)["grad_proj"]
    b = per_example_stats(model, x, y, seed=1, batch_size=9)["grad_proj"]
    c = per_example_stats(model, x, y, seed=2)["grad_proj"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1 * np.abs(a).max()


@pytest.mark.parametrize("family", ["mlp", "rank_one"])
def test_projection_statistics(family):
    # Over many projection seeds: projected inner products are unbiased, and the rms error of
    # projected cosines is of the JL scale sqrt((1 + rho^2) / k) of i.i.d. Gaussian columns.
    # Kronecker columns kron(a, b) are not Gaussian: for one rank-one layer (a bias-free Linear,
    # gradients g h^T) the variance of the inner product is (1 + 2 c_g^2 + 2 c_h^2 + 3 rho^2) / k,
    # at most 4x the Gaussian one (2x in rms). Measured rms error / JL scale, 300 seeds, k = 64:
    # MLP 7-16-16-5 about 0.9-1.0 on average, at most 1.3 (Gaussian columns: 0.9, 1.1);
    # one rank-one layer 1.2 on average, at most 1.6.
    k, seeds = 64, 300
    if family == "mlp":
        model, x, y = make("dense", 6, seed=8)
    else:
        torch.manual_seed(8)
        model = nn.Linear(20, 5, bias=False).double()
        x, y = torch.randn(6, 20, dtype=torch.float64), torch.randint(5, (6,))
    _, grads = loop_reference(model, x, y, "cross_entropy")
    unit = grads / grads.norm(dim=1, keepdim=True)
    true_cos = unit @ unit.T
    iu = torch.triu_indices(len(x), len(x), 1)
    inner, cos = [], []
    for s in range(seeds):
        p = grads @ random_projection(model, k, seed=s)
        inner.append((p @ p.T)[iu[0], iu[1]])
        pu = p / p.norm(dim=1, keepdim=True)
        cos.append((pu @ pu.T)[iu[0], iu[1]])
    inner, cos = torch.stack(inner), torch.stack(cos)  # (seeds, pairs)
    true_inner = (grads @ grads.T)[iu[0], iu[1]]
    stderr = inner.std(dim=0) / math.sqrt(seeds)
    assert ((inner.mean(dim=0) - true_inner).abs() / stderr).max() < 4.5  # unbiased
    rho = true_cos[iu[0], iu[1]]
    ratio = (cos - rho).pow(2).mean(dim=0).sqrt() / torch.sqrt((1 + rho**2) / k)
    if family == "mlp":
        assert 0.6 < ratio.mean() < 1.3 and ratio.max() < 1.6
    else:
        assert ratio.max() < 2.2
    # Norms: relative error of ||Pg|| of the order 1 / sqrt(2k) (Gaussian), here at most 2x that.
    p = grads @ random_projection(model, 1024, seed=0)
    assert ((p.norm(dim=1) / grads.norm(dim=1) - 1).abs() < 2 * 4 / math.sqrt(2 * 1024)).all()


# ---- mean gradient, validation, hygiene -----------------------------------------------------
def test_explicit_mean_grad_is_used():
    model, x, y = make("dense", 10, seed=9)
    _, other_x, other_y = make("dense", 15, seed=10)
    _, grads = loop_reference(model, x, y, "mse")
    _, other_grads = loop_reference(model, other_x, other_y, "mse")
    other_mean = other_grads.mean(dim=0)
    stats = per_example_stats(model, x, y, loss="mse", mean_grad=other_mean, batch_size=4)
    for key, value in expected_grad_stats(grads, other_mean).items():
        torch.testing.assert_close(torch.from_numpy(stats[key]), value)
    default = per_example_stats(model, x, y, loss="mse")
    assert np.abs(default["grad_cos_mean"] - stats["grad_cos_mean"]).max() > 1e-3


def test_zero_mean_grad_gives_zero_cosine():
    model, x, y = make("dense", 6, seed=11)
    n_params = sum(p.numel() for p in model.parameters())
    stats = per_example_stats(model, x, y, mean_grad=torch.zeros(n_params, dtype=torch.float64))
    np.testing.assert_array_equal(stats["grad_cos_mean"], np.zeros(6))
    np.testing.assert_array_equal(stats["grad_dot_mean"], np.zeros(6))
    with pytest.raises(ValueError, match="shape"):
        per_example_stats(model, x, y, mean_grad=torch.zeros(n_params + 1))
    assert all(not m._forward_hooks for m in model.modules())  # removed after the error too


@pytest.mark.parametrize("training", [True, False])
def test_model_untouched(training):
    model, x, y = make("embedding", 12, seed=12)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean_gradient(model, x, y, batch_size=5)
    per_example_stats(model, x, y, loss="mse", batch_size=5)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# ---- Opacus as an independent peer ----------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("family", ["mlp", "conv", "tokens"])
def test_norms_match_opacus(family):
    import opacus  # in the `test` extra: this comparison never skips
    gen = torch.Generator().manual_seed(14)
    torch.manual_seed(14)
    if family == "mlp":
        model, x, y = make("dense", 12, seed=14)
    elif family == "conv":
        model = ConvNet(gen, n_classes=3).double()
        x, y = torch.randn(12, *model.shape, generator=gen, dtype=torch.float64), torch.randint(3, (12,), generator=gen)
    else:  # Embedding + per-token Linear on (b, T, d), repeated tokens
        model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 5), nn.Tanh(), nn.Flatten(), nn.Linear(30, 3)).double()
        x, y = tokens(gen, 12, 6, 4), torch.randint(3, (12,), generator=gen)
    gsm = opacus.GradSampleModule(copy.deepcopy(model), batch_first=True, loss_reduction="sum")
    per_example_loss(gsm(x), y, "cross_entropy").sum().backward()
    flat = torch.cat([p.grad_sample.reshape(len(x), -1) for p in gsm._module.parameters()], dim=1)
    stats = per_example_stats(model, x, y, batch_size=5, layer_norms=True)
    torch.testing.assert_close(torch.from_numpy(stats["grad_norm"]), flat.norm(dim=1))
    mean = flat.mean(dim=0)
    torch.testing.assert_close(torch.from_numpy(stats["grad_cos_mean"]), flat @ mean / (flat.norm(dim=1) * mean.norm()))
