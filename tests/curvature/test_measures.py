"""compute_curvature (gradscope.curvature.measures): all measures together, consistent with the standalone ones,
its defaults, frozen parameters, and models in training mode refused."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from gradscope.curvature import (
    compute_curvature,
    fisher_trace,
    gauss_newton_trace,
    hessian_trace,
    hutchinson_trace,
    input_sensitivity,
    lanczos_top,
    layer_top_eigenvalues,
    optimizer_update,
    slq_density,
    spectral_density,
    top_eigenvalues,
    update_sharpness,
)
from gradscope.losses import per_example_loss
from gradscope.operators import GGNOperator, HessianOperator
from support.curvature import (
    MatrixOperator,
    N_EXAMPLES,
    assert_untouched,
    dense_curvatures,
    dense_hessian,
    exact_hessian,
    flat_fn,
    make_problem,
    real_problem,
    snapshot,
)

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


BASE_KEYS = {"top_eigenvalues", "sharpness", "lanczos_steps", "lanczos_residual", "hessian_trace", "hessian_trace_stderr", "hutchinson_samples",
             "hvp_count", "n_examples", "n_params", "wall_s"}
EXTRA_KEYS = {"fisher_trace", "gauss_newton_trace", "gauss_newton_stderr", "input_jacobian_norm",
              "input_hessian_trace", "update_sharpness"}
OFF = {"fisher": False, "gauss_newton_samples": 0, "input_sensitivity": False}  # the measures on by default


def assert_untouched_frozen(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name][0]) and p.requires_grad == before[name][1], name
        assert p.grad is None, name


def same(a, b):
    """Equal results, whatever their type (arrays, dicts, tuples, floats)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            if k != "wall_s":
                same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            same(u, v)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


MEASURES = {
    "hessian_operator": lambda m, x, y, **kw: HessianOperator(m, x, y, **kw).matvec(
        torch.ones(sum(p.numel() for p in m.parameters()), dtype=torch.float64)),
    "top_eigenvalues": lambda m, x, y, **kw: top_eigenvalues(m, x, y, k=1, iters=8, **kw),
    "hessian_trace": lambda m, x, y, **kw: hessian_trace(m, x, y, max_samples=4, min_samples=4, **kw),
    "spectral_density": lambda m, x, y, **kw: spectral_density(m, x, y, iters=5, **kw),
    "layer_top_eigenvalues": lambda m, x, y, **kw: layer_top_eigenvalues(m, x, y, iters=3, **kw),
    "update_sharpness": lambda m, x, y, **kw: update_sharpness(
        m, torch.ones(sum(p.numel() for p in m.parameters())), x, y, **kw),
    "fisher_trace": lambda m, x, y, **kw: fisher_trace(m, x, y, **kw),
    "gauss_newton_trace": lambda m, x, y, **kw: gauss_newton_trace(m, x, y, samples=1, **kw),
    "input_sensitivity": lambda m, x, y, **kw: input_sensitivity(m, x, y, probes=2, exact_max_dim=4, **kw),
    "compute_curvature": lambda m, x, y, **kw: compute_curvature(
        m, x, y, {"lanczos_iters": 4, "trace_max_samples": 4, "fisher": True, "input_sensitivity": True, "ggn": True},
        **kw),
}


def test_compute_curvature_consistent():
    model, x, y = make_problem(60)
    H = exact_hessian(model, x, y, "cross_entropy")
    before = snapshot(model)
    with torch.no_grad():  # callers may sit in an inference context
        out = compute_curvature(model, x, y, {"top_k": 2, "lanczos_iters": 1000, "lanczos_tol": 0, "trace_tol": 0.05,
                                              "trace_max_samples": 50, "seed": 5, **OFF}, loss="cross_entropy")
    assert_untouched(model, before)
    assert set(out) == BASE_KEYS  # the measures turned off are absent, not NaN
    assert len(out["top_eigenvalues"]) == 2 and all(isinstance(v, float) for v in out["top_eigenvalues"])
    assert out["sharpness"] == out["top_eigenvalues"][0] >= out["top_eigenvalues"][1]
    np.testing.assert_allclose(out["top_eigenvalues"], torch.linalg.eigvalsh(H).flip(0)[:2].numpy(), rtol=1e-4)
    assert out["n_params"] == 39 and out["n_examples"] == N_EXAMPLES and out["wall_s"] > 0
    # Softmax ignores a shift of all logits, so this H has a repeated zero eigenvalue and Lanczos
    # breaks down before 39 steps: count the steps on the same start vector.
    steps = lanczos_top(MatrixOperator(H), iters=1000, tol=None, seed=5).steps
    assert steps < 39 and out["hvp_count"] == steps + out["hutchinson_samples"] and out["lanczos_steps"] == steps
    assert out["lanczos_residual"] < 1e-8  # breakdown: the Ritz values are exact
    trace = hessian_trace(model, x, y, tol=0.05, max_samples=50, seed=5)
    assert (out["hessian_trace"], out["hessian_trace_stderr"], out["hutchinson_samples"]) == (
        trace["trace"], trace["stderr"], trace["n_samples"])
    short = compute_curvature(model, x, y, {"lanczos_iters": 8, "lanczos_tol": 0, "trace_tol": 0.05,
                                            "trace_max_samples": 50, "seed": 5, **OFF}, loss="cross_entropy")
    assert short["hvp_count"] == 8 + short["hutchinson_samples"]
    with pytest.raises(ValueError):
        compute_curvature(model, x, y, {"top_k": 5, "lanczos_iters": 3})
    with pytest.raises(ValueError, match="curvature.trace_tol"):  # validated against the schema
        compute_curvature(model, x, y, {"trace_tol": -1})


def test_compute_curvature_extras_match_the_standalone_measures():
    model, x, y = make_problem(180)
    u = torch.randn(39, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    settings = {"lanczos_iters": 10, "trace_tol": 0.05, "trace_max_samples": 20, "seed": 3}
    base = compute_curvature(model, x, y, {**settings, **OFF})
    before = snapshot(model)
    out = compute_curvature(model, x, y, {**settings, "fisher": True, "gauss_newton_samples": 2,
                                          "input_sensitivity": True, "density": True, "density_iters": 12,
                                          "per_layer": True}, update=u)
    assert_untouched(model, before)
    assert set(out) == BASE_KEYS | EXTRA_KEYS | {"density_grid", "density", "layer_sharpness"}
    for key in ("top_eigenvalues", "hessian_trace", "hessian_trace_stderr", "hutchinson_samples"):
        assert out[key] == base[key]
    assert out["fisher_trace"] == fisher_trace(model, x, y)
    gn = gauss_newton_trace(model, x, y, samples=2, seed=3)
    assert (out["gauss_newton_trace"], out["gauss_newton_stderr"]) == (gn["trace"], gn["stderr"])
    sens = input_sensitivity(model, x, y, seed=3)
    assert (out["input_jacobian_norm"], out["input_hessian_trace"]) == (
        sens["input_jacobian_norm"], sens["input_hessian_trace"])
    assert out["update_sharpness"] == pytest.approx(update_sharpness(model, u, x, y), rel=1e-12)
    dens = spectral_density(model, x, y, iters=12, seed=3)
    assert_close(torch.tensor(out["density"], dtype=torch.float64), torch.from_numpy(dens["density"]))
    assert isinstance(out["density_grid"], list) and len(out["density_grid"]) == 1000
    assert out["layer_sharpness"] == layer_top_eigenvalues(model, x, y, seed=3)
    # Every HVP is counted: Lanczos, Hutchinson, one for the update, SLQ steps, block Lanczos steps.
    H, at = exact_hessian(model, x, y, "cross_entropy"), np.cumsum([0] + [p.numel() for p in model.parameters()])
    block_steps = sum(lanczos_top(MatrixOperator(H[a:e, a:e]), iters=min(20, e - a), tol=None, seed=3).steps
                      for a, e in zip(at[:-1], at[1:]))  # 20 per block, fewer where one breaks down
    assert block_steps < sum(min(20, p.numel()) for p in model.parameters())
    assert out["hvp_count"] == base["hvp_count"] + 1 + len(dens["nodes"]) + block_steps


def test_frozen_parameters_are_left_out():
    """Hessian over the trainable parameters only: its spectrum, trace, Fisher and Gauss-Newton traces,
    the update and the vectors' length are those of the trainable block of the full Hessian."""
    model, x, y = make_problem(300)
    H_full = exact_hessian(model, x, y, "cross_entropy")
    model[0].weight.requires_grad_(False)  # 20 of the 39 parameters
    keep = torch.arange(20, 39)
    H = H_full[keep][:, keep]
    assert_close(dense_hessian(model, x, y), H)
    before = snapshot(model)
    exact = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    vals, vecs = top_eigenvalues(model, x, y, k=2, tol=None, iters=19, return_eigenvectors=True)
    np.testing.assert_allclose(vals, exact, rtol=1e-8)
    assert vecs.shape == (2, 19) and not np.isclose(vals[0], float(torch.linalg.eigvalsh(H_full)[-1]), rtol=1e-3)
    out = compute_curvature(model, x, y, {"top_k": 2, "lanczos_iters": 19, "lanczos_tol": 0, "trace_max_samples": 10,
                                          "seed": 1, "fisher": True, "gauss_newton_samples": 1, "per_layer": True},
                            return_eigenvectors=True)
    assert out["n_params"] == 19 and out["eigenvectors"].shape == (2, 19)
    np.testing.assert_allclose(out["top_eigenvalues"], exact, rtol=1e-8)
    assert out["hessian_trace"] == pytest.approx(
        hutchinson_trace(MatrixOperator(H), min_samples=10, max_samples=10, seed=1)["trace"], rel=1e-10)
    assert list(out["layer_sharpness"]) == ["0.bias", "2.weight", "2.bias"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    sq = [sum(float(g.pow(2).sum()) for g in torch.autograd.grad(per_example_loss(model(x[i:i + 1]), y[i:i + 1])[0],
                                                                  trainable)) for i in range(len(x))]
    assert fisher_trace(model, x, y) == pytest.approx(np.mean(sq), rel=1e-10)
    gn = gauss_newton_trace(model, x, y, exact=True)["trace"]
    f, theta = flat_fn(model, x, lambda logits: logits)
    J = torch.func.jacrev(f)(theta)[:, :, keep]  # (n, classes, trainable)
    p = model(x).softmax(1).detach()
    exact_gn = np.mean([float(torch.trace(J[i].T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ J[i]))
                        for i in range(len(x))])
    assert gn == pytest.approx(exact_gn, rel=1e-10)
    sgd = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.01}  # decay moves no frozen weight
    u = optimizer_update(model, None, sgd, x, y, step=0)
    assert u.shape == (19,)
    assert update_sharpness(model, u, x, y) == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-10)
    with pytest.raises(ValueError, match="19 trainable parameters"):
        update_sharpness(model, torch.zeros(39), x, y)
    assert_untouched_frozen(model, before)


@pytest.mark.parametrize("measure", MEASURES)
def test_batchnorm_in_training_mode_is_refused_and_its_statistics_never_move(measure):
    """The old behaviour: a BatchNorm model in training mode had its running statistics overwritten by every
    measure's forward (and got batch-coupled numbers). Now: a clear error, buffers bit-identical; eval=True
    measures in eval mode, restores the flags and leaves the buffers alone too."""
    fn = MEASURES[measure]
    model, x, y = real_problem("resnet_batch")
    x, y = x[:4], y[:4]
    reference = fn(copy.deepcopy(model), x, y)  # eval mode
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe(x)
    assert not torch.equal(probe.stem[1].running_mean, state["stem.1.running_mean"])  # what a train-mode forward does
    with pytest.raises(ValueError, match=r"defined in eval mode.*\(stem\.1, stages\.0\.0\.norm1"):
        fn(model, x, y)
    same_state = lambda: all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # noqa: E731
    assert same_state() and all(m.training for m in model.modules())
    same(fn(model, x, y, eval=True), reference)
    assert same_state() and all(m.training for m in model.modules())  # flags restored


def test_compute_curvature_ggn_top_eigenvalue_and_density():
    model, x, y = make_problem(440)
    settings = {"top_k": 2, "lanczos_iters": 39, "lanczos_tol": 1e-6, "seed": 2, **OFF, "trace_max_samples": 4}
    without = compute_curvature(model, x, y, settings)
    assert not any(key.startswith("ggn") for key in without)
    out = compute_curvature(model, x, y, {**settings, "ggn": True})
    G = dense_curvatures(model, x, y, "cross_entropy")["ggn"]
    exact = torch.linalg.eigvalsh(G).flip(0)[:2].numpy()
    np.testing.assert_allclose(out["ggn_top_eigenvalues"], exact, rtol=1e-5)
    assert out["ggn_top_eigenvalue"] == out["ggn_top_eigenvalues"][0]
    assert out["ggn_mvp_count"] == out["ggn_lanczos_steps"] <= 39 and "ggn_density" not in out
    assert out["hvp_count"] == without["hvp_count"]  # GGN products are counted apart from HVPs
    assert out["top_eigenvalues"] == without["top_eigenvalues"]
    both = compute_curvature(model, x, y, {**settings, "ggn": True, "density": True, "density_iters": 10})
    dens = slq_density(GGNOperator(model, x, y), iters=10, seed=2)
    assert_close(torch.tensor(both["ggn_density"], dtype=torch.float64), torch.from_numpy(dens["density"]))
    assert both["ggn_mvp_count"] == both["ggn_lanczos_steps"] + dens["steps"]
    grid = np.asarray(both["ggn_density_grid"])
    assert np.sum(np.asarray(both["ggn_density"])[:-1] * np.diff(grid)) == pytest.approx(1.0, abs=1e-3)
    assert grid[0] < 0 < exact[0] < grid[-1]  # the GGN is PSD: its density sits on [0, top] (smoothed)


def test_compute_curvature_defaults_are_the_schemas():
    from gradscope.config import section
    model, x, y = make_problem(450)
    defaults = section("curvature")
    out = compute_curvature(model, x, y, {**OFF})
    assert out["hutchinson_samples"] <= defaults["trace_max_samples"] == 50
    assert out["lanczos_steps"] <= defaults["lanczos_iters"]
    tiny = compute_curvature(model, x, y, {**OFF, "trace_tol": 1e-12})  # never met: runs to trace_max_samples
    assert tiny["hutchinson_samples"] == defaults["trace_max_samples"]
    assert hessian_trace(model, x, y, tol=1e-12)["n_samples"] == defaults["trace_max_samples"]
    # one set of defaults: each algorithm's and each model-level measure's are the schema's
    import inspect

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    for fn in (lanczos_top, top_eigenvalues):
        assert (default(fn, "k"), default(fn, "iters"), default(fn, "tol")) == (
            defaults["top_k"], defaults["lanczos_iters"], defaults["lanczos_tol"])
    for fn in (hutchinson_trace, hessian_trace):
        assert (default(fn, "tol"), default(fn, "max_samples")) == (
            defaults["trace_tol"], defaults["trace_max_samples"])
    for fn in (slq_density, spectral_density):
        assert default(fn, "iters") == defaults["density_iters"]
