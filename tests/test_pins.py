"""kopf and kubernetes as the cluster runs them: one lock, used by the operator pod, its image and CI.

`operator/clusterous_operator/requirements.txt` is the operator's lock. The pod installs it
(`operator_bundle.REQUIREMENTS`, rendered into the operator Deployment), the Dockerfile installs
it, and `.ci/run` installs the project with it as pip's constraints file (`-c`), so the tests
exercise exactly the kopf and kubernetes the cluster runs. These tests fail when any of the four
drift apart — including an environment where other versions were installed by hand.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import kopf  # noqa: F401 - imported, not skipped: a broken install fails here
import kubernetes  # noqa: F401
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from clusterous_provisioner import addons, operator_bundle

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "operator" / "clusterous_operator" / operator_bundle.LOCK_FILE


def lock() -> dict[str, str]:
    pins = {}
    for line in operator_bundle.read_lock():
        name, _, version = line.partition("==")
        assert version and re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not name==version: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_kopf_kubernetes_and_pyyaml_exactly():
    assert set(lock()) == {"kopf", "kubernetes", "pyyaml"}
    assert operator_bundle.REQUIREMENTS == tuple(f"{name}=={version}" for name, version in lock().items())


def test_the_installed_versions_are_the_locked_ones():
    """What these tests import is what the operator pod installs."""
    installed = {name: importlib.metadata.version(name) for name in lock()}
    assert installed == lock(), (
        f"installed {installed}, the operator's lock says {lock()}: "
        f"pip install -c {LOCK.relative_to(REPO)} -e '.[test]'"
    )


def test_ci_installs_with_the_lock_as_constraints():
    script = (REPO / ".ci" / "run").read_text()
    installs = [line for line in script.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert any(f"-c {LOCK.relative_to(REPO)}" in line and ".[test]" in line for line in installs), installs


def test_the_operator_image_installs_the_same_lock():
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    assert f"COPY clusterous_operator/{operator_bundle.LOCK_FILE} " in dockerfile
    assert re.search(r"pip install -r \S*requirements\.txt", dockerfile)
    assert "==" not in dockerfile  # no second set of pins


def test_the_operator_deployment_installs_the_lock():
    """The pod's start script pip-installs CLUSTEROUS_OPERATOR_REQUIREMENTS: the lock's lines."""
    inputs = SimpleNamespace(
        cluster_name="pins", region="us-east-1", bucket="b", bucket_region=None, k3s_version="v1.33.1+k3s1",
        controller_ip="10.0.0.5", logging_level=0,
    )  # fmt: skip
    filled = addons.fill(addons.template("operator.yaml"), addons.values_for(inputs), "operator.yaml")
    (deployment,) = [d for d in yaml.safe_load_all(filled) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLUSTEROUS_OPERATOR_REQUIREMENTS"].split() == list(operator_bundle.REQUIREMENTS)


def test_the_project_ranges_admit_the_locked_versions():
    """pyproject's ranges (what `pip install .` accepts) must include what CI pins."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    for text in declared:
        requirement = Requirement(text)
        pinned = lock().get(canonicalize_name(requirement.name))
        if pinned:
            assert requirement.specifier.contains(pinned), f"{text} excludes the locked {pinned}"
