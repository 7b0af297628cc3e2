"""The validators later tests rely on: each accepts good input and rejects bad input."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.tools import (
    ManifestError,
    cloud_init_schema,
    shellcheck,
    tool_path,
    validate_k8s,
)

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}


def test_kubernetes_validate_accepts_and_rejects():
    assert validate_k8s([CONFIGMAP]) == 1
    bad = {**CONFIGMAP, "data": {"a": 1}}
    with pytest.raises(ManifestError, match="ConfigMap/x"):
        validate_k8s([bad])
    typo = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "comand": ["x"]}]},
            },
        },
    }
    with pytest.raises(ManifestError, match="Deployment/d"):
        validate_k8s([typo])  # strict: unknown fields are errors


def test_unknown_kinds_fail_unless_skipped():
    custom = {"apiVersion": "clusterous.io/v1alpha1", "kind": "ClusterApp", "metadata": {"name": "a"}}
    with pytest.raises(ManifestError, match="no schema"):
        validate_k8s([custom])
    assert validate_k8s([custom, CONFIGMAP], skip_kinds=["ClusterApp"]) == 1


def test_cloud_init_schema(tmp_path):
    good = tmp_path / "good.user-data"
    good.write_text("#cloud-config\npackages: [nfs-common]\nruncmd:\n  - [echo, hi]\n")
    assert cloud_init_schema(good).returncode == 0
    bad = tmp_path / "bad.user-data"
    bad.write_text("#cloud-config\npackages: 5\nruncmd: {a: b}\n")
    result = cloud_init_schema(bad)
    assert result.returncode != 0
    assert "packages" in result.stdout + result.stderr


def test_shellcheck(tmp_path):
    good = tmp_path / "good.sh"
    good.write_text('#!/bin/sh\nset -eu\nname="$1"\necho "hello $name"\n')
    assert shellcheck(good).returncode == 0
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    result = shellcheck(bad)
    assert result.returncode != 0 and "SC2086" in result.stdout


@pytest.mark.parametrize(
    "name,args,expect",
    [("kubectl", ["version", "--client"], "v1.37"), ("helm", ["version", "--short"], "v4")],
)
def test_real_kubectl_and_helm(name, args, expect):
    out = subprocess.run([str(tool_path(name)), *args], capture_output=True, text=True, check=True).stdout
    assert expect in out
