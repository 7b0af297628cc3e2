"""The command frame: version, help with examples, completion, and the shared error model."""

from __future__ import annotations

import inspect
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_pyprojects(cli):
    result = cli(["--version"])
    assert result.exit_code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.strip() == f"clusterous-k8s {version}"


def test_version_comes_from_the_installed_distribution(tmp_path):
    """pyproject.toml is the one place the version is written: --version reads what was installed
    (here another installation, first on sys.path: the folder the command runs in)."""
    import subprocess

    dist = tmp_path / "clusterous_k8s-9.8.7.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clusterous-k8s\nVersion: 9.8.7\n")
    result = subprocess.run(
        [sys.executable, "-m", "clusterous_cli", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clusterous-k8s 9.8.7"


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


# Commands that act on no cluster (profiles, the account's region, offline files).
NO_CLUSTER = {"setup", "clusters", "render", "convert", "volumes ls", "volumes rm"}
NO_CLUSTER |= {"profile ls", "profile use", "profile show", "profile rm"}


def _options(command) -> dict[str, object]:
    return {opt: param for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def test_the_cluster_is_said_one_way():
    """`--cluster/-c` wherever a command acts on a cluster (`--name` was the AWS commands' word)."""
    for path, command in _leaf_commands():
        where, options = " ".join(path), _options(command)
        assert "--name" not in options, where
        if where in NO_CLUSTER:
            assert "--cluster" not in options, where
            continue
        assert "--cluster" in options, f"`{where}` has no --cluster"
        assert sorted(options["--cluster"].opts) == ["--cluster", "-c"], where


@pytest.mark.parametrize("command", ["down", "workon"])
def test_a_cluster_named_twice_must_be_the_same_one(cli, command):
    result = cli([command, "alpha", "--cluster", "beta"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --cluster: expected the cluster NAME names (alpha)")


# Commands whose result is one record a script wants (the rest print tables, found below).
RECORDS = {"up", "down", "scale", "add-nodes", "rm-nodes", "host-key", "logging", "put", "get"}
RECORDS |= {"kubeconfig", "build-image", "profile show"}


def test_shared_options_are_declared_once():
    """--json, --yes and --namespace read the same everywhere; every table and record has a --json."""
    seen: dict[str, set] = {}
    for path, command in _leaf_commands():
        options = _options(command)
        if " ".join(path) in RECORDS:
            assert "--json" in options, f"`{' '.join(path)}` prints a record but offers no --json"
        for name in ("--json", "--yes", "--namespace", "--param"):
            if name in options:
                param = options[name]
                seen.setdefault(name, set()).add((tuple(sorted(param.opts)), param.help))
        if "print_table(" in inspect.getsource(command.callback):
            assert "--json" in options, f"`{' '.join(path)}` prints a table but offers no --json"
    assert set(seen) == {"--json", "--yes", "--namespace", "--param"}
    for name, spellings in seen.items():
        assert len(spellings) == 1, (name, spellings)


def test_arguments_are_shown_by_the_name_their_help_uses(cli):
    """Usage lines say `build-image {DIR} {NAME}` as the help text and README do, not `{directory}`."""
    for path, command in _leaf_commands():
        usage = cli([*path, "--help"]).stdout.splitlines()[0]
        for param in command.params:
            if param.param_type_name == "argument":
                assert param.metavar and param.metavar.isupper(), (path, param.name)
                assert param.metavar in usage, (path, usage)


def test_defaults_are_shown():
    """An option with a default shows it: `[default: 4Gi]`, or in its help text when computed."""
    import click

    for path, command in _leaf_commands():
        ctx = click.Context(command)
        for param in command.params:
            if param.param_type_name == "option" and param.default not in (None, False, (), []):
                shown = param.get_help_record(ctx)[1]
                assert "[default: " in shown or "[" in (param.help or ""), (path, param.name, shown)


def test_verbose_logs_debug_lines_of_ours_and_quieter_libraries(aws, cli):
    quiet = cli(["clusters", "--region", aws.region])
    assert quiet.exit_code == 0, quiet.output
    assert " DEBUG " not in quiet.stderr
    loud = cli(["--verbose", "clusters", "--region", aws.region])
    assert loud.exit_code == 0, loud.output
    assert " DEBUG clusterous_provisioner.aws: ec2 client for us-east-1 at " in loud.stderr
    assert " DEBUG botocore" not in loud.stderr and " DEBUG urllib3" not in loud.stderr
    assert loud.stdout == quiet.stdout  # logs go to stderr only
    after = cli(["clusters", "--region", aws.region])  # the next command is quiet again
    assert " DEBUG " not in after.stderr


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
