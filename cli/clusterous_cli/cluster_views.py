"""How the cluster commands' results read to a person: the plan, what `up` made, `down`'s
receipt, `status` and the cluster list (their --json documents are the data itself)."""

from __future__ import annotations

from clusterous_cli import output


def print_plan(plan, as_json: bool) -> None:
    if as_json:
        output.print_json(plan.to_json())
        return
    rows = [
        (
            i.action,
            i.kind,
            i.name,
            i.detail,
            "?" if i.hourly_usd is None else f"{i.hourly_usd:.4f}",
        )
        for i in plan.items
    ]
    output.print_table(
        f"plan for cluster {plan.cluster} in {plan.region}",
        ["action", "resource", "name", "detail", "USD/hour"],
        rows,
    )
    print(f"cost: {plan.cost_line}")
    for line in plan.unpriced:
        print(f"  not priced: {line}")
    for note in plan.notes:
        print(f"  note: {note}")


def print_created(spec, outcome, node_ids: list[str]) -> None:
    print(f"cluster {spec.name} is up in {spec.region}: controller {outcome.public_ip or '?'}")
    print(f"  created {len(outcome.created)} resource(s); {len(node_ids)} node(s)")
    if outcome.key_file:
        print(f"  SSH key: {outcome.key_file}")


def print_ready(spec, ready: dict) -> None:
    print(f"cluster {spec.name} is ready: {ready['nodes']}; {ready['add_ons']}")
    print("  kubectl access: clusterous-k8s kubeconfig")


def up_json(spec, outcome, the_plan, ready: dict | None, no_wait: bool) -> dict:
    """`up --json`: what was created, the nodes, the cost per hour and what the wait found."""
    return {
        "cluster": spec.name,
        "region": spec.region,
        "created": outcome.created,
        "controller": {"instance_id": outcome.controller_id, "public_ip": outcome.public_ip},
        "nodes": outcome.instance_ids,
        "key_file": str(outcome.key_file) if outcome.key_file else None,
        "hourly_cost_usd": the_plan.hourly_cost_usd,
        "in_cluster_ready": ready is not None if not no_wait else None,
        "readiness": ready,
    }


def print_receipt(receipt) -> None:
    """`down`'s receipt: what went, what was kept on purpose, what the sweep still found."""
    name, region = receipt.cluster, receipt.region
    output.print_table(
        f"receipt: cluster {name} in {region}",
        ["", "resource"],
        [("deleted", d) for d in receipt.deleted]
        + [("kept", k) for k in receipt.kept]
        + [("LEFT", x) for x in receipt.leftovers],
    )
    print(f"checked by tags: {', '.join(receipt.checked)}")
    if not receipt.leftovers:
        print(
            f"nothing billable is left of cluster {name}"
            + (f" (kept: {', '.join(receipt.kept)})" if receipt.kept else "")
        )


def print_status(data: dict, name: str, region: str) -> None:
    """`status` for people: the instances, the controller, the volume, the cost, the autoscaler."""
    output.print_table(
        f"cluster {name} in {region}",
        ["group", "instance", "type", "state", "private address", "uptime (h)"],
        [
            (i["group"], i["instance_id"], i["type"], i["state"], i["private_ip"], f"{i['uptime_hours']:.2f}")
            for i in data["instances"]
        ],
    )
    print(f"controller: {data['controller_public_ip'] or 'not running'}")
    for line in data["duplicates"]:
        print(f"warning: more than one {line}; `clusterous-k8s down` deletes them all")
    vol = data["shared_volume"]
    print(
        f"shared volume: {vol['volume_id']} ({vol['size_gib']} GiB, {vol['state']})"
        if vol
        else "shared volume: none"
    )
    print(f"cost so far: {data['cost_so_far_usd']:.2f} USD (uptime × bundled on-demand prices)")
    from clusterous_provisioner.autoscaler import status_line

    for group, entry in (data.get("autoscaler") or {}).items():
        print(status_line(group, data["groups"].get(group, 0), entry))


def print_clusters(data: list[dict], region: str) -> None:
    output.print_table(
        f"clusters in {region}",
        ["", "name", "nodes", "controller", "age (h)", "state"],
        [
            (
                "*" if r["current"] else "",
                r["name"],
                r["nodes"],
                "yes" if r["controller"] else "no",
                r["age_hours"],
                f"suspended since {r['suspended']}" if r.get("suspended") else "",
            )
            for r in data
        ],
    )
