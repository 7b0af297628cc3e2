"""kopf and kubernetes as the cluster runs them: one lock, used by the operator pod, its image and CI.

`operator/clusterous_operator/requirements.txt` is the operator's lock: every distribution of
the closure of kopf, kubernetes and pyyaml, each with the sha256 of its wheels. The pod installs
it with `pip install --require-hashes` once per lock hash into a cache on the controller
(operator-start.sh, run here with a recording stand-in for python), the Dockerfile installs it
the same way, and `.ci/run` installs the project with it (hashes stripped) as pip's constraints
file, so the tests exercise exactly what the cluster runs. These tests fail when any of them
drift apart — including an environment where other versions were installed by hand.
"""

from __future__ import annotations

import hashlib
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

from clusterous_provisioner import addons, code_bundle
from tests.addons_support import run_start_script
from tests.lock_support import assert_hashed_and_closed, locked_versions

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "operator" / "clusterous_operator" / code_bundle.OPERATOR.lock_file


def lock() -> dict[str, str]:
    return locked_versions(code_bundle.OPERATOR)


def test_the_lock_pins_the_closure_of_kopf_kubernetes_and_pyyaml_with_hashes():
    assert set(code_bundle.OPERATOR.direct) <= set(lock())
    assert (
        tuple(f"{name}=={lock()[name]}" for name in code_bundle.OPERATOR.direct)
        == code_bundle.OPERATOR.requirements()
    )
    assert_hashed_and_closed(code_bundle.OPERATOR)


def test_the_installed_versions_are_the_locked_ones():
    """What these tests import is what the operator pod installs."""
    installed = {name: importlib.metadata.version(name) for name in lock()}
    assert installed == lock(), (
        f"installed {installed}, the operator's lock says {lock()}: "
        f"pip install -c <(sed '/--hash=/d; s/ *\\\\$//' {LOCK.relative_to(REPO)}) -e '.[test]'"
    )


def test_ci_installs_with_the_lock_as_constraints():
    script = (REPO / ".ci" / "run").read_text()
    installs = [line for line in script.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert any("-c <(sed -e '/--hash=/d'" in line and f"{LOCK.relative_to(REPO)})" in line and ".[test]" in line
               for line in installs), installs  # fmt: skip


def test_the_operator_image_is_the_deployments_pinned_by_digest_and_installs_the_lock_with_hashes():
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    assert f"FROM {code_bundle.PYTHON_IMAGE}\n" in dockerfile
    assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", code_bundle.PYTHON_IMAGE)
    assert f"COPY operator/clusterous_operator/{code_bundle.OPERATOR.lock_file} " in dockerfile
    assert re.search(
        r"pip install --require-hashes --no-deps --only-binary=:all: -r \S*requirements\.txt", dockerfile
    )
    assert "==" not in dockerfile  # no second set of pins


def rendered_operator() -> list[dict]:
    inputs = SimpleNamespace(
        cluster_name="pins", region="us-east-1", bucket="b", bucket_region=None, k3s_version="v1.33.1+k3s1",
        controller_ip="10.0.0.5", logging_level=0,
    )  # fmt: skip
    filled = addons.fill(addons.template("operator.yaml"), addons.values_for(inputs), "operator.yaml")
    return [d for d in yaml.safe_load_all(filled) if d]


def test_the_operator_deployment_runs_the_pinned_image_and_gets_the_lock_with_its_code():
    (deployment,) = [d for d in rendered_operator() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == code_bundle.PYTHON_IMAGE
    configmap = code_bundle.OPERATOR.configmap_body()
    assert configmap["data"][code_bundle.OPERATOR.lock_file] == LOCK.read_text()  # what start.sh installs
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["code"]["configMap"]["name"] == code_bundle.OPERATOR.configmap
    assert mounts["code"] == "/opt/clusterous/code" and "hostPath" in volumes["site"]  # the cache survives


def start_operator(tmp_path: Path, lock_text: str) -> list[str]:
    return run_start_script(tmp_path, code_bundle.OPERATOR, lock_text)


def test_the_pod_installs_the_lock_with_hashes_once_per_lock_hash(tmp_path):
    lock_text = code_bundle.OPERATOR.lock_text()
    start_operator(tmp_path, lock_text)
    lines = start_operator(tmp_path, lock_text)  # a restart: the cache on the host is used
    installs = [line for line in lines if " pip install " in line]
    assert len(installs) == 1
    assert (
        "--require-hashes" in installs[0]
        and "--no-deps" in installs[0]
        and "--only-binary=:all:" in installs[0]
    )
    assert f"-r {tmp_path}/code/{code_bundle.OPERATOR.lock_file} PYTHONPATH=" in installs[0]
    assert (tmp_path / "site" / f"site-{code_bundle.OPERATOR.lock_hash()}" / ".complete").exists()
    assert code_bundle.OPERATOR.lock_hash() == hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    runs = [line for line in lines if " kopf run " in line]
    assert len(runs) == 2 and f"-m {code_bundle.OPERATOR.argv[-1]} PYTHONPATH=" in runs[0]
    lines = start_operator(tmp_path, lock_text + "# a new version\n")  # a new lock: installed anew
    assert len([line for line in lines if " pip install " in line]) == 2


def test_rbac_writes_only_in_the_application_namespace():
    docs = rendered_operator()
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    writes = {"create", "update", "patch", "delete"}
    cluster_writes = {
        (group, resource)
        for rule in cluster_role["rules"]
        if writes & set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert cluster_writes == {("kopf.dev", "clusterkopfpeerings")}  # kopf's peering only
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] != "clusterous-system"]
    (binding,) = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] != "clusterous-system"
    ]
    # In its own namespace it reads one thing: the autoscaler's record (groups at zero exist).
    (own,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "clusterous-system"]
    assert own["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["autoscaler"], "verbs": ["get"]}
    ]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    from clusterous_cli.apps import NAMESPACE  # where `run` applies every ClusterApp

    assert (
        role["metadata"]["namespace"]
        == binding["metadata"]["namespace"]
        == env["CLUSTEROUS_APP_NAMESPACE"]
        == NAMESPACE
    )
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert {"create", "delete"} <= granted[("apps", "deployments")] & granted[("", "services")]
    assert {"patch"} <= granted[("clusterous.io", "clusterapps/status")] & granted[
        ("clusterous.io", "clusterapps")
    ]
    assert not any("*" in verbs or "*" in key for key, verbs in granted.items())


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
