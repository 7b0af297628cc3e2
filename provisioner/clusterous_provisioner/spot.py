"""Spot interruptions, the autoscaler's side (docs/elastic.md, "Spot interruptions").

The spot watcher (spot_watch.py, a DaemonSet on spot nodes) marks a Node whose instance got EC2's
two-minute notice: cordoned, tainted and annotated with the notice. The autoscaler then:

- counts such a Node as gone and replaces it at once if it was busy (autoscale.decide, through
  `notice`), launching on-demand when EC2 has no spot capacity and the group allows it (`launch`);
- drains it in the same round, every marked node at once, each bounded by its notice's time
  (PodDisruptionBudgets hold until then), and keeps the cordoned Node until its instance is gone
  (`drain_interrupted`; a deleted Node would come back unmarked from the still running kubelet);
- wakes for it: a watch on Nodes ends the wait between rounds when a new notice appears
  (`wake_on_notice`), so the reaction does not wait for the 30 s round;
- shows it in `status` (`record_interruptions`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

ANNOTATION = "clusterous.io/spot-interruption"  # spot_watch.ANNOTATION (that file is stdlib only)
NOTICE_SECONDS = 120  # "a warning that is issued two minutes before Amazon EC2 stops or terminates"
# RunInstances errors that mean "no spot capacity for this request now" (EC2 API error codes):
# then an on-demand launch may still succeed. Anything else is not the market's fault.
SPOT_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "UnfulfillableCapacity",
    }
)
Report = Callable[[str], None]


def notice(node: Mapping) -> dict | None:
    """The interruption notice the watcher put on a Node ({"action", "time", "noticed"}), or None."""
    text = ((node.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if text is None:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    return found if isinstance(found, dict) else {"action": "unknown", "time": "", "noticed": ""}


def _epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def deadline(found: Mapping, now: float) -> float:
    """When the instance stops: the notice's time, else two minutes after it was noticed."""
    at = _epoch(str(found.get("time") or ""))
    if at is None:
        noticed = _epoch(str(found.get("noticed") or ""))
        at = (noticed if noticed is not None else now) + NOTICE_SECONDS
    return at


# --- acting ------------------------------------------------------------------------------------


def launch(grow: Callable[[bool | None], list[str]], group, report: Report) -> dict:
    """One grow of an elastic group on its market (`grow(spot)`); if EC2 refuses spot for lack of
    capacity and the group says `spot_fallback: on-demand`, the same launch on-demand."""
    from botocore.exceptions import ClientError

    try:
        return {"launched": grow(group.spot)}
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if not (group.spot and group.spot_fallback == "on-demand" and code in SPOT_CAPACITY_CODES):
            raise
        report(f"{group.name}: no spot capacity ({code}); launching on-demand instead (spot_fallback)")
        return {"launched": grow(False), "fallback": f"on-demand ({code})"}


def drain_interrupted(
    api_client, nodes: list[dict], now: float, report: Report, drain=None
) -> dict[str, str]:
    """Drain every marked Node whose notice time is still ahead, all at once (one thread each),
    each within the time left; the Nodes stay, cordoned and marked, until their instances are gone
    (autoscaler.forget_ghosts). Returns node → "drained" or the reason it is not."""
    from concurrent.futures import ThreadPoolExecutor

    from clusterous_provisioner.drain import drain_node

    drain = drain or drain_node
    due = {}
    for node in nodes:
        found = notice(node)
        if found is not None and (left := deadline(found, now) - now) > 0:
            due[node["metadata"]["name"]] = left

    def one(name: str) -> str:
        try:
            drain(api_client, name, due[name], report, delete=False)
        except Exception as exc:  # noqa: BLE001 - Failure (pods would not leave in time), ApiException
            report(f"drain {name} (spot interruption): {str(exc).splitlines()[0] if str(exc) else exc!r}")
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return "drained"

    if not due:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(due), 16)) as pool:
        return dict(zip(due, pool.map(one, due), strict=True))


def record_interruptions(status: dict, decisions, nodes: list[dict], acted: dict, stamp: str) -> dict:
    """Put each group's latest interruption into the autoscaler's `status` (per group
    "interruption": the nodes, their notice, when it was handled, the replacement launched)."""
    notices = {n["metadata"]["name"]: notice(n) for n in nodes}
    for decision in decisions:
        if not decision.nodes or decision.action == "shrink":
            continue
        first = notices.get(decision.nodes[0]) or {}
        done = acted.get(decision.group, {})
        status["groups"][decision.group]["interruption"] = {
            "nodes": list(decision.nodes),
            "action": first.get("action", "unknown"),
            "time": first.get("time", ""),
            "noticed": first.get("noticed", ""),
            "at": stamp,
            "replacement": done.get("launched", []),
            **({"fallback": done["fallback"]} if "fallback" in done else {}),
            **({"reason": decision.reason} if decision.action == "none" else {}),
        }
    return status


def status_text(entry: dict) -> str:
    """The interruption part of a `status` line."""
    what = f"spot interruption {entry['at']}: {', '.join(entry['nodes'])} ({entry['action']} at {entry['time'] or '?'})"
    if entry.get("replacement"):
        what += f", replaced by {', '.join(entry['replacement'])}"
        if entry.get("fallback"):
            what += f" ({entry['fallback']})"
    else:
        what += ", " + (entry.get("reason") or "no replacement").split(": ", 1)[-1]
    return what


# --- waking the autoscaler ---------------------------------------------------------------------


def wake_on_notice(api_client, wake: threading.Event, stop: threading.Event) -> threading.Thread:
    """A daemon thread watching Nodes: sets `wake` when a Node gets a new interruption notice."""
    from kubernetes import client

    from clusterous_provisioner.kubecalls import watch_objects

    core = client.CoreV1Api(api_client)

    def marked(nodes: dict) -> set[str]:
        return {name for name, n in nodes.items() if notice(api_client.sanitize_for_serialization(n))}

    def run() -> None:
        seen: set[str] | None = None
        while not stop.is_set():
            try:
                for nodes in watch_objects(core.list_node, timeout=600, _request_timeout=630):
                    now = marked(nodes)
                    if seen is not None and now - seen:
                        wake.set()
                    seen = now
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - the API away for a moment: the rounds still run
                stop.wait(5)

    thread = threading.Thread(target=run, name="spot-notices", daemon=True)
    thread.start()
    return thread


# --- the watcher's manifest --------------------------------------------------------------------


def manifest_text() -> str:
    """manifests/spot-watch.yaml filled in: the operator's pinned Python image and the script.
    Applied by `up` through the API (addons.APPLIED_LATER), not in the controller's user-data."""
    from clusterous_provisioner import addons, code_bundle

    values = {"operator_image": code_bundle.PYTHON_IMAGE, **watch_values()}
    return addons.fill(addons.template(addons.SPOT_WATCH_FILE), values, addons.SPOT_WATCH_FILE)


def watch_values() -> dict[str, str]:
    """manifests/spot-watch.yaml's values: the watcher's script, JSON-escaped (a valid YAML
    double-quoted scalar), and its hash (a changed script rolls the DaemonSet's pods)."""
    from importlib import resources

    text = (resources.files("clusterous_provisioner") / "spot_watch.py").read_text()
    return {
        "spot_watch_script": json.dumps(text)[1:-1],
        "spot_watch_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
    }
