"""`budget [USD]`: show what a cluster has spent, or raise, lower or remove its budget."""

from __future__ import annotations

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, cluster_ref

HELP = """Show what the cluster has spent against its budget, or set the budget to USD.

The autoscaler in the cluster adds up the cost of the cluster's instances, volumes and NAT
gateway every round. At 80% of the budget `status` and `run` warn; at 100% no node group grows
and idle nodes go down to their minimum, until the budget is raised. Nothing is ever deleted.
USD `off` removes the budget. Without USD: spent and budget (the default). `up --budget USD`
(or `budget:` in the cluster file) sets it at creation.

Example: clusterous-k8s budget 50
"""


def budget(
    ctx: typer.Context,
    amount: str = typer.Argument(None, metavar="USD", help="New budget in USD, or `off` [show only]."),
    cluster: str | None = CLUSTER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import kubeapi, output
    from clusterous_cli.endpoint import load_endpoint
    from clusterous_core.errors import Failure
    from clusterous_provisioner import spending

    new = None if amount in (None, "off") else spending.check_budget(amount, "USD")  # before any I/O
    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    api = kubeapi.api_client(ref)
    try:
        if amount is not None and not spending.write(api, new):
            raise Failure(
                f"cluster {ref.cluster} has no autoscaler record to keep a budget in",
                f"set it with `clusterous-k8s up --cluster {ref.cluster} --budget USD` (re-running `up` converges)",
            )
        found = spending.read(api)
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise kubeapi.api_failure(f"budget of cluster {ref.cluster}", exc) from None
    found = found or spending.summary(None, None)
    if as_json:
        output.print_json({"cluster": ref.cluster, **found})
        return
    if amount is not None:
        output.say(f"budget of {ref.cluster}: {'removed' if new is None else f'{new:.2f} USD'}")
    print(spending.line(found))
    if found["warning"]:
        print(found["warning"])
