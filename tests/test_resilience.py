"""Converging after failures: a fault or a crash at a sample of `up`'s calls, then `up` again.

Whatever the point of failure, the second run must finish the cluster with exactly one of every
resource, and `down` after the partial run must leave nothing tagged.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tests.harness.faults import SimulatedCrash
from tests.provisioning import ONE_OF_EVERYTHING, UP, count_tagged, make_profile, tag, tagged

# A sample across the whole of `up` (identity, network, storage, instances), kept small for speed;
# widen it locally with more (operation, k) pairs: every one must converge.
SAMPLE = [
    ("PutParameter", 2),  # the first is the cluster's lease
    ("CreateInstanceProfile", 1),
    ("CreateVpc", 1),
    ("CreateSubnet", 2),
    ("CreateNatGateway", 1),
    ("AuthorizeSecurityGroupIngress", 2),
    ("CreateVolume", 1),
    ("RunInstances", 3),
]


def _run_up(cli):
    return cli([*UP, "--cluster", "res", "--workers", "1"])


@pytest.mark.parametrize(("operation", "at"), SAMPLE, ids=[f"{op}#{k}" for op, k in SAMPLE])
def test_fault_then_rerun_converges_to_exactly_one_of_everything(aws, cli, operation, at):
    make_profile(cli)
    aws.fail(operation, at=at, code="InternalError", message="injected")
    first = _run_up(cli)
    assert first.exit_code == 1, first.output
    assert "re-run" in first.stderr
    aws.clear_faults()
    second = _run_up(cli)
    assert second.exit_code == 0, second.output
    assert count_tagged(aws, "res") == ONE_OF_EVERYTHING
    assert len(aws.client("iam").list_roles(PathPrefix="/clusterous/")["Roles"]) == 1


CRASHES = [("CreateNatGateway", 1), ("RunInstances", 2)]


@pytest.mark.parametrize(("operation", "at"), CRASHES, ids=[f"{op}#{k}" for op, k in CRASHES])
def test_crash_then_down_leaves_nothing_tagged(aws, cli, operation, at):
    make_profile(cli)
    aws.crash(operation, at=at)
    with pytest.raises(SimulatedCrash):
        _run_up(cli)
    aws.clear_faults()
    result = cli(["down", "res", "--yes", "--delete-shared-volume"])
    assert result.exit_code == 0, result.output
    assert sum(count_tagged(aws, "res").values()) == 0
    assert aws.client("iam").list_roles(PathPrefix="/clusterous/")["Roles"] == []


def test_crash_then_up_finishes_the_job(aws, cli):
    make_profile(cli)
    aws.crash("RunInstances", at=2)
    with pytest.raises(SimulatedCrash):
        _run_up(cli)
    aws.clear_faults()
    assert _run_up(cli).exit_code == 0
    assert count_tagged(aws, "res") == ONE_OF_EVERYTHING


def test_down_after_a_partial_down_finishes(aws, cli):
    make_profile(cli)
    assert _run_up(cli).exit_code == 0
    aws.fail(
        "DeleteSecurityGroup", at=1, code="DependencyViolation", message="resource has a dependent object"
    )
    first = cli(["down", "res", "--yes", "--delete-shared-volume"])
    assert first.exit_code == 1 and "DependencyViolation" in first.stderr and "down" in first.stderr
    aws.clear_faults()
    second = cli(["down", "res", "--yes", "--delete-shared-volume"])
    assert second.exit_code == 0, second.output
    assert sum(count_tagged(aws, "res").values()) == 0


# --- one run at a time (issue 14 item 4) -----------------------------------------------------------


def _start(argv: list[str]):
    """The real console entry point in its own process, as a second terminal would run it."""
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "clusterous_cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _finish(proc) -> tuple[int, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err


def _lease(aws, cluster: str) -> dict | None:
    ssm = aws.client("ssm", direct=True)
    try:
        return json.loads(ssm.get_parameter(Name=f"/clusterous/{cluster}/lease")["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def _plant_lease(aws, cluster: str, **fields) -> None:
    """A lease another run left: a colleague's, a crashed one's."""
    value = {
        "owner": "arn:aws:sts::123456789012:user/moto",
        "host": "elsewhere",
        "pid": 1,
        "command": "up",
        "expires": time.time() + 600,
        "token": "f" * 32,
    } | fields
    aws.client("ssm", direct=True).put_parameter(
        Name=f"/clusterous/{cluster}/lease", Value=json.dumps(value), Type="String"
    )


def test_two_ups_started_together_make_one_cluster(aws, cli):
    make_profile(cli)
    argv = [*UP, "--cluster", "duo", "--workers", "1"]
    runs = [_start(argv), _start(argv)]
    results = [_finish(p) for p in runs]
    assert count_tagged(aws, "duo") == ONE_OF_EVERYTHING, results
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results
    if codes[1] != 0:  # the second gave up waiting: it names the first
        loser = next(out for code, out in results if code != 0)
        assert "cluster duo is busy" in loser and "`up` of" in loser and "pid" in loser, loser
    assert _lease(aws, "duo") is None  # released by both


def test_up_and_down_started_together_leave_all_or_nothing(aws, cli):
    """`down` starts while `up` is midway (its VPC exists, its NAT gateway is still pending)."""
    make_profile(cli)
    aws.realism.pending(nat_seconds=8)
    up = _start([*UP, "--cluster", "pair", "--workers", "1"])
    deadline = time.monotonic() + 120
    while not count_tagged(aws, "pair")["vpcs"]:
        assert up.poll() is None and time.monotonic() < deadline, _finish(up)
        time.sleep(0.1)
    down = _start(["down", "pair", "--yes", "--delete-shared-volume"])
    results = [_finish(up), _finish(down)]
    counts = count_tagged(aws, "pair")
    assert counts == ONE_OF_EVERYTHING or sum(counts.values()) == 0, (counts, results)
    assert results[0][0] == 0, results
    assert _lease(aws, "pair") is None


def test_a_second_run_of_the_same_user_waits_then_names_the_holder(aws, cli, monkeypatch):
    from clusterous_provisioner import lease

    make_profile(cli)
    monkeypatch.setattr(lease, "WAIT_SECONDS", 1.0)
    _plant_lease(aws, "busy", host=socket.gethostname(), pid=os.getppid(), command="scale")  # alive
    result = cli([*UP, "--cluster", "busy", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "cluster busy is busy" in result.stderr and "`scale` of" in result.stderr
    assert f"pid {os.getppid()}" in result.stderr
    assert sum(count_tagged(aws, "busy").values()) == 0
    assert _lease(aws, "busy")["command"] == "scale"  # not ours to remove


def test_a_colleagues_lease_makes_the_name_bad_input(aws, cli):
    make_profile(cli)
    _plant_lease(aws, "theirs", owner="arn:aws:iam::123456789012:user/colleague")
    result = cli([*UP, "--cluster", "theirs", "--workers", "1"])
    assert result.exit_code == 2, result.output
    assert "--cluster" in result.stderr and "user/colleague" in result.stderr
    assert sum(count_tagged(aws, "theirs").values()) == 0
    down = cli(["down", "theirs", "--yes"])
    assert down.exit_code == 2 and "NAME" in down.stderr


@pytest.mark.parametrize("how", ["expired", "dead process on this host"])
def test_a_stale_lease_is_taken_over(aws, cli, how):
    import subprocess

    make_profile(cli)
    if how == "expired":
        _plant_lease(aws, "stale", expires=time.time() - 1)
    else:
        gone = subprocess.Popen(["true"])
        gone.wait()
        _plant_lease(aws, "stale", host=socket.gethostname(), pid=gone.pid)
    result = cli([*UP, "--cluster", "stale", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "took over the expired lease of cluster stale" in result.stderr
    assert count_tagged(aws, "stale") == ONE_OF_EVERYTHING
    assert _lease(aws, "stale") is None
    marker = aws.client("ssm", direct=True).describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/clusterous/stale/lease"]}]
    )["Parameters"]
    assert marker == []


def test_the_lease_is_released_when_a_run_fails(aws, cli):
    make_profile(cli)
    aws.fail("CreateVpc", at=1, code="InternalError", message="injected")
    assert _run_up(cli).exit_code == 1
    assert _lease(aws, "res") is None
    aws.clear_faults()
    assert _run_up(cli).exit_code == 0


def test_up_and_status_report_a_resource_that_exists_twice(aws, cli):
    make_profile(cli)
    assert _run_up(cli).exit_code == 0
    ec2 = aws.client("ec2", direct=True)
    ec2.create_vpc(  # what two racing runs made before there was a lease
        CidrBlock="10.20.0.0/16",
        TagSpecifications=[
            {
                "ResourceType": "vpc",
                "Tags": [
                    {"Key": "clusterous:cluster", "Value": "res"},
                    {"Key": "clusterous:key", "Value": "vpc"},
                ],
            }
        ],
    )
    status = cli(["status", "--cluster", "res"])
    assert "warning: more than one VPC: vpc-" in status.stdout, status.output
    again = _run_up(cli)
    assert "warning: more than one VPC: vpc-" in again.stderr


# --- every call of down and scale: an error, and a crash after AWS applied it -------------------------
#
# One cluster per test, and a march through the command's calls in the order a clean run makes them:
# step i fails (or crashes just after) the next call of operation i, the command stops, and the
# next step's run picks up from there. So every call is met with the cluster in the state it has at
# that point of a real run, and the command must finish afterwards with nothing left behind. Reads
# repeated later in a run (waiters, the final sweep, the lease's release read) meet their fault at
# their first occurrence; the lease's release (DeleteParameter, last) is covered last, since a
# failed release only warns: the lease expires on its own.

READS = ("Describe", "Get", "List")

# A clean `down --delete-shared-volume` of `up --workers 1`, call by call (first occurrences).
DOWN_CALLS = [
    "GetCallerIdentity", "PutParameter",  # the lease
    "DescribeVpcs", "DescribeSubnets", "DescribeInternetGateways", "DescribeRouteTables",
    "DescribeAddresses", "DescribeNatGateways", "DescribeSecurityGroups", "DescribeInstances",
    "DescribeVolumes", "DescribeKeyPairs", "GetRole", "GetInstanceProfile", "DescribeParameters",
    "TerminateInstances", "DeleteVolume", "DeleteNatGateway", "ReleaseAddress",
    "DetachInternetGateway", "DeleteInternetGateway", "DisassociateRouteTable", "DeleteRouteTable",
    "DisassociateRouteTable", "DeleteRouteTable", "DeleteSubnet", "DeleteSubnet",
    "RevokeSecurityGroupIngress", "RevokeSecurityGroupIngress", "DeleteSecurityGroup",
    "DeleteSecurityGroup", "DeleteVpc", "RemoveRoleFromInstanceProfile", "DeleteInstanceProfile",
    "ListRolePolicies", "DeleteRolePolicy", "ListAttachedRolePolicies", "DeleteRole", "DeleteKeyPair",
    "DeleteParameter",  # the k3s token
    "GetResources", "GetParameter",  # the sweep's Tagging API call; the lease's release
]  # fmt: skip
GROW_CALLS = [
    "GetCallerIdentity", "PutParameter",
    "DescribeVpcs", "DescribeSubnets", "DescribeInternetGateways", "DescribeRouteTables",
    "DescribeAddresses", "DescribeNatGateways", "DescribeSecurityGroups", "DescribeInstances",
    "DescribeVolumes", "DescribeKeyPairs", "GetRole", "GetInstanceProfile", "DescribeParameters",
    "GetParameter",  # the agent token
    "RunInstances",
]  # fmt: skip
SHRINK_CALLS = [*GROW_CALLS[:15], "TerminateInstances"]
RELEASE = "DeleteParameter"  # the lease's release: the last call of every command


def _march(aws, run, steps: list[str], crash: bool, tolerated: dict[str, str] | None = None) -> list[str]:
    """Fail (or crash after) the next call of each operation in turn; returns the operations hit.
    `tolerated`: operations whose failure the command reports (the text given) and gets past."""
    from tests.harness.faults import SimulatedCrash

    hit = []
    for operation in steps:
        if crash and operation.startswith(READS):
            continue
        before = len(aws.calls(operation))
        if crash:
            aws.realism.crash_after(operation)
        else:
            aws.fail(operation, at=1, code="InternalError", message="injected")
        try:
            result = run()
        except SimulatedCrash:
            result = None
        aws.clear_faults()
        aws.realism.reset()
        assert len(aws.calls(operation)) > before, f"{operation} was not called: {result}"
        if result is not None and operation in (tolerated or {}):
            assert result.exit_code == 0 and tolerated[operation] in result.output, (operation, result.output)
        elif result is not None:
            assert result.exit_code == 1, (operation, result.output)
            assert "InternalError" in result.stderr and "injected" in result.stderr, (
                operation,
                result.output,
            )
        hit.append(operation)
    return hit


def _release_fails_but_the_command_finishes(aws, run, at: int):
    """The lease's DeleteParameter fails: the command's work is done, it warns and exits 0."""
    aws.fail(RELEASE, at=at)
    result = run()
    aws.clear_faults()
    return result


@pytest.mark.parametrize("crash", [False, True], ids=["error", "crash-after"])
def test_down_survives_an_error_or_a_crash_at_every_call(aws, cli, crash):
    make_profile(cli)
    assert _run_up(cli).exit_code == 0

    def down():
        return cli(["down", "res", "--yes", "--delete-shared-volume"])

    tolerated = {
        "GetResources": "Resource Groups Tagging API unavailable",  # the describe calls covered it
        "GetParameter": "could not release the lease",  # the release's read: the lease expires
    }
    hit = _march(aws, down, DOWN_CALLS, crash, tolerated)
    assert set(hit) == {op for op in DOWN_CALLS if not (crash and op.startswith(READS))}
    if not crash:
        last = _release_fails_but_the_command_finishes(aws, down, at=1)  # the token went earlier
        assert last.exit_code == 0, last.output
        assert "could not release the lease of cluster res" in last.stderr
    final = down()
    assert final.exit_code == 0, final.output
    assert sum(count_tagged(aws, "res").values()) == 0
    assert aws.client("iam").list_roles(PathPrefix="/clusterous/")["Roles"] == []


@pytest.mark.parametrize("crash", [False, True], ids=["error", "crash-after"])
def test_scale_survives_an_error_or_a_crash_at_every_call(aws, cli, crash):
    make_profile(cli)
    assert _run_up(cli).exit_code == 0

    def workers():
        return len([i for i in tagged(aws, "res")["instances"] if tag(i, "clusterous:group") == "worker"])

    def grow():
        return cli(["scale", "worker", "2", "--cluster", "res", "--yes"])

    def shrink():
        return cli(["scale", "worker", "1", "--cluster", "res", "--yes", "--force"])

    _march(aws, grow, GROW_CALLS, crash)
    assert grow().exit_code == 0 and workers() == 2  # exactly one new node, whatever failed
    _march(aws, shrink, SHRINK_CALLS, crash)
    assert shrink().exit_code == 0 and workers() == 1
    if not crash:
        last = _release_fails_but_the_command_finishes(aws, grow, at=1)
        assert last.exit_code == 0 and "could not release the lease" in last.stderr, last.output
        assert workers() == 2
