"""Converging after failures: a fault or a crash at a sample of `up`'s calls, then `up` again.

Whatever the point of failure, the second run must finish the cluster with exactly one of every
resource, and `down` after the partial run must leave nothing tagged.
"""

from __future__ import annotations

import pytest

from tests.harness.faults import SimulatedCrash
from tests.provisioning import ONE_OF_EVERYTHING, UP, count_tagged, make_profile

# A sample across the whole of `up` (identity, network, storage, instances), kept small for speed;
# widen it locally with more (operation, k) pairs: every one must converge.
SAMPLE = [
    ("PutParameter", 1),
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
