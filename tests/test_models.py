"""Models: the Nanda et al. 2023 transformer, MLP init_scale, build_model's kinds (ResNet, VGG,
CNN on images and 1-D signals) and the researcher's own models (kind python)."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gradscope import checkpoints, data, train
from gradscope.config import ConfigError, expand_runs, load_config, load_runs, train_slice
from gradscope.factories import FactoryError
from gradscope.losses import per_example_loss
from gradscope.models import MLP, InputSpec, Transformer, build_model

REPO = Path(__file__).resolve().parents[1]

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
    # the schema's check (build_model fills and validates its section there), a ConfigError
    with pytest.raises(ValueError, match="model.kind: 'densenet'.*allowed: 'mlp', 'transformer', 'cnn', 'resnet', 'vgg', "
                                         "'python'"):
        build_model({"kind": "densenet"}, TOKENS)


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


# ---- inputs with a shape: images, 1-D signals, flat square images ----------------------------


def test_input_spec_shape():
    assert InputSpec("dense", 5, 0, 3).shape == (5,)
    assert InputSpec("tokens", 2, 7, 7).shape == (2,)
    assert InputSpec.from_dict({"kind": "dense", "dim": 40, "n_classes": 10}).shape == (40,)  # old checkpoints
    spec = InputSpec.from_dict({"kind": "dense", "dim": 40, "n_classes": 10, "shape": [1, 40]})
    assert spec.shape == (1, 40) and spec == InputSpec("dense", 40, 0, 10, (1, 40))
    with pytest.raises(ValueError, match=r"input shape \[3, 8, 8\] has 192 entries, but dim is 64"):
        InputSpec("dense", 64, 0, 10, (3, 8, 8))


SHAPES = {"signal": (2, 12), "image": (3, 6, 6), "flat_square": (36,)}
TINY = {
    "cnn": {"kind": "cnn", "channels": [3, 4]},
    "resnet_batch": {"kind": "resnet", "base_width": 4, "blocks": [1, 1]},
    "resnet_group": {"kind": "resnet", "base_width": 4, "blocks": [2, 1, 1], "norm": "group", "groups": 2},
    "resnet_none": {"kind": "resnet", "base_width": 2, "blocks": [1, 1], "norm": "none", "activation": "gelu"},
    "vgg_batch": {"kind": "vgg", "base_width": 2},
    "vgg_none": {"kind": "vgg", "base_width": 2, "norm": "none"},
    "mlp": {"kind": "mlp", "depth": 1, "width": 8},
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", TINY)
def test_forward_on_signals_images_and_flat_square_images(name, shape):
    spec = InputSpec("dense", int(torch.tensor(shape).prod()), 0, 5, shape)
    torch.manual_seed(0)
    model = build_model(TINY[name], spec)
    x = torch.randn(4, *shape)
    assert model(x).shape == (4, 5)
    assert torch.equal(model.eval()(x), model(x.flatten(1)))  # a flat batch reads the same
    convs = {type(m) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}
    assert convs == (set() if name == "mlp" else {nn.Conv1d} if len(shape) == 2 else {nn.Conv2d})
    norms = {type(m) for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))}
    norm = TINY[name].get("norm", "batch") if name.split("_")[0] in ("resnet", "vgg") else "none"
    assert norms == {"batch": {nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d}, "group": {nn.GroupNorm},
                     "none": set()}[norm]


def test_resnet18_and_vgg11_at_full_width_have_the_reference_sizes():
    """base_width 64 on CIFAR-10 images: kuangliu/pytorch-cifar's ResNet18 (11,173,962 parameters) and its
    VGG('VGG11') less the conv biases a BatchNorm makes redundant (9,231,114 - 2,752)."""
    spec = InputSpec("dense", 3 * 32 * 32, 0, 10, (3, 32, 32))
    resnet = build_model({"kind": "resnet", "base_width": 64}, spec)
    vgg = build_model({"kind": "vgg", "base_width": 64}, spec)
    assert sum(p.numel() for p in resnet.parameters()) == 11_173_962
    assert sum(p.numel() for p in vgg.parameters()) == 9_231_114 - 2_752
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in resnet.modules()) == 17
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 8


def test_vgg_runs_on_inputs_smaller_than_its_five_pools():
    torch.manual_seed(0)
    model = build_model({"kind": "vgg", "base_width": 2}, InputSpec("dense", 4, 0, 3, (1, 2, 2)))
    assert model(torch.randn(2, 1, 2, 2)).shape == (2, 3)


def test_cnn_on_flat_square_images_is_the_one_channel_image_model():
    """The same seeded build whether the data says (side * side,) or (1, side, side): same parameters, same outputs."""
    torch.manual_seed(0)
    flat = build_model({"kind": "cnn", "channels": [4, 8]}, InputSpec("dense", 64, 0, 10))
    torch.manual_seed(0)
    image = build_model({"kind": "cnn", "channels": [4, 8]}, InputSpec("dense", 64, 0, 10, (1, 8, 8)))
    for (na, a), (nb, b) in zip(flat.state_dict().items(), image.state_dict().items(), strict=True):
        assert na == nb and torch.equal(a, b)
    x = torch.randn(3, 64)
    assert torch.equal(flat(x), image(x.reshape(3, 1, 8, 8)))


def test_group_norm_needs_groups_dividing_the_channels():
    with pytest.raises(ValueError, match="groups=3 does not divide 4 channels"):
        build_model({"kind": "resnet", "base_width": 4, "norm": "group", "groups": 3}, InputSpec("dense", 36, 0, 2))
    with pytest.raises(ValueError, match="square"):
        build_model({"kind": "resnet"}, InputSpec("dense", 20, 0, 2))


# ---- the researcher's own model: kind python ---------------------------------------------


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A working directory holding the researcher's module lab_models.py; sys.path and sys.modules restored after."""
    (tmp_path / "lab_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def small(input_shape, n_classes, hidden=8, frozen=False):
            model = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.Tanh(),
                                  nn.Linear(hidden, n_classes))
            model[1].requires_grad_(not frozen)
            return model

        def tokens(input_shape, n_classes, vocab):
            return nn.Sequential(nn.Embedding(vocab, 4), nn.Flatten(), nn.Linear(4 * input_shape[0], n_classes))

        def not_a_model(input_shape, n_classes):
            return [nn.Linear(1, 1)]

        def broken(input_shape, n_classes):
            raise RuntimeError("out of ideas")

        NUMBER = 3
    """))
    (tmp_path / "lab_broken_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    for name in ("lab_models", "lab_broken_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("lab_models", "lab_broken_import"):
        sys.modules.pop(name, None)


def test_python_factory_gets_the_input_shape_and_kwargs(lab):
    spec = InputSpec("dense", 12, 0, 3, (3, 4))
    model = build_model({"kind": "python", "factory": "lab_models:small", "kwargs": {"hidden": 5}}, spec)
    assert model[1].out_features == 5 and model[1].in_features == 12
    assert model(torch.randn(2, 3, 4)).shape == (2, 3)
    tok = build_model({"kind": "python", "factory": "lab_models:tokens"}, InputSpec("tokens", 2, 7, 7))
    assert tok(torch.randint(0, 7, (4, 2))).shape == (4, 7)


@pytest.mark.parametrize("factory, reason", [
    ("lab_nowhere:small", "no module named 'lab_nowhere'"),
    ("lab_models.sub:small", "no module named 'lab_models.sub'"),
    ("lab_models:missing", "module 'lab_models' has no attribute 'missing'"),
    ("lab_models:NUMBER", "NUMBER is a int, not a function or class"),
    ("lab_broken_import:f", "importing lab_broken_import failed: No module named 'no_such_dependency_xyz'"),
    ("lab_models:not_a_model", "it returned a builtins.list, not a torch.nn.Module"),
    ("lab_models:broken", r"calling it as lab_models:broken\(input_shape=\(4,\), n_classes=2\) raised RuntimeError: out"),
])
def test_bad_factories_name_the_key_value_and_reason(lab, factory, reason):
    with pytest.raises(FactoryError, match=rf"^model.factory: cannot use '{factory}': {reason}"):
        build_model({"kind": "python", "factory": factory}, InputSpec("dense", 4, 0, 2))


def test_a_factory_not_written_module_colon_function_is_named_by_the_schema(lab):
    # build_model validates its section against the schema first, as the workflow does
    with pytest.raises(ValueError, match=r"model.factory: 'lab_models.small' does not match.*'package.module:function'"):
        build_model({"kind": "python", "factory": "lab_models.small"}, InputSpec("dense", 4, 0, 2))


def test_kwargs_cannot_override_what_the_data_gives(lab):
    with pytest.raises(FactoryError, match="model.kwargs.*n_classes come from the data"):
        build_model({"kind": "python", "factory": "lab_models:small", "kwargs": {"n_classes": 4}},
                    InputSpec("dense", 4, 0, 2))


def run_config(model: dict, n_features: int = 16) -> dict:
    return {"device": "cpu", "experiments": {"mine": {
        "data": {"generator": "planted_flips", "planted_flips": {"n_train": 48, "n_test": 16, "n_features": n_features}},
        "model": model,
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"steps": 6, "batch_size": 16, "log_every": 3, "checkpoints": {"every": 3}},
    }}}


@pytest.mark.parametrize("factory, reason", [("lab_nowhere:small", "no module named 'lab_nowhere'"),
                                             ("lab_models:missing", "module 'lab_models' has no attribute 'missing'")])
def test_config_validation_imports_the_factory(lab, factory, reason):
    with pytest.raises(ConfigError, match=rf"experiments.mine \(run seed~0\).model.factory: cannot use '{factory}': {reason}"):
        load_runs(run_config({"kind": "python", "factory": factory}))
    with pytest.raises(ConfigError, match="'factory' is a required property"):
        load_runs(run_config({"kind": "python"}))
    with pytest.raises(ConfigError, match="model.factory.*does not match"):
        load_runs(run_config({"kind": "python", "factory": "not a name"}))
    load_runs(run_config({"kind": "python", "factory": "lab_models:small"}))


def train_run(model_config: dict, out: Path, n_features: int = 16):
    settings = train_slice(expand_runs(load_config(run_config(model_config, n_features)))[0].settings)
    tr, te, meta = data.generate(settings["data"])
    folder = out / "data"
    data.write_dataset(tr, te, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
    spec = InputSpec.from_dict(data.load_meta(folder)["input"])
    x, y, _ = data.load_split(folder, "train")
    metrics = train.train(settings, (x, y), data.load_split(folder, "test")[:2], spec, out / "run", "mine/seed~0")
    return settings, metrics, x, y


def test_python_model_round_trip_through_a_checkpoint(lab):
    """Trained with frozen parameters, saved, rebuilt by checkpoints.load through the factory (imported
    afresh from the working directory): the same weights, the same outputs, the same frozen set."""
    cfg = {"kind": "python", "factory": "lab_models:small", "kwargs": {"hidden": 6, "frozen": True}}
    settings, metrics, x, y = train_run(cfg, lab / "out")
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    sys.modules.pop("lab_models")  # load must import it again, by itself
    model, state = checkpoints.load(lab / "out" / "run" / "checkpoints" / "step_00000006.pt")
    assert state["settings"]["model"]["factory"] == "lab_models:small"
    assert state["settings"]["model"]["kwargs"] == {"hidden": 6, "frozen": True}
    assert not model.training and [n for n, p in model.named_parameters() if not p.requires_grad] == ["1.weight", "1.bias"]
    torch.manual_seed(settings["seed"])
    fresh = build_model(cfg, InputSpec.from_dict(state["input_spec"]))
    assert torch.equal(model[1].weight, fresh[1].weight)  # frozen: still its seeded init after training
    assert not torch.equal(model[3].weight, fresh[3].weight)  # trained
    loss, acc = train.evaluate(model, x, y, "cross_entropy")
    assert loss == pytest.approx(metrics["train_loss"].iloc[-1], rel=1e-6)
    assert acc == pytest.approx(metrics["train_acc"].iloc[-1])
    with torch.no_grad():
        again, _ = checkpoints.load(lab / "out" / "run" / "checkpoints" / "step_00000006.pt")
        assert torch.equal(model(x), again(x))


def test_a_factory_that_returns_no_module_stops_before_training(lab, monkeypatch):
    monkeypatch.setattr("gradscope.models.factories.resolve", lambda value, key: lambda **kw: "a string")
    with pytest.raises(FactoryError, match="model.factory: cannot use 'lab_models:small': it returned a builtins.str"):
        train_run({"kind": "python", "factory": "lab_models:small"}, lab / "out")
    assert not (lab / "out" / "run").exists()


def test_the_example_module_in_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)
    torch.manual_seed(0)
    for shape in [(1, 40), (3, 6, 6), (36,)]:
        spec = InputSpec("dense", int(torch.tensor(shape).prod()), 0, 4, shape)
        model = build_model({"kind": "python", "factory": "user_code.my_model:small_convnet",
                             "kwargs": {"width": 8, "freeze_stem": True}}, spec)
        assert model(torch.randn(2, *shape)).shape == (2, 4)
        assert sum(not p.requires_grad for p in model.parameters()) == 2


@pytest.mark.parametrize("model", [{"kind": "resnet", "base_width": 4, "blocks": [1, 1]},
                                   {"kind": "vgg", "base_width": 2, "norm": "group", "groups": 1}])
def test_resnet_and_vgg_train_and_reload(tmp_path, model):
    """The logged figures at the last step are those of its checkpoint, BatchNorm's running statistics included."""
    settings, metrics, x, y = train_run(model, tmp_path, n_features=16)
    assert metrics["train_loss"].notna().all() and metrics["grad_norm"].gt(0).all()
    loaded, _ = checkpoints.load(tmp_path / "run" / "checkpoints" / "step_00000006.pt")
    loss, _ = train.evaluate(loaded, x, y, "cross_entropy")
    assert loss == pytest.approx(metrics["train_loss"].iloc[-1], rel=1e-6)


@pytest.mark.parametrize("model", [{"kind": "resnet", "base_width": 4, "blocks": [1, 2, 1]},
                                   {"kind": "resnet", "base_width": 4, "norm": "none"},
                                   {"kind": "vgg", "base_width": 4, "norm": "group", "groups": 2},
                                   {"kind": "vgg", "base_width": 8, "norm": "none"}])
def test_resource_estimates_count_resnet_and_vgg_parameters(model):
    from gradscope import resources

    settings = expand_runs(load_config(run_config(model, n_features=64)))[0].settings
    spec = InputSpec("dense", 64, 0, resources.data_size(settings)["classes"])
    built = build_model(settings["model"], spec)
    assert resources.model_size(settings)[0] == sum(p.numel() for p in built.parameters())
