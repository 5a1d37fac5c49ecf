"""Dataset facts that a data block's settings alone decide, in one place: how many examples each
split of a generator holds, and whether a modulus is prime (modular division needs one).

Standard library only: the config checks and the resource estimates, which must not import
torch, share these with the generators (`gradscope.data`), which make the data they describe.
"""

from __future__ import annotations

DIGITS = 1797  # examples in scikit-learn's bundled 8x8 digits


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def modular_pairs(p: int, op: str) -> int:
    """The pairs (a, b) of the modular task: every a and b in 0..p-1, b != 0 for division."""
    return p * (p - 1 if op == "div" else p)


def mnist1d_examples(num_samples: int) -> int:
    """The examples MNIST-1D's make_dataset gives for `num_samples`: 10 * (num_samples // 10), balanced."""
    return 10 * (num_samples // 10)


def split_sizes(data: dict) -> tuple[int, int] | None:
    """(n_train, n_test) of a data block as its generator makes it, before any subsampling, where the
    settings alone decide it: planted_flips, opposing_features, modular, digits, mnist1d; None for
    the user's sources (torchvision, files, python), whose sizes are those of their data."""
    gen = data["generator"]
    g = data.get(gen, {})
    if gen in ("planted_flips", "opposing_features"):
        return int(g["n_train"]), int(g["n_test"])
    if gen == "modular":
        n = modular_pairs(int(g["p"]), g["op"])
        n_train = int(round(float(g["train_fraction"]) * n))
    elif gen == "digits":
        n = DIGITS
        n_train = int(round(float(g["train_fraction"]) * n))
    elif gen == "mnist1d":
        n = mnist1d_examples(int(g["num_samples"]))
        n_train = int(n * float(g["train_split"]))
    else:
        return None
    return n_train, n - n_train
