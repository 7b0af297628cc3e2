"""The `clusterous-k8s` command: a typer app that imports only the command it runs.

Every command reports problems through the shared error model (clusterous_core.errors):
bad input exits 2, failures exit 1, neither prints a traceback unless --verbose, which also turns
on debug logging on stderr.

Start-up time is part of every command (a small `put` is mostly start-up: issue 15, docs/ssh.md
"Throughput"), so `run` registers only the command named on the command line (`build(only=...)`):
the other command modules, and the libraries they import at the top, are never loaded. `--help`,
no command, an unknown one or global options it cannot read register them all, so the listing,
suggestions and errors are typer's own. Command modules import heavy libraries (boto3, paramiko,
kubernetes, rich, pydantic) inside the functions that use them; tests/test_startup.py checks it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import typer

HELP = """Private compute clusters on AWS for Docker-based master/worker applications.

Example: clusterous-k8s setup --region eu-west-1
"""

# Every command, in --help's order: name -> (its module in clusterous_cli.commands, the function
# or the typer app of a command group, the name of its help text in that module; None for a group).
# Adding a command is one line here.
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "setup": ("setup", "setup", "HELP"),
    "profile": ("profile", "app", None),
    "up": ("cluster", "up", "UP_HELP"),
    "down": ("cluster", "down", "DOWN_HELP"),
    "status": ("status", "status", "STATUS_HELP"),
    "clusters": ("status", "clusters", "CLUSTERS_HELP"),
    "workon": ("status", "workon", "WORKON_HELP"),
    "scale": ("nodes", "scale", "SCALE_HELP"),
    "add-nodes": ("nodes", "add_nodes", "ADD_HELP"),
    "rm-nodes": ("nodes", "rm_nodes", "RM_HELP"),
    "volumes": ("volumes", "app", None),
    "tunnel": ("tunnel", "app", None),
    "host-key": ("hostkey", "host_key", "HELP"),
    "ls": ("volume", "ls", "LS_HELP"),
    "put": ("volume", "put", "PUT_HELP"),
    "get": ("volume", "get", "GET_HELP"),
    "rm": ("volume", "rm", "RM_HELP"),
    "kubeconfig": ("kube", "kubeconfig", "KUBECONFIG_HELP"),
    "connect": ("kube", "connect", "CONNECT_HELP"),
    "logs": ("kube", "logs", "LOGS_HELP"),
    "logging": ("logging_cmd", "logging", "HELP"),
    "render": ("render", "render", "HELP"),
    "convert": ("apps", "convert", "CONVERT_HELP"),
    "run": ("apps", "run", "RUN_HELP"),
    "quit": ("apps", "quit_app", "QUIT_HELP"),
    "build-image": ("images", "build_image", "BUILD_HELP"),
    "images": ("images", "images", "IMAGES_HELP"),
}


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


def build(only: str | None = None) -> typer.Typer:
    """The app with every command of COMMANDS, or only the one named `only`."""
    app = typer.Typer(
        name="clusterous-k8s",
        help=HELP,
        no_args_is_help=True,
        rich_markup_mode=None,  # plain help: flags without placeholders, every [default] shown
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    for name, (module_name, attribute, help_name) in COMMANDS.items():
        if only not in (None, name):
            continue
        module = importlib.import_module(f"clusterous_cli.commands.{module_name}")
        target = getattr(module, attribute)
        if help_name is None:
            app.add_typer(target, name=name)
        else:
            app.command(name, help=getattr(module, help_name))(target)
    return app


def __getattr__(name: str) -> typer.Typer:
    """`main.app`: the whole app, built when asked for (tests walk it; `run` builds its own)."""
    if name == "app":
        return build()
    raise AttributeError(name)


def command_named(argv: list[str]) -> str | None:
    """The command `argv` runs, read past the root's options; None when there is none, it is
    unknown, or an option is spelled in a way this does not read (all commands are registered)."""
    args = iter(argv)
    for arg in args:
        if arg in ("-p", "--profile"):
            next(args, None)
        elif not (arg.startswith("--profile=") or arg in ("-v", "--verbose")):
            return arg if arg in COMMANDS else None
    return None


def _wants_traceback(argv: list[str]) -> bool:
    return any(arg in ("-v", "--verbose") for arg in argv)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; the error model lives here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from clusterous_core.errors import ClusterousError

    try:
        result = build(command_named(argv))(args=argv, prog_name="clusterous-k8s", standalone_mode=False)
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
