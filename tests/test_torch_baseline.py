"""The PyTorch baseline of `make bench` (benchmarks/torch_ep.py) relaxes the same sweeps as eqjax:
the timing comparison is only meaningful if both compute the same thing. Needs torch (the bench
extra, `pip install -e '.[bench]'`); skipped without it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqjax
from eqjax.phases import Nudge

torch = pytest.importorskip("torch")


def test_torch_baseline_sweeps_equal_eqjax_fixed_point_sweeps():
    from benchmarks.torch_ep import ConvEP

    image, channels, kernel, padding, batch, beta, sweeps = (8, 8, 2), (3, 4), 3, 1, 5, 0.3, 4
    model = eqjax.models.conv_hopfield(image, channels, kernel=kernel, padding=padding, pooling="max",
                                       readout="hopfield", output_bounds=(-math.inf, math.inf), num_classes=3)
    keys = jax.random.split(jax.random.key(0), 5)
    params = model.init(keys[0], jnp.float64)
    params["biases"] = tuple(0.3 * jax.random.normal(k, b.shape, jnp.float64)
                             for k, b in zip(jax.random.split(keys[1], 3), params["biases"]))
    x = jax.random.uniform(keys[2], (batch, math.prod(image)), jnp.float64)
    y = jax.random.randint(keys[3], (batch,), 0, 3)
    # a start state inside the box away from zero, so that no pooling window has tied maxima (the
    # baseline sends a tie's field to one position, eqjax splits it)
    start = tuple(jax.random.uniform(k, (batch, *shape), jnp.float64, 0.05, 0.95)
                  for k, shape in zip(jax.random.split(keys[4], 3), model.layer_shapes))
    solver = eqjax.solvers.FixedPoint(tol=0.0, max_steps=sweeps, check_every=sweeps)
    expected = eqjax.relax_unchecked(model, eqjax.costs.squared_error(), solver, params, x, y, Nudge(beta=beta), start).state

    baseline = ConvEP(image, channels, kernel, padding, num_classes=3)
    as_torch = lambda a: torch.from_numpy(np.array(a))
    baseline.kernels = [as_torch(w).permute(3, 2, 0, 1) for w in params["weights"][:2]]  # HWIO -> OIHW
    baseline.biases = [as_torch(b) for b in params["biases"][:2]]
    height, width, last = model.layer_shapes[1]  # eqjax flattens (H, W, C), torch (C, H, W)
    baseline.readout = as_torch(params["weights"][2].reshape(height, width, last, 3).transpose(2, 0, 1, 3).reshape(-1, 3))
    baseline.readout_bias = as_torch(params["biases"][2])
    nchw = lambda a: as_torch(a).permute(0, 3, 1, 2)
    images = nchw(x.reshape(batch, *image))
    drive = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(images, baseline.kernels[0], padding=padding), 2)
    target = torch.nn.functional.one_hot(as_torch(y).long(), 3).double()
    state = baseline.relax([nchw(start[0]), nchw(start[1]), as_torch(start[2])], drive, beta, target, sweeps)
    for got, want in zip(state, expected):
        got = got.permute(0, 2, 3, 1) if got.ndim == 4 else got
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=0, atol=1e-12)  # float64: round-off only
