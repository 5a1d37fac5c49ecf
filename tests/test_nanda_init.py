"""model.init "nanda": the transformer init of Nanda et al. 2023, checked against the formulas of
their public transformers.py (progress-measures-paper): W_E, W_pos, W_Q, W_K, W_V, W_O, W_in,
W_out ~ randn/sqrt(d_model); W_U ~ randn/sqrt(d_vocab) with d_vocab = tokens + "="; biases zero.

Sizes are chosen so that every plausible wrong factor is at least 1.4x off the right one:
d_vocab = 32 against d_model = 128 (W_U), d_mlp = 512 (W_out over sqrt(d_mlp) would be half),
n_heads * d_head = 96 != d_model (W_O over its fan-in), torch's uniform init (sqrt(3) smaller).
The tolerance is 6 standard errors of a sample standard deviation (SE ~ std / sqrt(2 n)).
"""

import math
from pathlib import Path

import pytest
import torch

from gradscope import config
from gradscope.config import ConfigError, load_config_files
from gradscope.models import InputSpec, Transformer, build_model

REPO = Path(__file__).resolve().parents[1]
P = 31  # tokens 0..30; with "=" d_vocab = 32
SPEC = InputSpec(kind="tokens", dim=2, vocab=P, n_classes=P)
SIZES = dict(d_model=128, n_heads=3, d_head=32, d_mlp=512)


def paper_std(name: str, d_model: int, d_vocab: int) -> float:
    """The std their code gives each of our tensors (0 for biases)."""
    if name.endswith("bias"):
        return 0.0
    return 1.0 / math.sqrt(d_vocab if name == "unembed.weight" else d_model)


def build(seed: int, **over) -> Transformer:
    torch.manual_seed(seed)
    return build_model(config.section("model", {"kind": "transformer", **SIZES, "init": "nanda", **over}), SPEC)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_tensor_has_the_papers_std_and_zero_mean_and_biases_are_zero(seed):
    model = build(seed)
    names = dict(model.named_parameters())
    # every parameter of the model is one of theirs: nothing is left at torch's init by accident
    assert set(names) == {"embed.weight", "pos_embed.weight", "blocks.0.attn.W_Q.weight", "blocks.0.attn.W_K.weight",
                          "blocks.0.attn.W_V.weight", "blocks.0.attn.W_O.weight", "blocks.0.mlp.0.weight",
                          "blocks.0.mlp.0.bias", "blocks.0.mlp.2.weight", "blocks.0.mlp.2.bias", "unembed.weight"}
    for name, p in names.items():
        want = paper_std(name, d_model=128, d_vocab=P + 1)
        if want == 0.0:
            assert torch.count_nonzero(p) == 0, name
            continue
        n = p.numel()
        std = p.detach().double().std().item()
        assert abs(std - want) < 6 * want / math.sqrt(2 * n), (name, std, want)
        assert abs(p.detach().double().mean().item()) < 6 * want / math.sqrt(n), name


def test_wrong_factors_would_fail_the_tolerance():
    """The test above can fail: each alternative a slip would give lies outside its tolerance."""
    model = build(0)
    for name, wrong in [("unembed.weight", 1 / math.sqrt(128)),  # sqrt(d_model) for W_U
                        ("blocks.0.mlp.2.weight", 1 / math.sqrt(512)),  # W_out over sqrt(d_mlp)
                        ("blocks.0.attn.W_O.weight", 1 / math.sqrt(96)),  # W_O over its fan-in
                        ("embed.weight", 1.0),  # torch's nn.Embedding
                        ("blocks.0.attn.W_Q.weight", 1 / math.sqrt(3 * 128))]:  # torch's uniform Linear
        p = dict(model.named_parameters())[name].detach().double()
        tol = 6 * wrong / math.sqrt(2 * p.numel())
        assert abs(p.std().item() - wrong) > tol, (name, wrong)


def test_weights_are_gaussian_not_torchs_uniform():
    # excess kurtosis: 0 for a Gaussian, -1.2 for a uniform (torch's nn.Linear default)
    for name, p in build(3).named_parameters():
        if name.endswith("weight") and p.numel() >= 10_000:
            x = p.detach().double().flatten()
            z = (x - x.mean()) / x.std()
            excess = (z**4).mean().item() - 3
            assert abs(excess) < 6 * math.sqrt(24 / x.numel()), (name, excess)


def test_paper_size_norms_are_those_the_issue_measured():
    """At the paper's sizes (p = 113, d_model 128): |W_E| ~ sqrt(114) = 10.7, |W_pos| ~ sqrt(3) = 1.7,
    |W_U| ~ sqrt(113 * 128 / 114) = 11.3, where torch's init gives 121.6, 19.5 and 6.2."""
    spec = InputSpec(kind="tokens", dim=2, vocab=113, n_classes=113)
    torch.manual_seed(0)
    model = build_model(config.section("model", {"kind": "transformer", "init": "nanda"}), spec)
    norms = {n: p.norm().item() for n, p in model.named_parameters()}
    assert norms["embed.weight"] == pytest.approx(math.sqrt(114), rel=0.1)
    assert norms["pos_embed.weight"] == pytest.approx(math.sqrt(3), rel=0.3)  # 384 entries: rel SE 0.036
    assert norms["unembed.weight"] == pytest.approx(math.sqrt(113 * 128 / 114), rel=0.1)
    torch.manual_seed(0)
    plain = build_model(config.section("model", {"kind": "transformer"}), spec)
    assert dict(plain.named_parameters())["embed.weight"].norm().item() > 100  # N(0, 1): about sqrt(114 * 128)


def test_layer_norm_keeps_ones_and_zeros_and_init_scale_multiplies():
    model = build(4, layer_norm=True, n_layers=2)
    for name, p in model.named_parameters():
        if ".ln" in name or name.startswith("ln_final"):
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
    a, b = build(5), build(5, init_scale=3.0)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb, 3.0 * pa, msg=name)


def test_torch_init_is_unchanged_by_the_option():
    torch.manual_seed(6)
    default = Transformer(SPEC, **SIZES)
    torch.manual_seed(6)
    explicit = build_model(config.section("model", {"kind": "transformer", **SIZES, "init": "torch"}), SPEC)
    for (name, pa), (_, pb) in zip(default.named_parameters(), explicit.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "vgg"])
def test_nanda_init_on_another_kind_is_rejected_naming_key_value_and_allowed(kind):
    with pytest.raises(ConfigError) as err:
        config.section("model", {"kind": kind, "init": "nanda"})
    text = str(err.value)
    assert "model.init" in text and "'nanda'" in text and "allowed: 'torch'" in text and "transformer" in text


def test_unknown_init_is_rejected():
    with pytest.raises(ConfigError, match=r"model\.init: 'xavier' is not one of.*allowed: 'torch', 'nanda'"):
        config.section("model", {"kind": "transformer", "init": "xavier"})
    with pytest.raises(ValueError, match="unknown transformer init 'xavier'; known: torch, nanda"):
        Transformer(SPEC, init="xavier")


def test_the_shipped_grokking_config_uses_the_papers_model():
    cfg = load_config_files([REPO / "config/experiments/grokking_transformer.yaml"],
                            default=REPO / "config/config.yaml")
    model = config.section("model", cfg["experiments"]["grokking_transformer"]["model"])
    assert model["kind"] == "transformer" and model["init"] == "nanda"
    assert (model["d_model"], model["n_heads"], model["d_head"], model["d_mlp"], model["n_layers"],
            model["layer_norm"]) == (128, 4, 32, 512, 1, False)
