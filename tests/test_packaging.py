"""`pip install .` gives a working tool: the wheel carries the add-ons, chart and scripts `up`
needs, and never a top-level `operator` package (it would shadow the standard library)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return zipfile.ZipFile(next(out.glob("clusterous_k8s-*.whl")))


def test_wheel_has_the_four_packages_and_no_operator_package(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist() if not name.startswith("clusterous_k8s-")}
    assert tops == {"clusterous_core", "clusterous_cli", "clusterous_provisioner", "clusterous_operator"}


def test_wheel_carries_every_chart_manifest_and_script_file(wheel):
    names = set(wheel.namelist())
    for folder, inside in (
        ("charts", "clusterous_provisioner/charts"),
        ("manifests", "clusterous_provisioner/manifests"),
    ):
        for path in (REPO / folder).rglob("*"):
            if path.is_file():
                assert f"{inside}/{path.relative_to(REPO / folder).as_posix()}" in names, path
    for script in (REPO / "provisioner/clusterous_provisioner/scripts").glob("*.sh"):
        assert f"clusterous_provisioner/scripts/{script.name}" in names


def test_wheel_declares_the_console_script_and_the_operator_extra(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "clusterous-k8s = clusterous_cli.main:main" in wheel.read(entry_points).decode()
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith("/METADATA"))).decode()
    assert "Provides-Extra: operator" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not any(line.startswith("Requires-Dist: kopf") and "extra" not in line for line in requires)
