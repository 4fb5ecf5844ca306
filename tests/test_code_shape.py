"""The shape of the code base: short functions, programs that do not import each other."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"backprop", "bias", "eval_budget", "memristors", "noise", "rules", "sweep", "train"}  # experiments/ with a main
MAX_LINES = 60


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{path.relative_to(ROOT)}:{name} ({lines} lines)"
            for folder in ("eqjax", "experiments") for path in sorted((ROOT / folder).rglob("*.py"))
            for name, lines in functions(path) if lines > MAX_LINES]
    assert long == []


def imported_experiments(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "experiments":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
            names.add(node.module.split(".")[1])
    return names


def test_programs_import_shared_modules_never_another_program():
    programs = {path.stem for path in (ROOT / "experiments").glob("*.py") if "def main(" in path.read_text()}
    assert programs == PROGRAMS  # a new program joins the list (and imports only shared modules)
    crossing = {path.stem: imported_experiments(path) & PROGRAMS
                for path in (ROOT / "experiments").glob("*.py")}
    assert {name: sorted(found) for name, found in crossing.items() if found} == {}


def test_former_names_the_readme_taught_still_work_with_a_deprecation_warning():
    import warnings

    import eqjax

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert eqjax.analog.devices is eqjax.analog.memristors
        assert eqjax.parallel.train_step is eqjax.parallel.sharded_train_step
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert "memristors" in str(caught[0].message) and "sharded_train_step" in str(caught[1].message)
