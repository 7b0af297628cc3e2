"""Shared steps of the provisioning tests: a profile on moto, `up` with small flags, tag queries."""

from __future__ import annotations

SSH_CIDR = "198.51.100.7/32"
UP = ["up", "--ssh-cidr", SSH_CIDR, "--no-wait", "--yes"]  # the default OS: Ubuntu 24.04
# What `up` with one worker owns: controller + master + 1 worker (3 root volumes and the shared one).
ONE_OF_EVERYTHING = {
    "instances": 3,
    "vpcs": 1,
    "subnets": 2,
    "igws": 1,
    "route_tables": 2,
    "addresses": 1,
    "nats": 1,
    "sgs": 2,
    "volumes": 4,
    "key_pairs": 1,
}


def make_profile(cli, region: str = "us-east-1", name: str = "default") -> None:
    result = cli(["setup", "--profile-name", name, "--region", region, "--yes"])
    assert result.exit_code == 0, result.output


def tagged(aws, cluster: str, region: str | None = None) -> dict[str, list]:
    """Everything carrying the cluster's tag, by kind, excluding what AWS keeps as history."""
    ec2 = aws.client("ec2", region)
    flt = [{"Name": "tag:clusterous:cluster", "Values": [cluster]}]
    instances = [
        i
        for r in ec2.describe_instances(Filters=flt)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    return {
        "instances": instances,
        "vpcs": ec2.describe_vpcs(Filters=flt)["Vpcs"],
        "subnets": ec2.describe_subnets(Filters=flt)["Subnets"],
        "igws": ec2.describe_internet_gateways(Filters=flt)["InternetGateways"],
        "route_tables": ec2.describe_route_tables(Filters=flt)["RouteTables"],
        "addresses": ec2.describe_addresses(Filters=flt)["Addresses"],
        "nats": [n for n in ec2.describe_nat_gateways(Filters=flt)["NatGateways"] if n["State"] != "deleted"],
        "sgs": ec2.describe_security_groups(Filters=flt)["SecurityGroups"],
        "volumes": ec2.describe_volumes(Filters=flt)["Volumes"],
        "key_pairs": ec2.describe_key_pairs(Filters=flt)["KeyPairs"],
    }


def count_tagged(aws, cluster: str, region: str | None = None) -> dict[str, int]:
    return {k: len(v) for k, v in tagged(aws, cluster, region).items()}


def tag(resource: dict, key: str) -> str | None:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}.get(key)
