"""The size rules of issue 16 item 6, checked on the source itself: no module over 500 lines in
cli/, provisioner/ or operator/, and no function over 60 lines unless it is listed below with
its reason. A function's length counts from its first statement after the docstring to its
end: the signature (a typer command's options) and the docstring are declarations, not logic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "cli", "provisioner", "operator")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Modules over the limit while a split is under way (none: issue 16 emptied the list). An entry
# that is no longer over its limit fails test_lists_name_only_offenders.
BEING_SPLIT_MODULES: set[str] = set()
BEING_SPLIT_FUNCTIONS: set[str] = set()

# Longer than MAX_FUNCTION_LINES for good: the reason, in one line.
LONG_FUNCTIONS = {
    "cli/clusterous_cli/buildjob.py::build_job": (
        "a pure builder: the BuildKit Job manifest as one literal, read top to bottom like its YAML"
    ),
    "cli/clusterous_cli/commands/cluster.py::up": (
        "23 options mapped onto one UpRequest and Hooks, then the wait and the output; the "
        "sequence itself is lifecycle.up"
    ),
    "provisioner/clusterous_provisioner/apply.py::apply": (
        "the create order, read top to bottom; each step is a call into its own module"
    ),
    "cli/clusterous_cli/commands/setup.py::setup": (
        "the setup dialogue: profile, region, key pair, bucket asked in the order the user answers them"
    ),
}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _key(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_lengths() -> dict[str, int]:
    return {_key(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}


def function_lengths() -> dict[str, int]:
    """'path::qualname' of every function and method (nested ones too) -> its length."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                body = child.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]  # the docstring
                end = child.end_lineno or child.lineno
                lengths[f"{path}::{prefix}{child.name}"] = end - body[0].lineno + 1 if body else 0
                visit(child, path, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.")
            else:
                visit(child, path, prefix)

    for p in _modules():
        visit(ast.parse(p.read_text(encoding="utf-8"), filename=str(p)), _key(p), "")
    return lengths


def test_the_rules_see_every_package():
    lengths = module_lengths()
    for package in PACKAGES:
        assert any(key.startswith(f"{package}/") for key in lengths), package
    assert "cli/clusterous_cli/main.py::main" in function_lengths()


def test_no_module_over_500_lines():
    over = {
        k: n for k, n in module_lengths().items() if n > MAX_MODULE_LINES and k not in BEING_SPLIT_MODULES
    }
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {over}"


def test_no_function_over_60_lines_without_a_reason():
    listed = BEING_SPLIT_FUNCTIONS | LONG_FUNCTIONS.keys()
    over = {k: n for k, n in function_lengths().items() if n > MAX_FUNCTION_LINES and k not in listed}
    assert not over, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them, or add them to LONG_FUNCTIONS "
        f"in {Path(__file__).name} with the reason): {over}"
    )


@pytest.mark.parametrize(
    "kind, listed, limit",
    [
        ("module", BEING_SPLIT_MODULES, MAX_MODULE_LINES),
        ("function", BEING_SPLIT_FUNCTIONS | LONG_FUNCTIONS.keys(), MAX_FUNCTION_LINES),
    ],
)
def test_lists_name_only_offenders(kind, listed, limit):
    """An entry whose module or function is gone or back under the limit must leave the list."""
    lengths = module_lengths() if kind == "module" else function_lengths()
    stale = sorted(k for k in listed if lengths.get(k, 0) <= limit)
    assert not stale, f"no longer over {limit} lines: remove from the {kind} lists: {stale}"


def test_every_long_function_has_a_reason():
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in LONG_FUNCTIONS.values())
