"""Checked before anything is created (the AMI, the instance types, the zone, a volume brought in
by id), so bad input never leaves a half-made cluster."""

from __future__ import annotations

from dataclasses import dataclass

from clusterous_core.errors import BadInput
from clusterous_provisioner import tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.steps import error_code

AMI_PARAMETERS = {
    "ubuntu-24.04": "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    "al2023": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
}


@dataclass(frozen=True)
class Preflight:
    """Checked before anything is created, so bad input never leaves a half-made cluster."""

    ami: str
    root_device: str
    zone: str
    external_volume: dict | None


def resolve_ami(clients, spec: ClusterSpec) -> tuple[str, str, str]:
    """The AMI id, its root device name and architecture: --ami, or the OS's public SSM parameter."""
    from botocore.exceptions import ClientError

    ami = spec.ami
    if ami is None:
        parameter = AMI_PARAMETERS[spec.os]
        try:
            ami = clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            raise BadInput(
                "--os",
                None,
                f"an OS whose image AWS publishes in {spec.region}: the SSM parameter {parameter} does not "
                "exist there; pass --os al2023 or --ami ami-...",
                spec.os,
            ) from None
    try:
        images = clients.ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError as exc:
        if not error_code(exc).startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise BadInput("--ami", None, f"an AMI that exists in {spec.region}", ami)
    return ami, images[0].get("RootDeviceName") or "/dev/xvda", images[0].get("Architecture", "x86_64")


def wrong_architecture(clients, spec: ClusterSpec, architecture: str) -> list[str]:
    """The instance types that cannot run `architecture` (DescribeInstanceTypes'
    ProcessorInfo.SupportedArchitectures): an arm64 type cannot boot an x86_64 image."""
    from botocore.exceptions import ClientError

    try:
        found = clients.ec2.describe_instance_types(InstanceTypes=spec.instance_types)["InstanceTypes"]
    except ClientError as exc:
        if error_code(exc) != "InvalidInstanceType":
            raise
        return []  # a type the region lacks: choose_zone names it
    return sorted(
        t["InstanceType"]
        for t in found
        if architecture not in t.get("ProcessorInfo", {}).get("SupportedArchitectures", [architecture])
    )


def external_volume(clients, spec: ClusterSpec) -> dict | None:
    from botocore.exceptions import ClientError

    if not spec.shared_volume_id:
        return None
    try:
        volumes = clients.ec2.describe_volumes(VolumeIds=[spec.shared_volume_id])["Volumes"]
    except ClientError as exc:
        if not error_code(exc).startswith("InvalidVolume"):
            raise
        volumes = []
    if not volumes:
        raise BadInput(
            "shared_volume_id", None, f"an EBS volume that exists in {spec.region}", spec.shared_volume_id
        )
    volume = volumes[0]
    owner = tags.as_dict(volume.get("Tags")).get(tags.CLUSTER)
    if owner and owner != spec.name:
        raise BadInput(
            "shared_volume_id",
            None,
            f"a volume no other cluster uses (it belongs to {owner})",
            volume["VolumeId"],
        )
    if volume["State"] == "in-use" and not owner:
        raise BadInput(
            "shared_volume_id", None, "a detached volume (it is attached elsewhere)", volume["VolumeId"]
        )
    return volume


def choose_zone(clients, spec: ClusterSpec, inv: Inventory, volume: dict | None) -> str:
    """One availability zone offering every instance type (the existing subnet's or volume's, if any)."""
    offerings = clients.ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": spec.instance_types}],
    )["InstanceTypeOfferings"]
    by_zone: dict[str, set[str]] = {}
    for offer in offerings:
        by_zone.setdefault(offer["Location"], set()).add(offer["InstanceType"])
    wanted = set(spec.instance_types)
    offered_anywhere = set().union(*by_zone.values()) if by_zone else set()
    missing = sorted(wanted - offered_anywhere)
    if missing:
        raise BadInput(
            "instance type", None, f"an instance type offered in {spec.region}", ", ".join(missing)
        )
    good = sorted(z for z, types in by_zone.items() if wanted <= types)
    subnet = inv.subnet("subnet-public") or inv.subnet("subnet-private")
    fixed = subnet["AvailabilityZone"] if subnet else volume["AvailabilityZone"] if volume else None
    if fixed:
        if fixed not in good:
            lacking = ", ".join(sorted(wanted - by_zone.get(fixed, set())))
            raise BadInput(
                "instance type", None, f"an instance type offered in {fixed}, where the cluster is", lacking
            )
        return fixed
    if not good:
        raise BadInput(
            "instance type",
            None,
            "instance types that one availability zone offers together",
            ", ".join(sorted(wanted)),
        )
    return good[0]


def preflight(clients, spec: ClusterSpec, inv: Inventory, where=None) -> Preflight:
    """`where(instance_type)` names the flag or file field a refused type came from."""
    if inv.foreign_iam:  # account-wide names: never adopt or change what another made
        raise BadInput(
            "--cluster",
            None,
            f"a cluster name whose IAM names are free in this account: {' and '.join(inv.foreign_iam)} "
            f"exist(s) without this cluster's tags for {spec.region}",
            spec.name,
        )
    ami, root, architecture = resolve_ami(clients, spec)
    wrong = wrong_architecture(clients, spec, architecture)
    if wrong:
        source, field_name = where(wrong[0]) if where else ("instance type", None)
        raise BadInput(
            source,
            field_name,
            f"an instance type that runs {architecture}, the architecture of the AMI {ami} "
            f"({', '.join(wrong)} cannot); pick another type or an image built for it",
            ", ".join(wrong),
        )
    volume = external_volume(clients, spec)
    if volume and inv.subnets and volume["AvailabilityZone"] != inv.subnets[0]["AvailabilityZone"]:
        raise BadInput(
            "shared_volume_id",
            None,
            f"a volume in {inv.subnets[0]['AvailabilityZone']}, the cluster's zone (it is in {volume['AvailabilityZone']})",
            volume["VolumeId"],
        )
    return Preflight(
        ami=ami, root_device=root, zone=choose_zone(clients, spec, inv, volume), external_volume=volume
    )
