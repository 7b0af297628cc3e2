"""The plan and its price, offline: pure functions, and `up --dry-run` with no credentials at all."""

from __future__ import annotations

import json

import pytest

from clusterous_provisioner import pricing
from clusterous_provisioner.clusterfile import load_spec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.plan import CREATE, EXISTS, LAUNCH, make_plan


def spec(**flags):
    return load_spec(None, flags, profile_region="us-east-1", default_name="p")


def test_everything_is_created_on_an_empty_account():
    plan = make_plan(spec(workers=3), Inventory.offline("p", "us-east-1"))
    actions = {i.key: i.action for i in plan.items}
    assert actions["group:worker"] == LAUNCH and actions["vpc"] == CREATE
    assert set(actions.values()) <= {CREATE, LAUNCH}
    assert not plan.checked_aws


def test_cost_adds_up_from_the_table():
    s = spec(workers=4, worker_type="c5.xlarge", master_type="m5.large", controller_type="t3.medium")
    plan = make_plan(s, Inventory.offline("p", "us-east-1"))
    root = pricing.gp3_hourly(30, "us-east-1").hourly_usd
    expected = (
        pricing.instance_hourly("t3.medium", "us-east-1").hourly_usd
        + pricing.instance_hourly("m5.large", "us-east-1").hourly_usd
        + 4 * pricing.instance_hourly("c5.xlarge", "us-east-1").hourly_usd
        + 6 * root
        + pricing.nat_gateway_hourly("us-east-1").hourly_usd
        + 2 * pricing.PUBLIC_IPV4_HOURLY
        + pricing.gp3_hourly(20, "us-east-1").hourly_usd
    )
    assert plan.hourly_cost_usd == pytest.approx(expected, abs=1e-3)
    more = make_plan(
        spec(workers=8, worker_type="c5.xlarge", master_type="m5.large"), Inventory.offline("p", "us-east-1")
    )
    assert more.hourly_cost_usd > plan.hourly_cost_usd


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"])
@pytest.mark.parametrize("family", ["t3", "t3a", "m5", "m6i", "c5", "c6i", "r5"])
def test_table_covers_common_types_and_regions(region, family):
    price = pricing.instance_hourly(f"{family}.xlarge", region)
    assert price.hourly_usd and price.hourly_usd == pytest.approx(
        2 * pricing.instance_hourly(f"{family}.large", region).hourly_usd
    )
    assert pricing.nat_gateway_hourly(region).hourly_usd > 0 and pricing.gp3_hourly(20, region).hourly_usd > 0


def test_unknown_types_are_reported_not_guessed():
    plan = make_plan(spec(worker_type="x2iedn.32xlarge"), Inventory.offline("p", "us-east-1"))
    assert any("x2iedn.32xlarge" in line for line in plan.unpriced)
    assert pricing.instance_hourly("t3.large", "mars-1").hourly_usd is None


def test_existing_resources_and_partial_groups():
    inv = Inventory(cluster="p", region="us-east-1")
    inv.vpcs = [{"VpcId": "vpc-1", "Tags": [{"Key": "clusterous:key", "Value": "vpc"}]}]
    worker = {
        "InstanceId": "i-1",
        "Tags": [{"Key": "clusterous:role", "Value": "node"}, {"Key": "clusterous:group", "Value": "worker"}],
    }
    inv.instances = [worker, {**worker, "InstanceId": "i-2"}]
    plan = make_plan(spec(workers=5), inv)
    items = {i.key: i for i in plan.items}
    assert items["vpc"].action == EXISTS and items["subnet-public"].action == CREATE
    assert (items["group:worker"].action, items["group:worker"].existing, items["group:worker"].count) == (
        LAUNCH,
        2,
        5,
    )
    shrink = make_plan(spec(workers=1), inv)
    assert "scale" in " ".join(shrink.notes) and not [i for i in shrink.changes if i.key == "group:worker"]


def test_dry_run_offline_table(no_aws, cli):
    result = cli(["up", "--dry-run", "--region", "eu-central-1", "--workers", "3", "--name", "off"])
    assert result.exit_code == 0, result.output
    assert "NAT gateway" in result.stdout and "USD per hour" in result.stdout
    assert "no AWS credentials" in result.stdout


def test_dry_run_json_is_one_object_with_numeric_cost(no_aws, cli):
    result = cli(
        ["up", "--dry-run", "--json", "--region", "ap-southeast-2", "--name", "off", "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data["hourly_cost_usd"], float) and data["hourly_cost_usd"] > 0
    groups = {r["key"]: r for r in data["resources"]}
    assert groups["group:worker"]["count"] == 2 and groups["group:worker"]["action"] == "launch"
    more = json.loads(
        cli(
            ["up", "--dry-run", "--json", "--region", "ap-southeast-2", "--name", "off", "--workers", "6"]
        ).stdout
    )
    assert more["hourly_cost_usd"] > data["hourly_cost_usd"]


def test_dry_run_render_dir_writes_user_data_and_manifests(no_aws, cli, tmp_path):
    out = tmp_path / "render"
    result = cli(["up", "--dry-run", "--region", "us-east-1", "--name", "r", "--render-dir", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "user-data").iterdir())
    assert names == ["controller.user-data", "master.user-data", "worker.user-data"]
    assert list((out / "manifests").glob("*.yaml"))
    assert all(p.read_text().startswith("#cloud-config") for p in (out / "user-data").iterdir())


def test_dry_run_with_credentials_sees_what_exists_and_changes_nothing(aws, cli):
    assert cli(["setup", "--region", "us-east-1", "--yes"]).exit_code == 0
    aws.reset_calls()
    before = json.loads(cli(["up", "--dry-run", "--json", "--name", "seen"]).stdout)
    assert before["checked_existing_resources"] and before["changes"] == len(before["resources"])
    mutating = ("Create", "Run", "Allocate", "Put", "Attach", "Modify", "Authorize", "Associate")
    assert aws.calls() and not [op for _, op in aws.calls() if op.startswith(mutating)]


def test_newest_nodes_go_first_even_within_one_second():
    """LaunchTime has one-second resolution: our launch stamp and the launch index break ties."""
    from datetime import UTC, datetime

    from clusterous_provisioner import tags
    from clusterous_provisioner.scaling import pick_to_remove

    same_second = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def node(instance_id, stamp, index):
        return {
            "InstanceId": instance_id,
            "LaunchTime": same_second,
            "AmiLaunchIndex": index,
            "Tags": [{"Key": tags.LAUNCHED, "Value": stamp}],
        }

    first = node("i-fff", "2026-01-01T12:00:00.100000Z", 0)
    batch = [node("i-aaa", "2026-01-01T12:00:00.900000Z", 0), node("i-000", "2026-01-01T12:00:00.900000Z", 1)]
    assert [i["InstanceId"] for i in pick_to_remove([first, *batch], 2)] == ["i-000", "i-aaa"]
    assert [i["InstanceId"] for i in pick_to_remove([*batch, first], 3)] == ["i-000", "i-aaa", "i-fff"]
