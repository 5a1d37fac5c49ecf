"""The transformer model kind (`model.kind: transformer`): the modular-arithmetic transformer of
Nanda et al. 2023, built from bias-free nn.Linear attention so that the per-example engine treats
every projection as an ordinary Linear. `gradscope.models.build_model` builds it from a config.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradscope.model_input import InputSpec


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
