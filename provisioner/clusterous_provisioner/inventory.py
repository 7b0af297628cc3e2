"""What a cluster owns in AWS right now, found by tags alone (no local state is trusted).

`discover` makes a fixed number of describe calls whatever the cluster's size; `up` plans against
it, `down` deletes from it, `status` reports it. `describe_instances` and `console_output` are
what `up`'s wait asks EC2 about instances it knows by id (the CLI calls no EC2 API itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clusterous_provisioner import layout, tags
from clusterous_provisioner.kinds import KINDS, LIVE_INSTANCE_STATES, resources


@dataclass
class Inventory:
    """The cluster's resources by planned key; lists where AWS could hold more than one."""

    cluster: str
    region: str
    vpcs: list[dict] = field(default_factory=list)
    subnets: list[dict] = field(default_factory=list)
    internet_gateways: list[dict] = field(default_factory=list)
    route_tables: list[dict] = field(default_factory=list)
    addresses: list[dict] = field(default_factory=list)
    nat_gateways: list[dict] = field(default_factory=list)
    security_groups: list[dict] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)
    volumes: list[dict] = field(default_factory=list)
    key_pairs: list[dict] = field(default_factory=list)
    role: dict | None = None
    instance_profile: dict | None = None
    foreign_iam: list[str] = field(default_factory=list)  # our IAM names, not tagged as ours
    token_parameter: bool = False
    online: bool = True

    @staticmethod
    def offline(cluster: str, region: str) -> Inventory:
        """An empty inventory for plans made without credentials: everything will be created."""
        return Inventory(cluster=cluster, region=region, online=False)

    def by_key(self, items: list[dict], key: str) -> dict | None:
        return next((i for i in items if tags.as_dict(i.get("Tags")).get(tags.KEY) == key), None)

    @property
    def vpc(self) -> dict | None:
        return self.vpcs[0] if self.vpcs else None

    def subnet(self, key: str) -> dict | None:
        return self.by_key(self.subnets, key)

    def route_table(self, key: str) -> dict | None:
        return self.by_key(self.route_tables, key)

    def security_group(self, key: str) -> dict | None:
        return self.by_key(self.security_groups, key)

    @property
    def nat_gateway(self) -> dict | None:
        return next((n for n in self.nat_gateways if n["State"] in ("pending", "available")), None)

    @property
    def address(self) -> dict | None:
        return self.addresses[0] if self.addresses else None

    @property
    def controller(self) -> dict | None:
        return next((i for i in self.instances if role_of(i) == "controller"), None)

    def group_instances(self, group: str) -> list[dict]:
        return [
            i
            for i in self.instances
            if role_of(i) == "node" and tags.as_dict(i.get("Tags")).get(tags.GROUP) == group
        ]

    @property
    def groups(self) -> list[str]:
        return sorted(
            {tags.as_dict(i.get("Tags")).get(tags.GROUP, "?") for i in self.instances if role_of(i) == "node"}
        )

    @property
    def shared_volume(self) -> dict | None:
        return next((v for v in self.volumes if role_of(v) == "shared-volume"), None)

    def duplicates(self) -> list[str]:
        """Resources that should exist once and exist more than once (say, after two runs raced):
        one line each, kind and ids."""
        singles = [
            (k.label, [i for i in resources(self, k) if k.counted(i)], k.id_key) for k in KINDS if k.one
        ]
        singles += [
            ("controller", [i for i in self.instances if role_of(i) == "controller"], "InstanceId"),
            ("shared volume", [v for v in self.volumes if role_of(v) == "shared-volume"], "VolumeId"),
        ]
        for kind in (k for k in KINDS if k.keyed):
            by_key: dict[str, list[dict]] = {}
            for item in resources(self, kind):
                by_key.setdefault(tags.as_dict(item.get("Tags")).get(tags.KEY, "?"), []).append(item)
            singles += [(f"{kind.label} {key}", group, kind.id_key) for key, group in sorted(by_key.items())]
        return [
            f"{kind}: {', '.join(str(i.get(id_key)) for i in found)}"
            for kind, found, id_key in singles
            if len(found) > 1
        ]

    @property
    def empty(self) -> bool:
        """Nothing of the cluster's is left but, perhaps, its shared volume (kept at `down`)."""
        return not any(
            i
            for k in KINDS
            for i in resources(self, k)
            if k.field != "volumes" or role_of(i) != "shared-volume"
        )


def ours(resource: dict, cluster: str, region: str) -> bool:
    """An IAM resource (account-wide) is adopted or deleted only if its tags say it is this
    cluster's, in this region."""
    found = tags.as_dict(resource.get("Tags"))
    return found.get(tags.CLUSTER) == cluster and found.get(tags.REGION) == region


def role_of(resource: dict) -> str | None:
    return tags.as_dict(resource.get("Tags")).get(tags.ROLE)


def _pages(client, operation: str, key: str, **kwargs) -> list[dict]:
    items: list[dict] = []
    for page in client.get_paginator(operation).paginate(**kwargs):
        if key == "Reservations":
            for reservation in page["Reservations"]:
                items.extend(reservation["Instances"])
        else:
            items.extend(page[key])
    return items


def discover(clients, cluster: str) -> Inventory:
    """Everything tagged with the cluster's name in the region (and its IAM role and SSM token)."""
    from botocore.exceptions import ClientError

    ec2, flt = clients.ec2, tags.cluster_filter(cluster)
    inv = Inventory(cluster=cluster, region=clients.region)
    for kind in KINDS:
        if kind.describe is None:
            continue
        operation, key = kind.describe
        filters = [*flt, *kind.filters]
        if kind.paged:
            found = _pages(ec2, operation, key, Filters=filters)
        else:
            found = getattr(ec2, operation)(Filters=filters)[key]
        setattr(inv, kind.field, [i for i in found if kind.found(i)])
    name = layout.role_name(cluster, clients.region)
    for label, call, key, attr in (
        ("IAM role", clients.iam.get_role, "RoleName", "role"),
        ("instance profile", clients.iam.get_instance_profile, "InstanceProfileName", "instance_profile"),
    ):
        try:
            found = call(**{key: name})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchEntity":
                raise
            continue
        resource = found.get("Role") or found.get("InstanceProfile")
        if ours(resource, cluster, clients.region):
            setattr(inv, attr, resource)
        else:
            inv.foreign_iam.append(f"{label} {name}")
    found = clients.ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [layout.token_parameter(cluster)]}]
    )["Parameters"]
    inv.token_parameter = bool(found)
    return inv


def describe_instances(ec2, instance_ids: list[str]) -> list[dict]:
    """The instances as EC2 describes them now (one paginated call, whatever their number)."""
    return _pages(ec2, "describe_instances", "Reservations", InstanceIds=instance_ids)


def console_output(ec2, instance_id: str) -> str:
    """The instance's console output, "" while EC2 has none yet: the latest (Nitro instances), else
    what EC2 buffered (instances that do not support `Latest`)."""
    from botocore.exceptions import ClientError

    try:
        reply = ec2.get_console_output(InstanceId=instance_id, Latest=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "UnsupportedOperation":
            raise
        reply = ec2.get_console_output(InstanceId=instance_id)  # not a Nitro instance
    return reply.get("Output") or ""


def cluster_names(clients) -> dict[str, dict]:
    """Every cluster in the region, from the tags on VPCs and instances: name → VPC or first instance."""
    ec2 = clients.ec2
    found: dict[str, dict] = {}
    for vpc in ec2.describe_vpcs(Filters=[{"Name": "tag-key", "Values": [tags.CLUSTER]}])["Vpcs"]:
        found.setdefault(tags.as_dict(vpc.get("Tags"))[tags.CLUSTER], vpc)
    return found


def cluster_instances(clients) -> list[dict]:
    """All live instances of all clusters in the region (one paginated call)."""
    return _pages(
        clients.ec2,
        "describe_instances",
        "Reservations",
        Filters=[
            {"Name": "tag-key", "Values": [tags.CLUSTER]},
            {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
        ],
    )
