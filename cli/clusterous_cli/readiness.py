"""`up`'s wait for the cluster inside the instances: stages in order, each with a deadline.

| stage | done when |
| --- | --- |
| host key | the controller's SSH host key, read from its EC2 console output, is pinned |
| ssh | the controller answers SSH with that key (never skipped, never auto-added) |
| cloud-init | cloud-init finished on the controller without errors |
| bootstrap | the controller's bootstrap unit (NFS, k3s) finished a run (it retries until one does) |
| api | the k3s API answers `/readyz` through the SSH tunnel |
| setup | the operator's code ConfigMap, the logging HelmChart (applied or deleted) and `cluster-info` |
| nodes | every instance is a Ready Node; every node carries its `clusterous.io/group` label |
| add-ons | the CRDs are established, the Deployments available, the DaemonSets ready |

A stage that does not finish in time fails (exit 1) naming what is stuck — the node and its
conditions, the pod, its containers and its last events — and says to re-run `up`, which
creates nothing that exists and picks the wait up again.

The checks are pure functions of Kubernetes objects as the API returns them (JSON dicts) and
are tested alone; the I/O (EC2, SSH, the API through the tunnel) stays in `Waiter`'s methods,
one per stage, and in the functions `up` calls at the bottom.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clusterous_cli.hostkeys import HostKeyChanged
from clusterous_provisioner.errors import BadInput, Failure

if TYPE_CHECKING:
    from clusterous_cli.endpoint import ClusterRef

GROUP_LABEL = "clusterous.io/group"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
NAMESPACE = "clusterous-system"
CLUSTER_INFO = "cluster-info"
RERUN = (
    "re-run `clusterous-k8s up` to keep waiting (it creates nothing that exists); "
    "`clusterous-k8s status` lists the instances"
)
SSH_USERS = {"ubuntu-24.04": "ubuntu", "al2023": "ec2-user"}
# Seconds each stage may take unless `up --timeout` says otherwise. Console output reaches EC2
# minutes after boot; cloud-init installs packages and k3s; images are pulled from the internet.
DEFAULT_TIMEOUTS = {
    "host key": 600.0,
    "ssh": 300.0,
    "cloud-init": 900.0,
    "bootstrap": 900.0,
    "api": 300.0,
    "setup": 300.0,
    "nodes": 600.0,
    "add-ons": 600.0,
}
REQUEST_TIMEOUT = 15  # seconds for one Kubernetes API request
# Where cloud-init leaves its results on the controller (below `cloud_init_root`, normally /).
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
CLOUD_INIT_RESULT = "/var/lib/cloud/data/result.json"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
# cloud-init only starts the bootstrap unit; a successful run leaves this marker.
BOOTSTRAP_UNIT = "clusterous-bootstrap.service"
BOOTSTRAP_DONE = "/var/lib/clusterous/bootstrap.done"
LOG_TAIL_LINES = 25
# Fields of controller.yml `up` does not learn from AWS: a hand-edited value (a jump host, say) stays.
KEPT_ENDPOINT_FIELDS = ("port", "jump_host", "shared_root", "api_port", "k3s_kubeconfig", "known_hosts")
# A YAML file of controller.yml fields that replace what `up` learned (the controller reached
# through a port forward, or the stand-in controller of the tests), plus `cloud_init_root`.
OVERRIDES_ENV = "CLUSTEROUS_CONTROLLER_OVERRIDES"


# --- stages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One look at a stage: done or not, a one-line summary, and what is stuck (for the failure)."""

    done: bool
    summary: str
    stuck: tuple[str, ...] = ()


@dataclass
class Stage:
    key: str  # a key of DEFAULT_TIMEOUTS
    title: str  # what the progress line says is awaited
    poll: Callable[[], Check]
    explain: Callable[[Check], list[str]] | None = None  # more detail, asked only when timing out


def poll_interval(timeout: float) -> float:
    """Short stages are polled often, long ones at most every 5 s."""
    return min(5.0, max(0.2, timeout / 50))


class StageTimeout(Failure):
    def __init__(self, stage: Stage, timeout: float, check: Check, details: list[str]):
        lines = [f"timed out after {timeout:.0f} s waiting for {stage.title}: {check.summary}"]
        lines += [f"  - {item}" for item in (*check.stuck, *details)]
        super().__init__("\n".join(lines), RERUN)


def run_stage(
    stage: Stage,
    timeout: float,
    update: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    """Poll until done; StageTimeout with the last check (and its explanation) when time runs out.

    A poll raises (a Failure) only for what waiting cannot fix, e.g. a changed host key.
    """
    deadline = clock() + timeout
    interval = poll_interval(timeout)
    while True:
        check = stage.poll()
        update(f"{stage.title}: {check.summary}")
        if check.done:
            return check
        if clock() + interval > deadline:
            details: list[str] = []
            if stage.explain is not None:
                try:
                    details = stage.explain(check)
                except Exception as exc:  # noqa: BLE001 - the explanation is a bonus, the timeout the news
                    details = [f"(could not look closer: {exc})"]
            raise StageTimeout(stage, timeout, check, details)
        sleep(interval)


class Progress:
    """A rich status line while a stage runs and a ✓ line when it is done (stderr)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self._status = None

    def __enter__(self) -> Progress:
        self._status = self.console.status("waiting for the cluster")
        self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._status.__exit__(*exc)

    def update(self, text: str) -> None:
        self._status.update(text)

    def done(self, stage: Stage, seconds: float, check: Check) -> None:
        self.console.print(f"✓ {stage.title}: {check.summary} ({seconds:.0f} s)", markup=False)


def run_stages(stages: Iterable[Stage], timeouts: dict[str, float], progress: Progress) -> list[Check]:
    results = []
    for stage in stages:
        started = time.monotonic()
        progress.update(f"{stage.title} …")
        check = run_stage(stage, timeouts[stage.key], progress.update)
        progress.done(stage, time.monotonic() - started, check)
        results.append(check)
    return results


def timeouts_for(timeout: float | None) -> dict[str, float]:
    """One --timeout for every stage, else the defaults."""
    if timeout is None:
        return dict(DEFAULT_TIMEOUTS)
    if timeout <= 0:
        raise BadInput("--timeout", None, "a number of seconds above 0", timeout)
    return dict.fromkeys(DEFAULT_TIMEOUTS, float(timeout))


# --- the controller record ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """An instance of the cluster as the node checks see it."""

    instance_id: str
    group: str | None  # None: the controller
    private_ip: str | None
    private_dns: str | None

    @property
    def where(self) -> str:
        return "controller" if self.group is None else f"group {self.group}"


def members_of(instances: list[dict]) -> list[Member]:
    """EC2 DescribeInstances entries (running ones) → members, the controller first."""
    from clusterous_provisioner import tags

    found = []
    for instance in instances:
        if instance.get("State", {}).get("Name") not in (None, "pending", "running"):
            continue
        t = tags.as_dict(instance.get("Tags"))
        group = None if t.get(tags.ROLE) == "controller" else t.get(tags.GROUP)
        found.append(
            Member(
                instance["InstanceId"],
                group,
                instance.get("PrivateIpAddress"),
                instance.get("PrivateDnsName"),
            )
        )
    return sorted(found, key=lambda m: (m.group is not None, m.group or "", m.instance_id))


def ssh_user(os_name: str | None) -> str:
    return SSH_USERS.get(os_name or "", "ubuntu")


def endpoint_fields(
    controller: dict,
    region: str,
    key_file: str | None,
    existing: dict | None = None,
    overrides: dict | None = None,
) -> dict:
    """controller.yml as `up` writes it: the controller's public address, the login user of its
    OS, the cluster's key and instance; hand-set fields of an existing file kept; overrides last."""
    from clusterous_provisioner import tags

    fields: dict = {k: v for k, v in (existing or {}).items() if k in KEPT_ENDPOINT_FIELDS}
    os_name = tags.as_dict(controller.get("Tags")).get(tags.OS)
    fields |= {
        "host": controller.get("PublicIpAddress"),
        "user": ssh_user(os_name),
        "instance_id": controller["InstanceId"],
        "region": region,
    }
    if key_file:
        fields["key_file"] = key_file
    fields |= {k: v for k, v in (overrides or {}).items() if k != "cloud_init_root"}
    return fields


def read_overrides() -> dict:
    """$CLUSTEROUS_CONTROLLER_OVERRIDES: controller.yml fields (and cloud_init_root) to use instead."""
    from clusterous_cli import config

    path = os.environ.get(OVERRIDES_ENV)
    if not path:
        return {}
    from pathlib import Path

    data = config.read_yaml(Path(path))
    allowed = {"host", "port", "user", "key_file", "known_hosts", "jump_host", "shared_root"}
    allowed |= {"api_port", "k3s_kubeconfig", "cloud_init_root"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(path, unknown[0], f"one of {', '.join(sorted(allowed))}")
    return data


# --- pure checks: cloud-init --------------------------------------------------------------------


def cloud_init_script(root: str) -> list[str]:
    """argv that prints `finished` and cloud-init's result.json, or `running`."""
    script = (
        'as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }\n'
        'if [ -e "$1$2" ]; then echo finished; as_root cat -- "$1$3" 2>/dev/null || true; '
        "else echo running; fi\n"
    )
    return ["sh", "-c", script, "cloud-init-status", root, BOOT_FINISHED, CLOUD_INIT_RESULT]


def log_tail_command(root: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    script = (
        'if [ "$(id -u)" -eq 0 ]; then exec tail -n "$2" -- "$1"; else exec sudo -n tail -n "$2" -- "$1"; fi'
    )
    return ["sh", "-c", script, "cloud-init-log", root + CLOUD_INIT_LOG, str(lines)]


def bootstrap_script(root: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """argv that prints `done`, or `running` and the unit's last journal lines."""
    script = (
        'if [ -e "$1$2" ]; then echo done; exit 0; fi\n'
        "echo running\n"
        'if [ "$(id -u)" -eq 0 ]; then j=journalctl; else j="sudo -n journalctl"; fi\n'
        '$j -u "$3" -n "$4" --no-pager -o cat 2>/dev/null || true\n'
    )
    return ["sh", "-c", script, "bootstrap-status", root, BOOTSTRAP_DONE, BOOTSTRAP_UNIT, str(lines)]


def parse_cloud_init(output: str) -> tuple[bool, list[str]]:
    """(finished, errors) from what `cloud_init_script` printed."""
    first, _, rest = output.strip().partition("\n")
    if first.strip() != "finished":
        return False, []
    try:
        result = json.loads(rest) if rest.strip() else {}
    except ValueError:
        return True, []
    v1 = result.get("v1") if isinstance(result, dict) else None
    errors = (v1 or {}).get("errors") or []
    return True, [str(e) for e in errors]


# --- pure checks: Kubernetes objects ------------------------------------------------------------


def _conditions(obj: dict | None) -> dict[str, dict]:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _reason(condition: dict | None) -> str:
    if not condition:
        return "no condition reported"
    parts = [condition.get("reason"), condition.get("message")]
    return ": ".join(p for p in parts if p) or f"status {condition.get('status')}"


def node_ready(node: dict) -> tuple[bool, str]:
    ready = _conditions(node).get("Ready")
    if ready and ready.get("status") == "True":
        return True, "Ready"
    return False, f"not Ready ({_reason(ready)})"


def node_addresses(node: dict) -> set[str]:
    return {a.get("address") for a in (node.get("status") or {}).get("addresses") or [] if a.get("address")}


def match_node(member: Member, nodes: list[dict]) -> dict | None:
    """The Node of an instance: its private address among the Node's, else its hostname."""
    hostname = (member.private_dns or "").split(".")[0]
    for node in nodes:
        if member.private_ip and member.private_ip in node_addresses(node):
            return node
    for node in nodes:
        name = node["metadata"]["name"]
        if hostname and name in (hostname, member.private_dns):
            return node
    return None


def check_nodes(members: list[Member], nodes: list[dict]) -> Check:
    """Every instance registered, Ready, and labelled with its group (the controller: control plane)."""
    stuck: list[str] = []
    ready_by: dict[str, list[int]] = {}
    for member in members:
        label = "controller" if member.group is None else member.group
        counts = ready_by.setdefault(label, [0, 0])
        counts[1] += 1
        node = match_node(member, nodes)
        if node is None:
            stuck.append(
                f"{member.where}: instance {member.instance_id} ({member.private_ip or '?'}) has not "
                "registered as a Kubernetes node yet"
            )
            continue
        name = node["metadata"]["name"]
        ok, why = node_ready(node)
        labels = node["metadata"].get("labels") or {}
        if member.group is not None and labels.get(GROUP_LABEL) != member.group:
            ok = False
            have = labels.get(GROUP_LABEL)
            why = f"label {GROUP_LABEL}={have}" if have else f"no {GROUP_LABEL} label"
            why += f", expected {member.group}"
        if ok:
            counts[0] += 1
        else:
            stuck.append(f"node {name} ({member.where}, {member.instance_id}): {why}")
    total = sum(c[1] for c in ready_by.values())
    ready = sum(c[0] for c in ready_by.values())
    per_group = ", ".join(f"{g} {c[0]}/{c[1]}" for g, c in ready_by.items())
    return Check(not stuck, f"{ready}/{total} nodes Ready ({per_group})", tuple(stuck))


@dataclass(frozen=True)
class Addons:
    """What must be ready, read from the add-on manifests `up` renders."""

    crds: tuple[str, ...] = ()
    deployments: tuple[tuple[str, str], ...] = ()  # (namespace, name)
    daemonsets: tuple[tuple[str, str], ...] = ()


def addons_from_manifests(documents: Iterable[dict]) -> Addons:
    crds, deployments, daemonsets = [], [], []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        if kind == "CustomResourceDefinition":
            crds.append(meta["name"])
        elif kind == "Deployment":
            deployments.append((meta.get("namespace") or "default", meta["name"]))
        elif kind == "DaemonSet":
            daemonsets.append((meta.get("namespace") or "default", meta["name"]))
    return Addons(tuple(crds), tuple(deployments), tuple(daemonsets))


def crd_established(crd: dict | None) -> tuple[bool, str]:
    if crd is None:
        return False, "not created yet"
    established = _conditions(crd).get("Established")
    if established and established.get("status") == "True":
        return True, "established"
    return False, f"not established ({_reason(established)})"


def _observed(obj: dict) -> bool:
    status = obj.get("status") or {}
    return status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 1)


def deployment_available(deployment: dict | None) -> tuple[bool, str]:
    if deployment is None:
        return False, "not created yet"
    want = (deployment.get("spec") or {}).get("replicas", 1)
    status = deployment.get("status") or {}
    available = status.get("availableReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    if available < want:
        condition = _conditions(deployment).get("Available")
        extra = f" ({_reason(condition)})" if condition and condition.get("status") != "True" else ""
        return False, f"{available}/{want} replicas available{extra}"
    if updated < want or not _observed(deployment):
        return False, f"rolling out its latest version ({updated}/{want} updated)"
    return True, f"{available}/{want} available"


def daemonset_ready(daemonset: dict | None) -> tuple[bool, str]:
    if daemonset is None:
        return False, "not created yet"
    status = daemonset.get("status") or {}
    if not status or not _observed(daemonset):
        return False, "not scheduled yet"
    want = status.get("desiredNumberScheduled", 0)
    ready = status.get("numberReady", 0)
    updated = status.get("updatedNumberScheduled", want)
    available = status.get("numberAvailable", ready)
    if min(ready, updated, available) < want:
        return False, f"{ready}/{want} pods ready"
    return True, f"{ready}/{want} ready"


def selector_text(match_labels: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((match_labels or {}).items()))


def _when(event: dict) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("series") or {}).get("lastObservedTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def last_events(events: list[dict], count: int = 3) -> list[str]:
    """The newest events, oldest of them first: `Warning FailedScheduling: 0/3 nodes ...`."""
    latest = sorted(events, key=_when)[-count:]
    return [
        f"{e.get('type') or 'Normal'} {e.get('reason') or '?'}: {e.get('message') or ''}".strip()
        for e in latest
    ]


def pod_problem(pod: dict, events: list[dict]) -> str:
    """Why a pod is not ready, as one line: phase, unmet conditions, waiting containers, last events."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    parts = [status.get("phase") or "Pending"]
    if node := (pod.get("spec") or {}).get("nodeName"):
        parts.append(f"on {node}")
    for ctype in ("PodScheduled", "Ready"):
        condition = _conditions(pod).get(ctype)
        if (
            condition
            and condition.get("status") != "True"
            and (condition.get("reason") or condition.get("message"))
        ):
            parts.append(f"{ctype}: {_reason(condition)}")
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting:
            parts.append(f"container {container.get('name')} waiting: {_reason(waiting)}")
        elif terminated and terminated.get("exitCode"):
            parts.append(
                f"container {container.get('name')} exited {terminated.get('exitCode')}: {_reason(terminated)}"
            )
        elif container.get("restartCount"):
            parts.append(f"container {container.get('name')} restarted {container['restartCount']}×")
    text = f"pod {name}: " + "; ".join(parts)
    recent = last_events(events)
    if recent:
        text += "; last events: " + " | ".join(recent)
    return text


def check_addons(addons: Addons, crds: dict, deployments: dict, daemonsets: dict) -> Check:
    """crds/deployments/daemonsets: name (or (namespace, name)) → object or None."""
    stuck, ready = [], 0
    items = [
        *((f"CRD {n}", crd_established(crds.get(n))) for n in addons.crds),
        *(
            (f"Deployment {ns}/{n}", deployment_available(deployments.get((ns, n))))
            for ns, n in addons.deployments
        ),
        *((f"DaemonSet {ns}/{n}", daemonset_ready(daemonsets.get((ns, n)))) for ns, n in addons.daemonsets),
    ]
    for what, (ok, why) in items:
        if ok:
            ready += 1
        else:
            stuck.append(f"{what}: {why}")
    return Check(not stuck, f"{ready}/{len(items)} add-ons ready", tuple(stuck))


# --- I/O: one helper per system -----------------------------------------------------------------


def _json(call, *args, **kwargs):
    """A kubernetes-client call's JSON body as plain dicts (no model classes: any field passes)."""
    response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    return json.loads(response.data or b"{}")


def _get_or_none(call, *args):
    from kubernetes.client import ApiException

    try:
        return _json(call, *args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _failure_text(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"the API answered {status} {getattr(exc, 'reason', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def readyz(api) -> tuple[int, str]:
    method, url, headers, _body, _post = api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    return response.status, (response.data or b"").decode(errors="replace")


def events_for(api, name: str, namespace: str | None = None) -> list[dict]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    selector = f"involvedObject.name={name}"
    if namespace:
        return _json(core.list_namespaced_event, namespace, field_selector=selector).get("items") or []
    return _json(core.list_event_for_all_namespaces, field_selector=selector).get("items") or []


def stuck_pods(api, namespace: str, match_labels: dict | None, limit: int = 3) -> list[str]:
    """What the not-ready pods of a workload say about themselves, with their last events."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    pods = (
        _json(core.list_namespaced_pod, namespace, label_selector=selector_text(match_labels)).get("items")
        or []
    )
    lines = []
    for pod in pods:
        ready = _conditions(pod).get("Ready")
        if ready and ready.get("status") == "True":
            continue
        lines.append(pod_problem(pod, events_for(api, pod["metadata"]["name"], namespace)))
        if len(lines) >= limit:
            break
    return lines


# --- the wait -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What `up` hands over: the cluster, its instances and what it asked for."""

    ref: ClusterRef
    region: str
    controller: dict  # DescribeInstances entry
    members: list[Member]
    addons: Addons
    logging_level: int | None  # None: keep the level the cluster has (cluster-info)
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    cloud_init_root: str = ""


class Waiter:
    """Holds the connections the stages share and builds the stages' polls."""

    def __init__(self, plan: Plan, ec2):
        self.plan, self.ec2 = plan, ec2
        self.conn = None
        self.api = None
        self.outcome: dict = {}
        self.logging_removed = False  # this run deleted the logging chart (reported as "removed")

    # -- host key ------------------------------------------------------------------------------

    def host_key(self) -> Check:
        """Learn the key from the console output unless one is pinned for this address already: a
        pinned key is never replaced here (a changed key is refused at the SSH stage instead)."""
        from botocore.exceptions import ClientError

        from clusterous_cli import hostkeys
        from clusterous_cli.endpoint import load_endpoint

        endpoint = load_endpoint(self.plan.ref)
        pinned = hostkeys.read_pinned(endpoint.known_hosts, endpoint.host_key_name)
        if pinned:
            return Check(True, f"pinned earlier: {', '.join(k.fingerprint for k in pinned)}")
        instance = self.plan.controller["InstanceId"]
        try:
            reply = self.ec2.get_console_output(InstanceId=instance, Latest=True)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "UnsupportedOperation":
                raise
            reply = self.ec2.get_console_output(InstanceId=instance)  # not a Nitro instance
        text = reply.get("Output") or ""
        if hostkeys.KEYS_END not in text:
            what = "no console output yet" if not text else "cloud-init has not printed the host keys yet"
            return Check(False, what, (f"controller {instance}: {what} (EC2 GetConsoleOutput)",))
        keys = hostkeys.pin_from_console_output(endpoint.known_hosts, endpoint.host_key_name, text)
        return Check(True, f"pinned {', '.join(k.fingerprint for k in keys)}")

    # -- ssh and cloud-init --------------------------------------------------------------------

    def _connect(self):
        from clusterous_cli import ssh

        if self.conn is None or not self.conn.is_active():
            self.conn = ssh.connect_cluster(self.plan.ref)
        return self.conn

    def ssh(self) -> Check:
        try:
            conn = self._connect()
        except HostKeyChanged:
            raise  # waiting cannot fix it; the message says how to re-learn on purpose
        except Failure as exc:  # refused, timed out, key not installed yet: the instance is booting
            return Check(False, exc.what.splitlines()[0])
        return Check(True, f"{conn.endpoint.user}@{conn.endpoint.host} answers")

    def _look(self, argv: list[str]) -> str | Check:
        """What `argv` prints on the controller, or a not-done Check when SSH failed this time."""
        try:
            code, out, err = self._connect().run(argv, timeout=60)
        except HostKeyChanged:
            raise
        except Exception as exc:  # noqa: BLE001 - a dropped connection is opened again next time
            self.conn = None
            return Check(False, f"SSH: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return out.decode(errors="replace")

    def cloud_init(self) -> Check:
        output = self._look(cloud_init_script(self.plan.cloud_init_root))
        if isinstance(output, Check):
            return output
        finished, errors = parse_cloud_init(output)
        if not finished:
            return Check(False, "cloud-init is still running on the controller")
        if errors:
            raise Failure(
                f"cloud-init failed on the controller: {'; '.join(errors)}\n"
                f"  last lines of {CLOUD_INIT_LOG}:\n{self.log_tail()}",
                "fix the cause (often: no internet access from the instance, or an unavailable package "
                "mirror), then `clusterous-k8s down` and `up` again",
            )
        return Check(True, "finished")

    def log_tail(self) -> str:
        try:
            code, out, err = self._connect().run(log_tail_command(self.plan.cloud_init_root), timeout=30)
        except Exception as exc:  # noqa: BLE001
            return f"    (cannot read it: {exc})"
        text = (out or err).decode(errors="replace").rstrip() or "(empty)"
        return "\n".join("    " + line for line in text.splitlines())

    def bootstrap(self) -> Check:
        output = self._look(bootstrap_script(self.plan.cloud_init_root))
        if isinstance(output, Check):
            return output
        first, _, journal = output.partition("\n")
        if first.strip() == "done":
            return Check(True, "finished")
        lines = tuple(line for line in journal.splitlines() if line.strip())
        return Check(
            False, f"the bootstrap is still running ({BOOTSTRAP_UNIT} retries until it succeeds)", lines
        )

    def explain_cloud_init(self, check: Check) -> list[str]:
        if check.summary.startswith("cloud-init is still running"):
            return [f"last lines of {CLOUD_INIT_LOG}:\n{self.log_tail()}"]
        return []

    # -- the API -------------------------------------------------------------------------------

    def api_ready(self) -> Check:
        from clusterous_cli import kubeapi

        try:
            if self.api is None:
                self.api = kubeapi.api_client(self.plan.ref, refresh=True)
            status, body = readyz(self.api)
        except Failure as exc:
            self.api = None
            return Check(False, exc.what.splitlines()[0])
        except Exception as exc:  # noqa: BLE001 - connection errors while k3s starts
            return Check(False, _failure_text(exc))
        if status == 200:
            return Check(True, "/readyz ok")
        failing = [line for line in body.splitlines() if line.startswith("[-]")]
        return Check(False, f"/readyz answered {status}", tuple(failing[:10]))

    # -- setup: operator code, logging, cluster-info -------------------------------------------

    def setup(self) -> Check:
        from kubernetes import client

        from clusterous_cli import buildjob, registry
        from clusterous_provisioner import operator_bundle

        core = client.CoreV1Api(self.api)
        try:
            if _get_or_none(core.read_namespace, NAMESPACE) is None:
                return Check(False, f"k3s has not applied the add-ons yet (no namespace {NAMESPACE})")
            info = _get_or_none(core.read_namespaced_config_map, CLUSTER_INFO, NAMESPACE)
            if info is None:
                return Check(
                    False, f"k3s has not applied the add-ons yet (no ConfigMap {NAMESPACE}/{CLUSTER_INFO})"
                )
            code = operator_bundle.apply_code(self.api, NAMESPACE)
            registry.ensure_push_credentials(self.api, buildjob.PUSH_REGISTRY)  # issue 12 item 14
            recorded = str((info.get("data") or {}).get("loggingLevel") or "0")
            level = self.plan.logging_level
            if level is None:
                level = int(recorded) if recorded in ("0", "1", "2") else 0
            logging = apply_logging(self.api, level)
            if logging is None:
                return Check(False, "the HelmChart resource is not served yet (k3s's helm-controller)")
            if logging == UNINSTALLING:
                self.logging_removed = True
                return Check(False, "the logging release is being uninstalled (k3s's helm-controller)")
            if logging == "off" and self.logging_removed:
                logging = "removed"
            if recorded != str(level):
                core.patch_namespaced_config_map(
                    CLUSTER_INFO,
                    NAMESPACE,
                    {"data": {"loggingLevel": str(level)}},
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel: tried again
            return Check(False, _failure_text(exc))
        self.outcome["operator_code"] = code
        self.outcome["logging_level"] = level
        return Check(True, f"operator code {code}; logging level {level} ({logging})")

    # -- nodes and add-ons ---------------------------------------------------------------------

    def nodes(self) -> Check:
        from kubernetes import client

        try:
            nodes = _json(client.CoreV1Api(self.api).list_node).get("items") or []
        except Exception as exc:  # noqa: BLE001
            return Check(False, _failure_text(exc))
        self._nodes = nodes
        return check_nodes(self.plan.members, nodes)

    def explain_nodes(self, check: Check) -> list[str]:
        lines = []
        for member in self.plan.members:
            node = match_node(member, getattr(self, "_nodes", []))
            if node is None or node_ready(node)[0]:
                continue
            name = node["metadata"]["name"]
            recent = last_events(events_for(self.api, name))
            if recent:
                lines.append(f"node {name}: last events: " + " | ".join(recent))
        return lines

    def addons(self) -> Check:
        from kubernetes import client

        ext = client.ApiextensionsV1Api(self.api)
        apps = client.AppsV1Api(self.api)
        addons = self.plan.addons
        try:
            crds = {n: _get_or_none(ext.read_custom_resource_definition, n) for n in addons.crds}
            deps = {k: _get_or_none(apps.read_namespaced_deployment, k[1], k[0]) for k in addons.deployments}
            dss = {k: _get_or_none(apps.read_namespaced_daemon_set, k[1], k[0]) for k in addons.daemonsets}
        except Exception as exc:  # noqa: BLE001
            return Check(False, _failure_text(exc))
        self._workloads = {**deps, **dss}
        return check_addons(addons, crds, deps, dss)

    def explain_addons(self, check: Check) -> list[str]:
        lines = []
        for (namespace, _name), obj in getattr(self, "_workloads", {}).items():
            if obj is None:
                continue
            ok = (deployment_available if obj.get("kind") == "Deployment" else daemonset_ready)(obj)[0]
            if ok:
                continue
            selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")
            pods = stuck_pods(self.api, namespace, selector)
            if not pods:
                recent = last_events(events_for(self.api, obj["metadata"]["name"], namespace))
                pods = [
                    f"{obj.get('kind')} {obj['metadata']['name']}: no pods yet"
                    + ("; last events: " + " | ".join(recent) if recent else "")
                ]
            lines += pods
        return lines

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def stages(self) -> list[Stage]:
        return [
            Stage("host key", "the controller's SSH host key (EC2 console output)", self.host_key),
            Stage("ssh", "SSH to the controller", self.ssh),
            Stage("cloud-init", "cloud-init on the controller", self.cloud_init, self.explain_cloud_init),
            Stage("bootstrap", "the controller's bootstrap (NFS server, k3s)", self.bootstrap),
            Stage("api", "the Kubernetes API through the SSH tunnel", self.api_ready),
            Stage("setup", "operator code, logging and cluster-info", self.setup),
            Stage("nodes", "every node Ready with its group label", self.nodes, self.explain_nodes),
            Stage(
                "add-ons",
                "the add-ons (CRDs, registry, operator, NFS driver)",
                self.addons,
                self.explain_addons,
            ),
        ]


UNINSTALLING = "uninstalling"


def apply_logging(api, level: int) -> str | None:
    """Make the logging HelmChart match `level`: installed/updated/unchanged, or off; None while
    the HelmChart resource is not served yet, UNINSTALLING while a deleted chart is still held by
    k3s's helm-controller finalizer (it runs `helm uninstall` first): a chart written meanwhile
    would be deleted with it, so a new level waits until the old chart is gone."""
    from kubernetes import client
    from kubernetes.client import ApiException

    from clusterous_provisioner import logging_addon

    change = logging_addon.logging_manifests(level)
    group, version = change.api_version.split("/")
    custom = client.CustomObjectsApi(api)
    args = (group, version, change.namespace, "helmcharts")
    try:
        current = _json(custom.get_namespaced_custom_object, *args, change.name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        current = None
    if current is not None and current["metadata"].get("deletionTimestamp"):
        return UNINSTALLING
    if change.action == "delete":
        if current is None:
            return "off"
        try:
            custom.delete_namespaced_custom_object(*args, change.name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
        return UNINSTALLING
    body = change.manifest
    assert body is not None  # an "apply" change carries its manifest
    if current is None:
        try:
            custom.create_namespaced_custom_object(*args, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:  # no such resource: k3s's helm-controller has not registered it yet
                return None
            raise
        return "installed"
    same = current.get("spec") == body["spec"] and all(
        (current["metadata"].get("annotations") or {}).get(k) == v
        for k, v in body["metadata"]["annotations"].items()
    )
    if same:
        return "unchanged"
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    custom.replace_namespaced_custom_object(*args, change.name, body, _request_timeout=REQUEST_TIMEOUT)
    return "updated"


def wait_until_ready(plan: Plan, ec2, progress: Progress) -> dict:
    """Run every stage; returns what the setup stage did (operator code, logging level)."""
    waiter = Waiter(plan, ec2)
    try:
        checks = run_stages(waiter.stages(), plan.timeouts, progress)
    finally:
        waiter.close()
    return {**waiter.outcome, "nodes": checks[5].summary, "add_ons": checks[6].summary}


# --- what `up` calls ----------------------------------------------------------------------------


def describe(ec2, instance_ids: list[str]) -> list[dict]:
    """The instances as EC2 describes them now (one paginated call, whatever their number)."""
    found: list[dict] = []
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


def record_controller(ref, controller: dict, region: str, key_file: str | None) -> dict | None:
    """Write controller.yml (0600) for the SSH code: what `up` learned, hand-set fields kept."""
    import yaml

    from clusterous_cli import config
    from clusterous_cli.endpoint import ControllerEndpoint, load_endpoint

    existing = config.read_yaml(ref.controller_file) if ref.controller_file.exists() else {}
    fields = endpoint_fields(controller, region, key_file, existing, read_overrides())
    if not fields.get("host"):
        return None  # nothing to reach yet; the wait says so, a later `up` writes the record
    known = set(ControllerEndpoint.__dataclass_fields__)
    record = {k: str(v) if k == "key_file" else v for k, v in fields.items() if k in known and v is not None}
    config.write_private(ref.controller_file, yaml.safe_dump(record, sort_keys=False))
    load_endpoint(ref)  # the SSH code's reader must accept it (bad overrides are named here)
    return record


def wait_for_cluster(
    ec2,
    ref,
    spec,
    bucket: str,
    instances: list[dict],
    controller_id: str,
    logging_level: int | None,
    timeout: float | None,
) -> dict:
    """`up` without --no-wait: every stage, with a progress line each."""
    import yaml

    from clusterous_provisioner import apply, bootstrap

    inputs = apply.bootstrap_inputs(spec, bucket, "0" * 64, spec.shared_volume_id or "vol-00000000000000000")
    documents = [
        doc for text in bootstrap.render_manifests(inputs).values() for doc in yaml.safe_load_all(text) if doc
    ]
    controller = next(i for i in instances if i["InstanceId"] == controller_id)
    if not ref.controller_file.exists():
        raise Failure(
            f"the controller {controller_id} has no public address to reach it by",
            "re-run `clusterous-k8s up`",
        )
    plan = Plan(
        ref=ref,
        region=spec.region,
        controller=controller,
        members=members_of(instances),
        addons=addons_from_manifests(documents),
        logging_level=logging_level,
        timeouts=timeouts_for(timeout),
        cloud_init_root=str(read_overrides().get("cloud_init_root") or ""),
    )
    with Progress() as progress:
        return wait_until_ready(plan, ec2, progress)
