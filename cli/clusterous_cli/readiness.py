"""`up`'s wait for the cluster inside the instances: stages in order, each with a deadline.

| stage | done when |
| --- | --- |
| host key | the controller's SSH host key, read from its EC2 console output, is pinned |
| ssh | the controller answers SSH with that key (never skipped, never auto-added) |
| cloud-init | cloud-init finished on the controller without errors |
| bootstrap | the controller's bootstrap unit (NFS, k3s) finished a run (it retries until one does) |
| ca hash | every instance is tagged with the hash of k3s' CA, which nodes join with (joinhash.py) |
| api | the k3s API answers `/readyz` through the SSH tunnel |
| setup | the operator's code ConfigMap, the autoscaler (code and manifest), the logging HelmChart (applied or deleted) and `cluster-info` |
| nodes | every instance is a Ready Node; every node carries its `clusterous.io/group` label |
| add-ons | the CRDs are established, the Deployments available, the DaemonSets ready |

A stage that does not finish in time fails (exit 1) naming what is stuck — the node and its
conditions, the pod, its containers and its last events — and says to re-run `up`, which
creates nothing that exists and picks the wait up again.

The checks are pure functions of Kubernetes objects as the API returns them (JSON dicts:
clusterous_provisioner.kubeobjects, and `check_nodes`/`check_addons` here) and are tested alone;
the I/O (EC2 through the provisioner's inventory, SSH, the API through the tunnel) stays in
`Waiter`'s methods, one per stage, and in `wait_for_cluster`, which `up` calls. The engine that
runs the stages is stages.py; the setup stage's writes are addon_setup.py's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clusterous_cli import addon_setup
from clusterous_cli.controller_boot import (
    BOOTSTRAP_UNIT,
    CLOUD_INIT_LOG,
    bootstrap_script,
    cloud_init_script,
    log_tail_command,
    parse_cloud_init,
)
from clusterous_cli.endpoint import ClusterRef
from clusterous_cli.hostkeys import HostKeyChanged
from clusterous_cli.stages import DEFAULT_TIMEOUTS, Check, Progress, Stage, run_stages, timeouts_for
from clusterous_core.errors import Failure
from clusterous_core.names import CLUSTER_INFO, GROUP_LABEL, NAMESPACE
from clusterous_provisioner import inventory
from clusterous_provisioner.kubecalls import REQUEST_TIMEOUT, events_for, get_or_none, json_body, stuck_pods
from clusterous_provisioner.kubeobjects import (
    Member,
    crd_established,
    daemonset_ready,
    deployment_available,
    last_events,
    match_node,
    members_of,
    node_ready,
)

# --- what the node and add-on stages judge (pure) -----------------------------------------------


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
    spot: bool = False  # a group runs on spot: `up` applies the spot watcher
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))


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
        from clusterous_cli import hostkeys
        from clusterous_cli.endpoint import load_endpoint

        endpoint = load_endpoint(self.plan.ref)
        pinned = hostkeys.read_pinned(endpoint.known_hosts, endpoint.host_key_name)
        if pinned:
            return Check(True, f"pinned earlier: {', '.join(k.fingerprint for k in pinned)}")
        instance = self.plan.controller["InstanceId"]
        text = inventory.console_output(self.ec2, instance)
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
        output = self._look(cloud_init_script())
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
            code, out, err = self._connect().run(log_tail_command(), timeout=30)
        except Exception as exc:  # noqa: BLE001
            return f"    (cannot read it: {exc})"
        text = (out or err).decode(errors="replace").rstrip() or "(empty)"
        return "\n".join("    " + line for line in text.splitlines())

    def bootstrap(self) -> Check:
        output = self._look(bootstrap_script())
        if isinstance(output, Check):
            return output
        first, _, journal = output.partition("\n")
        if first.strip() == "done":
            return Check(True, "finished")
        lines = tuple(line for line in journal.splitlines() if line.strip())
        return Check(
            False, f"the bootstrap is still running ({BOOTSTRAP_UNIT} retries until it succeeds)", lines
        )

    def ca_hash(self) -> Check:
        """Read k3s' CA over SSH and tag the cluster's instances with its hash (joinhash.py)."""
        from clusterous_provisioner import joinhash

        try:
            code, out, _ = self._connect().run(joinhash.read_ca_argv(), timeout=60)
        except HostKeyChanged:
            raise
        except Exception as exc:  # noqa: BLE001 - a dropped connection is opened again next time
            self.conn = None
            return Check(False, f"SSH: {_failure_text(exc)}")
        if code != 0 or not out.strip():
            return Check(False, f"k3s has not written its CA ({joinhash.CA_FILE}) yet")
        digest, tagged = joinhash.publish(self.ec2, self.plan.ref.cluster, out)
        return Check(True, f"sha256 {digest[:12]}…, {len(tagged)} instance(s) tagged now")

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

    # -- setup: operator code, autoscaler, logging, cluster-info --------------------------------

    def setup(self) -> Check:
        """Once k3s applied the add-ons, write what `up` sets up in them (addon_setup.py); polled
        again while the logging chart is not served yet or still being uninstalled."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            if get_or_none(core.read_namespace, NAMESPACE) is None:
                return Check(False, f"k3s has not applied the add-ons yet (no namespace {NAMESPACE})")
            info = get_or_none(core.read_namespaced_config_map, CLUSTER_INFO, NAMESPACE)
            if info is None:
                return Check(
                    False, f"k3s has not applied the add-ons yet (no ConfigMap {NAMESPACE}/{CLUSTER_INFO})"
                )
            done = addon_setup.set_up(self.api, info, self.plan.logging_level, self.plan.spot)
        except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel: tried again
            return Check(False, _failure_text(exc))
        logging = done.logging
        if logging is None:
            return Check(False, "the HelmChart resource is not served yet (k3s's helm-controller)")
        if logging == addon_setup.UNINSTALLING:
            self.logging_removed = True
            return Check(False, "the logging release is being uninstalled (k3s's helm-controller)")
        if logging == "off" and self.logging_removed:
            logging = "removed"
        self.outcome["operator_code"] = done.operator_code
        self.outcome["autoscaler"] = done.autoscaler
        self.outcome["logging_level"] = done.logging_level
        return Check(
            True,
            f"operator code {done.operator_code}; autoscaler {done.autoscaler}; "
            f"logging level {done.logging_level} ({logging})",
        )

    # -- nodes and add-ons ---------------------------------------------------------------------

    def nodes(self) -> Check:
        from kubernetes import client

        try:
            nodes = json_body(client.CoreV1Api(self.api).list_node).get("items") or []
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
            crds = {n: get_or_none(ext.read_custom_resource_definition, n) for n in addons.crds}
            deps = {k: get_or_none(apps.read_namespaced_deployment, k[1], k[0]) for k in addons.deployments}
            dss = {k: get_or_none(apps.read_namespaced_daemon_set, k[1], k[0]) for k in addons.daemonsets}
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
            Stage("ca hash", "the k3s CA's hash nodes join with (instance tags)", self.ca_hash),
            Stage("api", "the Kubernetes API through the SSH tunnel", self.api_ready),
            Stage("setup", "operator code, autoscaler, logging and cluster-info", self.setup),
            Stage("nodes", "every node Ready with its group label", self.nodes, self.explain_nodes),
            Stage(
                "add-ons",
                "the add-ons (CRDs, registry, operator, autoscaler, NFS driver)",
                self.addons,
                self.explain_addons,
            ),
        ]


def wait_until_ready(plan: Plan, ec2, progress: Progress) -> dict:
    """Run every stage; returns what the setup stage did (operator code, logging level)."""
    waiter = Waiter(plan, ec2)
    try:
        stages = waiter.stages()
        checks = dict(zip((s.key for s in stages), run_stages(stages, plan.timeouts, progress), strict=True))
    finally:
        waiter.close()
    return {**waiter.outcome, "nodes": checks["nodes"].summary, "add_ons": checks["add-ons"].summary}


# --- what `up` calls ----------------------------------------------------------------------------


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
        spot=inputs.spot,
        timeouts=timeouts_for(timeout),
    )
    with Progress() as progress:
        return wait_until_ready(plan, ec2, progress)
