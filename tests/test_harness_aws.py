"""The moto harness itself: reachable over HTTP, isolated per test, calls recorded, faults injected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from tests.harness.faults import SimulatedCrash


def test_endpoint_reaches_moto_through_standard_env(aws):
    import boto3

    # No endpoint_url passed: AWS_ENDPOINT_URL alone must route the call to the local server.
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    assert vpc in [v["VpcId"] for v in aws.client("ec2").describe_vpcs()["Vpcs"]]
    assert aws.calls("CreateVpc") == [("ec2", "CreateVpc")]


@pytest.mark.parametrize("round", [1, 2])
def test_each_test_starts_from_a_clean_account(aws, round):
    ec2 = aws.client("ec2")
    tagged = ec2.describe_vpcs(Filters=[{"Name": "tag:isolation", "Values": ["probe"]}])["Vpcs"]
    assert tagged == []
    ec2.create_vpc(
        CidrBlock="10.8.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "isolation", "Value": "probe"}]}],
    )


def test_ami_validation_and_managed_policies_are_on(aws):
    ec2 = aws.client("ec2")
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId="ami-00000000000000000", MinCount=1, MaxCount=1)
    assert "InvalidAMIID" in err.value.response["Error"]["Code"]
    iam = aws.client("iam")
    arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    assert iam.get_policy(PolicyArn=arn)["Policy"]["PolicyName"] == "AmazonSSMManagedInstanceCore"


def test_fault_at_kth_call_of_an_operation(aws):
    ec2 = aws.client("ec2")
    aws.fail(
        "CreateVpc", at=2, code="VpcLimitExceeded", message="The maximum number of VPCs has been reached."
    )
    ec2.create_vpc(CidrBlock="10.1.0.0/16")
    with pytest.raises(ClientError) as err:
        ec2.create_vpc(CidrBlock="10.2.0.0/16")
    assert err.value.response["Error"]["Code"] == "VpcLimitExceeded"
    ec2.create_vpc(CidrBlock="10.3.0.0/16")  # only the 2nd call fails
    cidrs = {v["CidrBlock"] for v in ec2.describe_vpcs()["Vpcs"]}
    assert {"10.1.0.0/16", "10.3.0.0/16"} <= cidrs and "10.2.0.0/16" not in cidrs


def test_crash_between_two_calls(aws):
    ec2 = aws.client("ec2")
    aws.crash("CreateSubnet", at=1)
    vpc = ec2.create_vpc(CidrBlock="10.4.0.0/16")["Vpc"]["VpcId"]
    with pytest.raises(SimulatedCrash):
        ec2.create_subnet(VpcId=vpc, CidrBlock="10.4.1.0/24")
    assert ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"] == []


def test_faults_and_call_log_reach_subprocesses(aws):
    """The CLI runs as its own process in some tests: the plugin must follow it there."""
    aws.fail("CreateBucket", at=1, code="TooManyBuckets", message="You have attempted to create more buckets")
    code = (
        "import boto3, botocore.exceptions as e\n"
        "try:\n"
        "    boto3.client('s3').create_bucket(Bucket='sub-proc-bucket')\n"
        "except e.ClientError as x:\n"
        "    print(x.response['Error']['Code'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "TooManyBuckets"
    assert aws.calls("CreateBucket") == [("s3", "CreateBucket")]
