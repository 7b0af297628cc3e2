"""The registry bucket: one per account and region, shared by every cluster and colleague.

Created once (private, encrypted, tagged) and never deleted by `down`. A bucket the user brought
(`setup --bucket`) keeps its owner's settings: only a bucket carrying our tags is configured.
"""

from __future__ import annotations

import re

from clusterous_provisioner.errors import BadInput

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
        kwargs = {"Bucket": name}
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
