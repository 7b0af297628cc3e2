"""Bad input reads as one sentence: the file, the field, what was expected and a short `got`
(issue 16 item 10). Each shape through the CLI: exit code 2 and the whole message line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

APP = "name: app\nenvironment:\n  components:\n    master: {machine: master, image: python:3.12, cmd: x}\n"


def error_line(result) -> str:
    """The message of a BadInput: exit 2, one line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.output
    return lines[0]


def up(cli, tmp_path: Path, text: str | bytes) -> tuple[Path, str]:
    path = tmp_path / "cluster.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path, error_line(cli(["up", str(path), "--dry-run", "--region", "us-east-1"]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # pydantic's own words ("Input should be a valid string") become what a YAML user writes
        ("cluster_name: 42\n", "cluster_name: expected a string (got 42)"),
        ("cluster_name: a\nspot: maybe\n", "spot: expected true or false (got 'maybe')"),
        ("cluster_name: a\nparameters: [1, 2]\n", "parameters: expected a mapping (got a list)"),
        # our validators' "must be ..." is not repeated after "expected"
        (
            "cluster_name: a\nssh_cidr: everywhere\n",
            "ssh_cidr: expected an IPv4 address range such as 203.0.113.7/32 (got 'everywhere')",
        ),
        ("cluster_name: a\nos: windows\n", "os: expected one of ubuntu-24.04, al2023 (got 'windows')"),
        # an empty value is "nothing", not None or NoneType
        (
            "cluster_name: a\nparameters: {worker_count: }\n",
            "parameters.worker_count: expected a non-negative integer (got nothing)",
        ),
        ("cluster_name: a\nnode_groups: {w: }\n", "node_groups.w: expected a mapping (got nothing)"),
        (
            "cluster_name: a\nnode_groups: {w: {type: t3.large, count: [1, 2, 3]}}\n",
            "node_groups.w.count: expected a non-negative integer (got a list)",
        ),
        (
            "cluster_name: a\nnode_groups: {w: {type: t3.large}}\n",
            "node_groups.w.count: expected a value (it is required)",
        ),
        ("cluster_name: a\nfoo: {a: 1}\n", "foo: expected a known setting (unknown key 'foo')"),
    ],
)
def test_cluster_file_fields_read_as_sentences(cli, tmp_path, text, message):
    path, line = up(cli, tmp_path, text)
    assert line == f"error: {path}: {message}"


def test_a_rule_across_fields_names_the_file_without_echoing_it(cli, tmp_path):
    text = "cluster_name: a\nshared_volume_size: 5\nshared_volume_id: vol-0123456789abcdef0\n"
    path, line = up(cli, tmp_path, text + "parameters: {worker_count: 3}\n")
    assert line == f"error: {path}: expected either shared_volume_size or shared_volume_id, not both"


def test_a_long_value_is_shortened(cli, tmp_path):
    path, line = up(cli, tmp_path, f"cluster_name: a\nk3s_version: {'v' * 300}\n")
    assert line == (
        f"error: {path}: k3s_version: expected a k3s release name such as v1.31.4+k3s1 (got '{'v' * 28}...{'v' * 29}')"
    )


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "a list"), ("just words\n", "'just words'"), ("42\n", "42")]
)
def test_a_file_that_is_not_a_mapping_says_what_it_is(cli, tmp_path, text, got):
    path, line = up(cli, tmp_path, text)
    assert line == f"error: {path}: expected a YAML mapping (cluster file) (got {got})"


def test_an_empty_environment_file(cli, tmp_path):
    path = tmp_path / "env.yml"
    path.write_text("")
    line = error_line(cli(["convert", str(path)]))
    expected = "a YAML mapping (environment file or ClusterApp YAML) (got an empty file)"
    assert line == f"error: {path}: expected {expected}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "name: app\nenvironment: [" + ", ".join(["x" * 20] * 30) + "]\n",
            (
                "environment: expected a mapping with components (and optionally copy, image, "
                "expose_tunnel) (got a list)"
            ),
        ),
        (
            APP + "    engine: [" + ", ".join(["y" * 20] * 30) + "]\n",
            "environment.components.engine: expected a mapping with machine, image, cmd, ... (got a list)",
        ),
        (
            APP + "  expose_tunnel: {service: '" + "8888:" * 40 + "'}\n",
            "environment.expose_tunnel.service: expected local_port:component:port, e.g. 8888:master:8888 "
            "(got '" + ("8888:" * 40)[:28] + "..." + ("8888:" * 40)[-29:] + "')",
        ),
    ],
)
def test_environment_file_values_are_named_not_echoed(cli, tmp_path, body, message):
    path = tmp_path / "env.yml"
    path.write_text(body)
    assert error_line(cli(["convert", str(path)])) == f"error: {path}: {message}"


def test_a_clusterapp_field_of_the_wrong_type(cli, tmp_path):
    app = {
        "apiVersion": "clusterous.io/v1alpha1",
        "kind": "ClusterApp",
        "metadata": {"name": "app"},
        "spec": {"components": [{"name": "m", "group": "master", "image": "x", "replicas": [1, 2]}]},
    }
    path = tmp_path / "app.yml"
    path.write_text(yaml.safe_dump(app))
    line = error_line(cli(["convert", str(path)]))
    assert line.startswith(f"error: {path}: spec.components[0].replicas: expected ") and line.endswith(
        " (got a list)"
    )


# --------------------------------------------------------------------------------------------
# Files that cannot be read as text: bad input naming the file, never an unexpected error.
# --------------------------------------------------------------------------------------------

LATIN1 = "cluster_name: a\nparameters: {worker_instance_type: t3.large}\n# café\n".encode("latin-1")


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["up", "{path}", "--dry-run", "--region", "us-east-1"], "a cluster file"),
        (["convert", "{path}"], "an environment file or ClusterApp YAML"),
        (["run", "{path}", "--cluster", "nowhere"], "an environment file or ClusterApp YAML"),
        (["render", "{path}"], "a YAML file"),
    ],
)
def test_a_file_that_is_not_utf8_is_bad_input(cli, tmp_path, argv, what):
    path = tmp_path / "file.yml"
    path.write_bytes(LATIN1)
    line = error_line(cli([a.format(path=path) for a in argv]))
    assert line == f"error: {path}: line 3: expected {what} in UTF-8 text (got the byte 0xe9, not UTF-8)"


def test_a_profile_that_is_not_utf8_is_bad_input(cli, isolated_config):
    path = isolated_config / "profiles" / "default.yml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"region: us-east-1\nbucket: caf\xe9\n")
    line = error_line(cli(["profile", "show"]))
    assert (
        line
        == f"error: {path}: line 2: expected a configuration file in UTF-8 text (got the byte 0xe9, not UTF-8)"
    )


def test_a_profile_field_of_the_wrong_type(cli, isolated_config):
    path = isolated_config / "profiles" / "default.yml"
    path.parent.mkdir(parents=True)
    path.write_text("region: us-east-1\nbucket: [a, b]\n")
    assert error_line(cli(["profile", "show"])) == f"error: {path}: bucket: expected a string (got a list)"


def test_an_unreadable_file_is_bad_input(cli, tmp_path):
    path = tmp_path / "cluster.yml"
    path.symlink_to(path)  # opening it fails (ELOOP), whoever runs the test
    line = error_line(cli(["up", str(path), "--dry-run", "--region", "us-east-1"]))
    assert line == f"error: {path}: expected a readable cluster file (got too many levels of symbolic links)"


def test_an_unreadable_file_in_a_build_context_is_bad_input(tmp_path):
    """Reading the context happens before anything touches the cluster; a file the user cannot
    read is theirs to fix. As root, the probe runs without the capabilities that read any file."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    (context / "secret.txt").write_text("x")
    (context / "secret.txt").chmod(0o000)
    probe = (
        "import sys\n"
        "from clusterous_cli import buildcontext\n"
        "from clusterous_core.errors import BadInput\n"
        "try:\n"
        f"    buildcontext.load({str(context)!r})\n"
        "except BadInput as exc:\n"
        "    print(exc)\n"
        "    sys.exit(2)\n"
    )
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == (
        f"{context / 'secret.txt'}: expected a readable file of the build context "
        "(or list it in .dockerignore) (got permission denied)"
    )


def test_the_operator_shows_got_the_same_way():
    """What the operator writes into a ClusterApp's status condition uses the same words."""
    from clusterous_operator.spec import SpecError, parse_app

    component = {"name": "m", "group": "master", "image": "x", "replicas": [1, 2]}
    app = {"apiVersion": "clusterous.io/v1alpha1", "kind": "ClusterApp", "metadata": {"name": "app"}}
    with pytest.raises(SpecError) as caught:
        parse_app({**app, "spec": {"components": [component]}})
    assert str(caught.value).startswith("spec.components[0].replicas: expected ")
    assert str(caught.value).endswith(" (got a list)")
