"""Running applications on a cluster: apply a ClusterApp, follow it to Running, tunnel to it, quit it.

The Kubernetes API is reached the way every command reaches it (kubeapi: the SSH tunnel to the
controller's 6443); the operator does the rest. Which tunnels belong to which application is
recorded in the cluster's config directory (`apps.yml`), so `quit` closes exactly those, even
when the ClusterApp is already gone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clusterous_cli.endpoint import ClusterRef
from clusterous_core.errors import Failure
from clusterous_core.names import GROUP, GROUP_LABEL, PLURAL, VERSION

NAMESPACE = "default"
RECORD_FILE = "apps.yml"
TOKEN_FILE = "app-token"
TOKEN_PARAM = "token"
CONFLICT_ATTEMPTS = 5  # a read-modify-replace overtaken by another writer (409) is redone


# --- the ClusterApp --------------------------------------------------------------------------


def app_token(directory: Path | None) -> str:
    """`$token` of environment files: a secret for the web UIs apps serve through their tunnels
    (the Dask example's Jupyter; its tunnel message shows it in the URL). A UI bound to 0.0.0.0
    in a pod has no host check, so without a token any web page open on the laptop could reach
    it through the tunnel. Kept in the cluster's config directory (0600), so each `run` gives
    the pods the same one (no restart); without a cluster (`convert`) a fresh one."""
    import secrets

    from clusterous_cli import config

    if directory is None:
        return secrets.token_urlsafe(24)
    path = directory / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    config.write_private(path, token + "\n")
    return token


def _custom(api):
    from kubernetes import client

    return client.CustomObjectsApi(api)


def apply(api, clusterapp: dict, namespace: str = NAMESPACE) -> str:
    """Create the ClusterApp, or replace its spec and metadata if it exists: 'created' or 'updated'."""
    from kubernetes.client.exceptions import ApiException

    from clusterous_cli.kubeapi import api_failure

    name = clusterapp["metadata"]["name"]
    body = {**clusterapp, "metadata": {**clusterapp["metadata"], "namespace": namespace}}
    custom = _custom(api)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise api_failure(f"creating ClusterApp {name}", exc) from None
    except Exception as exc:  # noqa: BLE001 - connection errors
        raise api_failure(f"creating ClusterApp {name}", exc) from None
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            if current["metadata"].get("deletionTimestamp"):
                raise Failure(
                    f"ClusterApp {name} is still being removed",
                    "wait for `quit` to finish, then run it again",
                )
            current["spec"] = body["spec"]
            annotations = current["metadata"].setdefault("annotations", {}) or {}
            annotations.update(body["metadata"].get("annotations") or {})
            current["metadata"]["annotations"] = annotations
            custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, current)
            break
        except Failure:
            raise
        except ApiException as exc:
            # The operator writes the app's status all the time: read it afresh and try again.
            if exc.status != 409 or attempt == CONFLICT_ATTEMPTS - 1:
                raise api_failure(f"updating ClusterApp {name}", exc) from None
        except Exception as exc:  # noqa: BLE001
            raise api_failure(f"updating ClusterApp {name}", exc) from None
    return "updated"


def check_on_cluster(api, source: str, clusterapp: dict, namespace: str = NAMESPACE) -> list[str]:
    """The operator's own checks against the cluster's nodes and the pods already on them
    (`check_against_cluster`: groups exist, an explicit cpu or memory fits a node), before
    anything is copied, built or applied: BadInput naming `source` and the field. Returns
    warnings: node groups whose nodes no application uses (they sit idle and cost money)."""
    from clusterous_cli import scaleup
    from clusterous_cli.envfile import source_field
    from clusterous_cli.kubeapi import api_failure
    from clusterous_core.errors import BadInput
    from clusterous_operator.placement import node_groups
    from clusterous_operator.reconcile import check_against_cluster
    from clusterous_operator.spec import SpecError, parse_app

    try:
        nodes, pods = _list(api, "list_node"), _list(api, "list_pod_for_all_namespaces")
        elastic = scaleup.elastic_groups(api)  # groups that exist at zero nodes
        others = [
            a for a in list_apps(api, namespace) if a["metadata"]["name"] != clusterapp["metadata"]["name"]
        ]
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise api_failure("reading the cluster's nodes and pods", exc) from None
    body = {**clusterapp, "metadata": {**clusterapp["metadata"], "namespace": namespace}}
    try:
        check_against_cluster(parse_app(body), nodes, pods, elastic)
    except SpecError as error:
        raise BadInput(source, source_field(clusterapp, error.field), error.expected, error.got) from None
    used = {c.get("group") for a in [body, *others] for c in (a.get("spec") or {}).get("components") or []}
    warnings = []
    for group in sorted(node_groups(nodes) - used):
        count = sum(
            1 for n in nodes if ((n.get("metadata") or {}).get("labels") or {}).get(GROUP_LABEL) == group
        )
        warnings.append(
            f"warning: no component uses node group {group}: its {count} node(s) sit idle and cost "
            f"money (`clusterous-k8s scale {group} 0` removes them)"
        )
    return warnings


PSA = "pod-security.kubernetes.io/"


def pod_security_labels(clusterapps: list[dict]) -> dict[str, str]:
    """The Pod Security labels of the application namespace: `baseline` enforced (what every
    application pod meets: no host namespaces, ports, paths or privileges) unless an app there
    asks for hostNetwork (`docker_network: host`), which baseline forbids: then `privileged`
    is enforced while `baseline` still warns and audits, so such pods are visible."""
    host = any(
        c.get("hostNetwork") for app in clusterapps for c in (app.get("spec") or {}).get("components") or []
    )
    level = "privileged" if host else "baseline"
    return {f"{PSA}enforce": level, f"{PSA}warn": "baseline", f"{PSA}audit": "baseline"}


def ensure_pod_security(api, clusterapp: dict, namespace: str = NAMESPACE) -> str | None:
    """Label the namespace for this app and the others there (one patch, only on a change);
    returns the enforced level when it changed."""
    from kubernetes import client

    from clusterous_cli.kubeapi import api_failure

    name = clusterapp["metadata"]["name"]
    others = [a for a in list_apps(api, namespace) if a["metadata"]["name"] != name]
    wanted = pod_security_labels([clusterapp, *others])
    core = client.CoreV1Api(api)
    try:
        current = (core.read_namespace(namespace).metadata or client.V1ObjectMeta()).labels or {}
        if all(current.get(k) == v for k, v in wanted.items()):
            return None
        core.patch_namespace(namespace, {"metadata": {"labels": wanted}})
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise api_failure(f"labelling namespace {namespace} for Pod Security", exc) from None
    return wanted[f"{PSA}enforce"]


def _list(api, method: str) -> list[dict]:
    """Every object a CoreV1Api list call returns, as plain JSON (what the operator sees)."""
    import json

    from kubernetes import client

    response = getattr(client.CoreV1Api(api), method)(_preload_content=False)
    return json.loads(response.data).get("items") or []


def get(api, name: str, namespace: str = NAMESPACE) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    from clusterous_cli.kubeapi import api_failure

    try:
        return _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise api_failure(f"reading ClusterApp {name}", exc) from None
    except Exception as exc:  # noqa: BLE001
        raise api_failure(f"reading ClusterApp {name}", exc) from None


def list_apps(api, namespace: str = NAMESPACE) -> list[dict]:
    from clusterous_cli.kubeapi import api_failure

    try:
        listed = _custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    except Exception as exc:  # noqa: BLE001
        raise api_failure("listing the applications", exc) from None
    return sorted(listed.get("items") or [], key=lambda a: a["metadata"]["name"])


def summary(app: dict) -> dict:
    """Phase and components ready/desired, as `status` and `run` show them."""
    from clusterous_operator.schema import Phase

    status = app.get("status") or {}
    return {
        "name": app["metadata"]["name"],
        "phase": status.get("phase") or Phase.PENDING.value,
        "ready": status.get("ready") or "0/?",
        "message": status.get("message") or "waiting for the operator",
        "components": [
            {
                "name": c.get("name"),
                "state": c.get("state"),
                "ready": c.get("ready", 0),
                "desired": c.get("desired", 0),
                "message": c.get("message", ""),
            }
            for c in status.get("components") or []
        ],
    }


def wait_until_running(
    api, name: str, say: Callable[[str], None], timeout: float, namespace: str = NAMESPACE
) -> dict:
    """Print each component's progress as it changes, until phase Running.

    Failed (the operator refuses the spec) ends at once with its reason; anything else that
    does not reach Running within `timeout` ends with the status message, which names the
    blocker (not enough CPU, no nodes in a group, containers crashing) and what to do.
    """
    from clusterous_cli.kubeapi import api_failure
    from clusterous_operator.schema import Phase
    from clusterous_provisioner.kubecalls import watch_objects

    shown: dict[str, str] = {}
    observed, info = None, None
    try:
        for apps_now in watch_objects(
            _custom(api).list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout=timeout,
        ):
            app = apps_now.get(name)
            if app is None:
                raise Failure(f"ClusterApp {name} disappeared while starting", "was it removed with `quit`?")
            info = summary(app)
            generation = app["metadata"].get("generation")
            current = (app.get("status") or {}).get("observedGeneration") in (None, generation)
            for component in info["components"]:
                line = (
                    f"  {component['name']}: {component['ready']}/{component['desired']} "
                    f"{component['state']}: {component['message']}"
                )
                if shown.get(component["name"]) != line:
                    shown[component["name"]] = line
                    say(line)
            if current and info["phase"] != observed:
                observed = info["phase"]
                say(f"{name}: {info['phase']} ({info['ready']} ready)")
            if current and info["phase"] == Phase.RUNNING:
                return info
            if current and info["phase"] == Phase.FAILED:
                raise Failure(f"{name} cannot run: {info['message']}", "fix the file and run it again")
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise api_failure(f"following ClusterApp {name}", exc) from None
    phase, ready, message = (info["phase"], info["ready"], info["message"]) if info else ("unknown", "?", "")
    raise Failure(
        f"{name} is not running after {int(timeout)} s ({phase}, {ready} ready): {message}",
        f"it keeps trying: follow it with `clusterous-k8s status`, or `clusterous-k8s quit {name}`",
    )


def delete(api, name: str, namespace: str = NAMESPACE, timeout: float = 60.0) -> bool | None:
    """Remove the ClusterApp: None when there was none, True once gone, False if still finalizing."""
    from kubernetes.client.exceptions import ApiException

    from clusterous_cli.kubeapi import api_failure

    try:
        _custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise api_failure(f"removing ClusterApp {name}", exc) from None
    except Exception as exc:  # noqa: BLE001
        raise api_failure(f"removing ClusterApp {name}", exc) from None
    from clusterous_provisioner.kubecalls import watch_objects

    try:
        for apps_now in watch_objects(
            _custom(api).list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout=timeout,
        ):
            if name not in apps_now:
                return True
    except Exception as exc:  # noqa: BLE001
        raise api_failure(f"removing ClusterApp {name}", exc) from None
    return False


# --- tunnels ---------------------------------------------------------------------------------


def read_record(ref: ClusterRef) -> dict:
    from clusterous_cli import config

    path = ref.directory / RECORD_FILE
    data = config.read_yaml(path) if path.exists() else {}
    return data.get("apps") or {}


def write_record(ref: ClusterRef, apps: dict) -> None:
    import yaml

    from clusterous_cli import config

    config.write_private(ref.directory / RECORD_FILE, yaml.safe_dump({"apps": apps}, sort_keys=True))


def fill_message(message: str | None, local: int) -> str:
    """Clusterous' placeholders: {url} is the local URL, {port} the local port."""
    url = f"http://localhost:{local}"
    text = message if message is not None else "{url}"
    return text.replace("{url}", url).replace("{port}", str(local))


def component_address(api, app: str, component: str, namespace: str = NAMESPACE) -> str:
    """Where the controller reaches a component: its Service's ClusterIP, else a ready pod's IP."""
    from kubernetes import client

    from clusterous_cli.kubeapi import api_failure

    core = client.CoreV1Api(api)
    service = f"{app}-{component}"
    try:
        found = core.read_namespaced_service(service, namespace)
        ip = found.spec.cluster_ip if found.spec else None
        if ip and ip != "None":
            return ip
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"clusterous.io/app={app},clusterous.io/component={component}"
        ).items
    except Exception as exc:  # noqa: BLE001
        raise api_failure(f"looking up {service}", exc) from None
    for pod in pods:
        if pod.status and pod.status.pod_ip and pod.status.phase == "Running":
            return pod.status.pod_ip
    raise Failure(f"no address for {service} yet", "open it later with `clusterous-k8s tunnel add`")


def open_tunnels(ref: ClusterRef, api, clusterapp: dict, namespace: str = NAMESPACE) -> list[tuple[int, str]]:
    """Forward each tunnel of the app (a taken local port moves to the next free one);
    returns (local port, message with {url}/{port} filled) in the file's order."""
    from clusterous_cli import tunnels

    name = clusterapp["metadata"]["name"]
    wanted = (clusterapp.get("spec") or {}).get("tunnels") or []
    hosts = [component_address(api, name, tunnel["component"], namespace) for tunnel in wanted]
    record = read_record(ref)
    previous = set((record.get(name) or {}).get("tunnels") or [])
    opened: list[tuple[int, str]] = []

    def replace_app_tunnels(desired: tunnels.Desired) -> None:
        """Under tunnels.yml's lock: other commands' tunnels added meanwhile are kept."""
        opened.clear()
        desired.tunnels = [t for t in desired.tunnels if t.local not in previous]
        taken = {t.local for t in desired.tunnels} | ({desired.api_local} if desired.api_local else set())
        for tunnel, host in zip(wanted, hosts, strict=True):
            local = tunnel["localPort"]
            if local in taken or (local not in previous and not tunnels.bindable(local)):
                local = tunnels.next_free_port(local + 1, taken)
            desired.tunnels.append(
                tunnels.Tunnel(
                    local=local, host=host, port=tunnel["port"], component=f"{name}-{tunnel['component']}"
                )
            )
            taken.add(local)
            opened.append((local, fill_message(tunnel.get("message"), local)))

    tunnels.update_desired(ref, replace_app_tunnels)
    record[name] = {"namespace": namespace, "tunnels": [port for port, _ in opened]}
    write_record(ref, record)
    tunnels.apply(ref, None, [port for port, _ in opened])
    return opened


def close_tunnels(ref: ClusterRef, name: str) -> list[int]:
    """Stop forwarding the app's tunnels and forget them; the local ports they used."""
    from clusterous_cli import tunnels

    record = read_record(ref)
    ports = list((record.pop(name, None) or {}).get("tunnels") or [])
    dropped: list[bool] = []

    def drop_app_tunnels(desired: tunnels.Desired) -> None:
        before = len(desired.tunnels)
        desired.tunnels = [t for t in desired.tunnels if t.local not in ports]
        dropped.append(len(desired.tunnels) != before)

    tunnels.update_desired(ref, drop_app_tunnels)
    if dropped[0] and tunnels.supervisor_pid(ref):
        tunnels.apply(ref, None, [])
    write_record(ref, record)
    return ports


# --- for `status` ----------------------------------------------------------------------------


def status_section(ref: ClusterRef) -> dict:
    """Applications (phase, components ready/desired) and open tunnels, for `status`.

    Never fails `status`: an unreachable cluster is reported in `applications_error`.
    """
    from clusterous_cli import kubeapi, tunnels
    from clusterous_core.errors import ClusterousError

    if not ref.controller_file.exists():
        return {}
    record = read_record(ref)
    owner = {port: app for app, entry in record.items() for port in entry.get("tunnels") or []}
    desired = tunnels.read_desired(ref)
    pid = tunnels.supervisor_pid(ref)
    state = tunnels.read_status(ref) if pid else {}
    section: dict = {
        "tunnels": [
            {
                "local": t.local,
                "to": t.name,
                "application": owner.get(t.local),
                "state": "up"
                if pid and tunnels.port_state(state, t.local) == "listening" and state.get("connected")
                else "down",
            }
            for t in desired.tunnels
        ]
    }
    try:
        section["applications"] = [summary(a) for a in list_apps(kubeapi.api_client(ref))]
    except ClusterousError as exc:
        section["applications"] = []
        section["applications_error"] = exc.render().splitlines()[0]
    return section


def status_for(profile_option: str | None, cluster: str) -> dict:
    """`status_section` for a cluster named on the command line (the hook `status` calls)."""
    from clusterous_cli.endpoint import resolve_cluster

    return status_section(resolve_cluster(profile_option, cluster))


def print_status(data: dict) -> None:
    """The applications and tunnels part of `status`, for people."""
    from clusterous_cli import output

    if "applications" not in data:
        return
    if data.get("applications_error"):
        print(f"applications: unknown ({data['applications_error']})")
    elif not data["applications"]:
        print("applications: none (start one with `clusterous-k8s run FILE`)")
    else:
        output.print_table(
            "applications",
            ["application", "phase", "ready", "components (ready/desired)", "message"],
            [
                (
                    a["name"],
                    a["phase"],
                    a["ready"],
                    ", ".join(f"{c['name']} {c['ready']}/{c['desired']}" for c in a["components"]),
                    a["message"],
                )
                for a in data["applications"]
            ],
        )
    for tunnel in data.get("tunnels") or []:
        owner = f" ({tunnel['application']})" if tunnel.get("application") else ""
        print(f"tunnel: localhost:{tunnel['local']} -> {tunnel['to']}{owner}: {tunnel['state']}")
