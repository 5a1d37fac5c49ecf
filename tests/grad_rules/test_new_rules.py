"""The rules of the issue "Scale" (item 4): RMSNorm, InstanceNorm, Conv3d, EmbeddingBag, and Embedding's
scale_grad_by_freq (refused with the layer's name).

Every rule against the float64 loop of single-example backward passes (support.engine.check_everything:
losses, exact gradient norms, per-layer norms, dots and cosines with the mean gradient, the projection),
at a batch size smaller than the number of examples (chunks, and the mean gradient from its own pass)
and at one that holds them all, with both projection kinds; and on the fast path: no parameter of the
new layers falls back to vmap(grad) (`fallback_parameters`), and the rule itself is seen to run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.examples import fallback_parameters, per_example_stats
from gradscope.grad_rules import RULES
from support.engine import check_everything

N = 7
RUNS = [(3, "gaussian"), (3, "hadamard"), (N, "gaussian"), (N, "hadamard")]  # chunked and whole, both kinds


def rint(gen, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _labels(gen, n=N, n_classes=3):
    return torch.randint(n_classes, (n,), generator=gen)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach each rule (torch function name -> count) while the engine captures."""
    seen: dict[str, int] = {}

    def spy(func):
        rule = RULES[func]

        def wrapped(ctx, f, args, kwargs):
            seen[func.__name__] = seen.get(func.__name__, 0) + 1
            return rule(ctx, f, args, kwargs)
        monkeypatch.setitem(RULES, func, wrapped)

    for func in (F.rms_norm, F.instance_norm, F.conv3d, F.embedding_bag):
        spy(func)
    return seen


# ---- RMSNorm ---------------------------------------------------------------------------------------
class RMSNet(nn.Module):
    """Tokens (b, T, 5) -> Linear -> nn.RMSNorm over the features -> F.rms_norm over (T, features) -> Linear."""

    def __init__(self, T=4, d=6, eps=None, n_classes=3):
        super().__init__()
        self.lin = nn.Linear(5, d)
        self.norm = nn.RMSNorm(d, eps=eps)
        self.norm2_weight = nn.Parameter(torch.randn(T, d))
        self.head = nn.Linear(T * d, n_classes)
        self.T, self.d, self.eps = T, d, eps

    def forward(self, x):
        h = torch.tanh(self.norm(self.lin(x)))
        h = F.rms_norm(h * 3.0 + 0.5, (self.T, self.d), self.norm2_weight, self.eps)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("batch_size, projection", RUNS)
@pytest.mark.parametrize("eps", [None, 1e-2])
def test_rms_norm_exact_and_fast(eps, batch_size, projection, calls):
    gen = torch.Generator().manual_seed(100)
    torch.manual_seed(100)
    model = RMSNet(eps=eps).double()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5, generator=gen)
    x, y = torch.randn(N, 4, 5, generator=gen, dtype=torch.float64), _labels(gen)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=batch_size, projection=projection)
    assert calls["rms_norm"] >= 2


# ---- InstanceNorm ----------------------------------------------------------------------------------
class InstanceNet(nn.Module):
    """Conv1d -> InstanceNorm1d (affine) -> Conv2d on the reshaped map -> InstanceNorm2d (affine) -> Linear."""

    def __init__(self, gen, track_running_stats, n_classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 3, padding=1)
        self.in1 = nn.InstanceNorm1d(4, affine=True, track_running_stats=track_running_stats)
        self.conv2 = nn.Conv2d(1, 3, 3, padding=1)
        self.in2 = nn.InstanceNorm2d(3, affine=True, track_running_stats=track_running_stats)
        self.head = nn.Linear(3 * 4 * 6, n_classes)
        with torch.no_grad():
            for m in (self.in1, self.in2):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
                if track_running_stats:  # running statistics that are not the identity
                    m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                    m.running_var.uniform_(0.5, 2.0, generator=gen)

    def forward(self, x):  # (b, 2, 6)
        h = torch.tanh(self.in1(self.conv1(x)))  # (b, 4, 6)
        h = torch.tanh(self.in2(self.conv2(h.unsqueeze(1))))  # (b, 3, 4, 6)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("batch_size, projection", RUNS)
@pytest.mark.parametrize("track_running_stats", [False, True])
def test_instance_norm_exact_and_fast(track_running_stats, batch_size, projection, calls):
    gen = torch.Generator().manual_seed(200)
    torch.manual_seed(200)
    model = InstanceNet(gen, track_running_stats).double().eval()
    x, y = torch.randn(N, 2, 6, generator=gen, dtype=torch.float64), _labels(gen)
    assert fallback_parameters(model, x, y) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_everything(model, x, y, "cross_entropy", batch_size=batch_size, projection=projection)
    for k, v in model.state_dict().items():  # running statistics untouched
        assert torch.equal(v, before[k]), k
    assert calls["instance_norm"] >= 2


def test_instance_norm_functional_with_input_statistics_and_running_buffers():
    # use_input_stats=True with running buffers given (what a tracked InstanceNorm does in training mode,
    # called functionally): each example is normalized by its own statistics, so its gradients are defined.
    gen = torch.Generator().manual_seed(201)
    torch.manual_seed(201)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3)
            self.w, self.b = nn.Parameter(torch.rand(3) + 0.5), nn.Parameter(torch.randn(3))
            self.register_buffer("rm", torch.zeros(3))
            self.register_buffer("rv", torch.ones(3))
            self.head = nn.Linear(12, 3)

        def forward(self, x):
            h = F.instance_norm(self.conv(x), self.rm.clone(), self.rv.clone(), self.w, self.b, True, 0.1, 1e-5)
            return self.head(torch.tanh(h).flatten(1))

    model = Net().double()
    x, y = torch.randn(N, 2, 6, generator=gen, dtype=torch.float64), _labels(gen)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "mse", batch_size=3)


# ---- Conv3d ----------------------------------------------------------------------------------------
class Conv3dNet(nn.Module):
    """Conv3d of random stride, padding (numbers, "same", circular), dilation and groups, InstanceNorm3d,
    a grouped / depthwise Conv3d, a Linear head."""

    def __init__(self, gen, size, n_classes=3):
        super().__init__()
        c1 = 2 * rint(gen, 1, 2)
        self.c1 = nn.Conv3d(2, c1, (rint(gen, 1, 3), rint(gen, 1, 3), rint(gen, 1, 2)),
                            stride=(rint(gen, 1, 2), 1, rint(gen, 1, 2)), padding=(rint(gen, 0, 1), rint(gen, 0, 2), 1),
                            dilation=(1, rint(gen, 1, 2), 1), padding_mode="circular" if rint(gen, 0, 1) else "zeros")
        self.norm = nn.InstanceNorm3d(c1, affine=True)
        groups = [1, 2, c1][rint(gen, 0, 2)]
        self.c2 = nn.Conv3d(c1, 2 * c1, rint(gen, 1, 3), padding="same", groups=groups, bias=bool(rint(gen, 0, 1)))
        with torch.no_grad():
            flat = self.c2(self.c1(torch.zeros(1, 2, *size))).numel()
        self.head = nn.Linear(flat, n_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.c2(torch.tanh(self.norm(self.c1(x))))).flatten(1))


@pytest.mark.parametrize("batch_size, projection", RUNS)
@pytest.mark.parametrize("seed", range(3))
def test_conv3d_random_shapes_exact_and_fast(seed, batch_size, projection, calls):
    gen = torch.Generator().manual_seed(300 + seed)
    torch.manual_seed(seed)
    size = (rint(gen, 3, 5), rint(gen, 4, 6), rint(gen, 3, 5))
    model = Conv3dNet(gen, size).double().eval()
    x, y = torch.randn(N, 2, *size, generator=gen, dtype=torch.float64), _labels(gen)
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "mse" if seed % 2 else "cross_entropy", batch_size=batch_size,
                     projection=projection)
    assert calls["conv3d"] >= 2


@pytest.mark.parametrize("path", ["gram", "explicit_kernel", "explicit_patches", "sub_batches"])
def test_conv3d_every_path(path, monkeypatch):
    # The Gram path (wide channels over few positions: unfolded 3-D patches), the explicit per-example
    # gradients from the batched weight-gradient kernel, from unfolded patches (an asymmetric "same"
    # padding, which the kernel cannot take) and in sub-batches of one example.
    from gradscope.grad_rules import base

    taken = []
    original = base.Tokens.explicit_blocks
    monkeypatch.setattr(base.Tokens, "explicit_blocks",
                        lambda self, *a: taken.append(self.e_fn is not None) or original(self, *a))
    if path == "sub_batches":
        monkeypatch.setattr(base, "EXPLICIT_MAX_ELEMENTS", 1)
    gen = torch.Generator().manual_seed(310)
    torch.manual_seed(310)
    if path == "gram":  # 8 positions x (64 + 12) <= 64 x 12
        conv, size = nn.Conv3d(8, 12, 2, stride=2, dilation=1), (4, 4, 4)
    elif path == "explicit_patches":
        conv, size = nn.Conv3d(2, 4, (2, 3, 2), padding="same", dilation=(1, 1, 3)), (3, 4, 5)
    else:
        conv, size = nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=1, groups=2), (3, 4, 5)
    c_in = conv.in_channels
    with torch.no_grad():
        flat = conv(torch.zeros(1, c_in, *size)).numel()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(flat, 3)).double()
    x, y = torch.randn(5, c_in, *size, generator=gen, dtype=torch.float64), _labels(gen, 5)
    for batch_size, projection in [(2, "gaussian"), (5, "hadamard")]:
        check_everything(model, x, y, "cross_entropy", batch_size=batch_size, projection=projection)
    if path == "gram":
        assert not taken
    else:
        assert taken and all(t == (path != "explicit_patches") for t in taken), taken


# ---- EmbeddingBag ----------------------------------------------------------------------------------
class BagNet(nn.Module):
    """Tokens (b, N) -> one bag per example -> Linear. Token 0 is "absent" in the offsets form (bags of
    several lengths, empty ones included); per_sample_weights come from a learnable Embedding (their
    gradient reaches it through the bag's output)."""

    def __init__(self, mode, weighted, offsets, padding_idx, include_last_offset=False, vocab=9, d=4, n_classes=3):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, d, mode=mode, padding_idx=padding_idx,
                                   include_last_offset=include_last_offset)
        self.weights = nn.Embedding(vocab, 1) if weighted else None
        self.head = nn.Linear(d, n_classes)
        self.offsets, self.last = offsets, include_last_offset

    def forward(self, tokens):
        psw = torch.sigmoid(self.weights(tokens)).squeeze(-1) if self.weights is not None else None
        if not self.offsets:
            return self.head(torch.tanh(self.bag(tokens, per_sample_weights=psw)))
        keep = tokens != 0
        lengths = keep.sum(1)
        ends = lengths.cumsum(0)
        offsets = torch.cat([ends.new_zeros(1), ends]) if self.last else ends - lengths
        flat_psw = psw[keep] if psw is not None else None
        return self.head(torch.tanh(self.bag(tokens[keep], offsets, per_sample_weights=flat_psw)))


BAGS = [  # mode, per_sample_weights, offsets, padding_idx, include_last_offset
    ("sum", False, False, None, False),
    ("mean", False, False, None, False),
    ("sum", True, False, 2, False),
    ("mean", False, False, -1, False),
    ("sum", False, True, None, False),
    ("mean", False, True, 3, False),
    ("sum", True, True, 3, True),
    ("mean", False, True, None, True),
]


@pytest.mark.parametrize("batch_size, projection", RUNS)
@pytest.mark.parametrize("mode, weighted, offsets, padding_idx, last", BAGS)
def test_embedding_bag_exact_and_fast(mode, weighted, offsets, padding_idx, last, batch_size, projection, calls):
    gen = torch.Generator().manual_seed(400)
    torch.manual_seed(400)
    model = BagNet(mode, weighted, offsets, padding_idx, last).double()
    x, y = torch.randint(9, (N, 6), generator=gen), _labels(gen)
    x[1, :3] = 3  # repeated tokens within a bag (and the padding index where it is 3)
    x[2] = 0  # an empty bag in the offsets form
    x[4, 2:] = 0  # a short one
    assert fallback_parameters(model, x, y) == []
    check_everything(model, x, y, "cross_entropy", batch_size=batch_size, projection=projection)
    assert calls["embedding_bag"] >= 2


def test_embedding_bag_with_several_bags_per_example_falls_back():
    # Two bags per example (the bag count is not the batch size): the vmap fallback, still exact.
    gen = torch.Generator().manual_seed(401)
    torch.manual_seed(401)

    class TwoBags(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag, self.head = nn.EmbeddingBag(9, 4, mode="sum"), nn.Linear(8, 3)

        def forward(self, tokens):  # (b, 2, 3): two fields of three tokens
            return self.head(self.bag(tokens.reshape(-1, 3)).reshape(len(tokens), 8))

    model = TwoBags().double()
    x, y = torch.randint(9, (N, 2, 3), generator=gen), _labels(gen)
    assert fallback_parameters(model, x, y) == ["bag.weight"]
    check_everything(model, x, y, "cross_entropy", batch_size=3)


# ---- scale_grad_by_freq ------------------------------------------------------------------------------
class FreqNet(nn.Module):
    def __init__(self, bag=False, vocab=5, d=4, n_classes=3):
        super().__init__()
        self.embed = (nn.EmbeddingBag(vocab, d, mode="sum", scale_grad_by_freq=True) if bag
                      else nn.Embedding(vocab, d, scale_grad_by_freq=True))
        self.head = nn.Linear(d, n_classes)
        self.is_bag = bag

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.head(torch.tanh(h if self.is_bag else h.mean(1)))


@pytest.mark.parametrize("bag", [False, True])
@pytest.mark.parametrize("batch_size", [3, N])
def test_scale_grad_by_freq_is_refused_with_the_layer_named(bag, batch_size):
    # Its gradient is scaled by token counts over the whole batch: a chunk's gradient is not the sum
    # of its examples' (the mean gradient was off by ~4e-3 with chunks). Refused at every batch size.
    gen = torch.Generator().manual_seed(500)
    torch.manual_seed(500)
    model = FreqNet(bag).double()
    x, y = torch.randint(5, (N, 6), generator=gen), _labels(gen)
    kind = "EmbeddingBag" if bag else "Embedding"
    with pytest.raises(ValueError, match=rf"{kind} 'embed' \(embed\.weight\) has scale_grad_by_freq=True"):
        per_example_stats(model, x, y, batch_size=batch_size)


def test_scale_grad_by_freq_frozen_is_fine():
    # A frozen weight needs no gradient: the rest of the model is measured, exactly.
    gen = torch.Generator().manual_seed(501)
    torch.manual_seed(501)
    model = FreqNet().double()
    model.embed.weight.requires_grad_(False)
    x, y = torch.randint(5, (N, 6), generator=gen), _labels(gen)
    check_everything(model, x, y, "cross_entropy", batch_size=3)


@pytest.mark.parametrize("k, projection", [(40, "hadamard"), (6, "gaussian")])
def test_embedding_bag_projection_through_every_map(k, projection, monkeypatch):
    # The bag's projection sums its tokens' rows of the map's Kronecker factors first (the default
    # add_embedding_sums, summed over the bag); at k = 40 the 36-entry weight takes the signed injection,
    # and a map with its own add_embedding_sums is handed the bag's tokens.
    from gradscope import projection as pj
    from gradscope.projection_map import Projection

    own = []

    def add_embedding_sums(self, acc, ids, G):
        own.append(ids.shape)
        Projection.add_embedding_sums(self, acc, ids, G)

    if projection == "gaussian":
        monkeypatch.setattr(pj.Kron, "add_embedding_sums", add_embedding_sums)
    gen = torch.Generator().manual_seed(402)
    torch.manual_seed(402)
    model = BagNet("mean", False, True, 3).double()
    x, y = torch.randint(9, (N, 6), generator=gen), _labels(gen)
    x[2] = 0
    assert fallback_parameters(model, x, y) == []
    for batch_size in (3, N):
        check_everything(model, x, y, "cross_entropy", batch_size=batch_size, proj_dim=k, projection=projection)
    assert bool(own) == (projection == "gaussian")
