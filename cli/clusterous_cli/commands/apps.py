"""`convert`, `run`, `quit`: Clusterous environment files (or ClusterApps) on the cluster."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, PARAM_OPTION, cluster_ref

CONVERT_HELP = """Print a Clusterous environment file as a ClusterApp (YAML), offline.

$variables are filled from --param NAME=VALUE and the --cluster-file's parameters; the
`cluster:` section's node groups appear as the clusterous.io/node-groups annotation.

Example: clusterous-k8s convert examples/basic-python/basic-python-env.yml
"""
RUN_HELP = """Run an application: a Clusterous environment file or a ClusterApp YAML.

Copies the `copy:` folders to the shared volume (only what changed), builds each image the
registry does not have yet on the cluster, applies the ClusterApp, shows each component's
progress until Running, then opens the tunnels and prints their messages.

Example: clusterous-k8s run examples/basic-python/basic-python-env.yml
"""
QUIT_HELP = """Stop an application and close its tunnels; the shared volume and images stay.

Example: clusterous-k8s quit basic-python
"""
CLUSTER_FILE_OPTION = typer.Option(
    None, "--cluster-file", help="A cluster file whose `parameters` fill $variables too."
)


def collect_params(param: list[str] | None, cluster_file: Path | None, token_dir: Path | None = None) -> dict:
    """$variable values: the cluster file's `parameters`, then --param (which wins); `$token`
    is the cluster's app token unless given (see `apps.app_token`)."""
    from clusterous_cli import apps, envparams

    params: dict = {}
    if cluster_file is not None:
        from clusterous_core.errors import BadInput
        from clusterous_provisioner.clusterfile import read_cluster_file

        section = read_cluster_file(cluster_file).get("parameters") or {}
        if not isinstance(section, dict):
            raise BadInput(str(cluster_file), "parameters", "a mapping of $variable names to values", section)
        params.update(section)
    params.update(envparams.parse_params(param))
    params.setdefault(apps.TOKEN_PARAM, apps.app_token(token_dir))
    return params


def convert(
    env_file: Path = typer.Argument(..., metavar="ENV_FILE", help="Clusterous environment file (YAML)."),
    param: list[str] = PARAM_OPTION,
    cluster_file: Path = CLUSTER_FILE_OPTION,
) -> None:
    from clusterous_cli import envfile, output

    app = envfile.load_application(env_file, collect_params(param, cluster_file))
    for note in app.notes:
        output.say(f"note: {note}")
    typer.echo(envfile.to_yaml(app), nl=False)


def run(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="Environment file or ClusterApp YAML."),
    param: list[str] = PARAM_OPTION,
    cluster_file: Path = CLUSTER_FILE_OPTION,
    cluster: str | None = CLUSTER_OPTION,
    timeout: float = typer.Option(900, "--timeout", help="Seconds to wait for Running."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Apply and return; no tunnels are opened."),
) -> None:
    from clusterous_cli import envfile, output

    ref = cluster_ref(ctx, cluster)
    app = envfile.load_application(file, collect_params(param, cluster_file, ref.directory))  # before any I/O
    for note in app.notes:
        output.say(f"note: {note}")
    run_application(ref, app, timeout=timeout, wait=not no_wait)


def run_application(ref, app, *, timeout: float = 900, wait: bool = True) -> list[tuple[int, str]]:
    """Copy, build, apply, follow, tunnel: the body of `run` (and of `up` with environment_file)."""
    from clusterous_cli import apps, builds, kubeapi, output, scaleup, ssh, transfer
    from clusterous_cli.endpoint import load_endpoint

    load_endpoint(ref)  # a missing controller record is bad input, before any connection
    contexts = [builds.check_context(image.context, str(app.source)) for image in app.images]
    api = kubeapi.api_client(ref)
    for warning in apps.check_on_cluster(api, str(app.source), app.clusterapp):  # before any change
        output.say(warning)
    spent = scaleup.budget_warning(api)  # 80% of the budget or more (docs/elastic.md, "Budget")
    if spent:
        output.say(spent)
    with ssh.connect_cluster(ref) as conn:
        for copy in app.copies:
            report = transfer.put(conn, copy.local, copy.remote)
            output.say(
                f"copied {copy.local.name}/ to the shared volume ({copy.remote}/): "
                f"{len(report.transferred)} file(s) sent, {report.unchanged} unchanged"
            )
        built = [
            builds.ensure_built(conn, api, context, image.name, image.tag, output.say)
            for image, context in zip(app.images, contexts, strict=True)
        ]
    level = apps.ensure_pod_security(api, app.clusterapp)
    if level:
        output.say(f"namespace default: Pod Security {level} enforced (docs/clusterapp.md)")
    clusterapp = builds.pin_built_images(app.clusterapp, built)  # nodes run exactly what was built
    verb = apps.apply(api, clusterapp)
    output.say(f"ClusterApp {app.name} {verb}")
    if not wait:
        output.say("not waiting: follow it with `clusterous-k8s status`; tunnels open with `run` again")
        return []
    # groups at zero first: the autoscaler grows them for the pods just created (docs/elastic.md)
    waited = scaleup.wait_for_groups(api, clusterapp, output.say, timeout)
    apps.wait_until_running(api, app.name, output.say, max(1.0, timeout - waited))
    opened = apps.open_tunnels(ref, api, app.clusterapp)
    for _, message in opened:
        typer.echo(message)
    return opened


def quit_app(
    ctx: typer.Context,
    app: str = typer.Argument(None, metavar="APP", help="Application name [the only one running]."),
    tunnels_only: bool = typer.Option(False, "--tunnels-only", help="Close the tunnels, keep the app."),
    cluster: str | None = CLUSTER_OPTION,
) -> None:
    from clusterous_cli import apps, kubeapi, output
    from clusterous_cli.endpoint import load_endpoint
    from clusterous_core.errors import BadInput

    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    record = apps.read_record(ref)
    api = None
    if app is None:
        if tunnels_only:
            names = sorted(record)
        else:
            api = kubeapi.api_client(ref)
            names = [a["metadata"]["name"] for a in apps.list_apps(api)]
        if len(names) != 1:
            raise BadInput("APP", None, f"the application to stop (running: {', '.join(names) or 'none'})")
        app = names[0]
    closed = apps.close_tunnels(ref, app)
    if closed:
        output.say(f"closed the tunnel(s) on localhost:{', '.join(str(p) for p in closed)}")
    if tunnels_only:
        if not closed:
            output.say(f"{app} had no open tunnels")
        return
    gone = apps.delete(api or kubeapi.api_client(ref), app)
    if gone is None:
        if not closed:
            raise BadInput("APP", None, "a running application (see `clusterous-k8s status`)", app)
        output.say(f"no ClusterApp {app} on the cluster")
    elif gone:
        output.say(f"{app} stopped; the shared volume and the images are kept")
    else:
        output.say(f"{app} is being removed (the operator is stopping its components)")
