"""Curvature matrices of the training loss as linear operators on the trainable parameters.

One class per matrix, on one base (the design of curvlinops, f-dangel/curvlinops: its
HessianLinearOperator, GGNLinearOperator, EFLinearOperator, FisherMCLinearOperator), so that
the algorithms of `gradscope.curvature` (`lanczos.lanczos_top`, `slq.slq_density`,
`hutchinson.hutchinson_trace`), which take operators only, take any of them and a new matrix is
one class. Each operator is built once from a
model and examples (the graphs it needs are recorded then, in eval mode and with plain-math
attention: see `gradscope.modes.eval_mode`), and then `op.matvec(v)` (or `op(v)`) costs one or
two backward passes; `op.matvecs` counts the products done.

For the mean loss L = (1/N) sum_i l(f(x_i), y_i) over N examples, f the logits (N, C) and
J_i = d f(x_i) / d theta (C, n):

- HessianOperator: H = d^2 L / d theta^2 (double backward through the gradient's graph).
- GGNOperator: the generalized Gauss-Newton G = (1/N) sum_i J_i^T H_i J_i, H_i = d^2 l / d f^2
  at f(x_i) (Schraudolph 2002; Martens 2020): diag(p_i) - p_i p_i^T for cross-entropy, the
  identity for mse (0.5 |f - onehot(y)|^2). Positive semi-definite; needs no labels.
- EFOperator: the empirical Fisher (1/N) sum_i g_i g_i^T, g_i = J_i^T r_i the gradient of
  example i's loss at its own label, r_i = d l / d f (Kunstner et al. 2019).
- FisherOperator: the true Fisher (1/N) sum_i E_{y ~ p(y | x_i)} [g_i(y) g_i(y)^T], labels from
  the model's predictive distribution (categorical softmax for cross-entropy, N(f, I) for mse):
  exactly (every class weighted by p_i), or by Monte Carlo with `mc_samples` draws per example
  (as K-FAC does; curvlinops' FisherMCLinearOperator). For both losses the exact true Fisher
  equals the GGN (Martens 2020, section 9.2); it is computed here from the labels, not from H_i.

Output-space operators (GGN, EF, Fisher) apply J_i v and J_i^T u by backward passes through one
recorded forward: J^T u is the gradient of <f, u> taken with create_graph, which is linear in u,
so J v is the gradient of <J^T u, v> w.r.t. u (the "double backward" R-operator trick).

Micro-batches (`batch_size`, the `curvature.batch_size` setting in the workflow): every operator
takes batch_size (None: all examples at once). Where the examples fit one micro-batch the graph is
recorded once, at construction, and every product reuses it (the default run: subset_size 512 <=
batch_size 2048); where they do not, each product runs forward and backward over one micro-batch at
a time and sums the per-micro-batch products, each of sum_i over the micro-batch / N, so the result
is the product with the mean over all N examples (the same to float rounding) while memory holds one
micro-batch's graph (the price: one forward and backward per micro-batch per product).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradscope.losses import per_example_loss
from gradscope.modes import eval_mode
from gradscope.parameters import trainable_parameters


@contextmanager
def measuring(model: nn.Module, eval: bool, what: str):
    """The model in eval mode (see `gradscope.modes.eval_mode`) and attention on the math kernel:
    PyTorch's fused attention kernels have no double backward."""
    with eval_mode(model, eval, what=what), sdpa_kernel(SDPBackend.MATH):
        yield


class CurvatureOperator:
    """A symmetric n x n matrix known through products: `n`, `dtype`, `device`, `matvec(v)` for a
    vector (n,), `matmat(V)` for (n, k), and `matvecs`, the number of vector products done so far
    (a matmat of k columns counts k). Calling the operator is matvec."""

    name = "operator"

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self.n, self.dtype, self.device = n, dtype, device
        self.matvecs = 0

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(v).to(dtype=self.dtype, device=self.device)
        if v.shape != (self.n,):
            raise ValueError(f"{self.name}: expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        self.matvecs += 1
        return self._matvec(v)

    __call__ = matvec

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """A V for V (n, k), column by column: (n, k)."""
        return torch.stack([self.matvec(col) for col in torch.as_tensor(V).T], dim=1)


def micro_batches(n: int, batch_size: int | None) -> list[slice]:
    """Consecutive slices of at most `batch_size` of range(n) (None: one slice of all n)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    size = max(n, 1) if batch_size is None else batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]


def _add(total, part):
    """Sum of per-micro-batch gradients, None (not reached) where neither has one."""
    if part is None:
        return total
    return part if total is None else total + part


def _inputs_for(model_dtype: torch.dtype, device: torch.device, inputs: torch.Tensor, targets: torch.Tensor):
    inputs, targets = inputs.to(device), targets.to(device)
    if inputs.is_floating_point():
        inputs = inputs.to(model_dtype)  # token ids stay integer
    return inputs, targets


class _Leaves:
    """Detached stand-ins for the trainable parameters (they share storage and are never written,
    so the model is not mutated: no .grad, requires_grad untouched), and the flat-vector layout."""

    def __init__(self, model: nn.Module):
        named = trainable_parameters(model)  # frozen parameters stay the module's own: constants
        self.dtype, self.device = named[0][1].dtype, named[0][1].device
        self.names = [name for name, _ in named]
        self.tensors = [p.detach().requires_grad_(True) for _, p in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.params = {**dict(model.named_buffers()), **dict(zip(self.names, self.tensors))}

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view(s) for c, s in zip(v.split(self.numels), self.shapes)]

    def flat(self, parts) -> torch.Tensor:
        """Concatenate per-parameter results, None (a parameter the output does not reach) as zeros: (n,)."""
        return torch.cat([(torch.zeros(s, dtype=self.dtype, device=self.device) if p is None else p).reshape(-1)
                          for p, s in zip(parts, self.shapes)])


def _has_curvature(g) -> bool:
    """A gradient that is None or constant has zero second derivative: leave it out of the backward."""
    return g is not None and g.requires_grad


class HessianOperator(CurvatureOperator):
    """The Hessian of the mean loss w.r.t. the trainable parameters; each product one backward
    pass through the gradient's graph, built once here (the price: holding the graph for the
    operator's life).

    Double backward, not torch.func's jvp(grad(...)) (forward-over-reverse), which redoes forward
    and backward per product. Measured on an MLP 100-256-256-10 (ReLU, float32, batch 512, torch
    2.13 CPU, 2 threads, mean of 20 calls after warm-up, 3 runs): 6.4-8.1 ms vs 14.5-17.0 ms per
    HVP, i.e. double backward ~2.2x faster (6.8-8.4 ms even counting the one-off graph build)."""

    name = "hessian"

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy",
                 eval: bool = False, batch_size: int | None = None):
        leaves = _Leaves(model)
        super().__init__(sum(leaves.numels), leaves.dtype, leaves.device)
        self.leaves, self.loss, self._model, self._eval = leaves, loss, model, eval
        self._inputs, self._targets, self.n_examples = inputs, targets, len(inputs)
        self.slices = micro_batches(len(inputs), batch_size)
        self.grads = None
        if len(self.slices) == 1:  # one micro-batch: the gradient's graph, recorded once for every product
            with measuring(model, eval, "HessianOperator"), torch.enable_grad():
                x, y = _inputs_for(leaves.dtype, leaves.device, inputs, targets)
                mean_loss = per_example_loss(functional_call(model, leaves.params, (x,)), y, loss).mean()
                self.grads = torch.autograd.grad(mean_loss, leaves.tensors, create_graph=True, allow_unused=True)
        else:  # checked now, as the one-batch path does, not at the first product
            with measuring(model, eval, "HessianOperator"):
                pass

    def _chunk_grads(self, sl: slice):
        """The gradient of (1/N) sum_{i in sl} loss_i, with its graph (inside measuring, enable_grad)."""
        x, y = _inputs_for(self.dtype, self.device, self._inputs[sl], self._targets[sl])
        part = per_example_loss(functional_call(self._model, self.leaves.params, (x,)), y, self.loss).sum()
        return torch.autograd.grad(part / self.n_examples, self.leaves.tensors, create_graph=True, allow_unused=True)

    def products(self, directions: dict[int, torch.Tensor], wrt: list[int]) -> list[torch.Tensor | None]:
        """sum_i H[wrt_j, i] directions[i] for each j: the Hessian's rows of parameter tensors `wrt`
        times the directions (param-shaped, by tensor index), summed over the micro-batches; None where
        no curvature reaches a tensor."""
        def one(grads):
            live = [i for i in directions if _has_curvature(grads[i])]
            if not live:
                return [None] * len(wrt)
            return torch.autograd.grad([grads[i] for i in live], [self.leaves.tensors[j] for j in wrt],
                                       grad_outputs=[directions[i] for i in live], retain_graph=True,
                                       allow_unused=True)

        if self.grads is not None:
            with torch.enable_grad():
                return list(one(self.grads))
        total = [None] * len(wrt)
        for sl in self.slices:
            with measuring(self._model, self._eval, "HessianOperator"), torch.enable_grad():
                total = [_add(t, p) for t, p in zip(total, one(self._chunk_grads(sl)))]
        return total

    def _matvec(self, v):
        chunks = self.leaves.split(v)
        return self.leaves.flat(self.products(dict(enumerate(chunks)), list(range(len(chunks)))))

    def block(self, i: int) -> CurvatureOperator:
        """The diagonal block H_ii of parameter tensor i (named `self.leaves.names[i]`), sharing this graph."""
        return _HessianBlock(self, i)


class _HessianBlock(CurvatureOperator):
    name = "hessian block"

    def __init__(self, full: HessianOperator, i: int):
        super().__init__(full.leaves.numels[i], full.dtype, full.device)
        self.full, self.i = full, i

    def _matvec(self, v):
        (part,) = self.full.products({self.i: v.view(self.full.leaves.shapes[self.i])}, [self.i])
        return torch.zeros_like(v) if part is None else part.reshape(-1)


class _OutputSpaceOperator(CurvatureOperator):
    """(1/N) sum_i J_i^T M_i J_i for per-example C x C matrices M_i, applied by `_out(J v, rows)`: the
    GGN, the empirical and the true Fisher differ only in M_i. The logits `f` (N, C) are kept for all
    examples; the graph for one micro-batch at a time (see the module docstring)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str, eval: bool,
                 batch_size: int | None = None):
        leaves = _Leaves(model)
        super().__init__(sum(leaves.numels), leaves.dtype, leaves.device)
        self.leaves, self.loss, self._model, self._eval, self._inputs = leaves, loss, model, eval, inputs
        self.slices = micro_batches(len(inputs), batch_size)
        self._graph = None
        with measuring(model, eval, type(self).__name__), torch.enable_grad():
            if len(self.slices) == 1:  # one micro-batch: the graph, recorded once for every product
                x, self.targets = _inputs_for(leaves.dtype, leaves.device, inputs, targets)
                self._graph = self._record(x)
                f = self._graph[0]
            else:
                self.targets = targets.to(leaves.device)
                with torch.no_grad():
                    f = torch.cat([functional_call(model, leaves.params, (self._chunk_input(sl),))
                                   for sl in self.slices])
            if f.dim() != 2:
                raise ValueError(f"{self.name}: expected logits (examples, classes), got {tuple(f.shape)}")
        self.f = f.detach()  # (N, C)

    def _chunk_input(self, sl: slice) -> torch.Tensor:
        x = self._inputs[sl].to(self.device)
        return x.to(self.dtype) if x.is_floating_point() else x

    def _record(self, x: torch.Tensor):
        """(logits (b, C) with their graph, the stand-in cotangent u, [(i, J^T u for parameter i)])."""
        logits = functional_call(self._model, self.leaves.params, (x,))
        if logits.dim() != 2:
            raise ValueError(f"{self.name}: expected logits (examples, classes), got {tuple(logits.shape)}")
        u = torch.zeros_like(logits, requires_grad=True)  # a stand-in cotangent
        jtu = torch.autograd.grad(logits, self.leaves.tensors, grad_outputs=u, create_graph=True,
                                  allow_unused=True)  # J^T u, linear in u
        return logits, u, [(i, g) for i, g in enumerate(jtu) if g is not None]

    def _each(self, fn) -> list:
        """fn(rows, graph) for every micro-batch, in order: the recorded graph, or one recorded per call."""
        if self._graph is not None:
            with torch.enable_grad():
                return [fn(self.slices[0], self._graph)]
        out = []
        for sl in self.slices:
            with measuring(self._model, self._eval, type(self).__name__), torch.enable_grad():
                out.append(fn(sl, self._record(self._chunk_input(sl))))
        return out

    def _jvp(self, graph, chunks) -> torch.Tensor:
        logits, u, jtu = graph
        if not jtu:
            return torch.zeros_like(logits.detach())
        (jv,) = torch.autograd.grad([g for _, g in jtu], u, grad_outputs=[chunks[i] for i, _ in jtu],
                                    retain_graph=True, allow_unused=True)
        return torch.zeros_like(logits.detach()) if jv is None else jv

    def _vjp(self, graph, w) -> torch.Tensor:
        parts = torch.autograd.grad(graph[0], self.leaves.tensors, grad_outputs=w, retain_graph=True,
                                    allow_unused=True)
        return self.leaves.flat(parts)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v: (N, C), row i = J_i v."""
        chunks = self.leaves.split(v)
        return torch.cat(self._each(lambda rows, graph: self._jvp(graph, chunks)))

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w = sum_i J_i^T w_i for w (N, C): (n,)."""
        return sum(self._each(lambda rows, graph: self._vjp(graph, w[rows])))

    def _out(self, jv: torch.Tensor, rows: slice) -> torch.Tensor:
        """M_i (J v)_i for the examples `rows` (jv: their rows of J v)."""
        raise NotImplementedError

    def _matvec(self, v):
        chunks = self.leaves.split(v)
        parts = self._each(lambda rows, graph: self._vjp(graph, self._out(self._jvp(graph, chunks), rows)))
        return sum(parts) / len(self.f)


def _residuals(f: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """r = d l(f, y) / d f per row, for every row of f (N, C) and labels (N,): (N, C), by autograd."""
    z = f.detach().requires_grad_(True)
    with torch.enable_grad():
        (r,) = torch.autograd.grad(per_example_loss(z, labels, loss).sum(), z)
    return r


def _ce_out_hessian(f, u):
    p = f.softmax(dim=1)
    return p * u - p * (p * u).sum(1, keepdim=True)  # (diag(p) - p p^T) u, row by row


# H_i u_i for each loss: its Hessian w.r.t. the logits (unknown names raise, listing these).
OUTPUT_HESSIANS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": _ce_out_hessian,
    "mse": lambda f, u: u,  # 0.5 |f - t|^2
}


def _known(key: str, table: dict, what: str):
    if key not in table:
        raise ValueError(f"{what}: unknown {key!r}; known: {', '.join(sorted(table))}")
    return table[key]


class GGNOperator(_OutputSpaceOperator):
    """The generalized Gauss-Newton (1/N) sum_i J_i^T H_i J_i; `targets` are not used by the
    matrix (H_i does not depend on the label for cross-entropy or mse) and may be None."""

    name = "ggn"

    def __init__(self, model, inputs, targets=None, *, loss: str = "cross_entropy", eval: bool = False,
                 batch_size: int | None = None):
        self._hout = _known(loss, OUTPUT_HESSIANS, "GGNOperator")
        if targets is None:
            targets = torch.zeros(len(inputs), dtype=torch.long)
        super().__init__(model, inputs, targets, loss=loss, eval=eval, batch_size=batch_size)

    def _out(self, jv, rows):
        return self._hout(self.f[rows], jv)


class EFOperator(_OutputSpaceOperator):
    """The empirical Fisher (1/N) sum_i g_i g_i^T at the examples' own labels (`targets`)."""

    name = "empirical_fisher"

    def __init__(self, model, inputs, targets, *, loss: str = "cross_entropy", eval: bool = False,
                 batch_size: int | None = None):
        super().__init__(model, inputs, targets, loss=loss, eval=eval, batch_size=batch_size)
        self.r = _residuals(self.f, self.targets, loss)  # (N, C): g_i = J_i^T r_i

    def _out(self, jv, rows):
        r = self.r[rows]
        return r * (r * jv).sum(1, keepdim=True)  # r_i (r_i . J_i v)


class FisherOperator(_OutputSpaceOperator):
    """The true Fisher (1/N) sum_i E_{y ~ model}[g_i(y) g_i(y)^T]: exact (mc_samples None), or
    the mean over `mc_samples` labels per example drawn from the model with `seed` (kept in
    `self.labels` (S, N) for cross-entropy, `self.noise` (S, N, C) for mse)."""

    name = "fisher"

    def __init__(self, model, inputs, targets=None, *, loss: str = "cross_entropy", mc_samples: int | None = None,
                 seed: int = 0, eval: bool = False, batch_size: int | None = None):
        _known(loss, OUTPUT_HESSIANS, "FisherOperator")
        if mc_samples is not None and mc_samples < 1:
            raise ValueError(f"FisherOperator: mc_samples must be >= 1 or None (exact), got {mc_samples}")
        if targets is None:
            targets = torch.zeros(len(inputs), dtype=torch.long)
        super().__init__(model, inputs, targets, loss=loss, eval=eval, batch_size=batch_size)
        n_ex, classes = self.f.shape
        gen = torch.Generator().manual_seed(seed)
        if loss == "cross_entropy":
            p = self.f.softmax(dim=1)
            if mc_samples is None:  # every label c, weighted by p_ic
                labels = torch.arange(classes, device=self.device).repeat_interleave(n_ex).view(classes, n_ex)
                self.weights = p.T  # (C, N)
            else:
                labels = torch.multinomial(p.double().cpu(), mc_samples, replacement=True, generator=gen).T
                self.weights = torch.full((mc_samples, n_ex), 1.0 / mc_samples, dtype=self.dtype)
            self.labels = labels.to(self.device)  # (S, N)
            self.r = torch.stack([_residuals(self.f, row, loss) for row in self.labels])  # (S, N, C)
        else:  # mse: t = f + eps, eps ~ N(0, I); r = f - t = -eps, E[r r^T] = I
            if mc_samples is None:
                self.r = torch.eye(classes, dtype=self.dtype, device=self.device).unsqueeze(1).expand(
                    classes, n_ex, classes)  # sum_c e_c e_c^T = I
                self.weights = torch.ones(classes, n_ex, dtype=self.dtype)
            else:
                self.noise = torch.randn(mc_samples, n_ex, classes, generator=gen, dtype=torch.float64).to(
                    dtype=self.dtype, device=self.device)
                self.r = -self.noise
                self.weights = torch.full((mc_samples, n_ex), 1.0 / mc_samples, dtype=self.dtype)
        self.weights = self.weights.to(dtype=self.dtype, device=self.device)

    def _out(self, jv, rows):
        # sum_s w_si r_si (r_si . J_i v): (S, N, C) -> (N, C)
        r = self.r[:, rows]
        return (self.weights[:, rows].unsqueeze(2) * r * (r * jv).sum(2, keepdim=True)).sum(0)


# Operators by name, for make_operator (an unknown name raises, listing these).
OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "empirical_fisher": EFOperator, "fisher": FisherOperator}


def make_operator(name: str, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  **kwargs) -> CurvatureOperator:
    """OPERATORS[name](model, inputs, targets, **kwargs)."""
    return _known(name, OPERATORS, "make_operator")(model, inputs, targets, **kwargs)
