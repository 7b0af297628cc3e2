"""Spot interruptions (issue 17 item 5): the watcher on a spot node, the autoscaler's answer.

The world: the EC2 metadata service played on loopback as IMDSv2 answers (a session token only
for a PUT with a TTL header, every read only with a live token), the Kubernetes API emulator
with the watcher's ServiceAccount and RBAC from its manifest, and, for the autoscaler, moto
behind the AWS realism layer with FakeK3s registering a Node for every running instance
(tests/test_up_ready.py). The watcher runs as the process the DaemonSet runs: the script taken
from the rendered manifest's ConfigMap.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import config as kube_config

from clusterous_core.errors import BadInput
from clusterous_provisioner import autoscale, autoscaler, spot
from clusterous_provisioner.clients import Clients
from clusterous_provisioner.clusterfile import load_spec
from tests.addons_support import create_documents, rendered_manifest
from tests.harness.k8s_admission import service_account_token
from tests.harness.k8s_controllers import tolerates
from tests.harness.tools import validate_k8s
from tests.test_autoscale import MIN, T0, node, one, pod
from tests.test_autoscale_cluster import _app, _available, _workers
from tests.test_up_ready import CLUSTER, UP, cluster_side, node_name  # noqa: F401 - a fixture

ACCOUNT = ("clusterous-system", "clusterous-spot-watch")
NOTICE = "/latest/meta-data/spot/instance-action"


class Imds:
    """IMDSv2 on 127.0.0.1: `items` by path (404 when absent); `expire()` ends every session."""

    def __init__(self, items: dict[str, str]):
        self.items, self.tokens, self.reads, self.refused = dict(items), set(), [], 0
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, code: int, body: str = "") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/latest/api/token" or not self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    return self._answer(400)
                token = secrets.token_hex(16)
                imds.tokens.add(token)
                self._answer(200, token)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    imds.refused += 1
                    return self._answer(401)  # IMDSv2 (HttpTokens required): no valid session
                imds.reads.append(self.path)
                text = imds.items.get(self.path)
                self._answer(404) if text is None else self._answer(200, text)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def expire(self) -> None:
        self.tokens.clear()

    def close(self) -> None:
        self.server.shutdown()


def _lifecycle(market: str) -> dict[str, str]:
    return {"/latest/meta-data/instance-life-cycle": market}


def _notice(seconds: float = 120) -> str:
    at = datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"action": "terminate", "time": at})


def _watcher_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(spot.manifest_text()) if d]


def _account(k8s_api) -> None:
    """The namespace and everything of the watcher's manifest in the emulator (its RBAC decides)."""
    if k8s_api.get("v1/namespaces", "clusterous-system") is None:  # `up` made it already
        create_documents(k8s_api, rendered_manifest("namespace.yaml"))
    create_documents(k8s_api, spot.manifest_text())


@contextmanager
def _watcher(k8s_api, imds: Imds, node: str, tmp_path: Path):
    """The DaemonSet's process for `node`: the ConfigMap's script, as the ServiceAccount."""
    script = next(d for d in _watcher_docs() if d["kind"] == "ConfigMap")["data"]["spot_watch.py"]
    (tmp_path / "spot_watch.py").write_text(script)
    token = tmp_path / f"token-{node}"
    token.write_text(service_account_token(*ACCOUNT))
    env = {
        "PATH": os.environ["PATH"],
        "NODE_NAME": node,
        "CLUSTEROUS_IMDS_URL": imds.url,
        "CLUSTEROUS_API_URL": k8s_api.url,
        "CLUSTEROUS_TOKEN_FILE": str(token),
        "CLUSTEROUS_POLL_SECONDS": "0.1",
    }
    argv = [
        sys.executable,
        "-I",
        "-u",
        str(tmp_path / "spot_watch.py"),
    ]  # -I: no PYTHONPATH, no site dirs of ours
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        process.terminate()  # SIGTERM, as the kubelet stops it: it exits at once
        out, _ = process.communicate(timeout=10)
        print(out)


def _watch_pods(k8s_api, node: str) -> list[dict]:
    """The DaemonSet's pods for `node` (bound to it, or pinned to it by the controller's affinity)."""
    return [
        p
        for p in k8s_api.list("v1/pods", "clusterous-system")
        if p["metadata"]["labels"].get("app.kubernetes.io/name") == "clusterous-spot-watch"
        and (p["spec"].get("nodeName") == node or f'"{node}"' in json.dumps(p["spec"].get("affinity")))
    ]


def _marks(node: dict) -> tuple:
    spec = node.get("spec") or {}
    taints = {t["key"]: (t.get("value"), t["effect"]) for t in spec.get("taints") or []}
    return spec.get("unschedulable"), taints.get(spot.ANNOTATION), spot.notice(node)


def test_the_watcher_manifest_is_valid_least_privilege_and_its_script_needs_only_the_stdlib() -> None:
    assert validate_k8s(_watcher_docs()) == len(_watcher_docs())
    script = next(d for d in _watcher_docs() if d["kind"] == "ConfigMap")["data"]["spot_watch.py"]
    assert script == (Path(spot.__file__).parent / "spot_watch.py").read_text()
    imported = set()
    for found in ast.walk(ast.parse(script)):
        if isinstance(found, ast.Import):
            imported |= {a.name.split(".")[0] for a in found.names}
        elif isinstance(found, ast.ImportFrom) and found.module:
            imported.add(found.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    daemonset = next(d for d in _watcher_docs() if d["kind"] == "DaemonSet")["spec"]["template"]
    assert daemonset["spec"]["hostNetwork"] is True  # IMDSv2 hop limit 1
    assert "@sha256:" in daemonset["spec"]["containers"][0]["image"]
    assert tolerates(
        daemonset["spec"]["tolerations"],
        {"key": spot.ANNOTATION, "value": "terminate", "effect": "NoSchedule"},
    )
    (role,) = [d for d in _watcher_docs() if d["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]


def test_a_notice_cordons_taints_and_annotates_the_node_and_no_notice_changes_nothing(
    k8s_api, tmp_path
) -> None:
    _account(k8s_api)
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    k8s_api.add_node("ip-10-0-1-5", labels={"clusterous.io/group": "worker"}, taints=[other])
    imds = Imds(_lifecycle("spot"))
    try:
        with _watcher(k8s_api, imds, "ip-10-0-1-5", tmp_path) as process:
            labelled = lambda: (  # noqa: E731
                (k8s_api.get("v1/nodes", "ip-10-0-1-5")["metadata"]["labels"]).get(
                    "clusterous.io/capacity-type"
                )
            )
            k8s_api.wait_for(lambda: labelled() == "spot", 15, "the node labelled with its market")
            assert k8s_api.wait_for(
                lambda: _watch_pods(k8s_api, "ip-10-0-1-5"), 15, "the DaemonSet's pod stays"
            )
            k8s_api.wait_for(lambda: imds.reads.count(NOTICE) >= 5, 15, "five looks for a notice")
            assert _marks(k8s_api.get("v1/nodes", "ip-10-0-1-5")) == (None, None, None)  # no notice: nothing

            refused = imds.refused
            imds.expire()  # the session ends: the watcher takes a new token and goes on
            imds.items[NOTICE] = notice = _notice()
            node = k8s_api.wait_for(
                lambda: (n := k8s_api.get("v1/nodes", "ip-10-0-1-5")) and spot.notice(n) and n,
                15,
                "the marks",
            )
            assert process.poll() is None
    finally:
        imds.close()
    unschedulable, taint, found = _marks(node)
    assert (unschedulable, taint) == (True, ("terminate", "NoSchedule"))
    assert {k: found[k] for k in ("action", "time")} == json.loads(notice) and found["noticed"]
    assert other in node["spec"]["taints"]  # the node's other taints are kept
    assert imds.refused > refused  # the expired session was refused (401), then renewed


def test_an_on_demand_node_is_labelled_and_never_watched(k8s_api, tmp_path) -> None:
    _account(k8s_api)
    k8s_api.add_node("ip-10-0-1-6", labels={"clusterous.io/group": "worker"})
    k8s_api.wait_for(lambda: _watch_pods(k8s_api, "ip-10-0-1-6"), 15, "a watcher pod on the new agent node")
    imds = Imds({**_lifecycle("on-demand"), NOTICE: _notice()})
    try:
        with _watcher(k8s_api, imds, "ip-10-0-1-6", tmp_path):
            k8s_api.wait_for(
                lambda: (
                    k8s_api.get("v1/nodes", "ip-10-0-1-6")["metadata"]["labels"].get(
                        "clusterous.io/capacity-type"
                    )
                    == "on-demand"
                ),
                15,
                "the on-demand label",
            )
            k8s_api.wait_for(
                lambda: not _watch_pods(k8s_api, "ip-10-0-1-6"), 15, "the DaemonSet leaving the node"
            )
            time.sleep(0.5)
    finally:
        imds.close()
    assert NOTICE not in imds.reads and _marks(k8s_api.get("v1/nodes", "ip-10-0-1-6")) == (None, None, None)


def test_spot_fallback_is_checked(tmp_path) -> None:
    path = tmp_path / "cluster.yml"
    for text, field in (
        ("spot_fallback: on-demand\n", "spot_fallback"),
        ("spot: true\nspot_fallback: sometimes\n", "spot_fallback"),
        (
            "node_groups: {w: {type: t3.large, count: 1, spot_fallback: on-demand}}\n",
            "node_groups.w.spot_fallback",
        ),
    ):
        path.write_text("cluster_name: c\nregion: eu-west-1\n" + text)
        with pytest.raises(BadInput) as caught:
            load_spec(path)
        assert caught.value.field == field, caught.value
    path.write_text("cluster_name: c\nregion: eu-west-1\nspot: true\nspot_fallback: on-demand\n")
    assert {(g.spot, g.spot_fallback) for g in load_spec(path).groups} == {(True, "on-demand")}


def test_the_watcher_is_an_add_on_of_clusters_with_a_spot_group_only(tmp_path) -> None:
    """`up` renders (and applies) the watcher for a cluster with a spot group; elsewhere its pod
    would only pull an image onto every node to learn that the node is on-demand."""
    from clusterous_provisioner import apply, bootstrap

    path = tmp_path / "cluster.yml"
    for text, expected in (("", False), ("spot: true\n", True)):
        path.write_text("cluster_name: c\nregion: eu-west-1\n" + text)
        inputs = apply.bootstrap_inputs(load_spec(path), "bucket", "0" * 64, None)
        rendered = bootstrap.render_manifests(inputs)
        assert ("spot-watch.yaml" in rendered) is expected, text
        if expected:
            assert rendered["spot-watch.yaml"] == spot.manifest_text()


def _lifecycle_of(instance: dict) -> str:
    return instance.get("InstanceLifecycle") or "on-demand"


def test_an_interrupted_node_is_drained_and_replaced_with_on_demand_when_spot_has_no_capacity(
    cluster_side,  # noqa: F811 - the imported fixture
    aws,
    k8s_api,
    cli,
    tmp_path,
) -> None:
    """A spot group at zero grows on spot; a notice on its node: drained, replaced at once (in the
    cooldown) by one RunInstances; the next notice meets no spot capacity: on-demand instead."""
    path = tmp_path / "cluster.yml"
    path.write_text(
        "spot: true\nspot_fallback: on-demand\nparameters: {worker_count: 0, worker_min: 0, worker_max: 3}\n"
    )
    result = cli([*UP, str(path), "--timeout", "30"])
    assert result.exit_code == 0, result.output
    record = autoscaler.read_record(kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig)))
    assert record.groups == (autoscale.GroupBounds("worker", "t3.large", 0, 3, True, "on-demand"),)
    for resource, namespace in (  # `up` applied the watcher: its account, rights and DaemonSet
        ("v1/serviceaccounts", ACCOUNT[0]),
        ("rbac.authorization.k8s.io/v1/clusterroles", None),
        ("rbac.authorization.k8s.io/v1/clusterrolebindings", None),
        ("apps/v1/daemonsets", ACCOUNT[0]),
    ):
        assert k8s_api.get(resource, ACCOUNT[1], namespace), resource
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    said: list[str] = []

    def round_at(now: float) -> autoscale.Decision:
        record = autoscaler.read_record(api)
        decisions = autoscaler.run_once(
            api, Clients(aws.region), record, now, autoscaler.make_drain(api, 15, said.append), said.append
        )
        return {d.group: d for d in decisions}["worker"]

    def interrupt(instance: dict) -> str:
        node = node_name(instance)
        imds = Imds({**_lifecycle(_lifecycle_of(instance)), NOTICE: _notice()})
        try:
            with _watcher(k8s_api, imds, node, tmp_path):
                k8s_api.wait_for(
                    lambda: spot.notice(k8s_api.get("v1/nodes", node) or {}), 15, "the notice marked"
                )
        finally:
            imds.close()
        return node

    _app(k8s_api, 1, cpu="900m")
    k8s_api.wait_for(
        lambda: any(autoscale.unschedulable_message(p) for p in k8s_api.list("v1/pods", "default"))
    )
    t0 = time.time()
    grow = round_at(t0)
    assert (grow.action, grow.count) == ("grow", 1), grow
    (first,) = _workers(aws).values()
    assert _lifecycle_of(first) == "spot"  # a group at zero launches on its recorded market
    k8s_api.wait_for(lambda: _available(k8s_api) == 1, 15, "the app on the spot node")

    # The notice: drained, and one RunInstances for a spot replacement, 1 minute into the cooldown.
    node = interrupt(first)
    aws.reset_calls()
    replace = round_at(t0 + 60)
    assert (replace.action, replace.count, replace.nodes) == ("grow", 1, (node,)), replace
    assert "spot interruption of" in replace.reason
    assert len(aws.calls("RunInstances")) == 1
    (second,) = [i for i in _workers(aws).values() if i["InstanceId"] != first["InstanceId"]]
    assert _lifecycle_of(second) == "spot"
    pods = [p for p in k8s_api.list("v1/pods", "default") if p["metadata"]["labels"].get("app") == "sim"]
    assert all(p["spec"].get("nodeName") != node for p in pods)  # evicted from the interrupted node
    kept = k8s_api.get("v1/nodes", node)  # kept, cordoned and marked, until its instance goes
    assert kept["spec"]["unschedulable"] is True and spot.notice(kept)
    assert any(f"drain {node}: evicted default/" in line for line in said)
    k8s_api.wait_for(lambda: _available(k8s_api) == 1, 15, "the app on the replacement")
    again = round_at(t0 + 90)  # the same notice is answered once
    assert not (again.action == "grow" and again.nodes) and len(aws.calls("RunInstances")) == 1

    # EC2 takes the first instance: its Node goes. The autoscaler runs as its process, rounds 10
    # minutes apart; the replacement gets a notice and the Node watch starts a round at once.
    # EC2 has no spot capacity: the replacement's replacement is on-demand.
    aws.client("ec2", direct=True).terminate_instances(InstanceIds=[first["InstanceId"]])
    argv = [
        sys.executable,
        "-m",
        "clusterous_provisioner.autoscaler",
        "--kubeconfig",
        str(k8s_api.kubeconfig),
    ]
    process = subprocess.Popen(
        [*argv, "--interval", "600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        k8s_api.wait_for(
            lambda: None in k8s_api.history("v1/nodes", node), 30, "the first round: the Node is gone"
        )
        aws.reset_calls()
        aws.fail("RunInstances", code="InsufficientInstanceCapacity", status=500,
                 message="There is no Spot capacity available that matches your request.")  # fmt: skip
        node2 = interrupt(second)
        k8s_api.wait_for(
            lambda: len(aws.calls("RunInstances")) == 2, 20, "a replacement, without waiting 600 s"
        )
    finally:
        process.terminate()  # SIGTERM: it ends between rounds
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and f"worker: grow 1: spot interruption of {node2}" in out, out
    assert "no spot capacity (InsufficientInstanceCapacity); launching on-demand instead" in out
    (third,) = [
        i
        for i in _workers(aws).values()
        if i["InstanceId"] not in (first["InstanceId"], second["InstanceId"])
    ]
    assert _lifecycle_of(third) == "on-demand"  # refused on spot, then launched on-demand

    shown = cli(["status", "--cluster", CLUSTER, "--json"])
    assert shown.exit_code == 0, shown.output
    seen = json.loads(shown.stdout)["autoscaler"]["worker"]["interruption"]
    assert (seen["nodes"], seen["action"], seen["replacement"]) == (
        [node2],
        "terminate",
        [third["InstanceId"]],
    )
    assert seen["fallback"] == "on-demand (InsufficientInstanceCapacity)"
    table = cli(["status", "--cluster", CLUSTER]).stdout
    assert f"spot interruption {seen['at']}: {node2} (terminate at {seen['time']})" in table
    assert f"replaced by {third['InstanceId']} (on-demand (InsufficientInstanceCapacity))" in table


def _interrupted(node: dict) -> dict:
    """A Node as the watcher leaves it (the watcher's own marks are tested above)."""
    notice = {"action": "terminate", "time": "2026-01-01T12:02:00Z", "noticed": "2026-01-01T12:00:01Z"}
    node["metadata"]["annotations"] = {spot.ANNOTATION: json.dumps(notice)}
    node["spec"] = {"unschedulable": True}
    return node


def test_decide_replaces_busy_interrupted_nodes_at_once_and_only_once() -> None:
    group = autoscale.GroupBounds("worker", "t3.large", 1, 3, True)
    cooling = autoscale.Memory(last_change={"worker": T0 - 2 * MIN})  # grew 2 minutes ago
    nodes = [node("w1", T0 - 60 * MIN), _interrupted(node("w2", T0 - 60 * MIN))]
    busy = [pod("app", "1500m", on="w2")]
    decision, memory = one([group], nodes, busy, T0, cooling)
    assert (decision.action, decision.count, decision.nodes) == ("grow", 1, ("w2",)), decision
    assert decision.current == 1  # the interrupted node does not count
    assert memory.last_change == cooling.last_change  # a replacement starts no cooldown
    again, _ = one([group], nodes, busy, T0 + 30, memory)
    assert again.action == "none" and "cooling down" in again.reason  # answered once

    idle, _ = one([group], nodes, [], T0, autoscale.Memory())  # w2 ran nothing for an hour
    assert (idle.action, idle.nodes) == ("none", ("w2",)) and "no replacement (idle" in idle.reason
    alone = [_interrupted(node("w1", T0 - 60 * MIN))]  # idle, but the group would fall below min 1
    floor, _ = one([group], alone, [], T0, autoscale.Memory())
    assert (floor.action, floor.count, floor.nodes) == ("grow", 1, ("w1",))
    full = autoscale.GroupBounds("worker", "t3.large", 0, 1, True)
    capped, _ = one(
        [full], [_interrupted(node("w1", T0 - 60 * MIN))], [pod("app", on="w1")], T0, launching={"worker": 1}
    )
    assert capped.action == "none" and "at max 1" in capped.reason


def test_with_the_budget_reached_an_interrupted_node_is_replaced_only_back_to_min() -> None:
    """At 100% of the budget nothing grows beyond `min` (issue 17 item 4): a busy interrupted
    node above `min` is drained but not replaced; one whose loss takes the group below `min` is."""
    group = autoscale.GroupBounds("worker", "t3.large", 1, 3, True)
    spent = autoscale.Budget(spent=10.0, limit=10.0)
    nodes = [node("w1", T0 - 60 * MIN), _interrupted(node("w2", T0 - 60 * MIN))]
    (held,), _ = autoscale.decide([group], nodes, [pod("app", "1500m", on="w2")], {}, autoscale.Memory(), T0,
                                  budget=spent)  # fmt: skip
    assert held.action == "none" and "budget reached" in held.reason, held
    alone = [_interrupted(node("w1", T0 - 60 * MIN))]
    (floor,), _ = autoscale.decide(
        [group], alone, [pod("app", on="w1")], {}, autoscale.Memory(), T0, budget=spent
    )
    assert (floor.action, floor.count) == ("grow", 1) and "budget reached" in floor.reason, floor
