"""`up` and `down` against the moto server: the AWS model, its secure defaults, and a clean teardown."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from clusterous_provisioner.preflight import AMI_PARAMETERS
from tests.harness.certs import key_pem, make_cert, pem
from tests.provisioning import SSH_CIDR, UP, count_tagged, make_profile, tag, tagged


def _ids(items, key):
    return {i[key] for i in items}


def test_up_creates_the_tagged_model_with_secure_defaults(aws, cli, isolated_config):
    make_profile(cli)
    result = cli([*UP, "--cluster", "alpha", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert "alpha" in result.stdout and "not implemented yet" not in result.output  # --no-wait

    found = tagged(aws, "alpha")
    assert {k: len(v) for k, v in found.items()} | {"volumes": 0} == {
        "instances": 5, "vpcs": 1, "subnets": 2, "igws": 1, "route_tables": 2, "addresses": 1,
        "nats": 1, "sgs": 2, "volumes": 0, "key_pairs": 1,
    }  # fmt: skip
    for kind, items in found.items():
        for item in items:
            assert tag(item, "clusterous:role"), (kind, item)
            assert tag(item, "Name"), (kind, item)

    ec2 = aws.client("ec2")
    vpc = found["vpcs"][0]["VpcId"]
    assert ec2.describe_vpc_attribute(VpcId=vpc, Attribute="enableDnsHostnames")["EnableDnsHostnames"][
        "Value"
    ]
    assert len({s["AvailabilityZone"] for s in found["subnets"]}) == 1

    # Instances: one RunInstances per group, IMDSv2 with hop limit 1, encrypted root volumes.
    assert len(aws.calls("RunInstances")) == 3  # controller, master, worker
    by_role = {}
    for instance in found["instances"]:
        by_role.setdefault(tag(instance, "clusterous:group") or tag(instance, "clusterous:role"), []).append(
            instance
        )
        meta = instance["MetadataOptions"]
        assert (meta["HttpTokens"], meta["HttpPutResponseHopLimit"], meta["HttpEndpoint"]) == (
            "required",
            1,
            "enabled",
        )
    assert {k: len(v) for k, v in by_role.items()} == {"controller": 1, "master": 1, "worker": 3}
    subnets = {tag(s, "clusterous:key"): s["SubnetId"] for s in found["subnets"]}
    controller = by_role["controller"][0]
    assert controller["SubnetId"] == subnets["subnet-public"]
    assert controller["PrivateIpAddress"].endswith(".10") and controller.get("PublicIpAddress")
    assert controller["IamInstanceProfile"]["Arn"].endswith("alpha-us-east-1-controller")
    for node in by_role["master"] + by_role["worker"]:
        assert node["SubnetId"] == subnets["subnet-private"]
        assert not node.get("PublicIpAddress")
        assert "IamInstanceProfile" not in node
        assert tag(node, "clusterous:role") == "node"
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag:clusterous:cluster", "Values": ["alpha"]}])[
        "Volumes"
    ]
    roots = [v for v in volumes if tag(v, "clusterous:role") != "shared-volume"]
    assert len(roots) == 5 and all(v["Encrypted"] and v["VolumeType"] == "gp3" for v in roots)
    shared = [v for v in volumes if tag(v, "clusterous:role") == "shared-volume"]
    assert len(shared) == 1 and shared[0]["Encrypted"] and shared[0]["VolumeType"] == "gp3"
    assert shared[0]["Size"] == 20
    assert shared[0]["Attachments"][0]["InstanceId"] == controller["InstanceId"]
    # Attached as soon as the controller runs, before any node is launched (issue 12 item 5).
    order = [op for _, op in aws.calls() if op in ("RunInstances", "AttachVolume")]
    assert order == ["RunInstances", "AttachVolume", "RunInstances", "RunInstances"]

    # User-data came from the bootstrap renderer; nodes join the controller's fixed address.
    ud = ec2.describe_instance_attribute(InstanceId=by_role["worker"][0]["InstanceId"], Attribute="userData")
    import base64

    text = base64.b64decode(ud["UserData"]["Value"]).decode()
    assert text.startswith("#cloud-config") and controller["PrivateIpAddress"] in text

    # Security groups: SSH only from the given range; the cluster talks to itself; nothing else.
    groups = {tag(g, "clusterous:key"): g for g in found["sgs"]}
    ctrl_sg, node_sg = groups["sg-controller"], groups["sg-nodes"]
    cidrs = [r["CidrIp"] for p in ctrl_sg["IpPermissions"] for r in p.get("IpRanges", [])]
    assert cidrs == [SSH_CIDR]
    ssh = [p for p in ctrl_sg["IpPermissions"] if p.get("IpRanges")][0]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert not any(p.get("IpRanges") for p in node_sg["IpPermissions"])
    assert not any(p.get("Ipv6Ranges") for g in found["sgs"] for p in g["IpPermissions"])
    referenced = {pair["GroupId"] for p in node_sg["IpPermissions"] for pair in p.get("UserIdGroupPairs", [])}
    assert referenced == {ctrl_sg["GroupId"], node_sg["GroupId"]}
    enis = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [controller["InstanceId"]]}]
    )
    assert {g["GroupId"] for g in enis["NetworkInterfaces"][0]["Groups"]} == {ctrl_sg["GroupId"]}

    # NAT gateway in the public subnet; the private subnet's default route goes through it.
    nat = found["nats"][0]
    assert nat["SubnetId"] == subnets["subnet-public"]
    tables = {tag(t, "clusterous:key"): t for t in found["route_tables"]}
    default = lambda t: [r for r in t["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"][0]  # noqa: E731
    assert default(tables["rtb-private"]).get("NatGatewayId") == nat["NatGatewayId"]
    assert default(tables["rtb-public"]).get("GatewayId") == found["igws"][0]["InternetGatewayId"]

    # IAM: the controller may use the registry bucket and nothing else.
    iam = aws.client("iam")
    policy = iam.get_role_policy(RoleName="alpha-us-east-1-controller", PolicyName="registry-bucket")[
        "PolicyDocument"
    ]
    policy = policy if isinstance(policy, dict) else json.loads(policy)
    profile = cli(["profile", "show", "--json"])
    bucket = json.loads(profile.stdout)["bucket"]
    resources = {
        r
        for s in policy["Statement"]
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    }
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/clusterous/registry/*"}
    listing = [s for s in policy["Statement"] if "s3:ListBucket" in s["Action"]]
    assert listing == [
        {
            "Sid": "RegistryPrefixListing",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": ["clusterous/registry", "clusterous/registry/*"]}},
        }
    ]
    assert all(a.startswith("s3:") and "*" not in a for s in policy["Statement"] for a in s["Action"])
    assert iam.list_attached_role_policies(RoleName="alpha-us-east-1-controller")["AttachedPolicies"] == []

    # The bucket: private and encrypted.
    s3 = aws.client("s3")
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]

    # The per-cluster key pair's private key is 0600 under the config directory; the token is in SSM.
    keys = list(isolated_config.glob("clusters/default/alpha/*.pem"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    token = aws.client("ssm").get_parameter(Name="/clusterous/alpha/k3s-token", WithDecryption=True)[
        "Parameter"
    ]
    assert token["Type"] == "SecureString" and len(token["Value"]) >= 32
    assert token["Value"] not in result.output
    # That parameter is the agent token: every instance's user-data holds it and nothing else
    # secret; the server token is made on the controller, so no user-data (and no SSM) has it.
    from clusterous_provisioner.bootstrap import AGENT_TOKEN_FILE, SERVER_TOKEN_FILE
    from tests.test_bootstrap import written_files

    for instance in found["instances"]:
        attr = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        files = written_files(base64.b64decode(attr["UserData"]["Value"]).decode())
        assert files[AGENT_TOKEN_FILE].strip() == token["Value"]
        assert SERVER_TOKEN_FILE not in files
        assert [path for path, text in files.items() if token["Value"] in text] == [AGENT_TOKEN_FILE]
    names = [p["Name"] for p in aws.client("ssm").describe_parameters()["Parameters"]]
    assert [n for n in names if n.startswith("/clusterous/")] == ["/clusterous/alpha/k3s-token"]


def test_rerun_up_creates_nothing_new(aws, cli):
    make_profile(cli)
    assert cli([*UP, "--cluster", "beta", "--workers", "1"]).exit_code == 0
    before = count_tagged(aws, "beta")
    aws.reset_calls()
    again = cli([*UP, "--cluster", "beta", "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert count_tagged(aws, "beta") == before
    creates = [op for _, op in aws.calls() if op.startswith(("Create", "RunInstances", "Allocate"))]
    assert creates == [] or creates == ["CreateBucket"][: len(creates)]
    plan = cli(["up", "--cluster", "beta", "--workers", "1", "--dry-run", "--json"])
    data = json.loads(plan.stdout)
    assert data["changes"] == 0 and all(r["action"] == "exists" for r in data["resources"])


def test_up_grows_a_group_on_rerun_with_one_call(aws, cli):
    make_profile(cli)
    assert cli([*UP, "--cluster", "gamma", "--workers", "1"]).exit_code == 0
    aws.reset_calls()
    result = cli([*UP, "--cluster", "gamma", "--workers", "4"])
    assert result.exit_code == 0, result.output
    assert len(aws.calls("RunInstances")) == 1
    workers = [i for i in tagged(aws, "gamma")["instances"] if tag(i, "clusterous:group") == "worker"]
    assert len(workers) == 4


def _order(calls, *ops):
    """Index of the last call of each operation, or of the first, to compare phases."""
    names = [op for _, op in calls]
    return {op: (names.index(op), len(names) - 1 - names[::-1].index(op)) for op in ops if op in names}


def test_down_deletes_in_dependency_order_and_leaves_nothing(aws, cli, isolated_config):
    make_profile(cli)
    assert cli([*UP, "--cluster", "delta", "--workers", "2"]).exit_code == 0
    aws.reset_calls()
    result = cli(["down", "delta", "--yes", "--delete-shared-volume"])
    assert result.exit_code == 0, result.output
    assert "nothing billable is left" in result.stdout
    assert count_tagged(aws, "delta") == dict.fromkeys(count_tagged(aws, "delta"), 0)

    o = _order(
        aws.calls(),
        "TerminateInstances", "DeleteNatGateway", "ReleaseAddress", "DetachInternetGateway",
        "DeleteInternetGateway", "DeleteSubnet", "DeleteRouteTable", "DeleteSecurityGroup", "DeleteVpc",
        "DeleteRole", "DeleteKeyPair", "DeleteVolume",
    )  # fmt: skip
    first, last = (lambda op: o[op][0]), (lambda op: o[op][1])
    assert last("TerminateInstances") < first("DeleteNatGateway") < first("ReleaseAddress")
    assert last("ReleaseAddress") < first("DetachInternetGateway") < first("DeleteInternetGateway")
    assert last("DeleteInternetGateway") < min(first("DeleteSubnet"), first("DeleteRouteTable"))
    assert max(last("DeleteSubnet"), last("DeleteRouteTable")) < first("DeleteSecurityGroup")
    assert last("DeleteSecurityGroup") < first("DeleteVpc")
    assert "DeleteRole" in o and "DeleteKeyPair" in o and "DeleteVolume" in o
    # Instances were waited for, not slept on: the waiter's DescribeInstances sits between.
    names = [op for _, op in aws.calls()]
    assert "DescribeInstances" in names[first("TerminateInstances") : first("DeleteNatGateway")]
    assert aws.client("iam").list_roles(PathPrefix="/clusterous/")["Roles"] == []
    assert not list(isolated_config.glob("clusters/default/delta/*.pem"))
    params = aws.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/clusterous/"]}]
    )["Parameters"]
    assert params == []
    assert cli(["status", "--cluster", "delta"]).exit_code == 1


def test_down_works_without_local_state(aws, cli, isolated_config):
    import shutil

    make_profile(cli)
    assert cli([*UP, "--cluster", "eps", "--workers", "1"]).exit_code == 0
    shutil.rmtree(isolated_config)  # a lost laptop: no profile, no keys
    result = cli(["down", "eps", "--region", "us-east-1", "--yes", "--delete-shared-volume"])
    assert result.exit_code == 0, result.output
    assert sum(count_tagged(aws, "eps").values()) == 0


def test_down_asks_about_the_shared_volume_and_yes_alone_keeps_it(aws, cli):
    make_profile(cli)
    assert cli([*UP, "--cluster", "zeta", "--workers", "0", "--shared-volume-size", "50"]).exit_code == 0
    volume = [v for v in tagged(aws, "zeta")["volumes"] if tag(v, "clusterous:role") == "shared-volume"][0]
    # asked about the volume (yes), then about everything (no): nothing happens
    refused = cli(["down", "zeta"], input="y\nn\n")
    assert refused.exit_code == 1
    assert f"Also delete the shared volume {volume['VolumeId']} (50 GiB)" in refused.stdout + refused.stderr
    assert "DELETED" in refused.stderr
    assert count_tagged(aws, "zeta")["instances"] == 2

    kept = cli(["down", "zeta", "--yes"])  # nobody to ask: the data stays
    assert kept.exit_code == 0, kept.output
    assert "KEPT" in kept.stderr and volume["VolumeId"] in kept.stdout
    assert f"clusterous-k8s volumes rm {volume['VolumeId']}" in kept.stderr
    ec2 = aws.client("ec2")
    left = ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0]
    assert left["State"] == "available" and tag(left, "clusterous:last-cluster") == "zeta"
    listed = cli(["volumes", "ls", "--json"])
    assert [v["volume_id"] for v in json.loads(listed.stdout)] == [volume["VolumeId"]]

    # Bring it back by id: adopted, and kept again by default at down.
    again = cli([*UP, "--cluster", "eta", "--workers", "0", "--shared-volume-id", volume["VolumeId"]])
    assert again.exit_code == 0, again.output
    assert (
        tag(ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0], "clusterous:cluster") == "eta"
    )
    down = cli(["down", "eta", "--yes"])
    assert down.exit_code == 0 and "KEPT" in down.stderr
    removed = cli(["volumes", "rm", volume["VolumeId"], "--yes"])
    assert removed.exit_code == 0, removed.output
    assert (
        ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume["VolumeId"]]}])["Volumes"] == []
    )


def test_second_region(aws, cli, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    make_profile(cli, region="eu-west-1")
    result = cli([*UP, "--cluster", "theta", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert count_tagged(aws, "theta", "eu-west-1")["instances"] == 3
    assert count_tagged(aws, "theta", "us-east-1")["instances"] == 0
    subnet = tagged(aws, "theta", "eu-west-1")["subnets"][0]
    assert subnet["AvailabilityZone"].startswith("eu-west-1")
    assert cli(["down", "theta", "--yes", "--delete-shared-volume"]).exit_code == 0
    assert sum(count_tagged(aws, "theta", "eu-west-1").values()) == 0


def test_profile_key_pair_is_used_and_kept(aws, cli):
    assert cli(["setup", "--region", "us-east-1", "--key-name", "mine", "--yes"]).exit_code == 0
    assert cli([*UP, "--cluster", "iota", "--workers", "0"]).exit_code == 0
    instances = tagged(aws, "iota")["instances"]
    assert {i["KeyName"] for i in instances} == {"mine"}
    assert tagged(aws, "iota")["key_pairs"] == []
    assert cli(["down", "iota", "--yes", "--delete-shared-volume"]).exit_code == 0
    assert aws.client("ec2").describe_key_pairs(KeyNames=["mine"])["KeyPairs"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ami", "ami-00000000000000000"], "--ami"),
        (["--os", "ubuntu-24.04"], "/aws/service/canonical"),
        (["--worker-type", "x9.huge"], "x9.huge"),
        (["--worker-type", "m7g.large"], "--worker-type: expected an instance type that runs x86_64"),
        (["--controller-type", "t4g.medium"], "the AMI ami-"),
        (["--ssh-cidr", "not-a-network"], "--ssh-cidr"),
    ],
)
def test_bad_input_found_by_aws_creates_nothing(aws, cli, argv, expected):
    make_profile(cli)
    if "--os" in argv:  # a region where Canonical does not publish the image's parameter
        aws.realism.withhold_parameter(AMI_PARAMETERS["ubuntu-24.04"])
    base = ["up", "--ssh-cidr", SSH_CIDR, "--no-wait", "--yes", "--cluster", "kappa"]
    result = cli([*base, *argv])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "Traceback" not in result.output
    assert sum(count_tagged(aws, "kappa").values()) == 0


def test_a_cluster_outside_its_buckets_region_is_refused_before_anything_is_created(
    aws, cli, isolated_config
):
    """The registry uses S3 in the bucket's region: a cluster elsewhere is bad input (exit 2),
    told with the bucket, both regions and what to do. setup recorded the region: no lookup."""
    make_profile(cli, region="eu-west-1")
    aws.reset_calls()
    result = cli([*UP, "--cluster", "nu", "--region", "us-east-1"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    bucket = "clusterous-k8s-123456789012-eu-west-1"
    assert f"'{bucket}' is in eu-west-1" in message and "cluster's region us-east-1" in message
    assert "setup --profile-name us-east-1 --region us-east-1" in message
    assert str(isolated_config / "profiles" / "default.yml") in message
    assert "Traceback" not in result.output
    assert aws.calls("GetBucketLocation") == []
    assert [c for c in aws.calls() if c[1].startswith(("Create", "Run", "Allocate", "Put"))] == []
    assert sum(count_tagged(aws, "nu", "us-east-1").values()) == 0


def test_a_profile_recorded_before_bucket_regions_looks_it_up_once(aws, cli, isolated_config):
    make_profile(cli, region="eu-west-1")
    path = isolated_config / "profiles" / "default.yml"
    old = yaml.safe_load(path.read_text())
    del old["bucket_region"]
    path.write_text(yaml.safe_dump(old))
    aws.reset_calls()
    refused = cli([*UP, "--cluster", "xi", "--region", "us-east-1"])
    assert refused.exit_code == 2 and "is in eu-west-1" in refused.stderr
    assert aws.calls("GetBucketLocation") == [("s3", "GetBucketLocation")]
    assert yaml.safe_load(path.read_text()) == old | {"bucket_region": "eu-west-1"}
    aws.reset_calls()
    again = cli([*UP, "--cluster", "xi", "--region", "us-east-1"])
    assert again.exit_code == 2 and "is in eu-west-1" in again.stderr
    assert aws.calls("GetBucketLocation") == []
    assert sum(count_tagged(aws, "xi", "us-east-1").values()) == 0


def test_a_region_the_registry_cannot_use_is_refused(aws, cli):
    """distribution 3.1.1's S3 driver refuses regions its SDK's endpoint table lacks."""
    make_profile(cli, region="mx-central-1")
    result = cli([*UP, "--cluster", "omi", "--region", "mx-central-1"])
    assert result.exit_code == 2, result.output
    assert "--region" in result.stderr and "mx-central-1" in result.stderr
    assert sum(count_tagged(aws, "omi", "mx-central-1").values()) == 0


def test_the_render_dir_shows_the_registry_using_the_buckets_region(aws, cli, isolated_config, tmp_path):
    aws.client("s3", "us-east-2").create_bucket(
        Bucket="team-images", CreateBucketConfiguration={"LocationConstraint": "us-east-2"}
    )
    assert cli(["setup", "--region", "eu-west-1", "--bucket", "team-images", "--yes"]).exit_code == 0
    out = tmp_path / "render"
    result = cli(["up", "--dry-run", "--cluster", "pi", "--render-dir", str(out)])
    assert result.exit_code == 0, result.output
    registries = [
        d
        for d in yaml.safe_load_all((out / "manifests" / "registry.yaml").read_text())
        if d and d["kind"] == "Deployment"
    ]
    assert sorted(r["metadata"]["name"] for r in registries) == [
        "registry",
        "registry-mirror",
        "registry-push",
    ]
    for registry in registries:  # pulls, builds' pushes, Docker Hub's pull-through cache
        env = {
            e["name"]: e.get("value") for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert (
            env["REGISTRY_STORAGE_S3_REGION"] == "us-east-2"
            and env["REGISTRY_STORAGE_S3_BUCKET"] == "team-images"
        ), registry["metadata"]["name"]


def test_aws_refusal_midway_is_exit_1_with_next_step(aws, cli):
    make_profile(cli)
    aws.fail(
        "RunInstances",
        at=2,
        code="InsufficientInstanceCapacity",
        message="We currently do not have sufficient t3.large capacity",
    )
    result = cli([*UP, "--cluster", "lam", "--workers", "1"])
    assert result.exit_code == 1
    assert (
        "sufficient t3.large capacity" in result.stderr
        and "re-run" in result.stderr
        and "down" in result.stderr
    )


def test_ssh_cidr_undiscoverable_asks_for_the_flag(aws, cli, monkeypatch):
    make_profile(cli)
    monkeypatch.setenv("CLUSTEROUS_CHECKIP_URL", "https://127.0.0.1:9/")  # nothing listens there
    result = cli(["up", "--cluster", "mu", "--yes", "--no-wait"])
    assert result.exit_code == 2 and "--ssh-cidr" in result.stderr
    assert sum(count_tagged(aws, "mu").values()) == 0


def test_checkip_url_must_be_https(aws, cli, monkeypatch):
    """The answer becomes the only SSH rule: a plain-HTTP answer could be anyone's."""
    make_profile(cli)
    monkeypatch.setenv("CLUSTEROUS_CHECKIP_URL", "http://checkip.example/")
    result = cli(["up", "--cluster", "mu", "--yes", "--no-wait"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: $CLUSTEROUS_CHECKIP_URL: expected an https:// URL")
    assert sum(count_tagged(aws, "mu").values()) == 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as a check-ip service on loopback presents it."""
    cert, key = make_cert("checkip.test", key_ids=False, ip="127.0.0.1")
    cert_file, key_file = directory / "checkip.pem", directory / "checkip.key"
    cert_file.write_bytes(pem(cert))
    key_file.write_bytes(key_pem(key))
    return cert_file, key_file


def test_ssh_cidr_defaults_to_the_discovered_address(aws, cli, monkeypatch, tmp_path):
    import http.server
    import ssl
    import threading

    class CheckIp(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"203.0.113.9\n")

        def log_message(self, *args):
            pass

    cert_file, key_file = _self_signed(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), CheckIp)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("CLUSTEROUS_CHECKIP_URL", f"https://127.0.0.1:{server.server_port}/")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # OpenSSL's default trust: only this one
        make_profile(cli)
        result = cli(["up", "--cluster", "nu", "--workers", "0", "--yes", "--no-wait"])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "203.0.113.9/32" in result.stderr
    sg = [g for g in tagged(aws, "nu")["sgs"] if tag(g, "clusterous:key") == "sg-controller"][0]
    assert [r["CidrIp"] for p in sg["IpPermissions"] for r in p.get("IpRanges", [])] == ["203.0.113.9/32"]


def test_up_shows_the_plan_and_creates_nothing_when_refused(aws, cli):
    make_profile(cli)
    result = cli(["up", "--ssh-cidr", SSH_CIDR, "--cluster", "xi", "--workers", "2"], input="n\n")
    assert result.exit_code == 1
    assert "plan for cluster xi" in result.stdout and "USD per hour" in result.stdout
    assert "NAT gateway" in result.stdout and "2 × t3.large" in result.stdout
    assert sum(count_tagged(aws, "xi").values()) == 0


def test_spot_is_for_node_groups_never_the_controller(aws, cli):
    make_profile(cli)
    result = cli([*UP, "--cluster", "spotty", "--workers", "2", "--spot"])
    assert result.exit_code == 0, result.output
    lifecycle = {}
    for instance in tagged(aws, "spotty")["instances"]:
        role = tag(instance, "clusterous:group") or tag(instance, "clusterous:role")
        lifecycle.setdefault(role, set()).add(instance.get("InstanceLifecycle", "on-demand"))
    assert lifecycle == {"controller": {"on-demand"}, "master": {"spot"}, "worker": {"spot"}}
    # The account's spot service-linked role exists for the autoscaler's later spot launches (its
    # role has no IAM rights); a second `up` makes no second one, `down` leaves it.
    spot_roles = aws.client("iam").list_roles(PathPrefix="/aws-service-role/spot.amazonaws.com/")["Roles"]
    assert len(spot_roles) == 1
    assert cli([*UP, "--cluster", "spotty", "--workers", "2", "--spot"]).exit_code == 0
    assert cli(["down", "spotty", "--yes", "--delete-shared-volume"]).exit_code == 0
    assert (
        aws.client("iam").list_roles(PathPrefix="/aws-service-role/spot.amazonaws.com/")["Roles"]
        == spot_roles
    )


def test_ssh_open_to_the_internet_asks_first_and_says_what_it_opens(aws, cli):
    make_profile(cli)
    base = ["up", "--cluster", "wide", "--workers", "0", "--no-wait"]
    refused = cli([*base, "--ssh-cidr", "0.0.0.0/0"], input="n\n")
    assert refused.exit_code == 1
    assert "opens SSH (port 22) on the controller to every address on the internet" in refused.output
    assert sum(count_tagged(aws, "wide").values()) == 0
    accepted = cli([*base, "--ssh-cidr", "0.0.0.0/0", "--yes"])
    assert accepted.exit_code == 0, accepted.output
    assert "warning: --ssh-cidr 0.0.0.0/0 opens SSH" in accepted.stderr
    narrow = cli([*base, "--cluster", "narrow", "--ssh-cidr", "10.1.0.0/16"], input="y\n")
    assert narrow.exit_code == 0 and "opens SSH" not in narrow.output


def test_the_same_name_in_two_regions_is_two_clusters_down_to_iam(aws, cli, monkeypatch):
    """IAM names are account-wide: a second region's `up` and `down` never touch the first's role.
    (Each region's cluster uses the profile whose bucket is in its region.)"""
    make_profile(cli)
    assert cli(["--profile", "default", *UP, "--cluster", "twin", "--workers", "0"]).exit_code == 0
    make_profile(cli, region="eu-west-1", name="eu")
    iam = aws.client("iam")
    first = iam.get_role_policy(RoleName="twin-us-east-1-controller", PolicyName="registry-bucket")
    second = cli(["--profile", "eu", *UP, "--cluster", "twin", "--workers", "0", "--region", "eu-west-1"])
    assert second.exit_code == 0, second.output
    roles = sorted(r["RoleName"] for r in iam.list_roles(PathPrefix="/clusterous/")["Roles"])
    assert roles == ["twin-eu-west-1-controller", "twin-us-east-1-controller"]
    assert (
        iam.get_role_policy(RoleName="twin-us-east-1-controller", PolicyName="registry-bucket")[
            "PolicyDocument"
        ]
        == first["PolicyDocument"]
    )
    down = cli(
        ["--profile", "eu", "down", "twin", "--region", "eu-west-1", "--yes", "--delete-shared-volume"]
    )
    assert down.exit_code == 0, down.output
    assert [r["RoleName"] for r in iam.list_roles(PathPrefix="/clusterous/")["Roles"]] == [
        "twin-us-east-1-controller"
    ]
    assert iam.get_instance_profile(InstanceProfileName="twin-us-east-1-controller")["InstanceProfile"][
        "Roles"
    ]


def test_iam_names_not_tagged_as_ours_are_never_adopted_or_deleted(aws, cli):
    make_profile(cli)
    iam = aws.client("iam")
    iam.create_role(  # someone else's role that happens to have our name
        RoleName="omega-us-east-1-controller",
        Path="/clusterous/",
        AssumeRolePolicyDocument='{"Version": "2012-10-17", "Statement": []}',
    )
    result = cli([*UP, "--cluster", "omega", "--workers", "0"])
    assert result.exit_code == 2, result.output
    assert "--cluster" in result.stderr and "IAM role omega-us-east-1-controller" in result.stderr
    assert sum(count_tagged(aws, "omega").values()) == 0
    assert iam.list_role_policies(RoleName="omega-us-east-1-controller")["PolicyNames"] == []
    assert cli(["down", "omega", "--yes"]).exit_code == 0
    assert iam.get_role(RoleName="omega-us-east-1-controller")["Role"]


def test_the_controllers_s3_rights_stop_at_the_prefix_the_registry_writes():
    """The policy's prefix is the registry's root directory as its S3 driver writes keys (no
    leading '/'): a change to either must change both."""
    from pathlib import Path

    from clusterous_provisioner import iam

    manifest = (Path(__file__).parents[1] / "manifests" / "registry.yaml").read_text()
    root = manifest.split("REGISTRY_STORAGE_S3_ROOTDIRECTORY", 1)[1].split("value:", 1)[1].splitlines()[0]
    assert root.strip().strip("\"'").lstrip("/") == iam.REGISTRY_PREFIX
    objects = [s for s in iam.controller_policy("b")["Statement"] if s["Sid"] == "RegistryObjects"][0]
    assert objects["Resource"] == f"arn:aws:s3:::b/{iam.REGISTRY_PREFIX}/*"


def test_every_kind_of_resource_is_found_deleted_and_swept():
    """kinds.KINDS is the one list of what a cluster owns: each kind has a place in the inventory
    and a delete step, and a leftover of each kind is named by the sweep."""
    import dataclasses

    from clusterous_provisioner import destroy
    from clusterous_provisioner.inventory import Inventory
    from clusterous_provisioner.kinds import KINDS, resources

    fields = {f.name for f in dataclasses.fields(Inventory)}
    assert [k.field for k in KINDS if k.field not in fields] == []
    assert list(destroy.DELETE) == [k.field for k in KINDS]  # one step each, in the table's order
    inv = Inventory(cluster="c", region="us-east-1", token_parameter=True)
    for kind in KINDS:
        if kind.field != "token_parameter":
            one = {kind.id_key: f"{kind.field}-1", "PublicIp": "192.0.2.1", "State": {"Name": "running"}}
            setattr(inv, kind.field, [one] if isinstance(getattr(inv, kind.field), list) else one)
    assert all(resources(inv, k) for k in KINDS)
    assert not inv.empty
    inv.vpcs.append({"VpcId": "vpcs-2"})
    assert inv.duplicates() == ["VPC: vpcs-1, vpcs-2"]


def test_a_key_pair_whose_private_key_was_lost_before_any_instance_is_made_again(aws, cli, isolated_config):
    from tests.harness.faults import SimulatedCrash

    make_profile(cli)
    aws.realism.crash_after("CreateKeyPair")  # AWS made the key pair; the key never reached the disk
    with pytest.raises(SimulatedCrash):
        cli([*UP, "--cluster", "kp", "--workers", "0"])
    assert aws.client("ec2").describe_key_pairs(KeyNames=["clusterous-kp"])["KeyPairs"]
    key_file = isolated_config / "clusters" / "default" / "kp" / "clusterous-kp.pem"
    assert not key_file.exists()
    aws.reset_calls()
    again = cli([*UP, "--cluster", "kp", "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert [op for _, op in aws.calls() if op.endswith("KeyPair")] == ["DeleteKeyPair", "CreateKeyPair"]
    assert "PRIVATE KEY" in key_file.read_text()
    fingerprint = aws.client("ec2").describe_key_pairs(KeyNames=["clusterous-kp"])["KeyPairs"][0]
    assert {i["KeyName"] for i in tagged(aws, "kp")["instances"]} == {fingerprint["KeyName"]}


def test_a_lost_private_key_of_running_instances_stops_up_with_how_to_recover(aws, cli, isolated_config):
    make_profile(cli)
    assert cli([*UP, "--cluster", "lost", "--workers", "0"]).exit_code == 0
    key_file = isolated_config / "clusters" / "default" / "lost" / "clusterous-lost.pem"
    key_file.unlink()
    before = count_tagged(aws, "lost")
    result = cli([*UP, "--cluster", "lost", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "instance(s) use it" in result.stderr and str(key_file) in result.stderr
    assert "clusterous-k8s down lost" in result.stderr
    assert count_tagged(aws, "lost") == before  # no instance nobody can reach
    assert aws.client("ec2").describe_key_pairs(KeyNames=["clusterous-lost"])["KeyPairs"]
