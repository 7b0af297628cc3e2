"""The command frame: version, help with examples, completion, and the shared error model."""

from __future__ import annotations

import sys

import pytest

from clusterous_cli import __version__


def test_version(cli):
    result = cli(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"clusterous-k8s {__version__}"


def test_help_lists_commands_with_examples(cli):
    result = cli(["--help"])
    assert result.exit_code == 0
    for word in ("setup", "profile", "--profile", "--verbose", "--install-completion"):
        assert word in result.stdout


def _leaf_commands():
    import typer

    from clusterous_cli.main import app

    def walk(command, path):
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    return list(walk(typer.main.get_command(app), []))


def test_every_command_has_help_with_an_example():
    commands = _leaf_commands()
    assert len(commands) >= 5
    for path, command in commands:
        assert "Example:" in (command.help or ""), f"`{' '.join(path)}` has no Example in its help"


def test_every_command_answers_help(cli):
    for path, _ in _leaf_commands():
        result = cli([*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.stdout


def test_help_shows_bracketed_defaults_and_flags_without_placeholders(cli):
    """Rich markup used to swallow `[the profile's current cluster]` and print `--yes <bool>`."""
    for path, command in _leaf_commands():
        text = " ".join(cli([*path, "--help"]).stdout.split())
        for param in command.params:
            help_text = " ".join((getattr(param, "help", None) or "").split())
            if "[" in help_text:
                assert help_text in text, (path, param.name)
            if getattr(param, "is_flag", False):
                assert f"{param.opts[-1]} <" not in text, (path, param.name)


def test_completion_script_is_offered(cli_subprocess):
    # What `--install-completion` writes, asked for without guessing the shell from the process tree.
    result = cli_subprocess([], env={"_CLUSTEROUS_K8S_COMPLETE": "source_bash"})
    assert result.exit_code == 0
    assert "_CLUSTEROUS_K8S_COMPLETE" in result.stdout


def test_completion_completes_subcommands(cli_subprocess):
    env = {
        "_CLUSTEROUS_K8S_COMPLETE": "complete_bash",
        "COMP_WORDS": "clusterous-k8s prof",
        "COMP_CWORD": "1",
    }
    result = cli_subprocess([], env=env)
    assert "profile" in result.stdout


def test_bad_input_exits_2_with_one_line_and_no_traceback(cli):
    result = cli(["--profile", "no/such", "profile", "show"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --profile: expected a profile name")


def test_verbose_shows_the_traceback(cli):
    result = cli(["--verbose", "--profile", "no/such", "profile", "show"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_unknown_command_is_a_usage_error(cli):
    result = cli(["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_heavy_libraries_are_not_imported_for_help():
    import subprocess

    code = (
        "import contextlib, io, sys\n"
        "from clusterous_cli.main import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert run(['--help']) == 0\n"
        "heavy = [m for m in ('boto3', 'botocore', 'kubernetes', 'paramiko', 'kopf', 'pydantic') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("argv", [["profile", "ls"], ["profile", "ls", "--json"]])
def test_empty_config_is_fine(cli, argv):
    result = cli(argv)
    assert result.exit_code == 0
