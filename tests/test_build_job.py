"""Image builds: the BuildKit Job manifest (schema-validated), and what can run here of the build path.

No BuildKit or container runtime can run on the test machines, so a real build is not
exercised end to end. What is, here: the Job and claim against the Kubernetes schemas, their
security and wiring, bad build input, and that an unreachable registry (looked up in
cluster-info, reached through the SSH connection) fails the build before anything is created.
The registry's skip-if-present answer, `images` and the build flow around the Job run against a
real registry in test_registry.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from clusterous_cli import buildjob, tunnels
from clusterous_operator.images import CLUSTER_REGISTRY
from tests.harness.tools import validate_k8s
from tests.ssh_support import make_controller, write_k3s_yaml


def test_job_and_claim_are_valid_kubernetes_objects() -> None:
    objects = [buildjob.build_job("basic-python", "latest"), buildjob.build_context_claim()]
    assert validate_k8s(objects) == 2


def test_job_builds_rootless_and_daemonless_from_the_shared_volume_into_the_cluster_registry() -> None:
    job = buildjob.build_job("lab/sim", "1.2")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["namespace"] == "clusterous-system"
    assert container["image"].startswith("moby/buildkit:v") and container["image"].endswith("-rootless")
    assert container["command"] == ["buildctl-daemonless.sh"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0 and "privileged" not in security
    output = next(a for a in container["args"] if a.startswith("--output="))
    assert f"name={CLUSTER_REGISTRY}/lab/sim:1.2" in output and "push=true" in output
    context = next(m for m in container["volumeMounts"] if m["mountPath"] == "/workspace")
    assert context["subPath"] == buildjob.context_dir("lab/sim") and context["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == context["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == buildjob.build_context_claim()["metadata"]["name"]
    assert buildjob.build_context_claim()["spec"]["storageClassName"] == "clusterous-shared"
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"


def test_job_names_are_dns_labels_distinct_per_tag() -> None:
    names = {buildjob.job_name("Lab/My_Image" * 5, tag) for tag in ("1", "2", "latest")}
    assert len(names) == 3
    assert all(len(n) <= 63 and n.replace("-", "").isalnum() and n == n.lower() for n in names)


@pytest.mark.parametrize(
    "make, argv_tail, expected",
    [
        (lambda d: None, ["nope", "x"], "an existing folder"),
        (lambda d: (d / "ctx").mkdir(), ["ctx", "x"], "holding a Dockerfile"),
        (
            lambda d: ((d / "ctx").mkdir(), (d / "ctx" / "Dockerfile").write_text("FROM scratch\n")),
            ["ctx", "Bad Name"],
            "image name",
        ),
    ],
)
def test_bad_build_input_is_exit_2(tmp_path, cli, make, argv_tail, expected) -> None:
    make(tmp_path)
    directory, name = argv_tail
    result = cli(["build-image", str(tmp_path / directory), name])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr


def test_an_unreachable_registry_fails_the_build_before_anything_is_created(
    sshd, k8s_api, cli, tmp_path
) -> None:
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml")
    controller = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml))
    closed = tunnels.free_port()  # nothing listens here: the registry is down
    k8s_api.create("v1/namespaces", {"metadata": {"name": "clusterous-system"}})
    k8s_api.create(
        "v1/configmaps",
        {"metadata": {"name": "cluster-info"}, "data": {"registryEndpoint": f"127.0.0.1:{closed}"}},
        namespace="clusterous-system",
    )
    context = tmp_path / "image"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM python:3.12-slim\n")
    try:
        result = cli(["build-image", str(context), "sim:1"])
    finally:
        tunnels.stop_supervisor(controller.ref)
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{closed}" in result.stderr and "/v2/sim/manifests/1" in result.stderr
    assert k8s_api.list("batch/v1/jobs", namespace="clusterous-system") == []
    assert list(controller.shared.iterdir()) == []  # the context was not uploaded either
