"""Shared test set-up: float64 everywhere for gradient checks, and small random problems."""

import json
import os
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eqjax

jax.config.update("jax_enable_x64", True)


def python_blocks(path, after: str = "") -> list[str]:
    """The ```python code blocks of the Markdown file ``path``, in order; with ``after``, only those
    below the first line equal to it (e.g. ``"## Sweeps"``). The docs' examples run as printed."""
    text = path.read_text()
    if after:
        text = text[text.index(f"\n{after}\n"):]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def relative_error(estimate, reference) -> float:
    """``||estimate - reference|| / ||reference||`` over whole pytrees (flattened)."""
    a, b = ravel_pytree(estimate)[0], ravel_pytree(reference)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def random_problem(seed, sizes=(6, 7, 5, 3), energy="smooth", gain=1.0, bias_scale=1.0, batch=4,
                   output_bounds=None, output_bias=0.0):
    """A float64 model, params with random biases (``output_bias`` added to the last layer's),
    inputs in [0, 1] and labels."""
    model = eqjax.models.hopfield(sizes, energy=energy, gain=gain, output_bounds=output_bounds)
    k_params, k_bias, k_x, k_y = jax.random.split(jax.random.key(seed), 4)
    params = model.init(k_params, dtype=jnp.float64)
    bias_keys = jax.random.split(k_bias, len(params["biases"]))
    params["biases"] = tuple(
        bias_scale * jax.random.normal(k, b.shape, jnp.float64) for k, b in zip(bias_keys, params["biases"])
    )
    params["biases"] = params["biases"][:-1] + (params["biases"][-1] + output_bias,)
    x = jax.random.uniform(k_x, (batch, sizes[0]), jnp.float64)
    y = jax.random.randint(k_y, (batch,), 0, sizes[-1])
    return model, params, x, y


@pytest.fixture
def tight_gd():
    """Gradient descent converged to float64 round-off, for gradient references."""
    return eqjax.solvers.GradientDescent(step_size=0.5, tol=1e-13, max_steps=20_000)


@pytest.fixture
def tight_bc():
    return eqjax.solvers.BlockCoordinate(tol=1e-13, max_steps=5_000)


def finite_difference_gradient(model, cost, solver, params, x, y, h=1e-5):
    """Central differences of the batch-mean free-phase loss along every parameter coordinate."""
    flat, unravel = ravel_pytree(params)

    def loss(f):
        eq = eqjax.relax_unchecked(model, cost, solver, unravel(f), x)
        return jnp.mean(jax.vmap(cost)(jax.vmap(model.output)(eq.state), y))

    directions = jnp.eye(flat.size, dtype=flat.dtype)
    fd = jax.jit(jax.vmap(lambda e: (loss(flat + h * e) - loss(flat - h * e)) / (2 * h)))(directions)
    return unravel(fd)


def run_on_forced_cpu_devices(code: str, count: int, timeout: int = 600):
    """Run ``code`` in a fresh Python with ``count`` forced CPU devices (from the project root);
    returns the JSON its last printed line holds (fails the test with its stderr otherwise)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_cifar(folder, per_batch, rng):
    """Generated CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) of ``per_batch``
    random images each in ``folder``; ``{name: (pixels (n, 3072) uint8, labels)}``."""
    folder.mkdir(parents=True)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": pixels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        expected[name] = (pixels, labels)
    return expected
