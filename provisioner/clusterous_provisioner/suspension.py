"""`suspend` and `resume`: a cluster that costs only its disks while nobody uses it.

`suspend` stops every instance (the controller included) in one StopInstances, deletes the NAT
gateway and releases its Elastic IP (destroy.remove_nat, the same steps as `down`), and keeps the
rest: EBS volumes (the shared one and the instances' roots), the VPC pieces that cost nothing,
IAM, the key pair, the agent token, the registry's bucket. Spot nodes cannot be stopped: EC2
refuses StopInstances for an instance of a one-time spot request (UnsupportedOperation, "You can
only stop Spot Instances associated with persistent Spot Instance requests"), and instances.py
launches one-time requests — so they are terminated, and each spot group's size and type are
written on the controller (tag `clusterous:suspended-spot`) for `resume` to launch again.

`resume` recreates the NAT gateway, its address and the private route (network.ensure_nat, as
`up` does), starts the stopped instances in one StartInstances, launches the spot groups back to
their size (scaling.grow, one RunInstances per group), waits until all run, and clears the marks.

Both are re-runnable after any failure: every step looks at what exists first, and the marks on
the controller (`clusterous:suspended`, the spot sizes) are written before anything is stopped
and cleared only when everything runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from clusterous_core.errors import Failure
from clusterous_core.names import DEFAULT_OS, TIME_FORMAT
from clusterous_provisioner import destroy, instances, pricing, scaling, tags
from clusterous_provisioner.inventory import Inventory, role_of
from clusterous_provisioner.steps import Outcome, Report

GONE_STATES = ("shutting-down", "terminated")


@dataclass
class Suspended:
    cluster: str
    stopped: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)  # spot nodes, launched again by `resume`
    removed: list[str] = field(default_factory=list)  # NAT gateway, Elastic IP


@dataclass
class Resumed:
    cluster: str
    started: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)  # controller and nodes as EC2 describes them

    @property
    def controller(self) -> dict:
        return next(i for i in self.instances if role_of(i) == "controller")


# --- the marks on the controller -----------------------------------------------------------------


def suspended_since(inv: Inventory) -> str | None:
    """When `suspend` began, from the controller's tag; None for a cluster not suspended."""
    controller = inv.controller
    return tags.as_dict(controller.get("Tags")).get(tags.SUSPENDED) if controller else None


def parse_spot(text: str | None) -> dict[str, tuple[int, str]]:
    """`worker=3:c5.large,gpu=1:g4dn.xlarge` → {group: (size, instance type)}."""
    found: dict[str, tuple[int, str]] = {}
    for part in (text or "").split(","):
        group, _, rest = part.partition("=")
        count, _, itype = rest.partition(":")
        if group and count.isdigit() and itype:
            found[group] = (int(count), itype)
    return found


def format_spot(groups: dict[str, tuple[int, str]]) -> str:
    return ",".join(f"{g}={n}:{t}" for g, (n, t) in sorted(groups.items()))


def spot_groups(inv: Inventory) -> dict[str, tuple[int, str]]:
    """Spot groups to launch again: those written at an earlier (interrupted) suspend, and the
    spot groups running now, each at the larger of the two sizes."""
    controller = inv.controller
    groups = parse_spot(tags.as_dict(controller.get("Tags")).get(tags.SUSPENDED_SPOT) if controller else None)
    for group in inv.groups:
        members = [i for i in inv.group_instances(group) if i["State"]["Name"] not in GONE_STATES]
        spot = [i for i in members if i.get("InstanceLifecycle") == "spot"]
        if spot:
            size = max(len(members), groups.get(group, (0, ""))[0])
            groups[group] = (size, spot[0]["InstanceType"])
    return groups


# --- suspend -------------------------------------------------------------------------------------


def suspend(clients, inv: Inventory, report: Report) -> Suspended:
    """Mark, terminate spot nodes, stop the rest (one call each), remove the NAT gateway and its
    address, wait until the instances are stopped."""
    ec2, controller = clients.ec2, inv.controller
    if controller is None or inv.vpc is None:
        raise Failure(
            f"cluster {inv.cluster} in {inv.region} is not complete", "re-run `clusterous-k8s up` first"
        )
    done = Suspended(inv.cluster)
    spot = spot_groups(inv)
    marks = [
        {"Key": tags.SUSPENDED, "Value": suspended_since(inv) or datetime.now(UTC).strftime(TIME_FORMAT)}
    ]
    if spot:
        marks.append({"Key": tags.SUSPENDED_SPOT, "Value": format_spot(spot)})
    ec2.create_tags(Resources=[controller["InstanceId"]], Tags=marks)
    live = [i for i in inv.instances if i["State"]["Name"] not in GONE_STATES]
    done.terminated = [i["InstanceId"] for i in live if i.get("InstanceLifecycle") == "spot"]
    if done.terminated:
        report(f"terminating {len(done.terminated)} spot node(s) (one-time spot requests cannot be stopped)")
        ec2.terminate_instances(InstanceIds=done.terminated)
    rest = [i for i in live if i.get("InstanceLifecycle") != "spot"]
    booting = [i["InstanceId"] for i in rest if i["State"]["Name"] == "pending"]
    if booting:  # EC2 stops only running instances (IncorrectInstanceState otherwise)
        instances.wait_running(clients, booting, report)
    to_stop = [i["InstanceId"] for i in rest if i["State"]["Name"] in ("pending", "running")]
    if to_stop:
        report(f"stopping {len(to_stop)} instance(s), the controller included")
        ec2.stop_instances(InstanceIds=to_stop)
    done.stopped = [i["InstanceId"] for i in rest]
    done.removed = destroy.remove_nat(clients, inv, report)
    if done.stopped:
        destroy.wait_for(ec2, "instance_stopped", f"{len(done.stopped)} instance(s) to stop", report,
                         InstanceIds=done.stopped)  # fmt: skip
    if done.terminated:
        destroy.wait_for(ec2, "instance_terminated", "the spot nodes to terminate", report,
                         InstanceIds=done.terminated)  # fmt: skip
    return done


# --- resume --------------------------------------------------------------------------------------


def resume(clients, inv: Inventory, bucket: str, report: Report) -> Resumed:
    """The NAT gateway and its route, the stopped instances started (one call), the spot groups
    launched again (one call per group), all waited for; then the marks go."""
    from clusterous_provisioner import network

    ec2, controller = clients.ec2, inv.controller
    if controller is None or inv.vpc is None:
        raise Failure(
            f"cluster {inv.cluster} in {inv.region} is not complete", "re-run `clusterous-k8s up` first"
        )
    clients.patience.report = report
    done = Resumed(inv.cluster)
    stopping = [i["InstanceId"] for i in inv.instances if i["State"]["Name"] == "stopping"]
    if stopping:  # a suspend that did not finish: EC2 starts only stopped instances
        destroy.wait_for(ec2, "instance_stopped", f"{len(stopping)} instance(s) to stop", report,
                         InstanceIds=stopping)  # fmt: skip
    subnet, table = inv.subnet("subnet-public"), inv.route_table("rtb-private")
    if subnet is None or table is None:
        raise Failure(
            f"cluster {inv.cluster}: its public subnet or private route table is missing", "re-run `up`"
        )
    report("NAT gateway and its Elastic IP")
    network.ensure_nat(ec2, spec_of(inv), inv, subnet["SubnetId"], table, Outcome(), report)
    stopped = [i for i in inv.instances if i["State"]["Name"] in ("stopped", "stopping")]
    done.started = [i["InstanceId"] for i in stopped]
    if done.started:
        report(f"starting {len(done.started)} instance(s), the controller included")
        ec2.start_instances(InstanceIds=done.started)
    live = replace(inv, instances=[i for i in inv.instances if i["State"]["Name"] not in GONE_STATES])
    for group, (size, itype) in sorted(spot_groups(live).items()):
        done.launched += scaling.grow(clients, live, group, size, bucket, itype, False, report, spot=True)
    waiting = [i["InstanceId"] for i in live.instances] + done.launched
    done.instances = instances.wait_running(clients, waiting, report)
    ec2.delete_tags(
        Resources=[controller["InstanceId"]], Tags=[{"Key": tags.SUSPENDED}, {"Key": tags.SUSPENDED_SPOT}]
    )
    return done


def spec_of(inv: Inventory):
    """The cluster as its instances describe it, for what needs a ClusterSpec beyond AWS' answers
    (the NAT gateway's tags, the readiness wait's add-on list); groups at their size now."""
    from clusterous_provisioner.clusterfile import DEFAULT_K3S_VERSION, ClusterSpec, NodeGroup

    controller = inv.controller
    assert controller is not None
    found = tags.as_dict(controller.get("Tags"))
    groups = tuple(
        NodeGroup(
            name=g, instance_type=inv.group_instances(g)[0]["InstanceType"], count=len(inv.group_instances(g))
        )
        for g in inv.groups
    )
    return ClusterSpec(
        name=inv.cluster,
        region=inv.region,
        controller_type=controller["InstanceType"],
        groups=groups,
        shared_volume_size=None,
        shared_volume_id=inv.shared_volume["VolumeId"] if inv.shared_volume else None,
        logging_level=0,
        environment_file=None,
        ssh_cidr=None,
        k3s_version=found.get(tags.K3S_VERSION) or DEFAULT_K3S_VERSION,
        os=found.get(tags.OS) or DEFAULT_OS,
        ami=None,
        source="resume",
    )


# --- what a suspended cluster still costs ---------------------------------------------------------


def suspended_status(inv: Inventory) -> dict | None:
    """For `status`: since when, what it still costs per month (its EBS volumes at their size and
    type; no instance, NAT gateway or public address is left to bill) and what to do next."""
    since = suspended_since(inv)
    if since is None:
        return None
    volumes, monthly, unknown = [], 0.0, []
    for volume in inv.volumes:
        if volume.get("State") in ("deleting", "deleted"):
            continue
        kind = volume.get("VolumeType", "gp3")
        price = pricing.gp3_hourly(volume["Size"], inv.region) if kind == "gp3" else None
        if price is None or price.hourly_usd is None:
            unknown.append(f"{volume['VolumeId']} ({kind}: {price.note if price else 'no bundled price'})")
        else:
            monthly += price.hourly_usd * pricing.HOURS_PER_MONTH
        volumes.append({"volume_id": volume["VolumeId"], "size_gib": volume["Size"], "type": kind})
    return {
        "since": since,
        "monthly_usd": round(monthly, 2),
        "volumes": volumes,
        "unpriced": unknown,
        "spot_to_relaunch": {
            g: n
            for g, (n, _) in parse_spot(
                tags.as_dict(inv.controller.get("Tags")).get(tags.SUSPENDED_SPOT) if inv.controller else None
            ).items()
        },  # fmt: skip
        "next": f"clusterous-k8s resume --cluster {inv.cluster}",
    }


def refuse_if_suspended(inv: Inventory, command: str) -> None:
    """`up` (and anything that would launch into it) on a suspended cluster: `resume` brings it back."""
    since = suspended_since(inv)
    if since is not None:
        raise Failure(
            f"{command} {inv.cluster}: the cluster is suspended (since {since})",
            f"bring it back with `clusterous-k8s resume --cluster {inv.cluster}`, then re-run `{command}`",
        )
