"""The kinds of AWS resource a cluster owns: one entry each, in the order `down` deletes them.

Each entry says where the inventory keeps the ones found, how they are found by the cluster's
tag, what a person calls them, and how the Resource Groups Tagging API names their type; the
inventory (`discover`, duplicates, empty), `down`'s summary, deletion order and sweep all read
this table. A new resource is one entry here, its create step (apply.py) and, in destroy.py, its
delete step under the same field name; plan.py lists it with its price.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clusterous_provisioner import layout

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
LIVE_NAT_STATES = ("pending", "available", "deleting", "failed")


def _always(item: dict) -> bool:
    return True


@dataclass(frozen=True)
class Kind:
    """One kind of resource. `describe` is the EC2 operation that lists them by tag (None: found
    by name, as IAM and SSM are); `one` says a cluster has one (a second is a duplicate), `keyed`
    that it has several told apart by the clusterous:key tag."""

    field: str  # Inventory attribute: a list of AWS's descriptions, or one (or a bool) for IAM/SSM
    label: str  # what a person calls one
    plural: str  # what `down`'s sweep says it checked
    id_key: str  # the id in AWS's description
    tagging_type: str | None  # the type in its ARN as the Tagging API returns it (None: not asked)
    describe: tuple[str, str] | None = None  # (EC2 operation, key of the list in its answer)
    filters: tuple[dict, ...] = ()  # beyond the cluster's tag
    paged: bool = False  # the answer comes in pages (instances: any number)
    found: Callable[[dict], bool] = _always  # kept by discovery (a deleted NAT gateway is not)
    present: Callable[[dict], bool] = _always  # still there for the sweep (not deleting/deleted)
    one: bool = False
    counted: Callable[[dict], bool] = _always  # of a kind there is one of: those that count
    keyed: bool = False
    network: bool = False  # a line of `down`'s network summary
    state: Callable[[dict], str] | None = None  # shown beside a leftover's id
    shown_key: str | None = None  # what a leftover is named by, if not its id

    def leftover(self, item: dict) -> str:
        text = f"{self.label} {item.get(self.shown_key or self.id_key)}"
        return f"{text} ({self.state(item)})" if self.state else text


KINDS: tuple[Kind, ...] = (
    Kind("instances", "instance", "instances", "InstanceId", "instance",
         describe=("describe_instances", "Reservations"),
         filters=({"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},), paged=True,
         state=lambda i: i["State"]["Name"]),
    Kind("volumes", "volume", "volumes", "VolumeId", "volume", describe=("describe_volumes", "Volumes"),
         present=lambda v: v["State"] not in ("deleting", "deleted")),
    Kind("nat_gateways", "NAT gateway", "NAT gateways", "NatGatewayId", "natgateway",
         describe=("describe_nat_gateways", "NatGateways"), found=lambda n: n["State"] in LIVE_NAT_STATES,
         present=lambda n: n["State"] != "deleted", one=True, counted=lambda n: n["State"] in ("pending", "available"),
         network=True, state=lambda n: n["State"]),
    Kind("addresses", "Elastic IP", "Elastic IPs", "AllocationId", "elastic-ip",
         describe=("describe_addresses", "Addresses"), one=True, network=True, shown_key="PublicIp"),
    Kind("internet_gateways", "internet gateway", "internet gateways", "InternetGatewayId", "internet-gateway",
         describe=("describe_internet_gateways", "InternetGateways"), one=True, network=True),
    Kind("route_tables", "route table", "route tables", "RouteTableId", "route-table",
         describe=("describe_route_tables", "RouteTables"), keyed=True, network=True),
    Kind("subnets", "subnet", "subnets", "SubnetId", "subnet", describe=("describe_subnets", "Subnets"),
         keyed=True, network=True),
    Kind("security_groups", "security group", "security groups", "GroupId", "security-group",
         describe=("describe_security_groups", "SecurityGroups"), keyed=True, network=True),
    Kind("vpcs", "VPC", "VPCs", "VpcId", "vpc", describe=("describe_vpcs", "Vpcs"), one=True, network=True),
    # IAM is account-wide: found by the name layout.role_name gives it, adopted only with our tags
    Kind("instance_profile", "instance profile", "IAM role and instance profile", "InstanceProfileName", None),
    Kind("role", "IAM role", "IAM role and instance profile", "RoleName", None),
    Kind("key_pairs", "key pair", "key pairs", "KeyName", "key-pair",
         describe=("describe_key_pairs", "KeyPairs"), one=True),
    Kind("token_parameter", "SSM parameter", "SSM parameters", "Name", "parameter"),
)  # fmt: skip

BY_FIELD = {kind.field: kind for kind in KINDS}


def resources(inv, kind: Kind) -> list[dict]:
    """The resources of `kind` in the inventory, as a list whatever the field holds."""
    value = getattr(inv, kind.field)
    if isinstance(value, list):
        return value
    if value is True:  # the SSM token: found by its name, which is all there is to say of it
        return [{"Name": layout.token_parameter(inv.cluster)}]
    return [value] if value else []
