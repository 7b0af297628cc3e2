"""Apply: create what the cluster lacks, in dependency order, and nothing it already has.

Each step looks at the inventory (found by tags) before it creates anything, and every resource is
tagged in the same call that creates it (TagSpecifications / Tags), so a run stopped at any point
leaves only tagged, discoverable resources, and the next run picks up where it stopped. Waits use
botocore's waiters; a node group is one RunInstances call whatever its size.
"""

from __future__ import annotations

from clusterous_provisioner import layout
from clusterous_provisioner.access import ensure_key_pair, ensure_token
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.iam import ensure_iam
from clusterous_provisioner.instances import launch_controller, launch_group, wait_running
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.network import ensure_network
from clusterous_provisioner.preflight import Preflight, preflight
from clusterous_provisioner.security_groups import ensure_security_groups
from clusterous_provisioner.shared_volume import attach_shared_volume, ensure_shared_volume
from clusterous_provisioner.steps import Outcome, Report, Target


def bootstrap_inputs(
    spec: ClusterSpec, bucket: str, agent_token: str, volume_id: str | None, bucket_region: str | None = None
):
    from clusterous_provisioner.bootstrap import BootstrapInputs

    return BootstrapInputs(
        cluster_name=spec.name,
        region=spec.region,
        k3s_version=spec.k3s_version,
        agent_token=agent_token,
        controller_ip=layout.CONTROLLER_IP,
        vpc_cidr=layout.VPC_CIDR,
        shared_volume_id=volume_id,
        bucket=bucket,
        node_groups=[g.name for g in spec.groups],
        logging_level=spec.logging_level,
        os=spec.os,
        bucket_region=bucket_region,
        spot=any(g.spot for g in spec.groups),
    )


# --- the whole converge -------------------------------------------------------------------------


def apply(
    clients, spec: ClusterSpec, target: Target, inv: Inventory, report: Report, pre: Preflight | None = None
) -> Outcome:
    """Converge the cluster to `spec`: create what is missing, in the order AWS needs (one
    function on purpose: read top to bottom, it is that order; each step is in its own module)."""
    out = Outcome()
    clients.patience.report = report  # waits for AWS to catch up show as progress
    pre = pre or preflight(clients, spec, inv)
    report("k3s token and key pair")
    token = ensure_token(clients, spec.name)
    key_name, out.key_file = ensure_key_pair(clients, spec, target, inv, report)
    report("IAM role for the controller")
    profile_arn = ensure_iam(clients, spec, target, inv, out)
    report(f"network in {pre.zone}")
    ids = ensure_network(clients, spec, inv, pre.zone, out, report)
    sgs = ensure_security_groups(clients, spec, inv, ids["vpc"], target.ssh_cidr, out)
    report("shared volume")
    volume = ensure_shared_volume(clients, spec, inv, pre, out)

    from clusterous_provisioner import bootstrap, joinhash

    inputs = bootstrap_inputs(spec, target.bucket, token, volume["VolumeId"], target.bucket_region)
    waiting: list[str] = []
    controller = inv.controller
    if controller is None:
        report("launching the controller")
        controller = launch_controller(
            clients,
            spec,
            pre,
            key_name,
            profile_arn,
            sgs["sg-controller"],
            ids["subnet-public"],
            bootstrap.render_controller(inputs),
            out,
        )
    out.controller_id = controller["InstanceId"]
    if controller["State"]["Name"] != "running":
        (controller,) = wait_running(clients, [out.controller_id], report)
    # The volume goes on as soon as the controller runs, before any node is launched: the
    # controller's bootstrap waits for it (and retries), and nothing else delays it.
    report("attaching the shared volume to the controller")
    attach_shared_volume(clients, volume, out.controller_id)
    for group in spec.groups:
        have = inv.group_instances(group.name)
        out.instance_ids[group.name] = [i["InstanceId"] for i in have]
        waiting += [i["InstanceId"] for i in have if i["State"]["Name"] != "running"]
        missing = group.count - len(have)
        if missing > 0:
            report(f"launching {missing} × {group.instance_type} in group {group.name}")
            new = launch_group(
                clients,
                spec,
                group,
                missing,
                pre,
                key_name,
                sgs["sg-nodes"],
                ids["subnet-private"],
                bootstrap.render_node(inputs, group.name),
                joinhash.launch_tags(controller),
            )
            out.created.append(f"{missing} node(s) in group {group.name}")
            out.instance_ids[group.name] += [i["InstanceId"] for i in new]
            waiting += [i["InstanceId"] for i in new]
    wait_running(clients, waiting, report)
    out.public_ip = controller.get("PublicIpAddress")
    return out
