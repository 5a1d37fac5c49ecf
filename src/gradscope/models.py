"""Models, built from a config dict and the dataset's input description.

Inputs are either dense features (float, (batch, features)) or token pairs for modular
arithmetic (long, (batch, 2)), which the MLP reads as concatenated one-hot vectors or as
concatenated learned embeddings. The model is rebuilt from `(model_config, input_spec)`
alone, which is what checkpoints store.
"""

from __future__ import annotations

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


def build_model(model_config: dict, spec: InputSpec) -> nn.Module:
    """Build the model a config describes. Weights come from torch's global RNG: seed it first."""
    kind = model_config.get("kind", "mlp")
    if kind != "mlp":
        raise ValueError(f"unknown model kind {kind!r}; known: mlp")
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
