"""The autoscaler process: list Nodes and Pods, ask autoscale.decide, act through scaling.py.

It reads its groups from the ConfigMap `clusterous-system/autoscaler` that `up` writes (the
`record_configmap` builder below: cluster, region, bucket, each elastic group's instance type
and bounds, idle minutes, cooldown) and writes back, under the key `status`, each group's
current/min/max, the last decision with its reason, and the rounds' memory (autoscale.Memory),
so a restarted autoscaler forgets neither cooldowns nor idle times and `status` can show them.

A grow is one `scaling.grow` (one RunInstances for the whole batch, the group's own launch
settings); a shrink drains each chosen Node (cordon, evict, delete: drain.py, passed in
as `drain`) and then terminates exactly those instances with `scaling.shrink`. AWS calls per round
do not depend on the number of nodes (bench/autoscale_calls.py).

Run: `python -m clusterous_provisioner.autoscaler [--once] [--interval 30] [--kubeconfig PATH]`
(in the cluster it uses its ServiceAccount: manifests/autoscaler.yaml, which `up` applies with
the code, code_bundle.AUTOSCALER; docs/elastic.md "Running it").
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from clusterous_core.names import AUTOSCALER_RECORD, NAMESPACE, TIME_FORMAT
from clusterous_provisioner import autoscale, scaling, spending, spot
from clusterous_provisioner.autoscale import GroupBounds, Memory, Settings
from clusterous_provisioner.drain import delete_node, drain_node, forget_gone, uncordon
from clusterous_provisioner.kubecalls import get_or_none, json_body
from clusterous_provisioner.kubeobjects import internal_ip

CONFIGMAP = AUTOSCALER_RECORD  # the operator reads its `groups` too (groups at zero exist)
STATUS_KEY = "status"
TIMEOUT = 30  # seconds for one Kubernetes API request
RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT}
Report = Callable[[str], None]


@dataclass(frozen=True)
class Record:
    """What `up` recorded for the autoscaler, and what the last round left."""

    cluster: str
    region: str
    bucket: str
    groups: tuple[GroupBounds, ...]
    settings: Settings = Settings()
    memory: Memory = Memory()
    status: dict = field(default_factory=dict)
    budget: float | None = None  # USD (spending.py)


# --- the record `up` writes --------------------------------------------------------------------


def record_configmap(spec, bucket: str, settings: Settings = Settings()) -> dict:
    """The ConfigMap body for a ClusterSpec (its elastic groups only); no `status` key, so
    writing it again on a re-run of `up` keeps what the autoscaler recorded."""
    groups = {
        g.name: {"instance_type": g.instance_type, "min": g.min, "max": g.max, **_market(g)}
        for g in spec.groups
        if g.elastic
    }
    budget = getattr(spec, "budget", None)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "clusterous-autoscaler",
                "app.kubernetes.io/part-of": "clusterous-k8s",
            },
        },
        "data": {
            "cluster": spec.name,
            "region": spec.region,
            "bucket": bucket,
            "groups": json.dumps(groups, sort_keys=True),
            "idle_minutes": f"{settings.idle_minutes:g}",
            "cooldown_seconds": f"{settings.cooldown_seconds:g}",
            # only when given: a re-run of `up` without one keeps what `budget N` set
            **({spending.BUDGET_KEY: str(budget)} if budget is not None else {}),
        },
    }


def _market(group) -> dict:
    """A spot group's market in the record, so a launch at zero is spot too (spot.launch)."""
    if not group.spot:
        return {}
    return {"spot": True, **({"spot_fallback": group.spot_fallback} if group.spot_fallback else {})}


def write_record(api_client, spec, bucket: str) -> str | None:
    """Create the ConfigMap, or merge-patch its settings (never `status`): "created"/"updated".
    A cluster without elastic groups or a budget gets none; one that had some gets its groups
    emptied (None when there was nothing to do)."""
    from kubernetes import client
    from kubernetes.client import ApiException

    core = client.CoreV1Api(api_client)
    body = record_configmap(spec, bucket)
    if any(g.elastic for g in spec.groups) or spending.BUDGET_KEY in body["data"]:
        try:
            core.create_namespaced_config_map(NAMESPACE, body, **RAW)  # type: ignore[arg-type]  # a dict body is sent as it is
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
    try:
        core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": body["data"]}, **RAW)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    return "updated"


def parse_record(data: dict) -> Record:
    """The ConfigMap's data as a Record (ValueError on a malformed one)."""
    groups = tuple(
        GroupBounds(
            name, g["instance_type"], int(g["min"]), int(g["max"]), g.get("spot"), g.get("spot_fallback")
        )
        for name, g in sorted(json.loads(data.get("groups") or "{}").items())
    )
    status = json.loads(data.get(STATUS_KEY) or "{}")
    kept = status.get("memory") or {}
    return Record(
        cluster=data["cluster"],
        region=data["region"],
        bucket=data["bucket"],
        groups=groups,
        settings=Settings(
            idle_minutes=float(data.get("idle_minutes") or autoscale.DEFAULT_IDLE_MINUTES),
            cooldown_seconds=float(data.get("cooldown_seconds") or autoscale.DEFAULT_COOLDOWN_SECONDS),
            **{key: _epoch(data[key]) for key in CLOCK_KEYS if data.get(key)},
        ),
        memory=Memory(
            last_change=kept.get("last_change") or {},
            busy_at=kept.get("busy_at") or {},
            interrupted=kept.get("interrupted") or {},
        ),
        status=status,
        budget=spending.parse_budget(data.get(spending.BUDGET_KEY)),
    )


CLOCK_KEYS = ("suspended_at", "resumed_at")  # written by `suspend` / `resume` (write_clock)


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def write_clock(api_client, key: str, when: float) -> bool:
    """Record when the cluster was suspended or resumed (`key`: one of CLOCK_KEYS), so idle
    times never count across a stop (autoscale.idle_clock_start); False: no elastic group here."""
    return patch_record(api_client, {key: datetime.fromtimestamp(when, UTC).strftime(TIME_FORMAT)})


def patch_record(api_client, data: dict[str, str | None]) -> bool:
    """Set (None: remove) only these keys of the record; False when the cluster has none (`up`
    writes it for elastic groups or a budget)."""
    from kubernetes import client
    from kubernetes.client import ApiException

    try:
        client.CoreV1Api(api_client).patch_namespaced_config_map(CONFIGMAP, NAMESPACE, {"data": data}, **RAW)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False
    return True


def status_of(
    decisions: list[autoscale.Decision], record: Record, memory: Memory, now: float, acted: dict
) -> dict:
    """The ConfigMap's `status`: per group current/min/max and the last decision that changed
    something; `reason` is this round's (a "none" round keeps `last` as it was)."""
    stamp = datetime.fromtimestamp(now, UTC).strftime(TIME_FORMAT)
    groups = dict(record.status.get("groups") or {})
    bounds = {g.name: g for g in record.groups}
    for d in decisions:
        entry = dict(groups.get(d.group) or {})
        entry.update(
            current=d.current,
            min=bounds[d.group].min,
            max=bounds[d.group].max,
            reason=d.reason,
            checked=stamp,
        )
        if d.action != "none":
            entry["last"] = {
                "action": d.action,
                "count": d.count,
                "nodes": list(d.nodes),
                "reason": d.reason,
                "at": stamp,
                **acted.get(d.group, {}),
            }
        groups[d.group] = entry
    return {"groups": groups, "memory": asdict(memory)}


def read_status(api_client) -> dict | None:
    """For `status`: per elastic group its bounds and the autoscaler's last word; None when the
    cluster has no elastic group (no ConfigMap)."""
    from kubernetes import client
    from kubernetes.client import ApiException

    try:
        config_map = json_body(
            client.CoreV1Api(api_client).read_namespaced_config_map,
            CONFIGMAP,
            NAMESPACE,
            request_timeout=TIMEOUT,
        )
        data = config_map.get("data")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    record = parse_record(data or {})
    seen = record.status.get("groups") or {}
    return {
        g.name: {
            "min": g.min,
            "max": g.max,
            "reason": (seen.get(g.name) or {}).get("reason") or "the autoscaler has not run yet",
            "last": (seen.get(g.name) or {}).get("last"),
            "interruption": (seen.get(g.name) or {}).get("interruption"),
        }
        for g in record.groups
    }


def status_line(group: str, current: int, entry: dict) -> str:
    """One line of `status` for an elastic group."""
    line = (
        f"autoscaler: {group} {current} node(s) (min {entry['min']}, max {entry['max']}): {entry['reason']}"
    )
    last = entry.get("last")
    if last:
        line += f"; last change {last['at']}: {last['action']} {last['count']} ({last['reason']})"
        if last.get("error"):
            line += f"; {last['error']}"
    if entry.get("interruption"):
        line += f"; {spot.status_text(entry['interruption'])}"
    return line


# --- one round ---------------------------------------------------------------------------------


def instance_type_capacity(clients, types: set[str], cache: dict) -> dict[str, tuple[int, int]]:
    """(millicores, bytes) of each instance type, from one DescribeInstanceTypes for the new ones.
    Used only for groups with no Ready node (at zero), where there is no allocatable to read."""
    wanted = sorted(t for t in types if t not in cache)
    if wanted:
        for info in clients.ec2.describe_instance_types(InstanceTypes=wanted)["InstanceTypes"]:
            cache[info["InstanceType"]] = (
                info["VCpuInfo"]["DefaultVCpus"] * 1000,
                info["MemoryInfo"]["SizeInMiB"] * autoscale.MI,
            )
    return {t: cache[t] for t in types if t in cache}


def run_once(
    api_client, clients, record: Record, now: float, drain: Callable[[str], object], report: Report,
    type_cache: dict | None = None,
) -> list[autoscale.Decision]:  # fmt: skip
    """List, decide, act, record. Returns the decisions."""
    from kubernetes import client

    from clusterous_provisioner.inventory import discover

    core = client.CoreV1Api(api_client)
    nodes = json_body(core.list_node, request_timeout=TIMEOUT).get("items") or []
    pods = json_body(core.list_pod_for_all_namespaces, request_timeout=TIMEOUT).get("items") or []
    inv = discover(clients, record.cluster)
    nodes = forget_ghosts(core, nodes, record, inv, report)
    addresses = {internal_ip(n) for n in nodes}
    launching = {  # instances on their way to a Node; shutting-down ones lost theirs for good
        g.name: sum(
            1
            for i in inv.group_instances(g.name)
            if i["State"]["Name"] in ("pending", "running") and i.get("PrivateIpAddress") not in addresses
        )
        for g in record.groups
    }
    at_zero = {g.instance_type for g in record.groups if autoscale.node_capacity(g.name, nodes, pods) is None}
    by_type = (
        instance_type_capacity(clients, at_zero, {} if type_cache is None else type_cache) if at_zero else {}
    )
    spent = spending.spending_round(record.status.get("spending"), inv, now)
    decisions, memory = autoscale.decide(
        record.groups, nodes, pods, launching, record.memory, now, record.settings,
        {g.name: by_type[g.instance_type] for g in record.groups if g.instance_type in by_type},
        autoscale.Budget(spent["usd"], record.budget),
    )  # fmt: skip
    acted: dict[str, dict] = {}
    try:
        for decision in decisions:
            if decision.action == "none":
                continue
            report(f"{decision.group}: {decision.action} {decision.count}: {decision.reason}")
            acted[decision.group] = act(clients, core, inv, record, decision, nodes, drain, report)
        stamp = datetime.fromtimestamp(now, UTC).strftime(TIME_FORMAT)
        status = spot.record_interruptions(
            {**status_of(decisions, record, memory, now, acted), "spending": spent},
            decisions, nodes, acted, stamp,
        )  # fmt: skip
        body = {"data": {STATUS_KEY: json.dumps(status, sort_keys=True)}}
        core.patch_namespaced_config_map(CONFIGMAP, NAMESPACE, body, **RAW)
    finally:  # after the replacements' launch (a drain may wait), and even if it failed
        spot.drain_interrupted(api_client, nodes, now, report)
    return decisions


def act(
    clients, core, inv, record: Record, decision: autoscale.Decision, nodes: list[dict], drain, report
) -> dict:
    """Carry out one decision; returns the instance ids it launched or terminated (and, when a
    drain could not finish, the error: the nodes drained before it still go)."""
    group = next(g for g in record.groups if g.name == decision.group)
    have = inv.group_instances(group.name)
    if decision.action == "grow":
        size = len(have) + decision.count
        return spot.launch(
            lambda market: scaling.grow(
                clients, inv, group.name, size, record.bucket, group.instance_type, False, report, market
            ),
            group,
            report,
        )
    drained, outcome = [], {}
    for name in decision.nodes:
        try:
            drain(name)
        except Exception as exc:  # noqa: BLE001 - Failure (pods would not leave), ApiException
            # The node stays: schedulable again, and the group rests for the cooldown.
            uncordon(core, name)
            outcome["error"] = f"drain {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            report(f"{outcome['error']}; uncordoned, kept")
            break
        drained.append(name)
    ips = {internal_ip(n) for n in nodes if n["metadata"]["name"] in drained}
    victims = [i for i in have if i.get("PrivateIpAddress") in ips]
    # scaling.shrink terminates the newest of what it is shown; shown only the drained nodes'
    # instances, it terminates exactly those (one TerminateInstances).
    ids = (
        scaling.shrink(clients, replace(inv, instances=victims), group.name, 0, False, report)
        if victims
        else []
    )
    for name in drained:  # a kubelet may have re-registered its Node before the termination
        delete_node(core, name)
    return {"terminated": ids, **outcome}


def forget_ghosts(core, nodes: list[dict], record: Record, inv, report: Report) -> list[dict]:
    """Delete Nodes of elastic groups whose instance is gone (a kubelet re-registered during a
    shrink, or an instance terminated behind our back): k3s on EC2 has no cloud controller to do
    it, and a ghost would count towards `max`. Returns the Nodes that remain."""
    elastic = {g.name for g in record.groups}
    return forget_gone(  # spot-interrupted Nodes too: the drain kept them cordoned until now
        core,
        nodes,
        inv.instances,
        lambda n: autoscale.node_group(n) in elastic or spot.notice(n) is not None,
        report,
    )


# --- the process -------------------------------------------------------------------------------


def has_record(api_client) -> bool:
    """False while there is nothing to do: `up` writes no record for a cluster without elastic
    groups or a budget (the deployed autoscaler then idles, making no AWS call); with a budget
    and fixed groups it still counts the spending."""
    from kubernetes import client

    found = get_or_none(client.CoreV1Api(api_client).read_namespaced_config_map, CONFIGMAP, NAMESPACE)
    data = (found or {}).get("data") or {}
    return bool(json.loads(data.get("groups") or "{}") or data.get("budget"))


def read_record(api_client) -> Record:
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    return parse_record(
        json_body(core.read_namespaced_config_map, CONFIGMAP, NAMESPACE, request_timeout=TIMEOUT).get("data")
        or {}
    )


def make_drain(api_client, timeout: float, report: Report) -> Callable[[str], object]:
    """The drain `scale` uses too (cordon, evict through the Eviction API, delete the Node), for one node."""
    return lambda node: drain_node(api_client, node, timeout, report)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from kubernetes import config

    from clusterous_provisioner.clients import Clients

    parser = argparse.ArgumentParser(prog="clusterous-autoscaler", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between rounds")
    parser.add_argument("--kubeconfig", help="a kubeconfig (default: the pod's ServiceAccount)")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.kubeconfig:
        api_client = config.new_client_from_config(config_file=args.kubeconfig)
    else:
        config.load_incluster_config()
        from kubernetes import client

        api_client = client.ApiClient()

    def report(message: str) -> None:
        print(f"{datetime.now(UTC):{TIME_FORMAT}} {message}", flush=True)

    # SIGTERM (the pod stopping) ends the wait between rounds at once but never a round midway:
    # a node being drained or terminated is finished, not abandoned.
    stop, wake = threading.Event(), threading.Event()

    def on_sigterm(signum, frame) -> None:
        stop.set()
        wake.set()  # ends the wait between rounds

    signal.signal(signal.SIGTERM, on_sigterm)
    # a spot interruption notice starts a round at once (docs/elastic.md)
    notices = None if args.once else spot.wake_on_notice(api_client, wake, stop)
    type_cache: dict = {}
    clients = None
    while not stop.is_set():
        wake.clear()
        try:
            if not has_record(api_client):
                if args.once:
                    return 0
                stop.wait(args.interval)
                continue
            record = read_record(api_client)
            if clients is None or clients.region != record.region:
                clients = Clients(record.region)
            run_once(api_client, clients, record, time.time(), make_drain(api_client, args.drain_timeout, report),
                     report, type_cache)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one failed round must not end the autoscaler
            report(f"round failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if args.once:
                return 1
        if args.once:
            return 0
        wake.wait(args.interval)
    if notices is not None:  # let it end before the interpreter does (a daemon thread writing
        notices.join(2)  # to stderr at shutdown aborts the process)
    report("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
