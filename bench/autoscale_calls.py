"""Counts the AWS API calls of one autoscaler decision that adds 1, 10 and 50 nodes, and of the
one that removes them again, against moto behind the test harness's AWS realism layer.

For each size: `up --workers 0..60 --no-wait` makes the cluster in moto, the bounds go to the
autoscaler's ConfigMap in the Kubernetes API emulator (with its scheduler), N pods that each need
most of a t3.large are left Unschedulable, and one round (`autoscaler.run_once`) grows the group;
then a Node registers for every new instance, the pods go, and a round 20 minutes later drains
and removes the idle nodes. The calls must not grow with N (goal: O(1); one RunInstances per
grow, one TerminateInstances per shrink).

Run: python bench/autoscale_calls.py
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from _common import counted_calls, moto_account

SIZES = (1, 10, 50)

from clusterous_core.names import GROUP_LABEL  # noqa: E402


def _pod(i: int) -> dict:
    container = {"name": "c", "image": "busybox:1.37", "resources": {"requests": {"cpu": "1500m"}}}
    return {
        "metadata": {"name": f"work-{i}"},
        "spec": {"nodeSelector": {GROUP_LABEL: "worker"}, "containers": [container]},
    }


def measure(url: str, workdir: Path, nodes: int) -> tuple[collections.Counter, collections.Counter]:
    """(calls of the grow round, calls of the shrink round) for `nodes` nodes."""
    from kubernetes import config as kube_config

    from clusterous_cli.main import run
    from clusterous_provisioner import autoscale, autoscaler
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.clusterfile import load_spec
    from tests.harness.k8s import K8sApi

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")).read()
    log = workdir / f"calls-{nodes}.log"
    (workdir / f"faults-{nodes}.json").write_text(json.dumps({"log": str(log), "faults": []}))
    os.environ["CLUSTEROUS_FAULTS_FILE"] = str(workdir / f"faults-{nodes}.json")
    os.environ["XDG_CONFIG_HOME"] = str(workdir / f"xdg-{nodes}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run(["setup", "--region", "us-east-1", "--yes"]) == 0
        assert run(["up", "--cluster", "bench", "--workers", "0..60", "--ssh-cidr", "198.51.100.7/32",
                    "--no-wait", "--yes"]) == 0  # fmt: skip
    (workdir / f"k8s-{nodes}").mkdir()
    k8s = K8sApi(workdir / f"k8s-{nodes}").start()
    try:
        k8s.create("v1/namespaces", {"metadata": {"name": autoscaler.NAMESPACE}})
        api = kube_config.new_client_from_config(config_file=str(k8s.kubeconfig))
        spec = load_spec(None, {"name": "bench", "workers": "0..60"}, profile_region="us-east-1")
        autoscaler.write_record(api, spec, "bench-bucket")
        for i in range(nodes):
            k8s.create("v1/pods", _pod(i), "default")

        def pending() -> bool:
            return (
                sum(1 for p in k8s.list("v1/pods", "default") if autoscale.unschedulable_message(p)) == nodes
            )

        k8s.wait_for(pending, 30, "every pod Unschedulable")
        clients, quiet = Clients("us-east-1"), lambda _message: None
        drain = autoscaler.make_drain(api, 30, quiet)
        now = time.time()
        log.write_text("")
        (grow,) = autoscaler.run_once(api, clients, autoscaler.read_record(api), now, drain, quiet)
        assert (grow.action, grow.count) == ("grow", nodes), grow
        grew = counted_calls(log)

        ec2 = clients.ec2
        flt = [{"Name": "tag:clusterous:group", "Values": ["worker"]}]
        for reservation in ec2.describe_instances(Filters=flt)["Reservations"]:
            for instance in reservation["Instances"]:
                name = "ip-" + instance["PrivateIpAddress"].replace(".", "-")
                status = k8s.add_node(name, {GROUP_LABEL: "worker"})["status"]
                status["addresses"] = [{"type": "InternalIP", "address": instance["PrivateIpAddress"]}]
                k8s.write_status("v1/nodes", name, status)
        for i in range(nodes):
            k8s.delete("v1/pods", f"work-{i}", "default")
        log.write_text("")
        (shrink,) = autoscaler.run_once(
            api, clients, autoscaler.read_record(api), now + 20 * 60, drain, quiet
        )
        assert (shrink.action, shrink.count) == ("shrink", nodes), shrink
        return grew, counted_calls(log)
    finally:
        k8s.stop()


def main() -> int:
    results = {}
    with moto_account() as (url, tmp):
        for nodes in SIZES:
            results[nodes] = measure(url, tmp, nodes)
    print("AWS calls per autoscaler decision (one round: discover, decide, act)")
    for nodes, (grew, shrank) in results.items():
        print(
            f"  {nodes:>2} node(s): grow {sum(grew.values()):>2} calls (RunInstances {grew['RunInstances']}), "
            f"shrink {sum(shrank.values()):>2} calls (TerminateInstances {shrank['TerminateInstances']})"
        )
    first, last = results[SIZES[0]], results[SIZES[-1]]
    print("  grow calls :", dict(sorted(last[0].items())))
    print("  shrink calls:", dict(sorted(last[1].items())))
    same = sum(first[0].values()) == sum(last[0].values()) and sum(first[1].values()) == sum(last[1].values())
    print(f"constant in the number of nodes: {'yes' if same else 'NO'} (goal: O(1))")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
