"""`suspend` and `resume` against moto behind the AWS realism layer (issue 17 item 3).

The realism layer plays what AWS does and moto does not: a NAT gateway stays `deleting` for a
while and holds its Elastic IP meanwhile (ReleaseAddress refused), terminated instances linger in
`shutting-down`, and a one-time spot instance cannot be stopped (UnsupportedOperation).
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import config as kube_config

from clusterous_provisioner import autoscaler, lifecycle, pricing
from clusterous_provisioner.autoscale import GroupBounds, Memory, Settings, decide
from clusterous_provisioner.clients import Clients
from tests import test_up_ready
from tests.harness.faults import SimulatedCrash
from tests.provisioning import UP, count_tagged, make_profile, tag, tagged
from tests.test_autoscale import node
from tests.test_up_ready import cluster_side  # noqa: F401 - a fixture

CLUSTER = "nap"
LAYOUT = """\
cluster_name: nap
node_groups:
  master: {type: t3.large, count: 1}
  worker: {type: t3.large, count: 2, spot: true}
"""
KEPT_FREE = {"vpcs": 1, "subnets": 2, "igws": 1, "route_tables": 2, "sgs": 2, "key_pairs": 1}
# what a suspended cluster keeps: 2 stopped instances (controller, master) and their root volumes,
# the shared volume, the network pieces that cost nothing; no NAT gateway, no Elastic IP
SUSPENDED = {"instances": 2, "addresses": 0, "nats": 0, "volumes": 3, **KEPT_FREE}
TAGGING_TYPES = {"instance", "volume", "vpc", "subnet", "internet-gateway", "route-table", "security-group",
                 "key-pair", "parameter"}  # fmt: skip


@pytest.fixture
def napping(aws, cli, tmp_path):
    """A cluster with an on-demand group and a spot group, and AWS's timing and refusals on."""
    make_profile(cli)
    layout = tmp_path / "nap.yml"
    layout.write_text(LAYOUT)
    result = cli([*UP, str(layout)])
    assert result.exit_code == 0, result.output
    _realistic(aws)
    return layout


def _realistic(aws) -> None:
    aws.realism.reset()
    aws.realism.refuse_stopping_spot()
    aws.realism.refuse_dependent_deletes()
    aws.realism.pending(shutdown_seconds=1.0)  # terminated: shutting-down; deleted NAT: deleting


def _by_group(aws) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for i in tagged(aws, CLUSTER)["instances"]:
        found.setdefault(tag(i, "clusterous:group") or "controller", []).append(i)
    return found


def _sweep_types(aws) -> set[str]:
    """The resource types the Resource Groups Tagging API finds tagged with the cluster."""
    pages = (
        aws.client("resourcegroupstaggingapi")
        .get_paginator("get_resources")
        .paginate(TagFilters=[{"Key": "clusterous:cluster", "Values": [CLUSTER]}])
    )
    arns = [m["ResourceARN"] for page in pages for m in page["ResourceTagMappingList"]]
    # a deleted NAT gateway stays visible for a while (AWS: about an hour), as `deleted`
    deleted = {n["NatGatewayId"] for n in aws.client("ec2").describe_nat_gateways()["NatGateways"]
               if n["State"] == "deleted"}  # fmt: skip
    return {arn.split(":")[5].split("/")[0] for arn in arns if arn.rsplit("/", 1)[-1] not in deleted}


def _assert_suspended(aws) -> None:
    assert count_tagged(aws, CLUSTER) == SUSPENDED
    groups = _by_group(aws)
    assert {g: [i["State"]["Name"] for i in found] for g, found in groups.items()} == {
        "controller": ["stopped"],
        "master": ["stopped"],
    }
    assert _sweep_types(aws) <= TAGGING_TYPES  # no natgateway, no elastic-ip


def test_suspend_keeps_only_disks_and_the_record_and_resume_restores_the_groups(aws, cli, napping):
    before = _by_group(aws)
    assert {i.get("InstanceLifecycle") for i in before["worker"]} == {"spot"}
    aws.reset_calls()
    result = cli(["suspend", "--cluster", CLUSTER, "--yes"])
    assert result.exit_code == 0, result.output
    assert "cluster nap is suspended: 2 instance(s) stopped, 2 spot node(s) terminated" in result.stdout
    _assert_suspended(aws)
    calls = [op for _, op in aws.calls()]
    assert calls.count("StopInstances") == 1 and calls.count("TerminateInstances") == 1
    # the address was released once the gateway was gone, never while it still held it
    deleted_at, released_at = calls.index("DeleteNatGateway"), calls.index("ReleaseAddress")
    assert "DescribeNatGateways" in calls[deleted_at:released_at]
    assert not aws.realism.injected("ReleaseAddress")

    shown = cli(["status", "--cluster", CLUSTER, "--json"])
    assert shown.exit_code == 0, shown.output
    suspended = json.loads(shown.stdout)["suspended"]
    sizes = sum(v["Size"] for v in tagged(aws, CLUSTER)["volumes"])
    assert suspended["monthly_usd"] == round(sizes * pricing.GP3_GIB_MONTH["us-east-1"], 2)
    assert suspended["spot_to_relaunch"] == {"worker": 2}
    assert suspended["next"] == "clusterous-k8s resume --cluster nap"
    text = cli(["status", "--cluster", CLUSTER])
    assert "SUSPENDED since" in text.stdout and "USD/month" in text.stdout
    assert "clusterous-k8s resume --cluster nap" in text.stdout

    (row,) = [r for r in json.loads(cli(["clusters", "--json"]).stdout) if r["name"] == CLUSTER]
    assert row["suspended"] == suspended["since"]  # `clusters` shows it too
    assert f"suspended since {suspended['since']}" in cli(["clusters"]).stdout

    refused = cli([*UP, str(napping)])
    assert refused.exit_code == 1 and "resume" in refused.stderr, refused.output
    for argv in (["tunnel", "add", "8888:master:8888"], ["ls"]):
        blocked = cli([*argv, "--cluster", CLUSTER])
        assert blocked.exit_code == 1 and "is suspended" in blocked.stderr, (argv, blocked.output)
        assert "clusterous-k8s resume --cluster nap" in blocked.stderr

    aws.reset_calls()
    done = lifecycle.resume(
        Clients(aws.region), lifecycle.ResumeRequest(CLUSTER, "b"), lifecycle.Hooks(report=print)
    )
    after = _by_group(aws)
    assert [i["InstanceId"] for i in after["controller"]] == [i["InstanceId"] for i in before["controller"]]
    assert [i["InstanceId"] for i in after["master"]] == [i["InstanceId"] for i in before["master"]]
    assert len(after["worker"]) == 2 and {i.get("InstanceLifecycle") for i in after["worker"]} == {"spot"}
    assert {i["State"]["Name"] for found in after.values() for i in found} == {"running"}
    assert len(done.launched) == 2 and len(done.started) == 2
    calls = [op for _, op in aws.calls()]
    assert calls.count("StartInstances") == 1 and calls.count("RunInstances") == 1
    (nat,) = tagged(aws, CLUSTER)["nats"]
    table = next(t for t in tagged(aws, CLUSTER)["route_tables"] if tag(t, "clusterous:key") == "rtb-private")
    route = next(r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
    assert route["NatGatewayId"] == nat["NatGatewayId"]
    assert count_tagged(aws, CLUSTER)["addresses"] == 1
    assert "clusterous:suspended" not in {t["Key"] for t in after["controller"][0]["Tags"]}

    down = cli(["down", CLUSTER, "--yes", "--delete-shared-volume"])
    assert down.exit_code == 0, down.output
    assert sum(count_tagged(aws, CLUSTER).values()) == 0


def test_suspend_and_resume_cut_short_anywhere_converge_and_down_removes_a_suspended_cluster(
    aws, cli, napping
):
    """Each run dies right after one more of its AWS calls was applied (the realism layer's
    crash_after); the next run picks up from there."""
    for operation in ("TerminateInstances", "StopInstances", "DeleteNatGateway", "ReleaseAddress"):
        aws.realism.crash_after(operation)
        with pytest.raises(SimulatedCrash):
            cli(["suspend", "--cluster", CLUSTER, "--yes"])
        _realistic(aws)
    again = cli(["suspend", "--cluster", CLUSTER, "--yes"])
    assert again.exit_code == 0, again.output
    _assert_suspended(aws)
    shown = json.loads(cli(["status", "--cluster", CLUSTER, "--json"]).stdout)
    assert shown["suspended"]["spot_to_relaunch"] == {"worker": 2}

    request, hooks = lifecycle.ResumeRequest(CLUSTER, "b"), lifecycle.Hooks(report=print)
    for operation in ("CreateNatGateway", "StartInstances", "RunInstances"):
        aws.realism.crash_after(operation)
        with pytest.raises(SimulatedCrash):
            lifecycle.resume(Clients(aws.region), request, hooks)
        _realistic(aws)
    lifecycle.resume(Clients(aws.region), request, hooks)
    groups = _by_group(aws)
    assert {g: len(found) for g, found in groups.items()} == {"controller": 1, "master": 1, "worker": 2}
    assert {i["State"]["Name"] for found in groups.values() for i in found} == {"running"}
    assert count_tagged(aws, CLUSTER)["nats"] == 1 and count_tagged(aws, CLUSTER)["addresses"] == 1

    assert cli(["suspend", "--cluster", CLUSTER, "--yes"]).exit_code == 0
    down = cli(["down", CLUSTER, "--yes", "--delete-shared-volume"])
    assert down.exit_code == 0, down.output
    assert sum(count_tagged(aws, CLUSTER).values()) == 0


# --- the autoscaler's clock ------------------------------------------------------------------------

MINUTE, DAY = 60.0, 86400.0


def test_idle_time_counts_from_the_resume_never_across_the_stop():
    groups, nodes, memory = (
        [GroupBounds("worker", "t3.large", 0, 4)],
        [node("w1", 0.0)],
        Memory({}, {"w1": 100.0}),
    )

    def action(now: float, settings: Settings) -> str:
        (decision,), _ = decide(groups, nodes, [], {}, memory, now, settings)
        return decision.action

    assert action(DAY, Settings()) == "shrink"  # idle for a day, never suspended
    # suspended at 200 s; back a day later, before `resume` recorded its time: nothing is idle yet
    assert action(DAY, Settings(suspended_at=200.0)) == "none"
    resumed = Settings(suspended_at=200.0, resumed_at=DAY)
    assert action(DAY + 10 * MINUTE, resumed) == "none"
    assert action(DAY + 16 * MINUTE, resumed) == "shrink"


def test_resume_brings_the_same_nodes_back_ready_and_restarts_the_autoscalers_clock(
    cluster_side,  # noqa: F811 - the imported fixture
    aws,
    k8s_api,
    cli,
    tmp_path,
):
    layout = tmp_path / "ready.yml"
    layout.write_text(yaml.safe_dump({"cluster_name": "ready", "node_groups": {
        "master": {"type": "t3.large", "count": 1, "spot": True},  # fixed, spot: relaunched at resume
        "worker": {"type": "t3.large", "count": 1, "min": 0, "max": 4},  # elastic, on-demand: stopped
    }}))  # fmt: skip
    up = cli([*test_up_ready.UP, str(layout), "--timeout", "30"])
    assert up.exit_code == 0, up.output
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    cluster = test_up_ready.CLUSTER
    before = {g: [i["InstanceId"] for i in found] for g, found in _groups_of(aws, cluster).items()}

    start = time.time()
    suspended = cli(["suspend", "--cluster", cluster, "--yes"])
    assert suspended.exit_code == 0, suspended.output
    record = autoscaler.read_record(api)
    assert start - 1 <= record.settings.suspended_at <= time.time()
    blocked = cli(["run", "examples/basic-python/clusterapp.yaml", "--cluster", cluster])
    assert blocked.exit_code == 1 and f"clusterous-k8s resume --cluster {cluster}" in blocked.stderr
    # The controller boots before `resume` records its time: a round then sees the worker idle
    # for as long as the suspend lasted, and must not take it.
    said: list[str] = []
    drain = autoscaler.make_drain(api, 15, said.append)
    later = time.time() + 20 * MINUTE
    (decision,) = autoscaler.run_once(api, Clients(aws.region), record, later, drain, said.append)
    assert decision.action == "none", decision

    # Meanwhile another machine took the address the spot node had: its relaunch gets another one
    # (on AWS a launch takes a random free address anyway), and its old Node is a ghost.
    (ghost,) = [n["metadata"]["name"] for n in k8s_api.list("v1/nodes") if _group(n) == "master"]
    subnet = next(s for s in tagged(aws, cluster)["subnets"] if tag(s, "clusterous:key") == "subnet-private")
    image = _groups_of(aws, cluster)["controller"][0]["ImageId"]
    aws.client("ec2").run_instances(
        ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=subnet["SubnetId"]
    )
    resumed = cli(["resume", "--cluster", cluster, "--timeout", "30"])
    assert resumed.exit_code == 0, resumed.output
    assert f"cluster {cluster} is back" in resumed.stdout and "nodes Ready" in resumed.stdout
    after = {g: [i["InstanceId"] for i in found] for g, found in _groups_of(aws, cluster).items()}
    assert (after["controller"], after["worker"]) == (before["controller"], before["worker"])
    assert len(after["master"]) == 1 and after["master"] != before["master"]  # spot: launched again
    # the terminated spot node's Node is gone; every instance has its own
    live = {test_up_ready.node_name(i) for found in _groups_of(aws, cluster).values() for i in found}
    assert {n["metadata"]["name"] for n in k8s_api.list("v1/nodes")} == live and ghost not in live
    assert f"{ghost}: its spot instance was terminated at suspend; Node deleted" in resumed.stderr
    record = autoscaler.read_record(api)
    assert record.settings.resumed_at >= record.settings.suspended_at
    (decision,) = autoscaler.run_once(
        api, Clients(aws.region), record, record.settings.resumed_at + 10 * MINUTE, drain, said.append
    )
    assert decision.action == "none", decision
    shown = json.loads(cli(["status", "--cluster", cluster, "--json"]).stdout)
    assert shown["suspended"] is None and shown.get("applications") is not None


def _groups_of(aws, cluster: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for i in tagged(aws, cluster)["instances"]:
        found.setdefault(tag(i, "clusterous:group") or "controller", []).append(i)
    return {g: sorted(v, key=lambda i: i["InstanceId"]) for g, v in found.items()}


def _group(node: dict) -> str | None:
    return (node["metadata"].get("labels") or {}).get("clusterous.io/group")
