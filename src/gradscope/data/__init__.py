"""Dataset generators and loading.

- The synthetic generators (`gradscope.data.generators`): `planted_flips`, `modular`,
  `opposing_features`, `digits`.
- `mnist1d`: the MNIST-1D benchmark (Greydanus 2020, arXiv 2011.14439; PyPI `mnist1d`),
  generated from the package's templates by its own code with a fixed seed: nothing is fetched.

Sources of the user's data (`SOURCES`):
- `torchvision`: a torchvision classification dataset by class name (CIFAR10, MNIST, SVHN, ...)
  from a root folder; images become float32 (C, H, W) in [0, 1].
- `files`: arrays from a `.npz` or Parquet file (one per split, or one with a split column).
- `python`: a "module:function" of the user's that returns the two splits.

These four share one finishing step (`labelled_dataset`): a seeded subsample of either split,
planted label noise on the training split (the flipped ids are the planted truth, as for
`digits`), and standardization fitted on the training split, per feature or per channel;
optionally a planted spurious feature (a patch, stripe or channel per class) that agrees with
the label on a set fraction of training examples, its groups (aligned, conflicting) the
planted truth. Their inputs keep their shape: `meta["input"]["shape"]` is the per-example
shape the model receives ([1, 40] for MNIST-1D, [C, H, W] for images); the Parquet `x`
column stays flat.

A dataset is two DataFrames and a `meta` dict; what they hold and how inputs are standardized:
`gradscope.data.common`.

One module per concern, every name importable from here:

- `gradscope.data.common`: the `Dataset` type, `standardize_inputs`, `flip_labels`;
- `gradscope.data.generators`: the synthetic generators;
- `gradscope.data.labelled`: the labelled sources' finishing step and the checks of their splits;
- `gradscope.data.spurious`: the planted spurious feature;
- `gradscope.data.sources`: MNIST-1D, torchvision, files, python (mnist1d and torchvision
  are imported only when used);
- `gradscope.data.dispatch`: `GENERATORS`, `SOURCES`, `generate`, `check_dataset`;
- `gradscope.data.io`: a dataset's files, written and read back, and `load`.

The sizes the settings alone decide, and `is_prime`, live in `gradscope.dataset_facts`
(no torch: the config checks and resource estimates use them too).
"""

from gradscope.data.common import Dataset, flip_labels, standardize_inputs
from gradscope.data.dispatch import GENERATORS, SOURCES, check_dataset, generate
from gradscope.data.generators import (OPPOSING_GROUPS, OPS, generate_digits, generate_modular,
                                       generate_opposing_features, generate_planted_flips, pow_mod_inverse)
from gradscope.data.io import dataset_files, load, load_meta, load_split, split_tensors, write_dataset
from gradscope.data.labelled import Split, as_split, check_finite, check_labels, labelled_dataset, standardize_shaped
from gradscope.data.sources import _column_array  # noqa: F401 (gradscope.preflight reads Parquet columns with it)
from gradscope.data.sources import (FACTORY_CONTRACT, PARQUET_SUFFIXES, file_kind, generate_mnist1d, import_torchvision,
                                    load_files, load_python, load_torchvision)
from gradscope.data.spurious import (SPURIOUS_GROUPS, plant_spurious, refuse_noise_with_spurious, spurious_attributes,
                                     spurious_kind, spurious_masks)

__all__ = [
    "FACTORY_CONTRACT", "GENERATORS", "OPPOSING_GROUPS", "OPS", "PARQUET_SUFFIXES", "SOURCES", "SPURIOUS_GROUPS",
    "Dataset", "Split", "as_split", "check_dataset", "check_finite", "check_labels", "dataset_files", "file_kind",
    "flip_labels", "generate", "generate_digits", "generate_mnist1d", "generate_modular", "generate_opposing_features",
    "generate_planted_flips", "import_torchvision", "labelled_dataset", "load", "load_files", "load_meta",
    "load_python", "load_split", "load_torchvision", "plant_spurious", "pow_mod_inverse", "refuse_noise_with_spurious",
    "split_tensors", "spurious_attributes", "spurious_kind", "spurious_masks", "standardize_inputs",
    "standardize_shaped", "write_dataset",
]
