"""Image pipeline (crops, flips, normalisation, padding; jitted, per-example draws) and the CIFAR-10
python batches checked against their published MD5s, on generated files."""

import hashlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqjax import data, images
from eqjax.data import DatasetCorruptError


def batch_of(n=64, shape=(6, 5, 3), seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32) + 0.5  # no zero pixel


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = batch_of()
    cropped = jax.jit(images.random_crop, static_argnums=2)(jax.random.key(1), x, 2)
    assert cropped.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for i in range(len(x)):
        matches = [(a, b) for a in range(5) for b in range(5)
                   if np.array_equal(padded[i, a:a + 6, b:b + 5], np.asarray(cropped[i]))]
        assert len(matches) == 1  # exactly one offset explains the crop
        offsets.add(matches[0])
    assert len(offsets) > 10  # drawn per example (25 possible offsets, 64 examples)
    assert bool(jnp.all(images.random_crop(jax.random.key(1), x, 0) == x))


def test_random_flip_flips_about_half_of_the_examples_left_right():
    x = batch_of(400)
    flipped = jax.jit(images.random_flip)(jax.random.key(2), x)
    same = np.array([np.array_equal(f, o) for f, o in zip(flipped, x)])
    mirrored = np.array([np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, x)])
    assert np.all(same ^ mirrored)  # each example is either untouched or mirrored
    assert 0.4 < mirrored.mean() < 0.6  # binomial(400, 1/2): 5 standard deviations either side
    again = images.random_flip(jax.random.key(2), x)
    assert bool(jnp.all(again == flipped))  # the key decides


def test_normalize_and_channel_stats():
    x = batch_of(256)
    mean, std = images.channel_stats(x)
    z = images.normalize(x, mean, std)
    np.testing.assert_allclose(np.asarray(z).mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z).std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_pad_to_32():
    x = batch_of(2, (28, 28, 1))
    padded = images.pad_to(x, 32)
    assert padded.shape == (2, 32, 32, 1)
    # the image in the middle, unchanged, and zeros around it (compared element by element: a float32
    # sum over the padded array adds in another order than one over the image)
    border = jnp.ones((32, 32), bool).at[2:30, 2:30].set(False)
    assert bool(jnp.all(padded[:, 2:30, 2:30] == x)) and bool(jnp.all(padded[:, border] == 0))
    with pytest.raises(ValueError, match="do not fit"):
        images.pad_to(x, 20)


def test_pipeline_is_flat_in_flat_out_and_only_normalises_without_a_key():
    pipe = images.cifar10_pipeline()
    x = jax.random.uniform(jax.random.key(3), (8, 32 * 32 * 3))
    plain = pipe(x)
    expected = images.normalize(x.reshape(8, 32, 32, 3), images.CIFAR10_MEAN, images.CIFAR10_STD)
    np.testing.assert_allclose(plain, expected.reshape(8, -1), rtol=1e-6)
    augmented = jax.jit(lambda p, x, k: p(x, k))(pipe, x, jax.random.key(4))
    assert augmented.shape == x.shape and not bool(jnp.allclose(augmented, plain))
    # mean and std are traced: another normalisation reuses the compiled program
    other = pipe.replace(mean=jnp.zeros(3), std=jnp.ones(3))
    assert jax.jit(lambda p, x: p(x))(other, x).shape == x.shape
    assert bool(pipe.replace(std=jnp.asarray([1.0, 0.0, 1.0])).errors()["std must be positive and finite"])


def write_batches(folder, rows, rng):
    """Generated CIFAR python batches (protocol-2 pickles of dicts with bytes keys, as published)."""
    folder.mkdir(parents=True)
    digests = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, rows).tolist(),
                 b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8)}
        raw = pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(raw)
        digests[name] = hashlib.md5(raw).hexdigest()
    return digests


def test_cifar_batches_of_the_published_size_must_have_the_published_md5(monkeypatch, tmp_path):
    # generated batches of 6 rows stand for the published 10,000-row files
    monkeypatch.setattr(data, "CIFAR_BATCH_ROWS", 6)
    monkeypatch.setitem(data.CIFAR_COUNTS, "train", 30)
    monkeypatch.setitem(data.CIFAR_COUNTS, "test", 6)
    folder = tmp_path / "cifar-10-batches-py"
    digests = write_batches(folder, 6, np.random.default_rng(0))
    with pytest.raises(DatasetCorruptError, match="data_batch_1: a batch of the published size whose MD5"):
        data.load("cifar10", "train", data_dir=tmp_path)  # the real MD5s do not match generated files
    monkeypatch.setattr(data, "CIFAR_BATCH_MD5", digests)
    x, y = data.load("cifar10", "train", data_dir=tmp_path)
    assert x.shape == (30, 32, 32, 3) and y.shape == (30,)
    # one altered pixel in the test batch: refused
    raw = pickle.loads((folder / "test_batch").read_bytes())
    raw[b"data"][0, 0] ^= 1
    (folder / "test_batch").write_bytes(pickle.dumps(raw, protocol=2))
    with pytest.raises(DatasetCorruptError, match="test_batch: a batch of the published size"):
        data.load("cifar10", "test", data_dir=tmp_path)


def test_the_pipeline_feeds_a_conv_model_with_cifar_images():
    import eqjax

    model = eqjax.models.conv_hopfield((32, 32, 3), (4,), kernel=3, padding=1, dense=(), num_classes=10)
    x = images.to_unit(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)).reshape(4, -1)
    x = images.cifar10_pipeline()(x, jax.random.key(0))
    eqjax.check_inputs(model, x)
    eq = eqjax.relax(model, eqjax.costs.cross_entropy(), eqjax.solvers.BlockCoordinate(max_steps=3), model.init(
        jax.random.key(1), jnp.float32), x)
    assert eq.state[0].shape == (4, 16, 16, 4)
