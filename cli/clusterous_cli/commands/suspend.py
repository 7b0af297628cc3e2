"""suspend and resume: stop a cluster so only its disks bill, and bring it back as it was.

Thin: the AWS side is the provisioner's front door (lifecycle.suspend / resume, suspension.py);
here are the local record (controller.yml: marked suspended, rewritten with the new public
address at resume), the autoscaler's clock in the cluster, and `up`'s readiness wait.
"""

from __future__ import annotations

import time

import typer

from clusterous_cli.commands.cluster import _cluster_region, _confirm, _progress, _reporter
from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, REGION_OPTION, YES_OPTION

SUSPEND_HELP = """Stop every instance of the cluster (the controller included) so it costs only its disks.

Deletes the NAT gateway and releases its Elastic IP; keeps the shared volume, the instances' disks,
the registry's images (in the bucket) and the cluster itself. Spot nodes cannot be stopped: they
are terminated and `resume` launches their groups again at the same size. Running applications
stop with their nodes and start again at `resume`. `status` then shows what it still costs per
month. Asks first unless --yes; re-run it after a failure to finish.

Example: clusterous-k8s suspend --cluster mycluster --yes
"""
RESUME_HELP = """Bring a suspended cluster back: same nodes, same applications, same data.

Recreates the NAT gateway and its Elastic IP, starts the instances, launches spot groups again,
records the controller's new public address, then waits stage by stage until the cluster is ready
(as `up` does; --timeout sets each stage's limit). Autoscaled groups count idle time from the
resume. Re-run it after a failure to finish.

Example: clusterous-k8s resume --cluster mycluster
"""


def suspend(
    ctx: typer.Context,
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
    yes: bool = YES_OPTION,
) -> None:
    from clusterous_cli import output, tunnels
    from clusterous_cli.endpoint import mark_suspended
    from clusterous_core.names import TIME_FORMAT
    from clusterous_provisioner import lifecycle
    from clusterous_provisioner.clients import Clients

    profile_name, _, name, region = _cluster_region(ctx, name, region)
    ref = _ref(profile_name, name)
    report = _reporter()
    if not yes:  # asked before the cluster is told anything
        _confirm(
            f"Suspend cluster {name}: stop its instances and delete its NAT gateway "
            "(the shared volume, the images and the cluster are kept)?"
        )
    _autoscaler_clock(ref, "suspended_at", report)
    hooks = lifecycle.Hooks(report=report, yes=True, progress=_progress)
    done = lifecycle.suspend(Clients(region), lifecycle.SuspendRequest(name), hooks)
    mark_suspended(ref, time.strftime(TIME_FORMAT, time.gmtime()))
    tunnels.stop_supervisor(ref)  # its tunnels lead nowhere now
    data = {
        "cluster": name,
        "region": region,
        "stopped": done.stopped,
        "terminated_spot": done.terminated,
        "removed": done.removed,
        "next": f"clusterous-k8s resume --cluster {name}",
    }
    if as_json:
        output.print_json(data)
        return
    print(f"cluster {name} is suspended: {len(done.stopped)} instance(s) stopped", end="")
    print(f", {len(done.terminated)} spot node(s) terminated" if done.terminated else "")
    for line in done.removed:
        print(f"  removed {line}")
    print("  kept: the shared volume, the instances' disks, the registry's images, the cluster's record")
    print(
        f"  `clusterous-k8s status -c {name}` shows what it still costs; bring it back with: {data['next']}"
    )


def resume(
    ctx: typer.Context,
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    timeout: float = typer.Option(
        None, "--timeout", help="Seconds each readiness stage may take [host key 600, cloud-init 900, ...]."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import config, output, readiness
    from clusterous_cli.endpoint import record_controller
    from clusterous_provisioner import aws, lifecycle, suspension
    from clusterous_provisioner.clients import Clients

    profile_name, profile, name, region = _cluster_region(ctx, name, region)
    ref = _ref(profile_name, name)
    report = _reporter()
    bucket = profile.bucket if profile else ""
    clients = Clients(region)
    hooks = lifecycle.Hooks(report=report, yes=True, progress=_progress)
    done = lifecycle.resume(clients, lifecycle.ResumeRequest(name, bucket), hooks)
    existing = config.read_yaml(ref.controller_file) if ref.controller_file.exists() else {}
    key_file = existing.get("key_file") or (profile.key_file if profile else None)
    record_controller(ref, done.controller, region, str(key_file) if key_file else None)
    from clusterous_provisioner.inventory import discover

    with aws.aws_errors(f"resume {name}: waiting for the cluster", "re-run `clusterous-k8s resume`"):
        spec = suspension.spec_of(discover(clients, name))
        ready = readiness.wait_for_cluster(
            clients.ec2, ref, spec, bucket, done.instances, done.controller["InstanceId"], None, timeout
        )
    _autoscaler_clock(ref, "resumed_at", report)
    _forget_terminated(ref, done.instances, report)
    data = {
        "cluster": name,
        "region": region,
        "started": done.started,
        "launched": done.launched,
        "controller": {
            "instance_id": done.controller["InstanceId"],
            "public_ip": done.controller.get("PublicIpAddress"),
        },
        "readiness": ready,
    }
    if as_json:
        output.print_json(data)
        return
    print(f"cluster {name} is back: {ready['nodes']}; {ready['add_ons']}")
    print(
        f"  controller {data['controller']['public_ip']}; {len(done.started)} started, {len(done.launched)} launched"
    )


def _ref(profile_name: str, name: str):
    from clusterous_cli import config
    from clusterous_cli.endpoint import ClusterRef

    return ClusterRef(profile_name, name, config.cluster_dir(profile_name, name))


def _autoscaler_clock(ref, key: str, report) -> None:
    """Tell the autoscaler when the cluster was suspended or resumed (idle times never count across
    a stop). Best effort at suspend: a cluster that cannot be reached is suspended all the same,
    and its autoscaler then counts idle time from before the stop until `resume` records its time."""
    from clusterous_cli import kubeapi
    from clusterous_provisioner import autoscaler

    try:
        autoscaler.write_clock(kubeapi.api_client(ref), key, time.time())
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel, no record
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if key == "resumed_at":
            raise kubeapi.api_failure(
                f"resume {ref.cluster}: recording the resume for the autoscaler", exc
            ) from None
        report(f"note: could not tell the autoscaler about the suspend ({first})")


def _forget_terminated(ref, instances: list[dict], report) -> None:
    """Delete the Nodes of the spot nodes `suspend` terminated: k3s on EC2 has no cloud controller
    to remove them, and NotReady ghosts would stay in `status` and in the operator's view."""
    from kubernetes import client

    from clusterous_cli import kubeapi
    from clusterous_core.names import GROUP_LABEL
    from clusterous_provisioner.drain import forget_gone
    from clusterous_provisioner.kubecalls import json_body

    core = client.CoreV1Api(kubeapi.api_client(ref))
    nodes = json_body(core.list_node).get("items") or []
    ours = lambda n: GROUP_LABEL in (n["metadata"].get("labels") or {})  # noqa: E731 - a node of a group
    forget_gone(core, nodes, instances, ours, report, "its spot instance was terminated at suspend")
