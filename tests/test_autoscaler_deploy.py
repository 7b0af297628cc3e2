"""`up` deploys the autoscaler into the cluster and its code runs from what `up` shipped (issue 17 item 1).

The world is test_up_ready.py's: moto behind the AWS realism layer, the harness sshd as the
controller, the Kubernetes API emulator with its controllers, scheduler and kubelets as k3s.
`up` applies the autoscaler's code ConfigMap and manifest through the API (they are not in the
user-data); the tests observe the objects and the pod the emulator runs, re-run `up`, and run
the process from the zip `up` put in the cluster with only the lock's distributions importable.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from clusterous_provisioner import autoscale, code_bundle
from clusterous_provisioner.code_bundle import AUTOSCALER
from tests.test_autoscale_cluster import _app, _available, _workers
from tests.test_up_ready import UP, cluster_side  # noqa: F401 - a fixture

NS = "clusterous-system"
NAME = "clusterous-autoscaler"
RBAC = (
    ("v1/serviceaccounts", NS),
    ("rbac.authorization.k8s.io/v1/clusterroles", None),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", None),
    ("rbac.authorization.k8s.io/v1/roles", NS),
    ("rbac.authorization.k8s.io/v1/rolebindings", NS),
)


def _pods(k8s_api) -> list[dict]:
    return [
        p
        for p in k8s_api.list("v1/pods", NS)
        if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == NAME
        and not p["metadata"].get("deletionTimestamp")
    ]


def _running_hash(k8s_api) -> str | None:
    """The code hash of the one running autoscaler pod, if exactly one runs."""
    running = [p for p in _pods(k8s_api) if (p.get("status") or {}).get("phase") == "Running"]
    if len(running) != 1:
        return None
    return (running[0]["metadata"].get("annotations") or {}).get(code_bundle.HASH_ANNOTATION)


def test_up_deploys_the_autoscaler_keeps_it_on_a_rerun_and_rolls_it_for_new_code(
    cluster_side,  # noqa: F811 - the imported fixture
    aws,
    k8s_api,
    cli,
    tmp_path,
) -> None:
    result = cli([*UP, "--workers", "1", "--timeout", "30"])  # no bounds: deployed all the same
    assert result.exit_code == 0, result.output
    assert "autoscaler created" in result.stderr
    code = k8s_api.get("v1/configmaps", AUTOSCALER.configmap, NS)
    assert base64.b64decode(code["binaryData"][AUTOSCALER.zip_name]) == AUTOSCALER.zip()
    assert code["data"][code_bundle.LOCK_KEY] == AUTOSCALER.lock_text()
    deployment = k8s_api.get("apps/v1/deployments", NAME, NS)
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"][code_bundle.HASH_ANNOTATION] == AUTOSCALER.code_hash()
    for resource, namespace in RBAC:
        assert k8s_api.get(resource, NAME, namespace), resource
    # the emulator's scheduler put it on the controller, past its CriticalAddonsOnly taint
    (pod,) = _pods(k8s_api)
    assert pod["status"]["phase"] == "Running"
    node = k8s_api.get("v1/nodes", pod["spec"]["nodeName"])
    assert "node-role.kubernetes.io/control-plane" in node["metadata"]["labels"]

    again = cli([*UP, "--workers", "1", "--timeout", "30"])  # converged: nothing rewritten
    assert again.exit_code == 0, again.output
    assert "autoscaler unchanged" in again.stderr
    assert (
        k8s_api.get("apps/v1/deployments", NAME, NS)["metadata"]["resourceVersion"]
        == (deployment["metadata"]["resourceVersion"])
    )
    assert [p["metadata"]["name"] for p in _pods(k8s_api)] == [pod["metadata"]["name"]]

    # What an older CLI left: its code and a Deployment whose pods run that code.
    old = {"metadata": {"annotations": {code_bundle.HASH_ANNOTATION: "0ld0ld0ld0ld0ld0"}}}
    k8s_api.patch("v1/configmaps", AUTOSCALER.configmap, old, NS)
    k8s_api.patch(
        "apps/v1/deployments",
        NAME,
        {"metadata": {"annotations": {"clusterous.io/applied-hash": "older"}}, "spec": {"template": old}},
        NS,
    )
    k8s_api.wait_for(lambda: _running_hash(k8s_api) == "0ld0ld0ld0ld0ld0", 15, "the older code running")
    newer = cli([*UP, "--workers", "1", "--timeout", "30"])
    assert newer.exit_code == 0, newer.output
    assert "autoscaler updated" in newer.stderr
    k8s_api.wait_for(
        lambda: _running_hash(k8s_api) == AUTOSCALER.code_hash(), 15, "the pod rolled to the new code"
    )
    code = k8s_api.get("v1/configmaps", AUTOSCALER.configmap, NS)
    assert code["metadata"]["annotations"][code_bundle.HASH_ANNOTATION] == AUTOSCALER.code_hash()

    # Without elastic groups there is no record: the process idles, asking AWS nothing.
    before = len(aws.realism.requests())
    run = _run_shipped(k8s_api, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "round failed" not in run.stdout
    made = aws.realism.requests()[before:]
    # not one AWS request (FakeK3s, k3s' stand-in, keeps describing instances meanwhile)
    assert [s.operation for s in made if s.operation != "DescribeInstances"] == []


def _locked_site(directory: Path) -> Path:
    """A folder holding only the autoscaler lock's distributions (links into this environment's
    site-packages): with `python -S -I` and the zip, nothing else is importable."""
    directory.mkdir()
    for name in AUTOSCALER.read_lock():
        dist = importlib.metadata.distribution(name)
        tops = {str(f).split("/")[0] for f in dist.files or []}
        for top in sorted(tops):
            if top.endswith((".dist-info", ".pth")) or top in ("..", "__pycache__", "bin"):
                continue
            target = Path(str(dist.locate_file(top)))
            if target.exists() and not (directory / top).exists():
                (directory / top).symlink_to(target)
    return directory


def _run_shipped(k8s_api, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m clusterous_provisioner.autoscaler --once` from the zip `up` put in the cluster."""
    shipped = k8s_api.get("v1/configmaps", AUTOSCALER.configmap, NS)["binaryData"][AUTOSCALER.zip_name]
    archive = tmp_path / AUTOSCALER.zip_name
    archive.write_bytes(base64.b64decode(shipped))
    site = _locked_site(tmp_path / "site")
    probe = (
        f"import sys, runpy; sys.path[:0] = [{str(site)!r}, {str(archive)!r}]; "
        "import clusterous_provisioner as p; "  # the package from the zip, not from this checkout
        f"assert p.__file__.startswith({str(archive)!r}), p.__file__; "
        "sys.argv[0] = 'autoscaler'; runpy.run_module('clusterous_provisioner.autoscaler', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("BOTOCORE_EXPERIMENTAL__PLUGINS", "PYTHONPATH")}
    argv = [sys.executable, "-S", "-I", "-c", probe, "--once", "--kubeconfig", str(k8s_api.kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_the_shipped_zip_and_the_locked_distributions_alone_run_a_round(
    cluster_side,  # noqa: F811 - the imported fixture
    aws,
    k8s_api,
    cli,
    tmp_path,
) -> None:
    result = cli([*UP, "--workers", "0..3", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    _app(k8s_api, 3, cpu="900m")  # two t3.large workers' worth, in a group at zero

    def waiting() -> bool:
        return sum(1 for p in k8s_api.list("v1/pods", "default") if autoscale.unschedulable_message(p)) == 3

    k8s_api.wait_for(waiting, 15, "three pods with no node of their group")
    run = _run_shipped(k8s_api, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worker: grow 2: 3 pod(s) unschedulable" in run.stdout, run.stdout
    assert len(_workers(aws)) == 2
    k8s_api.wait_for(lambda: _available(k8s_api) == 3, 15, "the app on the new nodes")
