"""The controller role's rights allow every AWS call the autoscaler makes, and nothing around them
(issue 17 item 6).

moto enforces no IAM policy here, and its optional access control (moto.iam.access_control)
does not evaluate Condition blocks of identity policies (only sts:ExternalId in trust policies,
moto 5.2), so it cannot check tag conditions. This file therefore holds a small evaluator of
exactly what the policy uses, written from AWS's documentation, and says which AWS behaviour
it models:

- policy evaluation: a request is allowed when some Allow statement matches its action, its
  resource ARN (`*` and `?` wildcards) and all its conditions; there are no Deny statements;
- condition operators StringEquals and StringLike only (anything else fails the test), a key
  absent from the request never matches (IAM User Guide, "Condition element");
- what EC2 authorizes for RunInstances (EC2 User Guide, "Example policies ... Launch instances"):
  one check per resource it touches — the instance and the volumes with the request's tags for
  them (`aws:RequestTag/...` from TagSpecifications), the subnet and security groups with their
  own tags (`aws:ResourceTag/...`), the AMI, the network interface it creates, the key pair, a
  spot request — and ec2:CreateTags for each tagged resource type with `ec2:CreateAction` =
  RunInstances ("Grant permission to tag resources during creation");
- TerminateInstances: one check per instance with its tags; GetParameter: the parameter's ARN;
  the Describe calls: Resource "*" with `aws:RequestedRegion`.

The calls are the ones the autoscaler really makes in a grow from zero and a shrink (recorded
with their parameters by a botocore hook on the clients the rounds use), against a cluster that
`up` made; the policy is the one `up` put on the role in moto.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import time

import pytest
from kubernetes import config as kube_config

from clusterous_provisioner import autoscale, autoscaler, iam, layout
from clusterous_provisioner.clients import Clients
from tests.test_autoscale_cluster import _app, _available, _workers
from tests.test_up_ready import CLUSTER, UP, cluster_side, node_name  # noqa: F401 - a fixture

OPERATORS = {"StringEquals": lambda value, want: value == want, "StringLike": fnmatch.fnmatchcase}


def allowed(policy: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    """Does an Allow statement match the action, the resource and every condition?"""
    for statement in policy["Statement"]:
        assert (
            statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        )
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = (
            [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        )
        if not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        if all(
            key in context
            and any(
                OPERATORS[operator](context[key], want)
                for want in ([wants] if isinstance(wants, str) else wants)
            )
            for operator, keys in (statement.get("Condition") or {}).items()
            for key, wants in keys.items()
        ):
            return True
    return False


class Account:
    """What the evaluator needs to know about the account: tags of existing resources, ids."""

    def __init__(self, aws, region: str, account: str):
        self.ec2 = aws.client("ec2", direct=True)
        self.iam = aws.client("iam", direct=True)
        self.region, self.account = region, account

    def arn(self, kind: str, ident: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account}:{kind}/{ident}"

    def tags(self, call: str, key: str, ident: str) -> dict[str, str]:
        reply = getattr(self.ec2, call)(**{key: [ident]})
        items = next(v for k, v in reply.items() if isinstance(v, list))
        item = items[0]["Instances"][0] if "Instances" in items[0] else items[0]
        return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def checks(service: str, operation: str, params: dict, account: Account) -> list[tuple[str, str, dict]]:
    """The (action, resource ARN, condition context) AWS authorizes for one request."""
    region = {"aws:RequestedRegion": account.region}
    if service == "ec2" and operation == "RunInstances":
        tagged = {
            spec["ResourceType"]: {f"aws:RequestTag/{t['Key']}": t["Value"] for t in spec["Tags"]}
            for spec in params.get("TagSpecifications", [])
        }
        found = [
            ("ec2:RunInstances", account.arn("instance", "*"), {**region, **tagged.get("instance", {})}),
            ("ec2:RunInstances", account.arn("volume", "*"), {**region, **tagged.get("volume", {})}),
            ("ec2:RunInstances", f"arn:aws:ec2:{account.region}::image/{params['ImageId']}", region),
            ("ec2:RunInstances", account.arn("key-pair", params["KeyName"]), region),
        ]
        for nic in params.get("NetworkInterfaces", []):
            subnet = account.tags("describe_subnets", "SubnetIds", nic["SubnetId"])
            found.append(("ec2:RunInstances", account.arn("subnet", nic["SubnetId"]), _resource_tags(subnet)))
            for group in nic.get("Groups", []):
                tags = account.tags("describe_security_groups", "GroupIds", group)
                found.append(("ec2:RunInstances", account.arn("security-group", group), _resource_tags(tags)))
            found.append(("ec2:RunInstances", account.arn("network-interface", "*"), region))
        if params.get("InstanceMarketOptions"):
            found.append(("ec2:RunInstances", account.arn("spot-instances-request", "*"), region))
        for kind, context in tagged.items():
            found.append(
                ("ec2:CreateTags", account.arn(kind, "*"), {**context, "ec2:CreateAction": "RunInstances"})
            )
        return found
    if service == "ec2" and operation == "TerminateInstances":
        return [
            ("ec2:TerminateInstances", account.arn("instance", i),
             _resource_tags(account.tags("describe_instances", "InstanceIds", i)))
            for i in params["InstanceIds"]
        ]  # fmt: skip
    if service == "ec2" and operation == "CreateTags":  # a direct call: no ec2:CreateAction
        context = {f"aws:RequestTag/{t['Key']}": t["Value"] for t in params["Tags"]}
        return [("ec2:CreateTags", account.arn("instance", i), context) for i in params["Resources"]]
    if service == "ssm" and operation == "GetParameter":
        name = params["Name"] if params["Name"].startswith("/") else "/" + params["Name"]
        return [
            ("ssm:GetParameter", f"arn:aws:ssm:{account.region}:{account.account}:parameter{name}", region)
        ]
    if service == "iam" and operation in ("GetRole", "GetInstanceProfile"):
        kind, key = (
            ("role", "RoleName") if operation == "GetRole" else ("instance-profile", "InstanceProfileName")
        )
        arn = f"arn:aws:iam::{account.account}:{kind}{layout.IAM_PATH}{params[key]}"
        return [(f"iam:{operation}", arn, {})]
    assert operation.startswith("Describe"), f"{service}:{operation} is not modelled here"
    return [(f"{service}:{operation}", "*", region)]


def _resource_tags(tags: dict[str, str]) -> dict[str, str]:
    return {f"aws:ResourceTag/{k}": v for k, v in tags.items()}


def recording(clients: Clients, calls: list) -> Clients:
    """Record every API call the clients make with its parameters (botocore's
    provide-client-params event), as (service, operation, params)."""
    for service, client in (("ec2", clients.ec2), ("ssm", clients.ssm), ("iam", clients.iam)):

        def hook(params, model, service=service, **_):
            calls.append((service, model.name, copy.deepcopy(params)))

        client.meta.events.register(f"provide-client-params.{service}.*", hook)
    return clients


@pytest.fixture
def grown_and_shrunk(cluster_side, aws, k8s_api, cli):  # noqa: F811 - the imported fixture
    """`up --workers 0..3`; one grow from zero and one shrink back, recorded call by call."""
    result = cli([*UP, "--workers", "0..3", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    calls: list = []
    clients = recording(Clients(aws.region), calls)
    quiet: list[str] = []
    _app(k8s_api, 3, cpu="900m")

    def waiting() -> bool:
        return sum(1 for p in k8s_api.list("v1/pods", "default") if autoscale.unschedulable_message(p)) == 3

    k8s_api.wait_for(waiting, 15, "three pods with no node of their group")
    now = time.time()
    drain = autoscaler.make_drain(api, 15, quiet.append)
    (grow,) = autoscaler.run_once(api, clients, autoscaler.read_record(api), now, drain, quiet.append, {})
    assert (grow.action, grow.count) == ("grow", 2), grow
    k8s_api.wait_for(lambda: _available(k8s_api) == 3, 15, "the app on the new nodes")
    k8s_api.delete("apps/v1/deployments", "sim", "default")
    k8s_api.wait_for(lambda: not k8s_api.list("v1/pods", "default"), 15, "the app gone")
    (shrink,) = autoscaler.run_once(
        api, clients, autoscaler.read_record(api), now + 20 * 60, drain, quiet.append
    )
    assert (shrink.action, shrink.count) == ("shrink", 2), shrink
    assert _workers(aws) == {}
    role = aws.client("iam", direct=True).get_role(RoleName=layout.role_name(CLUSTER, aws.region))["Role"]
    document = aws.client("iam", direct=True).get_role_policy(
        RoleName=role["RoleName"], PolicyName="autoscaler"
    )
    policy = document["PolicyDocument"]
    policy = policy if isinstance(policy, dict) else json.loads(policy)
    return calls, policy, Account(aws, aws.region, role["Arn"].split(":")[4])


def test_every_call_of_a_grow_and_a_shrink_is_allowed_and_their_neighbours_refused(
    grown_and_shrunk, aws
) -> None:
    calls, policy, account = grown_and_shrunk
    operations = {operation for _, operation, _ in calls}
    assert {"RunInstances", "TerminateInstances", "GetParameter", "DescribeInstanceTypes"} <= operations
    assert {"DescribeInstances", "DescribeParameters", "GetRole", "GetInstanceProfile"} <= operations
    refused = [
        (operation, action, resource)
        for service, operation, params in calls
        for action, resource, context in checks(service, operation, params, account)
        if not allowed(policy, action, resource, context)
    ]
    assert refused == []
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not [a for a in actions if a.startswith(("iam:Pass", "iam:Create", "iam:Put", "iam:Attach"))]
    assert all("IamInstanceProfile" not in p for _, o, p in calls if o == "RunInstances")  # nothing to pass
    _neighbours_refused(calls, policy, account, aws)


def _neighbours_refused(calls: list, policy: dict, account: Account, aws) -> None:
    """A launch without the cluster's tag (or another's, or as a controller), a termination of
    another cluster's instance or of the controller, a later CreateTags, another parameter, a
    describe in another region: each refused."""
    (launch,) = [p for _, o, p in calls if o == "RunInstances"]

    def refused(service: str, operation: str, params: dict) -> bool:
        return not all(allowed(policy, *check) for check in checks(service, operation, params, account))

    untagged = copy.deepcopy(launch)
    for spec in untagged["TagSpecifications"]:
        spec["Tags"] = [t for t in spec["Tags"] if t["Key"] != "clusterous:cluster"]
    assert refused("ec2", "RunInstances", untagged)
    no_tags = {k: v for k, v in launch.items() if k != "TagSpecifications"}
    assert refused("ec2", "RunInstances", no_tags)
    other = copy.deepcopy(launch)
    for spec in other["TagSpecifications"]:
        spec["Tags"] = [
            {**t, "Value": "other"} if t["Key"] == "clusterous:cluster" else t for t in spec["Tags"]
        ]
    assert refused("ec2", "RunInstances", other)
    a_controller = copy.deepcopy(launch)
    for spec in a_controller["TagSpecifications"]:
        spec["Tags"] = [
            {**t, "Value": "controller"} if t["Key"] == "clusterous:role" else t for t in spec["Tags"]
        ]
    assert refused("ec2", "RunInstances", a_controller)
    assert not refused("ec2", "RunInstances", launch)  # the evaluator does allow the real one

    ec2 = aws.client("ec2", direct=True)
    image = launch["ImageId"]
    theirs = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "clusterous:cluster", "Value": "other"}, {"Key": "clusterous:role", "Value": "node"}]}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    assert refused("ec2", "TerminateInstances", {"InstanceIds": [theirs]})
    controller = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=[{"Name": "tag:clusterous:role", "Values": ["controller"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    assert controller and refused("ec2", "TerminateInstances", {"InstanceIds": controller})  # not a node
    (terminate,) = [p for _, o, p in calls if o == "TerminateInstances"]
    assert not refused("ec2", "TerminateInstances", terminate)
    # no tag written after launch, not even the cluster's own: CreateTags only within RunInstances
    assert refused(
        "ec2", "CreateTags", {"Resources": controller, "Tags": [{"Key": "clusterous:role", "Value": "node"}]}
    )
    assert refused("ssm", "GetParameter", {"Name": layout.token_parameter("other")})
    assert refused("ssm", "GetParameter", {"Name": "/some/secret"})
    assert not refused("ssm", "GetParameter", {"Name": layout.token_parameter(CLUSTER)})
    elsewhere = Account(aws, "eu-west-1", account.account)
    assert not refused("ec2", "DescribeInstances", {})
    assert not all(allowed(policy, *c) for c in checks("ec2", "DescribeInstances", {}, elsewhere))


def test_the_evaluator_refuses_what_it_does_not_model() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": "ec2:X", "Resource": "*",
                             "Condition": {"ArnLike": {"aws:SourceArn": "x"}}}]}  # fmt: skip
    with pytest.raises(KeyError):
        allowed(policy, "ec2:X", "*", {"aws:SourceArn": "x"})
    assert iam.POLICY_NAMES == ("registry-bucket", "autoscaler")
