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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gradscope import config, factories
from gradscope.losses import one_hot

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass(frozen=True)
class InputSpec:
    """What the dataset feeds the model."""

    kind: str  # "dense" (float features) or "tokens" (long token ids)
    dim: int  # number of features (dense: the product of shape) or number of tokens per example (tokens)
    vocab: int  # token vocabulary size (tokens); 0 for dense
    n_classes: int  # number of output classes
    # Per-example input shape: (dim,) for flat features and tokens, (channels, length) for 1-D
    # signals, (channels, height, width) for images. Left out, it is (dim,).
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape) or (int(self.dim),)
        object.__setattr__(self, "shape", shape)  # frozen: set once, here
        if self.kind == "dense" and math.prod(shape) != self.dim:
            raise ValueError(f"input shape {list(shape)} has {math.prod(shape)} entries, but dim is {self.dim}")

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        """From a dataset's meta["input"] or a checkpoint's input_spec (either may lack "shape")."""
        return cls(kind=d["kind"], dim=int(d["dim"]), vocab=int(d.get("vocab", 0)), n_classes=int(d["n_classes"]),
                   shape=tuple(d.get("shape") or ()))


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


TRANSFORMER_INITS = ("torch", "nanda")


class Transformer(nn.Module):
    """The modular-arithmetic transformer of Nanda et al. 2023 (arXiv 2301.05217).

    Token pairs (batch, n) with ids in [0, vocab) get the "=" token (id vocab) appended, so
    the sequence is [a, b, =]; token and learned positional embeddings (nn.Embedding, the
    latter indexed by arange) feed `n_layers` residual blocks of causal multi-head attention
    and a ReLU MLP; the unembedding reads the residual stream at the last ("=") position.
    LayerNorm is off by default, as in the paper. `init` "torch" keeps torch's default init
    (nn.Embedding N(0, 1), nn.Linear uniform +-1/sqrt(fan_in)); "nanda" is the paper's (see
    `init_nanda_`). `init_scale` in build_model rescales either.
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
        init: str = "torch",
    ):
        super().__init__()
        if init not in TRANSFORMER_INITS:
            raise ValueError(f"unknown transformer init {init!r}; known: {', '.join(TRANSFORMER_INITS)}")
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
        if init == "nanda":
            self.init_nanda_()

    @torch.no_grad()
    def init_nanda_(self) -> None:
        """Nanda et al.'s init, from `transformers.py` of their public code
        (github.com/mechanistic-interpretability-grokking/progress-measures-paper): every weight
        randn / sqrt(d_model) (W_E, W_pos, W_Q, W_K, W_V, W_O, W_in and W_out alike: W_out too
        is divided by sqrt(d_model), not by sqrt(d_mlp)), except the unembedding W_U, randn /
        sqrt(d_vocab), where d_vocab counts the "=" token (p + 1 there: their one vocabulary is
        both input and output); MLP biases zero. LayerNorm, which they do not use, keeps weight
        1 and bias 0. Their tensors are the transposes of ours (W_E is (d_model, d_vocab), our
        embedding (d_vocab, d_model)); an i.i.d. init does not care."""
        d_model, d_vocab = self.embed.embedding_dim, self.embed.num_embeddings
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                module.weight.normal_(0.0, 1.0 / math.sqrt(d_vocab if module is self.unembed else d_model))
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()

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


# --------------------------------------------------------------------------------------------
# Convolutional models: images (channels, height, width) with 2-D layers, signals (channels,
# length) with 1-D ones, flat square vectors as one-channel images
# --------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_GLOBAL_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
NORMS = ("batch", "group", "none")


def conv_input_shape(spec: InputSpec, kind: str) -> tuple[int, ...]:
    """(channels, *spatial) a convolutional model reshapes its dense input to: spec.shape, or
    (1, side, side) for a flat (side * side,) vector."""
    if spec.kind != "dense":
        raise ValueError(f"the {kind} needs dense inputs (images or signals), got input kind {spec.kind!r}")
    shape = spec.shape
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"the {kind} reads a flat input as a square image (dim = side^2), but dim is {shape[0]}; "
                             "give the data's shape as [channels, length] or [channels, height, width]")
        return (1, side, side)
    if len(shape) in (2, 3):
        return shape
    raise ValueError(f"the {kind} needs inputs of shape [channels, length] or [channels, height, width], "
                     f"got {list(shape)}")


def _norm_layer(norm: str, groups: int, nd: int, channels: int) -> nn.Module:
    if norm == "batch":
        return _BATCH_NORM[nd](channels)
    if norm == "group":
        if channels % groups:
            raise ValueError(f"norm 'group': groups={groups} does not divide {channels} channels; "
                             "choose groups dividing every stage's channels")
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


class CNN(nn.Module):
    """A small CNN: [Conv 3x3 (padding 1) -> activation -> MaxPool 2] per entry of `channels`,
    then a linear read-out of the flattened feature map.

    Conv2d on images (channels, height, width) and on flat square vectors (side * side, read
    as one channel); Conv1d on signals (channels, length). The per-example engine handles
    the convolutions by unfolding.
    """

    def __init__(self, spec: InputSpec, channels: list[int], activation: str):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "cnn")
        nd = len(self.input_shape) - 1
        layers: list[nn.Module] = []
        in_ch, size = self.input_shape[0], self.input_shape[1:]
        for ch in channels:
            layers += [_CONV[nd](in_ch, ch, kernel_size=3, padding=1), ACTIVATIONS[activation](), _MAX_POOL[nd](2)]
            in_ch, size = ch, tuple(s // 2 for s in size)
        if min(size) < 1:
            raise ValueError(f"{len(channels)} pooling stages shrink a {'x'.join(map(str, self.input_shape[1:]))} "
                             "input to nothing")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * math.prod(size), spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *self.input_shape))  # (b, C, *spatial)
        return self.head(h.flatten(1))


class BasicBlock(nn.Module):
    """The ResNet-18 block: conv 3x3 (stride) -> norm -> act -> conv 3x3 -> norm, plus the
    shortcut (identity, or conv 1x1 (stride) -> norm where the shape changes), then act."""

    def __init__(self, nd: int, in_ch: int, out_ch: int, stride: int, norm: str, groups: int, activation: str):
        super().__init__()
        bias = norm == "none"  # a norm right after a conv makes its bias redundant
        self.conv1 = _CONV[nd](in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm_layer(norm, groups, nd, out_ch)
        self.act1 = _activation(activation)
        self.conv2 = _CONV[nd](out_ch, out_ch, kernel_size=3, padding=1, bias=bias)
        self.norm2 = _norm_layer(norm, groups, nd, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(_CONV[nd](in_ch, out_ch, kernel_size=1, stride=stride, bias=bias),
                                          _norm_layer(norm, groups, nd, out_ch))
        self.act2 = _activation(activation)  # its own module (not act1 twice), so hooks see each call once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 for small inputs (see the module docstring): a 3x3 stem, stages of BasicBlocks
    (`blocks[i]` of them with base_width * 2^i channels, the first of each stage after the
    first with stride 2), a global average pool and a linear read-out. Weights use torch's
    default init."""

    def __init__(self, spec: InputSpec, base_width: int = 16, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 norm: str = "batch", groups: int = 8, activation: str = "relu"):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "resnet")
        nd = len(self.input_shape) - 1
        self.stem = nn.Sequential(
            _CONV[nd](self.input_shape[0], base_width, kernel_size=3, padding=1, bias=norm == "none"),
            _norm_layer(norm, groups, nd, base_width), _activation(activation))
        stages, in_ch = [], base_width
        for i, n in enumerate(blocks):
            out_ch = base_width * 2**i
            stage = []
            for j in range(n):
                stage.append(BasicBlock(nd, in_ch, out_ch, 2 if i > 0 and j == 0 else 1, norm, groups, activation))
                in_ch = out_ch
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = _GLOBAL_POOL[nd](1)
        self.head = nn.Linear(in_ch, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x.reshape(-1, *self.input_shape)))  # (b, C, *spatial)
        return self.head(self.pool(h).flatten(1))


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # configuration A; "M": max-pool


class VGG(nn.Module):
    """VGG-11 (see the module docstring): [conv 3x3 -> norm -> act] for each number of
    VGG11 scaled by base_width / 64, a max-pool 2 (ceil_mode) for each "M", a global average
    pool and a linear read-out. Weights use torch's default init."""

    def __init__(self, spec: InputSpec, base_width: int = 16, norm: str = "batch", groups: int = 8,
                 activation: str = "relu"):
        super().__init__()
        self.input_shape = conv_input_shape(spec, "vgg")
        nd = len(self.input_shape) - 1
        layers: list[nn.Module] = []
        in_ch = self.input_shape[0]
        for c in VGG11:
            if c == "M":
                layers.append(_MAX_POOL[nd](2, ceil_mode=True))  # ceil: a 1-wide map stays 1 wide
                continue
            out_ch = max(1, c * base_width // 64)
            layers += [_CONV[nd](in_ch, out_ch, kernel_size=3, padding=1, bias=norm == "none"),
                       _norm_layer(norm, groups, nd, out_ch), _activation(activation)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = _GLOBAL_POOL[nd](1)
        self.head = nn.Linear(in_ch, spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(-1, *self.input_shape))  # (b, C, *spatial)
        return self.head(self.pool(h).flatten(1))


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


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks CUDA when present; "cuda" without CUDA is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)
