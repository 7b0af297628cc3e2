"""Start-up: a command imports only what it uses (issue 15 item 2; docs/ssh.md "Throughput").

A small `put` is mostly the CLI's start-up, so what put/get never need stays unimported: the
other commands' modules (main.py registers only the command it runs), pydantic (profiles are
read without it), rich (a plain result line), paramiko and our code around it (rsync makes its own
connection: openssh.py builds its options), boto3 and the kubernetes client. Observed in a fresh interpreter's sys.modules after the command
really ran; no timing is asserted (bench/cli_startup.py and bench/transfer_throughput.py measure).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ssh_support import controller  # noqa: F401

# Never on put/get's path (rich only for an error's red "error:").
HEAVY = {"pydantic", "rich", "paramiko", "cryptography", "boto3", "botocore", "kubernetes"}
# Not on a plain put/get's either: typer parses only what is not plain, logging is for --verbose;
# paramiko's side of our SSH code and sockets are for SFTP and tunnels; the records it reads are
# NamedTuples, as `dataclasses` (with `inspect`) costs a sixth of a small put's start-up.
PLAIN = HEAVY | {"typer", "logging", "clusterous_cli.ssh", "socket", "dataclasses", "inspect"}
OTHER_COMMANDS = {"cluster", "status", "apps", "images", "kube", "nodes", "setup", "tunnel", "profile"}


def imported_by(argv: list[str]) -> tuple[int, set[str], str]:
    """(exit code, top-level packages and clusterous modules imported, stderr) of one command run
    in a fresh interpreter, as the console script runs it."""
    code = (
        "import json, sys\n"
        "from clusterous_cli.main import run\n"
        f"code = run({argv!r})\n"
        "names = {m.split('.')[0] for m in sys.modules} | {m for m in sys.modules if m.startswith('clusterous')}\n"
        "print(json.dumps([code, sorted(names)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    exit_code, names = json.loads(done.stdout.strip().splitlines()[-1])
    return exit_code, set(names), done.stderr


def commands_imported(names: set[str]) -> set[str]:
    return {n for n in OTHER_COMMANDS if f"clusterous_cli.commands.{n}" in names}


def test_put_and_get_import_only_what_rsync_needs(controller, tmp_path) -> None:  # noqa: F811
    """A plain command line does not even import typer (volume_copy.plain_command)."""
    source = tmp_path / "notes.txt"
    source.write_text("start-up\n")
    code, names, _ = imported_by(["put", str(source), "notes.txt"])
    assert code == 0 and (controller.shared / "notes.txt").read_text() == "start-up\n"
    assert names & PLAIN == set()
    assert commands_imported(names) == set()

    code, names, _ = imported_by(
        ["-p", "default", "get", "notes.txt", str(tmp_path / "back.txt"), "-c", "lab"]
    )
    assert code == 0 and (tmp_path / "back.txt").read_text() == "start-up\n"
    assert names & PLAIN == set()
    assert commands_imported(names) == set()


def test_typer_runs_what_is_not_plain_with_the_same_result(controller, tmp_path) -> None:  # noqa: F811
    (tmp_path / "a.txt").write_text("a\n")
    plain = imported_by(["put", str(tmp_path / "a.txt"), "one/", "--json", "--method", "rsync"])
    spelled = imported_by(["put", str(tmp_path / "a.txt"), "two/", "--json", "--method=rsync"])
    assert "typer" not in plain[1] and "typer" in spelled[1]
    assert plain[0] == spelled[0] == 0
    assert (controller.shared / "one" / "a.txt").read_text() == (
        controller.shared / "two" / "a.txt"
    ).read_text()
    assert commands_imported(spelled[1]) == set()  # typer, with only the command that runs


def test_the_plain_path_reads_the_options_typer_declares() -> None:
    """volume_copy's table of put/get options is the typer commands' own: they cannot drift."""
    import typer

    from clusterous_cli import volume_copy
    from clusterous_cli.main import app

    group = typer.main.get_command(app)
    assert {o for p in group.params if p.name == "profile" for o in p.opts} == set(
        volume_copy.PROFILE_OPTIONS
    )
    for name in ("put", "get"):
        params = group.commands[name].params  # type: ignore[attr-defined]
        options = {o: p for p in params for o in p.opts if o.startswith("-") and o not in ("-h", "--help")}
        assert {o: p.name for o, p in options.items()} == volume_copy.VALUE_OPTIONS | volume_copy.FLAG_OPTIONS
        assert {o for o, p in options.items() if p.is_flag} == set(volume_copy.FLAG_OPTIONS)
        defaults = {p.name: p.default for p in params if p.opts[0].startswith("-")}
        assert defaults == volume_copy.DEFAULTS


@pytest.mark.parametrize("argv", [["put", "--help"], ["get", "--help"], ["-v", "put", "--help"]])
def test_help_of_put_and_get_reads_no_file_format(isolated_config, argv) -> None:
    code, names, _ = imported_by(argv)
    assert code == 0
    assert names & (HEAVY | {"yaml"}) == set()
    assert commands_imported(names) == set()


def test_a_bad_profile_is_refused_without_pydantic(isolated_config, tmp_path) -> None:
    """Profiles are checked by config.py itself: still bad input naming the file and field."""
    (isolated_config / "profiles").mkdir(parents=True)
    (isolated_config / "profiles" / "default.yml").write_text("region: eu-west-1\nbucket: [b]\n")
    code, names, stderr = imported_by(["put", str(tmp_path), "x"])
    assert code == 2
    assert (
        stderr.strip()
        == f"error: {isolated_config}/profiles/default.yml: bucket: expected a string (got a list)"
    )
    assert names & HEAVY <= {"rich"}


def test_every_command_is_still_registered_for_the_listing(isolated_config) -> None:
    code, names, _ = imported_by(["--help"])
    assert code == 0
    assert commands_imported(names) == OTHER_COMMANDS
