"""Resizing a node group: scale, add-nodes, rm-nodes.

Thin: each makes a ScaleRequest for the provisioner's front door (lifecycle.scale), which grows
the group in one launch or terminates its newest nodes; draining them goes through the
Kubernetes API, from here.
"""

from __future__ import annotations

import dataclasses

import typer

from clusterous_cli.commands.cluster import _cluster_region, _confirm, _reporter
from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, REGION_OPTION, YES_OPTION

SCALE_HELP = """Resize a node group to COUNT instances (new ones get the same user-data).

Shrinking picks the newest nodes, drains them through Kubernetes (cordon, evict their pods,
delete the Node) and then terminates them. --force terminates without draining, which is also
the only way when the cluster's API cannot be reached.

Example: clusterous-k8s scale worker 8 --yes
"""
ADD_HELP = """Add N nodes to a group (default: worker).

Example: clusterous-k8s add-nodes 2 --group worker
"""
RM_HELP = """Remove N nodes from a group (default: worker); the newest go first, drained first.

Example: clusterous-k8s rm-nodes 2 --yes
"""


def _resize(
    ctx, req, yes: bool, name: str | None, region: str | None, as_json: bool, drain_timeout: float = 300.0
) -> None:
    """scale, add-nodes and rm-nodes: `req` is the provisioner's ScaleRequest."""
    from clusterous_cli import output
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import lifecycle
    from clusterous_provisioner.clients import Clients

    profile_name, profile, name, region = _cluster_region(ctx, name, region)
    if profile is None:
        raise BadInput("--profile", None, "a profile (run `clusterous-k8s setup`)")
    if req.instance_type is not None:
        from clusterous_provisioner.pricing import check_instance_type

        check_instance_type(req.instance_type, "--instance-type")
    report = _reporter()
    done = lifecycle.scale(
        Clients(region), name, profile.bucket, req,
        lifecycle.Hooks(report=report, yes=yes, confirm=_confirm),
        drain=lambda victims: _drain(profile_name, name, victims, drain_timeout, report),
        forget=lambda nodes: _forget(profile_name, name, nodes, report),
    )  # fmt: skip
    if as_json:
        output.print_json(dataclasses.asdict(done))
    else:
        print(f"group {done.group} of cluster {name}: {done.before} → {done.after} node(s)")


def _drain(profile_name: str, name: str, victims: list[dict], timeout: float, report) -> list[dict]:
    """Drain the Nodes of the instances about to go; an unreachable cluster needs --force."""
    from clusterous_cli import config, kubeapi
    from clusterous_cli.endpoint import ClusterRef
    from clusterous_core.errors import ClusterousError, Failure
    from clusterous_provisioner import drain

    ref = ClusterRef(profile_name, name, config.cluster_dir(profile_name, name))
    try:
        api = kubeapi.api_client(ref)
    except ClusterousError as exc:
        reason = str(exc).splitlines()[0]
        raise Failure(
            f"cannot drain the nodes: the Kubernetes API of cluster {name} cannot be reached ({reason})",
            drain.FORCE_HINT,
        ) from None
    try:
        return drain.drain_instances(api, victims, timeout, report)
    except ClusterousError:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        failure = kubeapi.api_failure(f"draining the nodes of cluster {name}", exc)
        raise Failure(failure.what, drain.FORCE_HINT) from None


def _forget(profile_name: str, name: str, nodes: list[str], report) -> None:
    """After termination, remove Nodes a kubelet re-registered during the drain (best effort)."""
    from clusterous_cli import config, kubeapi
    from clusterous_cli.endpoint import ClusterRef
    from clusterous_provisioner import drain

    ref = ClusterRef(profile_name, name, config.cluster_dir(profile_name, name))
    try:
        drain.forget_nodes(kubeapi.api_client(ref), nodes, report)
    except Exception as exc:  # noqa: BLE001 - the instances are gone; a leftover Node is cosmetic
        report(f"could not check for re-registered Nodes ({str(exc).splitlines()[0]}): `kubectl get nodes`")


# Options shared by scale, add-nodes and rm-nodes (typer reads these defaults for each command).
INSTANCE_TYPE_OPTION = typer.Option(None, "--instance-type", help="Type for a group that has no nodes yet.")
FORCE_OPTION = typer.Option(False, "--force", help="Terminate without draining the nodes first.")
DRAIN_TIMEOUT_OPTION = typer.Option(
    300.0, "--timeout", help="Seconds the drain may wait for pods to leave a node."
)
GROUP_OPTION = typer.Option("worker", "--group", help="Node group.")


def scale(
    ctx: typer.Context,
    group: str = typer.Argument(..., metavar="GROUP", help="Node group, e.g. worker."),
    count: int = typer.Argument(..., metavar="COUNT", min=0, help="Number of nodes the group should have."),
    instance_type: str = INSTANCE_TYPE_OPTION,
    force: bool = FORCE_OPTION,
    drain_timeout: float = DRAIN_TIMEOUT_OPTION,
    yes: bool = YES_OPTION,
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not wait for instances to run or terminate."),
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_provisioner.lifecycle import ScaleRequest

    req = ScaleRequest(group, count=count, instance_type=instance_type, force=force, wait=not no_wait)
    _resize(ctx, req, yes, name, region, as_json, drain_timeout)


def add_nodes(
    ctx: typer.Context,
    n: int = typer.Argument(..., metavar="N", min=1, help="How many nodes to add."),
    group: str = GROUP_OPTION,
    instance_type: str = INSTANCE_TYPE_OPTION,
    yes: bool = YES_OPTION,
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not wait for instances to run."),
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_provisioner.lifecycle import ScaleRequest

    _resize(
        ctx,
        ScaleRequest(group, delta=n, instance_type=instance_type, wait=not no_wait),
        yes,
        name,
        region,
        as_json,
    )


def rm_nodes(
    ctx: typer.Context,
    n: int = typer.Argument(..., metavar="N", min=1, help="How many nodes to remove."),
    group: str = GROUP_OPTION,
    force: bool = FORCE_OPTION,
    drain_timeout: float = DRAIN_TIMEOUT_OPTION,
    yes: bool = YES_OPTION,
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not wait for instances to terminate."),
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_provisioner.lifecycle import ScaleRequest

    req = ScaleRequest(group, delta=-n, force=force, wait=not no_wait)
    _resize(ctx, req, yes, name, region, as_json, drain_timeout)
