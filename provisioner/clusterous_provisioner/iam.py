"""The controller's IAM role and instance profile: the registry's prefix of the bucket, and what
the in-cluster autoscaler does to its own cluster's nodes (docs/provisioning.md, "The controller's
rights"), nothing else. Nodes get no role at all."""

from __future__ import annotations

import json

from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.steps import Outcome, Target

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


def autoscaler_policy(cluster: str, region: str, account: str, key_name: str, partition: str = "aws") -> dict:
    """What the autoscaler (and nothing else on the controller) may do in EC2, SSM and IAM: launch
    and terminate only this cluster's nodes, read only this cluster's agent token and IAM names.
    No iam:PassRole: nodes have no instance profile, so a launch cannot hand any role to an
    instance. The Describe calls allow no resource scoping (Resource "*"); they are kept to the
    cluster's region. docs/provisioning.md, "The controller's rights for the autoscaler"."""
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    iam_name = f"{layout.IAM_PATH}{layout.role_name(cluster, region)}"
    node = {"aws:ResourceTag/clusterous:cluster": cluster, "aws:ResourceTag/clusterous:role": "node"}
    return {
        "Version": "2012-10-17",
        "Statement": [
            *_launch_statements(cluster, region, ec2, key_name, partition),
            _allow(
                "TerminateClusterNodes", "ec2:TerminateInstances", f"{ec2}:instance/*", {"StringEquals": node}
            ),
            _allow(
                "DescribeInRegion",
                [*DESCRIBE_CALLS, "ssm:DescribeParameters"],
                "*",
                {"StringEquals": {"aws:RequestedRegion": region}},
            ),
            _allow(
                "AgentToken",
                "ssm:GetParameter",
                f"arn:{partition}:ssm:{region}:{account}:parameter{layout.token_parameter(cluster)}",
            ),
            _allow(  # inventory.discover looks them up to tell ours from others'
                "OwnIamNames",
                ["iam:GetRole", "iam:GetInstanceProfile"],
                [f"arn:{partition}:iam::{account}:{kind}{iam_name}" for kind in ("role", "instance-profile")],
            ),
        ],
    }


def _launch_statements(cluster: str, region: str, ec2: str, key_name: str, partition: str) -> list[dict]:
    """AWS authorizes RunInstances once per resource it touches (EC2 User Guide, "Example
    policies to control access the Amazon EC2 API", Launch instances): the new instance and its
    volumes must carry this cluster's tag and role `node` in the request (`aws:RequestTag`), the
    subnet and security group must already be this cluster's (`aws:ResourceTag`); the AMI, the
    network interface it creates, the key pair (by name) and a spot request have no tag to
    check. Tags are written at launch only (`ec2:CreateAction`), so no existing instance can be
    re-tagged into the cluster."""
    ours = {"aws:RequestTag/clusterous:cluster": cluster, "aws:RequestTag/clusterous:role": "node"}
    launched = [f"{ec2}:instance/*", f"{ec2}:volume/*"]
    return [
        _allow("LaunchClusterNodes", "ec2:RunInstances", launched, {"StringEquals": ours}),
        _allow(
            "LaunchIntoClusterNetwork",
            "ec2:RunInstances",
            [f"{ec2}:subnet/*", f"{ec2}:security-group/*"],
            {"StringEquals": {"aws:ResourceTag/clusterous:cluster": cluster}},
        ),
        _allow(
            "LaunchWith",
            "ec2:RunInstances",
            [
                f"arn:{partition}:ec2:{region}::image/*",
                f"{ec2}:network-interface/*",
                f"{ec2}:key-pair/{key_name}",
                f"{ec2}:spot-instances-request/*",
            ],
        ),
        _allow(
            "TagAtLaunchOnly",
            "ec2:CreateTags",
            launched,
            {"StringEquals": {"ec2:CreateAction": "RunInstances", **ours}},
        ),
    ]


def _allow(
    sid: str, action: str | list[str], resource: str | list[str], condition: dict | None = None
) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    return {**statement, "Condition": condition} if condition else statement


# inventory.discover's EC2 calls, and DescribeInstanceTypes (a group at zero: autoscaler.py)
DESCRIBE_CALLS = tuple(
    f"ec2:{op}"
    for op in (
        "DescribeInstances",
        "DescribeVolumes",
        "DescribeNatGateways",
        "DescribeAddresses",
        "DescribeInternetGateways",
        "DescribeRouteTables",
        "DescribeSubnets",
        "DescribeSecurityGroups",
        "DescribeVpcs",
        "DescribeKeyPairs",
        "DescribeInstanceTypes",
    )
)
POLICY_NAMES = ("registry-bucket", "autoscaler")  # the role's inline policies


ASSUME_EC2 = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


SPOT_ROLE_PATH = "/aws-service-role/spot.amazonaws.com/"  # AWSServiceRoleForEC2Spot's path


def ensure_spot_role(iam, out: Outcome) -> None:
    """The account's service-linked role for spot (AWSServiceRoleForEC2Spot). EC2 makes it at an
    account's first spot launch only for a caller allowed iam:CreateServiceLinkedRole, and
    "If you use the AWS CLI or an API, you must ensure that these roles exist" (EC2 User Guide,
    Spot Fleet permissions): the autoscaler's role has no IAM rights, so a spot group that starts
    at zero would fail its first launch. The account's, shared and free: `down` leaves it."""
    if iam.list_roles(PathPrefix=SPOT_ROLE_PATH).get("Roles"):
        return
    iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")
    out.created.append("service-linked role for EC2 Spot (the account's)")


def ensure_iam(clients, spec: ClusterSpec, target: Target, inv: Inventory, out: Outcome) -> str:
    """The controller's role and instance profile; nodes get none (the minimum)."""
    name = layout.role_name(spec.name, spec.region)
    tag = tags.tag_list(tags.tag_dict(spec.name, "iam", name, **{tags.REGION: spec.region}))
    iam = clients.iam
    role = inv.role
    if role is None:
        role = iam.create_role(
            RoleName=name,
            Path=layout.IAM_PATH,
            AssumeRolePolicyDocument=json.dumps(ASSUME_EC2),
            Description=f"clusterous cluster {spec.name}: controller (registry bucket, its own nodes)",
            Tags=tag,
        )["Role"]
        out.created.append(f"IAM role {name}")
    _, partition, _, _, account, _ = role["Arn"].split(":", 5)
    key_name = target.key_name or layout.key_pair_name(spec.name)
    policies = (
        controller_policy(target.bucket),
        autoscaler_policy(spec.name, spec.region, account, key_name, partition),
    )
    for policy_name, document in zip(POLICY_NAMES, policies, strict=True):
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    if any(g.spot for g in spec.groups):
        ensure_spot_role(iam, out)
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
