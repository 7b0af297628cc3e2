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
from tests.provisioning import ONE_OF_EVERYTHING, UP, count_tagged, make_profile

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
    return cli([*UP, "--name", "res", "--workers", "1"])


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
    argv = [*UP, "--name", "duo", "--workers", "1"]
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
    make_profile(cli)
    up = _start([*UP, "--name", "pair", "--workers", "1"])
    time.sleep(0.5)
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
    _plant_lease(aws, "busy", host=socket.gethostname(), pid=os.getpid(), command="scale")
    result = cli([*UP, "--name", "busy", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "cluster busy is busy" in result.stderr and "`scale` of" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert sum(count_tagged(aws, "busy").values()) == 0
    assert _lease(aws, "busy")["command"] == "scale"  # not ours to remove


def test_a_colleagues_lease_makes_the_name_bad_input(aws, cli):
    make_profile(cli)
    _plant_lease(aws, "theirs", owner="arn:aws:iam::123456789012:user/colleague")
    result = cli([*UP, "--name", "theirs", "--workers", "1"])
    assert result.exit_code == 2, result.output
    assert "--name" in result.stderr and "user/colleague" in result.stderr
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
    result = cli([*UP, "--name", "stale", "--workers", "1"])
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
    status = cli(["status", "--name", "res"])
    assert "warning: more than one VPC: vpc-" in status.stdout, status.output
    again = _run_up(cli)
    assert "warning: more than one VPC: vpc-" in again.stderr
