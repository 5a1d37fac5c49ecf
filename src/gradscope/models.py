"""Models, built from a config dict and the dataset's input description.

Inputs are either dense features (float, (batch, features)) or token pairs for modular
arithmetic (long, (batch, 2)), which the MLP reads as concatenated one-hot vectors or as
concatenated learned embeddings, and the Transformer reads as a token sequence [a, b, =].
The model is rebuilt from `(model_config, input_spec)` alone, which is what checkpoints store.

Kinds and their config keys (defaults in parentheses):
  mlp          depth (2), width (64), activation ("relu"), input_encoding ("onehot"),
               embed_dim (32), init_scale (1.0)
  transformer  d_model (128), n_heads (4), d_head (32), d_mlp (512), n_layers (1),
               layer_norm (False), init_scale (1.0)
`init_scale` multiplies every parameter after torch's default init (the large-init knob of
Omnigrok, Liu et al. 2022, arXiv 2210.01117); at 1.0 the parameters are left untouched, so
seeded results match builds made before the key existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.losses import one_hot

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass(frozen=True)
class InputSpec:
    """What the dataset feeds the model."""

    kind: str  # "dense" (float features) or "tokens" (long token ids)
    dim: int  # number of features (dense) or number of tokens per example (tokens)
    vocab: int  # token vocabulary size (tokens); 0 for dense
    n_classes: int  # number of output classes

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(kind=d["kind"], dim=int(d["dim"]), vocab=int(d.get("vocab", 0)), n_classes=int(d["n_classes"]))


class OneHot(nn.Module):
    """Concatenated one-hot codes of token ids: (batch, tokens) -> (batch, tokens * vocab)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return one_hot(tokens, self.vocab).flatten(1)


class ConcatEmbedding(nn.Module):
    """Concatenated learned embeddings of token ids: (batch, tokens) -> (batch, tokens * dim)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).flatten(1)


class MLP(nn.Module):
    """input encoding -> [Linear -> activation] x depth -> Linear to classes."""

    def __init__(self, spec: InputSpec, depth: int, width: int, activation: str, input_encoding: str, embed_dim: int):
        super().__init__()
        if spec.kind == "dense":
            self.encode: nn.Module = nn.Identity()
            in_features = spec.dim
        elif input_encoding == "onehot":
            self.encode = OneHot(spec.vocab)
            in_features = spec.dim * spec.vocab
        elif input_encoding == "embedding":
            self.encode = ConcatEmbedding(spec.vocab, embed_dim)
            in_features = spec.dim * embed_dim
        else:
            raise ValueError(f"unknown input_encoding {input_encoding!r}; known: onehot, embedding")
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
            in_features = width
        layers.append(nn.Linear(in_features, spec.n_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.encode(x))


class Attention(nn.Module):
    """Multi-head causal self-attention built from bias-free nn.Linear projections.

    W_Q, W_K, W_V map d_model -> n_heads * d_head and W_O maps back; each is an ordinary
    Linear applied per token, so a per-example gradient engine can treat it as one.
    Position i attends to positions <= i (causal, as in TransformerLens).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.W_Q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_K = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_V = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_O = nn.Linear(n_heads * d_head, d_model, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.reshape(b, s, self.n_heads, self.d_head).transpose(1, 2)  # (b, heads, s, d_head)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(b, s, d_model) -> (b, s, d_model); with last_only, only the last position's output
        (b, 1, d_model): its query attends to every position, so no mask is needed."""
        b, s, _ = x.shape
        q = self._heads(self.W_Q(x[:, -1:] if last_only else x))
        k, v = self._heads(self.W_K(x)), self._heads(self.W_V(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (b, heads, s_q, s)
        if not last_only:
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        z = scores.softmax(dim=-1) @ v  # (b, heads, s_q, d_head)
        return self.W_O(z.transpose(1, 2).reshape(b, q.shape[2], self.n_heads * self.d_head))


class Block(nn.Module):
    """Residual block: x + attn(ln1(x)), then x + mlp(ln2(x)); the LayerNorms are Identity when off."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int, layer_norm: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = Attention(d_model, n_heads, d_head)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """With last_only, the block's output at the last position only, (b, 1, d_model)."""
        x = (x[:, -1:] if last_only else x) + self.attn(self.ln1(x), last_only=last_only)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """The modular-arithmetic transformer of Nanda et al. 2023 (arXiv 2301.05217).

    Token pairs (batch, n) with ids in [0, vocab) get the "=" token (id vocab) appended, so
    the sequence is [a, b, =]; token and learned positional embeddings (nn.Embedding, the
    latter indexed by arange) feed `n_layers` residual blocks of causal multi-head attention
    and a ReLU MLP; the unembedding reads the residual stream at the last ("=") position.
    LayerNorm is off by default, as in the paper. Weights use torch's default init
    (nn.Embedding N(0, 1), nn.Linear uniform +-1/sqrt(fan_in)) rather than the paper's
    N(0, 1/d_model)-style init; `init_scale` in build_model rescales them all.
    """

    def __init__(
        self,
        spec: InputSpec,
        d_model: int = 128,
        n_heads: int = 4,
        d_head: int = 32,
        d_mlp: int = 512,
        n_layers: int = 1,
        layer_norm: bool = False,
    ):
        super().__init__()
        if spec.kind != "tokens":
            raise ValueError(f"the transformer needs token inputs (input kind 'tokens'), got kind {spec.kind!r}")
        if spec.vocab <= 0:
            raise ValueError(f"the transformer needs a positive token vocabulary, got vocab={spec.vocab}")
        self.eq_token = spec.vocab  # id of "="
        self.n_tokens = spec.dim
        self.embed = nn.Embedding(spec.vocab + 1, d_model)
        self.pos_embed = nn.Embedding(spec.dim + 1, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_head, d_mlp, layer_norm) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, spec.n_classes, bias=False)

    def residual(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Final residual stream (batch, n + 1, d_model) of the sequences [tokens..., =].

        With last_only, (batch, 1, d_model) at the "=" position: the last block computes its
        query and MLP there only (the read-out needs nothing else), the same numbers for about
        a third of that block's work; earlier blocks still run on every position."""
        if tokens.shape[-1] != self.n_tokens:
            raise ValueError(f"expected {self.n_tokens} tokens per example, got shape {tuple(tokens.shape)}")
        # full_like (not torch.full) so the "=" column follows tokens under torch.func.vmap.
        seq = torch.cat([tokens, torch.full_like(tokens[:, :1], self.eq_token)], dim=1)  # (b, n + 1)
        x = self.embed(seq) + self.pos_embed(torch.arange(seq.shape[1], device=seq.device))
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=last_only and i == len(self.blocks) - 1)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.ln_final(self.residual(tokens, last_only=True)[:, -1]))  # (b, n_classes)


MODEL_KINDS = ("mlp", "transformer", "cnn")


class CNN(nn.Module):
    """A small CNN for square single-channel images given as flat dense vectors (side * side).

    [Conv 3x3 (padding 1) -> activation -> MaxPool 2] per entry of `channels`, then a linear
    read-out of the flattened feature map. Convolutions are nn.Conv2d, so the per-example
    engine handles them by unfolding.
    """

    def __init__(self, spec: InputSpec, channels: list[int], activation: str):
        super().__init__()
        side = math.isqrt(spec.dim)
        if spec.kind != "dense" or side * side != spec.dim:
            raise ValueError(f"the cnn needs dense square images (dim = side^2); got input {spec}")
        self.side = side
        layers: list[nn.Module] = []
        in_ch = 1
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), ACTIVATIONS[activation](), nn.MaxPool2d(2)]
            in_ch, side = ch, side // 2
        if side < 1:
            raise ValueError(f"{len(channels)} pooling stages shrink a {self.side}x{self.side} image to nothing")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * side * side, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, 1, self.side, self.side))  # (b, C, s, s)
        return self.head(h.flatten(1))


def build_model(model_config: dict, spec: InputSpec) -> nn.Module:
    """Build the model a config describes. Weights come from torch's global RNG: seed it first."""
    kind = model_config.get("kind", "mlp")
    if kind == "mlp":
        model = _build_mlp(model_config, spec)
    elif kind == "transformer":
        model = Transformer(
            spec,
            d_model=int(model_config.get("d_model", 128)),
            n_heads=int(model_config.get("n_heads", 4)),
            d_head=int(model_config.get("d_head", 32)),
            d_mlp=int(model_config.get("d_mlp", 512)),
            n_layers=int(model_config.get("n_layers", 1)),
            layer_norm=bool(model_config.get("layer_norm", False)),
        )
    elif kind == "cnn":
        activation = model_config.get("activation", "relu")
        model = CNN(spec, channels=[int(c) for c in model_config.get("channels", [16, 32])], activation=activation)
    else:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    init_scale = float(model_config.get("init_scale", 1.0))
    if init_scale != 1.0:  # skipped at 1.0 so default builds stay bit-identical
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)
    return model


def _build_mlp(model_config: dict, spec: InputSpec) -> MLP:
    activation = model_config.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return MLP(
        spec,
        depth=int(model_config.get("depth", 2)),
        width=int(model_config.get("width", 64)),
        activation=activation,
        input_encoding=model_config.get("input_encoding", "onehot"),
        embed_dim=int(model_config.get("embed_dim", 32)),
    )


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks CUDA when present; "cuda" without CUDA is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)
