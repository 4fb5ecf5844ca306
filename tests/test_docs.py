"""The documentation: every public name has a docstring, and the site builds with --strict."""

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eqjax

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["analog", "analog.memristors", "costs", "data", "estimators", "images", "loop", "models", "parallel",
           "phases", "solvers", "sweep", "synthetic", "testing", "verify"]


def public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__ and (inspect.isfunction(v) or inspect.isclass(v))]
    return names


def undocumented():
    import importlib

    missing = []
    modules = [eqjax] + [importlib.import_module(f"eqjax.{m}") for m in MODULES]
    for module in modules:
        if not (module.__doc__ or "").strip():
            missing.append(module.__name__)
        for name in public_names(module):
            value = getattr(module, name)
            if inspect.ismodule(value):
                continue
            if (inspect.isfunction(value) or inspect.isclass(value)) and not (value.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(value):
                for attr, member in vars(value).items():
                    # an override of a documented interface method inherits its docstring
                    if not attr.startswith("_") and inspect.isfunction(member) and not inspect.getdoc(getattr(value, attr)):
                        missing.append(f"{module.__name__}.{name}.{attr}")
    return sorted(set(missing))


def test_every_public_name_has_a_docstring():
    assert undocumented() == []


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="the docs extra is not installed (make docs installs it)")
def test_the_site_builds_with_strict(tmp_path):
    mkdocs = str(Path(sys.executable).parent / "mkdocs")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "entry-points" / "index.html").stat().st_size > 10_000
