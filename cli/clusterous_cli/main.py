"""The `clusterous-k8s` command: a typer app whose commands import heavy libraries lazily.

Every command reports problems through the shared error model (clusterous_core.errors):
bad input exits 2, failures exit 1, neither prints a traceback unless --verbose, which also turns
on debug logging on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import typer

from clusterous_cli.commands import apps as apps_cmd
from clusterous_cli.commands import budget as budget_cmd
from clusterous_cli.commands import cluster as cluster_cmd
from clusterous_cli.commands import hostkey as hostkey_cmd
from clusterous_cli.commands import images as images_cmd
from clusterous_cli.commands import kube as kube_cmd
from clusterous_cli.commands import logging_cmd
from clusterous_cli.commands import nodes as nodes_cmd
from clusterous_cli.commands import profile as profile_cmd
from clusterous_cli.commands import render as render_cmd
from clusterous_cli.commands import setup as setup_cmd
from clusterous_cli.commands import status as status_cmd
from clusterous_cli.commands import tunnel as tunnel_cmd
from clusterous_cli.commands import volume as volume_cmd
from clusterous_cli.commands import volumes as volumes_cmd

HELP = """Private compute clusters on AWS for Docker-based master/worker applications.

Example: clusterous-k8s setup --region eu-west-1
"""

app = typer.Typer(
    name="clusterous-k8s",
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: flags without placeholders, every [default] shown
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True)
class Options:
    """Global options every command can read from ctx.obj."""

    profile: str | None
    verbose: bool


DISTRIBUTION = "clusterous-k8s"
# --verbose: our own loggers at DEBUG; the libraries' at INFO (boto's credential source, paramiko's
# handshake) or WARNING (urllib3's and the kubernetes client's DEBUG carry request and response bodies).
VERBOSE_LEVELS = {
    "clusterous": logging.DEBUG,
    "clusterous_cli": logging.DEBUG,
    "clusterous_provisioner": logging.DEBUG,
    "clusterous_operator": logging.DEBUG,
    "botocore": logging.INFO,
    "boto3": logging.INFO,
    "paramiko": logging.INFO,
    "urllib3": logging.WARNING,
    "kubernetes": logging.WARNING,
}


def version() -> str:
    """The installed distribution's version: pyproject.toml's `version` is the only place it is written."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "unknown (not installed)"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {version()}")
        raise typer.Exit()


@contextlib.contextmanager
def debug_logging() -> Iterator[None]:
    """Log records of VERBOSE_LEVELS on stderr for the length of one command, then as before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    before = {name: logging.getLogger(name).level for name in VERBOSE_LEVELS}
    for name, level in VERBOSE_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


@app.callback()
def root(
    ctx: typer.Context,
    profile: str = typer.Option(
        None, "--profile", "-p", envvar="CLUSTEROUS_K8S_PROFILE", help="Configuration profile to use."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging on stderr, and the traceback of an error."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = Options(profile=profile, verbose=verbose)
    if verbose:
        ctx.with_resource(debug_logging())


app.command("setup", help=setup_cmd.HELP)(setup_cmd.setup)
app.add_typer(profile_cmd.app, name="profile")
app.command("up", help=cluster_cmd.UP_HELP)(cluster_cmd.up)
app.command("down", help=cluster_cmd.DOWN_HELP)(cluster_cmd.down)
app.command("status", help=status_cmd.STATUS_HELP)(status_cmd.status)
app.command("clusters", help=status_cmd.CLUSTERS_HELP)(status_cmd.clusters)
app.command("workon", help=status_cmd.WORKON_HELP)(status_cmd.workon)
app.command("scale", help=nodes_cmd.SCALE_HELP)(nodes_cmd.scale)
app.command("add-nodes", help=nodes_cmd.ADD_HELP)(nodes_cmd.add_nodes)
app.command("rm-nodes", help=nodes_cmd.RM_HELP)(nodes_cmd.rm_nodes)
app.add_typer(volumes_cmd.app, name="volumes")
app.add_typer(tunnel_cmd.app, name="tunnel")
app.command("host-key", help=hostkey_cmd.HELP)(hostkey_cmd.host_key)
app.command("ls", help=volume_cmd.LS_HELP)(volume_cmd.ls)
app.command("put", help=volume_cmd.PUT_HELP)(volume_cmd.put)
app.command("get", help=volume_cmd.GET_HELP)(volume_cmd.get)
app.command("rm", help=volume_cmd.RM_HELP)(volume_cmd.rm)
app.command("kubeconfig", help=kube_cmd.KUBECONFIG_HELP)(kube_cmd.kubeconfig)
app.command("connect", help=kube_cmd.CONNECT_HELP)(kube_cmd.connect)
app.command("logs", help=kube_cmd.LOGS_HELP)(kube_cmd.logs)
app.command("logging", help=logging_cmd.HELP)(logging_cmd.logging)
app.command("render", help=render_cmd.HELP)(render_cmd.render)
app.command("convert", help=apps_cmd.CONVERT_HELP)(apps_cmd.convert)
app.command("run", help=apps_cmd.RUN_HELP)(apps_cmd.run)
app.command("quit", help=apps_cmd.QUIT_HELP)(apps_cmd.quit_app)
app.command("build-image", help=images_cmd.BUILD_HELP)(images_cmd.build_image)
app.command("images", help=images_cmd.IMAGES_HELP)(images_cmd.images)
app.command("budget", help=budget_cmd.HELP)(budget_cmd.budget)


def _wants_traceback(argv: list[str]) -> bool:
    return any(arg in ("-v", "--verbose") for arg in argv)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; the error model lives here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from clusterous_core.errors import ClusterousError

    try:
        result = app(args=argv, prog_name="clusterous-k8s", standalone_mode=False)
    except ClusterousError as exc:
        if _wants_traceback(argv):
            import traceback

            traceback.print_exc()
        _print_error(exc.render())
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        _print_error("aborted")
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted; re-run the command to continue")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence before the user
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()  # a usage error from typer/click: it already reads as a message
            return code
        if _wants_traceback(argv):
            import traceback

            traceback.print_exc()
        _print_error(
            f"unexpected {type(exc).__name__}: {exc}\n  next: re-run with --verbose for the traceback"
        )
        return 1
    return result if isinstance(result, int) else 0


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text("error: ", style="bold red") + Text(message)
    )


def main() -> None:
    sys.exit(run())
