"""The labelled sources (`SOURCES`, and MNIST-1D), each finished by `labelled_dataset`.

- `mnist1d`: the MNIST-1D benchmark (Greydanus 2020, arXiv 2011.14439; PyPI `mnist1d`),
  generated from the package's templates by its own code with a fixed seed: nothing is fetched.
- `torchvision`: a torchvision classification dataset by class name (CIFAR10, MNIST, SVHN, ...)
  from a root folder; images become float32 (C, H, W) in [0, 1].
- `files`: arrays from a `.npz` or Parquet file (one per split, or one with a split column).
- `python`: a "module:function" of the user's that returns the two splits.

mnist1d and torchvision are imported when their source is used, not with this module.
"""

from __future__ import annotations

import inspect
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gradscope import factories
from gradscope.data.common import Dataset
from gradscope.data.labelled import as_split, labelled_dataset


# ---- MNIST-1D --------------------------------------------------------------------------------
def generate_mnist1d(num_samples, train_split, seed, label_noise, subsample_train, subsample_test,
                     standardize, spurious=None, noise=None, planted_ids=None) -> Dataset:
    """MNIST-1D (Greydanus 2020, arXiv 2011.14439): `mnist1d.data.make_dataset` with the
    package's default arguments except `num_samples`, `train_split` and `seed`.

    Ten 1-D digit templates, defined in code (`mnist1d.data.get_templates`), are padded,
    scaled, translated, sheared and noised, then resampled to 40 points; make_dataset never
    fetches anything (the package's `get_dataset`, which may download a pickle, is not used).
    10 * (num_samples // 10) examples, balanced, shuffled; the first int(n * train_split) train.
    The package centres and scales the whole set (both splits) by one scalar mean and std, as
    published. make_dataset seeds numpy's and Python's global generators: their states are
    restored afterwards. Inputs (1, 40): one channel of length 40, for Conv1d or an MLP.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    n = len(d["y"]) + len(d["y_test"])
    if not 0 < len(d["y"]) < n:
        raise ValueError(f"data.mnist1d: train_split={train_split} leaves an empty split of {n} examples")
    train = as_split(d["x"][:, None, :], d["y"], what="the MNIST-1D training split")
    test = as_split(d["x_test"][:, None, :], d["y_test"], what="the MNIST-1D test split")
    return labelled_dataset(train, test, n_classes=10, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key="data.mnist1d", spurious=spurious, noise=noise, planted_ids=planted_ids)


# ---- torchvision -----------------------------------------------------------------------------
def import_torchvision():
    """torchvision, imported so that its datasets work beside a CPU build of torch.

    PyPI's Linux wheels of torchvision are built against torch's CUDA build: beside the CPU
    build (torch==2.13.0+cpu here) their C++ ops (_C.so, which needs libtorch_cuda.so) cannot
    load. torchvision allows for that, except that 0.28 then registers fake kernels for two ops
    that were never defined, nms and qnms, and the import fails with "operator torchvision::nms
    does not exist". The datasets use none of those ops: define the two schemas and import
    again (calling torchvision.ops.nms then still fails with torchvision's own message).
    """
    try:
        import torchvision
    except ImportError as e:
        from gradscope.doctor import missing_message

        raise ImportError(missing_message("vision", "the torchvision data source (data.generator: torchvision)")) from e
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the failed, half-done import
        for op in ("nms", "qnms"):
            if not _op_defined(f"torchvision::{op}"):
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


def _op_defined(qualname: str) -> bool:
    ns, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _how_to_get(key: str, what: str) -> str:
    return (f"set {key}.download: true to fetch {what} there, or copy its files there in torchvision's layout "
            f"(e.g. ROOT/cifar-10-batches-py/, ROOT/MNIST/raw/)")


def _init_parameters(cls) -> set[str]:
    """The keyword arguments a class's constructor takes, following **kwargs to the base classes
    (EMNIST(root, split, **kwargs) passes train= on to MNIST)."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _vision_split(cls, root: Path, split: str, download: bool, kwargs: dict, key: str):
    """One split of a torchvision dataset as (images (n, C, H, W) float32 in [0, 1], labels, n_classes or None)."""
    from torchvision.transforms.functional import to_tensor  # uint8 pixels / 255, (C, H, W)

    params = _init_parameters(cls)
    if "train" in params:
        which = {"train": split == "train"}
    elif "split" in params and "split" not in kwargs:
        which = {"split": split}  # SVHN and others: split="train" / "test"
    else:
        raise ValueError(f"{key}.name: {cls.__name__} takes neither train= nor split=, so it has no train and test "
                         f"splits to load")
    how = _how_to_get(key, "it")
    try:
        ds = cls(root=str(root), download=download, transform=to_tensor, **which, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise FileNotFoundError(f"{key}.root: no usable {cls.__name__} {split} split in {root} "
                                f"(torchvision says: {e}); {how}") from e
    except TypeError as e:
        raise ValueError(f"{key}.kwargs: {cls.__name__} does not take {kwargs}: {e}") from e
    images, labels = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        images.append(image)
        labels.append(int(target))
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ValueError(f"{key}.name: the {cls.__name__} {split} images differ in size ({shapes[:3]} ...); "
                         f"this source needs one size")
    n_classes = len(ds.classes) if getattr(ds, "classes", None) else None
    return torch.stack(images).numpy() if images else np.zeros((0,)), np.array(labels, dtype=np.int64), n_classes


def load_torchvision(name, root, download, kwargs, seed, label_noise, subsample_train, subsample_test,
                     standardize, spurious=None, noise=None, planted_ids=None) -> Dataset:
    """A torchvision classification dataset by class name, its train and test splits from `root`.

    The split is the dataset's own argument: train=True/False, or split="train"/"test" for
    datasets without `train` (SVHN). `kwargs` go to the class as they are (EMNIST's split).
    Images become float32 (C, H, W) in [0, 1] (torchvision's to_tensor: uint8 / 255); every
    image of a dataset must have one size. n_classes is len(dataset.classes) where the
    dataset has them. Nothing is fetched unless `download` is true.
    """
    key = "data.torchvision"
    tv = import_torchvision()
    cls = getattr(tv.datasets, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        known = sorted(n for n, c in vars(tv.datasets).items()
                       if inspect.isclass(c) and issubclass(c, torch.utils.data.Dataset) and not n.startswith("_"))
        raise ValueError(f"{key}.name: torchvision.datasets has no dataset {name!r}; it has: {', '.join(known)}")
    root = Path(root).absolute()
    if not download and not root.is_dir():
        raise FileNotFoundError(f"{key}.root: no folder {root} (a relative root starts at the working directory); "
                                f"{_how_to_get(key, name)}")
    (x_train, y_train, n_classes), (x_test, y_test, _) = (_vision_split(cls, root, s, download, kwargs, key)
                                                          for s in ("train", "test"))
    train = replace(as_split(x_train, y_train, what=f"the {name} training split"),
                    where=f"{key}: {name} in {root}, its train split")
    test = replace(as_split(x_test, y_test, what=f"the {name} test split"), where=f"{key}: {name} in {root}, its test split")
    return labelled_dataset(train, test, n_classes=n_classes, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key=key, spurious=spurious, noise=noise, planted_ids=planted_ids)


# ---- array files -----------------------------------------------------------------------------
def _column_array(column: pa.ChunkedArray, what: str) -> np.ndarray:
    """A Parquet column as an array: scalars give (n,), (nested) lists of equal length give (n, d1, d2, ...)."""
    import pyarrow.compute as pc

    arr, dims = column.combine_chunks(), []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise ValueError(f"{what} has null entries")
        lengths = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(f"{what} has lists of different lengths ({lengths[:5].tolist()} ...)")
        dims.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    if arr.null_count:
        raise ValueError(f"{what} has null entries")
    return arr.to_numpy(zero_copy_only=False).reshape(len(column), *dims)


PARQUET_SUFFIXES = (".parquet", ".pq")
_SAVE_HINT = "numpy.savez(path, x=inputs, y=labels)"


def file_kind(path) -> str:
    """What a file holds, from its first bytes: "a zip archive" (as a .npz is), "a Parquet file", "text, starting 'x,y'", ..."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512)
    if not head:
        return "nothing (it is empty)"
    magic = [(b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "an empty zip archive"),
             (b"\x93NUMPY", "a single .npy array"), (b"PAR1", "a Parquet file"), (b"\x89HDF", "an HDF5 file"),
             (b"ARROW1", "an Arrow (Feather) file"), (b"\x1f\x8b", "gzip-compressed data"),
             (b"\x80", "a Python pickle"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image")]
    for start, kind in magic:
        if head.startswith(start):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at 512 bytes is still text
        text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.splitlines()[0] if text.strip() else ""
        csv = " (CSV?)" if "," in first else ""
        return f"text{csv}, starting {first[:40]!r}"
    return f"binary data starting {head[:8].hex(' ')}"


def _check_file_type(p: Path, key: str) -> None:
    """Refuse a file whose contents are not what its suffix says (.npz, .parquet/.pq), or another suffix, naming what it holds."""
    suffix, kind, p = p.suffix.lower(), file_kind(p), p.absolute()
    if suffix == ".npz" and not kind.endswith("zip archive"):
        raise ValueError(f"{key}: {p} is not a .npz archive: it holds {kind}; allowed: a .npz archive of the inputs "
                         f"and labels, as {_SAVE_HINT} writes")
    if suffix in PARQUET_SUFFIXES:
        if kind != "a Parquet file":
            raise ValueError(f"{key}: {p} is not a Parquet file: it holds {kind}; allowed: a Parquet file, as "
                             f"pandas.DataFrame.to_parquet or pyarrow.parquet.write_table writes")
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 4))
            if f.read(4) != b"PAR1":
                raise ValueError(f"{key}: {p} is a damaged Parquet file: it does not end in Parquet's footer (cut "
                                 f"short while it was written or copied?); write it again")
    if suffix not in (".npz", *PARQUET_SUFFIXES):
        what = ({"a zip archive": "; if numpy.savez wrote it, rename it .npz", "a Parquet file": "; rename it .parquet",
                 "a single .npy array": "; save the inputs and labels together in a .npz"}.get(kind)
                or ("; for a CSV: df = pandas.read_csv(path), then numpy.savez(path, x=df[features].to_numpy(), "
                    "y=df[label].to_numpy())" if kind.startswith("text") else ""))
        raise ValueError(f"{key}: {p} is neither a .npz nor a .parquet file: it holds {kind}; allowed: .npz "
                         f"({_SAVE_HINT}), .parquet or .pq{what}")


def _read_arrays(path, names: dict[str, str], key: str, path_key: str, hint: str = "") -> dict[str, np.ndarray]:
    """The arrays (.npz) or columns (Parquet) `names` ({setting: name}) of one file; errors name the setting and the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}.{path_key}: no such file: {p.absolute()} (a relative path starts at the "
                                f"working directory)")
    suffix = p.suffix.lower()
    _check_file_type(p, f"{key}.{path_key}")
    try:
        if suffix == ".npz":
            store = np.load(p, allow_pickle=False)
            have = list(store.files)
        else:
            store = pq.read_table(p)
            have = store.column_names
    except Exception as e:  # numpy and pyarrow raise several types for a foreign or truncated file
        damaged = "a damaged .npz archive (cut short while it was written or copied?)" if suffix == ".npz" else \
            "a damaged Parquet file"
        raise ValueError(f"{key}.{path_key}: cannot read {p.absolute()}, {damaged}: {type(e).__name__}: {e}") from e
    out = {}
    for setting, name in names.items():
        if name not in have:
            raise ValueError(f"{key}.{setting}: no {'array' if suffix == '.npz' else 'column'} {name!r} in {p} "
                           f"(it has: {', '.join(have)}){hint}")
        try:
            out[setting] = store[name] if suffix == ".npz" else _column_array(store.column(name), f"column {name!r} of {p}")
        except ValueError as e:  # e.g. an object array, which would need pickle
            why = (" (an array of Python objects, which only pickle can read; save it as a numeric or string array, "
                   "e.g. numpy.stack(rows))" if "allow_pickle" in str(e) else "")
            raise ValueError(f"{key}.{setting}: cannot read {name!r} from {p}: {e}{why}") from e
        except Exception as e:  # a damaged member of a zip archive
            raise ValueError(f"{key}.{setting}: cannot read {name!r} from {p}, a damaged file: {type(e).__name__}: "
                             f"{e}") from e
    return out


def load_files(train, test, x_key, y_key, id_key, split_key, shape, seed, label_noise, subsample_train,
               subsample_test, standardize, spurious=None, noise=None, planted_ids=None, planted_key=None) -> Dataset:
    """Inputs and labels from .npz or Parquet files: `train` and `test`, or one `train` file
    whose `split_key` array/column says "train" or "test" for each row.

    Inputs are the `x_key` array (n, ...) of a .npz, or the `x_key` column of a Parquet file
    (a number, or a list, possibly nested, of equal length per row); `shape` reshapes each
    example (e.g. [3, 32, 32] for flat images). Labels: the `y_key` array, class indices.
    `id_key`, if set, names each example's own id (integers or strings; kept as `source_id`).
    `planted_key`, if set, names a boolean array/column of the training file: labels known to be
    wrong (the planted truth; gradscope.data.noise).
    """
    key = "data.files"
    names = {"x_key": x_key, "y_key": y_key, **({"id_key": id_key} if id_key else {})}
    marked = {"planted_key": planted_key} if planted_key else {}  # in the training file only
    if test is None:
        arrays = _read_arrays(train, {**names, **marked, "split_key": split_key}, key, "train",
                              hint=f"; {key}.test is null, so this file must say each row's split")
        which = arrays.pop("split_key").astype(str)
        bad = sorted(str(v) for v in set(np.unique(which)) - {"train", "test"})
        if bad:
            raise ValueError(f"{key}.split_key: {split_key!r} in {Path(train)} has values {bad[:5]}; expected 'train' "
                             f"or 'test'")
        parts = {s: ({k: v[which == s] for k, v in arrays.items()}, train) for s in ("train", "test")}
        where = {s: (f"{key}.train: {Path(train).absolute()} (its rows with {split_key} {s!r})", np.flatnonzero(which == s))
                 for s in ("train", "test")}
    else:
        parts = {"train": (_read_arrays(train, {**names, **marked}, key, "train"), train),
                 "test": (_read_arrays(test, names, key, "test"), test)}
        where = {s: (f"{key}.{s}: {Path(path).absolute()}", None) for s, path in (("train", train), ("test", test))}
    splits = []
    for split, (arrays, path) in parts.items():
        x = arrays["x_key"]
        if shape is not None:
            if np.prod(x.shape[1:], dtype=np.int64) != np.prod(shape, dtype=np.int64):
                raise ValueError(f"{key}.shape: {shape} does not fit the {split} inputs of {path}, shaped "
                                 f"{list(x.shape[1:])} per example")
            x = x.reshape(len(x), *shape)
        try:
            one = as_split(x, arrays["y_key"], arrays.get("id_key"), what=f"the {split} split")
        except ValueError as e:
            raise ValueError(f"{key}: {path}: {e}") from e
        declared = _declared(arrays["planted_key"], planted_key, path) if split == "train" and planted_key else None
        splits.append(replace(one, where=where[split][0], rows=where[split][1], declared=declared))
    kind = "column" if Path(train).suffix.lower() in PARQUET_SUFFIXES else "array"
    return labelled_dataset(*splits, n_classes=None, seed=seed, label_noise=label_noise, subsample_train=subsample_train,
                            subsample_test=subsample_test, standardize=standardize, key=key, strict=True,
                            inputs=f"inputs ({kind} {x_key!r})", spurious=spurious, noise=noise,
                            planted_ids=planted_ids)


def _declared(values: np.ndarray, name: str, path) -> np.ndarray:
    """planted_key's values as one bool per example: booleans, or 0 and 1."""
    v = np.asarray(values).reshape(len(values), -1)
    if v.shape[1] != 1 or not (v.dtype == bool or (np.issubdtype(v.dtype, np.number) and np.isin(v, (0, 1)).all())):
        raise ValueError(f"data.files.planted_key: {name!r} in {Path(path)} must hold one boolean (or 0/1) per example, "
                         f"true where the label is known to be wrong; got dtype {v.dtype}, shape {list(np.shape(values))}")
    return v[:, 0].astype(bool)


# ---- a python factory ------------------------------------------------------------------------
FACTORY_CONTRACT = ("expected ((x_train, y_train), (x_test, y_test)): numpy arrays or tensors, inputs shaped "
                    "(n, ...) and integer class labels (n,)")


def load_python(factory, kwargs, seed, label_noise, subsample_train, subsample_test, standardize,
                spurious=None, noise=None, planted_ids=None) -> Dataset:
    """The splits a function of the user's returns: `factory(**kwargs)` ->
    ((x_train, y_train), (x_test, y_test)), numpy arrays or torch tensors (anything
    numpy.asarray takes), inputs (n, ...) in the shape the model should receive, labels
    class indices. "package.module:function" is imported with the working directory on
    sys.path (`factories.resolve`). Every failure is a FactoryError naming data.python.factory,
    the value and the reason.
    """
    key = "data.python.factory"
    make = factories.resolve(factory, key=key)
    try:
        result = make(**kwargs)
    except Exception as e:  # the user's code raised: say where, keep its traceback
        raise factories.FactoryError(key, factory, f"calling it with kwargs {kwargs} raised {type(e).__name__}: {e}") from e
    try:
        (x_train, y_train), (x_test, y_test) = result
    except (TypeError, ValueError):
        got = type(result).__name__ + (f" of length {len(result)}" if hasattr(result, "__len__") else "")
        raise factories.FactoryError(key, factory, f"it returned a {got}; {FACTORY_CONTRACT}") from None
    try:
        train = as_split(x_train, y_train, what="the train split")
        test = as_split(x_test, y_test, what="the test split")
    except ValueError as e:
        raise factories.FactoryError(key, factory, f"{e}; {FACTORY_CONTRACT}") from None
    train, test = (replace(s, where=f"{key}: {factory!r}, its {name} split") for s, name in ((train, "train"), (test, "test")))
    return labelled_dataset(train, test, n_classes=None, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key="data.python", strict=True, spurious=spurious, noise=noise, planted_ids=planted_ids)
