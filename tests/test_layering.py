"""The packages' arrows point one way (DESIGN §2): the CLI may import the provisioner and the
operator, the provisioner never the CLI (the in-cluster autoscaler ships without it), the
operator neither of them nor the AWS SDK. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "provisioner/clusterous_provisioner": ("clusterous_cli",),
    "operator/clusterous_operator": ("clusterous_cli", "clusterous_provisioner", "boto3", "botocore"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_may_not(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert wrong == []
