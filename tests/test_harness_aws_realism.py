"""The AWS realism layer in front of moto: each behaviour seen through plain boto3 clients.

Every test here would fail against bare moto: it shows an AWS behaviour moto lacks (or a moto
behaviour AWS lacks) and that the layer adds it only when switched on.
"""

from __future__ import annotations

import subprocess
import sys

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, WaiterError

from tests.harness.aws_realism import UBUNTU_AMIS
from tests.harness.faults import SimulatedCrash
from tests.provisioning import UP, make_profile

NO_RETRY = Config(retries={"total_max_attempts": 1})
STANDARD = Config(retries={"mode": "standard", "max_attempts": 5})


class Clock:
    """Stands in for the layer's monotonic clock, so windows in seconds pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(aws, service, config=NO_RETRY):
    return boto3.client(service, region_name=aws.region, endpoint_url=aws.url, config=config)


def code_of(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def network(ec2, public: bool = True):
    """A VPC with a subnet, a security group and an attached internet gateway."""
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="g", Description="g", VpcId=vpc)["GroupId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    return vpc, subnet, group, igw


def launch(ec2, subnet=None, group=None, public=False, **extra):
    args = {
        "ImageId": UBUNTU_AMIS["amd64"],
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": "t3.micro",
        **extra,
    }
    if subnet:
        args["NetworkInterfaces"] = [
            {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group], "AssociatePublicIpAddress": public}
        ]
    return ec2.run_instances(**args)["Instances"][0]["InstanceId"]


def instance_states(ec2, **kwargs) -> list[str]:
    return [
        i["State"]["Name"] for r in ec2.describe_instances(**kwargs)["Reservations"] for i in r["Instances"]
    ]


# --- transparency -------------------------------------------------------------------------------


def test_everything_goes_through_the_layer_unchanged_when_nothing_is_switched_on(aws):
    assert aws.url != aws.moto_url
    ec2, s3, ssm, iam = (aws.client(s) for s in ("ec2", "s3", "ssm", "iam"))
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    assert [v["VpcId"] for v in aws.client("ec2", direct=True).describe_vpcs(VpcIds=[vpc])["Vpcs"]] == [vpc]
    s3.create_bucket(Bucket="realism")
    blob = bytes(range(256)) * 24_000  # 6 MB: botocore sends Expect: 100-continue
    s3.put_object(Bucket="realism", Key="a/b.bin", Body=blob)
    assert s3.get_object(Bucket="realism", Key="a/b.bin")["Body"].read() == blob
    assert s3.head_object(Bucket="realism", Key="a/b.bin")["ContentLength"] == len(blob)
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket="realism", Key="nope")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    ssm.put_parameter(Name="/x/y", Value="v", Type="String")
    assert ssm.get_parameter(Name="/x/y")["Parameter"]["Value"] == "v"
    with pytest.raises(ClientError) as gone:
        iam.get_role(RoleName="nope")
    assert code_of(gone) == "NoSuchEntity"
    seen = [(s.service, s.operation) for s in aws.realism.requests()]
    assert seen == [
        ("ec2", "CreateVpc"),
        ("s3", "CreateBucket"),
        ("s3", "PutObject"),
        ("s3", "GetObject"),
        ("s3", "HeadObject"),
        ("s3", "HeadObject"),
        ("ssm", "PutParameter"),
        ("ssm", "GetParameter"),
        ("iam", "GetRole"),
    ]
    assert not aws.realism.injected()


def test_each_test_starts_with_every_behaviour_off(aws):
    """The previous tests switched behaviours on; the fixture's reset turned them off."""
    assert not aws.realism.active and aws.realism.requests() == []


# --- public parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "machine"), [("amd64", "x86_64"), ("arm64", "arm64")])
def test_canonical_ubuntu_parameters_point_at_images_that_exist(aws, arch, machine):
    ssm, ec2 = aws.client("ssm"), aws.client("ec2")
    for release in ("24.04", "noble"):
        name = f"/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/ebs-gp3/ami-id"
        ami = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        assert image["OwnerId"] == "099720109477" and image["Architecture"] == machine
        assert "ubuntu-noble-24.04" in image["Name"] and image["RootDeviceName"] == "/dev/sda1"
    by_path = ssm.get_parameters_by_path(Path="/aws/service/canonical/ubuntu/server/24.04/", Recursive=True)
    assert len(by_path["Parameters"]) == 2
    # AMI validation is on, and the image is good enough to launch.
    ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t4g.micro" if arch == "arm64" else "t3.micro"
    )


def test_parameters_exist_in_every_region(aws):
    name = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
    ami = aws.client("ssm", "ap-southeast-2").get_parameter(Name=name)["Parameter"]["Value"]
    assert aws.client("ec2", "ap-southeast-2").describe_images(ImageIds=[ami])["Images"]


def test_a_withheld_parameter_is_not_found(aws):
    name = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
    aws.realism.withhold_parameter(name)
    with pytest.raises(ClientError) as err:
        aws.client("ssm").get_parameter(Name=name)
    assert code_of(err) == "ParameterNotFound"


# --- eventual consistency -----------------------------------------------------------------------


def test_attach_right_after_create_answers_not_found_once(aws):
    aws.realism.eventual_consistency(calls=1)
    ec2 = client(aws, "ec2")
    vpc = aws.client("ec2", direct=True).create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    with pytest.raises(ClientError) as err:
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    assert code_of(err) == "InvalidInternetGatewayID.NotFound"
    assert igw in err.value.response["Error"]["Message"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)  # visible now
    attached = aws.client("ec2", direct=True).describe_internet_gateways(InternetGatewayIds=[igw])
    assert attached["InternetGateways"][0]["Attachments"][0]["VpcId"] == vpc


def _new(ec2, aws, kind):
    """Create one resource of `kind` and return (id, a call naming it)."""
    direct = aws.client("ec2", direct=True)
    vpc = direct.create_vpc(CidrBlock="10.3.0.0/16")["Vpc"]["VpcId"]
    subnet = direct.create_subnet(VpcId=vpc, CidrBlock="10.3.1.0/24")["Subnet"]["SubnetId"]
    if kind == "vpc":
        new = ec2.create_vpc(CidrBlock="10.4.0.0/16")["Vpc"]["VpcId"]
        return new, lambda: ec2.describe_vpcs(VpcIds=[new])
    if kind == "subnet":
        new = ec2.create_subnet(VpcId=vpc, CidrBlock="10.3.2.0/24")["Subnet"]["SubnetId"]
        return new, lambda: ec2.describe_subnets(SubnetIds=[new])
    if kind == "sg":
        new = ec2.create_security_group(GroupName="n", Description="n", VpcId=vpc)["GroupId"]
        rule = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
        return new, lambda: ec2.authorize_security_group_ingress(GroupId=new, IpPermissions=rule)
    if kind == "rtb":
        new = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        return new, lambda: ec2.associate_route_table(RouteTableId=new, SubnetId=subnet)
    if kind == "instance":
        new = launch(ec2)
        return new, lambda: ec2.create_tags(Resources=[new], Tags=[{"Key": "k", "Value": "v"}])
    if kind == "volume":
        new = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        return new, lambda: ec2.describe_volumes(VolumeIds=[new])
    if kind == "address":
        new = ec2.allocate_address(Domain="vpc")["AllocationId"]
        return new, lambda: ec2.describe_addresses(AllocationIds=[new])
    allocation = direct.allocate_address(Domain="vpc")["AllocationId"]
    new = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"]
    return new, lambda: ec2.delete_nat_gateway(NatGatewayId=new)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("vpc", "InvalidVpcID.NotFound"),
        ("subnet", "InvalidSubnetID.NotFound"),
        ("sg", "InvalidGroup.NotFound"),
        ("rtb", "InvalidRouteTableID.NotFound"),
        ("instance", "InvalidInstanceID.NotFound"),
        ("volume", "InvalidVolume.NotFound"),
        ("address", "InvalidAllocationID.NotFound"),
        ("nat", "NatGatewayNotFound"),
    ],
)
def test_each_kind_answers_its_own_not_found_code(aws, kind, code):
    aws.realism.eventual_consistency(calls=2)
    ec2 = client(aws, "ec2")
    new, use = _new(ec2, aws, kind)
    for _ in range(2):
        with pytest.raises(ClientError) as err:
            use()
        assert code_of(err) == code and new in err.value.response["Error"]["Message"]
    use()
    assert [s.injected for s in aws.realism.injected()] == [code, code]


def test_filters_still_see_a_new_resource(aws):
    """Only ids named as parameters are unknown; a filtered describe is not an error."""
    aws.realism.eventual_consistency(calls=1)
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.5.0.0/16")["Vpc"]["VpcId"]
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Vpcs"]


def test_visibility_window_in_seconds(aws):
    clock = Clock()
    aws.realism.clock = clock
    aws.realism.eventual_consistency(seconds=2)
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.6.0.0/16")["Vpc"]["VpcId"]
    for _ in range(3):
        with pytest.raises(ClientError):
            ec2.describe_vpcs(VpcIds=[vpc])
    clock.now += 2.5
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"]


def test_a_new_instance_profile_is_unknown_to_run_instances(aws):
    aws.realism.iam_propagation(calls=1)
    iam, ec2 = aws.client("iam"), client(aws, "ec2")
    iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="p")
    iam.add_role_to_instance_profile(InstanceProfileName="p", RoleName="r")
    with pytest.raises(ClientError) as err:
        launch(ec2, IamInstanceProfile={"Name": "p"})
    assert code_of(err) == "InvalidParameterValue"
    assert err.value.response["Error"]["Message"] == (
        "Value (p) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
    )
    launch(ec2, IamInstanceProfile={"Name": "p"})
    assert aws.client("ec2", direct=True).describe_instances()["Reservations"]


# --- tags in instance metadata --------------------------------------------------------------------


def test_tags_in_instance_metadata_are_recorded_and_refuse_keys_imds_cannot_show(aws):
    aws.realism.imds_tag_keys()
    ec2 = client(aws, "ec2")
    on = {"HttpTokens": "required", "InstanceMetadataTags": "enabled"}

    def tagged(key: str) -> list[dict]:
        return [{"ResourceType": "instance", "Tags": [{"Key": key, "Value": "v"}]}]

    fine = launch(ec2, MetadataOptions=on, TagSpecifications=tagged("clusterous:k3s-ca-hash"))
    (found,) = [i for r in ec2.describe_instances(InstanceIds=[fine])["Reservations"] for i in r["Instances"]]
    assert found["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    for bad in ("team/owner", "has space", "_index", ".."):
        with pytest.raises(ClientError) as err:
            launch(ec2, MetadataOptions=on, TagSpecifications=tagged(bad))
        assert code_of(err) == "InvalidParameterValue" and repr(bad) in str(err.value)
    with pytest.raises(ClientError) as err:
        ec2.create_tags(Resources=[fine], Tags=[{"Key": "a/b", "Value": "v"}])
    assert code_of(err) == "InvalidParameterValue"
    ec2.create_tags(Resources=[fine], Tags=[{"Key": "a:b", "Value": "v"}])
    # without tags in metadata any key goes, as on AWS
    off = launch(ec2, TagSpecifications=tagged("team/owner"))
    ec2.create_tags(Resources=[off], Tags=[{"Key": "a/b", "Value": "v"}])
    assert len(aws.realism.injected()) == 5


def test_spot_instances_cannot_be_stopped_on_demand_ones_can(aws):
    aws.realism.refuse_stopping_spot()
    ec2 = client(aws, "ec2")
    spot = launch(
        ec2, InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}
    )
    plain = launch(ec2)
    with pytest.raises(ClientError) as err:
        ec2.stop_instances(InstanceIds=[plain, spot])
    assert code_of(err) == "UnsupportedOperation" and "one-time Spot Instance request" in str(err.value)
    ec2.stop_instances(InstanceIds=[plain])
    ec2.terminate_instances(InstanceIds=[spot])


# --- throttling and server errors below botocore's retries --------------------------------------


def test_throttled_calls_are_retried_by_botocore(aws):
    aws.realism.throttle("DescribeVpcs", times=2)
    response = client(aws, "ec2", STANDARD).describe_vpcs()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    seen = aws.realism.requests("DescribeVpcs")
    assert [(s.status, s.injected) for s in seen] == [(503, "RequestLimitExceeded")] * 2 + [(200, None)]


def test_throttled_without_retries_is_aws_error_per_protocol(aws):
    aws.realism.throttle("DescribeVpcs")
    aws.realism.throttle("GetRole")
    aws.realism.throttle("GetParameter")
    aws.realism.throttle("ListBuckets")
    aws.realism.throttle("GetCallerIdentity")
    calls = [
        ("ec2", lambda c: c.describe_vpcs(), "RequestLimitExceeded", 503),
        ("iam", lambda c: c.get_role(RoleName="x"), "Throttling", 400),
        ("ssm", lambda c: c.get_parameter(Name="x"), "ThrottlingException", 400),
        ("s3", lambda c: c.list_buckets(), "SlowDown", 503),
        ("sts", lambda c: c.get_caller_identity(), "Throttling", 400),
    ]
    for service, call, code, status in calls:
        with pytest.raises(ClientError) as err:
            call(client(aws, service))
        assert (code_of(err), err.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (code, status)
        assert err.value.response["Error"]["Message"]


def test_ec2_error_body_is_the_ec2_wire_format(aws):
    import urllib.request

    aws.realism.throttle("DescribeVpcs")
    request = urllib.request.Request(
        aws.url,
        data=b"Action=DescribeVpcs&Version=2016-11-15",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/ec2/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    body = err.value.read().decode()
    assert err.value.code == 503
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>')
    assert "<Code>RequestLimitExceeded</Code>" in body and "<RequestID>" in body


@pytest.mark.parametrize(("status", "code"), [(503, "Unavailable"), (500, "InternalError")])
def test_server_errors_are_retried_and_counted(aws, status, code):
    aws.realism.unavailable("CreateVpc", times=1, status=status)
    client(aws, "ec2", STANDARD).create_vpc(CidrBlock="10.7.0.0/16")
    assert [(s.status, s.injected) for s in aws.realism.requests("CreateVpc")] == [
        (status, code),
        (200, None),
    ]
    assert (
        len(
            aws.client("ec2", direct=True).describe_vpcs(
                Filters=[{"Name": "cidr", "Values": ["10.7.0.0/16"]}]
            )["Vpcs"]
        )
        == 1
    )
    with pytest.raises(ClientError) as err:
        aws.realism.unavailable("CreateVpc", status=status)
        client(aws, "ec2").create_vpc(CidrBlock="10.8.0.0/16")
    assert code_of(err) == code


# --- lost responses and ClientToken idempotency -------------------------------------------------


def test_moto_alone_is_not_idempotent(aws):
    """The gap the layer closes: without it, the same ClientToken launches twice."""
    ec2 = aws.client("ec2")
    first = launch(ec2, ClientToken="same-token")
    second = launch(ec2, ClientToken="same-token")
    assert first != second


def test_lost_run_instances_retried_by_botocore_launches_one_instance(aws):
    aws.realism.lose_response("RunInstances")
    ec2 = client(aws, "ec2", STANDARD)
    instance = launch(ec2)  # botocore fills in a ClientToken and resends it on retry
    assert instance_states(aws.client("ec2", direct=True)) == ["running"]
    assert [s.injected for s in aws.realism.requests("RunInstances")] == [
        "lost-response:reset",
        "idempotent-replay",
    ]
    assert (
        aws.client("ec2", direct=True).describe_instances()["Reservations"][0]["Instances"][0]["InstanceId"]
        == instance
    )


def test_lost_response_then_same_token_by_hand_returns_the_first_result(aws):
    aws.realism.lose_response("RunInstances")
    ec2 = client(aws, "ec2")
    with pytest.raises(ConnectionClosedError):
        launch(ec2, ClientToken="t-1")
    again = launch(ec2, ClientToken="t-1")
    assert instance_states(aws.client("ec2", direct=True)) == ["running"]
    assert (
        aws.client("ec2", direct=True).describe_instances()["Reservations"][0]["Instances"][0]["InstanceId"]
        == again
    )
    with pytest.raises(ClientError) as err:
        launch(ec2, ClientToken="t-1", InstanceType="t3.small")
    assert code_of(err) == "IdempotentParameterMismatch"


def test_lost_nat_gateway_as_500_creates_one(aws):
    direct = aws.client("ec2", direct=True)
    vpc = direct.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = direct.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    allocation = direct.allocate_address(Domain="vpc")["AllocationId"]
    aws.realism.lose_response("CreateNatGateway", how="500")
    ec2 = client(aws, "ec2")
    with pytest.raises(ClientError) as err:
        ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation, ClientToken="nat-1")
    assert code_of(err) == "InternalError"
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation, ClientToken="nat-1")["NatGateway"]
    assert [n["NatGatewayId"] for n in direct.describe_nat_gateways()["NatGateways"]] == [nat["NatGatewayId"]]


# --- a crash after the call was applied ---------------------------------------------------------


def test_crash_after_an_applied_call(aws):
    direct = aws.client("ec2", direct=True)
    vpc = direct.create_vpc(CidrBlock="10.10.0.0/16")["Vpc"]["VpcId"]
    subnet = direct.create_subnet(VpcId=vpc, CidrBlock="10.10.1.0/24")["Subnet"]["SubnetId"]
    allocation = direct.allocate_address(Domain="vpc")["AllocationId"]
    aws.realism.crash_after("CreateNatGateway")
    with pytest.raises(SimulatedCrash):
        aws.client("ec2").create_nat_gateway(SubnetId=subnet, AllocationId=allocation)
    assert len(direct.describe_nat_gateways()["NatGateways"]) == 1  # AWS did it; the client never knew
    assert aws.calls("CreateNatGateway") == [("ec2", "CreateNatGateway")]  # and it was not retried


def test_crash_after_reaches_subprocesses(aws):
    aws.realism.crash_after("CreateVpc")
    code = "import boto3\nboto3.client('ec2').create_vpc(CidrBlock='10.11.0.0/16')\nprint('survived')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "survived" not in done.stdout
    assert "SimulatedCrash" in done.stderr
    assert aws.client("ec2", direct=True).describe_vpcs(
        Filters=[{"Name": "cidr", "Values": ["10.11.0.0/16"]}]
    )["Vpcs"]


# --- teardown: dependencies ---------------------------------------------------------------------


def test_moto_alone_deletes_a_subnet_with_a_running_instance(aws):
    """The gap: AWS refuses this; with refuse_dependent_deletes the layer does too."""
    ec2 = aws.client("ec2")
    _, subnet, group, _ = network(ec2)
    launch(ec2, subnet, group)
    ec2.delete_subnet(SubnetId=subnet)


def test_deletes_aws_refuses_while_something_uses_the_resource(aws):
    aws.realism.refuse_dependent_deletes()
    ec2 = client(aws, "ec2")
    vpc, subnet, group, igw = network(ec2)
    other = ec2.create_security_group(GroupName="o", Description="o", VpcId=vpc)["GroupId"]
    pair = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": other}]}]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=pair)
    instance = launch(ec2, subnet, group, public=True)
    refusals = [
        (lambda: ec2.delete_subnet(SubnetId=subnet), "DependencyViolation", "has dependencies"),
        (lambda: ec2.delete_security_group(GroupId=group), "DependencyViolation", "dependent object"),
        (lambda: ec2.delete_security_group(GroupId=other), "DependencyViolation", "dependent object"),
        (
            lambda: ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc),
            "DependencyViolation",
            "mapped public",
        ),
        (lambda: ec2.delete_vpc(VpcId=vpc), "DependencyViolation", "has dependencies"),
    ]
    for call, code, words in refusals:
        with pytest.raises(ClientError) as err:
            call()
        assert code_of(err) == code and words in err.value.response["Error"]["Message"]
    ec2.terminate_instances(InstanceIds=[instance])
    ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=pair)
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_security_group(GroupId=group)
    ec2.delete_security_group(GroupId=other)
    ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    ec2.delete_internet_gateway(InternetGatewayId=igw)
    ec2.delete_vpc(VpcId=vpc)


def test_release_of_a_nat_gateways_address_is_refused(aws):
    aws.realism.refuse_dependent_deletes()
    ec2 = client(aws, "ec2")
    _, subnet, _, _ = network(ec2)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"]
    with pytest.raises(ClientError) as err:
        ec2.release_address(AllocationId=allocation)
    assert code_of(err) == "AuthFailure"
    ec2.delete_nat_gateway(NatGatewayId=nat)
    ec2.release_address(AllocationId=allocation)


def test_dependencies_linger_after_terminate_for_some_calls(aws):
    aws.realism.linger_dependencies(calls=2)
    ec2 = client(aws, "ec2")
    vpc, subnet, group, igw = network(ec2)
    instance = launch(ec2, subnet, group, public=True)
    ec2.terminate_instances(InstanceIds=[instance])
    steps = [
        lambda: ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc),
        lambda: ec2.delete_subnet(SubnetId=subnet),
        lambda: ec2.delete_security_group(GroupId=group),
    ]
    for step in steps:
        for _ in range(2):
            with pytest.raises(ClientError) as err:
                step()
            assert code_of(err) == "DependencyViolation"
        step()
    ec2.delete_internet_gateway(InternetGatewayId=igw)
    for _ in range(2):
        with pytest.raises(ClientError):
            ec2.delete_vpc(VpcId=vpc)
    ec2.delete_vpc(VpcId=vpc)


def test_dependencies_linger_after_nat_deletion_for_some_seconds(aws):
    clock = Clock()
    aws.realism.clock = clock
    aws.realism.linger_dependencies(seconds=30)
    ec2 = client(aws, "ec2")
    vpc, subnet, _, igw = network(ec2)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"]
    ec2.delete_nat_gateway(NatGatewayId=nat)
    for _ in range(3):
        with pytest.raises(ClientError) as err:
            ec2.release_address(AllocationId=allocation)
        assert code_of(err) == "AuthFailure"
        with pytest.raises(ClientError) as err:
            ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        assert code_of(err) == "DependencyViolation"
    clock.now += 31
    ec2.release_address(AllocationId=allocation)
    ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    ec2.delete_subnet(SubnetId=subnet)


# --- pending states -----------------------------------------------------------------------------


def test_instances_are_pending_then_running_and_shut_down_before_terminated(aws):
    aws.realism.pending(instance_calls=2, shutdown_calls=1)
    ec2 = client(aws, "ec2")
    instance = launch(ec2)
    running = [{"Name": "instance-state-name", "Values": ["running"]}]
    assert instance_states(ec2, Filters=running) == []  # pending: not running yet
    assert instance_states(ec2, InstanceIds=[instance]) == ["pending"]
    assert instance_states(ec2, Filters=running) == ["running"]
    current = ec2.terminate_instances(InstanceIds=[instance])["TerminatingInstances"][0]["CurrentState"]
    assert current == {"Code": 32, "Name": "shutting-down"}
    assert instance_states(ec2, InstanceIds=[instance]) == ["shutting-down"]
    assert instance_states(ec2, InstanceIds=[instance]) == ["terminated"]


def test_a_waiter_sees_a_nat_gateway_become_available(aws):
    aws.realism.pending(nat_calls=3, shutdown_calls=1)
    ec2 = client(aws, "ec2")
    _, subnet, _, _ = network(ec2)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]
    assert nat["State"] == "pending"
    waiter = ec2.get_waiter("nat_gateway_available")
    with pytest.raises(WaiterError):
        waiter.wait(NatGatewayIds=[nat["NatGatewayId"]], WaiterConfig={"Delay": 0, "MaxAttempts": 2})
    waiter.wait(NatGatewayIds=[nat["NatGatewayId"]], WaiterConfig={"Delay": 0, "MaxAttempts": 2})
    assert len(aws.realism.requests("DescribeNatGateways")) == 4
    ec2.delete_nat_gateway(NatGatewayId=nat["NatGatewayId"])
    states = [
        ec2.describe_nat_gateways(NatGatewayIds=[nat["NatGatewayId"]])["NatGateways"][0]["State"]
        for _ in range(2)
    ]
    assert states == ["deleting", "deleted"]


def test_pending_for_some_seconds(aws):
    clock = Clock()
    aws.realism.clock = clock
    aws.realism.pending(instance_seconds=60)
    ec2 = client(aws, "ec2")
    instance = launch(ec2)
    for _ in range(3):
        assert instance_states(ec2, InstanceIds=[instance]) == ["pending"]
    assert instance_states(ec2, Filters=[{"Name": "instance-state-name", "Values": ["pending"]}]) == [
        "pending"
    ]
    clock.now += 61
    assert instance_states(ec2, InstanceIds=[instance]) == ["running"]


# --- the product under realism (issue 14 makes it pass) -----------------------------------------


def test_up_survives_eventual_consistency(aws, cli):
    make_profile(cli)
    aws.realism.eventual_consistency(calls=1)
    result = cli([*UP, "--cluster", "ec", "--workers", "0"])
    assert aws.realism.injected(), "the layer never answered NotFound: this test shows nothing"
    assert result.exit_code == 0, result.output
