"""The common core (core/clusterous_core) is imported by the CLI at every start and by the
operator in the cluster: it must stay cheap, importing nothing heavy until a file is read."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("yaml", "pydantic", "boto3", "botocore", "typer", "rich", "kubernetes", "kopf")


def test_importing_the_core_loads_nothing_heavy():
    probe = (
        "import sys\n"
        "import clusterous_core, clusterous_core.errors, clusterous_core.names\n"
        "import clusterous_core.validation, clusterous_core.yamlfile\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_core_imports_no_other_clusterous_package():
    """cli, provisioner and operator import the core; the core imports none of them."""
    import ast
    from pathlib import Path

    import clusterous_core

    for path in Path(clusterous_core.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [
                n for n in names if n.startswith("clusterous_") and not n.startswith("clusterous_core")
            ], path
