"""`run` and `status` with other pods on the nodes: the CLI uses the operator's arithmetic.

The world of tests/test_run_quit.py (harness sshd as the controller, the API emulator with its
controllers behind the SSH tunnel, the real operator), plus a node agent DaemonSet that requests
CPU and memory on every node, as Fluent Bit and the NFS driver do on a real cluster.
"""

from __future__ import annotations

import json

import yaml

from tests.test_operator_e2e import start_node_agent
from tests.test_run_quit import cluster, env_file  # noqa: F401 - the fixture

WAIT = 30


def clusterapp_file(tmp_path, engine: dict) -> object:
    app = {
        "apiVersion": "clusterous.io/v1alpha1",
        "kind": "ClusterApp",
        "metadata": {"name": "sim"},
        "spec": {
            "components": [
                {"name": "engine", "group": "worker", "image": "python:3.12-slim", **engine},
            ]
        },
    }
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(app))
    return path


def test_run_refuses_a_cpu_no_node_has_free_and_applies_nothing(cluster, k8s_api, cli, tmp_path) -> None:  # noqa: F811
    start_node_agent(k8s_api, {"cpu": "250m", "memory": "512Mi"})
    path = env_file(tmp_path, 8000, 18000)
    env = yaml.safe_load(path.read_text())
    env["environment"]["components"]["web"]["cpu"] = 1.9  # 2 CPUs less the agent's 250m: 1.75
    path.write_text(yaml.safe_dump(env))
    result = cli(["run", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and "environment.components.web.cpu" in result.stderr
    assert "at most 1750m" in result.stderr, result.stderr
    assert k8s_api.list("capp") == [] and list(cluster.shared.iterdir()) == []


def test_run_refuses_a_memory_no_node_has_free(cluster, k8s_api, cli, tmp_path) -> None:  # noqa: F811
    start_node_agent(k8s_api, {"cpu": "250m", "memory": "512Mi"})
    path = clusterapp_file(tmp_path, {"cpu": "1", "memory": "4Gi"})  # nodes of 4Gi less 512Mi
    result = cli(["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "spec.components[0].memory" in result.stderr and "at most 3584Mi" in result.stderr
    assert k8s_api.list("capp") == []


def test_run_warns_about_a_node_group_no_component_uses(cluster, k8s_api, cli, tmp_path) -> None:  # noqa: F811
    k8s_api.add_node("gpu-1", labels={"clusterous.io/group": "gpu"}, cpu="2")
    path = clusterapp_file(tmp_path, {"cpu": "1"})
    result = cli(["run", str(path), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "no component uses node group gpu: its 1 node(s) sit idle" in result.stderr
    assert "node group master" in result.stderr  # the app uses only worker
    assert "node group worker" not in result.stderr


def test_status_scale_hint_counts_what_new_nodes_hold_beside_other_pods(
    cluster,  # noqa: F811
    k8s_api,
    aws,
    cli,
    tmp_path,
) -> None:
    """2-CPU workers with a 500m agent each hold one 1-CPU engine: 4 engines need 4 workers
    (bare 2-CPU nodes would hold two each: `scale worker 2` would leave two Pending)."""
    start_node_agent(k8s_api, {"cpu": "500m", "memory": "256Mi"})
    path = clusterapp_file(tmp_path, {"cpu": "1", "replicas": 4})
    assert cli(["run", str(path), "--no-wait"]).exit_code == 0

    def message() -> str:
        return ((k8s_api.get("capp", "sim") or {}).get("status") or {}).get("message", "")

    k8s_api.wait_for(lambda: "scale worker" in message(), timeout=WAIT, what="a scale hint")
    assert "3 of 4 engine replicas Pending" in message() and "`clusterous-k8s scale worker 4`" in message()
    aws.client("ec2", "eu-west-1").create_vpc(
        CidrBlock="10.20.0.0/16",
        TagSpecifications=[
            {"ResourceType": "vpc", "Tags": [{"Key": "clusterous:cluster", "Value": cluster.ref.cluster}]}
        ],
    )
    status = cli(["status", "--json"])
    assert status.exit_code == 0, status.output
    [app] = json.loads(status.stdout)["applications"]
    assert "`clusterous-k8s scale worker 4`" in app["message"]
    for i in (2, 3, 4):  # what the hint says: the agent lands on each, one engine beside it
        k8s_api.add_node(f"worker-{i}", labels={"clusterous.io/group": "worker"}, cpu="2")
    k8s_api.wait_for(
        lambda: ((k8s_api.get("capp", "sim") or {}).get("status") or {}).get("phase") == "Running",
        timeout=WAIT,
        what="phase Running on the nodes the hint asked for",
    )


def baseline_violations(pod_spec: dict) -> list[str]:
    """What the Pod Security `baseline` profile forbids (kubernetes.io/docs/concepts/security/
    pod-security-standards), as far as the operator's pod specs can express it."""
    found = [f for f in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(f)]
    found += [f"hostPath {v['name']}" for v in pod_spec.get("volumes") or [] if "hostPath" in v]
    for container in pod_spec.get("containers") or []:
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            found.append("privileged")
        found += [f"hostPort {p['hostPort']}" for p in container.get("ports") or [] if p.get("hostPort")]
        found += [f"capability {c}" for c in (context.get("capabilities") or {}).get("add") or []]
    return found


def test_app_pods_meet_baseline_and_the_namespace_enforces_it_unless_an_app_asks_for_host_network(
    cluster,  # noqa: F811
    k8s_api,
    cli,
    tmp_path,
) -> None:
    path = clusterapp_file(tmp_path, {"cpu": "0.5", "ports": [8080]})
    result = cli(["run", str(path), "--no-wait"])
    assert result.exit_code == 0, result.output
    labels = k8s_api.get("v1/namespaces", "default")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert (
        labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "baseline"
    )
    deployment = k8s_api.wait_for(
        lambda: k8s_api.get("apps/v1/deployments", "sim-engine"), timeout=WAIT, what="the Deployment"
    )
    assert baseline_violations(deployment["spec"]["template"]["spec"]) == []

    host = yaml.safe_load(path.read_text())
    host["metadata"]["name"] = "agent"
    host["spec"]["components"][0]["hostNetwork"] = True
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(host))
    result = cli(["run", str(tmp_path / "agent.yaml"), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "Pod Security privileged enforced" in result.stderr
    labels = k8s_api.get("v1/namespaces", "default")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # baseline forbids hostNetwork
    assert labels["pod-security.kubernetes.io/warn"] == "baseline"  # still reported
    agent = k8s_api.wait_for(
        lambda: k8s_api.get("apps/v1/deployments", "agent-engine"), timeout=WAIT, what="the Deployment"
    )
    assert baseline_violations(agent["spec"]["template"]["spec"]) == ["hostNetwork"]
