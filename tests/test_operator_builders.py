"""The pure builders and placement, case by case: what the operator would create."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clusterous_core.names import GROUP_LABEL
from clusterous_operator.builders import (
    APP_LABEL,
    COMPONENT_LABEL,
    SHARED_STORAGE_CLASS,
    SPEC_HASH_ANNOTATION,
    build_children,
    plan_changes,
)
from clusterous_operator.images import CLUSTER_REGISTRY, resolve_image
from clusterous_operator.placement import Reserved, place, usable_nodes
from clusterous_operator.spec import parse_app


def node(name, group, cpu="2", *, ready=True, unschedulable=False, taints=None) -> dict:
    """A Node as the API returns it (kubectl get nodes -o yaml)."""
    spec = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {GROUP_LABEL: group, "kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def app(*components: dict, name: str = "sim", **spec) -> object:
    return parse_app(
        {
            "apiVersion": "clusterous.io/v1alpha1",
            "kind": "ClusterApp",
            "metadata": {"name": name, "namespace": "lab"},
            "spec": {"components": list(components), **spec},
        }
    )


def comp(name, group, **fields) -> dict:
    return {"name": name, "group": group, "image": fields.pop("image", "sim"), **fields}


def by_kind(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(deployment) -> dict:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


# -- placement ---------------------------------------------------------------------------------


def test_auto_replicas_are_packed_node_by_node_not_total_over_cpu() -> None:
    nodes = [node("w1", "worker", "4"), node("w2", "worker", "2"), node("w3", "worker", "3500m")]
    placed = place(app(comp("crunch", "worker", replicas="auto", cpu="1.5")).spec, nodes)["crunch"]
    # 9.5 CPUs / 1.5 would say 6; a pod cannot span nodes: 2 + 1 + 2.
    assert placed.per_node == {"w1": 2, "w2": 1, "w3": 2}
    assert placed.replicas == 5
    assert placed.cpu_m == 1500


def test_fixed_components_on_a_shared_group_are_placed_before_auto_ones() -> None:
    spec = app(
        comp("master", "all", replicas=1, cpu="1"),
        comp("engine", "all", replicas="auto", cpu="1"),
    ).spec
    placed = place(spec, [node("n1", "all", "2"), node("n2", "all", "2")])
    assert placed["master"].replicas == 1
    assert placed["engine"].replicas == 3
    used = dict.fromkeys(("n1", "n2"), 0)
    for name in ("master", "engine"):
        for n, count in placed[name].per_node.items():
            used[n] += count * 1000
    assert all(cpu <= 2000 for cpu in used.values())


def test_auto_components_sharing_a_group_take_turns_on_every_node() -> None:
    spec = app(comp("a", "w", replicas="auto", cpu="1"), comp("b", "w", replicas="auto", cpu="1")).spec
    placed = place(spec, [node("n1", "w", "4"), node("n2", "w", "3")])
    assert placed["a"].replicas + placed["b"].replicas == 7
    assert abs(placed["a"].replicas - placed["b"].replicas) <= 2
    assert placed["a"].per_node["n1"] == placed["b"].per_node["n1"] == 2


def test_cpu_auto_shares_the_smallest_nodes_cpu_among_the_apps_components_on_the_group() -> None:
    spec = app(
        comp("master", "worker", replicas=1, cpu="auto"),
        comp("engine", "worker", replicas="auto", cpu="auto"),
        comp("web", "front", replicas=1, cpu="auto"),
    ).spec
    nodes = [node("w1", "worker", "4"), node("w2", "worker", "2"), node("f1", "front", "2")]
    placed = place(spec, nodes)
    assert placed["master"].cpu_m == placed["engine"].cpu_m == 1000  # 2 CPUs / 2 components
    assert placed["web"].cpu_m == 2000  # alone on its group
    assert placed["engine"].replicas == 5  # 6 CPUs, 1 taken by the master


def test_not_ready_cordoned_tainted_and_unlabelled_nodes_are_ignored() -> None:
    nodes = [
        node("ok", "worker", "2"),
        node("down", "worker", "8", ready=False),
        node("cordoned", "worker", "8", unschedulable=True),
        node("controller", "worker", "8", taints=[{"key": "CriticalAddonsOnly", "effect": "NoExecute"}]),
        {**node("bare", "worker", "8"), "metadata": {"name": "bare", "labels": {}}},
    ]
    assert [n.name for n in usable_nodes(nodes)] == ["ok"]
    assert place(app(comp("e", "worker", replicas="auto", cpu="1")).spec, nodes)["e"].replicas == 2


def test_cpu_requested_by_other_pods_is_not_available() -> None:
    spec = app(comp("e", "worker", replicas="auto", cpu="1")).spec
    placed = place(
        spec, [node("w1", "worker", "4"), node("w2", "worker", "4")], reserved={"w1": Reserved(2500)}
    )
    assert placed["e"].per_node == {"w1": 1, "w2": 4}


def test_fixed_replicas_that_fit_nowhere_are_counted_unplaced() -> None:
    spec = app(comp("crunch", "worker", replicas=8, cpu="0.5")).spec
    placed = place(spec, [node("w1", "worker", "2"), node("w2", "worker", "500m")])
    assert placed["crunch"].replicas == 8
    assert placed["crunch"].unplaced == 3


def test_a_group_without_usable_nodes_gets_no_auto_replicas_and_no_auto_cpu() -> None:
    placed = place(app(comp("e", "worker", replicas="auto", cpu="auto")).spec, [node("m", "master")])
    assert placed["e"].replicas == 0 and placed["e"].cpu_m is None and placed["e"].group_nodes == 0


# -- objects -----------------------------------------------------------------------------------


def test_deployment_per_component_with_labels_selector_cpu_volume_command_and_ports() -> None:
    objects = build_children(
        app(
            comp("master", "master", cpu="0.5", ports=[8888, 9000], command=["python", "-m", "srv"]),
            comp("engine", "worker", replicas="auto", cpu="1", hostNetwork=True),
            sharedVolume={"mountPath": "/data"},
        ),
        [node("m1", "master"), node("w1", "worker", "3")],
    )
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {"sim-master", "sim-engine"}
    master = deployments["sim-master"]
    assert master["metadata"]["namespace"] == "lab"
    assert master["metadata"]["labels"][APP_LABEL] == "sim"
    assert master["spec"]["selector"]["matchLabels"] == {APP_LABEL: "sim", COMPONENT_LABEL: "master"}
    pod = master["spec"]["template"]
    assert pod["metadata"]["labels"][COMPONENT_LABEL] == "master"
    assert pod["spec"]["nodeSelector"] == {GROUP_LABEL: "master"}
    assert "tolerations" not in pod["spec"]  # apps stay off the tainted controller
    assert "hostNetwork" not in pod["spec"]
    box = container(master)
    assert box["command"] == ["python", "-m", "srv"]
    assert box["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"}}  # 1/4 of a 2-CPU 8Gi node
    assert [p["containerPort"] for p in box["ports"]] == [8888, 9000]
    assert box["volumeMounts"] == [{"name": "shared", "mountPath": "/data"}]
    [volume] = pod["spec"]["volumes"]
    claim = by_kind(objects, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["storageClassName"] == SHARED_STORAGE_CLASS
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    engine = deployments["sim-engine"]
    assert engine["spec"]["replicas"] == 3
    assert engine["spec"]["template"]["spec"]["hostNetwork"] is True
    assert engine["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "command" not in container(engine)  # the image's own entrypoint


def test_shared_volume_defaults_to_home_data() -> None:
    objects = build_children(app(comp("solo", "worker")), [node("w1", "worker")])
    assert (
        container(by_kind(objects, "Deployment")["sim-solo"])["volumeMounts"][0]["mountPath"] == "/home/data"
    )


def test_services_publish_ports_and_portless_components_get_a_headless_one() -> None:
    objects = build_children(
        app(comp("master", "master", ports=[8888]), comp("engine", "worker")),
        [node("m1", "master"), node("w1", "worker")],
    )
    services = by_kind(objects, "Service")
    assert services["sim-master"]["spec"]["ports"] == [
        {"name": "tcp-8888", "port": 8888, "targetPort": 8888, "protocol": "TCP"}
    ]
    assert services["sim-master"]["spec"]["selector"] == {APP_LABEL: "sim", COMPONENT_LABEL: "master"}
    assert services["sim-engine"]["spec"]["clusterIP"] == "None"


def test_every_component_is_told_where_the_others_are() -> None:
    objects = build_children(
        app(comp("master", "master", ports=[8888, 8889]), comp("data-store", "worker", ports=[6379])),
        [node("m1", "master"), node("w1", "worker")],
    )
    for deployment in by_kind(objects, "Deployment").values():
        env = {e["name"]: e["value"] for e in container(deployment)["env"]}
        assert env["CLUSTEROUS_MASTER_HOST"] == "sim-master"
        assert env["CLUSTEROUS_MASTER_PORT"] == "8888"
        assert env["CLUSTEROUS_MASTER_PORTS"] == "8888,8889"
        assert env["CLUSTEROUS_DATA_STORE_HOST"] == "sim-data-store"
        assert env["CLUSTEROUS_DATA_STORE_PORT"] == "6379"
        assert env["CLUSTEROUS_SHARED_DIR"] == "/home/data"
        assert env["CLUSTEROUS_COMPONENT"] == deployment["metadata"]["labels"][COMPONENT_LABEL]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("registry:5000/basic-python", f"{CLUSTER_REGISTRY}/basic-python"),  # Clusterous' registry
        ("registry:5000/me/tool:1.2", f"{CLUSTER_REGISTRY}/me/tool:1.2"),
        ("ubuntu", "docker.io/library/ubuntu"),  # short names are Docker Hub's, as Docker says
        ("redis:7", "docker.io/library/redis:7"),
        ("jupyter/minimal-notebook", "docker.io/jupyter/minimal-notebook"),
        ("docker.io/library/python:3.12", "docker.io/library/python:3.12"),
        ("ghcr.io/x/y:1", "ghcr.io/x/y:1"),
        ("localhost/x", "localhost/x"),
        ("myhost:5000/x/y@sha256:" + "a" * 64, "myhost:5000/x/y@sha256:" + "a" * 64),
    ],
)
def test_only_registry_5000_is_the_cluster_registry_short_names_are_docker_hub(image, expected) -> None:
    assert resolve_image(image) == expected
    objects = build_children(app(comp("c", "worker", image=image)), [node("w1", "worker")])
    assert container(by_kind(objects, "Deployment")["sim-c"])["image"] == expected


def test_the_registry_is_a_parameter() -> None:
    objects = build_children(
        app(comp("c", "w", image="registry:5000/sim")), [node("n", "w")], registry="10.0.0.5:30500"
    )
    assert container(by_kind(objects, "Deployment")["sim-c"])["image"] == "10.0.0.5:30500/sim"


def test_waiting_components_get_their_deployment_once_they_can_start() -> None:
    spec = app(
        comp("master", "master"), comp("engine", "worker", replicas="auto", cpu="1", dependsOn=["master"])
    )
    nodes = [node("m1", "master"), node("w1", "worker")]
    held = by_kind(build_children(spec, nodes, waiting={"engine"}), "Deployment")
    free = by_kind(build_children(spec, nodes), "Deployment")
    assert "sim-engine" not in held and "sim-master" in held
    assert free["sim-engine"]["spec"]["replicas"] == 2
    services = by_kind(build_children(spec, nodes, waiting={"engine"}), "Service")
    assert "sim-engine" in services  # its DNS name exists from the start


# -- changes -----------------------------------------------------------------------------------


def _existing(objects) -> dict:
    return {
        (o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for o in objects
    }


def test_rebuilding_the_same_app_plans_no_writes() -> None:
    spec, nodes = app(comp("m", "master", ports=[1])), [node("m1", "master")]
    assert plan_changes(build_children(spec, nodes), _existing(build_children(spec, nodes))) == []


def test_changes_create_missing_replace_changed_and_delete_removed_children() -> None:
    nodes = [node("m1", "master"), node("w1", "worker")]
    before = build_children(app(comp("master", "master"), comp("old", "worker")), nodes)
    after = build_children(
        app(comp("master", "master", image="ghcr.io/x/new:2"), comp("new", "worker")), nodes
    )
    planned = {
        (c.verb, c.obj["kind"], c.obj["metadata"]["name"]) for c in plan_changes(after, _existing(before))
    }
    assert planned == {
        ("replace", "Deployment", "sim-master"),
        ("create", "Deployment", "sim-new"),
        ("create", "Service", "sim-new"),
        ("delete", "Deployment", "sim-old"),
        ("delete", "Service", "sim-old"),
    }


def test_node_changes_only_touch_auto_deployments() -> None:
    spec = app(comp("master", "master"), comp("engine", "worker", replicas="auto", cpu="1"))
    small = build_children(spec, [node("m1", "master"), node("w1", "worker")])
    large = build_children(spec, [node("m1", "master"), node("w1", "worker"), node("w2", "worker", "4")])
    changes = plan_changes(large, _existing(small))
    assert [(c.verb, c.obj["metadata"]["name"], c.obj["spec"]["replicas"]) for c in changes] == [
        ("replace", "sim-engine", 6)
    ]


def test_the_operator_package_never_imports_the_cli_or_boto3() -> None:
    code = (
        "import sys, json; import clusterous_operator.handlers, clusterous_operator.builders;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('clusterous_cli', 'clusterous_provisioner', 'boto3', 'botocore'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_hostnetwork_components_with_ports_get_one_replica_per_node_and_anti_affinity() -> None:
    nodes = [node("w1", "worker", "4"), node("w2", "worker", "4")]
    spread = comp("agent", "worker", replicas="auto", cpu="0.5", ports=[9000], hostNetwork=True)
    fixed = comp("db", "worker", replicas=3, cpu="0.5", ports=[5432], hostNetwork=True)
    placements = place(app(spread, fixed).spec, nodes)
    assert placements["agent"].replicas == 2 and placements["agent"].per_node == {"w1": 1, "w2": 1}
    assert placements["db"].unplaced == 1 and placements["db"].per_node == {"w1": 1, "w2": 1}
    deployment = by_kind(build_children(app(spread, fixed), nodes), "Deployment")["sim-agent"]
    terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms == [
        {
            "labelSelector": {"matchLabels": {APP_LABEL: "sim", COMPONENT_LABEL: "agent"}},
            "topologyKey": "kubernetes.io/hostname",
        }
    ]
    # Without ports, or without hostNetwork, replicas share nodes as before.
    portless = comp("agent", "worker", replicas="auto", cpu="0.5", hostNetwork=True)
    assert place(app(portless).spec, nodes)["agent"].replicas == 16
    pod_network = comp("agent", "worker", replicas="auto", cpu="0.5", ports=[9000])
    assert place(app(pod_network).spec, nodes)["agent"].replicas == 16
    pod = by_kind(build_children(app(pod_network), nodes), "Deployment")["sim-agent"]["spec"]["template"]
    assert "affinity" not in pod["spec"]


def test_memory_is_the_cpu_shares_fraction_of_free_memory_rounded_down_to_mi() -> None:
    nodes = [node("w1", "worker", "3"), node("w2", "worker", "2")]
    spec = app(
        comp("a", "worker", cpu="1"),
        comp("b", "worker", replicas="auto", cpu="auto"),
        comp("c", "worker", replicas=1),
        comp("d", "worker", cpu="0.5", memory="300Mi"),
    ).spec
    placed = place(spec, nodes, reserved={"w1": Reserved(0, 1024 * 2**20)})
    # Tightest ratio: w1, 7Gi free for 3 CPUs; 1 CPU of it is 7168Mi / 3 = 2389.33Mi -> 2389Mi.
    assert placed["a"].memory == 2389 * 2**20
    # 2 CPUs (w2) / 4 components; 500m of w1's ratio is 1194.67Mi
    assert placed["b"].cpu_m == 500 and placed["b"].memory == 1194 * 2**20
    assert placed["c"].memory == 64 * 2**20  # no CPU: a small request, so it is counted
    assert placed["d"].memory == 300 * 2**20  # as given
    for deployment in by_kind(
        build_children(app(comp("a", "worker", cpu="1")), nodes), "Deployment"
    ).values():
        assert container(deployment)["resources"]["requests"]["memory"] == "2730Mi"  # 8Gi * 1/3
        assert "limits" not in container(deployment)["resources"]


def test_memory_requests_of_auto_replicas_fit_every_node_they_are_counted_on() -> None:
    """Memory runs out before CPU on a node whose memory others hold: fewer replicas there."""
    nodes = [node("w1", "worker", "4"), node("w2", "worker", "4")]
    spec = app(comp("e", "worker", replicas="auto", cpu="1", memory="3Gi")).spec
    placed = place(spec, nodes, reserved={"w2": Reserved(0, 4 * 2**30)})
    assert placed["e"].per_node == {"w1": 2, "w2": 1}
