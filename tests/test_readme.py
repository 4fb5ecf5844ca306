"""The README's example runs as printed, and its claim of one compile holds."""

from pathlib import Path

from conftest import python_blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_example_runs_and_compiles_the_epoch_once():
    code = python_blocks(README, after="## Example")[0]
    namespace = {}
    exec(code, namespace)  # noqa: S102 - the README's code as a user would paste it
    # 21 epochs with two beta values and two learning rates: one trace of the epoch
    assert namespace["epoch"]._cache_size() == 1
    assert float(namespace["aux"].free.converged.mean()) > 0.9
    assert float(namespace["metrics"]["accuracy"].mean()) > 0.85  # training accuracy; chance is 0.1


def test_readme_sweep_example_runs_on_its_own():
    sweep = python_blocks(README, after="## Sweeps")[0]
    namespace = {}
    exec(sweep, namespace)  # noqa: S102 - the README's sweep as a user would paste it, alone
    result = namespace["result"]
    assert result.ok.all() and result.outputs["loss"].shape == (16,)


def test_readme_verification_example_runs():
    code = python_blocks(README, after="## Learning rules and gradient checks")[0]
    namespace = {}
    exec(code, namespace)  # noqa: S102
    assert bool(namespace["check"].passed)
    assert abs(namespace["curve"].slope - 3) < 0.3  # holomorphic EP with 3 phases: O(beta^3)
    assert float(namespace["steps"].param_relative_error.max()) < 1e-3


def test_every_readme_and_site_snippet_runs_on_its_own():
    # the README's three above are run (and checked) by the tests above; the others here
    assert len(python_blocks(README)) == 4
    devices = python_blocks(README)[3]
    namespace = {}
    exec(devices, namespace)  # noqa: S102
    assert callable(namespace["optimizer"].update)
    (home,) = python_blocks(ROOT / "docs" / "index.md")
    namespace = {}
    exec(home, namespace)  # noqa: S102 - the site's home page example, as printed
    assert float(namespace["metrics"]["accuracy"][-10:].mean()) > 0.85  # training accuracy; chance is 0.1
