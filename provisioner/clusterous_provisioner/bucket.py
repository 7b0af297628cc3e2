"""The registry bucket: one per account and region, shared by every cluster and colleague.

Created once (private, encrypted, tagged) and never deleted by `down`. A bucket the user brought
(`setup --bucket`) keeps its owner's settings: only a bucket carrying our tags is configured. Its
region is recorded in the profile by `setup`: the registry talks to S3 in the bucket's region, and
`up` makes clusters only in that region (docs/provisioning.md, "The registry bucket's region").
"""

from __future__ import annotations

import re
from typing import Any

from clusterous_core.errors import BadInput
from clusterous_provisioner.addons import REGISTRY_IMAGE, REGISTRY_S3_REGIONS

BUCKET_NAME = re.compile(r"^(?!xn--)(?!.*-s3alias$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
TAGS = {"clusterous:role": "registry", "clusterous:shared": "true"}


def default_bucket_name(account_id: str, region: str) -> str:
    return f"clusterous-k8s-{account_id}-{region}"


def check_bucket_name(name: str, source: str = "--bucket") -> str:
    if not BUCKET_NAME.match(name) or ".." in name:
        raise BadInput(source, None, "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-'", name)
    return name


def bucket_state(s3, name: str) -> str:
    """'ours' (we may use it), 'missing', or 'foreign' (another account owns the name)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=name)
        return "ours"
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return "missing"
        if code in ("403", "Forbidden", "AccessDenied"):
            return "foreign"
        raise


def made_by_us(s3, name: str) -> bool:
    """The bucket carries the tags `ensure_bucket` puts on a bucket it creates (first thing after
    creating it, so a run stopped half-way is finished by the next)."""
    from botocore.exceptions import ClientError

    try:
        found = s3.get_bucket_tagging(Bucket=name)["TagSet"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchTagSet", "NoSuchTagSetError"):
            return False
        raise
    have = {t["Key"]: t["Value"] for t in found}
    return all(have.get(k) == v for k, v in TAGS.items())


def ensure_bucket(s3, name: str, region: str) -> bool:
    """Create the bucket if missing, private and encrypted; True if created. A bucket we did not
    create is used as it is: its owner's settings are never rewritten."""
    state = bucket_state(s3, name)
    if state == "foreign":
        raise BadInput("--bucket", None, "a bucket name no other AWS account owns", name)
    created = state == "missing"
    if created:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        s3.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 2, "MaxAttempts": 30})
        s3.put_bucket_tagging(
            Bucket=name, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in TAGS.items()]}
        )
    elif not made_by_us(s3, name):
        return False
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}
            ]
        },
    )
    return created


def bucket_region(s3, name: str) -> str | None:
    """The bucket's region (GetBucketLocation), or None when there is no such bucket.

    S3 answers no location for us-east-1 and the legacy `EU` for eu-west-1.
    """
    from botocore.exceptions import ClientError

    try:
        location = s3.get_bucket_location(Bucket=name).get("LocationConstraint")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
            return None
        raise
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def check_registry_region(source: str, bucket: str, region_of_bucket: str, cluster_region: str) -> None:
    """Refuse a cluster whose registry would use S3 in another region, or in one it cannot start in.

    Cross-region, every push and pull of every node crosses regions (slower, and billed as
    inter-region transfer where same-region S3 to EC2 is free), and an S3 gateway endpoint serves
    only its own region's buckets.
    """
    if region_of_bucket != cluster_region:
        raise BadInput(
            source,
            "bucket",
            f"a bucket in the cluster's region {cluster_region}, but '{bucket}' is in {region_of_bucket} "
            "(cross-region S3 makes every image push and pull slower and billed as inter-region "
            f"transfer): create the cluster in {region_of_bucket}, or make a profile for "
            f"{cluster_region} (`clusterous-k8s setup --profile-name {cluster_region} --region "
            f"{cluster_region}` creates a bucket there) and use it with `--profile {cluster_region}`",
        )
    if region_of_bucket not in REGISTRY_S3_REGIONS:
        raise BadInput(
            "--region",
            None,
            f"a region the cluster registry ({REGISTRY_IMAGE.split('@')[0]}) can use S3 in; its AWS SDK "
            f"does not know {region_of_bucket}",
        )
