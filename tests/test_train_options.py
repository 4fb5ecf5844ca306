"""Training options of the configs: optimizer schedules, input standardisation, image augmentation,
and CIFAR-10 through the training CLI (generated batch files)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqjax import data
from experiments import common, configs, train

from conftest import write_cifar


def sgd_config(**entries):
    return configs.named("tiny", batches_per_epoch=10, **entries)


def one_update(config, params, grads):
    optimizer = configs.make_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def test_weight_decay_adds_the_decayed_weights_to_the_gradient():
    params = {"weights": (jnp.full((2, 3), 2.0),), "biases": (jnp.ones(3),)}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = one_update(sgd_config(learning_rate=0.1, weight_decay=0.01, momentum=0.9), params, zero)
    # first SGD step: -rate * (grad + weight_decay * param); momentum has no history yet
    np.testing.assert_allclose(updates["weights"][0], -0.1 * 0.01 * 2.0, rtol=1e-6)


def test_cosine_schedule_reaches_zero_after_its_epochs_and_needs_them():
    params = {"weights": (jnp.ones((2, 3)),), "biases": (jnp.ones(3),)}
    grads = jax.tree.map(jnp.ones_like, params)
    config = sgd_config(learning_rate=0.2, schedule="cosine", schedule_epochs=2)
    optimizer = configs.make_optimizer(config)
    state = optimizer.init(params)
    steps = []
    for _ in range(21):  # 2 epochs of 10 batches, then one more
        updates, state = optimizer.update(grads, state, params)
        steps.append(-float(updates["weights"][0][0, 0]))
    assert steps[0] == pytest.approx(0.2, rel=1e-6)  # full rate at the start
    assert steps[10] == pytest.approx(0.1, rel=1e-5)  # half-way: (1 + cos(pi / 2)) / 2
    assert steps[20] == pytest.approx(0.0, abs=1e-9)  # decayed to 0 after schedule_epochs
    with pytest.raises(ValueError, match="schedule_epochs"):
        configs.validate(configs.named("tiny", schedule="cosine"))
    # options a config would silently ignore are refused
    with pytest.raises(ValueError, match="momentum applies to SGD"):
        configs.validate(configs.named("conv-fmnist", momentum=0.9))
    with pytest.raises(ValueError, match="not supported for resistive"):
        configs.validate(configs.named("drn-xs", weight_decay=1e-4))


def test_augmentation_entries_are_checked():
    with pytest.raises(ValueError, match="need a conv config"):
        configs.validate(configs.named("tiny", flip=True))
    with pytest.raises(ValueError, match="crop_padding must be an int >= 0"):
        configs.validate(configs.named("conv-fmnist", crop_padding=-1))
    assert common.augmentation(configs.named("conv-fmnist")) is None  # neither asked for


def test_flip_augmentation_flips_some_images_and_keeps_the_others():
    config = configs.named("conv-fmnist", flip=True)
    xs = jax.random.uniform(jax.random.key(0), (3, 16, 784))  # 3 batches of 16 flat 28x28 images
    out = common.augmentation(config)(xs, jax.random.key(1))
    images, flipped = xs.reshape(48, 28, 28), out.reshape(48, 28, 28)
    same = jnp.all(flipped == images, axis=(1, 2))
    mirrored = jnp.all(flipped == images[:, :, ::-1], axis=(1, 2))
    assert bool(jnp.all(same | mirrored))  # every image is itself or its mirror image
    assert 10 < int(mirrored.sum()) < 38  # about half of 48 flipped (binomial, p = 1/2)


def test_pixel_statistics_standardise_each_channel():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(50, 4, 4, 3)) * np.array([1.0, 2.0, 4.0]) + np.array([0.0, 1.0, 5.0])
    x = jnp.asarray(images.reshape(50, -1), jnp.float32)
    mean, std = common.pixel_statistics(x, 3)
    standard = ((x - mean) / std).reshape(-1, 3)
    np.testing.assert_allclose(standard.mean(axis=0), 0.0, atol=1e-5)  # float32 sums of 800 values
    np.testing.assert_allclose(standard.std(axis=0), 1.0, rtol=1e-5)


@pytest.mark.slow  # 18 s; conv-cifar10 trains a chunk in the default suite (test_configs.py)
def test_cifar10_trains_through_the_cli_with_augmentation(monkeypatch, tmp_path):
    monkeypatch.setitem(data.CIFAR_COUNTS, "train", 5 * 16)
    monkeypatch.setitem(data.CIFAR_COUNTS, "test", 16)
    write_cifar(tmp_path / "cifar-10-batches-py", 16, np.random.default_rng(0))
    run = train.main(["--model", "conv-cifar10", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                      "--epochs", "1", "--chunk", "5", "--runs-dir", str(tmp_path / "runs"),
                      "--set", "sizes=[3072, 4, 4, 4, 4, 10]", "--set", "batch_size=8", "--set", "free_steps=5",
                      "--set", "nudged_steps=5", "--set", "eval_steps=5"])
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["kind"] == "epoch" and 0.0 <= epoch["test_error"] <= 1.0, epoch


def test_backprop_baseline_trains_the_feedforward_cnn_of_a_conv_config(tmp_path):
    from experiments import backprop

    records = backprop.main(["--model", "conv-fmnist", "--dataset", "mnist", "--epochs", "2", "--train-limit", "640",
                             "--test-limit", "200", "--runs-dir", str(tmp_path), "--set", "sizes=[784, 4, 8, 10]"])
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["test_error"] < 0.7  # learning: chance is 0.9 (measured 0.395 after 2 epochs)
    saved = json.loads(next(tmp_path.glob("backprop-conv-fmnist-mnist-*.json")).read_text())
    assert saved["epochs"] == records
    with pytest.raises(SystemExit, match="not a conv config"):
        backprop.main(["--model", "tiny", "--epochs", "1", "--runs-dir", str(tmp_path)])
