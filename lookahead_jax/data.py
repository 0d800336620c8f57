"""Datasets and pools as normalised numpy arrays: benchmarks, or a user's own data.

A :class:`Dataset` is a *pool* of inputs of any per-example shape (images NHWC, tabular
``(n, d)``, precomputed embeddings) whose labels may be unknown (−1), with optional class
names, ids people find the items by, labels given with the pool (the starting labeled
set) and an optional labeled evaluation split (without one there is no test accuracy and
nothing breaks).

A user's own data (:func:`load_dataset` with a source prefix, or :func:`from_arrays`):

  * ``npz:PATH``: an ``.npz`` with key ``x`` (the pool) and optionally ``y`` (the labels
    known now, −1 for unknown: the starting labeled set), ``y_true`` (complete labels a
    simulated oracle answers from), ``x_test``/``y_test``, ``class_names``, ``items``.
  * ``folder:PATH``: an image folder, ``PATH/<class_name>/*.png|jpg`` labeled,
    ``PATH/unlabeled/*`` unlabeled, optionally ``PATH/test/<class_name>/*``; decoded with
    Pillow and resized to the most common size (RGB if any image has colour, else grey).

Normalisation statistics come from the whole pool (no labels needed): per channel for
images, per feature for tabular inputs; integer images (uint8) are first scaled to [0, 1].

Benchmark datasets (canonical name: images, train / test sizes, classes):

  * ``digits``: scikit-learn's bundled handwritten digits, 8x8x1, 1,437 / 360 (a fixed
    stratified split of the 1,797 images, ``random_state=0``), 10 classes. Ships with
    scikit-learn: needs no network and no TensorFlow.
  * ``mnist``: 28x28x1, 60,000 / 10,000, 10 classes.
  * ``fashion_mnist``: 28x28x1, 60,000 / 10,000, 10 classes.
  * ``svhn_cropped`` (alias ``svhn``): 32x32x3, 73,257 / 26,032, 10 classes (the
    ``extra`` split is not used).
  * ``cifar10``: 32x32x3, 50,000 / 10,000, 10 classes.
  * ``cifar100``: 32x32x3, 50,000 / 10,000, 100 (fine) classes.

Every loader returns a :class:`Dataset`: images ``(N, H, W, C)`` float32, scaled to
[0, 1] and then standardised per channel with the mean and standard deviation of the
training split (of the subsample, when ``max_train`` is given); the test split uses the
same training statistics. Labels are ``(N,)`` int32 in ``[0, num_classes)``.

Offline story. All datasets but ``digits`` come from tensorflow-datasets (tfds), which
needs TensorFlow (``pip install 'lookahead-jax[tf]'``). :func:`load_dataset` never
waits on the network unless asked to:

  1. if the dataset is already prepared in ``data_dir`` (default: ``$TFDS_DATA_DIR``,
     else tfds' default ``~/tensorflow_datasets``), it is read from there;
  2. else, if ``manual_dir`` (default: ``$TFDS_MANUAL_DIR``) is given, tfds builds the
     dataset into ``data_dir`` from the original archives in that folder, with no
     download (missing archives are reported before the build starts);
  3. else, if ``download=True``, tfds downloads and prepares it;
  4. else :class:`DatasetUnavailableError` says where it looked and how to provide the
     files.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

DATASETS: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "svhn_cropped",
    "cifar10",
    "cifar100",
)
ALIASES: dict[str, str] = {"svhn": "svhn_cropped"}
SOURCE_PREFIXES: tuple[str, ...] = ("npz:", "folder:")  # a user's own data
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNKNOWN = -1  # the label of a pool item nobody has labeled

_TF_HINT = "building/loading tfds datasets needs TensorFlow: pip install 'lookahead-jax[tf]'"
_EXTRA_HINTS = {
    "fashion_mnist": (
        "Debian's package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) "
        "ships the four archives in /usr/share/datasets/fashion-mnist/, but re-compressed: "
        "their sha256 sums differ from the ones tfds registers, so tfds rejects that "
        "folder as a manual_dir (NonMatchingChecksumError)."
    ),
}
_READ_BATCH = 4096  # examples per tf.data batch when reading a tfds split
_STATS_CHUNK = 1 << 20  # rows of the (N*H*W, C) view summed at once by _channel_stats


class DatasetUnavailableError(ValueError):
    """The dataset is neither prepared locally nor buildable without a download."""


class Dataset(NamedTuple):
    """A normalised pool and an optional evaluation split.

    Attributes:
      name: the dataset's name (a canonical name of :data:`DATASETS`, or the source).
      x_train: the pool, ``(N, ...)`` float32, standardised with the pool's statistics.
      y_train: ``(N,)`` int32: the label an informed oracle answers, in
        ``[0, num_classes)``, or −1 (:data:`UNKNOWN`) where nobody knows it yet.
      x_test: ``(M, ...)`` float32 evaluation inputs (same statistics), or ``None``.
      y_test: ``(M,)`` int32 evaluation labels, or ``None``.
      num_classes: C.
      class_names: ``C`` names, or ``None``.
      items: per pool item, what a person finds it by (a file path, an id), or ``None``.
      given: ``(N,)`` bool, labels that came with the pool (the starting labeled set), or
        ``None`` (benchmarks: the initial set is a seeded random draw).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    num_classes: int
    class_names: Optional[tuple] = None
    items: Optional[Sequence[str]] = None
    given: Optional[np.ndarray] = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(H, W, C)`` or ``(d,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    def item(self, i: int) -> str:
        """What a person finds pool item ``i`` by."""
        return str(self.items[i]) if self.items is not None else f"{self.name}[{i}]"


class _Raw(NamedTuple):
    """Unscaled splits as stored: images ``(N, H, W, C)`` with values in [0, max_value]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    max_value: float


def canonical_name(name: str) -> str:
    """Returns the canonical dataset name for ``name`` (case-insensitive, aliases resolved).

    Raises:
      ValueError: unknown name; the message lists the known names and aliases.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        aliases = ", ".join(f"{a} -> {c}" for a, c in ALIASES.items())
        own = "npz" if name.lower().endswith(".npz") else \
            "folder" if os.path.isdir(name) else None
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            f"(aliases: {aliases}); your own data: npz:PATH (an .npz archive) or folder:PATH "
            f"(image sub-folders, one per class)" + (f", e.g. {own}:{name}" if own else "")
        )
    return key


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Loads ``name`` as a normalised, validated :class:`Dataset`.

    Args:
      name: a name from :data:`DATASETS` or :data:`ALIASES`, or a user's own data:
        ``npz:PATH`` (:func:`load_npz`) or ``folder:PATH`` (:func:`load_folder`).
      data_dir: tfds data directory (default ``$TFDS_DATA_DIR``, else tfds' default).
        Ignored for ``digits``.
      manual_dir: folder with the dataset's original archives, to build it offline
        (default ``$TFDS_MANUAL_DIR``). Ignored for ``digits``.
      download: let tfds download the dataset when it is not prepared.
      max_train: keep a random subsample of at most this many training examples.
      max_test: keep a random subsample of at most this many test examples.
      seed: seed of the subsampling (``np.random.default_rng``); the digits split
        itself is fixed.

    Raises:
      ValueError: unknown name, or the loaded arrays fail :func:`validate_dataset`.
      DatasetUnavailableError: the dataset is not available without a download.
      ImportError: TensorFlow is missing for a tfds dataset.
    """
    if name.startswith("npz:"):
        return load_npz(name[len("npz:"):])
    if name.startswith("folder:"):
        return load_folder(name[len("folder:"):])
    name = canonical_name(name)
    if name == "digits":
        raw = _load_digits()
    else:
        raw = _load_tfds(
            name,
            data_dir=data_dir or os.environ.get("TFDS_DATA_DIR"),
            manual_dir=manual_dir or os.environ.get("TFDS_MANUAL_DIR"),
            download=download,
        )
    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(raw.x_train, raw.y_train, max_train, rng)
    x_test, y_test = _subsample(raw.x_test, raw.y_test, max_test, rng)
    x_train, x_test = _standardise(
        _scale(x_train, raw.max_value), _scale(x_test, raw.max_value)
    )
    ds = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train.astype(np.int32),
        x_test=x_test,
        y_test=y_test.astype(np.int32),
        num_classes=int(raw.num_classes),
    )
    validate_dataset(ds)
    return ds


def validate_dataset(ds: Dataset) -> None:
    """Checks shapes, finiteness and label ranges of ``ds``.

    Raises:
      ValueError: listing every problem found (non-finite inputs with their count and
        first index, labels out of ``[0, num_classes)`` (−1 allowed in the pool: unknown),
        length or shape mismatches, empty splits, a test split without labels, class
        names or items of the wrong length, given labels that are unknown).
    """
    problems = []
    if isinstance(ds.num_classes, bool) or not isinstance(ds.num_classes, (int, np.integer)) \
            or ds.num_classes < 2:
        problems.append(f"num_classes must be an integer >= 2 (a classifier needs two "
                        f"classes), got {ds.num_classes!r}")
    splits = [("train", ds.x_train, ds.y_train, True)]
    if (ds.x_test is None) != (ds.y_test is None):
        problems.append("x_test and y_test go together: give both or neither")
    elif ds.x_test is not None:
        splits.append(("test", ds.x_test, ds.y_test, False))
    for split, x, y, pool in splits:
        problems += _input_problems(f"x_{split}", np.asarray(x))
        problems += _label_problems(f"y_{split}", np.asarray(y), int(ds.num_classes), pool)
        if len(x) != len(y):
            problems.append(f"x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    if ds.x_test is not None and np.ndim(ds.x_train) >= 2 and np.ndim(ds.x_test) >= 2:
        if np.shape(ds.x_train)[1:] != np.shape(ds.x_test)[1:]:
            problems.append(
                f"x_train examples are {np.shape(ds.x_train)[1:]} but x_test examples are "
                f"{np.shape(ds.x_test)[1:]}"
            )
    n = len(ds.x_train)
    if ds.class_names is not None:
        names = [str(c) for c in ds.class_names]
        if len(names) != ds.num_classes or len(set(names)) != len(names):
            problems.append(f"class_names must be {ds.num_classes} distinct names, got "
                            f"{names}")
    if ds.items is not None and len(ds.items) != n:
        problems.append(f"items has {len(ds.items)} entries for a pool of {n}")
    if ds.given is not None:
        given = np.asarray(ds.given)
        if given.shape != (n,) or given.dtype != bool:
            problems.append(f"given must be a ({n},) bool mask, got {given.dtype} "
                            f"{given.shape}")
        elif np.any(np.asarray(ds.y_train)[given] < 0):
            problems.append("given marks items whose label is unknown (-1)")
    if problems:
        raise ValueError(f"invalid dataset {ds.name!r}: " + "; ".join(problems))


def _input_problems(label: str, x: np.ndarray) -> list[str]:
    if x.ndim < 2:
        return [f"{label} must have an example axis and at least one feature axis "
                f"((n, d), (n, H, W, C), ...), got shape {x.shape}"]
    if not np.issubdtype(x.dtype, np.floating):
        return [f"{label} must hold floats (scale integer images, e.g. uint8 0-255, to "
                f"[0, 1] first), got dtype {x.dtype}"]
    if len(x) == 0:
        return [f"{label} is empty"]
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        return []
    first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), x.shape))
    return [f"{label} has {count} non-finite values (NaN/inf), first at index {first}"]


def _label_problems(label: str, y: np.ndarray, num_classes: int,
                    unknown_ok: bool = False) -> list[str]:
    if y.ndim != 1:
        return [f"{label} must be 1-D (N,), got shape {y.shape}"]
    if len(y) == 0:
        return [f"{label} is empty"]
    if not np.issubdtype(y.dtype, np.integer):
        return [f"{label} must hold integers, got dtype {y.dtype}"]
    lo = UNKNOWN if unknown_ok else 0
    bad = (y < lo) | (y >= num_classes)
    count = int(bad.sum())
    if count == 0:
        return []
    first = int(np.argmax(bad))
    allowed = f"[0, {num_classes})" + (" or -1 (unknown)" if unknown_ok else "")
    return [
        f"{label} has {count} labels outside {allowed}, first at index {first} "
        f"(value {y[first]})"
    ]


def _subsample(
    x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` random examples, kept in their original order."""
    if limit is None or limit >= len(x):
        return x, y
    if limit < 1:
        raise ValueError(f"max_train/max_test must be >= 1, got {limit}")
    keep = np.sort(rng.choice(len(x), size=limit, replace=False))
    return x[keep], y[keep]


def _scale(x: np.ndarray, max_value: float) -> np.ndarray:
    """``x / max_value`` as a new float32 array."""
    return np.divide(x, max_value, dtype=np.float32)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``(N, H, W, C)`` ``x``, accumulated in float64."""
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0, dtype=np.float64)
    sq = np.zeros_like(mean)
    for start in range(0, len(flat), _STATS_CHUNK):
        sq += np.square(flat[start : start + _STATS_CHUNK] - mean).sum(axis=0)
    std = np.sqrt(sq / len(flat))
    return mean, np.where(std > 0, std, 1.0)


def _standardise(x_train: np.ndarray, x_test: Optional[np.ndarray]
                 ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Standardises both float32 arrays in place with ``x_train``'s statistics along the last
    axis (channels of images, features of tabular inputs)."""
    mean, std = (s.astype(np.float32) for s in _channel_stats(x_train))
    for x in (x_train, x_test):
        if x is not None:
            x -= mean
            x /= std
    return x_train, x_test


# ============================================================================ own data


def _as_float_inputs(x, what: str) -> np.ndarray:
    """``x`` as a new float32 array; uint8 images are scaled to [0, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return _scale(x, 255.0)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must hold numbers, got dtype {x.dtype}")
    return np.array(x, dtype=np.float32)


def from_arrays(x, y=None, *, y_true=None, x_test=None, y_test=None,
                class_names: Optional[Sequence[str]] = None,
                items: Optional[Sequence[str]] = None,
                num_classes: Optional[int] = None, name: str = "arrays") -> Dataset:
    """A user's own pool as a normalised :class:`Dataset`.

    Args:
      x: ``(N, ...)`` pool inputs (images NHWC, tabular ``(N, d)``, embeddings); uint8
        images are scaled to [0, 1]; then standardised with the pool's own statistics.
      y: ``(N,)`` labels known now, −1 where unknown (default: all unknown). Known ones are
        the starting labeled set.
      y_true: ``(N,)`` complete labels for a simulated run (a simulated oracle answers from
        them); must agree with ``y`` where ``y`` is known.
      x_test, y_test: an optional labeled evaluation split.
      class_names: optional names of the C classes.
      items: optional per-item ids people find items by (default ``"<name>[i]"``).
      num_classes: C (default: ``len(class_names)``, else the largest label + 1).
      name: the dataset's name in records.
    """
    x = _as_float_inputs(x, "x")
    n = len(x)
    y_known = np.full(n, UNKNOWN, np.int64) if y is None else _int_labels(y, "y")
    if y_true is not None:
        y_true = _int_labels(y_true, "y_true")
        if y_true.shape != (n,):
            raise ValueError(f"y_true has {len(y_true)} labels for a pool of {n}")
        known = y_known >= 0
        if y_known.shape == (n,) and np.any(y_true[known] != y_known[known]):
            i = int(np.flatnonzero(known & (y_true != y_known))[0])
            raise ValueError(f"y and y_true disagree at pool item {i} ({y_known[i]} vs "
                             f"{y_true[i]})")
    if class_names is not None:
        class_names = tuple(str(c) for c in np.asarray(class_names).tolist())
    if num_classes is None:
        labels = [a for a in (y_known, y_true, y_test) if a is not None]
        top = max((int(np.max(a)) for a in labels if np.size(a)), default=UNKNOWN)
        num_classes = len(class_names) if class_names is not None else top + 1
    xt = None if x_test is None else _as_float_inputs(x_test, "x_test")
    x, xt = _standardise(x, xt)
    ds = Dataset(name=name, x_train=x,
                 y_train=(y_true if y_true is not None else y_known).astype(np.int32),
                 x_test=xt, y_test=None if y_test is None else _int_labels(y_test, "y_test")
                 .astype(np.int32), num_classes=int(num_classes), class_names=class_names,
                 items=None if items is None else [str(i) for i in items],
                 given=(y_known >= 0) if y is not None else None)
    validate_dataset(ds)
    return ds


def _int_labels(y, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{what} must hold integer labels, got non-integer values")
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must hold integer labels, got dtype {y.dtype}")
    return y.astype(np.int64).reshape(-1)


NPZ_KEYS = ("x", "y", "y_true", "x_test", "y_test", "class_names", "items")


def load_npz(path: str) -> Dataset:
    """A pool from an ``.npz`` (keys :data:`NPZ_KEYS`; only ``x`` is required)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ValueError(f"npz:{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"npz:{path}: not a readable .npz file ({e})") from None
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown or "x" not in arrays:
        raise ValueError(f"npz:{path}: keys {sorted(arrays)}; it needs 'x' and may have "
                         f"{', '.join(NPZ_KEYS[1:])}" + (f" (unknown: {unknown})" if unknown
                                                         else ""))
    return from_arrays(**arrays, name=f"npz:{os.path.basename(path)}")


def load_folder(path: str) -> Dataset:
    """A pool from an image folder (see the module docstring), decoded with Pillow."""
    from PIL import Image, UnidentifiedImageError  # Pillow is only needed for folders

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"folder:{path}: not a folder")

    def images(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

    classes = sorted(d.name for d in root.iterdir()
                     if d.is_dir() and d.name not in ("unlabeled", "test"))
    if len(classes) < 2:
        raise ValueError(f"folder:{path}: needs at least two class folders "
                         f"({path}/<class_name>/*.png), found {classes}")
    pool = [(p, k) for k, c in enumerate(classes) for p in images(root / c)]
    if (root / "unlabeled").is_dir():
        pool += [(p, UNKNOWN) for p in images(root / "unlabeled")]
    test = []
    if (root / "test").is_dir():
        for d in sorted((root / "test").iterdir()):
            if d.is_dir():
                if d.name not in classes:
                    raise ValueError(f"folder:{path}: test class {d.name!r} is not one of "
                                     f"the pool's classes {classes}")
                test += [(p, classes.index(d.name)) for p in images(d)]
    if not pool:
        raise ValueError(f"folder:{path}: no images ({', '.join(IMAGE_SUFFIXES)})")

    opened = {}
    for p, _ in pool + test:
        try:
            with Image.open(p) as im:
                opened[p] = (im.size, im.mode)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"folder:{path}: cannot read image {p} ({e})") from None
    size = collections.Counter(opened[p][0] for p, _ in pool).most_common(1)[0][0]
    colour = any(m not in ("1", "L", "LA", "I", "I;16", "F") for _, m in opened.values())
    mode = "RGB" if colour else "L"

    def decode(entries):
        out = np.empty((len(entries), size[1], size[0], 3 if colour else 1), np.uint8)
        for i, (p, _) in enumerate(entries):
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                out[i] = np.asarray(im).reshape(out.shape[1:])
        return out

    y = np.array([k for _, k in pool], np.int64)
    return from_arrays(decode(pool), y, x_test=decode(test) if test else None,
                       y_test=np.array([k for _, k in test]) if test else None,
                       class_names=classes, items=[str(p.relative_to(root)) for p, _ in pool],
                       num_classes=len(classes), name=f"folder:{root.name}")


def _load_digits() -> _Raw:
    """scikit-learn's 8x8 digits, values 0..16, with a fixed stratified 1,437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=360, stratify=digits.target, random_state=0
    )
    return _Raw(x_train, y_train, x_test, y_test, num_classes=10, max_value=16.0)


def _import_tfds() -> Any:
    """Imports tensorflow_datasets, failing clearly when TensorFlow is missing."""
    try:
        import tensorflow  # noqa: F401  (tfds builds and reads datasets with it)
    except ImportError as err:
        raise ImportError(f"{_TF_HINT} ({err})") from err
    import tensorflow_datasets as tfds

    return tfds


def _load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None,
    manual_dir: str | os.PathLike | None,
    download: bool,
) -> _Raw:
    """Reads both splits of a tfds dataset into memory (uint8 images, int labels)."""
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
    _ensure_prepared(tfds, builder, manual_dir=manual_dir, download=download)
    x_train, y_train = _read_split(tfds, builder, "train")
    x_test, y_test = _read_split(tfds, builder, "test")
    num_classes = builder.info.features["label"].num_classes
    return _Raw(x_train, y_train, x_test, y_test, num_classes, max_value=255.0)


def _read_split(tfds: Any, builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in file order: images ``(N, H, W, C)`` uint8, labels ``(N,)``.

    Reads fixed-size batches rather than ``batch_size=-1``: under
    ``tfds.testing.mock_data`` the split sizes are unknown and ``batch_size=-1`` makes
    TensorFlow reserve ``sys.maxsize`` elements and abort the process.
    """
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH, as_supervised=True)
    images, labels = zip(*tfds.as_numpy(ds))
    return np.concatenate(images), np.concatenate(labels)


def _ensure_prepared(
    tfds: Any, builder: Any, *, manual_dir: str | os.PathLike | None, download: bool
) -> None:
    """Makes sure ``builder``'s data exist in its data_dir, without an unasked download."""
    if builder.is_prepared():
        return
    if manual_dir:
        _build_from_manual_dir(tfds, builder, Path(manual_dir), download=download)
    elif download:
        builder.download_and_prepare()
    else:
        raise DatasetUnavailableError(
            f"dataset {builder.name!r} is not prepared in the tfds data_dir "
            f"{builder.data_dir_root} (looked for {builder.data_dir}), no manual_dir was "
            f"given and downloading is off.\n{_how_to_provide(builder)}"
        )


def _build_from_manual_dir(tfds: Any, builder: Any, manual_dir: Path, *, download: bool) -> None:
    """Builds the dataset from the original archives in ``manual_dir``.

    Without ``download`` the archives must all be there: tfds would otherwise fetch
    the missing ones from the network.
    """
    missing = [f for f in _archive_names(builder) if not (manual_dir / f).is_file()]
    if missing and not download:
        raise DatasetUnavailableError(
            f"cannot build {builder.name!r} offline: manual_dir {manual_dir} lacks "
            f"{', '.join(missing)}.\n{_how_to_provide(builder)}"
        )
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=download
    )
    try:
        builder.download_and_prepare(download_config=config)
    except ImportError:
        raise
    except Exception as err:  # tfds raises many types: checksum, archive, IO errors
        raise DatasetUnavailableError(
            f"building {builder.name!r} from manual_dir {manual_dir} into "
            f"{builder.data_dir_root} failed: {type(err).__name__}: {err}\n"
            f"{_how_to_provide(builder)}"
        ) from err


def _archive_names(builder: Any) -> list[str]:
    """File names of the original archives tfds expects for ``builder``."""
    return sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})


def _how_to_provide(builder: Any) -> str:
    archives = ", ".join(_archive_names(builder)) or "the original archives"
    lines = [
        f"To provide {builder.name!r}, either:",
        f"  * pass --data_dir (or set TFDS_DATA_DIR) to a tfds data_dir in which "
        f"{builder.name} {builder.version} is already prepared;",
        f"  * pass --manual_dir (or set TFDS_MANUAL_DIR) to a folder holding the original "
        f"archives ({archives}); tfds then builds the dataset offline into the data_dir;",
        "  * pass --download on a machine with internet access.",
    ]
    if builder.name in _EXTRA_HINTS:
        lines.append(_EXTRA_HINTS[builder.name])
    return "\n".join(lines)
