"""Per-example statistics: losses, margins and gradients of each training example.

The norm of each example's gradient (Goodfellow 2015, "Efficient per-example gradient
computations") and its alignment with the mean gradient tell which examples drive an update
and which pull against it (the opposing signals of Rosenfeld & Risteski 2023). Full
per-example gradients are too big to keep, so each is also stored as a Johnson-Lindenstrauss
sketch: a fixed-seed random projection to k dimensions (TRAK, Park et al. 2023).

Engine ("auto", the default). For the parameters of nn.Linear, nn.Conv2d and nn.Embedding
the per-example gradient is a sum of outer products, and every statistic is computed from
each layer's inputs h and output-gradients g, captured in one batched backward of the summed
loss, without ever forming a per-example gradient:

- Linear (inputs (b, in) or (b, ..., in); the middle axes are tokens t): example n's weight
  gradient is G_n = sum_t g_t h_t^T, so ||G_n||^2 = sum_{t,s} (g_t.g_s)(h_t.h_s) (Gram form,
  2 T^2 (in + out) flops per example) and <G_n, M> = sum_t g_t^T M h_t for the mean gradient
  M. When T (in + out) > in * out the engine forms G_n explicitly instead (2 T in out flops,
  in sub-batches of at most EXPLICIT_MAX_ELEMENTS numbers), whichever is cheaper. Bias:
  sum_t g_t.
- Conv2d (groups=1, padding_mode "zeros"; any stride, padding, dilation): the input is
  unfolded to (b, L, C kh kw) and the L output positions are the tokens of a Linear.
- Embedding: G_n = sum_t e_{id_t} g_t^T, so ||G_n||^2 = sum_{t,s} [id_t = id_s] g_t.g_s
  (Gram form for T <= EMBEDDING_GRAM_MAX_T, else a segment sum over the example's distinct
  tokens) and <G_n, M> = sum_t M[id_t].g_t. Rows at padding_idx get no gradient.
- A module called several times in one forward (shared weights, a Linear applied to several
  tensors) contributes all its calls as tokens. A module whose input has no batch axis (the
  positional embedding indexed by arange of the transformer in gradscope.models) is handled
  by broadcasting its output along a new batch axis, after checking on a probe batch that
  the model's output is unchanged by it.
- Every other parameter (LayerNorm weights, raw nn.Parameter, Conv1d, grouped convolutions,
  parameters shared by two modules, Embedding with max_norm or scale_grad_by_freq) falls back
  to torch.func vmap(grad) with respect to those parameters only, chunk by chunk.

Before the main pass a probe (a forward of one example, a forward and a backward of two, and
a second forward of two when some module's output is broadcast) finds each module's batch
axis and checks, for every fast parameter, that the gradient rebuilt from the captured
tensors equals autograd's; a module that fails goes to the fallback. So a weight also used
outside its module is still exact, only slower. A module output overwritten in place (e.g.
by ReLU(inplace=True)) is detected and the chunk is redone with copies. The examples must be
processed independently (no BatchNorm in training mode); the model runs in its current mode.

Cost model: with n <= batch_size and no `mean_grad`, one pass: a forward and a backward to
the layer outputs (no weight gradients), plus the mean gradient (one g^T h product per
layer: the weight-gradient product of a backward), the dots with it (one forward-sized
matmul per layer) and the projection (2 b T k (in + out) flops per layer), i.e. about 1.5
plain batched backwards plus the projection. With n > batch_size and no `mean_grad`, a first
pass computes the mean gradient (a plain batched backward per chunk), then the statistics
pass: about 2.5 backward passes. Measured (bench/bench_examples.py, batch 1024, one CPU
thread on a busy 2-core machine): 2.0-2.3x a batched backward at proj_dim 32 for the
784-256-256-1 MLP and 1.7-1.9x for the p = 113 transformer, against 26-340x for vmap(grad),
Opacus and BackPACK doing the same work; at proj_dim 512 the MLP's projection alone costs
more than its backward (4-4.8x in all).
Memory is that of one chunk: the captured inputs and output-gradients (the activations a
backward keeps anyway) plus, for fallback parameters, their (chunk, numel) gradients,
whatever the dataset size; their peak size is logged (INFO) at the end of each call.

Projection (the seeding rule, independent of batch size, chunking and call order): parameter
tensor i (named_parameters order) gets `gen = torch.Generator().manual_seed(seed * SEED_STRIDE
+ i)`. If it is the weight of an nn.Linear, nn.Conv2d or nn.Embedding, seen as a matrix (rows,
cols) = (shape[0], prod(shape[1:])), A = randn(rows, k, generator=gen) then B = randn(cols, k,
generator=gen) are drawn (float32, CPU, then cast to the parameter's dtype and device), and
the weight gradient G projects to proj_j = A[:, j]^T G B[:, j] / sqrt(k): column j of the
equivalent dense matrix is kron(A[:, j], B[:, j]) / sqrt(k) in the row-major flattening of G.
For a per-token sum this is sum_t (g_t.A_j)(h_t.B_j) / sqrt(k), at 2 T k (in + out) flops
instead of 2 k in out. Every other parameter gets a dense block randn(numel, k, generator=gen)
/ sqrt(k). The sketch is the sum over parameters. The rule depends on the module type only,
not on which path computes the gradient.

Its accuracy: inner products are preserved in expectation (E[a a^T] kron E[b b^T] = I). The
Kronecker columns have variance-1 entries but are not Gaussian vectors. For unit gradients
with cosine rho, i.i.d. Gaussian columns give the projected inner product variance
(1 + rho^2) / k; for one rank-one layer (a bias-free Linear on one token: gradients g h^T)
the Kronecker columns give (1 + 2 c_g^2 + 2 c_h^2 + 3 rho^2) / k, with c_g and c_h the cosines
of the two factors: at most 4x (2x in standard deviation). Summing over layers averages it
back toward the Gaussian value. Measured over 300 seeds at k = 64 (tests/test_examples.py),
rms error of the projected cosine / sqrt((1 + rho^2) / k): 0.9-1.0 on average and at most 1.3
for a 3-layer MLP (Gaussian columns: 0.9 and 1.1), 1.2 and 1.6 for one rank-one layer.

Everything here is pure computation: a model and tensors in, numpy arrays out. The model is
never mutated: gradients come from torch.autograd.grad and torch.func on detached copies of
its parameters, so no `.grad` is written; hooks are removed and the training flag is kept.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gradscope.losses import per_example_loss

log = logging.getLogger(__name__)

# Multiplier combining (seed, parameter index) into one generator seed; larger than any
# realistic number of parameter tensors, so distinct pairs never share a stream.
SEED_STRIDE = 1_000_003
# Sub-batch bound (numbers) for explicitly formed per-example weight gradients (b, out, in).
EXPLICIT_MAX_ELEMENTS = 1 << 24
# Embedding: Gram form (T x T token-equality mask) up to this many tokens per example,
# segment sums over distinct tokens beyond.
EMBEDDING_GRAM_MAX_T = 32
METHODS = ("auto", "vmap")

_KRON_MODULES = (nn.Linear, nn.Conv2d, nn.Embedding)


# ---- parameters, names, projection ----------------------------------------------------------
def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def layer_names(model: nn.Module) -> list[str]:
    """Names of the columns of `layer_grad_norm`: one "layer" per parameter tensor, in
    named_parameters order (the granularity of Opacus's per-layer clipping)."""
    return [name for name, _ in model.named_parameters()]


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str, int]]:
    """Parameter name -> (owning module, attribute, number of (module, attribute) slots holding it)."""
    slots: dict[int, int] = {}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None:
                slots[id(p)] = slots.get(id(p), 0) + 1
    out = {}
    for mod_name, mod in model.named_modules():
        for attr, p in mod._parameters.items():
            if p is None:
                continue
            name = f"{mod_name}.{attr}" if mod_name else attr
            out.setdefault(name, (mod, attr, slots[id(p)]))
    return out


def _kron_shape(module: nn.Module, attr: str, p: torch.Tensor) -> tuple[int, int] | None:
    if attr == "weight" and isinstance(module, _KRON_MODULES) and p.dim() >= 2:
        return p.shape[0], p[0].numel()
    return None


@dataclass
class Factor:
    """Projection factors of one parameter tensor: kron (A scaled by 1/sqrt(k), B) or dense R."""

    A: torch.Tensor | None = None  # (rows, k) / sqrt(k)
    B: torch.Tensor | None = None  # (cols, k)
    R: torch.Tensor | None = None  # (numel, k) / sqrt(k)

    def dense(self) -> torch.Tensor:
        if self.R is not None:
            return self.R
        return (self.A[:, None, :] * self.B[None, :, :]).reshape(-1, self.A.shape[1])


def projection_factors(model: nn.Module, proj_dim: int, seed: int = 0) -> dict[str, Factor]:
    """The per-parameter projection factors of the seeding rule in the module docstring.

    They depend on the parameters' names, shapes, dtypes and devices only (not their values),
    so the last few results are cached; treat them as read-only.
    """
    if proj_dim < 1:
        raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
    owners = _owners(model)
    layout = []
    for name, p in model.named_parameters():
        module, attr, _ = owners[name]
        layout.append((name, tuple(p.shape), _kron_shape(module, attr, p), p.dtype, p.device))
    key = (proj_dim, seed, tuple(layout))
    if key in _FACTOR_CACHE:
        return _FACTOR_CACHE[key]
    scale = 1.0 / math.sqrt(proj_dim)
    out = {}
    for i, (name, shape, kron, dtype, device) in enumerate(layout):
        gen = torch.Generator().manual_seed(seed * SEED_STRIDE + i)
        if kron is not None:
            A = torch.randn(kron[0], proj_dim, generator=gen)
            B = torch.randn(kron[1], proj_dim, generator=gen)
            out[name] = Factor(A=(A * scale).to(dtype=dtype, device=device), B=B.to(dtype=dtype, device=device))
        else:
            R = torch.randn(math.prod(shape), proj_dim, generator=gen) * scale
            out[name] = Factor(R=R.to(dtype=dtype, device=device))
    size = sum(t.numel() for f in out.values() for t in (f.A, f.B, f.R) if t is not None)
    if size <= _FACTOR_CACHE_MAX_ELEMENTS:
        while len(_FACTOR_CACHE) >= _FACTOR_CACHE_ENTRIES:
            _FACTOR_CACHE.pop(next(iter(_FACTOR_CACHE)))
        _FACTOR_CACHE[key] = out
    return out


_FACTOR_CACHE: dict = {}
_FACTOR_CACHE_ENTRIES = 4
_FACTOR_CACHE_MAX_ELEMENTS = 1 << 25


def random_projection(model: nn.Module, proj_dim: int, seed: int = 0) -> torch.Tensor:
    """Dense equivalent R (n_params, proj_dim) of the projection: a flat gradient g sketches to g @ R.

    For reference and small models only (it has n_params * proj_dim entries); the engine uses
    the factors (`projection_factors`) and never builds it.
    """
    return torch.cat([f.dense() for f in projection_factors(model, proj_dim, seed).values()], dim=0)


def _project_dense_grads(grads: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Projection (b, k) of materialized per-example gradients (b, *param_shape)."""
    b = grads.shape[0]
    if factor.R is not None:
        return grads.reshape(b, -1) @ factor.R
    rows, cols = factor.A.shape[0], factor.B.shape[0]
    return ((grads.reshape(b, rows, cols) @ factor.B) * factor.A).sum(dim=1)


def project_gradients(flat: torch.Tensor, model: nn.Module, proj_dim: int, seed: int = 0) -> torch.Tensor:
    """Sketch (b, proj_dim) of flat per-example gradients (b, n_params) in named_parameters order,
    with the same projection as `per_example_stats`, without building the dense matrix."""
    factors = projection_factors(model, proj_dim, seed)
    out, start = None, 0
    for name, p in model.named_parameters():
        part = _project_dense_grads(flat[:, start : start + p.numel()], factors[name])
        out = part if out is None else out + part
        start += p.numel()
    return out


# ---- mean gradient and the vmap reference -----------------------------------------------------------
def _flatten(grads: dict[str, torch.Tensor], names: list[str], batch: int) -> torch.Tensor:
    return torch.cat([_dense(grads[name]).reshape(batch, -1) for name in names], dim=1)  # (b, n_params)


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.is_sparse else t


def mean_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy", batch_size: int = 1024
) -> torch.Tensor:
    """Flat gradient (n_params,) of the mean loss over all examples, in named_parameters order.

    One plain batched forward and backward (torch.autograd.grad, no `.grad` written) per chunk.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("mean_gradient needs at least one example")
    params = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
    names = list(params)
    total = None
    for start in range(0, n, batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        with torch.enable_grad():
            logits = functional_call(model, params, (x,))
            value = per_example_loss(logits, y, loss).sum()
            g = torch.autograd.grad(value, [params[k] for k in names], allow_unused=True)
        flat = torch.cat([(_dense(gi) if gi is not None else torch.zeros_like(params[k])).reshape(-1)
                          for gi, k in zip(g, names)])
        total = flat if total is None else total + flat
    return total / n


def _per_example_grads(model, params: dict, names: list[str], x, y, loss: str) -> dict[str, torch.Tensor]:
    """vmap(grad) of each example's loss w.r.t. params[names] only: {name: (b, *shape)}."""
    fixed = {k: v for k, v in params.items() if k not in names}

    def one(sub, xi, yi):
        # vmap strips the batch dimension; the model and loss expect one.
        logits = functional_call(model, {**fixed, **sub}, (xi.unsqueeze(0),))
        return per_example_loss(logits, yi.unsqueeze(0), loss)[0]

    return vmap(grad(one), in_dims=(None, 0, 0))({k: params[k] for k in names}, x, y)


def fallback_parameters(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy"
) -> list[str]:
    """Names of the parameters that `per_example_stats` computes through vmap(grad) for this
    model and input layout (the probe of the module docstring, on the first two examples)."""
    engine = _Engine(model, loss, 1, 0, "auto")
    try:
        engine.make_plan(inputs[:2], targets[:2])
        return list(engine.plan.fallback)
    finally:
        engine.close()


def per_example_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy", batch_size: int = 256
) -> torch.Tensor:
    """Full per-example gradients (n, n_params) in named_parameters order, via torch.func vmap(grad).

    For small models: the result has n * n_params entries.
    """
    if len(inputs) == 0:
        raise ValueError("per_example_gradients needs at least one example")
    params = _params(model)
    names = list(params)
    parts = []
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        parts.append(_flatten(_per_example_grads(model, params, names, x, y, loss), names, len(x)))
    return torch.cat(parts)


# ---- capture: hooks on supported modules -----------------------------------------------------
@dataclass
class _Record:
    inp: torch.Tensor
    out: torch.Tensor  # the tensor whose gradient is the per-example output-gradient
    versions: tuple[int, int]
    src_inp: torch.Tensor  # the tensors the module really used, for the in-place check
    src_out: torch.Tensor


@dataclass
class _Plan:
    mode: dict = field(default_factory=dict)  # module -> ("batched", axis) | ("broadcast",) | None (not called)
    names: dict = field(default_factory=dict)  # module -> {"weight": name, "bias": name or None}
    fallback: list = field(default_factory=list)  # parameter names through vmap


class _Capture:
    """Forward hooks saving each supported module's input and output, per call."""

    def __init__(self, modules):
        self.modules = list(modules)
        self.active = False
        self.modes: dict = {}
        self.records: dict = {}
        self.shapes: dict = {}
        self.batch = 0
        self.safe = False
        self.handles = []

    def __enter__(self):
        for m in self.modules:
            self.handles.append(m.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.active = False
        self.records = {}
        self.shapes = {}

    def start(self, *, batch: int, modes: dict | None, safe: bool = False):
        """modes None: probe, record every call's input shape and (input, output) unchanged;
        else capture with these modes."""
        self.active, self.batch, self.safe = True, batch, safe
        self.modes = modes
        self.records = {m: [] for m in self.modules}
        self.shapes = {m: [] for m in self.modules}

    def stop(self):
        self.active = False

    def _hook(self, module, args, kwargs, output):
        if not self.active:
            return None
        inp = args[0] if args else kwargs.get("input")
        if self.modes is None:
            ok = torch.is_tensor(inp) and torch.is_tensor(output)
            self.shapes[module].append(tuple(inp.shape) if ok else None)
            if not ok:
                return None
            out, ret = output, None
        else:
            mode = self.modes.get(module, "skip")
            if mode == "skip":
                return None
            if mode is None:
                raise RuntimeError(f"{type(module).__name__} was called in the main pass but not in the probe "
                                   "(data-dependent control flow); use method='vmap'")
            if mode[0] == "batched":
                if inp.dim() <= mode[1] or inp.shape[mode[1]] != self.batch:
                    raise RuntimeError(f"{type(module).__name__} input {tuple(inp.shape)} lacks batch axis "
                                       f"{mode[1]} of size {self.batch}; use method='vmap'")
                out, ret = output, None
            else:  # broadcast: the output of an input without batch axis gets one, as the model broadcasts it
                out = output.expand(self.batch, *output.shape)
                ret = out
        if self.safe:  # the model may overwrite the output in place: hand it a copy, keep the original
            saved_inp = inp.detach().clone()
            ret = out.clone()
        else:
            saved_inp = inp.detach()
        self.records[module].append(_Record(saved_inp, out, (inp._version, output._version), inp, output))
        return ret

    def tampered(self) -> bool:
        return any(r.src_inp._version != r.versions[0] or r.src_out._version != r.versions[1]
                   for recs in self.records.values() for r in recs)


def _supported_statically(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros"
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.scale_grad_by_freq
    return False


def _call_mode(module, s1, s2):
    """Mode of one call from its input shapes at batch 1 and batch 2."""
    if s1 is None or s2 is None or len(s1) != len(s2):
        return "bad"
    diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
    if isinstance(module, nn.Conv2d):
        return ("batched", 0) if len(s1) == 4 and diff == [0] and (s1[0], s2[0]) == (1, 2) else "bad"
    if not diff:
        return ("broadcast",)
    if len(diff) == 1 and (s1[diff[0]], s2[diff[0]]) == (1, 2):
        if isinstance(module, nn.Linear) and diff[0] == len(s1) - 1:
            return "bad"
        return ("batched", diff[0])
    return "bad"


# ---- per-layer features and statistics -------------------------------------------------------
def _unfold(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Conv2d input (b, C, H, W) -> patches (b, L, C kh kw) in the order of weight.reshape(out, -1)."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same": possibly asymmetric, as F.conv2d pads it
            pads = []
            for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x, padding = F.pad(x, pads), (0, 0)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    return cols.transpose(1, 2)


def _features(module, records: list[_Record], grads: list, batch: int, mode):
    """Concatenate a module's calls into tokens: (H (b, T, in), G (b, T, out)) or (ids (b, T), G (b, T, d))."""
    hs, gs = [], []
    for rec, g in zip(records, grads):
        if g is None:
            continue
        inp = rec.inp
        if isinstance(module, nn.Conv2d):
            hs.append(_unfold(module, inp))
            gs.append(g.reshape(batch, g.shape[1], -1).transpose(1, 2))
            continue
        width = g.shape[-1]
        if mode[0] == "batched":
            a = mode[1]
            inp = inp.movedim(a, 0)
            g = g.movedim(a, 0)
            if isinstance(module, nn.Embedding):
                hs.append(inp.reshape(batch, -1))
            else:
                hs.append(inp.reshape(batch, -1, inp.shape[-1]))
        else:
            if isinstance(module, nn.Embedding):
                hs.append(inp.reshape(1, -1).expand(batch, -1))
            else:
                hs.append(inp.reshape(1, -1, inp.shape[-1]).expand(batch, -1, -1))
        gs.append(g.reshape(batch, -1, width))
    if not gs:
        return None
    H, G = (hs[0], gs[0]) if len(hs) == 1 else (torch.cat(hs, 1), torch.cat(gs, 1))
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        G = G.masked_fill((H == module.padding_idx).unsqueeze(-1), 0.0)
    return H, G


def _linear_sums(H, G, has_bias: bool):
    """Sum over the batch of the weight (and bias) gradients."""
    b, T, n_in = H.shape
    w = G.reshape(b * T, -1).T @ H.reshape(b * T, n_in)
    return w, (G.sum(dim=(0, 1)) if has_bias else None)


def _embedding_sum(module: nn.Embedding, ids, G):
    d = G.shape[-1]
    out = torch.zeros(module.num_embeddings, d, dtype=G.dtype, device=G.device)
    return out.index_add_(0, ids.reshape(-1), G.reshape(-1, d))


@dataclass
class _Stat:
    sq: torch.Tensor  # (b,) squared norm
    dot: torch.Tensor  # (b,) inner product with the mean gradient
    proj: torch.Tensor  # (b, k)


def _linear_stats(H, G, Mw, fw: Factor, Mb, fb: Factor | None) -> list[_Stat]:
    """Weight (and bias) statistics of a Linear-like layer from tokens H (b, T, in), G (b, T, out)."""
    b, T, n_in = H.shape
    n_out = G.shape[-1]
    k = fw.A.shape[1]
    out = []
    bias_proj = None
    if T > 1 and T * (n_in + n_out) > n_in * n_out:
        # Explicit per-example weight gradients, sub-batched.
        sq, dot, proj = [], [], []
        step = max(1, EXPLICIT_MAX_ELEMENTS // (n_in * n_out))
        for s in range(0, b, step):
            E = G[s : s + step].transpose(1, 2) @ H[s : s + step]  # (sb, out, in)
            sq.append(E.pow(2).sum(dim=(1, 2)))
            dot.append((E * Mw).sum(dim=(1, 2)))
            proj.append(((E @ fw.B) * fw.A).sum(dim=1))
        out.append(_Stat(torch.cat(sq), torch.cat(dot), torch.cat(proj)))
    else:
        Hf, Gf = H.reshape(b * T, n_in), G.reshape(b * T, n_out)
        if T == 1:
            g_sq = torch.linalg.vector_norm(Gf, dim=1).square()  # also the bias gradient's
            sq = g_sq * torch.linalg.vector_norm(Hf, dim=1).square()
        else:
            sq = _gram_sum(G, H @ H.transpose(1, 2))
        dot = ((Hf @ Mw.T) * Gf).sum(1)  # g^T M h, at the cost of a forward matmul
        if T == 1 and fb is not None:  # the bias gradient is g itself: one matmul for g A and g R
            GA = Gf @ torch.cat([fw.A, fb.R], dim=1)  # (b, 2k)
            proj, bias_proj = GA[:, :k] * (Hf @ fw.B), GA[:, k:]
        else:
            proj = (Gf @ fw.A) * (Hf @ fw.B)
        if T > 1:
            dot, proj = dot.reshape(b, T).sum(1), proj.reshape(b, T, k).sum(1)
        out.append(_Stat(sq, dot, proj))
    if fb is not None:
        gb = G[:, 0] if T == 1 else G.sum(dim=1)  # (b, out)
        gb_sq = g_sq if bias_proj is not None else torch.linalg.vector_norm(gb, dim=1).square()
        out.append(_Stat(gb_sq, gb @ Mb, bias_proj if bias_proj is not None else gb @ fb.R))
    return out


def _gram_sum(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """sum_{t,s} (g_t.g_s) W_ts per example: (b, T, d), (b, T, T) -> (b,)."""
    return ((G @ G.transpose(1, 2)) * W).sum(dim=(1, 2))


def _embedding_stats(ids, G, Mw, fw: Factor) -> _Stat:
    b, T, d = G.shape
    k = fw.A.shape[1]
    if T == 1:
        sq = G.reshape(b, d).pow(2).sum(1)
    elif T <= EMBEDDING_GRAM_MAX_T:
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(G.dtype)  # (b, T, T)
        sq = _gram_sum(G, same)
    else:  # segment sums over each example's distinct tokens
        V = int(ids.max()) + 1
        key = torch.arange(b, device=ids.device).unsqueeze(1) * V + ids
        uniq, inv = torch.unique(key.reshape(-1), return_inverse=True)
        S = torch.zeros(len(uniq), d, dtype=G.dtype, device=G.device).index_add_(0, inv, G.reshape(-1, d))
        sq = torch.zeros(b, dtype=G.dtype, device=G.device).index_add_(0, uniq // V, S.pow(2).sum(1))
    dot = (Mw[ids] * G).sum(dim=(1, 2))
    proj = (fw.A[ids] * (G.reshape(-1, d) @ fw.B).reshape(b, T, k)).sum(1)
    return _Stat(sq, dot, proj)


def _fallback_stat(g: torch.Tensor, M: torch.Tensor, f: Factor) -> _Stat:
    b = g.shape[0]
    flat = g.reshape(b, -1)
    return _Stat(flat.pow(2).sum(1), flat @ M.reshape(-1), _project_dense_grads(g, f))


# ---- the engine -------------------------------------------------------------------------------
@contextmanager
def _one_thread():
    """Run the probe's tiny operations on one intra-op thread: on a busy machine every
    multi-threaded kernel waits for its slowest thread, which costs far more than the work."""
    old = torch.get_num_threads()
    if old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)



class _Engine:
    def __init__(self, model: nn.Module, loss: str, proj_dim: int, seed: int, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        self.model, self.loss, self.method = model, loss, method
        self.names = layer_names(model)
        self.shapes = {name: p.shape for name, p in model.named_parameters()}
        self.factors = projection_factors(model, proj_dim, seed)
        self.proj_dim = proj_dim
        # Detached copies that require grad: gradients flow to layer outputs, never to .grad.
        self.params = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
        self.frozen = _params(model)
        self.plan = _Plan()
        self.capture = None
        self.peak_bytes = 0

    # -- probe ------------------------------------------------------------------------------
    def make_plan(self, x: torch.Tensor, y: torch.Tensor) -> None:
        owners = _owners(self.model)
        candidates = {}
        if self.method == "auto":
            for name, (mod, attr, slots) in owners.items():
                if attr in ("weight", "bias") and slots == 1 and _supported_statically(mod):
                    candidates.setdefault(mod, {"weight": None, "bias": None})[attr] = name
            candidates = {m: v for m, v in candidates.items() if v["weight"] is not None}
        self.capture = _Capture(candidates).__enter__()  # hooks stay until close()
        self.plan.names = candidates
        if candidates:
            with _one_thread():
                self._probe(x, y)
        fast = {n for m in self.plan.mode for n in self.plan.names[m].values() if n is not None}
        self.plan.fallback = [n for n in self.names if n not in fast]
        log.debug("per-example engine: %d fast parameter tensors, fallback (vmap) for %s",
                  len(fast), self.plan.fallback)

    def _forward(self, x, params, rng_seed=0):
        devices = []
        if x.device.type == "cuda":
            devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            # Identical dropout masks across the probe's forwards (torch.manual_seed would also
            # seed every lazily initialized accelerator, which is slow).
            torch.default_generator.manual_seed(rng_seed)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(rng_seed)
            return functional_call(self.model, params, (x,))

    def _probe(self, x, y):
        """Find each candidate module's batch axis, then check the fast path on two examples."""
        cap = self.capture
        x2, y2 = (x[:2], y[:2]) if len(x) >= 2 else (torch.cat([x, x]), torch.cat([y, y]))
        with torch.no_grad():
            cap.start(batch=1, modes=None)
            try:
                self._forward(x[:1], self.frozen)
            finally:
                cap.stop()
        shapes1 = cap.shapes
        cap.start(batch=2, modes=None, safe=True)
        try:
            with torch.enable_grad():
                logits = self._forward(x2, self.params)
        finally:
            cap.stop()
        shapes2, records = cap.shapes, cap.records
        modes = {}
        for m in cap.modules:
            s1, s2 = shapes1[m], shapes2[m]
            if not s1 and not s2:
                modes[m] = None  # not called: zero gradient
                continue
            if len(s1) != len(s2):
                continue
            calls = {_call_mode(m, a, b) for a, b in zip(s1, s2)}
            if len(calls) == 1 and "bad" not in calls:
                modes[m] = calls.pop()
        broadcast = [m for m, md in modes.items() if md is not None and md[0] == "broadcast"]
        if broadcast:  # rerun with their outputs broadcast along a batch axis: same model output?
            cap.start(batch=2, modes={m: md for m, md in modes.items() if md is not None}, safe=True)
            try:
                with torch.enable_grad():
                    expanded = self._forward(x2, self.params)
            finally:
                cap.stop()
            same = expanded.shape == logits.shape and torch.allclose(expanded.detach(), logits.detach(),
                                                                     rtol=1e-5, atol=1e-6)
            if same:
                logits, records = expanded, cap.records
            else:
                for m in broadcast:
                    del modes[m]
        # Check every fast parameter: gradient rebuilt from captured tensors == autograd's.
        mods = [m for m in modes if modes[m] is not None]
        recs = [(m, r) for m in mods for r in records[m] if r.out.requires_grad]
        pnames = [n for m in mods for n in self.plan.names[m].values() if n is not None]
        if recs or pnames:
            with torch.enable_grad():
                value = per_example_loss(logits, y2, self.loss).sum()
                got = torch.autograd.grad(value, [r.out for _, r in recs] + [self.params[n] for n in pnames],
                                          allow_unused=True)
        else:
            got = []
        out_grads, ref = got[: len(recs)], dict(zip(pnames, got[len(recs) :]))
        by_mod = {m: [] for m in mods}
        for (m, r), g in zip(recs, out_grads):
            by_mod[m].append((r, g))
        with torch.no_grad():
            for m in mods:
                feat = _features(m, [r for r, _ in by_mod[m]], [g for _, g in by_mod[m]], len(x2), modes[m])
                sums = self._sums(m, feat)
                for attr, name in self.plan.names[m].items():
                    if name is None:
                        continue
                    r = ref[name]
                    r = torch.zeros_like(self.params[name]) if r is None else _dense(r)
                    s = sums[attr]
                    if s.shape != r.shape or (s - r).norm() > 1e-4 * r.norm() + 1e-8 * max(1, s.numel()) ** 0.5:
                        modes.pop(m, None)
                        break
        self.plan.mode = modes
        cap.records = {}

    # -- one chunk ----------------------------------------------------------------------------
    def _sums(self, module, feat) -> dict[str, torch.Tensor]:
        """Sums over the batch of the module's parameter gradients, param-shaped."""
        names = self.plan.names[module]
        w = self.params[names["weight"]]
        if feat is None:
            return {a: torch.zeros_like(self.params[n]) for a, n in names.items() if n is not None}
        H, G = feat
        if isinstance(module, nn.Embedding):
            return {"weight": _embedding_sum(module, H, G)}
        sw, sb = _linear_sums(H, G, names["bias"] is not None)
        out = {"weight": sw.reshape(w.shape)}
        if sb is not None:
            out["bias"] = sb
        return out

    def _capture_pass(self, x, y):
        cap = self.capture
        active = {m: md for m, md in self.plan.mode.items()}
        for safe in (False, True):  # redo with copies when the model overwrote a captured tensor
            cap.start(batch=len(x), modes=active, safe=safe)
            try:
                with torch.enable_grad():
                    logits = functional_call(self.model, self.params, (x,))
            except RuntimeError:
                if safe:
                    raise
                continue  # e.g. an in-place operation on a broadcast (expanded) output
            finally:
                cap.stop()
            if not cap.tampered():
                break
        with torch.enable_grad():
            losses = per_example_loss(logits, y, self.loss)
            recs = [(m, r) for m in active for r in cap.records[m] if r.out.requires_grad]
            grads = torch.autograd.grad(losses.sum(), [r.out for _, r in recs], allow_unused=True) if recs else []
        by_mod = {m: ([], []) for m in active}
        for (m, r), g in zip(recs, grads):
            by_mod[m][0].append(r)
            by_mod[m][1].append(g)
        cap.records = {}
        feats = {m: _features(m, rs, gs, len(x), active[m]) for m, (rs, gs) in by_mod.items()}
        return losses.detach(), logits.detach(), feats

    def chunk(self, x, y, mean: dict | None, n_total: int):
        """Statistics of one chunk. With mean None, the mean gradient is that of this chunk: it
        is returned as (sums over the chunk, 1 / n_total), the scale applied to the dots only."""
        losses, logits, feats = self._capture_pass(x, y) if self.plan.mode else self._plain(x, y)
        fb = {}
        if self.plan.fallback:
            fb = _per_example_grads(self.model, self.frozen, self.plan.fallback, x, y, self.loss)
        with torch.no_grad():
            self.peak_bytes = max(self.peak_bytes, _nbytes(feats) + _nbytes(fb))
            scale = 1.0
            if mean is None:
                mean, scale = {}, 1.0 / n_total
                for m, feat in feats.items():
                    for attr, s in self._sums(m, feat).items():
                        mean[self.plan.names[m][attr]] = s
                for name, g in fb.items():
                    mean[name] = _dense(g).sum(0)
            stats: dict[str, _Stat] = {}
            for m, feat in feats.items():
                names = self.plan.names[m]
                if feat is None:  # module not called, or its output does not reach the loss
                    for n in names.values():
                        if n is not None:
                            z = self.params[n].new_zeros(len(x))
                            stats[n] = _Stat(z, z, self.params[n].new_zeros(len(x), self.proj_dim))
                    continue
                H, G = feat
                wn, bn = names["weight"], names["bias"]
                if isinstance(m, nn.Embedding):
                    stats[wn] = _embedding_stats(H, G, mean[wn], self.factors[wn])
                else:
                    w_shape = self.shapes[wn]
                    Mw = mean[wn].reshape(w_shape[0], -1)
                    parts = _linear_stats(H, G, Mw, self.factors[wn], mean[bn] if bn else None,
                                          self.factors[bn] if bn else None)
                    stats[wn] = parts[0]
                    if bn:
                        stats[bn] = parts[1]
            for name, g in fb.items():
                stats[name] = _fallback_stat(_dense(g), mean[name], self.factors[name])
            if scale != 1.0:
                for st in stats.values():
                    st.dot = st.dot * scale
        return losses, logits, stats, mean, scale

    def close(self) -> None:
        if self.capture is not None:
            self.capture.__exit__(None, None, None)

    def _plain(self, x, y):
        with torch.no_grad():
            logits = functional_call(self.model, self.frozen, (x,))
            return per_example_loss(logits, y, self.loss), logits, {}


def _nbytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size() if obj.is_contiguous() else obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v) for v in obj)
    return 0


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
) -> dict[str, np.ndarray]:
    """Statistics of every example, in input order.

    Keys: loss, pred, margin (true logit minus the largest other), p_true (softmax probability
    of the true class), el2n (see `el2n`), correct, grad_norm (exact L2 norm of the example's gradient),
    grad_dot_mean and grad_cos_mean (against `mean_grad`, a flat vector in named_parameters
    order, by default the mean gradient of the examples given), and grad_proj (float32
    (n, proj_dim), see the module docstring for the projection). The cosine is defined as 0
    when either gradient has zero norm. With `layer_norms=True`, also layer_grad_norm
    (n, n_layers): the norm of the gradient of each parameter tensor, columns named by
    `layer_names(model)`; their squares sum to grad_norm squared.

    method "auto" is the engine of the module docstring; "vmap" is the torch.func vmap(grad)
    reference, which forms every per-example gradient (same results, same projection).
    `batch_size` bounds memory: examples are processed in chunks of that many.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("per_example_stats needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    engine = _Engine(model, loss, proj_dim, seed, method)
    try:
        return _run(engine, model, inputs, targets, loss, batch_size, mean_grad, layer_norms)
    finally:
        engine.close()  # no hook left behind, whatever happened


def el2n(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """EL2N (Paul et al. 2021): the L2 norm of the error vector, softmax(logits) - onehot(y) for
    cross-entropy, logits - onehot(y) for "mse" (whose outputs are regressed on the one-hot code)."""
    out = logits.softmax(dim=1) if loss == "cross_entropy" else logits
    return torch.linalg.vector_norm(out - F.one_hot(targets, logits.shape[1]).to(out.dtype), dim=1)


def _run(engine: _Engine, model, inputs, targets, loss, batch_size, mean_grad, layer_norms) -> dict[str, np.ndarray]:
    n = len(inputs)
    p0 = next(model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    engine.make_plan(inputs[:2].to(p0.device), targets[:2].to(p0.device))

    mean_parts, mean_norm = None, None
    if mean_grad is not None:
        mean_grad = mean_grad.detach().to(dtype=p0.dtype, device=p0.device)
        if mean_grad.shape != (n_params,):
            raise ValueError(f"mean_grad has shape {tuple(mean_grad.shape)}, expected ({n_params},)")
    elif n > batch_size:
        mean_grad = mean_gradient(model, inputs, targets, loss=loss, batch_size=batch_size)
    if mean_grad is not None:
        mean_parts = dict(zip(engine.names, mean_grad.split([p.numel() for p in model.parameters()])))
        mean_parts = {k: v.reshape(engine.shapes[k]) for k, v in mean_parts.items()}
        mean_norm = mean_grad.norm()

    parts = []
    for start in range(0, n, batch_size):
        x = inputs[start : start + batch_size].to(p0.device)
        y = targets[start : start + batch_size].to(p0.device)
        losses, logits, stats, mean, scale = engine.chunk(x, y, mean_parts, n)
        if mean_parts is None:  # single chunk: the mean came from the captured tensors
            mean_parts = mean
            mean_norm = torch.stack([torch.linalg.vector_norm(v) for v in mean.values()]).norm() * scale
        sq = torch.stack([stats[k].sq for k in engine.names], dim=1).clamp_min(0)  # (b, n_layers)
        parts.append({
            "loss": losses,
            "logits": logits,
            "layer_sq": sq,
            "grad_dot_mean": sum(stats[k].dot for k in engine.names),
            "grad_proj": sum(stats[k].proj for k in engine.names),
        })
    log.info("per-example stats: %d examples in chunks of %d, %d fast and %d fallback (vmap) parameter tensors, "
             "captured tensors peak %.1f MB", n, batch_size, len(engine.names) - len(engine.plan.fallback),
             len(engine.plan.fallback), engine.peak_bytes / 2**20)
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
        "grad_proj": out["grad_proj"].to(torch.float32),
    }
    if layer_norms:
        result["layer_grad_norm"] = out["layer_sq"].sqrt()
    return {key: value.detach().cpu().numpy() for key, value in result.items()}
