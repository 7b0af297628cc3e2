"""`run` on an elastic cluster: the budget warning, and the wait for node groups at zero
(docs/elastic.md, "Scale to zero on run").

An application whose group has no node leaves its pods Pending; the autoscaler in the cluster
grows the group at its next round (every 30 s) and the instances take a few minutes to become
Ready Nodes. `run` follows that from the autoscaler's ConfigMap and the Nodes, one line per
change, before it follows the application itself, so a long wait never looks stuck.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from clusterous_core.errors import Failure
from clusterous_core.names import GROUP_LABEL
from clusterous_core.polling import wait_until

POLL_SECONDS = 1.0
ROUND_SECONDS = 30  # the autoscaler's interval (autoscaler.py --interval)


def budget_warning(api) -> str | None:
    """The 80% / 100% line of spending.warning, or None (also when the cluster has no record)."""
    from clusterous_cli.kubeapi import api_failure
    from clusterous_provisioner import spending

    try:
        found = spending.read(api)
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise api_failure("reading the cluster's budget", exc) from None
    return found["warning"] if found else None


def elastic_groups(api) -> set[str]:
    """The node groups the autoscaler may grow (its record): they exist even with no node."""
    from clusterous_provisioner import autoscaler

    return set(autoscaler.read_status(api) or {})


def _epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def group_progress(group, nodes: list[dict], entry: dict, now: float) -> tuple[str, str, bool]:
    """(what changed, the line to show, done) for one elastic group from its Nodes and the
    autoscaler's status entry. `what changed` leaves out the countdown, so a line is shown once."""
    from clusterous_provisioner.kubeobjects import node_ready

    mine = [
        n for n in nodes if ((n.get("metadata") or {}).get("labels") or {}).get(GROUP_LABEL) == group.name
    ]
    ready = sum(1 for n in mine if node_ready(n)[0])
    last, checked = entry.get("last") or {}, entry.get("checked")
    target = int(entry.get("current") or 0)
    if last.get("action") == "grow" and last.get("at") == checked:  # decided in the last round
        target += int(last.get("count") or 0)
    target = max(target, len(mine))
    if ready and ready >= target:
        return f"ready {ready}", f"{group.name}: {ready} node(s) Ready", True
    if target:
        state = f"{ready}/{target}"
        return (
            state,
            f"{group.name}: 0 → {target} node(s), {ready} Ready (instances boot in a few minutes)",
            False,
        )
    reason = entry.get("reason") or "the autoscaler has not run yet"
    seen = _epoch(checked)
    wait = "" if seen is None else f" (next decision in {max(0, round(seen + ROUND_SECONDS - now))} s)"
    return (
        f"wait {reason}",
        f"{group.name}: 0 node(s), waiting for the autoscaler{wait}: {reason}",
        False,
    )


def wait_for_groups(api, clusterapp: dict, say: Callable[[str], None], timeout: float) -> float:
    """Follow the app's elastic groups that have no Ready node until each has; the seconds it took.
    A group that cannot grow (budget reached, max 0) ends the wait with what to do."""
    from kubernetes import client

    from clusterous_cli.kubeapi import api_failure
    from clusterous_provisioner import autoscaler
    from clusterous_provisioner.kubecalls import get_or_none, json_body

    wanted = {c.get("group") for c in (clusterapp.get("spec") or {}).get("components") or []}
    started = time.monotonic()
    shown: dict[str, str] = {}
    core = client.CoreV1Api(api)
    name = clusterapp["metadata"]["name"]

    def all_ready() -> bool:
        """One look: say what changed; True once every wanted group has its Ready nodes."""
        try:
            found = get_or_none(core.read_namespaced_config_map, autoscaler.CONFIGMAP, autoscaler.NAMESPACE)
            if found is None:
                return True
            record = autoscaler.parse_record(found.get("data") or {})
            nodes = json_body(core.list_node).get("items") or []
        except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel, a malformed record
            raise api_failure("following the autoscaler", exc) from None
        entries = record.status.get("groups") or {}
        pending = False
        for group in (g for g in record.groups if g.name in wanted):
            key, line, done = group_progress(group, nodes, entries.get(group.name) or {}, time.time())
            first = group.name not in shown
            if first and done:  # it had nodes all along: nothing to say
                shown[group.name] = key
                continue
            if shown.get(group.name) != key:
                shown[group.name] = key
                say(line)
            pending = pending or not done
            if not done and key.startswith("wait ") and ("budget reached" in key or "at max" in key):
                raise Failure(
                    f"{line.split(':', 1)[0]} has no node and cannot grow: {key[5:]}",
                    f"raise the budget with `clusterous-k8s budget N` (then {name} starts by itself), "
                    f"or `clusterous-k8s quit {name}`",
                )
        return not pending

    # Nodes take minutes: look again backing off to every POLL_SECONDS (two API reads a look).
    if not wait_until(all_ready, timeout, first=min(0.1, POLL_SECONDS), most=POLL_SECONDS):
        raise Failure(
            f"{name}: its node groups have no Ready node after {int(timeout)} s",
            "it keeps trying: follow it with `clusterous-k8s status`, or `clusterous-k8s quit " + name + "`",
        )
    return time.monotonic() - started
