"""`kubeconfig`, `connect COMPONENT`, `logs COMPONENT`: the cluster's Kubernetes API through the SSH tunnel."""

from __future__ import annotations

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, NAMESPACE_OPTION, cluster_ref

KUBECONFIG_HELP = (
    "Write (or update) the context clusterous-<cluster> in your kubeconfig, going through the SSH tunnel.\n\n"
    "The file is the first entry of $KUBECONFIG, else ~/.kube/config; it is written with mode 0600.\n"
    "The tunnel is started if it was not running, so kubectl works right away.\n\n"
    "Example: clusterous-k8s kubeconfig && kubectl get nodes"
)
CONNECT_HELP = (
    "Open an interactive shell in a pod of a component (Kubernetes exec through the tunnel).\n\n"
    "The shell's exit code becomes this command's; stdin may be a pipe (it ends the shell's input).\n\n"
    "Example: clusterous-k8s connect master; echo 'ls /data' | clusterous-k8s connect master"
)
LOGS_HELP = (
    "Print the logs of a component's pod (--all: every pod, each line prefixed with the pod's name).\n\n"
    "Example: clusterous-k8s logs engine --all -f"
)


def kubeconfig(
    ctx: typer.Context,
    cluster: str | None = CLUSTER_OPTION,
    switch: bool = typer.Option(True, "--switch/--no-switch", help="Make it kubectl's current context."),
    refresh: bool = typer.Option(False, "--refresh", help="Read the credentials from the controller again."),
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import kubeapi, output
    from clusterous_cli import kubeconfig as kubeconfigs

    ref = cluster_ref(ctx, cluster)
    credentials, port = kubeapi.credentials(ref, refresh=refresh)
    path = kubeconfigs.write(credentials, ref.cluster, switch)
    name = kubeconfigs.context_name(ref.cluster)
    output.say(f"context {name} in {path} -> https://127.0.0.1:{port} (SSH tunnel to {ref.cluster})")
    if as_json:
        output.print_json({"context": name, "kubeconfig": str(path), "api_local_port": port})
        return
    typer.echo(name)


def _first_pod(ref, component: str, namespace: str):
    from clusterous_cli import kubeapi
    from clusterous_core.errors import Failure

    api = kubeapi.api_client(ref)
    pods = kubeapi.component_pods(api, component, namespace)
    if not pods:
        raise Failure(
            f"no pods of component '{component}' in namespace '{namespace}'",
            "check the app runs: `clusterous-k8s status`",
        )
    return api, pods


def connect(
    ctx: typer.Context,
    component: str = typer.Argument(..., metavar="COMPONENT", help="Component name (as in the app file)."),
    cluster: str | None = CLUSTER_OPTION,
    namespace: str = NAMESPACE_OPTION,
    command: str = typer.Option(
        "sh -c 'command -v bash >/dev/null && exec bash || exec sh'",
        "--command",
        help="What to run in the pod.",
    ),
) -> None:
    import shlex

    from clusterous_cli import kubeapi
    from clusterous_cli.terminal import interactive_exec

    ref = cluster_ref(ctx, cluster)
    api, pods = _first_pod(ref, component, namespace)
    pod = pods[0]
    try:
        code = interactive_exec(api, pod.metadata.name, namespace, shlex.split(command))
    except Exception as exc:  # noqa: BLE001 - websocket and API errors alike
        raise kubeapi.api_failure(f"connecting to {pod.metadata.name}", exc) from None
    raise typer.Exit(code)


def logs(
    ctx: typer.Context,
    component: str = typer.Argument(..., metavar="COMPONENT", help="Component name (as in the app file)."),
    cluster: str | None = CLUSTER_OPTION,
    namespace: str = NAMESPACE_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    all_pods: bool = typer.Option(False, "--all", help="Every pod of the component, not just the first."),
    tail: int = typer.Option(None, "--tail", help="Only the last N lines of each pod."),
) -> None:
    import sys
    import threading

    from kubernetes import client

    from clusterous_cli import kubeapi

    ref = cluster_ref(ctx, cluster)
    api, pods = _first_pod(ref, component, namespace)
    core = client.CoreV1Api(api)
    chosen = pods if all_pods else pods[:1]
    lock = threading.Lock()

    def stream(pod) -> None:
        name = pod.metadata.name
        prefix = f"[{name}] " if all_pods else ""
        try:
            response = core.read_namespaced_pod_log(
                name, namespace, follow=follow, tail_lines=tail, _preload_content=False
            )
            pending = b""
            for chunk in response.stream(65536):  # type: ignore[attr-defined]  # _preload_content=False: a urllib3 response
                pending += chunk
                *lines, pending = pending.split(b"\n")
                with lock:
                    for line in lines:
                        sys.stdout.write(prefix + line.decode(errors="replace") + "\n")
                    sys.stdout.flush()
            if pending:
                with lock:
                    sys.stdout.write(prefix + pending.decode(errors="replace") + "\n")
        except Exception as exc:  # noqa: BLE001
            raise kubeapi.api_failure(f"reading the logs of {name}", exc) from None

    if len(chosen) == 1:
        stream(chosen[0])
        return
    errors: list[BaseException] = []

    def guarded(pod) -> None:
        try:
            stream(pod)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(p,), daemon=True) for p in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
