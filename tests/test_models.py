"""Models: the Nanda et al. 2023 transformer, MLP init_scale, and build_model's kinds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, grad, vmap

from gradscope.losses import per_example_loss
from gradscope.models import MLP, InputSpec, Transformer, build_model

P = 7
TOKENS = InputSpec("tokens", 2, P, P)
DENSE = InputSpec("dense", 5, 0, 3)
SMALL = {"kind": "transformer", "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}


def pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (a, b) pairs, shape (p * p, 2), and their labels (a + b) mod p."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], dim=1)
    return x, (x[:, 0] + x[:, 1]) % p


def test_transformer_output_shape_and_layers():
    torch.manual_seed(0)
    model = build_model({"kind": "transformer"}, TOKENS)
    assert isinstance(model, Transformer)
    x, _ = pairs(P)
    assert model(x).shape == (P * P, P)
    # Attention is plain bias-free nn.Linear, never nn.MultiheadAttention.
    attn = model.blocks[0].attn
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        lin = getattr(attn, name)
        assert type(lin) is torch.nn.Linear and lin.bias is None
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    assert model.unembed.bias is None and model.unembed.out_features == P
    assert model.embed.num_embeddings == P + 1 and model.pos_embed.num_embeddings == 3


def test_equals_token_is_appended():
    torch.manual_seed(0)
    model = build_model(SMALL, TOKENS)
    seen = []
    model.embed.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    x = torch.tensor([[1, 2], [6, 0], [3, 3]])
    model(x)
    (ids,) = seen
    assert ids.shape == (3, 3)
    assert torch.equal(ids[:, :2], x)
    assert (ids[:, 2] == P).all()


def test_attention_is_causal():
    torch.manual_seed(0)
    model = build_model({**SMALL, "n_layers": 2}, TOKENS).double()
    outs = []
    model.blocks[0].attn.register_forward_hook(lambda mod, args, out: outs.append(out.detach().clone()))
    x = torch.tensor([[1, 2], [4, 5]])
    x_b = torch.tensor([[1, 6], [4, 0]])  # only token b (position 1) changed
    x_a = torch.tensor([[3, 2], [0, 5]])  # only token a (position 0) changed
    for t in (x, x_b, x_a):
        model(t)
    base, changed_b, changed_a = outs
    assert torch.equal(base[:, 0], changed_b[:, 0])  # position 0 never sees b
    assert not torch.allclose(base[:, 1], changed_b[:, 1])
    assert not torch.allclose(base[:, 0], changed_a[:, 0])
    # Through both layers: the residual stream at position 0 ignores b, and the last position reads it.
    r, r_b = model.residual(x), model.residual(x_b)
    assert torch.equal(r[:, 0], r_b[:, 0])
    assert not torch.allclose(r[:, 2], r_b[:, 2])


@pytest.mark.parametrize("n_layers,layer_norm", [(1, False), (2, True)])
def test_last_position_forward_matches_full_stream(n_layers, layer_norm):
    """forward() runs the last block at the "=" position only: same logits and gradients as
    reading the last position of the full residual stream."""
    torch.manual_seed(1)
    model = build_model({**SMALL, "n_layers": n_layers, "layer_norm": layer_norm}, TOKENS).double()
    x = torch.randint(0, P, (9, 2))
    y = torch.randint(0, P, (9,))
    fast = model(x)
    full = model.unembed(model.ln_final(model.residual(x)[:, -1]))
    torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(torch.nn.functional.cross_entropy(fast, y), list(model.parameters()))
    g_full = torch.autograd.grad(torch.nn.functional.cross_entropy(full, y), list(model.parameters()))
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_layer_norm_switch(layer_norm):
    torch.manual_seed(0)
    model = build_model({**SMALL, "layer_norm": layer_norm}, TOKENS)
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert n_ln == (3 if layer_norm else 0)  # ln1, ln2 per block + final
    out = model(pairs(P)[0])
    assert out.shape == (P * P, P) and torch.isfinite(out).all()


def test_parameter_count_nanda_default():
    p, d_model, n_heads, d_head, d_mlp = 113, 128, 4, 32, 512
    torch.manual_seed(0)
    model = build_model({"kind": "transformer"}, InputSpec("tokens", 2, p, p))
    expected = (
        (p + 1) * d_model  # token embedding, p numbers + "="
        + 3 * d_model  # positional embedding, [a, b, =]
        + 4 * d_model * n_heads * d_head  # W_Q, W_K, W_V, W_O, no biases
        + d_model * d_mlp + d_mlp  # MLP in
        + d_mlp * d_model + d_model  # MLP out
        + d_model * p  # unembedding, no bias
    )
    assert expected == 226_688
    assert sum(t.numel() for t in model.parameters()) == expected
    # LayerNorm adds weight + bias of width d_model at ln1, ln2 and the final one.
    with_ln = build_model({"kind": "transformer", "layer_norm": True}, InputSpec("tokens", 2, p, p))
    assert sum(t.numel() for t in with_ln.parameters()) == expected + 3 * 2 * d_model


def test_two_layers():
    torch.manual_seed(0)
    model = build_model({**SMALL, "n_layers": 2}, TOKENS)
    assert len(model.blocks) == 2
    assert model(pairs(P)[0]).shape == (P * P, P)


def test_transformer_needs_tokens():
    with pytest.raises(ValueError, match="tokens"):
        build_model({"kind": "transformer"}, DENSE)


def test_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="known: mlp, transformer, cnn"):
        build_model({"kind": "resnet"}, TOKENS)


@pytest.mark.parametrize("spec", [DENSE, TOKENS])
def test_mlp_init_scale(spec):
    cfg = {"kind": "mlp", "depth": 2, "width": 8}

    def params(config):
        torch.manual_seed(3)
        return [t.detach().clone() for t in build_model(config, spec).parameters()]

    torch.manual_seed(3)
    direct = [t.detach() for t in MLP(spec, 2, 8, "relu", "onehot", 32).parameters()]
    base = params(cfg)
    one = params({**cfg, "init_scale": 1.0})
    three = params({**cfg, "init_scale": 3})
    assert len(base) == len(direct) == len(one) == len(three)
    for d, b, o, t in zip(direct, base, one, three):
        assert torch.equal(d, b) and torch.equal(b, o)
        torch.testing.assert_close(t, 3 * b, rtol=0, atol=0)


def test_transformer_trains_on_modular_addition():
    torch.manual_seed(0)
    x, y = pairs(P)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train = order[: int(0.6 * len(x))]
    model = build_model({"kind": "transformer"}, TOKENS)  # the paper's sizes; ~3 s on one CPU thread
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        per_example_loss(model(x[train]), y[train]).mean().backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x[train]).argmax(-1) == y[train]).float().mean().item()
    assert acc == 1.0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_per_example_grads_vmap_match_loop(layer_norm):
    torch.manual_seed(0)
    model = build_model({**SMALL, "layer_norm": layer_norm}, TOKENS).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(P, (4, 2), generator=gen)
    y = torch.randint(P, (4,), generator=gen)
    params = {name: t.detach() for name, t in model.named_parameters()}

    def one(params, xi, yi):
        logits = functional_call(model, params, (xi.unsqueeze(0),))
        return per_example_loss(logits, yi.unsqueeze(0)).mean()

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        ref = copy.deepcopy(model)
        per_example_loss(ref(x[i : i + 1]), y[i : i + 1]).mean().backward()
        for name, t in ref.named_parameters():
            torch.testing.assert_close(g[name][i], t.grad, rtol=1e-10, atol=1e-12)
    # Examples differ, so their gradients do too (the "=" and positional rows are shared by all).
    assert not torch.allclose(g["embed.weight"][0], g["embed.weight"][1])


def test_cnn_on_flat_square_images():
    torch.manual_seed(0)
    spec = InputSpec("dense", 64, 0, 10)
    model = build_model({"kind": "cnn", "channels": [4, 8]}, spec)
    out = model(torch.randn(5, 64))
    assert out.shape == (5, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 2
    with pytest.raises(ValueError, match="square"):
        build_model({"kind": "cnn"}, InputSpec("dense", 20, 0, 2))
