"""`down`: delete everything a cluster owns, in the order AWS requires, then prove nothing is left.

Works from tags alone (a lost laptop, a partial `up`, a half-finished `down` are all fine): the
inventory says what exists, each deletion tolerates "already gone", and the final sweep asks AWS
again, through describe calls and the Resource Groups Tagging API, for anything still tagged.

AWS needs time at teardown: instances and the NAT gateway are waited for with botocore's waiters
(a progress line every 30 s), and the minutes their network interfaces and public addresses
linger after that (DependencyViolation, or AuthFailure releasing the NAT's address) are waited out
by the clients' Patience (retries.py), so one run finishes. The calls do not grow with the node
count apart from the one TerminateInstances batch: root volumes go with their instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterous_provisioner import layout, tags
from clusterous_provisioner.inventory import Inventory, discover, role_of
from clusterous_provisioner.kinds import KINDS, resources

WAIT_DELAY = 2  # seconds between a waiter's polls
WAIT_REPORT = 30  # seconds between progress lines
WAIT_TOTAL = 900  # seconds before `down` gives up waiting (and says to re-run)
GONE = (
    "NotFound",
    "NoSuchEntity",
    "ParameterNotFound",
    "InvalidAllocationID.NotFound",
    "InvalidAssociationID.NotFound",
    "Gateway.NotAttached",
    "InvalidPermission.NotFound",
)

Report = Callable[[str], None]


@dataclass
class Receipt:
    """What `down` did, what it kept on purpose, and what the sweep still found (should be nothing)."""

    cluster: str
    region: str
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**asdict(self), "clean": not self.leftovers}


def volume_fate(inv: Inventory, keep: bool, delete: bool) -> tuple[dict | None, bool | None]:
    """(shared volume, delete it?): --delete-shared-volume deletes it, --keep-shared-volume keeps
    it; without either, one brought in by id is kept and one the cluster created is the user's
    call — None: ask, and keep it when nobody can be asked (`--yes`): a kept volume costs cents a
    month, a deleted one is gone with its data."""
    volume = inv.shared_volume
    if volume is None:
        return None, False
    if delete:
        return volume, True
    origin = tags.as_dict(volume.get("Tags")).get(tags.VOLUME_ORIGIN, "created")
    if keep or origin == "external":
        return volume, False
    return volume, None


def summary(inv: Inventory, delete_volume: bool) -> list[str]:
    """One line per kind of resource that `down` will delete, for the confirmation."""
    lines = []
    if inv.instances:
        by_role: dict[str, int] = {}
        for i in inv.instances:
            label = (
                "controller"
                if role_of(i) == "controller"
                else tags.as_dict(i.get("Tags")).get(tags.GROUP, "node")
            )
            by_role[label] = by_role.get(label, 0) + 1
        lines.append("instances: " + ", ".join(f"{k} ×{v}" for k, v in sorted(by_role.items())))
    network = [(len([i for i in resources(inv, k) if k.present(i)]), k.label) for k in KINDS if k.network]
    parts = [f"{n} {what}{'s' if n > 1 else ''}" for n, what in network if n]
    if parts:
        lines.append("network: " + ", ".join(parts))
    if inv.role or inv.instance_profile:
        lines.append(f"IAM: role and instance profile {layout.role_name(inv.cluster, inv.region)}")
    if inv.key_pairs:
        lines.append(f"key pair {inv.key_pairs[0]['KeyName']} and its local private key")
    if inv.token_parameter:
        lines.append(f"SSM parameter {layout.token_parameter(inv.cluster)} (k3s token)")
    volume = inv.shared_volume
    if volume is not None:
        fate = (
            "DELETED (its data is lost)"
            if delete_volume
            else f"KEPT (`clusterous-k8s volumes rm {volume['VolumeId']}` deletes it later)"
        )
        lines.append(f"shared volume {volume['VolumeId']} ({volume['Size']} GiB): {fate}")
    return lines


def _quietly(call, *args, also: tuple[str, ...] = (), **kwargs):
    """Run a delete; a resource that is already gone (or, for codes in `also`, already in the
    state the call asks for) is what we wanted."""
    from botocore.exceptions import ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in GONE or code in also or code.endswith((".NotFound", "NotFoundException")):
            return None
        raise


def wait_for(ec2, waiter_name: str, what: str, report: Report, **kwargs) -> None:
    """A botocore waiter polled every WAIT_DELAY s, with a progress line every WAIT_REPORT s, for
    at most WAIT_TOTAL s (then botocore's WaiterError: `down` says to re-run)."""
    from botocore.exceptions import WaiterError

    waiter = ec2.get_waiter(waiter_name)
    chunk = max(1, WAIT_REPORT // WAIT_DELAY)
    start = time.monotonic()
    while True:
        try:
            waiter.wait(WaiterConfig={"Delay": WAIT_DELAY, "MaxAttempts": chunk}, **kwargs)
            return
        except WaiterError as exc:
            waited = time.monotonic() - start
            if "Max attempts exceeded" not in str(exc) or waited + WAIT_REPORT > WAIT_TOTAL:
                raise
            report(f"still waiting for {what} ({waited:.0f} s of at most {WAIT_TOTAL // 60} min)")


@dataclass
class _Teardown:
    clients: Any  # clients.Clients (ec2, iam, ssm, tagging)
    inv: Inventory
    delete_volume: bool
    report: Report
    key_dir: Path | None
    receipt: Receipt


def destroy(
    clients, inv: Inventory, delete_volume: bool, report: Report, key_dir: Path | None = None
) -> Receipt:
    """Delete in the order of kinds.KINDS (the order AWS requires): instances, the volumes, NAT,
    EIP, IGW, route tables and subnets, SGs, VPC, then IAM, the cluster's key pair and token; the
    shared volume as decided by volume_fate."""
    clients.patience.report = report  # waits for AWS to release dependencies show as progress
    r = Receipt(cluster=inv.cluster, region=inv.region)
    run = _Teardown(clients, inv, delete_volume, report, key_dir, r)
    for kind in KINDS:
        DELETE[kind.field](run)
    report("sweeping for anything still tagged with the cluster")
    r.leftovers, r.checked = sweep(clients, inv.cluster)
    return r


def _instances(t: _Teardown) -> None:
    ec2, report, r = t.clients.ec2, t.report, t.receipt
    instance_ids = [i["InstanceId"] for i in t.inv.instances]
    if instance_ids:
        report(f"terminating {len(instance_ids)} instance(s)")
        ec2.terminate_instances(InstanceIds=instance_ids)
        wait_for(
            ec2,
            "instance_terminated",
            f"{len(instance_ids)} instance(s) to terminate",
            report,
            InstanceIds=instance_ids,
        )
        r.deleted += [f"instance {i}" for i in instance_ids]


def _volumes(t: _Teardown) -> None:
    ec2, report, r, inv = t.clients.ec2, t.report, t.receipt, t.inv
    volume = inv.shared_volume
    if volume is not None:
        current = ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0]
        if current["State"] == "in-use":
            for attachment in current.get("Attachments", []):
                _quietly(
                    ec2.detach_volume,
                    VolumeId=volume["VolumeId"],
                    InstanceId=attachment["InstanceId"],
                    also=("IncorrectState",),  # already detaching or detached
                )
            wait_for(
                ec2, "volume_available", f"volume {volume['VolumeId']} to detach", report,
                VolumeIds=[volume["VolumeId"]],
            )  # fmt: skip
        if t.delete_volume:
            report(f"deleting shared volume {volume['VolumeId']}")
            _quietly(ec2.delete_volume, VolumeId=volume["VolumeId"])
            r.deleted.append(f"shared volume {volume['VolumeId']}")
        else:
            keep_volume(t.clients, volume, inv.cluster)
            r.kept.append(f"shared volume {volume['VolumeId']} ({volume['Size']} GiB)")
    # Root volumes are deleted by the termination above (DeleteOnTermination); only volumes that
    # outlived their instance (detached, or kept by termination) are deleted here.
    for other in left_behind(inv, [i["InstanceId"] for i in inv.instances]):
        if other is not volume:
            _quietly(ec2.delete_volume, VolumeId=other["VolumeId"])
            r.deleted.append(f"volume {other['VolumeId']}")


def _live_nats(inv: Inventory) -> list[dict]:
    return [n for n in inv.nat_gateways if n["State"] != "deleted"]


def _nat_gateways(t: _Teardown) -> None:
    ec2, report = t.clients.ec2, t.report
    nat_ids = [n["NatGatewayId"] for n in _live_nats(t.inv)]
    if nat_ids:
        report("deleting the NAT gateway (usually about a minute)")
        for nat in nat_ids:
            _quietly(ec2.delete_nat_gateway, NatGatewayId=nat)
        wait_for(ec2, "nat_gateway_deleted", "the NAT gateway to be deleted", report, NatGatewayIds=nat_ids)
        t.receipt.deleted += [f"NAT gateway {n}" for n in nat_ids]


def _addresses(t: _Teardown) -> None:
    # A NAT gateway's address is unmapped by deleting the gateway (disassociating it is refused).
    ec2 = t.clients.ec2
    nat_addresses = {
        a.get("AllocationId") for n in _live_nats(t.inv) for a in n.get("NatGatewayAddresses", [])
    }
    for address in t.inv.addresses:
        if address.get("AssociationId") and address["AllocationId"] not in nat_addresses:
            _quietly(ec2.disassociate_address, AssociationId=address["AssociationId"])
        _quietly(ec2.release_address, AllocationId=address["AllocationId"])
        t.receipt.deleted.append(f"Elastic IP {address.get('PublicIp', address['AllocationId'])}")


def _internet_gateways(t: _Teardown) -> None:
    ec2 = t.clients.ec2
    for igw in t.inv.internet_gateways:
        for attachment in igw.get("Attachments", []):
            _quietly(
                ec2.detach_internet_gateway,
                InternetGatewayId=igw["InternetGatewayId"],
                VpcId=attachment["VpcId"],
            )
        _quietly(ec2.delete_internet_gateway, InternetGatewayId=igw["InternetGatewayId"])
        t.receipt.deleted.append(f"internet gateway {igw['InternetGatewayId']}")


def _route_tables(t: _Teardown) -> None:
    ec2 = t.clients.ec2
    for table in t.inv.route_tables:
        if any(a.get("Main") for a in table.get("Associations", [])):
            continue  # the VPC's main table goes with the VPC
        for association in table.get("Associations", []):
            _quietly(ec2.disassociate_route_table, AssociationId=association["RouteTableAssociationId"])
        _quietly(ec2.delete_route_table, RouteTableId=table["RouteTableId"])
        t.receipt.deleted.append(f"route table {table['RouteTableId']}")


def _subnets(t: _Teardown) -> None:
    for subnet in t.inv.subnets:
        _quietly(t.clients.ec2.delete_subnet, SubnetId=subnet["SubnetId"])
        t.receipt.deleted.append(f"subnet {subnet['SubnetId']}")


def _security_groups(t: _Teardown) -> None:
    ec2 = t.clients.ec2
    # Groups that refer to each other cannot be deleted until those rules are gone.
    for group in t.inv.security_groups:
        referencing = [p for p in group.get("IpPermissions", []) if p.get("UserIdGroupPairs")]
        if referencing:
            _quietly(ec2.revoke_security_group_ingress, GroupId=group["GroupId"], IpPermissions=referencing)
    for group in t.inv.security_groups:
        _quietly(ec2.delete_security_group, GroupId=group["GroupId"])
        t.receipt.deleted.append(f"security group {group['GroupId']}")


def _vpcs(t: _Teardown) -> None:
    for vpc in t.inv.vpcs:
        _quietly(t.clients.ec2.delete_vpc, VpcId=vpc["VpcId"])
        t.receipt.deleted.append(f"VPC {vpc['VpcId']}")


def _instance_profile(t: _Teardown) -> None:
    iam, inv = t.clients.iam, t.inv
    name = layout.role_name(inv.cluster, inv.region)  # discover adopted it only if tagged as ours
    if inv.instance_profile is not None:
        for role in inv.instance_profile.get("Roles", []):
            _quietly(
                iam.remove_role_from_instance_profile, InstanceProfileName=name, RoleName=role["RoleName"]
            )
        _quietly(iam.delete_instance_profile, InstanceProfileName=name)
        t.receipt.deleted.append(f"instance profile {name}")


def _role(t: _Teardown) -> None:
    iam, inv = t.clients.iam, t.inv
    name = layout.role_name(inv.cluster, inv.region)
    if inv.role is not None:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            _quietly(iam.delete_role_policy, RoleName=name, PolicyName=policy)
        for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            _quietly(iam.detach_role_policy, RoleName=name, PolicyArn=policy["PolicyArn"])
        _quietly(iam.delete_role, RoleName=name)
        t.receipt.deleted.append(f"IAM role {name}")


def _key_pairs(t: _Teardown) -> None:
    for key in t.inv.key_pairs:
        _quietly(t.clients.ec2.delete_key_pair, KeyName=key["KeyName"])
        t.receipt.deleted.append(f"key pair {key['KeyName']}")
        if t.key_dir is not None:
            (t.key_dir / f"{key['KeyName']}.pem").unlink(missing_ok=True)


def _token_parameter(t: _Teardown) -> None:
    if t.inv.token_parameter:
        name = layout.token_parameter(t.inv.cluster)
        _quietly(t.clients.ssm.delete_parameter, Name=name)
        t.receipt.deleted.append(f"SSM parameter {name}")


def remove_nat(clients, inv: Inventory, report: Report) -> list[str]:
    """`suspend`: the NAT gateway and its Elastic IP, by the same steps as `down` (the address is
    released once the gateway is `deleted`: a deleting gateway still holds it). Returns what went."""
    clients.patience.report = report
    run = _Teardown(clients, inv, False, report, None, Receipt(cluster=inv.cluster, region=inv.region))
    _nat_gateways(run)
    _addresses(run)
    return run.receipt.deleted


# How each kind of kinds.KINDS is deleted (destroy runs them in the table's order).
DELETE: dict[str, Callable[[_Teardown], None]] = {
    "instances": _instances,
    "volumes": _volumes,
    "nat_gateways": _nat_gateways,
    "addresses": _addresses,
    "internet_gateways": _internet_gateways,
    "route_tables": _route_tables,
    "subnets": _subnets,
    "security_groups": _security_groups,
    "vpcs": _vpcs,
    "instance_profile": _instance_profile,
    "role": _role,
    "key_pairs": _key_pairs,
    "token_parameter": _token_parameter,
}


def left_behind(inv: Inventory, terminated: list[str]) -> list[dict]:
    """The cluster's non-shared volumes that terminating `terminated` does not delete: volumes whose
    instance's block device mapping says DeleteOnTermination go with it (AWS deletes them)."""
    going = set(terminated)
    with_instance = {
        mapping["Ebs"]["VolumeId"]
        for i in inv.instances
        if i["InstanceId"] in going
        for mapping in i.get("BlockDeviceMappings", [])
        if mapping.get("Ebs", {}).get("DeleteOnTermination") and mapping["Ebs"].get("VolumeId")
    }
    return [
        v
        for v in inv.volumes
        if role_of(v) != "shared-volume"
        and v["VolumeId"] not in with_instance
        and v.get("State") not in ("deleting", "deleted")
    ]


def keep_volume(clients, volume: dict, cluster: str) -> None:
    """A kept volume no longer belongs to the cluster; it remembers which cluster it served."""
    clients.ec2.delete_tags(Resources=[volume["VolumeId"]], Tags=[{"Key": tags.CLUSTER}, {"Key": tags.KEY}])
    clients.ec2.create_tags(
        Resources=[volume["VolumeId"]],
        Tags=[{"Key": tags.LAST_CLUSTER, "Value": cluster}, {"Key": tags.ROLE, "Value": "shared-volume"}],
    )


def sweep(clients, cluster: str) -> tuple[list[str], list[str]]:
    """Ask AWS again for anything carrying the cluster's tag: (leftovers, what was checked)."""
    inv = discover(clients, cluster)
    left = [k.leftover(i) for k in KINDS for i in resources(inv, k) if k.present(i)]
    checked = list(dict.fromkeys(k.plural for k in KINDS))
    # The Tagging API sees resource types the describe calls above do not know about.
    known = {k.tagging_type for k in KINDS if k.tagging_type}
    try:
        pages = clients.tagging.get_paginator("get_resources").paginate(
            TagFilters=[{"Key": tags.CLUSTER, "Values": [cluster]}]
        )
        for page in pages:
            for mapping in page["ResourceTagMappingList"]:
                arn = mapping["ResourceARN"]
                kind = arn.split(":")[5].split("/")[0] if arn.count(":") >= 5 else arn
                if kind not in known:
                    left.append(f"tagged resource {arn}")
        checked.append("Resource Groups Tagging API")
    except Exception as exc:  # noqa: BLE001 - the describe calls above already covered what we make
        checked.append(f"Resource Groups Tagging API unavailable ({type(exc).__name__})")
    return left, checked
