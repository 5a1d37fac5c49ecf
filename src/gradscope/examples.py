"""Per-example statistics: losses, margins and gradients of each training example.

The norm of each example's gradient (Goodfellow 2015, "Efficient per-example gradient
computations") and its alignment with the mean gradient tell which examples drive an update
and which pull against it (the opposing signals of Rosenfeld & Risteski 2023). Full
per-example gradients are too big to keep, so each is also stored as a Johnson-Lindenstrauss
sketch: a fixed-seed random projection to k dimensions (TRAK, Park et al. 2023).

What is measured: the model in eval mode (BatchNorm on running statistics, no dropout; see
gradscope.modes: a model in training mode with such layers is an error unless `eval=True`),
over its trainable parameters (`requires_grad`; `trainable_only=False` includes frozen ones).

Engine ("auto", the default; its code is gradscope.engine, the vmap(grad) it falls back to
gradscope.per_example_grads). One batched forward runs under a capture (a
TorchFunctionMode, gradscope.grad_rules.capture) that hands every call of a registered torch
function to its rule (gradscope.grad_rules: one file per layer type, like opacus's
grad_sample/). A rule saves the call's input and output; one backward of the summed loss to
those outputs gives each example's output-gradient, and the rule turns (input,
output-gradient) into exact per-example statistics without forming per-example gradients:

- F.linear (nn.Linear, attention projections, any functional use): G_n = sum_t g_t h_t^T
  over the tokens t of the example, so ||G_n||^2 = sum_{t,s} (g_t.g_s)(h_t.h_s) (Gram form)
  and <G_n, M> = sum_t g_t^T M h_t. When T (in + out) > in * out, G_n is formed explicitly
  instead, in sub-batches of at most EXPLICIT_MAX_ELEMENTS numbers.
- F.conv1d / F.conv2d / F.conv3d (any stride, padding, dilation, groups; depthwise): the output
  positions are the tokens of a Linear per group, over the unfolded input (a 1-D convolution's
  Gram path reads the input's Gram and convolves instead of unfolding).
- F.embedding: G_n = sum_t e_{id_t} g_t^T (padding_idx rows get none); F.embedding_bag (sum
  and mean, offsets, per_sample_weights; one bag per example): a rank-one gradient per bag.
  scale_grad_by_freq=True is refused, naming the layer (its gradient depends on the batch).
- F.layer_norm, F.group_norm, F.batch_norm (running statistics), F.instance_norm, F.rms_norm:
  per-example gradients of the affine parameters are formed explicitly ((b, C): small).
- F.multi_head_attention_forward: the packed in-projection and the out-projection run
  through the Linear rule.
- A parameter used by several calls (tied or shared weights) gets the sum of its uses.
- A call whose input has no batch axis (positions indexed by arange) has its output
  broadcast along a new batch axis, after checking that the model's output is unchanged.
Every other parameter (LSTM weights, raw parameters used in matmuls, Embedding with
max_norm, an EmbeddingBag of mode max) falls back to torch.func vmap(grad) with respect to those parameters only, chunk
by chunk, and is named in a log line.

Before the main pass a probe (a forward of one example, a forward and backward of two) finds
each use's batch axis and checks, for every parameter, that the gradient rebuilt from the
captured tensors equals autograd's; a parameter that fails, or that autograd gives a
gradient where no rule saw it, goes to the fallback: it is never silently zero. A tensor
overwritten in place (ReLU(inplace=True)) is detected and the chunk is redone with copies.

Cost model: with n <= batch_size and no `mean_grad`, one pass: a forward and a backward to
the captured outputs, plus the mean gradient (the weight-gradient kernels of the same
backward), the per-example squared norms (a Gram form, or the explicit per-example gradients,
for a convolution from one weight-gradient kernel over the batch folded into its groups), the
dots with it (one forward-sized matmul per layer) and the projection ("gaussian": 2 b T k
(in + out) flops per layer; "hadamard": two small transforms per token plus b T k): about
1.5 batched backwards plus the projection. With n >
batch_size and no `mean_grad`, a first pass computes the mean gradient: about 2.5.
Figures in bench/bench_examples.py and bench/bench_architectures.py (docs/benchmarks.md).
Memory is that of one chunk: the captured inputs and output-gradients (the activations a
backward keeps anyway) plus, for fallback parameters, their (chunk, numel) gradients.

Projection: `projection` picks the kind (gradscope.projection: "gaussian" Kronecker
columns, "hadamard" a subsampled randomized Hadamard transform whose cost barely grows with k,
"auto" by k); each is one fixed linear map per parameter tensor, seeded by the parameter's
index, independent of batch size, chunking, call order and of which path computes a gradient.

Everything here is pure computation: a model and tensors in, numpy arrays out. The model is
never mutated: gradients come from torch.autograd.grad and torch.func on detached copies of
its parameters, so no `.grad` is written and no buffer changes; the training flags are kept.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradscope import projection as proj_kinds
from gradscope.engine import METHODS, Engine, check_method  # noqa: F401  (METHODS: re-exported)
from gradscope.losses import per_example_loss
from gradscope.modes import eval_mode
from gradscope.parameters import detached_params
from gradscope.per_example_grads import dense, loss_gradients
from gradscope.projection import SEED_STRIDE, Projection

log = logging.getLogger(__name__)


# ---- parameters, names, projection ----------------------------------------------------------
def _included(model: nn.Module, trainable_only: bool = True) -> list[tuple[int, str, torch.Tensor]]:
    """(index in named_parameters, name, parameter) of the parameters the statistics cover."""
    return [(i, name, p) for i, (name, p) in enumerate(model.named_parameters())
            if p.requires_grad or not trainable_only]


def layer_names(model: nn.Module, trainable_only: bool = True) -> list[str]:
    """Names of the columns of `layer_grad_norm`: one "layer" per parameter tensor, in
    named_parameters order (the granularity of Opacus's per-layer clipping); trainable ones only
    unless trainable_only=False."""
    return [name for _, name, _ in _included(model, trainable_only)]


def n_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Length of a flat gradient (mean_grad, per_example_gradients' rows)."""
    return sum(p.numel() for _, _, p in _included(model, trainable_only))


def projection_factors(model: nn.Module, proj_dim: int, seed: int = 0, trainable_only: bool = True,
                       projection: str = "auto") -> dict[str, Projection]:
    """The projection of each included parameter tensor (gradscope.projection: kind and seeding).

    They depend on the parameters' names, shapes, dtypes and devices only (not their values),
    so the last few results are cached; treat them as read-only.
    """
    if proj_dim < 1:
        raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
    kind = proj_kinds.resolve_kind(projection, proj_dim)
    layout = tuple((i, name, tuple(p.shape), p.dtype, p.device) for i, name, p in _included(model, trainable_only))
    key = (proj_dim, seed, kind, layout)
    if key in _FACTOR_CACHE:
        return _FACTOR_CACHE[key]
    out = {name: proj_kinds.build(kind, shape, proj_dim, torch.Generator().manual_seed(seed * SEED_STRIDE + i),
                                  dtype, device)
           for i, name, shape, dtype, device in layout}
    if sum(f.nbytes() for f in out.values()) <= _FACTOR_CACHE_MAX_BYTES:
        while len(_FACTOR_CACHE) >= _FACTOR_CACHE_ENTRIES:
            _FACTOR_CACHE.pop(next(iter(_FACTOR_CACHE)))
        _FACTOR_CACHE[key] = out
    return out


_FACTOR_CACHE: dict = {}
_FACTOR_CACHE_ENTRIES = 4
_FACTOR_CACHE_MAX_BYTES = 1 << 27


def random_projection(model: nn.Module, proj_dim: int, seed: int = 0, trainable_only: bool = True,
                      projection: str = "auto") -> torch.Tensor:
    """Dense equivalent R (n_params, proj_dim) of the projection: a flat gradient g sketches to g @ R.

    For reference and small models only (it has n_params * proj_dim entries); the engine uses
    the factors (`projection_factors`) and never builds it.
    """
    factors = projection_factors(model, proj_dim, seed, trainable_only, projection)
    return torch.cat([f.dense() for f in factors.values()], dim=0)


def project_gradients(flat: torch.Tensor, model: nn.Module, proj_dim: int, seed: int = 0,
                      trainable_only: bool = True, projection: str = "auto") -> torch.Tensor:
    """Sketch (b, proj_dim) of flat per-example gradients (b, n_params) in named_parameters order,
    with the same projection as `per_example_stats`, without building the dense matrix."""
    factors = projection_factors(model, proj_dim, seed, trainable_only, projection)
    out, start = None, 0
    for _, name, p in _included(model, trainable_only):
        part = factors[name].project(flat[:, start : start + p.numel()])
        out = part if out is None else out + part
        start += p.numel()
    return out


# ---- mean gradient and the vmap reference -----------------------------------------------------------
def mean_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                  batch_size: int = 256, trainable_only: bool = True, eval: bool = False) -> torch.Tensor:
    """Flat gradient (n_params,) of the mean loss over all examples, in named_parameters order
    (trainable parameters only unless trainable_only=False), in eval mode (see gradscope.modes).

    One plain batched forward and backward (torch.autograd.grad, no `.grad` written) per chunk.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("mean_gradient needs at least one example")
    names = layer_names(model, trainable_only)
    params = detached_params(model, grad_for=names)
    total = None
    with eval_mode(model, eval, what="mean_gradient"):
        for start in range(0, n, batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            with torch.enable_grad():
                logits = functional_call(model, params, (x,))
                value = per_example_loss(logits, y, loss).sum()
                g = torch.autograd.grad(value, [params[k] for k in names], allow_unused=True)
            flat = torch.cat([(dense(gi) if gi is not None else torch.zeros_like(params[k])).reshape(-1)
                              for gi, k in zip(g, names)])
            total = flat if total is None else total + flat
    return total / n


def _Engine(model: nn.Module, loss: str, proj_dim: int, seed: int, method: str, trainable_only: bool = True,
            projection: str = "auto") -> Engine:
    """The engine (gradscope.engine) over the included parameters, with their projection."""
    check_method(method)
    return Engine(model, loss, layer_names(model, trainable_only),
                  projection_factors(model, proj_dim, seed, trainable_only, projection), proj_dim, method)


def fallback_parameters(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                        trainable_only: bool = True, eval: bool = False) -> list[str]:
    """Names of the parameters that `per_example_stats` computes through vmap(grad) for this
    model and input layout (the probe of the module docstring, on the first two examples)."""
    with eval_mode(model, eval, what="fallback_parameters"):
        engine = _Engine(model, loss, 1, 0, "auto", trainable_only)
        with engine:
            engine.make_plan(inputs[:2], targets[:2])
            return list(engine.fallback)


def per_example_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                          batch_size: int = 256, trainable_only: bool = True, eval: bool = False) -> torch.Tensor:
    """Full per-example gradients (n, n_params) in named_parameters order, via torch.func vmap(grad).

    For small models: the result has n * n_params entries.
    """
    if len(inputs) == 0:
        raise ValueError("per_example_gradients needs at least one example")
    names = layer_names(model, trainable_only)
    params = detached_params(model, grad_for=names)
    parts = []
    with eval_mode(model, eval, what="per_example_gradients"):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            grads = loss_gradients(model, params, names, x, y, loss)
            parts.append(torch.cat([dense(grads[k]).reshape(len(x), -1) for k in names], dim=1))
    return torch.cat(parts)


def per_example_stats(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    proj_dim: int = 32,
    seed: int = 0,
    batch_size: int = 256,
    mean_grad: torch.Tensor | None = None,
    method: str = "auto",
    layer_norms: bool = False,
    trainable_only: bool = True,
    eval: bool = False,
    projection: str = "auto",
) -> dict[str, np.ndarray]:
    """Statistics of every example, in input order.

    Keys: loss, pred, margin (true logit minus the largest other), p_true (softmax probability
    of the true class), el2n (see `el2n`), correct, grad_norm (exact L2 norm of the example's gradient),
    grad_dot_mean and grad_cos_mean (against `mean_grad`, a flat vector in named_parameters
    order, by default the mean gradient of the examples given), and grad_proj (float32
    (n, proj_dim), projected by `projection`: "gaussian", "hadamard" or "auto", see
    gradscope.projection). The cosine is defined as 0
    when either gradient has zero norm. With `layer_norms=True`, also layer_grad_norm
    (n, n_layers): the norm of the gradient of each parameter tensor, columns named by
    `layer_names(model)`; their squares sum to grad_norm squared.

    Gradients are of the trainable parameters only (requires_grad), unless
    trainable_only=False. The model must behave as in eval mode: a BatchNorm or Dropout in
    training mode is an error, unless eval=True, which switches to eval mode for the call
    (gradscope.modes); buffers are never changed.

    method "auto" is the engine of the module docstring; "vmap" is the torch.func vmap(grad)
    reference, which forms every per-example gradient (same results, same projection).
    `batch_size` bounds memory: examples are processed in chunks of that many.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("per_example_stats needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with eval_mode(model, eval, what="per_example_stats"), _Engine(model, loss, proj_dim, seed, method,
                                                                   trainable_only, projection) as engine:
        return _run(engine, model, inputs, targets, loss, batch_size, mean_grad, layer_norms, trainable_only)


def el2n(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """EL2N (Paul et al. 2021): the L2 norm of the error vector, softmax(logits) - onehot(y) for
    cross-entropy, logits - onehot(y) for "mse" (whose outputs are regressed on the one-hot code)."""
    out = logits.softmax(dim=1) if loss == "cross_entropy" else logits
    return torch.linalg.vector_norm(out - F.one_hot(targets, logits.shape[1]).to(out.dtype), dim=1)


def _run(engine: Engine, model, inputs, targets, loss, batch_size, mean_grad, layer_norms,
         trainable_only) -> dict[str, np.ndarray]:
    n = len(inputs)
    p0 = next(model.parameters())
    n_params = n_parameters(model, trainable_only)
    engine.make_plan(inputs[:2].to(p0.device), targets[:2].to(p0.device))

    mean_parts, mean_norm = None, None
    if mean_grad is not None:
        mean_grad = mean_grad.detach().to(dtype=p0.dtype, device=p0.device)
        if mean_grad.shape != (n_params,):
            raise ValueError(f"mean_grad has shape {tuple(mean_grad.shape)}, expected ({n_params},)")
    elif n > batch_size:
        mean_grad = mean_gradient(model, inputs, targets, loss=loss, batch_size=batch_size,
                                  trainable_only=trainable_only)
    if mean_grad is not None:
        mean_parts = dict(zip(engine.names, mean_grad.split([math.prod(engine.shapes[k]) for k in engine.names])))
        mean_parts = {k: v.reshape(engine.shapes[k]) for k, v in mean_parts.items()}
        mean_norm = mean_grad.norm()

    parts = []
    # The largest output, (n, k) float32 on the CPU: every layer adds its projection into it in place
    # (on another device, into one chunk's accumulator there, then copied).
    proj = torch.zeros(n, engine.proj_dim, dtype=torch.float32)
    for start in range(0, n, batch_size):
        x = inputs[start : start + batch_size].to(p0.device)
        y = targets[start : start + batch_size].to(p0.device)
        acc = proj[start : start + len(x)] if p0.device.type == "cpu" else torch.zeros(
            len(x), engine.proj_dim, dtype=torch.float32, device=p0.device)
        losses, logits, stats, mean, scale = engine.chunk(x, y, mean_parts, n, acc)
        if p0.device.type != "cpu":
            proj[start : start + len(x)] = acc.cpu()
        if mean_parts is None:  # single chunk: the mean came from the captured tensors
            mean_parts = mean
            mean_norm = torch.stack([torch.linalg.vector_norm(v) for v in mean.values()]).norm() * scale
        sq = torch.stack([stats[k].sq for k in engine.names], dim=1).clamp_min(0)  # (b, n_layers)
        parts.append({
            "loss": losses,
            "logits": logits,
            "layer_sq": sq,
            "grad_dot_mean": sum(stats[k].dot for k in engine.names),
        })
    log.info("per-example stats: %d examples in chunks of %d, %d fast and %d fallback (vmap) parameter tensors, "
             "captured tensors peak %.1f MB", n, batch_size, len(engine.names) - len(engine.fallback),
             len(engine.fallback), engine.peak_bytes / 2**20)
    out = parts[0] if len(parts) == 1 else {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    y = targets.to(p0.device)

    logits = out.pop("logits")  # (n, classes)
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    pred = logits.argmax(dim=1)
    grad_norm = out["layer_sq"].sum(1).sqrt()
    denom = grad_norm * mean_norm
    cos = torch.where(denom > 0, out["grad_dot_mean"] / denom, 0.0)

    result = {
        "loss": out["loss"],
        "pred": pred,
        "margin": true_logit - others.max(dim=1).values,
        "p_true": logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1),
        "el2n": el2n(logits, y, loss),
        "correct": pred == y,
        "grad_norm": grad_norm,
        "grad_dot_mean": out["grad_dot_mean"],
        "grad_cos_mean": cos,
    }
    if layer_norms:
        result["layer_grad_norm"] = out["layer_sq"].sqrt()
    result = {key: value.detach().cpu().numpy() for key, value in result.items()}
    result["grad_proj"] = proj.numpy()
    return result
