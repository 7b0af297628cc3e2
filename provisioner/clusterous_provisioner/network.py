"""The cluster's network: VPC, internet gateway, subnets, NAT gateway and its address, route tables."""

from __future__ import annotations

from datetime import UTC, datetime

from clusterous_core.names import TIME_FORMAT
from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.steps import WAIT, Outcome, Report


def keyed_tags(spec: ClusterSpec, role: str, key: str, what: str, **extra: str) -> dict[str, str]:
    return tags.tag_dict(spec.name, role, layout.resource_name(spec.name, what), **{tags.KEY: key}, **extra)


def ensure_network(
    clients, spec: ClusterSpec, inv: Inventory, zone: str, out: Outcome, report: Report
) -> dict:
    """VPC, internet gateway, subnets, NAT gateway and route tables; returns their ids."""
    ec2 = clients.ec2
    ids: dict[str, str] = {}
    ids["vpc"] = vpc_id = _ensure_vpc(ec2, spec, inv, out)
    ids["igw"] = _ensure_internet_gateway(ec2, spec, inv, vpc_id, out)
    ids |= _ensure_subnets(ec2, spec, inv, vpc_id, zone, out)

    rtb_public = _ensure_route_table(
        ec2, spec, inv, vpc_id, "rtb-public", "public", ids["subnet-public"], out
    )
    _ensure_default_route(ec2, rtb_public, GatewayId=ids["igw"])
    rtb_private = _ensure_route_table(
        ec2, spec, inv, vpc_id, "rtb-private", "private", ids["subnet-private"], out
    )
    ids["nat"] = ensure_nat(ec2, spec, inv, ids["subnet-public"], rtb_private, out, report)
    return ids


def ensure_nat(
    ec2, spec: ClusterSpec, inv: Inventory, subnet_id: str, rtb_private: dict, out: Outcome, report: Report
) -> str:
    """The private subnet's way out: the NAT gateway, its Elastic IP and the private route table's
    default route to it (`up`, and `resume` after `suspend` removed the first two)."""
    nat_id = _ensure_nat_gateway(ec2, spec, inv, subnet_id, out, report)
    _ensure_default_route(ec2, rtb_private, NatGatewayId=nat_id)
    return nat_id


def _ensure_vpc(ec2, spec: ClusterSpec, inv: Inventory, out: Outcome) -> str:
    """The VPC, with DNS hostnames on."""
    vpc = inv.vpc
    if vpc is None:
        created_at = datetime.now(UTC).strftime(TIME_FORMAT)
        vpc = ec2.create_vpc(
            CidrBlock=layout.VPC_CIDR,
            TagSpecifications=tags.tag_spec(
                "vpc", keyed_tags(spec, "network", "vpc", "vpc", **{tags.CREATED: created_at})
            ),
        )["Vpc"]
        ec2.get_waiter("vpc_available").wait(VpcIds=[vpc["VpcId"]], WaiterConfig=WAIT)
        out.created.append(f"VPC {vpc['VpcId']}")
        hostnames = False
    else:
        hostnames = ec2.describe_vpc_attribute(VpcId=vpc["VpcId"], Attribute="enableDnsHostnames")[
            "EnableDnsHostnames"
        ]["Value"]
    if not hostnames:
        ec2.modify_vpc_attribute(VpcId=vpc["VpcId"], EnableDnsHostnames={"Value": True})
    return vpc["VpcId"]


def _ensure_internet_gateway(ec2, spec: ClusterSpec, inv: Inventory, vpc_id: str, out: Outcome) -> str:
    igw = inv.internet_gateways[0] if inv.internet_gateways else None
    if igw is None:
        igw = ec2.create_internet_gateway(
            TagSpecifications=tags.tag_spec(
                "internet-gateway", keyed_tags(spec, "network", "internet-gateway", "igw")
            )
        )["InternetGateway"]
        out.created.append(f"internet gateway {igw['InternetGatewayId']}")
    if not any(a.get("VpcId") == vpc_id for a in igw.get("Attachments", [])):
        ec2.attach_internet_gateway(InternetGatewayId=igw["InternetGatewayId"], VpcId=vpc_id)
    return igw["InternetGatewayId"]


def _ensure_subnets(ec2, spec: ClusterSpec, inv: Inventory, vpc_id: str, zone: str, out: Outcome) -> dict:
    """The public subnet (controller, NAT gateway) and the private one (nodes), in one zone."""
    ids: dict[str, str] = {}
    for key, cidr, what in (
        ("subnet-public", layout.PUBLIC_CIDR, "public"),
        ("subnet-private", layout.PRIVATE_CIDR, "private"),
    ):
        subnet = inv.subnet(key)
        if subnet is None:
            subnet = ec2.create_subnet(
                VpcId=vpc_id,
                CidrBlock=cidr,
                AvailabilityZone=zone,
                TagSpecifications=tags.tag_spec("subnet", keyed_tags(spec, "network", key, what)),
            )["Subnet"]
            out.created.append(f"subnet {subnet['SubnetId']} ({what}, {zone})")
        ids[key] = subnet["SubnetId"]
    return ids


def _ensure_nat_gateway(
    ec2, spec: ClusterSpec, inv: Inventory, subnet_id: str, out: Outcome, report: Report
) -> str:
    """The NAT gateway (the private subnet's only way out) and its Elastic IP; a failed one goes."""
    address = inv.address
    if address is None:
        address = ec2.allocate_address(
            Domain="vpc",
            TagSpecifications=tags.tag_spec("elastic-ip", keyed_tags(spec, "network", "nat-eip", "nat")),
        )
        out.created.append(f"Elastic IP {address['PublicIp']}")
    nat = inv.nat_gateway
    if nat is None:
        for failed in [n for n in inv.nat_gateways if n["State"] == "failed"]:
            ec2.delete_nat_gateway(NatGatewayId=failed["NatGatewayId"])
        nat = ec2.create_nat_gateway(
            SubnetId=subnet_id,
            AllocationId=address["AllocationId"],
            PrivateIpAddress=layout.NAT_GATEWAY_IP,
            TagSpecifications=tags.tag_spec("natgateway", keyed_tags(spec, "network", "nat-gateway", "nat")),
        )["NatGateway"]
        out.created.append(f"NAT gateway {nat['NatGatewayId']}")
    if nat["State"] != "available":
        report("waiting for the NAT gateway (usually 1-2 minutes)")
        ec2.get_waiter("nat_gateway_available").wait(NatGatewayIds=[nat["NatGatewayId"]], WaiterConfig=WAIT)
    return nat["NatGatewayId"]


def _ensure_route_table(
    ec2, spec, inv: Inventory, vpc_id: str, key: str, what: str, subnet_id: str, out: Outcome
) -> dict:
    table = inv.route_table(key)
    if table is None:
        table = ec2.create_route_table(
            VpcId=vpc_id,
            TagSpecifications=tags.tag_spec("route-table", keyed_tags(spec, "network", key, what)),
        )["RouteTable"]
        out.created.append(f"route table {table['RouteTableId']} ({what})")
    if not any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
        ec2.associate_route_table(RouteTableId=table["RouteTableId"], SubnetId=subnet_id)
    return table


def _ensure_default_route(ec2, table: dict, **target: str) -> None:
    ((kind, value),) = target.items()
    for route in table.get("Routes", []):
        if route.get("DestinationCidrBlock") == "0.0.0.0/0":
            if route.get(kind) == value and route.get("State", "active") == "active":
                return
            ec2.replace_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", **target)
            return
    ec2.create_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", **target)
