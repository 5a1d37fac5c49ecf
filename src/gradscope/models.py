"""Models, built from a config dict and the dataset's input description.

Inputs are either dense (float, (batch, *shape) with `InputSpec.shape` the per-example
shape: (features,) for flat vectors, (channels, length) for 1-D signals such as MNIST-1D,
(channels, height, width) for images; a flat (side * side,) vector is read as a square
one-channel image by the convolutional kinds) or token pairs for modular arithmetic (long,
(batch, 2)), which the MLP reads as concatenated one-hot vectors or as concatenated learned
embeddings, and the Transformer reads as a token sequence [a, b, =].
The model is rebuilt from `(model_config, input_spec)` alone, which is what checkpoints store.

Kinds and their config keys (every key's default and meaning is in the schema,
src/gradscope/schemas/config.schema.yaml, the one place defaults live: build_model fills what a
config leaves out from there; each key's `x-when` there names the kinds it applies to):
  mlp          depth, width, activation, input_encoding, embed_dim; dense inputs of any
               shape are flattened
  transformer  d_model, n_heads, d_head, d_mlp, n_layers, layer_norm, init ("nanda" is the
               paper's init)
  cnn          channels, activation: [conv 3x3 -> activation -> max-pool 2] per entry;
               Conv2d on images, Conv1d on (channels, length) signals
  resnet       base_width, blocks, norm, groups, activation:
               ResNet-18 for small images (He et al. 2016, arXiv 1512.03385, in the CIFAR form
               of kuangliu/pytorch-cifar: 3x3 stem, no max-pool, stages of BasicBlocks with
               base_width * (1, 2, 4, 8) channels, strides (1, 2, 2, 2), global average pool,
               linear read-out); base_width 64 is the original. Conv1d on (channels, length).
  vgg          base_width, norm, groups, activation: VGG-11 (Simonyan &
               Zisserman 2015, arXiv 1409.1556, configuration A) with channels
               [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M] scaled by base_width / 64,
               max-pools with ceil_mode (a 1-pixel map stays 1 pixel, so small inputs work),
               global average pool and one linear read-out (the CIFAR form) instead of the
               ImageNet 4096-wide classifier. norm "none" is plain VGG-11, "batch" VGG-11-BN.
  python       factory ("package.module:function"), kwargs: the researcher's own model,
               built as factory(input_shape=spec.shape, n_classes=spec.n_classes, **kwargs)
               (token inputs also get vocab=spec.vocab); it must return a torch.nn.Module
               whose forward maps a (batch, *input_shape) tensor to (batch, n_classes) logits.
               The module is imported with the working directory on sys.path
               (`gradscope.factories`); the checkpoint's settings hold factory and kwargs, so
               `checkpoints.load` rebuilds the model the same way.
Every kind also takes `init_scale`, which multiplies every parameter after
torch's default init (the large-init knob of Omnigrok, Liu et al. 2022, arXiv 2210.01117);
at 1.0 the parameters are left untouched, so seeded results match builds made before the
key existed. norm: "batch" (BatchNorm; per-example statistics and curvature are taken in
eval mode, on the running statistics: see `gradscope.modes`), "group" (GroupNorm with
`groups` groups, which must divide every stage's channels; no batch coupling) or "none"
(also null: config loading reads the text "none" as null).

The MLP and `build_model` are here; the input description (InputSpec) is
`gradscope.model_input`, the transformer `gradscope.transformer`, the convolutional kinds
`gradscope.convnets` (every name also importable from here).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gradscope import config, factories
from gradscope.activations import ACTIVATIONS
# the architectures of their own modules, importable from here as gradscope.models.X
from gradscope.convnets import CNN, NORMS, VGG, VGG11, BasicBlock, ResNet, conv_input_shape  # noqa: F401
from gradscope.device import resolve_device  # noqa: F401  (models.resolve_device, as before)
from gradscope.losses import one_hot
from gradscope.model_input import InputSpec
from gradscope.transformer import TRANSFORMER_INITS, Attention, Block, Transformer  # noqa: F401


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
        self.dense = spec.kind == "dense"
        if self.dense:
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
        if self.dense:
            x = x.flatten(1)  # (batch, *shape) -> (batch, dim)
        return self.body(self.encode(x))


# --------------------------------------------------------------------------------------------
# build_model: one builder per kind
# --------------------------------------------------------------------------------------------


def build_model(model_config: dict, spec: InputSpec) -> nn.Module:
    """Build the model a config describes. Weights come from torch's global RNG: seed it first.

    `model_config` is the run's `model` section; what it leaves out takes the schema's default
    (`gradscope.config.section`), so `build_model({}, spec)` is the workflow's default model."""
    model_config = config.filled("model", model_config)
    kind = model_config["kind"]
    if kind not in BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    model = BUILDERS[kind](model_config, spec)
    init_scale = float(model_config["init_scale"])
    if init_scale != 1.0:  # skipped at 1.0 so default builds stay bit-identical
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)
    return model


def _build_transformer(model_config: dict, spec: InputSpec) -> Transformer:
    return Transformer(
        spec,
        d_model=int(model_config["d_model"]),
        n_heads=int(model_config["n_heads"]),
        d_head=int(model_config["d_head"]),
        d_mlp=int(model_config["d_mlp"]),
        n_layers=int(model_config["n_layers"]),
        layer_norm=bool(model_config["layer_norm"]),
        init=model_config["init"],
    )


def _build_cnn(model_config: dict, spec: InputSpec) -> CNN:
    return CNN(spec, channels=[int(c) for c in model_config["channels"]], activation=model_config["activation"])


def _norm_name(model_config: dict) -> str:
    # null means "none": `snakemake --config` turns the text "none" into null before validation
    return model_config["norm"] or "none"


def _build_resnet(model_config: dict, spec: InputSpec) -> ResNet:
    return ResNet(spec, base_width=int(model_config["base_width"]), blocks=tuple(int(b) for b in model_config["blocks"]),
                  norm=_norm_name(model_config), groups=int(model_config["groups"]), activation=model_config["activation"])


def _build_vgg(model_config: dict, spec: InputSpec) -> VGG:
    return VGG(spec, base_width=int(model_config["base_width"]), norm=_norm_name(model_config),
               groups=int(model_config["groups"]), activation=model_config["activation"])


def _build_python(model_config: dict, spec: InputSpec) -> nn.Module:
    """factory(input_shape=..., n_classes=..., [vocab=...,] **kwargs), checked to be an nn.Module."""
    value = model_config["factory"]
    factory = factories.resolve(value, key="model.factory")
    kwargs = dict(model_config["kwargs"] or {})
    given = {"input_shape": spec.shape, "n_classes": spec.n_classes}
    if spec.kind == "tokens":
        given["vocab"] = spec.vocab
    clash = sorted(set(given) & set(kwargs))
    if clash:
        raise factories.FactoryError("model.kwargs", kwargs, f"{', '.join(clash)} come from the data, not from kwargs")
    try:
        model = factory(**given, **kwargs)
    except Exception as e:  # the researcher's code: any error, reported with the key and value
        args = ", ".join([f"{k}={v!r}" for k, v in given.items()] + [f"{k}={v!r}" for k, v in kwargs.items()])
        raise factories.FactoryError("model.factory", value, f"calling it as {value}({args}) raised "
                                     f"{type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise factories.FactoryError("model.factory", value, f"it returned a {type(model).__module__}."
                                     f"{type(model).__qualname__}, not a torch.nn.Module")
    return model


def _build_mlp(model_config: dict, spec: InputSpec) -> MLP:
    activation = model_config["activation"]
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return MLP(
        spec,
        depth=int(model_config["depth"]),
        width=int(model_config["width"]),
        activation=activation,
        input_encoding=model_config["input_encoding"],
        embed_dim=int(model_config["embed_dim"]),
    )


BUILDERS: dict[str, Callable[[dict, InputSpec], nn.Module]] = {
    "mlp": _build_mlp, "transformer": _build_transformer, "cnn": _build_cnn, "resnet": _build_resnet,
    "vgg": _build_vgg, "python": _build_python,
}
MODEL_KINDS = tuple(BUILDERS)
