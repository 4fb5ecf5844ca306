"""Sweeps: every member equals its single run, one compile, diverging members isolated, devices."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax.estimators import EP
from conftest import run_on_forced_cpu_devices

MODEL = eqjax.models.hopfield((64, 16, 10), gain=0.5, output_bounds=(-jnp.inf, jnp.inf))
COST = eqjax.costs.squared_error()
SOLVER = eqjax.solvers.BlockCoordinate(tol=1e-5, max_steps=40)
X, Y = eqjax.synthetic.digits(jax.random.key(0), 96)
XS, YS = X.astype(jnp.float64).reshape(6, 16, 64), Y.reshape(6, 16)


def train(h, xs, ys):
    """One epoch of EP training from a seed: the sweep's member and the single run alike."""
    params = MODEL.init(jax.random.key(h["seed"]), jnp.float64)
    optimizer = optax.sgd(h["learning_rate"])
    epoch = eqjax.train_epoch(eqjax.train_step(MODEL, COST, optimizer))
    params, _, metrics = epoch(params, optimizer.init(params), SOLVER.replace(tol=h["tol"]),
                               EP(beta=h["beta"]), xs, ys)
    return {"params": params, "loss": metrics["loss"].mean(), "steps": metrics["free_steps"].mean()}


def single_run(grid, i):
    return jax.jit(train)({name: values[i].item() for name, values in grid.items()}, XS, YS)


def test_product_and_zipped_grids():
    grid = eqjax.sweep.product(beta=[0.1, 0.2], seed=[0, 1, 2])
    np.testing.assert_array_equal(grid["beta"], [0.1, 0.1, 0.1, 0.2, 0.2, 0.2])
    np.testing.assert_array_equal(grid["seed"], [0, 1, 2, 0, 1, 2])
    assert eqjax.sweep.num_members(eqjax.sweep.zipped(beta=[0.1, 0.2], seed=[3, 4])) == 2
    with pytest.raises(ValueError, match="equal lengths"):
        eqjax.sweep.zipped(beta=[0.1, 0.2], seed=[0])
    with pytest.raises(TypeError, match="must hold numbers"):
        eqjax.sweep.product(variant=["positive", "centered"])


def test_every_member_equals_its_single_run_and_the_sweep_compiles_once():
    traces = []

    def counted(h, xs, ys):
        traces.append(1)  # runs once per trace, not per member or call
        return train(h, xs, ys)

    grid = eqjax.sweep.product(beta=[0.1, -0.3], learning_rate=[0.02, 0.1], seed=[0, 1], tol=[1e-5, 1e-7])
    result = eqjax.sweep.run(counted, grid, XS, YS, members_per_call=5)  # 16 members in 4 calls, padded
    # one trace sizes a member (the default mode on CPU), one compiles the program; none per call
    assert len(traces) == (2 if jax.devices()[0].platform == "cpu" else 1)
    eqjax.sweep.run(counted, grid, XS, YS, members_per_call=5)  # a second run reuses both
    assert len(traces) == (2 if jax.devices()[0].platform == "cpu" else 1)
    assert result.ok.all() and result.outputs["loss"].shape == (16,)
    for i in (0, 5, 10, 15):  # members from every call
        single = single_run(grid, i)
        member = jax.tree.map(lambda leaf: leaf[i], result.outputs)
        # the same float64 arithmetic, batched over members: round-off apart
        chex.assert_trees_all_close(member, jax.tree.map(np.asarray, single), rtol=1e-9, atol=1e-12)
    assert result.best("loss") == int(np.argmin(result.outputs["loss"]))
    assert result.member(3) == {"beta": 0.1, "learning_rate": 0.02, "seed": 1, "tol": 1e-7}


def test_a_diverging_member_is_flagged_and_the_others_are_unchanged():
    # float64 weights take a huge rate to overflow: the loss grows like 1e40 at a rate of 1e3 and
    # reaches inf at 1e30
    grid = eqjax.sweep.zipped(beta=[0.2, 0.2, 0.2], learning_rate=[0.05, 1e30, 0.1], seed=[0, 0, 1], tol=[1e-5] * 3)
    result = eqjax.sweep.run(train, grid, XS, YS)
    np.testing.assert_array_equal(result.ok, [True, False, True])
    assert not np.isfinite(result.outputs["loss"][1])
    alone = eqjax.sweep.run(train, {k: v[[0, 2]] for k, v in grid.items()}, XS, YS)
    chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[[0, 2]], result.outputs), alone.outputs,
                                rtol=1e-12, atol=1e-14)  # the diverging member changes nothing else
    assert result.best("loss", mode="max") in (0, 2)  # never the diverged member
    with pytest.raises(ValueError, match="no member"):
        eqjax.sweep.run(train, {k: v[[1]] for k, v in grid.items()}, XS, YS).best("loss")


@pytest.mark.parametrize("vectorize", [2, 5])  # vmapped groups of 2 (the last one short), all 5 at once
def test_vmapped_members_equal_the_loop_over_members(vectorize):
    grid = eqjax.sweep.product(beta=[0.1, -0.3, 0.2, 0.5, 0.3], learning_rate=[0.05], seed=[0], tol=[1e-6])
    grid["seed"] = np.arange(5)
    looped = eqjax.sweep.run(train, grid, XS, YS, vectorize=1)  # what a single run computes
    vmapped = eqjax.sweep.run(train, grid, XS, YS, vectorize=vectorize)
    # a vmapped relaxation loop runs until its slowest member stops, but JAX keeps the members that
    # stopped where they stopped: the same steps, and the same float64 numbers up to round-off
    np.testing.assert_array_equal(vmapped.outputs["steps"], looped.outputs["steps"])
    chex.assert_trees_all_close(vmapped.outputs, looped.outputs, rtol=1e-9, atol=1e-12)


def test_the_default_mode_on_cpu_vmaps_small_members_and_loops_over_large_ones():
    # a member's loop state is its parameters (and optimizer and relaxation state) while it trains:
    # 64-32-10 is 2,400 weights, 784-1024-10 about 813,000 (3.3 MB in float32)
    def member(sizes):
        model = eqjax.models.hopfield(sizes, gain=0.5)

        def fn(h, x):
            params = model.init(jax.random.key(0), jnp.float32)
            step = lambda p, _: (jax.tree.map(lambda w: w * h["beta"], p), None)
            return jax.tree.leaves(jax.lax.scan(step, params, None, length=3)[0])[0].sum()

        return fn

    grid = {"beta": np.asarray([0.1, 0.2, 0.3, 0.4], np.float32)}
    small, large = member((64, 32, 10)), member((784, 1024, 10))
    x = jnp.zeros((4, 64))
    small_bytes = eqjax.sweep.loop_state_bytes(jax.make_jaxpr(small)({"beta": 0.1}, x).jaxpr)
    large_bytes = eqjax.sweep.loop_state_bytes(jax.make_jaxpr(large)({"beta": 0.1}, x).jaxpr)
    assert small_bytes == 4 * (64 * 32 + 32 * 10 + 32 + 10)  # float32 weights and biases
    assert large_bytes == 4 * (784 * 1024 + 1024 * 10 + 1024 + 10)
    cpu = jax.devices("cpu")[:1]
    assert eqjax.sweep._group_size(None, cpu, small, grid, (x,), 4) is None  # all vmapped
    assert eqjax.sweep._group_size(None, cpu, large, grid, (x,), 4) == 1  # one at a time
    assert eqjax.sweep._group_size(3, cpu, large, grid, (x,), 4) == 3  # the caller's choice wins


def test_input_field_batches_the_members_weights_without_moving_them():
    from eqjax.models.hopfield import input_field

    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (5, 7), jnp.float64)
    xs = jax.random.normal(keys[1], (3, 5, 7), jnp.float64)
    ws = jax.random.normal(keys[2], (3, 7, 4), jnp.float64)
    for axes, args in (((None, 0), (x, ws)), ((0, 0), (xs, ws)), ((0, None), (xs, ws[0]))):
        np.testing.assert_allclose(jax.vmap(input_field, axes)(*args), jax.vmap(jnp.matmul, axes)(*args),
                                   rtol=1e-13)  # float64 round-off of the same sums
    # the members' weights batched, the input shared: one batched product over the member axis
    # (each member's W read in place), not x against the stacked weights seen as one matrix
    (equation,) = [e for e in jax.make_jaxpr(jax.vmap(input_field, (None, 0)))(x, ws).eqns]
    products = [e for e in equation.params["call_jaxpr"].eqns if e.primitive.name == "dot_general"]
    assert [e.params["dimension_numbers"][1] for e in products] == [((0,), (0,))]
    # derivatives in both modes, also under vmap, equal those of x @ w
    loss = lambda product: lambda x, w: jnp.sum(jnp.sin(product(x, w)))
    for argnums in (0, 1):
        chex.assert_trees_all_close(jax.vmap(jax.grad(loss(input_field), argnums), (None, 0))(x, ws),
                                    jax.vmap(jax.grad(loss(jnp.matmul), argnums), (None, 0))(x, ws), rtol=1e-12)
    tangents = (0.3 * x, 2.0 * ws[0])
    np.testing.assert_allclose(jax.jvp(input_field, (x, ws[0]), tangents)[1],
                               jax.jvp(jnp.matmul, (x, ws[0]), tangents)[1], rtol=1e-12)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, "tests")
    import test_sweep as t
    import eqjax
    assert len(jax.devices()) == 4, jax.devices()
    grid = eqjax.sweep.product(beta=[0.1, 0.3], learning_rate=[0.02, 0.1], seed=[0, 1, 2], tol=[1e-6])
    one = eqjax.sweep.run(t.train, grid, t.XS, t.YS, devices=jax.devices()[:1])
    four = eqjax.sweep.run(t.train, grid, t.XS, t.YS, members_per_call=8)
    difference = max(float(abs(a - b).max()) for a, b in zip(jax.tree.leaves(one.outputs), jax.tree.leaves(four.outputs)))
    print(json.dumps({"difference": difference, "ok": bool(four.ok.all())}))
""")


def test_four_forced_cpu_devices_give_the_one_device_results():
    report = run_on_forced_cpu_devices(SHARDED, 4)
    assert report["ok"]
    assert report["difference"] < 1e-9, report  # float64; members split 8 + 4 (padded) over 4 devices


WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process,
                               initialization_timeout=120)
    sys.path.insert(0, "tests")
    import test_sweep as t
    import eqjax
    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    result = eqjax.sweep.run(t.train, t.MULTI_GRID, t.XS, t.YS)
    print(json.dumps({"loss": result.outputs["loss"].tolist(), "steps": result.outputs["steps"].tolist()}))
""")
MULTI_GRID = eqjax.sweep.product(beta=[0.1, 0.3], learning_rate=[0.02, 0.1], seed=[0], tol=[1e-6])


def test_two_processes_on_loopback_give_the_single_process_results():
    import socket

    with socket.socket() as probe:  # a free port on the loopback interface for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port)], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            worker.kill()
    single = eqjax.sweep.run(train, MULTI_GRID, XS, YS)
    for output in outputs:  # every process gets the whole result: the members of both devices
        np.testing.assert_allclose(output["loss"], single.outputs["loss"], rtol=1e-9)
        np.testing.assert_array_equal(output["steps"], single.outputs["steps"])
