"""`up` and `down` against what AWS does and moto does not (issue 14, items 1-3), through the AWS
realism layer: eventual consistency and IAM propagation, throttling and 5xx below botocore's
retries, lost RunInstances responses, and teardown while network interfaces and addresses drain.

Every behaviour here is counted in calls, not seconds, so the tests wait only as long as the
product's own backoff (0.2 s per refusal) and waiter polls (2 s at teardown) make them.
"""

from __future__ import annotations

import ipaddress

import pytest

from clusterous_provisioner import layout
from tests.harness.faults import SimulatedCrash
from tests.provisioning import ONE_OF_EVERYTHING, UP, count_tagged, make_profile


def _up(cli, name: str = "cons", workers: int = 1):
    return cli([*UP, "--cluster", name, "--workers", str(workers)])


def _codes(aws) -> set[str]:
    return {s.injected for s in aws.realism.injected()}


def test_up_finishes_in_one_run_while_ec2_and_iam_catch_up(aws, cli):
    make_profile(cli)
    aws.realism.eventual_consistency(calls=1)  # every new id: unknown to the first call naming it
    aws.realism.iam_propagation(calls=2)
    result = _up(cli)
    assert result.exit_code == 0, result.output
    assert count_tagged(aws, "cons") == ONE_OF_EVERYTHING
    refused = [s for s in aws.realism.injected() if s.status == 400]
    met = {s.operation for s in refused}
    # The gateway attach right after CreateInternetGateway (the refusal a new user met first), the
    # routes, the security-group rules, the NAT gateway, the instances and the volume all met it.
    codes = {s.injected for s in refused}
    assert {
        "InvalidVpcID.NotFound",
        "InvalidInternetGatewayID.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidRouteTableID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidAllocationID.NotFound",
        "NatGatewayNotFound",
        "InvalidVolume.NotFound",
        "InvalidInstanceID.NotFound",
        "InvalidParameterValue",
    } <= codes, codes
    assert {"AttachInternetGateway", "AssociateRouteTable", "CreateRoute", "CreateNatGateway"} <= met
    # RunInstances of the controller waited for its new instance profile, then launched once.
    assert len(aws.calls("RunInstances")) == 3
    profile_refusals = [s for s in refused if s.operation == "RunInstances"]
    assert len(profile_refusals) >= 2


def test_a_new_id_that_never_appears_is_given_up_on_within_the_budget(aws, cli, monkeypatch):
    from clusterous_provisioner import retries

    make_profile(cli)
    aws.realism.eventual_consistency(calls=10_000)
    now = [0.0]

    def clock() -> float:  # a minute passes between two looks: the budget runs out at once
        now[0] += 61.0
        return now[0]

    monkeypatch.setattr(retries, "clock", clock)
    result = _up(cli)
    assert result.exit_code == 1
    assert "NotFound" in result.stderr and "re-run" in result.stderr


def test_up_absorbs_throttling_and_server_errors_below_botocore(aws, cli):
    make_profile(cli)
    aws.realism.throttle("CreateVpc", times=2)
    aws.realism.throttle("RunInstances", times=1)
    aws.realism.unavailable("CreateSubnet", times=1, status=503)
    aws.realism.unavailable("CreateSecurityGroup", times=1, status=500)
    result = _up(cli)
    assert result.exit_code == 0, result.output
    assert count_tagged(aws, "cons") == ONE_OF_EVERYTHING
    statuses = [s.status for s in aws.realism.requests("RunInstances")]
    assert statuses.count(503) == 1 and len(aws.calls("RunInstances")) == 3
    assert [s.status for s in aws.realism.requests("CreateVpc")] == [503, 503, 200]
    assert len(aws.calls("CreateVpc")) == 1  # one API call: the retries were botocore's


def test_lost_run_instances_responses_launch_each_batch_once(aws, cli):
    make_profile(cli)
    aws.realism.lose_response("RunInstances", times=2)  # the controller's and the master's
    aws.realism.lose_response("RunInstances", times=1, how="500")  # the workers'
    result = _up(cli, workers=3)
    assert result.exit_code == 0, result.output
    assert count_tagged(aws, "cons")["instances"] == 5  # controller, master, 3 workers: no duplicates
    assert _codes(aws) >= {"lost-response:reset", "lost-response:500", "idempotent-replay"}
    assert [s.injected for s in aws.realism.requests("RunInstances")].count("idempotent-replay") == 3


def test_rerun_after_a_launch_whose_answer_never_came_adopts_the_instances(aws, cli):
    make_profile(cli)
    aws.realism.crash_after("RunInstances")  # the controller is launched; the process dies
    with pytest.raises(SimulatedCrash):
        _up(cli)
    aws.reset_calls()
    again = _up(cli)
    assert again.exit_code == 0, again.output
    assert count_tagged(aws, "cons") == ONE_OF_EVERYTHING
    assert len(aws.calls("RunInstances")) == 2  # the node groups only: the controller was adopted


def test_down_finishes_in_one_run_while_aws_drains_and_deletes_no_root_volume(aws, cli):
    make_profile(cli)
    assert _up(cli, workers=5).exit_code == 0
    aws.realism.linger_dependencies(calls=2)  # each dependent delete refused twice
    aws.realism.pending(shutdown_calls=1)  # shutting-down / deleting at the first look
    aws.reset_calls()
    result = cli(["down", "cons", "--yes", "--delete-shared-volume"])
    assert result.exit_code == 0, result.output
    assert "nothing billable is left" in result.stdout
    assert sum(count_tagged(aws, "cons").values()) == 0
    assert aws.client("iam").list_roles(PathPrefix="/clusterous/")["Roles"] == []

    refused = {(s.operation, s.injected) for s in aws.realism.injected() if s.status == 400}
    assert {
        ("DetachInternetGateway", "DependencyViolation"),
        ("DeleteSubnet", "DependencyViolation"),
        ("DeleteSecurityGroup", "DependencyViolation"),
        ("DeleteVpc", "DependencyViolation"),
        ("ReleaseAddress", "AuthFailure"),
    } <= refused, refused
    assert "AWS still holds" in result.stderr  # the wait is shown, not silent
    # 7 instances, 7 root volumes deleted by their termination: only the shared volume is deleted.
    assert len(aws.calls("TerminateInstances")) == 1
    assert len(aws.calls("DeleteVolume")) == 1


def test_the_nat_gateway_never_takes_the_controllers_address(aws, cli):
    """AWS gives a NAT gateway created without an address a random free one of the public
    subnet; 1 cluster in 251 would lose the controller's fixed address to it, forever."""
    make_profile(cli)
    aws.realism.subnet_addresses(nat_takes=layout.CONTROLLER_IP)  # the unlucky draw
    result = _up(cli)
    assert result.exit_code == 0, result.output
    ec2 = aws.client("ec2")
    (nat,) = [n for n in ec2.describe_nat_gateways()["NatGateways"] if n["State"] != "deleted"]
    (controller,) = [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:clusterous:role", "Values": ["controller"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    assert nat["NatGatewayAddresses"][0]["PrivateIp"] == layout.NAT_GATEWAY_IP
    assert controller["PrivateIpAddress"] == layout.CONTROLLER_IP != layout.NAT_GATEWAY_IP
    assert ipaddress.ip_address(layout.NAT_GATEWAY_IP) in ipaddress.ip_network(layout.PUBLIC_CIDR)
