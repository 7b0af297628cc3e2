"""`setup` against the moto server: profile, key pair and registry bucket, and its bad input."""

from __future__ import annotations

import stat

import pytest
import yaml

ACCOUNT = "123456789012"  # moto's default account


def read_profile(config_home, name):
    return yaml.safe_load((config_home / "profiles" / f"{name}.yml").read_text())


def test_unattended_setup_creates_a_private_encrypted_bucket(aws, cli, isolated_config):
    result = cli(
        ["setup", "--profile-name", "work", "--region", "eu-west-1", "--ssh-cidr", "203.0.113.7/32", "--yes"]
    )
    assert result.exit_code == 0, result.output
    bucket = f"clusterous-k8s-{ACCOUNT}-eu-west-1"
    assert read_profile(isolated_config, "work") == {
        "region": "eu-west-1",
        "bucket": bucket,
        "bucket_region": "eu-west-1",
        "ssh_cidr": "203.0.113.7/32",
    }
    assert yaml.safe_load((isolated_config / "config.yml").read_text()) == {"current_profile": "work"}

    s3 = aws.client("s3", "eu-west-1")
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags["clusterous:role"] == "registry"

    # Re-running converges: same bucket, not created twice, profile unchanged.
    aws.reset_calls()
    again = cli(["setup", "--profile-name", "work", "--yes"])
    assert again.exit_code == 0, again.output
    assert aws.calls("CreateBucket") == []
    assert read_profile(isolated_config, "work")["bucket"] == bucket


def test_setup_creates_a_named_key_pair_with_a_private_key_file(aws, cli, isolated_config):
    result = cli(["setup", "--region", "us-east-1", "--key-name", "lab", "--yes"])
    assert result.exit_code == 0, result.output
    profile = read_profile(isolated_config, "default")
    key_file = isolated_config / "keys" / "lab.pem"
    assert profile["key_name"] == "lab" and profile["key_file"] == str(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in key_file.read_text()
    pairs = aws.client("ec2").describe_key_pairs(KeyNames=["lab"])["KeyPairs"]
    assert pairs[0]["KeyType"] == "ed25519"
    assert "PRIVATE KEY" not in result.output  # secrets are never printed


def test_existing_key_pair_needs_a_private_key_only_you_can_read(aws, cli, isolated_config, tmp_path):
    aws.client("ec2").create_key_pair(KeyName="mine")
    key = tmp_path / "mine.pem"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    result = cli(["setup", "--key-name", "mine", "--key-file", str(key), "--yes"])
    assert result.exit_code == 2
    assert "--key-file" in result.stderr and "chmod 600" in result.stderr
    assert not (isolated_config / "profiles").exists()
    key.chmod(0o600)
    result = cli(["setup", "--key-name", "mine", "--key-file", str(key), "--yes"])
    assert result.exit_code == 0, result.output
    assert read_profile(isolated_config, "default")["key_file"] == str(key)


def test_interactive_wizard_takes_answers_and_defaults(aws, cli, isolated_config):
    answers = "lab\nus-west-2\n\nmy-lab-images\n"  # profile, region, key (default), bucket
    result = cli(["setup"], input=answers)
    assert result.exit_code == 0, result.output
    assert "AWS region" in result.stdout and "S3 bucket" in result.stdout
    assert read_profile(isolated_config, "lab") == {
        "region": "us-west-2",
        "bucket": "my-lab-images",
        "bucket_region": "us-west-2",
    }
    assert aws.client("s3", "us-west-2").head_bucket(Bucket="my-lab-images")


@pytest.mark.parametrize("bucket_region", ["us-east-2", "us-east-1"])
def test_an_existing_bucket_is_recorded_with_its_own_region(aws, cli, isolated_config, bucket_region):
    """GetBucketLocation names the region (none for us-east-1); the profile keeps it, and setup
    says that clusters of this profile go there."""
    s3 = aws.client("s3", bucket_region)
    kwargs = (
        {}
        if bucket_region == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": bucket_region}}
    )
    s3.create_bucket(Bucket="team-images", **kwargs)
    result = cli(["setup", "--region", "eu-west-1", "--bucket", "team-images", "--yes"])
    assert result.exit_code == 0, result.output
    assert aws.calls("CreateBucket") == [("s3", "CreateBucket")]  # the test's own
    assert read_profile(isolated_config, "default")["bucket_region"] == bucket_region
    assert f"'team-images' is in {bucket_region}" in result.stderr


def test_unknown_region_is_bad_input_and_writes_nothing(aws, cli, isolated_config):
    result = cli(["setup", "--region", "mars-north-1", "--yes"])
    assert result.exit_code == 2
    assert "--region" in result.stderr and "mars-north-1" in result.stderr
    assert not isolated_config.exists() or not any(isolated_config.rglob("*.yml"))
    assert aws.calls() == []


def test_bad_bucket_name(aws, cli, isolated_config):
    result = cli(["setup", "--bucket", "Not_A_Bucket", "--yes"])
    assert result.exit_code == 2 and "--bucket" in result.stderr
    assert aws.calls("CreateBucket") == []


def test_aws_refusal_is_a_failure_with_the_reason(aws, cli, isolated_config):
    aws.fail(
        "CreateBucket", code="AccessDenied", message="User is not authorized to perform: s3:CreateBucket"
    )
    result = cli(["setup", "--yes"])
    assert result.exit_code == 1
    assert "AccessDenied" in result.stderr and "s3:CreateBucket" in result.stderr
    assert "Traceback" not in result.output
    assert not (isolated_config / "profiles").exists()


def test_no_credentials_says_how_to_get_them(no_aws, cli, isolated_config):
    result = cli(["setup", "--region", "eu-west-1", "--yes"])
    assert result.exit_code == 1
    assert "no AWS credentials" in result.stderr and "aws configure" in result.stderr


def test_a_bucket_the_user_brings_keeps_its_owners_settings(aws, cli, isolated_config):
    """setup and up configure (public-access block, encryption) only a bucket they created."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="lab-data")
    s3.put_bucket_encryption(
        Bucket="lab-data",
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "k"}}
            ]
        },
    )
    own_block = {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False,
    }
    s3.put_public_access_block(Bucket="lab-data", PublicAccessBlockConfiguration=own_block)
    aws.reset_calls()
    result = cli(["setup", "--region", "us-east-1", "--bucket", "lab-data", "--yes"])
    assert result.exit_code == 0, result.output
    up = cli(
        ["up", "--ssh-cidr", "198.51.100.7/32", "--cluster", "bring", "--workers", "0", "--no-wait", "--yes"]
    )
    assert up.exit_code == 0, up.output
    assert s3.get_public_access_block(Bucket="lab-data")["PublicAccessBlockConfiguration"] == own_block
    rule = s3.get_bucket_encryption(Bucket="lab-data")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    writes = ("PutPublicAccessBlock", "PutBucketEncryption", "PutBucketTagging", "PutBucketPolicy")
    assert [op for _, op in aws.calls() if op in writes] == []
