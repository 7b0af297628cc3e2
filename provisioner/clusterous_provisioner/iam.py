"""The controller's IAM role and instance profile: the registry's prefix of the bucket, nothing else."""

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
