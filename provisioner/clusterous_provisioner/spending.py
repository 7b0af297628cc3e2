"""What a cluster has spent, tracked in the cluster, and its budget (docs/elastic.md, "Budget").

Each autoscaler round adds what the cluster's billed resources cost since the round before:
every running instance (bundled on-demand price, its root volume, its public IPv4 address if
it has one), the NAT gateway with its Elastic IP, and the shared volume. A resource counts from
the later of the last round and its own start (an instance's LaunchTime, which EC2 resets at
every start; a NAT gateway's or a volume's CreateTime). So the first round starts from the
resources' uptime (what `status` estimated before), a restarted autoscaler continues from the
last round it recorded, nodes terminated since are never forgotten, and stopped instances
(a suspended cluster) are not counted for the time they were stopped.

The sum lives in the autoscaler's ConfigMap (`status.spending`), beside the budget `up` or
`clusterous-k8s budget N` writes (data key `budget`, USD). At WARN_AT of it `status` and `run`
warn; at 100% autoscale.decide grows no group (autoscale.Budget).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from clusterous_core.errors import BadInput
from clusterous_core.names import NAMESPACE
from clusterous_provisioner import layout, pricing

BUDGET_KEY = "budget"  # in the ConfigMap's data: USD, written by `up` and `budget N`
WARN_AT = 0.8
BUDGET_EXPECTED = "a positive number of USD (the most the cluster may spend, e.g. 50)"


def check_budget(value: Any, source: str, field: str | None = None) -> float:
    """A budget as the user wrote it (a number above 0), else BadInput naming the source."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise BadInput(source, field, BUDGET_EXPECTED, value) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise BadInput(source, field, BUDGET_EXPECTED, value)
    if not math.isfinite(number) or number <= 0:
        raise BadInput(source, field, BUDGET_EXPECTED, value)
    return float(number)


def parse_budget(text: str | None) -> float | None:
    """The ConfigMap's `budget` (None: no budget); ValueError on a malformed one."""
    if text is None or text == "":
        return None
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} is not a positive number")
    return value


# --- the round's cost ----------------------------------------------------------------------------


def _epoch(stamp) -> float:
    if stamp is None:
        return 0.0
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return stamp.timestamp()


def billed(inv) -> tuple[list[tuple[float, float]], list[str]]:
    """(USD per hour, since when in epoch seconds) of each billed resource the inventory shows
    running, and the instance types without a bundled price (counted as 0: a lower bound)."""
    region = inv.region
    root = pricing.gp3_hourly(layout.ROOT_VOLUME_GIB, region).hourly_usd or 0.0
    items: list[tuple[float, float]] = []
    unpriced: set[str] = set()
    for instance in inv.instances:
        if instance["State"]["Name"] != "running":
            continue
        price = pricing.instance_hourly(instance["InstanceType"], region).hourly_usd
        if price is None:
            unpriced.add(instance["InstanceType"])
        address = pricing.PUBLIC_IPV4_HOURLY if instance.get("PublicIpAddress") else 0.0
        items.append(((price or 0.0) + root + address, _epoch(instance.get("LaunchTime"))))
    nat = inv.nat_gateway
    if nat is not None:
        hourly = (pricing.nat_gateway_hourly(region).hourly_usd or 0.0) + pricing.PUBLIC_IPV4_HOURLY
        items.append((hourly, _epoch(nat.get("CreateTime"))))
    volume = inv.shared_volume
    if volume is not None:
        items.append(
            (pricing.gp3_hourly(volume["Size"], region).hourly_usd or 0.0, _epoch(volume.get("CreateTime")))
        )
    return items, sorted(unpriced)


def accrue(spent: float, last_at: float | None, items: list[tuple[float, float]], now: float) -> float:
    """`spent` plus each item's price for the time since the later of `last_at` and its start."""
    start = -math.inf if last_at is None else last_at
    return spent + sum(hourly * max(0.0, now - max(start, since)) / 3600 for hourly, since in items)


def spending_round(previous: dict | None, inv, now: float) -> dict:
    """The ConfigMap's `status.spending` after this round: USD so far, when it was counted, the
    hourly rate now and what is unpriced."""
    previous = previous or {}
    items, unpriced = billed(inv)
    last_at = previous.get("at")
    spent = accrue(float(previous.get("usd") or 0.0), last_at, items, now)
    return {
        "usd": round(spent, 6),
        "at": now,
        "since": previous.get("since") or now,
        "hourly_usd": round(sum(hourly for hourly, _ in items), 6),
        "unpriced": unpriced,
    }


# --- what people see -----------------------------------------------------------------------------


def summary(budget: float | None, spending: dict | None) -> dict:
    """`budget` and `status`: the budget, what was spent, the share and the warning (None below WARN_AT)."""
    spent = None if spending is None else float(spending.get("usd") or 0.0)
    share = None if spent is None or budget is None else spent / budget
    return {
        "budget_usd": budget,
        "spent_usd": None if spent is None else round(spent, 2),
        "hourly_usd": None if spending is None else spending.get("hourly_usd"),
        "unpriced": [] if spending is None else spending.get("unpriced") or [],
        "percent": None if share is None else round(100 * share, 1),
        "warning": warning(spent, budget),
    }


def warning(spent: float | None, budget: float | None) -> str | None:
    """One line for `status` and `run` at WARN_AT of the budget, saying what to do."""
    if spent is None or budget is None or spent < WARN_AT * budget:
        return None
    act = "raise it with `clusterous-k8s budget N`, or stop paying with `clusterous-k8s down`"
    if spent >= budget:
        return (
            f"warning: budget reached ({spent:.2f} of {budget:.2f} USD): the autoscaler grows no node "
            f"group and lets idle nodes go down to min; {act}"
        )
    return (
        f"warning: {100 * spent / budget:.0f}% of the budget spent ({spent:.2f} of {budget:.2f} USD); {act}"
    )


def line(found: dict) -> str:
    """`budget` and `status`, for people: spent of budget, and the rate now."""
    spent, budget = found["spent_usd"], found["budget_usd"]
    of = f"of {budget:.2f} USD ({found['percent']:g}%)" if budget is not None else "USD (no budget)"
    if spent is None:
        text = "budget: " + (f"{budget:.2f} USD" if budget is not None else "none")
        return text + ", nothing spent recorded yet (the autoscaler counts it each round)"
    text = f"spent: {spent:.2f} {of}, tracked in the cluster; now {found['hourly_usd'] or 0:.4f} USD/hour"
    if found["unpriced"]:
        text += f" (not priced, counted as 0: {', '.join(found['unpriced'])})"
    return text


# --- the ConfigMap -------------------------------------------------------------------------------


def read(api_client) -> dict | None:
    """summary() of the cluster's budget and spending; None when it has no autoscaler record."""
    import json

    from kubernetes import client

    from clusterous_provisioner.autoscaler import CONFIGMAP, STATUS_KEY
    from clusterous_provisioner.kubecalls import get_or_none

    core = client.CoreV1Api(api_client)
    found = get_or_none(core.read_namespaced_config_map, CONFIGMAP, NAMESPACE)
    if found is None:
        return None
    data = found.get("data") or {}
    status = json.loads(data.get(STATUS_KEY) or "{}")
    return summary(parse_budget(data.get(BUDGET_KEY)), status.get("spending"))


def write(api_client, budget: float | None) -> bool:
    """Set (or, with None, remove) only the `budget` key; False when the cluster has no record."""
    from clusterous_provisioner.autoscaler import patch_record

    return patch_record(api_client, {BUDGET_KEY: None if budget is None else str(budget)})
