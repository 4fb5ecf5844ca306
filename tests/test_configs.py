"""Every named training configuration builds and trains: its hyperparameters, solver, estimator and
optimizer run one chunk of two batches (on narrow layers, to keep compilation short)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs

NARROW = 12  # hidden units per layer in this test instead of 100-1024


# the CIFAR-10 configs compile 4-layer conv nets (30-40 s each): make test-slow; conv-fmnist keeps
# the conv path in the default suite
ACCELERATOR_CONFIGS = ("conv-cifar10", "dchn-cifar10")


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in ACCELERATOR_CONFIGS else name
                                  for name in sorted(configs.CONFIGS)])
def test_config_trains_one_chunk(name):
    config = configs.named(name, batches_per_epoch=2)
    sizes = config.sizes
    config = config.updated(sizes=[sizes[0]] + [NARROW] * (len(sizes) - 2) + [sizes[-1]],
                            batch_size=min(config.batch_size, 32))  # conv-cifar10's 128 images of 32x32x3 take 20 s
    model, cost, solver, estimator, optimizer = configs.build(config)
    chunk = configs.chunk_function(config, model, cost, optimizer)
    batch, num_examples = config.batch_size, 2 * config.batch_size
    x = jax.random.uniform(jax.random.key(0), (num_examples, config.sizes[0]), jnp.float32)  # as MNIST
    y = jax.random.randint(jax.random.key(1), (num_examples,), 0, 10)
    index = jnp.arange(num_examples).reshape(2, batch)
    params = model.init(jax.random.key(2), jnp.float32)
    state = configs.initial_state(config, model, num_examples)
    new, _, _, metrics = chunk(params, optimizer.init(params), state, solver, estimator, x[index], y[index], index,
                               jax.random.split(jax.random.key(3), 2))
    params = model.init(jax.random.key(2), jnp.float32)  # the chunk took the first copy (donated)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values()), name
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, params)
    assert any(jax.tree.leaves(changed)), f"{name}: one chunk changed no parameter"
    if config.family == "resistive":
        assert all(float(g.min()) >= 0.0 for g in new["conductances"])  # kept physical


def test_estimator_option():
    base = configs.named("drn-xs", batches_per_epoch=1)
    kinds = {kind: type(configs.build(base.updated(estimator=kind))[3]).__name__ for kind in ("ep", "implicit", "bptt")}
    assert kinds == {"ep": "EP", "implicit": "ImplicitDiff", "bptt": "BPTT"}
    with pytest.raises(ValueError, match="estimator must be"):
        configs.build(base.updated(estimator="backprop"))
    np.testing.assert_equal(configs.build(base.updated(estimator="bptt"))[3].num_steps, base.free_steps)
