"""The cluster add-ons k3s would have applied at boot, for tests that start from a ready cluster.

Tests that run `up` get them from the controller's user-data (FakeK3s in test_up_ready); tests
that start later (the operator, `run`) apply the pieces they rely on from the same manifests.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from clusterous_provisioner import addons
from clusterous_provisioner.bootstrap import BootstrapInputs, render_manifests
from tests.harness.k8s_admission import service_account_kubeconfig

CONTROLLER_IP = "10.0.0.10"
OPERATOR_ACCOUNT = ("clusterous-system", "clusterous-operator")


def create_documents(api, text: str) -> None:
    """Create every object of a multi-document manifest, as k3s's auto-deploy applies it."""
    for doc in yaml.safe_load_all(text):
        if doc:
            create_document(api, doc)


def create_document(api, doc: dict) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    kind = doc["kind"]

    def plural_of(emulator) -> str:
        for resource, info in emulator.resources.items():
            if (resource.group, resource.version, info.kind) == (group, version, kind) and "/" not in (
                resource.plural or "/"
            ):
                return resource.plural
        raise KeyError(doc["apiVersion"], kind)

    plural = api.call(plural_of)
    spec = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
    api.create(spec, doc, doc["metadata"].get("namespace"))


def rendered_manifest(name: str) -> str:
    """One add-on manifest as `up` renders it for a sample cluster."""
    inputs = BootstrapInputs(
        cluster_name="demo",
        region="eu-west-1",
        k3s_version="v1.33.5+k3s1",
        agent_token="K10c0ffee-s3cr3t-t0ken-0123456789abcdef::server:feedface",
        controller_ip="10.42.1.10",
        vpc_cidr="10.42.0.0/16",
        shared_volume_id="vol-0abc123def4567890",
        bucket="clusterous-123456789012-eu-west-1",
        node_groups=["master", "worker"],
    )
    return render_manifests(inputs)[name]


def operator_account(api) -> Path:
    """The operator's namespace, ServiceAccount and RBAC from manifests/operator.yaml (nothing
    else of it: the operator runs in the test); a kubeconfig acting as that account."""
    create_documents(api, rendered_manifest("namespace.yaml"))
    text = rendered_manifest("operator.yaml")
    rbac = [
        d
        for d in yaml.safe_load_all(text)
        if d and (d["kind"] == "ServiceAccount" or d["apiVersion"].startswith("rbac.authorization.k8s.io/"))
    ]
    for doc in rbac:
        create_document(api, doc)
    return service_account_kubeconfig(api, *OPERATOR_ACCOUNT)


def apply_storage_classes(api) -> None:
    """The StorageClasses of manifests/storage-classes.yaml: ClusterApp claims bind through them."""
    parent, _, name = addons.SHARED_DIR.rpartition("/")
    values = {"controller_ip": CONTROLLER_IP, "shared_dir": addons.SHARED_DIR}
    values.update(shared_parent=parent, shared_name=name)
    text = addons.fill(addons.template("storage-classes.yaml"), values, "storage-classes.yaml")
    for doc in yaml.safe_load_all(text):
        if doc:
            api.create("storage.k8s.io/v1/storageclasses", doc)


def run_start_script(tmp_path, bundle, lock_text: str) -> list[str]:
    """scripts/code-start.sh as a code bundle's pod runs it, on its ConfigMap's files (`lock_text`
    as the lock), with a stand-in `python` that records its arguments and the PYTHONPATH it got
    (and creates pip's --target); returns the recorded lines so far (a second call is a restart
    with the same cache on the host)."""
    import base64
    import shutil
    import subprocess

    from clusterous_provisioner import code_bundle

    bin_dir, log, code = tmp_path / "bin", tmp_path / "python.log", tmp_path / "code"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for tool in ("sh", "rm", "mv", "touch", "mkdir", "sha256sum", "cut"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        (bin_dir / "python").write_text(
            '#!/bin/sh\necho "python $* PYTHONPATH=${PYTHONPATH:-}" >>"$LOG"\n'
            'prev=""; for a; do [ "$prev" = --target ] && mkdir -p "$a"; prev="$a"; done\n'
        )
        (bin_dir / "python").chmod(0o755)
        code.mkdir()
    configmap = bundle.configmap_body()
    for key, text in configmap["data"].items():  # as the pod mounts the ConfigMap
        (code / key).write_text(text)
    for key, data in (configmap.get("binaryData") or {}).items():
        (code / key).write_bytes(base64.b64decode(data))
    (code / code_bundle.LOCK_KEY).write_text(lock_text)
    env = {"PATH": str(bin_dir), "LOG": str(log), "CLUSTEROUS_CODE_DIR": str(code),
           "CLUSTEROUS_SITE_ROOT": str(tmp_path / "site")}  # fmt: skip
    result = subprocess.run(
        [str(bin_dir / "sh"), str(code / code_bundle.START_SCRIPT)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()
