"""Launching instances: the controller, and a node group in one RunInstances call, idempotent by
its ClientToken; waiting for them to run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import NodeGroup
from clusterous_provisioner.inventory import describe_instances
from clusterous_provisioner.preflight import Preflight
from clusterous_provisioner.steps import WAIT, Report


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


def wait_running(clients, instance_ids: list[str], report: Report) -> list[dict]:
    if not instance_ids:
        return []
    report(f"waiting for {len(instance_ids)} instance(s) to run")
    clients.ec2.get_waiter("instance_running").wait(InstanceIds=instance_ids, WaiterConfig=WAIT)
    return describe_instances(clients.ec2, instance_ids)
