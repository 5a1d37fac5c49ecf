"""The built-in models' outputs against references written here from their definitions (float64,
random weights including LayerNorm's affine parameters), not only their shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradscope.models import InputSpec, build_model


def _randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def transformer_reference(model, tokens: np.ndarray) -> np.ndarray:
    """Nanda et al.'s transformer by hand: [a, b, =] -> embeddings + positions -> blocks of causal
    multi-head attention and a ReLU MLP (pre-LayerNorm when on) -> unembedding at "="."""
    P = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    blocks = len(model.blocks)
    heads, d_head = model.blocks[0].attn.n_heads, model.blocks[0].attn.d_head
    ln = "blocks.0.ln1.weight" in P
    out = []
    for row in tokens:
        seq = list(row) + [model.eq_token]
        x = P["embed.weight"][seq] + P["pos_embed.weight"][: len(seq)]
        for i in range(blocks):
            pre = f"blocks.{i}."
            h = _layer_norm(x, P[pre + "ln1.weight"], P[pre + "ln1.bias"], 1e-5) if ln else x
            q, k, v = (h @ P[pre + f"attn.W_{n}.weight"].T for n in "QKV")
            z = np.zeros((len(seq), heads * d_head))
            for hd in range(heads):
                sl = slice(hd * d_head, (hd + 1) * d_head)
                for t in range(len(seq)):  # position t attends to 0..t
                    s = np.array([q[t, sl] @ k[u, sl] for u in range(t + 1)]) / math.sqrt(d_head)
                    w = np.exp(s - s.max())
                    z[t, sl] = (w / w.sum()) @ v[: t + 1, sl]
            x = x + z @ P[pre + "attn.W_O.weight"].T
            h = _layer_norm(x, P[pre + "ln2.weight"], P[pre + "ln2.bias"], 1e-5) if ln else x
            hidden = np.maximum(h @ P[pre + "mlp.0.weight"].T + P[pre + "mlp.0.bias"], 0)
            x = x + hidden @ P[pre + "mlp.2.weight"].T + P[pre + "mlp.2.bias"]
        last = _layer_norm(x[-1], P["ln_final.weight"], P["ln_final.bias"], 1e-5) if ln else x[-1]
        out.append(last @ P["unembed.weight"].T)
    return np.array(out)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_transformer_two_layers_matches_the_reference(layer_norm):
    spec = InputSpec("tokens", 2, 7, 7)
    model = build_model({"kind": "transformer", "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 12, "n_layers": 2,
                         "layer_norm": layer_norm}, spec).double()
    _randomize(model, seed=3)
    tokens = np.random.default_rng(0).integers(0, 7, size=(9, 2))
    got = model(torch.from_numpy(tokens)).detach().numpy()
    np.testing.assert_allclose(got, transformer_reference(model, tokens), rtol=1e-10, atol=1e-10)


def _conv(x, w, b):
    """'same' convolution (kernel 3, zero padding 1) over the trailing 1 or 2 axes, by loops."""
    c_out, nd = w.shape[0], x.ndim - 1
    pad = np.pad(x, [(0, 0)] + [(1, 1)] * nd)
    out = np.zeros((c_out, *x.shape[1:]))
    for o in range(c_out):
        for idx in np.ndindex(*x.shape[1:]):
            window = pad[(slice(None),) + tuple(slice(i, i + 3) for i in idx)]
            out[(o, *idx)] = (window * w[o]).sum() + b[o]
    return out


def _max_pool(x):
    """Max over non-overlapping windows of 2 along the trailing axes (a remainder is dropped)."""
    for axis in range(1, x.ndim):
        n = x.shape[axis] // 2 * 2
        x = np.take(x, range(n), axis=axis)
        x = np.maximum(np.take(x, range(0, n, 2), axis=axis), np.take(x, range(1, n, 2), axis=axis))
    return x


ACT = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))}


@pytest.mark.parametrize("shape, activation", [((2, 7, 6), "relu"), ((3, 11), "gelu"), ((25,), "tanh")])
def test_cnn_matches_the_reference(shape, activation):
    # images (C, H, W), 1-D signals (C, L) and flat square vectors (25 = 5 x 5, one channel)
    spec = InputSpec("dense", math.prod(shape), 0, 4, shape=shape)
    model = _randomize(build_model({"kind": "cnn", "channels": [3, 2], "activation": activation}, spec).double(), 5)
    x = np.random.default_rng(1).normal(size=(4, *shape))
    P = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    want = []
    for ex in x:
        h = ex.reshape(model.input_shape)
        for i in (0, 3):  # Conv -> activation -> MaxPool, twice
            h = _max_pool(ACT[activation](_conv(h, P[f"features.{i}.weight"], P[f"features.{i}.bias"])))
        want.append(P["head.weight"] @ h.reshape(-1) + P["head.bias"])
    got = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, np.array(want), rtol=1e-10, atol=1e-10)
