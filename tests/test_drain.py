"""Draining a node against the Kubernetes API emulator: it waits with a watch, not a poll (issue 15 item 7)."""

from __future__ import annotations

import re
import threading
import time

import kubernetes
import pytest

from clusterous_provisioner import drain

HOLD = "test.clusterous.io/hold"  # a finalizer: the pod stays "terminating" until the test lets go


@pytest.fixture
def api(k8s_api):
    configuration = kubernetes.client.Configuration()
    configuration.host = k8s_api.url
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


def _pod(name: str, node: str, finalizers: list[str] | None = None) -> dict:
    metadata = {"name": name, "finalizers": finalizers} if finalizers else {"name": name}
    return {
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def test_drain_watches_the_pods_go_and_moves_on_at_once(k8s_api, api) -> None:
    k8s_api.add_node("worker-1")
    k8s_api.create("v1/pods", _pod("quick", "worker-1"), "default")
    k8s_api.create("v1/pods", _pod("slow", "worker-1", [HOLD]), "default")
    pod_reads: list[str] = []

    def record(request):
        pod_reads.append("watch" if request.params.get("watch") in ("true", "1") else "list")
        raise NotImplementedError  # fall through to the emulator

    k8s_api.call(lambda emulator: emulator["get", re.compile(r"^/api/v1/pods$")] << record)
    result: dict = {}
    drained_at: list[float] = []

    def run() -> None:
        result.update(drain.drain_node(api, "worker-1", 60, lambda line: None))
        drained_at.append(time.monotonic())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    k8s_api.wait_for(
        lambda: (
            (k8s_api.get("v1/pods", "slow", "default") or {}).get("metadata", {}).get("deletionTimestamp")
        ),
        10,
        "the slow pod to be evicted (terminating)",
    )
    time.sleep(3)  # a poll every 2 s would ask at least once more meanwhile
    assert worker.is_alive(), "the drain finished while a pod was still terminating"
    released = time.monotonic()
    k8s_api.patch("v1/pods", "slow", {"metadata": {"finalizers": None}}, "default")
    worker.join(15)
    assert drained_at, "the drain did not finish"
    assert drained_at[0] - released < 1.0, "the drain noticed the last pod's end late"
    assert sorted(result["evicted"]) == ["default/quick", "default/slow"]
    assert k8s_api.get("v1/nodes", "worker-1") is None
    assert pod_reads.count("list") == 1 and pod_reads.count("watch") >= 1, pod_reads
