"""A cluster's status as data: its instances by group, the controller's address, the shared
volume and the cost so far (uptime × prices), for `status` and its --json."""

from __future__ import annotations

from datetime import UTC, datetime

from clusterous_provisioner import aws, pricing, tags
from clusterous_provisioner.inventory import role_of


def uptime_hours(launch_time) -> float:
    if launch_time is None:
        return 0.0
    if isinstance(launch_time, str):
        launch_time = datetime.fromisoformat(launch_time.replace("Z", "+00:00"))
    return max(0.0, (datetime.now(UTC) - launch_time).total_seconds() / 3600)


def status_data(inv) -> dict:
    """The status report as data (shared by the table and --json)."""
    instances = []
    cost = 0.0
    fetched = pricing.cached_prices(aws.cache_dir(), inv.region)  # what `up` got from the Pricing API
    for i in sorted(inv.instances, key=lambda i: (role_of(i) != "controller", str(i.get("LaunchTime")))):
        t = tags.as_dict(i.get("Tags"))
        hours = uptime_hours(i.get("LaunchTime")) if i["State"]["Name"] == "running" else 0.0
        price = pricing.instance_hourly(i["InstanceType"], inv.region, fetched).hourly_usd or 0.0
        cost += hours * price
        instances.append(
            {
                "group": "controller" if role_of(i) == "controller" else t.get(tags.GROUP, "?"),
                "instance_id": i["InstanceId"],
                "type": i["InstanceType"],
                "state": i["State"]["Name"],
                "private_ip": i.get("PrivateIpAddress"),
                "public_ip": i.get("PublicIpAddress"),
                "uptime_hours": round(hours, 2),
            }
        )
    nat = inv.nat_gateway
    if nat is not None:
        cost += uptime_hours(nat.get("CreateTime")) * (
            (pricing.nat_gateway_hourly(inv.region).hourly_usd or 0.0) + pricing.PUBLIC_IPV4_HOURLY
        )
    volume = inv.shared_volume
    if volume is not None:
        cost += uptime_hours(volume.get("CreateTime")) * (
            pricing.gp3_hourly(volume["Size"], inv.region).hourly_usd or 0.0
        )
    controller = inv.controller
    return {
        "cluster": inv.cluster,
        "region": inv.region,
        "exists": not inv.empty,
        "controller_public_ip": controller.get("PublicIpAddress") if controller else None,
        "instances": instances,
        "groups": {g: len(inv.group_instances(g)) for g in inv.groups},
        "shared_volume": None
        if volume is None
        else {"volume_id": volume["VolumeId"], "size_gib": volume["Size"], "state": volume["State"]},
        "nat_gateway": nat["NatGatewayId"] if nat else None,
        "cost_so_far_usd": round(cost, 4),
    }


def clusters_data(vpcs: dict[str, dict], instances: list[dict], current: str | None) -> list[dict]:
    """`clusters`: one row per cluster found by tags (its VPC or its instances), by name."""
    rows: dict[str, dict] = {}
    for name, vpc in vpcs.items():
        created = tags.as_dict(vpc.get("Tags")).get(tags.CREATED)
        rows[name] = {"name": name, "nodes": 0, "controller": False, "created": created, "suspended": None}
    for i in instances:
        name = tags.as_dict(i.get("Tags"))[tags.CLUSTER]
        row = rows.setdefault(
            name, {"name": name, "nodes": 0, "controller": False, "created": None, "suspended": None}
        )
        if role_of(i) == "controller":
            row["controller"] = True
            row["suspended"] = tags.as_dict(i.get("Tags")).get(tags.SUSPENDED)  # since when (suspension.py)
        else:
            row["nodes"] += 1
    now = datetime.now(UTC)
    for row in rows.values():
        row["current"] = row["name"] == current
        if row["created"]:
            started = datetime.fromisoformat(row["created"].replace("Z", "+00:00"))
            row["age_hours"] = round((now - started).total_seconds() / 3600, 2)
        else:
            row["age_hours"] = None
    return sorted(rows.values(), key=lambda r: r["name"])
