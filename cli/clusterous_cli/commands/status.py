"""Reading the account's clusters: status, clusters, workon."""

from __future__ import annotations

import typer

from clusterous_cli.commands.cluster import _cluster_region, _profile
from clusterous_cli.commands.options import (
    CLUSTER_ARGUMENT,
    CLUSTER_OPTION,
    JSON_OPTION,
    REGION_OPTION,
    one_cluster,
)

STATUS_HELP = """Instances per group, the controller's address, the shared volume and the cost so far.

A suspended cluster (`suspend`) shows since when, what its disks still cost per month, and the
`resume` that brings it back.

Example: clusterous-k8s status --json
"""
CLUSTERS_HELP = """List the clusters in the region (found by their tags), with node counts and age.

Example: clusterous-k8s clusters --region eu-west-1
"""
WORKON_HELP = """Make NAME the cluster that commands act on by default.

Example: clusterous-k8s workon othercluster
"""


def status(
    ctx: typer.Context,
    name: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import apps, output
    from clusterous_cli.cluster_views import print_status
    from clusterous_core.errors import Failure
    from clusterous_provisioner import aws, cluster_status
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.inventory import discover

    _, _, name, region = _cluster_region(ctx, name, region)
    with aws.aws_errors(f"status {name}", "check your AWS credentials and region"):
        inv = discover(Clients(region), name)
    data = cluster_status.status_data(inv)
    data["duplicates"] = inv.duplicates()
    data["suspended"] = _suspended(inv)
    if data["exists"] and not data["suspended"]:
        data.update(apps.status_for(ctx.obj.profile if ctx.obj else None, name))
        if data.get("applications") is not None and not data.get("applications_error"):
            data.update(_elastic_status(ctx, name))
            data.update(_budget_status(ctx, name))
    if as_json:
        output.print_json(data)
        return
    if not data["exists"]:
        raise Failure(
            f"no cluster {name} in {region}", "see `clusterous-k8s clusters`, or create it with `up`"
        )
    print_status(data, name, region)
    apps.print_status(data)
    _print_suspended(data["suspended"])
    _print_budget(data)


def _suspended(inv) -> dict | None:
    """A suspended cluster: since when, its monthly cost (disks only), what brings it back."""
    from clusterous_provisioner import suspension

    return suspension.suspended_status(inv)


def _print_suspended(suspended: dict | None) -> None:
    if not suspended:
        return
    volumes = ", ".join(f"{v['size_gib']} GiB {v['type']}" for v in suspended["volumes"]) or "none"
    print(f"SUSPENDED since {suspended['since']}: instances stopped, no NAT gateway or public address")
    print(f"  still costs about {suspended['monthly_usd']:.2f} USD/month: EBS volumes ({volumes})")
    for line in suspended["unpriced"]:
        print(f"  not priced: {line}")
    if suspended["spot_to_relaunch"]:
        groups = ", ".join(f"{g} {n}" for g, n in suspended["spot_to_relaunch"].items())
        print(f"  spot groups launched again at resume: {groups}")
    print(f"  bring it back with: {suspended['next']}")


def _elastic_status(ctx, name: str) -> dict:
    """Elastic groups' bounds and the autoscaler's last reason (docs/elastic.md); never fails `status`."""
    from clusterous_cli import kubeapi
    from clusterous_cli.endpoint import resolve_cluster
    from clusterous_provisioner import autoscaler

    try:
        found = autoscaler.read_status(
            kubeapi.api_client(resolve_cluster(ctx.obj.profile if ctx.obj else None, name))
        )
    except Exception as exc:  # noqa: BLE001 - ApiException, a malformed record: status still answers
        return {"autoscaler_error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {} if found is None else {"autoscaler": found}


def _budget_status(ctx, name: str) -> dict:
    """What the cluster spent against its budget, as its autoscaler counts it (docs/elastic.md,
    "Budget"); never fails `status`."""
    from clusterous_cli import kubeapi
    from clusterous_cli.endpoint import resolve_cluster
    from clusterous_provisioner import spending

    try:
        found = spending.read(kubeapi.api_client(resolve_cluster(ctx.obj.profile if ctx.obj else None, name)))
    except Exception as exc:  # noqa: BLE001 - ApiException, a malformed budget: status still answers
        return {"budget_error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {} if found is None else {"budget": found}


def _print_budget(data: dict) -> None:
    from clusterous_provisioner import spending

    found = data.get("budget")
    if found and (found["budget_usd"] is not None or found["spent_usd"] is not None):
        print(spending.line(found))
        if found["warning"]:
            print(found["warning"])


def clusters(
    ctx: typer.Context,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import output
    from clusterous_cli.cluster_views import print_clusters
    from clusterous_provisioner import aws, cluster_status
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.inventory import cluster_instances, cluster_names

    _, profile = _profile(ctx, required=False)
    region = aws.check_region(
        region or (profile.region if profile else None) or aws.session().region_name or "", "--region"
    )
    clients = Clients(region)
    with aws.aws_errors("clusters", "check your AWS credentials and region"):
        vpcs = cluster_names(clients)
        instances = cluster_instances(clients)
    data = cluster_status.clusters_data(vpcs, instances, profile.current_cluster if profile else None)
    if as_json:
        output.print_json(data)
        return
    if not data:
        output.say(f"no clusters in {region}")
        return
    print_clusters(data, region)


def workon(
    ctx: typer.Context,
    name: str | None = CLUSTER_ARGUMENT,
    cluster: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
) -> None:
    from clusterous_cli import config, output
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import aws
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.clusterfile import check_cluster_name
    from clusterous_provisioner.inventory import cluster_names

    name, source = one_cluster(name, cluster)
    if not name:
        raise BadInput(source, None, "the cluster to work on (see `clusterous-k8s clusters`)")
    check_cluster_name(name, source)
    profile_name, profile = _profile(ctx)
    region = aws.check_region(region or profile.region, "--region")
    with aws.aws_errors(f"workon {name}", "check your AWS credentials and region"):
        known = cluster_names(Clients(region))
    if name not in known:
        raise BadInput(
            source, None, f"a cluster in {region} (known: {', '.join(sorted(known)) or 'none'})", name
        )
    config.set_current_cluster(profile_name, name)
    output.say(f"now working on cluster {name}")
