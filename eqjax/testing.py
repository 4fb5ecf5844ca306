"""Helpers for the tests of code built on eqjax."""

from __future__ import annotations

from eqjax import _api


def compilations() -> dict:
    """``{"relax": n, "gradients": n, "evaluate": n, "error_rate": n}``: how many programs each
    jitted entry point has compiled in this process (one per distinct static signature: shapes,
    dtypes, static fields, ``throw``). A test that changes only traced values (``beta``, step
    sizes, tolerances, learning rates) can assert that a count does not grow."""
    cores = {"relax": _api._relax, "gradients": _api._estimate, "evaluate": _api._evaluate,
             "error_rate": _api._error_rate}
    return {name: core._cache_size() for name, core in cores.items()}
