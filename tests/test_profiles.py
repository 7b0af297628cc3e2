"""Profiles on disk: ls/use/show/rm, and bad configuration reported without touching it."""

from __future__ import annotations

import json
import stat

import pytest


def write_profile(config_home, name, **fields):
    folder = config_home / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"region": "eu-west-1", "bucket": f"bucket-{name}", **fields}
    import yaml

    (folder / f"{name}.yml").write_text(yaml.safe_dump(data))


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ls_use_show_rm(cli, isolated_config):
    write_profile(isolated_config, "default")
    write_profile(isolated_config, "work", region="us-west-2")

    rows = json.loads(cli(["profile", "ls", "--json"]).stdout)
    assert [(r["name"], r["current"]) for r in rows] == [("default", True), ("work", False)]

    assert cli(["profile", "use", "work"]).exit_code == 0
    rows = json.loads(cli(["profile", "ls", "--json"]).stdout)
    assert [r["name"] for r in rows if r["current"]] == ["work"]
    shown = json.loads(cli(["profile", "show", "--json"]).stdout)
    assert shown["name"] == "work" and shown["region"] == "us-west-2"
    # --profile overrides the stored choice for one command
    assert json.loads(cli(["--profile", "default", "profile", "show", "--json"]).stdout)["name"] == "default"

    table = cli(["profile", "ls"]).stdout
    assert "work" in table and "us-west-2" in table

    assert cli(["profile", "rm", "work"], input="n\n").exit_code == 1  # declined: kept
    assert (isolated_config / "profiles" / "work.yml").exists()
    assert cli(["profile", "rm", "work", "--yes"]).exit_code == 0
    assert not (isolated_config / "profiles" / "work.yml").exists()
    assert [r["name"] for r in json.loads(cli(["profile", "ls", "--json"]).stdout)] == ["default"]


def test_files_are_private(cli, isolated_config):
    write_profile(isolated_config, "default")
    write_profile(isolated_config, "b")
    cli(["profile", "use", "b"])
    mode = stat.S_IMODE((isolated_config / "config.yml").stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "show", "nope"],
        ["profile", "use", "nope"],
        ["profile", "rm", "nope", "--yes"],
        ["--profile", "nope", "profile", "show"],
    ],
)
def test_unknown_profile_is_bad_input(cli, isolated_config, argv):
    write_profile(isolated_config, "default")
    before = snapshot(isolated_config)
    result = cli(argv)
    assert result.exit_code == 2
    assert "nope" in result.stderr and "clusterous-k8s setup" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(isolated_config) == before


def test_invalid_yaml_names_the_file_and_line(cli, isolated_config):
    write_profile(isolated_config, "default")
    bad = isolated_config / "profiles" / "default.yml"
    bad.write_text("region: eu-west-1\nbucket: [unclosed\n")
    before = snapshot(isolated_config)
    result = cli(["profile", "show"])
    assert result.exit_code == 2
    assert str(bad) in result.stderr and "line" in result.stderr and "valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(isolated_config) == before


def test_invalid_settings_file(cli, isolated_config):
    isolated_config.mkdir(parents=True)
    (isolated_config / "config.yml").write_text(":\n  - : [\n")
    result = cli(["profile", "ls"])
    assert result.exit_code == 2 and "config.yml" in result.stderr


def test_wrong_field_is_named(cli, isolated_config):
    write_profile(isolated_config, "default", colour="blue")
    result = cli(["profile", "show"])
    assert result.exit_code == 2 and "colour" in result.stderr


def test_unreadable_profile(cli, isolated_config):
    write_profile(isolated_config, "default")
    path = isolated_config / "profiles" / "default.yml"
    path.unlink()
    path.mkdir()  # a directory where a file should be: unreadable as a profile
    result = cli(["profile", "show"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: expected a configuration file, not a directory")
