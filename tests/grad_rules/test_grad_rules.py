"""The per-layer rules of the per-example engine on the layers researchers' models are made of.

Each architecture is checked against a loop of single-example backward passes in float64
(tests/test_examples.py's check_everything: losses, exact gradient norms, per-layer norms,
cosines with the mean gradient and the documented projection), on random shapes. The
regressions of the issue "Your model, your data" are here: attention's out-projection
(silently zero before), BatchNorm and Dropout in training mode, frozen parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.examples import fallback_parameters, layer_names, per_example_stats, projection_factors
from support.engine import check_everything


def rint(gen, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


class Encoder(nn.Module):
    """Tokens -> Embedding + positions -> nn.TransformerEncoder (2 layers) -> mean -> Linear."""

    def __init__(self, vocab=7, length=5, d=8, heads=2, n_classes=3, batch_first=True, norm_first=False):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(length, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=12, dropout=0.1, batch_first=batch_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)
        self.batch_first = batch_first

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos
        if not self.batch_first:
            return self.head(self.encoder(h.transpose(0, 1)).mean(0))
        return self.head(self.encoder(h).mean(1))


class CrossAttention(nn.Module):
    """nn.MultiheadAttention with distinct query and key/value, a padding mask and attention weights used."""

    def __init__(self, vocab=6, d=6, n_classes=3):
        super().__init__()
        self.q_embed, self.kv_embed = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.mha = nn.MultiheadAttention(d, 3, batch_first=True)
        self.head = nn.Linear(d, n_classes)

    def forward(self, tokens):
        q, kv = self.q_embed(tokens[:, :2]), self.kv_embed(tokens)
        out, weights = self.mha(q, kv, kv, key_padding_mask=tokens == 0)
        return self.head(out.mean(1)) + weights.sum((1, 2))[:, None]


class ResNetish(nn.Module):
    """Stem Conv2d + BatchNorm (eval), a residual block with GroupNorm, a depthwise and a grouped conv."""

    def __init__(self, gen, n_classes=4):
        super().__init__()
        c = 2 * rint(gen, 2, 3)
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, stride=rint(gen, 1, 2), padding=1, bias=False)  # 6x6 -> 6x6 or 3x3
        self.gn = nn.GroupNorm(2, c)
        dilation = rint(gen, 1, 2)
        self.depthwise = nn.Conv2d(c, 2 * c, 3, padding=dilation + rint(gen, 0, 1) - 1, groups=c, dilation=dilation)
        self.grouped = nn.Conv2d(2 * c, c, 1, groups=2)
        self.head = nn.Linear(c, n_classes)
        with torch.no_grad():  # running statistics that are not the identity
            self.bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
            self.bn.running_var.uniform_(0.5, 2.0, generator=gen)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.gn(self.conv1(h)))
        h = self.grouped(torch.relu(self.depthwise(h)))
        return self.head(h.mean((2, 3)))


class Conv1dNet(nn.Module):
    """Two Conv1d layers of random stride, padding, dilation and groups, BatchNorm1d (eval), a Linear head."""

    def __init__(self, gen, length, n_classes=3):
        super().__init__()
        groups = rint(gen, 1, 2)
        c1, c2 = 2 * rint(gen, 1, 3), 2 * rint(gen, 1, 2)
        self.c1 = nn.Conv1d(2, c1, rint(gen, 1, 4), stride=rint(gen, 1, 2), padding=rint(gen, 0, 2),
                            dilation=rint(gen, 1, 2), padding_mode="circular" if rint(gen, 0, 1) else "zeros")
        self.bn = nn.BatchNorm1d(c1)
        self.c2 = nn.Conv1d(c1, c2, rint(gen, 1, 3), padding="same", groups=groups, bias=bool(rint(gen, 0, 1)))
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0, generator=gen)
            flat = self.c2(self.c1(torch.zeros(1, 2, length))).numel()
        self.head = nn.Linear(flat, n_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.c2(torch.tanh(self.bn(self.c1(x))))).flatten(1))


class Tied(nn.Module):
    """The embedding also unembeds through F.linear (two kinds of use of one weight), and a Linear applied twice."""

    def __init__(self, vocab=6, d=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lin = nn.Linear(d, d)

    def forward(self, tokens):
        h = torch.tanh(self.lin(torch.tanh(self.lin(self.embed(tokens))))).mean(1)
        return F.linear(h, self.embed.weight)


class Recurrent(nn.Module):
    def __init__(self, d=3, hidden=4, n_classes=3):
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _data(gen, n, shape=None, vocab=None, n_classes=3):
    x = torch.randint(vocab, (n, *shape), generator=gen) if vocab else torch.randn(n, *shape, generator=gen,
                                                                                   dtype=torch.float64)
    return x, torch.randint(n_classes, (n,), generator=gen)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_exact_and_fast(batch_first, norm_first):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = Encoder(batch_first=batch_first, norm_first=norm_first).double().eval()
    x, y = _data(gen, 9, (5,), vocab=7)
    # attention's in_proj_weight (a raw parameter) and out_proj (never called as a module) included
    assert fallback_parameters(model, x, y) == ["pos"]  # a raw parameter added to the embeddings
    check_everything(model, x, y, "cross_entropy", batch_size=4)


def test_cross_attention_with_mask_and_weights():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = CrossAttention().double().eval()
    x, y = _data(gen, 8, (4,), vocab=6)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=3)


@pytest.mark.parametrize("seed", range(3))
def test_resnet_like_batchnorm_eval_groupnorm_depthwise_grouped(seed):
    gen = torch.Generator().manual_seed(10 + seed)
    torch.manual_seed(seed)
    model = ResNetish(gen).double().eval()
    x, y = _data(gen, 6, (3, 6, 6), n_classes=4)
    assert fallback_parameters(model, x, y) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_everything(model, x, y, "cross_entropy", batch_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("seed", range(4))
def test_conv1d_random_shapes(seed):
    gen = torch.Generator().manual_seed(20 + seed)
    torch.manual_seed(seed)
    length = rint(gen, 6, 12)
    model = Conv1dNet(gen, length).double().eval()
    x, y = _data(gen, 7, (2, length))
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "mse" if seed % 2 else "cross_entropy", batch_size=3)


@pytest.mark.parametrize("stride, padding, dilation, projection, residue_min, dense_side_below, k",
                         [(1, 0, 1, "gaussian", 16, 256, 5), (2, 1, 1, "gaussian", 16, 256, 5),
                          (2, 1, 1, "gaussian", 1, 256, 5), (2, 2, 2, "gaussian", 1, 256, 5),
                          (3, 1, 2, "gaussian", 1, 256, 5), (2, 1, 1, "hadamard", 1, 256, 5),
                          (2, 1, 1, "hadamard", 16, 1, 5), (2, 1, 1, "hadamard", 16, 256, 400)])
def test_conv1d_gram_path_without_unfolding(stride, padding, dilation, projection, residue_min, dense_side_below, k,
                                            monkeypatch):
    # Wide channels over short sequences take the Gram path, where a 1-D convolution's patch Gram
    # comes from its input's Gram (whole, or per residue class of positions modulo the stride) and
    # the dots (and the Gaussian projection) from a convolution: every statistic against the loop,
    # and the path really taken for both convolutions. The hadamard kind sums its tokens per example
    # (SampledHadamard.add_token_sums), its columns side mixed by a convolution with the side's dense
    # map, or (DENSE_SIDE_BELOW 1) by the factored transforms on unfolded patches; at k = 400 both
    # convolutions' weights (384 entries each) take the signed injection, from explicit gradients.
    from gradscope import hadamard
    from gradscope.grad_rules import base, conv

    monkeypatch.setattr(conv, "RESIDUE_MIN_LENGTH", residue_min)
    monkeypatch.setattr(hadamard, "DENSE_SIDE_BELOW", dense_side_below)

    taken = []
    original = base.Tokens._stats_unfolded_free
    monkeypatch.setattr(base.Tokens, "_stats_unfolded_free",
                        lambda self, *a: taken.append(self.G.shape) or original(self, *a))
    gen = torch.Generator().manual_seed(50 + stride)
    torch.manual_seed(stride)
    model = nn.Sequential(nn.Conv1d(8, 16, 3, stride=stride, padding=padding, dilation=dilation), nn.Tanh(),
                          nn.Conv1d(16, 12, 2, padding=padding), nn.Flatten())
    with torch.no_grad():
        flat = model(torch.zeros(1, 8, 9)).shape[1]
    model = nn.Sequential(*model, nn.Linear(flat, 3)).double().eval()
    x, y = _data(gen, 7, (8, 9))
    check_everything(model, x, y, "cross_entropy", batch_size=4, proj_dim=k, projection=projection)
    assert len({shape[-1] for shape in taken}) == 2, taken  # both convolutions (c_out 16 and 12)


@pytest.mark.parametrize("dense_side_below", [1, 256])
@pytest.mark.parametrize("k", [7, 40, 90])  # pairs within the longer side, and wrapping past it
def test_hadamard_sums_tokens_per_example_on_the_gram_path(k, dense_side_below, monkeypatch):
    # A Linear over 3 tokens of 16 features (3 x 32 <= 16 x 16: the Gram path) with the hadamard kind:
    # the per-example product of the mixed sides, read at the kept pairs, against the loop.
    from gradscope import hadamard
    from gradscope import projection as pj

    monkeypatch.setattr(hadamard, "DENSE_SIDE_BELOW", dense_side_below)
    calls = []
    original = pj.SampledHadamard.add_token_sums
    monkeypatch.setattr(pj.SampledHadamard, "add_token_sums", lambda self, *a, **kw: calls.append(self.k) or
                        original(self, *a, **kw))
    gen = torch.Generator().manual_seed(70 + k)
    torch.manual_seed(k)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 12), nn.Flatten(), nn.Linear(36, 3)).double()
    x, y = _data(gen, 7, (3, 16))
    check_everything(model, x, y, "cross_entropy", batch_size=4, proj_dim=k, projection="hadamard")
    assert calls, "the per-example token sums were not used"


def test_explicit_sub_batches(monkeypatch):
    # Sub-batches of one example in the explicit path: every sub-batch must use its own rows.
    from gradscope.grad_rules import base
    monkeypatch.setattr(base, "EXPLICIT_MAX_ELEMENTS", 1)
    gen = torch.Generator().manual_seed(30)
    torch.manual_seed(30)
    model = ResNetish(gen).double().eval()
    x, y = _data(gen, 5, (3, 6, 6), n_classes=4)
    check_everything(model, x, y, "cross_entropy", batch_size=5)


def test_tied_weights_are_the_sum_of_their_uses():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = Tied().double()
    x, y = _data(gen, 9, (3,), vocab=6, n_classes=6)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=4)


def test_lstm_falls_back_in_float64():
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = Recurrent().double().eval()
    x, y = _data(gen, 6, (5, 3))
    assert sorted(fallback_parameters(model, x, y)) == sorted(n for n in layer_names(model) if n.startswith("lstm"))
    check_everything(model, x, y, "cross_entropy", batch_size=4)


def test_frozen_parameters_are_left_out():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = ResNetish(gen).double().eval()
    for p in [model.stem.weight, *model.bn.parameters(), model.conv1.weight]:
        p.requires_grad_(False)  # a frozen backbone
    x, y = _data(gen, 6, (3, 6, 6), n_classes=4)
    assert not any(n.startswith(("stem", "bn.", "conv1")) for n in layer_names(model))
    check_everything(model, x, y, "cross_entropy", batch_size=4)  # the loop covers trainable parameters only
    every = per_example_stats(model, x, y, trainable_only=False, layer_norms=True)
    part = per_example_stats(model, x, y, layer_norms=True)
    assert every["layer_grad_norm"].shape[1] == len(layer_names(model, trainable_only=False))
    assert (every["grad_norm"] > part["grad_norm"]).all()


def test_batchnorm_in_training_mode_is_refused_and_buffers_kept():
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = ResNetish(gen).double().train()
    x, y = _data(gen, 6, (3, 6, 6), n_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"training mode \(bn\).*eval=True"):
        per_example_stats(model, x, y)
    stats = per_example_stats(model, x, y, eval=True)  # switched to eval mode for the call only
    assert model.training and model.bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ref = per_example_stats(model.eval(), x, y)
    assert (stats["grad_norm"] == ref["grad_norm"]).all()


def test_batch_statistics_in_eval_mode_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten(),
                          nn.LazyLinear(3)).double()
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    model(x)
    with pytest.raises(ValueError, match="statistics of the batch"):
        per_example_stats(model.eval(), x, torch.tensor([0, 1, 2, 0]))


def test_dropout_in_training_mode():
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = Recurrent().double()
    model.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3)).double()
    x, y = _data(gen, 5, (4, 3))
    with pytest.raises(ValueError, match=r"head\.0"):
        per_example_stats(model.train(), x, y)
    a = per_example_stats(model, x, y, eval=True)
    b = per_example_stats(model.eval(), x, y)
    assert (a["grad_norm"] == b["grad_norm"]).all()


def test_attention_out_projection_is_not_zeroed():
    # Regression: out_proj is used through F.multi_head_attention_forward, never called as a module;
    # the engine once gave it a zero gradient with no warning (grad_norm off by 5e-2).
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(8)
    model = Encoder(d=6, heads=3).double().eval()
    x, y = _data(gen, 6, (5,), vocab=7)
    stats = check_everything(model, x, y, "cross_entropy", batch_size=6)
    names = layer_names(model)
    assert stats["layer_grad_norm"][:, names.index("encoder.layers.1.self_attn.out_proj.weight")].min() > 0


@pytest.mark.parametrize("k, dense_side_below", [(12, 1), (40, 1), (40, 256), (400, 256)])
@pytest.mark.parametrize("arch", ["encoder", "cross_attention", "resnet", "conv1d", "tied", "explicit_sub_batches"])
def test_hadamard_projection_on_every_path(arch, k, dense_side_below, monkeypatch):
    # The "hadamard" projection through every path of the engine (rank-one tokens, the Gram
    # path, explicit convolution gradients and their sub-batches, grouped convolutions and
    # embeddings through its Kronecker factors, normalization affine parameters, the vmap
    # fallback) equals the flat per-example gradients times its dense form; k = 12 and 40 are
    # above some layers' P * Q (pairs wrap) and not multiples of their short side; matrices with
    # numel <= k take the signed injection instead (a few at k = 40, most at k = 400). These sides are
    # small enough to mix by their dense maps; DENSE_SIDE_BELOW = 1 sends them through the factors.
    from gradscope import hadamard
    from gradscope import projection as pj

    monkeypatch.setattr(hadamard, "DENSE_SIDE_BELOW", dense_side_below)  # 1: the factored transforms on every side
    gen = torch.Generator().manual_seed(40)
    torch.manual_seed(40)
    if arch == "explicit_sub_batches":
        from gradscope.grad_rules import base
        monkeypatch.setattr(base, "EXPLICIT_MAX_ELEMENTS", 1)
    model, x = {
        "encoder": lambda: (Encoder(), _data(gen, 7, (5,), vocab=7)[0]),
        "cross_attention": lambda: (CrossAttention(), _data(gen, 7, (4,), vocab=6)[0]),
        "resnet": lambda: (ResNetish(gen), _data(gen, 7, (3, 6, 6))[0]),
        "explicit_sub_batches": lambda: (ResNetish(gen), _data(gen, 5, (3, 6, 6))[0]),
        "conv1d": lambda: (Conv1dNet(gen, 9), _data(gen, 7, (2, 9))[0]),
        "tied": lambda: (Tied(), _data(gen, 7, (3,), vocab=6)[0]),
    }[arch]()
    model = model.double().eval()
    n_classes = 6 if arch == "tied" else 3
    y = torch.randint(n_classes, (len(x),), generator=gen)
    factors = projection_factors(model, k, 0, True, "hadamard")
    kinds = {type(f) for f in factors.values()}
    assert k == 40 or (pj.SampledHadamard if k == 12 else pj.Injection) in kinds, kinds
    check_everything(model, x, y, "cross_entropy", batch_size=4, proj_dim=k, projection="hadamard")
