"""Resizing a node group: launch more with the same user-data, or pick and terminate some.

Launch settings (AMI, root device, spot, instance type) come from the group's running instances,
so a grown group matches the one `up` made; the k3s agent token comes from SSM, so any laptop can
scale (the server token never leaves the controller), and the server CA's hash from the
controller's tag, so new nodes join at once (joinhash.py).
"""

from __future__ import annotations

from collections.abc import Callable

from clusterous_core.errors import BadInput, Failure
from clusterous_core.names import DEFAULT_OS
from clusterous_provisioner import access, apply, instances, joinhash, layout, preflight, steps, tags
from clusterous_provisioner.clusterfile import ClusterSpec, NodeGroup
from clusterous_provisioner.inventory import Inventory

Report = Callable[[str], None]


def pick_to_remove(instances: list[dict], count: int) -> list[dict]:
    """The `count` newest instances: the oldest have the longest-running work and warm caches.

    LaunchTime has one-second resolution, so two launches within a second would tie: our own
    launch stamp (microseconds) and the index within one RunInstances call order them exactly.
    """

    def age(instance: dict) -> tuple:
        stamp = tags.as_dict(instance.get("Tags")).get(tags.LAUNCHED, "")
        return (str(instance.get("LaunchTime", "")), stamp, instance.get("AmiLaunchIndex", 0))

    return sorted(instances, key=age, reverse=True)[:count]


def _spec_from(
    inv: Inventory, group: str, instance_type: str | None, count: int, spot: bool | None = None
) -> tuple[ClusterSpec, NodeGroup]:
    controller = inv.controller
    if controller is None or inv.vpc is None:
        raise Failure(
            f"cluster {inv.cluster} in {inv.region} is not complete", "re-run `clusterous-k8s up` first"
        )
    members = inv.group_instances(group)
    sample = members[0] if members else None
    itype = instance_type or (sample["InstanceType"] if sample else None)
    if itype is None:
        known = ", ".join(inv.groups) or "none"
        raise BadInput(
            "--instance-type", None, f"an instance type for the new group {group!r} (running groups: {known})"
        )
    if spot is None:
        spot = bool(sample and sample.get("InstanceLifecycle") == "spot")
    node_group = NodeGroup(name=group, instance_type=itype, count=count, spot=spot)
    groups = [NodeGroup(name=g, instance_type="t3.micro", count=0) for g in inv.groups if g != group]
    spec = ClusterSpec(
        name=inv.cluster,
        region=inv.region,
        controller_type=controller["InstanceType"],
        groups=(*groups, node_group),
        shared_volume_size=None,
        shared_volume_id=inv.shared_volume["VolumeId"] if inv.shared_volume else None,
        logging_level=0,
        environment_file=None,
        ssh_cidr=None,
        k3s_version=tags.as_dict(controller.get("Tags")).get(tags.K3S_VERSION) or _k3s_default(),
        os=tags.as_dict(controller.get("Tags")).get(tags.OS) or DEFAULT_OS,
        ami=None,
        source="scale",
    )
    return spec, node_group


def _k3s_default() -> str:
    from clusterous_provisioner.clusterfile import DEFAULT_K3S_VERSION

    return DEFAULT_K3S_VERSION


def grow(clients, inv: Inventory, group: str, count: int, bucket: str, instance_type: str | None,
         wait: bool, report: Report, spot: bool | None = None) -> list[str]:  # fmt: skip
    """Launch instances until `group` has `count`; one RunInstances call. Returns the new ids.
    `spot`: None learns it from a running member (on-demand for a group with none)."""
    have = inv.group_instances(group)
    missing = count - len(have)
    if missing <= 0:
        return []
    spec, node_group = _spec_from(inv, group, instance_type, count, spot)
    controller = inv.controller
    assert controller is not None  # _spec_from raised otherwise
    image = (have[0] if have else controller)["ImageId"]
    root = (have[0] if have else controller).get("RootDeviceName") or "/dev/xvda"
    pre = preflight.Preflight(ami=image, root_device=root, zone="", external_volume=None)
    token = access.read_token(clients, inv.cluster)
    volume_id = inv.shared_volume["VolumeId"] if inv.shared_volume else None
    from clusterous_provisioner import bootstrap

    inputs = apply.bootstrap_inputs(spec, bucket, token, volume_id)
    subnet = inv.subnet("subnet-private")
    sg = inv.security_group("sg-nodes")
    if subnet is None or sg is None:
        raise Failure(
            f"cluster {inv.cluster}: its private subnet or node security group is missing", "re-run `up`"
        )
    key_name = controller.get("KeyName") or layout.key_pair_name(inv.cluster)
    report(f"launching {missing} × {node_group.instance_type} in group {group}")
    new = instances.launch_group(
        clients, spec, node_group, missing, pre, key_name, sg["GroupId"], subnet["SubnetId"],
        bootstrap.render_node(inputs, group), joinhash.launch_tags(controller),
    )  # fmt: skip
    ids = [i["InstanceId"] for i in new]
    if wait:
        instances.wait_running(clients, ids, report)
    return ids


def shrink(clients, inv: Inventory, group: str, count: int, wait: bool, report: Report) -> list[str]:
    """Terminate the newest instances until `group` has `count`. Returns the terminated ids."""
    have = inv.group_instances(group)
    victims = pick_to_remove(have, len(have) - count) if len(have) > count else []
    ids = [i["InstanceId"] for i in victims]
    if not ids:
        return []
    report(f"terminating {len(ids)} node(s) of group {group}")
    clients.ec2.terminate_instances(InstanceIds=ids)
    if wait:
        clients.ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=steps.WAIT)
    return ids
