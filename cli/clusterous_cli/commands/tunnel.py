"""`tunnel ls/add/rm/stop`: local ports forwarded to the cluster by the background supervisor."""

from __future__ import annotations

from typing import Any

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, NAMESPACE_OPTION, cluster_ref

app = typer.Typer(
    help=(
        "Forward local ports to the cluster through the controller (self-healing SSH tunnels).\n\n"
        "Example: clusterous-k8s tunnel add 8888:master:8888"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: flags without placeholders, every [default] shown
)


@app.command(
    "ls", help="List tunnels and whether they are connected.\n\nExample: clusterous-k8s tunnel ls --json"
)
def list_tunnels(
    ctx: typer.Context,
    cluster: str | None = CLUSTER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import output, tunnels

    ref = cluster_ref(ctx, cluster)
    desired = tunnels.read_desired(ref)
    pid = tunnels.supervisor_pid(ref)
    status = tunnels.read_status(ref) if pid else {}
    rows: list[dict[str, Any]] = []
    if desired.api_local:
        rows.append({"local": desired.api_local, "name": tunnels.API_NAME, "target": "controller:api"})
    rows += [{"local": t.local, "name": t.name, "target": f"{t.host}:{t.port}"} for t in desired.tunnels]
    for row in rows:
        state = tunnels.port_state(status, row["local"]) if pid else None
        row["state"] = (
            ("up" if status.get("connected") else "reconnecting")
            if state == "listening"
            else (state or "stopped")
        )
    if as_json:
        output.print_json(
            {
                "cluster": ref.cluster,
                "supervisor_pid": pid,
                "connected": bool(status.get("connected")),
                "transport": status.get("transport"),
                "last_error": status.get("last_error"),
                "tunnels": rows,
            }
        )
        return
    if not rows:
        output.say("no tunnels: add one with `clusterous-k8s tunnel add LOCAL:COMPONENT:PORT`")
        return
    output.print_table(
        f"tunnels of {ref.cluster}",
        ["local", "to", "target", "state"],
        [(f"localhost:{r['local']}", r["name"], r["target"], r["state"]) for r in rows],
    )
    if status.get("last_error"):
        output.say(f"last error: {status['last_error']}")


@app.command(
    "add",
    help=(
        "Forward a local port: LOCAL:COMPONENT:PORT reaches a component's Service (looked up through\n"
        "the Kubernetes API); LOCAL:HOST:PORT with an IP address or dotted name reaches that address\n"
        "as the controller sees it. LOCAL must be 1024-65535 and free.\n\n"
        "Example: clusterous-k8s tunnel add 8888:master:8888"
    ),
)
def add(
    ctx: typer.Context,
    spec: str = typer.Argument(..., metavar="SPEC", help="LOCAL:COMPONENT:PORT or LOCAL:HOST:PORT."),
    cluster: str | None = CLUSTER_OPTION,
    next_free: bool = typer.Option(False, "--next-free", help="If LOCAL is taken, use the next free port."),
    namespace: str = NAMESPACE_OPTION,
) -> None:
    from clusterous_cli import output, tunnels
    from clusterous_core.errors import BadInput

    parsed = tunnels.parse_spec(spec)
    ref = cluster_ref(ctx, cluster)
    from clusterous_cli.endpoint import load_endpoint

    load_endpoint(ref)  # a missing or broken controller record is reported before anything changes
    host = parsed.target
    if not parsed.raw:  # before taking tunnels.yml's lock: the lookup may start the API tunnel
        from clusterous_cli import kubeapi

        host = kubeapi.resolve_component(ref, parsed.target, namespace)
    chosen: list[int] = []

    def record(desired: tunnels.Desired) -> None:
        ours = {t.local for t in desired.tunnels} | ({desired.api_local} if desired.api_local else set())
        local = parsed.local
        if local in ours:
            if not next_free:
                raise BadInput(
                    "tunnel spec", "LOCAL", f"a port no tunnel uses yet (`tunnel rm {local}` frees it)", local
                )
            local = tunnels.next_free_port(local, ours)
        elif not tunnels.bindable(local):
            if not next_free:
                raise BadInput(
                    "tunnel spec",
                    "LOCAL",
                    "a free local port: another program listens on it (pick another, or pass --next-free)",
                    local,
                )
            local = tunnels.next_free_port(local, ours)
        component = None if parsed.raw else parsed.target
        desired.tunnels.append(tunnels.Tunnel(local=local, host=host, port=parsed.port, component=component))
        chosen.append(local)

    tunnels.update_desired(ref, record)
    local = chosen[0]
    try:
        tunnels.apply(ref, None, [local])
    except Exception:

        def forget(desired: tunnels.Desired) -> None:
            desired.tunnels = [t for t in desired.tunnels if t.local != local]

        tunnels.update_desired(ref, forget)
        raise
    output.say(f"localhost:{local} -> {parsed.target}:{parsed.port} (through {ref.cluster}'s controller)")
    typer.echo(f"http://localhost:{local}")


@app.command("rm", help="Stop forwarding a local port.\n\nExample: clusterous-k8s tunnel rm 8888")
def remove(
    ctx: typer.Context,
    local: int = typer.Argument(..., metavar="LOCAL", help="The local port of the tunnel."),
    cluster: str | None = CLUSTER_OPTION,
) -> None:
    from clusterous_cli import output, tunnels
    from clusterous_core.errors import BadInput

    ref = cluster_ref(ctx, cluster)

    def drop(desired: tunnels.Desired) -> None:
        if local == desired.api_local:
            desired.api_local = None
        elif any(t.local == local for t in desired.tunnels):
            desired.tunnels = [t for t in desired.tunnels if t.local != local]
        else:
            known = ", ".join(str(p) for p in [desired.api_local, *[t.local for t in desired.tunnels]] if p)
            raise BadInput("LOCAL", None, f"the local port of a tunnel (known: {known or 'none'})", local)

    tunnels.update_desired(ref, drop)
    if tunnels.supervisor_pid(ref):
        tunnels.apply(ref, None, [])
    output.say(f"removed the tunnel on localhost:{local}")


@app.command(
    "stop",
    help="Stop the tunnel supervisor (tunnels stay recorded; `tunnel start` resumes them).\n\n"
    "Example: clusterous-k8s tunnel stop",
)
def stop(ctx: typer.Context, cluster: str = CLUSTER_OPTION) -> None:
    from clusterous_cli import output, tunnels

    pid = tunnels.stop_supervisor(cluster_ref(ctx, cluster))
    output.say(
        f"stopped the tunnel supervisor (pid {pid})" if pid else "the tunnel supervisor was not running"
    )


@app.command(
    "start",
    help="Start the tunnel supervisor for the recorded tunnels (other commands do this as needed).\n\n"
    "Example: clusterous-k8s tunnel start",
)
def start(ctx: typer.Context, cluster: str = CLUSTER_OPTION) -> None:
    from clusterous_cli import output, tunnels
    from clusterous_cli.endpoint import load_endpoint

    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    desired = tunnels.update_desired(ref, lambda desired: None)  # a fresh mtime: the supervisor answers it
    ports = [t.local for t in desired.tunnels] + ([desired.api_local] if desired.api_local else [])
    tunnels.apply(ref, None, ports)
    tunnels.wait_for(
        ref, lambda s: s.get("connected"), 20, "the SSH tunnel to the controller is not connected"
    )
    output.say(f"tunnel supervisor running (pid {tunnels.supervisor_pid(ref)}), {len(ports)} tunnel(s)")
