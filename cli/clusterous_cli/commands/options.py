"""The options several commands share, declared once so each is spelled one way everywhere.

The rules (README.md, tests/test_cli_frame.py): the cluster a command acts on is `--cluster/-c` (commands that name a
cluster as their subject, `down` and `workon`, also take it as an optional positional NAME);
`--json` prints what the command shows as JSON; `--yes/-y` answers confirmations; `--region`
is the AWS region where a command talks to AWS without a cluster's record.
"""

from __future__ import annotations

import typer

CLUSTER_OPTION = typer.Option(
    None, "--cluster", "-c", help="Cluster to act on [the profile's current cluster]."
)
CLUSTER_ARGUMENT = typer.Argument(None, metavar="NAME", help="Cluster name, as --cluster.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON (for scripts) instead of text.")
YES_OPTION = typer.Option(False, "--yes", "-y", help="Do not ask: answer yes and take the defaults.")
REGION_OPTION = typer.Option(None, "--region", help="AWS region [the profile's].")
NAMESPACE_OPTION = typer.Option("default", "--namespace", "-n", help="Namespace of the component.")
PARAM_OPTION = typer.Option(None, "--param", "-P", help="NAME=VALUE for a $variable (repeatable).")


def one_cluster(name: str | None, cluster: str | None) -> tuple[str | None, str]:
    """The cluster named by NAME or --cluster (the same one if both), and which of them named it."""
    from clusterous_core.errors import BadInput

    if name and cluster and name != cluster:
        raise BadInput("--cluster", None, f"the cluster NAME names ({name}), or only one of them", cluster)
    return (name, "NAME") if name else (cluster, "--cluster")


def profile_option(ctx: typer.Context) -> str | None:
    """The root's --profile (or $CLUSTEROUS_K8S_PROFILE), if given."""
    return ctx.obj.profile if ctx.obj else None


def cluster_ref(ctx: typer.Context, cluster: str | None):
    from clusterous_cli.endpoint import resolve_cluster

    return resolve_cluster(profile_option(ctx), cluster)
