"""The `clusterous-k8s` command's entry point: the error model, and which code a command line runs.

Every command reports problems through the shared error model (clusterous_core.errors):
bad input exits 2, failures exit 1, neither prints a traceback unless --verbose, which also turns
on debug logging on stderr.

Start-up time is part of every command (a small `put` is mostly start-up: issue 15, docs/ssh.md
"Throughput"). So this module imports no library at the top, and `run`
- runs a plain `put`/`get` command line without typer (volume_copy.plain_command);
- gives typer (app.py) only the command named on the command line (`command_named`): the other
  command modules, and what they import at the top, are never loaded. `--help`, no command, an
  unknown one or root options it cannot read register them all, so the listing, suggestions
  and errors are typer's own.
Command modules import heavy libraries (boto3, paramiko, kubernetes, rich, pydantic) inside the
functions that use them. tests/test_startup.py checks all this through sys.modules.
"""

from __future__ import annotations

import sys

# Every command, in --help's order (typer lists the groups last): name -> (its module in
# clusterous_cli.commands, the function or the typer app of a command group, the name of its help
# text in that module; None for a group). Adding a command is one line here.
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "setup": ("setup", "setup", "HELP"),
    "profile": ("profile", "app", None),
    "up": ("cluster", "up", "UP_HELP"),
    "down": ("cluster", "down", "DOWN_HELP"),
    "status": ("status", "status", "STATUS_HELP"),
    "clusters": ("status", "clusters", "CLUSTERS_HELP"),
    "workon": ("status", "workon", "WORKON_HELP"),
    "suspend": ("suspend", "suspend", "SUSPEND_HELP"),
    "resume": ("suspend", "resume", "RESUME_HELP"),
    "budget": ("budget", "budget", "HELP"),
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


def __getattr__(name: str):
    """`main.app`: the whole typer app, built when asked for (tests walk it; `run` builds its own)."""
    if name == "app":
        from clusterous_cli import app

        return app.build()
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
    from clusterous_cli.volume_copy import plain_command
    from clusterous_core.errors import ClusterousError

    try:
        if plain := plain_command(argv):
            function, arguments = plain
            function(**arguments)
            return 0
        from clusterous_cli import app

        return app.invoke(argv, command_named(argv))
    except ClusterousError as exc:
        if _wants_traceback(argv):
            import traceback

            traceback.print_exc()
        print_error(exc.render())
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted; re-run the command to continue")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence before the user
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()  # a usage error from typer/click: it already reads as a message
            return code
        if _wants_traceback(argv):
            import traceback

            traceback.print_exc()
        print_error(
            f"unexpected {type(exc).__name__}: {exc}\n  next: re-run with --verbose for the traceback"
        )
        return 1


def print_error(message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text("error: ", style="bold red") + Text(message)
    )


def main() -> None:
    sys.exit(run())
