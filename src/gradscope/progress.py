"""Progress measures of the grokking mechanism (Nanda et al. 2023, arXiv 2301.05217), for
modular addition and subtraction.

A network that groks a + b mod p learns a Fourier algorithm: it embeds each token a as
cos(w_k a), sin(w_k a) for a few key frequencies w_k = 2πk/p, and its logit for class c
ends up a sum over those k of cos(w_k (a + b - c)). The measures here track that circuit at
every checkpoint:

- the embedding's Fourier spectrum over the input token a: the norm of the cos and sin
  components of each frequency k = 1..p//2 in the orthonormal Fourier basis over 0..p-1
  (`fourier_basis`; the constant component apart), the top few frequencies by norm, and the
  fraction of the embedding's squared norm (all components, the constant one included) in them;
- the restricted loss: the logits over all p^2 pairs, each class's column projected onto
  the key frequencies' directions cos(w_k s), sin(w_k s) (s = a + b, or a - b for
  subtraction) plus the constant direction, then the loss on the training pairs;
- the excluded loss: the same directions removed from the logits (the constant kept), the
  loss on the training pairs.

Definitions, as in the authors' public code (github.com/mechanistic-interpretability-grokking/
progress-measures-paper, transformers.py and helpers.py): their `get_component_cos_xpy` /
`get_component_sin_xpy` project each logit column onto (cos_a cos_b - sin_a sin_b)/√2 and
(sin_a cos_b + cos_a sin_b)/√2 built from their normalized 1-D basis, which are the unit
vectors along cos(w_k (a+b)) and sin(w_k (a+b)) used here. Their restricted ("trig") loss adds
back the mean over all pairs of what was removed (`bias_correction=True`); since every key
direction sums to zero over the pairs, that is the projection onto the constant direction,
which is how it is written here. Their excluded loss subtracts the key components without that
correction, on the training pairs, as here. Deviations, each said where it matters:
- key frequencies: theirs are the frequencies the MLP neurons specialize in (each neuron's best
  frequency in a 2-D Fourier transform of its activations), which needs the transformer's
  neurons; here they are the top `key_frequencies` frequencies of the embedding's spectrum,
  which every model kind has (the one-hot MLP's first layer columns for token a). By default
  the final checkpoint's, the same at every step (the paper tracks how the intermediate networks
  use the final network's frequencies); `key_frequencies_from: checkpoint` takes each
  checkpoint's own, as their `take_metrics` does.
- the paper describes keeping the 2-D Fourier terms cos/sin(w_k a) x cos/sin(w_k b) of each key
  frequency; their code, followed here, keeps the two directions cos(w_k (a+b)) and
  sin(w_k (a+b)) the circuit writes to, leaving out cos(w_k (a-b)) and sin(w_k (a-b)).
- their excluded loss is one number per key frequency (each removed alone); here all key
  frequencies are removed at once, as the paper describes the measure.
- their restricted loss is evaluated on all p^2 pairs (`mode='all'`): that figure is
  `restricted_loss_all`; `restricted_loss` is on the training pairs, beside the training loss.
- losses use the run's own loss (cross-entropy, or MSE for an MSE run), in float64.
- subtraction uses s = a - b; multiplication and division have no such Fourier circuit, and
  have no progress measures.
The weight norm is training's own (`metrics.parquet`, the norm of all parameters at a logged
step), read where that step was logged and computed from the checkpoint only where it was not.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gradscope import artifacts, checkpoints, data
from gradscope.tables import PROGRESS  # the table's columns (one row per checkpoint), defined with their meanings
from gradscope.losses import per_example_loss
from gradscope.models import MLP, InputSpec, OneHot, Transformer

log = logging.getLogger(__name__)

OPS = ("add", "sub")  # the operations with a Fourier circuit over a ± b

def applies(data_settings: dict) -> bool:
    """Whether a run's data has progress measures: modular addition or subtraction."""
    return data_settings["generator"] == "modular" and data_settings["modular"]["op"] in OPS


# ---- the Fourier basis over tokens and the embedding's spectrum ------------------------------------
def fourier_basis(p: int) -> tuple[np.ndarray, np.ndarray]:
    """(basis (p, p), frequency of each row): orthonormal rows 1/√p, then cos(w_k a) and sin(w_k a)
    normalized, for k = 1..p//2 (w_k = 2πk/p); for even p, frequency p/2 has its cos row only
    (its sin is zero)."""
    a = np.arange(p)
    rows, freqs = [np.full(p, 1.0 / math.sqrt(p))], [0]
    for k in range(1, p // 2 + 1):
        for wave in (np.cos, np.sin):
            v = wave(2 * np.pi * k * a / p)
            if np.linalg.norm(v) > 1e-9:
                rows.append(v / np.linalg.norm(v))
                freqs.append(k)
    return np.stack(rows), np.array(freqs)


def embedding_spectrum(embedding: np.ndarray) -> tuple[np.ndarray, float]:
    """(norm of frequency k for k = 1..p//2, norm of the constant component) of a (p, d) embedding:
    its coefficients in `fourier_basis` (cos and sin of one frequency combined)."""
    p = embedding.shape[0]
    basis, freqs = fourier_basis(p)
    energy = ((basis @ embedding.astype(np.float64)) ** 2).sum(axis=1)  # (p,) per basis row
    per_freq = np.bincount(freqs, weights=energy, minlength=p // 2 + 1)
    return np.sqrt(per_freq[1:]), float(math.sqrt(per_freq[0]))


def top_frequencies(spectrum: np.ndarray, k: int) -> list[int]:
    """The k frequencies (1-based) of largest norm, largest first (ties: the lower frequency);
    all of them where k exceeds their count."""
    order = np.argsort(-spectrum, kind="stable")
    return [int(i) + 1 for i in order[: min(k, len(spectrum))]]


def fraction_in(spectrum: np.ndarray, constant_norm: float, freqs) -> float:
    """Fraction of the embedding's squared norm in the given frequencies (constant component in the total)."""
    total = float((spectrum**2).sum()) + constant_norm**2
    return float(sum(spectrum[k - 1] ** 2 for k in freqs) / total) if total > 0 else float("nan")


def token_embedding(model: torch.nn.Module, p: int) -> np.ndarray:
    """The (p, d) embedding of the input token a (tokens 0..p-1): the transformer's token embedding
    rows, the embedding MLP's table, or the one-hot MLP's first-layer weight columns for a."""
    with torch.no_grad():
        if isinstance(model, Transformer):
            w = model.embed.weight[:p]
        elif isinstance(model, MLP) and isinstance(model.encode, OneHot):
            w = model.body[0].weight[:, :p].T  # input is [onehot(a), onehot(b)]: the first p columns are a's
        elif isinstance(model, MLP) and hasattr(model.encode, "embed"):
            w = model.encode.embed.weight[:p]
        else:
            raise ValueError(f"progress measures need a token embedding: the transformer or the MLP on token "
                             f"inputs (onehot or embedding), not a {type(model).__name__}")
        return w.detach().cpu().double().numpy()


# ---- logits over all pairs, and their key-frequency directions ----------------------------------------
def all_pairs(p: int) -> torch.Tensor:
    """Every (a, b), a-major: row a * p + b."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def pair_labels(p: int, op: str) -> torch.Tensor:
    if op not in OPS:
        raise ValueError(f"progress measures need op add or sub (a Fourier circuit over a ± b), not {op!r}")
    pairs = all_pairs(p)
    return (pairs[:, 0] + (1 if op == "add" else -1) * pairs[:, 1]) % p


def key_directions(p: int, freqs, op: str) -> np.ndarray:
    """(p^2, m) orthonormal columns: cos(w_k s) and sin(w_k s) over the pairs (s = a + b, or a - b), one
    pair per key frequency k (the sin left out where it is zero: k = p/2)."""
    pair_labels(p, op)  # checks op
    pairs = all_pairs(p).numpy()
    s = pairs[:, 0] + (1 if op == "add" else -1) * pairs[:, 1]
    cols = []
    for k in freqs:
        for wave in (np.cos, np.sin):
            v = wave(2 * np.pi * k * s / p)
            if np.linalg.norm(v) > 1e-9:
                cols.append(v / np.linalg.norm(v))
    return np.stack(cols, axis=1) if cols else np.zeros((p * p, 0))


def restricted_logits(logits: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Each class's logits over the pairs (p^2, classes) projected onto the key directions and the
    constant (their mean over the pairs: Nanda et al.'s bias correction)."""
    return directions @ (directions.T @ logits) + logits.mean(axis=0, keepdims=True)


def excluded_logits(logits: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The logits with their components along the key directions removed."""
    return logits - directions @ (directions.T @ logits)


def mean_loss(logits: np.ndarray, labels: np.ndarray, loss: str) -> float:
    return float(per_example_loss(torch.from_numpy(np.asarray(logits, dtype=np.float64)),
                                  torch.as_tensor(labels), loss).mean())


def pair_logits(model: torch.nn.Module, p: int) -> np.ndarray:
    """The model's logits over all p^2 pairs (a-major), float64, (p^2, classes)."""
    with torch.no_grad():
        return model(all_pairs(p)).double().numpy()


def measures(model: torch.nn.Module, *, p: int, op: str, train_index: np.ndarray, test_index: np.ndarray,
             loss: str, top_k: int, keys=None) -> dict:
    """One checkpoint's progress measures. train_index, test_index: rows a * p + b of the splits' pairs;
    keys: the key frequencies of the restricted and excluded losses (None: this checkpoint's top_k)."""
    spectrum, constant = embedding_spectrum(token_embedding(model, p))
    top = top_frequencies(spectrum, top_k)
    keys = top if keys is None else [int(k) for k in keys]
    logits = pair_logits(model, p)
    labels = pair_labels(p, op).numpy()
    dirs = key_directions(p, keys, op)
    restricted = restricted_logits(logits, dirs)
    excluded = excluded_logits(logits, dirs)
    return {
        "train_loss": mean_loss(logits[train_index], labels[train_index], loss),
        "test_loss": mean_loss(logits[test_index], labels[test_index], loss),
        "restricted_loss": mean_loss(restricted[train_index], labels[train_index], loss),
        "restricted_loss_all": mean_loss(restricted, labels, loss),
        "excluded_loss": mean_loss(excluded[train_index], labels[train_index], loss),
        "key_frequencies": keys,
        "key_fraction": fraction_in(spectrum, constant, keys),
        "top_frequencies": top,
        "top_fraction": fraction_in(spectrum, constant, top),
        "constant_norm": constant,
        "embedding_norm": float(math.sqrt((spectrum**2).sum() + constant**2)),
        "spectrum": spectrum.tolist(),
    }


# ---- the workflow stage: every checkpoint of one run ---------------------------------------------------
def compute_progress(settings: dict, *, data_settings: dict, loss: str, dataset, manifest, metrics_path,
                     run_id: str) -> pd.DataFrame:
    """The progress table of a run (one row per checkpoint in its manifest), from its checkpoints.

    settings: the `progress` section (gradscope.config.section("progress", ...) fills the defaults);
    dataset: the dataset's files or folder (gradscope.data.load_split)."""
    if not applies(data_settings):
        raise ValueError(f"{run_id}: progress measures need data.generator modular with op add or sub, not "
                         f"{data_settings['generator']!r}" + (f" with op {data_settings['modular']['op']!r}"
                                                               if data_settings["generator"] == "modular" else ""))
    p, op = int(data_settings["modular"]["p"]), data_settings["modular"]["op"]
    index = {split: (df["a"].to_numpy() * p + df["b"].to_numpy())
             for split in ("train", "test") for df in [data.load_split(dataset, split)[2]]}
    listed = artifacts.read_json(manifest)
    files = listed["checkpoints"]
    spec = InputSpec.from_dict(data.load_meta(dataset)["input"])
    steps = sorted(int(s) for s in files)
    logged = artifacts.read_parquet(metrics_path, columns=["step", "weight_norm"]).set_index("step")["weight_norm"]

    def model_at(step):
        # a run gradscope did not train lists its plain checkpoints with the model that takes them
        return checkpoints.load(Path(manifest).parent / files[str(step)], device="cpu", model_settings=listed.get("model"),
                                spec=spec, code=listed.get("code"))[0]

    keys = None
    if settings["key_frequencies_from"] == "final":
        spectrum, _ = embedding_spectrum(token_embedding(model_at(steps[-1]), p))
        keys = top_frequencies(spectrum, settings["key_frequencies"])
    rows = []
    for step in steps:
        model = model_at(step)
        row = {"step": step, **measures(model, p=p, op=op, train_index=index["train"], test_index=index["test"],
                                        loss=loss, top_k=settings["key_frequencies"], keys=keys)}
        row["weight_norm_logged"] = step in logged.index
        row["weight_norm"] = float(logged.loc[step]) if row["weight_norm_logged"] else float(
            math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in model.parameters())))
        rows.append(row)
        log.info("step %d: restricted loss %.4g, excluded loss %.4g, train loss %.4g; key frequencies %s hold "
                 "%.3f of the embedding's squared norm", step, row["restricted_loss"], row["excluded_loss"],
                 row["train_loss"], row["key_frequencies"], row["key_fraction"])
    return pd.DataFrame(rows, columns=list(PROGRESS))
