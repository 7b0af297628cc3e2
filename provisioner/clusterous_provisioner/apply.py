"""Apply: create what the cluster lacks, in dependency order, and nothing it already has.

Each step looks at the inventory (found by tags) before it creates anything, and every resource is
tagged in the same call that creates it (TagSpecifications / Tags), so a run stopped at any point
leaves only tagged, discoverable resources, and the next run picks up where it stopped. Waits use
botocore's waiters; a node group is one RunInstances call whatever its size.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from clusterous_core.errors import BadInput, Failure
from clusterous_core.names import TIME_FORMAT
from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec, NodeGroup
from clusterous_provisioner.inventory import Inventory, describe_instances

AMI_PARAMETERS = {
    "ubuntu-24.04": "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    "al2023": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
}
WAIT = {"Delay": 5, "MaxAttempts": 120}  # at most ten minutes per waiter

Report = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """What `up` needs beyond the spec: the profile's bucket and key pair, and where local keys go."""

    bucket: str
    ssh_cidr: str
    state_dir: Path
    key_name: str | None = None  # the profile's key pair; None: one per cluster
    bucket_region: str | None = None  # the bucket's region as setup recorded it; None: the cluster's


@dataclass(frozen=True)
class Preflight:
    """Checked before anything is created, so bad input never leaves a half-made cluster."""

    ami: str
    root_device: str
    zone: str
    external_volume: dict | None


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    controller_id: str | None = None
    public_ip: str | None = None
    instance_ids: dict[str, list[str]] = field(default_factory=dict)
    key_file: Path | None = None


def _code(exc) -> str:
    return exc.response.get("Error", {}).get("Code", "")


# --- preflight ----------------------------------------------------------------------------------


def resolve_ami(clients, spec: ClusterSpec) -> tuple[str, str, str]:
    """The AMI id, its root device name and architecture: --ami, or the OS's public SSM parameter."""
    from botocore.exceptions import ClientError

    ami = spec.ami
    if ami is None:
        parameter = AMI_PARAMETERS[spec.os]
        try:
            ami = clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as exc:
            if _code(exc) != "ParameterNotFound":
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
        if not _code(exc).startswith("InvalidAMIID"):
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
        if _code(exc) != "InvalidInstanceType":
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
        if not _code(exc).startswith("InvalidVolume"):
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
            "--name",
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


# --- secrets and identity -----------------------------------------------------------------------


def ensure_token(clients, cluster: str) -> str:
    """The k3s *agent* token: created once per cluster in SSM (SecureString), never printed.

    It joins agents only. The server token is not made here: the controller generates it at its
    first boot and it never leaves that instance (docs/nodes-and-addons.md, "The tokens")."""
    from botocore.exceptions import ClientError

    name = layout.token_parameter(cluster)
    try:
        return clients.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as exc:
        if _code(exc) != "ParameterNotFound":
            raise
    try:
        clients.ssm.put_parameter(
            Name=name,
            Value=secrets.token_hex(32),
            Type="SecureString",
            Description=f"k3s agent token (joins nodes, not servers) of clusterous cluster {cluster}",
            Tags=tags.tag_list(tags.tag_dict(cluster, "k3s-token", name)),
        )
    except ClientError as exc:
        if _code(exc) != "ParameterAlreadyExists":
            raise
    return clients.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def read_token(clients, cluster: str) -> str:
    """The agent token `scale`/`add-nodes` put in new nodes' user-data (never the server token)."""
    from botocore.exceptions import ClientError

    try:
        return clients.ssm.get_parameter(Name=layout.token_parameter(cluster), WithDecryption=True)[
            "Parameter"
        ]["Value"]
    except ClientError as exc:
        if _code(exc) != "ParameterNotFound":
            raise
        raise Failure(
            f"cluster {cluster}: its k3s token ({layout.token_parameter(cluster)}) is missing",
            "re-run `clusterous-k8s up` to finish the cluster",
        ) from None


def ensure_key_pair(
    clients, spec: ClusterSpec, target: Target, inv: Inventory, report: Report
) -> tuple[str, Path | None]:
    from clusterous_provisioner import keypairs

    if target.key_name:
        return target.key_name, None
    name = layout.key_pair_name(spec.name)
    key_file = target.state_dir / f"{name}.pem"
    if inv.key_pairs and not key_file.exists():
        # A run that died between CreateKeyPair and writing the key, or another machine's run.
        users = [i["InstanceId"] for i in inv.instances if i.get("KeyName") == name]
        if users:
            raise Failure(
                f"cluster {spec.name}: the private key of key pair {name} is not on this machine "
                f"({key_file}) and {len(users)} instance(s) use it ({', '.join(users[:3])}"
                f"{', ...' if len(users) > 3 else ''}); new instances would be unreachable",
                f"copy {key_file.name} from the machine that created the cluster to {key_file}, or "
                f"`clusterous-k8s down {spec.name}` and `up` again",
            )
        report(f"key pair {name} has no private key here and no instance uses it: making it again")
        clients.ec2.delete_key_pair(KeyName=name)
    elif inv.key_pairs:
        return name, key_file
    keypairs.create_key_pair(clients.ec2, name, tags.tag_dict(spec.name, "key-pair", name), key_file)
    report(f"created key pair {name}; private key {key_file} (0600)")
    return name, key_file


# Where the registry keeps its blobs in the bucket: manifests/registry.yaml's
# REGISTRY_STORAGE_S3_ROOTDIRECTORY (/clusterous/registry) as distribution's S3 driver writes keys,
# without the leading '/' (s3Path trims it). tests/test_up_down.py checks the two agree.
REGISTRY_PREFIX = "clusterous/registry"


def controller_policy(bucket: str) -> dict:
    """The controller may use the registry's prefix of the bucket and nothing else: the bucket is
    the user's, shared by every cluster and colleague, and may hold other data."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RegistryPrefixListing",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [REGISTRY_PREFIX, f"{REGISTRY_PREFIX}/*"]}},
            },
            {
                # No s3:prefix condition exists for these: the bucket's region and the keys of
                # unfinished uploads (names, not data), which the driver lists to resume one.
                "Sid": "RegistryBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                "Resource": f"arn:aws:s3:::{bucket}",
            },
            {
                "Sid": "RegistryObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:ListMultipartUploadParts",
                    "s3:AbortMultipartUpload",
                ],
                "Resource": f"arn:aws:s3:::{bucket}/{REGISTRY_PREFIX}/*",
            },
        ],
    }


ASSUME_EC2 = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


def ensure_iam(clients, spec: ClusterSpec, target: Target, inv: Inventory, out: Outcome) -> str:
    """The controller's role and instance profile; nodes get none (the minimum)."""
    name = layout.role_name(spec.name, spec.region)
    tag = tags.tag_list(tags.tag_dict(spec.name, "iam", name, **{tags.REGION: spec.region}))
    iam = clients.iam
    if inv.role is None:
        iam.create_role(
            RoleName=name,
            Path=layout.IAM_PATH,
            AssumeRolePolicyDocument=json.dumps(ASSUME_EC2),
            Description=f"clusterous cluster {spec.name}: controller (registry bucket only)",
            Tags=tag,
        )
        out.created.append(f"IAM role {name}")
    iam.put_role_policy(
        RoleName=name,
        PolicyName="registry-bucket",
        PolicyDocument=json.dumps(controller_policy(target.bucket)),
    )
    profile = inv.instance_profile
    if profile is None:
        profile = iam.create_instance_profile(InstanceProfileName=name, Path=layout.IAM_PATH, Tags=tag)[
            "InstanceProfile"
        ]
        out.created.append(f"instance profile {name}")
    if not any(r["RoleName"] == name for r in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.get_waiter("instance_profile_exists").wait(
            InstanceProfileName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 30}
        )
    return profile["Arn"]


# --- network ------------------------------------------------------------------------------------


def _tags(spec: ClusterSpec, role: str, key: str, what: str, **extra: str) -> dict[str, str]:
    return tags.tag_dict(spec.name, role, layout.resource_name(spec.name, what), **{tags.KEY: key}, **extra)


def ensure_network(
    clients, spec: ClusterSpec, inv: Inventory, zone: str, out: Outcome, report: Report
) -> dict:
    """VPC, internet gateway, subnets, NAT gateway and route tables; returns their ids."""
    ec2 = clients.ec2
    ids: dict[str, str] = {}
    vpc = inv.vpc
    if vpc is None:
        created_at = datetime.now(UTC).strftime(TIME_FORMAT)
        vpc = ec2.create_vpc(
            CidrBlock=layout.VPC_CIDR,
            TagSpecifications=tags.tag_spec(
                "vpc", _tags(spec, "network", "vpc", "vpc", **{tags.CREATED: created_at})
            ),
        )["Vpc"]
        ec2.get_waiter("vpc_available").wait(VpcIds=[vpc["VpcId"]], WaiterConfig=WAIT)
        out.created.append(f"VPC {vpc['VpcId']}")
        hostnames = False
    else:
        hostnames = ec2.describe_vpc_attribute(VpcId=vpc["VpcId"], Attribute="enableDnsHostnames")[
            "EnableDnsHostnames"
        ]["Value"]
    ids["vpc"] = vpc_id = vpc["VpcId"]
    if not hostnames:
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})

    igw = inv.internet_gateways[0] if inv.internet_gateways else None
    if igw is None:
        igw = ec2.create_internet_gateway(
            TagSpecifications=tags.tag_spec(
                "internet-gateway", _tags(spec, "network", "internet-gateway", "igw")
            )
        )["InternetGateway"]
        out.created.append(f"internet gateway {igw['InternetGatewayId']}")
    ids["igw"] = igw["InternetGatewayId"]
    if not any(a.get("VpcId") == vpc_id for a in igw.get("Attachments", [])):
        ec2.attach_internet_gateway(InternetGatewayId=ids["igw"], VpcId=vpc_id)

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
                TagSpecifications=tags.tag_spec("subnet", _tags(spec, "network", key, what)),
            )["Subnet"]
            out.created.append(f"subnet {subnet['SubnetId']} ({what}, {zone})")
        ids[key] = subnet["SubnetId"]

    rtb_public = _ensure_route_table(
        ec2, spec, inv, vpc_id, "rtb-public", "public", ids["subnet-public"], out
    )
    _ensure_default_route(ec2, rtb_public, GatewayId=ids["igw"])

    address = inv.address
    if address is None:
        address = ec2.allocate_address(
            Domain="vpc",
            TagSpecifications=tags.tag_spec("elastic-ip", _tags(spec, "network", "nat-eip", "nat")),
        )
        out.created.append(f"Elastic IP {address['PublicIp']}")
    nat = inv.nat_gateway
    if nat is None:
        for failed in [n for n in inv.nat_gateways if n["State"] == "failed"]:
            ec2.delete_nat_gateway(NatGatewayId=failed["NatGatewayId"])
        nat = ec2.create_nat_gateway(
            SubnetId=ids["subnet-public"],
            AllocationId=address["AllocationId"],
            PrivateIpAddress=layout.NAT_GATEWAY_IP,
            TagSpecifications=tags.tag_spec("natgateway", _tags(spec, "network", "nat-gateway", "nat")),
        )["NatGateway"]
        out.created.append(f"NAT gateway {nat['NatGatewayId']}")
    ids["nat"] = nat["NatGatewayId"]
    if nat["State"] != "available":
        report("waiting for the NAT gateway (usually 1-2 minutes)")
        ec2.get_waiter("nat_gateway_available").wait(NatGatewayIds=[ids["nat"]], WaiterConfig=WAIT)

    rtb_private = _ensure_route_table(
        ec2, spec, inv, vpc_id, "rtb-private", "private", ids["subnet-private"], out
    )
    _ensure_default_route(ec2, rtb_private, NatGatewayId=ids["nat"])
    return ids


def _ensure_route_table(
    ec2, spec, inv: Inventory, vpc_id: str, key: str, what: str, subnet_id: str, out: Outcome
) -> dict:
    table = inv.route_table(key)
    if table is None:
        table = ec2.create_route_table(
            VpcId=vpc_id, TagSpecifications=tags.tag_spec("route-table", _tags(spec, "network", key, what))
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


def ensure_security_groups(
    clients, spec: ClusterSpec, inv: Inventory, vpc_id: str, ssh_cidr: str, out: Outcome
) -> dict:
    """Controller: SSH from ssh_cidr only, plus the cluster; nodes: the cluster only. Nothing else."""
    ec2 = clients.ec2
    groups: dict[str, dict] = {}
    for key, what, description in (
        (
            "sg-controller",
            "controller",
            "clusterous controller: SSH from the client, cluster-internal traffic",
        ),
        ("sg-nodes", "nodes", "clusterous nodes: cluster-internal traffic only"),
    ):
        group = inv.security_group(key)
        if group is None:
            group_id = ec2.create_security_group(
                GroupName=layout.resource_name(spec.name, what),
                Description=description,
                VpcId=vpc_id,
                TagSpecifications=tags.tag_spec("security-group", _tags(spec, "network", key, what)),
            )["GroupId"]
            out.created.append(f"security group {group_id} ({what})")
            group = {"GroupId": group_id, "IpPermissions": []}
        groups[key] = group
    ctrl, nodes = groups["sg-controller"]["GroupId"], groups["sg-nodes"]["GroupId"]
    wanted = {
        ctrl: [("ssh", ssh_cidr), ("group", ctrl), ("group", nodes)],
        nodes: [("group", ctrl), ("group", nodes)],
    }
    for group in groups.values():
        gid = group["GroupId"]
        have = _rules(group.get("IpPermissions", []))
        add = [rule for rule in wanted[gid] if rule not in have]
        stale = [rule for rule in have if rule not in wanted[gid]]
        if stale:
            ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[_permission(r) for r in stale])
        if add:
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[_permission(r) for r in add])
    return {"sg-controller": ctrl, "sg-nodes": nodes}


def _rules(permissions: list[dict]) -> list[tuple[str, str]]:
    rules = []
    for perm in permissions:
        if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22:
            rules += [("ssh", r["CidrIp"]) for r in perm.get("IpRanges", [])]
        elif perm.get("IpProtocol") == "-1":
            rules += [("group", p["GroupId"]) for p in perm.get("UserIdGroupPairs", [])]
            rules += [("any-from", r["CidrIp"]) for r in perm.get("IpRanges", [])]
        else:
            rules += [("other", json.dumps(perm, sort_keys=True, default=str))]
    return rules


def _permission(rule: tuple[str, str]) -> dict:
    kind, value = rule
    if kind == "ssh":
        return {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": value, "Description": "SSH from the client"}],
        }
    if kind == "group":
        return {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": value, "Description": "cluster-internal"}],
        }
    if kind == "any-from":
        return {"IpProtocol": "-1", "IpRanges": [{"CidrIp": value}]}
    return json.loads(value)


# --- storage and instances ----------------------------------------------------------------------


def ensure_shared_volume(clients, spec: ClusterSpec, inv: Inventory, pre: Preflight, out: Outcome) -> dict:
    """A new gp3 encrypted volume, or the user's volume by id, tagged as this cluster's."""
    ec2 = clients.ec2
    volume = inv.shared_volume
    if volume is not None:
        return volume
    if pre.external_volume is not None:
        volume = pre.external_volume
        ec2.create_tags(
            Resources=[volume["VolumeId"]],
            Tags=tags.tag_list(
                tags.tag_dict(
                    spec.name,
                    "shared-volume",
                    volume.get("Name") or layout.resource_name(spec.name, "shared"),
                )
                | {tags.VOLUME_ORIGIN: "external"}
            ),
        )
        out.created.append(f"shared volume {volume['VolumeId']} adopted (kept at down)")
        return volume
    volume = ec2.create_volume(
        AvailabilityZone=pre.zone,
        Size=spec.shared_volume_size,
        VolumeType="gp3",
        Encrypted=True,
        TagSpecifications=tags.tag_spec(
            "volume",
            tags.tag_dict(spec.name, "shared-volume", layout.resource_name(spec.name, "shared"))
            | {tags.VOLUME_ORIGIN: "created", tags.KEY: "shared-volume"},
        ),
    )
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume["VolumeId"]], WaiterConfig=WAIT)
    out.created.append(f"shared volume {volume['VolumeId']} ({spec.shared_volume_size} GiB gp3, encrypted)")
    return volume


def bootstrap_inputs(
    spec: ClusterSpec, bucket: str, agent_token: str, volume_id: str | None, bucket_region: str | None = None
):
    from clusterous_provisioner.bootstrap import BootstrapInputs

    return BootstrapInputs(
        cluster_name=spec.name,
        region=spec.region,
        k3s_version=spec.k3s_version,
        agent_token=agent_token,
        controller_ip=layout.CONTROLLER_IP,
        vpc_cidr=layout.VPC_CIDR,
        shared_volume_id=volume_id,
        bucket=bucket,
        node_groups=[g.name for g in spec.groups],
        logging_level=spec.logging_level,
        os=spec.os,
        bucket_region=bucket_region,
    )


def _instance_args(pre: Preflight, instance_type: str, user_data: str, key_name: str) -> dict:
    return {
        "ImageId": pre.ami,
        "InstanceType": instance_type,
        "KeyName": key_name,
        "UserData": user_data,
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,
            "HttpEndpoint": "enabled",
            # nodes read the server CA's hash from their own tag (joinhash.py); tag keys then
            # may hold only letters, digits and + - = . , _ : @ (EC2 refuses a launch otherwise)
            "InstanceMetadataTags": "enabled",
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": pre.root_device,
                "Ebs": {
                    "VolumeSize": layout.ROOT_VOLUME_GIB,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
    }


def client_token(args: dict, count: int) -> str:
    """The ClientToken of one launch batch: a digest of everything the batch asks for (the launch
    time to the microsecond included), so every retry of this batch, whoever makes it, is the same
    request to EC2 and launches nothing twice, while a later batch never replays an earlier one
    (a token reused after its instances were terminated would answer with those instances)."""
    import hashlib

    text = json.dumps({"count": count, "args": args}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:64]


def run_instances(ec2, count: int, args: dict) -> list[dict]:
    """One RunInstances call for `count` instances, idempotent by its ClientToken. A lost answer is
    resent with the same token by botocore's retries; a new instance profile that EC2 does not know
    yet is waited for by the clients' Patience (retries.py)."""
    token = client_token(args, count)
    return ec2.run_instances(MinCount=count, MaxCount=count, ClientToken=token, **args)["Instances"]


def launch_controller(clients, spec, pre, key_name, profile_arn, sg, subnet_id, user_data, out) -> dict:
    args = _instance_args(pre, spec.controller_type, user_data, key_name)
    args["IamInstanceProfile"] = {"Arn": profile_arn}
    args["NetworkInterfaces"] = [
        {
            "DeviceIndex": 0,
            "SubnetId": subnet_id,
            "PrivateIpAddress": layout.CONTROLLER_IP,
            "AssociatePublicIpAddress": True,
            "Groups": [sg],
            "DeleteOnTermination": True,
        }
    ]
    tagset = tags.tag_dict(
        spec.name,
        "controller",
        layout.resource_name(spec.name, "controller"),
        **{
            tags.K3S_VERSION: spec.k3s_version,  # what `scale` launches later
            tags.OS: spec.os,
            tags.LAUNCHED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    )
    args["TagSpecifications"] = tags.tag_spec("instance", tagset) + tags.tag_spec("volume", tagset)
    instance = run_instances(clients.ec2, 1, args)[0]
    out.created.append(f"controller {instance['InstanceId']} ({spec.controller_type})")
    return instance


def launch_group(
    clients, spec, group: NodeGroup, count: int, pre, key_name, sg, subnet_id, user_data, extra_tags=None
) -> list[dict]:
    """`count` more nodes of `group` in one call, private subnet, no public address; extra_tags:
    the controller's CA hash when it has one (joinhash.launch_tags), so they join at once."""
    args = _instance_args(pre, group.instance_type, user_data, key_name)
    args["NetworkInterfaces"] = [
        {
            "DeviceIndex": 0,
            "SubnetId": subnet_id,
            "AssociatePublicIpAddress": False,
            "Groups": [sg],
            "DeleteOnTermination": True,
        }
    ]
    if group.spot:
        args["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        }
    launched = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tagset = tags.tag_dict(
        spec.name,
        "node",
        layout.resource_name(spec.name, group.name),
        **{tags.GROUP: group.name, tags.LAUNCHED: launched, **(extra_tags or {})},
    )
    args["TagSpecifications"] = tags.tag_spec("instance", tagset) + tags.tag_spec("volume", tagset)
    return run_instances(clients.ec2, count, args)


def attach_shared_volume(clients, volume: dict, controller_id: str) -> None:
    ec2 = clients.ec2
    current = ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0]
    if any(a["InstanceId"] == controller_id for a in current.get("Attachments", [])):
        return
    ec2.attach_volume(
        VolumeId=volume["VolumeId"], InstanceId=controller_id, Device=layout.SHARED_VOLUME_DEVICE
    )
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume["VolumeId"]], WaiterConfig=WAIT)


def wait_running(clients, instance_ids: list[str], report: Report) -> list[dict]:
    if not instance_ids:
        return []
    report(f"waiting for {len(instance_ids)} instance(s) to run")
    clients.ec2.get_waiter("instance_running").wait(InstanceIds=instance_ids, WaiterConfig=WAIT)
    return describe_instances(clients.ec2, instance_ids)


# --- the whole converge -------------------------------------------------------------------------


def apply(
    clients, spec: ClusterSpec, target: Target, inv: Inventory, report: Report, pre: Preflight | None = None
) -> Outcome:
    """Converge the cluster to `spec`: create what is missing, in the order AWS needs."""
    out = Outcome()
    clients.patience.report = report  # waits for AWS to catch up show as progress
    pre = pre or preflight(clients, spec, inv)
    report("k3s token and key pair")
    token = ensure_token(clients, spec.name)
    key_name, out.key_file = ensure_key_pair(clients, spec, target, inv, report)
    report("IAM role for the controller")
    profile_arn = ensure_iam(clients, spec, target, inv, out)
    report(f"network in {pre.zone}")
    ids = ensure_network(clients, spec, inv, pre.zone, out, report)
    sgs = ensure_security_groups(clients, spec, inv, ids["vpc"], target.ssh_cidr, out)
    report("shared volume")
    volume = ensure_shared_volume(clients, spec, inv, pre, out)

    from clusterous_provisioner import bootstrap, joinhash

    inputs = bootstrap_inputs(spec, target.bucket, token, volume["VolumeId"], target.bucket_region)
    waiting: list[str] = []
    controller = inv.controller
    if controller is None:
        report("launching the controller")
        controller = launch_controller(
            clients,
            spec,
            pre,
            key_name,
            profile_arn,
            sgs["sg-controller"],
            ids["subnet-public"],
            bootstrap.render_controller(inputs),
            out,
        )
    out.controller_id = controller["InstanceId"]
    if controller["State"]["Name"] != "running":
        (controller,) = wait_running(clients, [out.controller_id], report)
    # The volume goes on as soon as the controller runs, before any node is launched: the
    # controller's bootstrap waits for it (and retries), and nothing else delays it.
    report("attaching the shared volume to the controller")
    attach_shared_volume(clients, volume, out.controller_id)
    for group in spec.groups:
        have = inv.group_instances(group.name)
        out.instance_ids[group.name] = [i["InstanceId"] for i in have]
        waiting += [i["InstanceId"] for i in have if i["State"]["Name"] != "running"]
        missing = group.count - len(have)
        if missing > 0:
            report(f"launching {missing} × {group.instance_type} in group {group.name}")
            new = launch_group(
                clients,
                spec,
                group,
                missing,
                pre,
                key_name,
                sgs["sg-nodes"],
                ids["subnet-private"],
                bootstrap.render_node(inputs, group.name),
                joinhash.launch_tags(controller),
            )
            out.created.append(f"{missing} node(s) in group {group.name}")
            out.instance_ids[group.name] += [i["InstanceId"] for i in new]
            waiting += [i["InstanceId"] for i in new]
    wait_running(clients, waiting, report)
    out.public_ip = controller.get("PublicIpAddress")
    return out
