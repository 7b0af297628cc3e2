"""The typer app behind `clusterous-k8s`: the root options and `build`, which registers the
commands of main.COMMANDS (all of them, or only the one a command line runs)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import typer

from clusterous_cli.main import COMMANDS, print_error

HELP = """Private compute clusters on AWS for Docker-based master/worker applications.

Example: clusterous-k8s setup --region eu-west-1
"""


@dataclass(frozen=True)
class Options:
    """Global options every command can read from ctx.obj."""

    profile: str | None
    verbose: bool


DISTRIBUTION = "clusterous-k8s"
# --verbose: our own loggers at DEBUG; the libraries' at INFO (boto's credential source, paramiko's
# handshake) or WARNING (urllib3's and the kubernetes client's DEBUG carry request and response bodies).
VERBOSE_LEVELS = {
    "clusterous": "DEBUG",
    "clusterous_cli": "DEBUG",
    "clusterous_provisioner": "DEBUG",
    "clusterous_operator": "DEBUG",
    "botocore": "INFO",
    "boto3": "INFO",
    "paramiko": "INFO",
    "urllib3": "WARNING",
    "kubernetes": "WARNING",
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
    import logging  # only with --verbose: a plain command never imports it

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
        for name, old_level in before.items():
            logging.getLogger(name).setLevel(old_level)


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


def invoke(argv: list[str], only: str | None) -> int:
    """Run `argv` through typer; its Exit and Abort become exit codes (main.run has the rest)."""
    try:
        result = build(only)(args=argv, prog_name="clusterous-k8s", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print_error("aborted")
        return 1
    return result if isinstance(result, int) else 0
