"""Shared-volume ls/put/get/rm through the harness sshd, with rsync and with the SFTP fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.ssh_support import controller, tree_digest  # noqa: F401

METHODS = ["rsync", "sftp"]


def _make_tree(root: Path) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_text("hello\n")
    (root / "nested" / "random.bin").write_bytes(os.urandom(700_000))
    (root / "nested" / "deeper" / "name with spaces.dat").write_bytes(os.urandom(5000))
    return root


def _edit_later(path: Path, data: bytes) -> None:
    """A later edit: the quick check (size + mtime, as rsync's) must see a different second."""
    before = path.stat().st_mtime
    path.write_bytes(data)
    os.utime(path, (before + 5, before + 5))


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("method", METHODS)
def test_put_and_get_round_trip_and_send_only_changes(controller, cli, tmp_path, method) -> None:  # noqa: F811
    source = _make_tree(tmp_path / "src")
    first = _json(cli(["put", str(source), "project", "--method", method, "--json"]))
    assert first["method"] == method
    assert len(first["transferred"]) == 4
    remote = controller.shared / "project"
    assert tree_digest(remote) == tree_digest(source)

    _edit_later(source / "nested" / "random.bin", os.urandom(700_000))
    second = _json(cli(["put", str(source), "project", "--method", method, "--json"]))
    assert [Path(p).name for p in second["transferred"]] == ["random.bin"]
    assert second["unchanged"] == 3
    assert tree_digest(remote) == tree_digest(source)

    back = tmp_path / "back"
    fetched = _json(cli(["get", "project", str(back), "--method", method, "--json"]))
    assert len(fetched["transferred"]) == 4
    assert tree_digest(back) == tree_digest(source)

    _edit_later(remote / "small.txt", b"changed on the cluster\n")
    again = _json(cli(["get", "project", str(back), "--method", method, "--json"]))
    assert [Path(p).name for p in again["transferred"]] == ["small.txt"]
    assert (back / "small.txt").read_text() == "changed on the cluster\n"
    assert not list(controller.shared.rglob("*.clusterous-part")) and not list(
        back.rglob("*.clusterous-part")
    )


@pytest.mark.parametrize("method", METHODS)
def test_single_files_land_at_or_inside_the_destination(controller, cli, tmp_path, method) -> None:  # noqa: F811
    data = tmp_path / "one.csv"
    data.write_bytes(os.urandom(10_000))
    assert cli(["put", str(data), "--method", method]).exit_code == 0
    assert (controller.shared / "one.csv").read_bytes() == data.read_bytes()
    assert cli(["put", str(data), "inputs/", "--method", method]).exit_code == 0
    assert (controller.shared / "inputs" / "one.csv").read_bytes() == data.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    assert cli(["get", "inputs/one.csv", str(out), "--method", method]).exit_code == 0
    assert (out / "one.csv").read_bytes() == data.read_bytes()


def test_ls_and_rm(controller, cli, tmp_path) -> None:  # noqa: F811
    (controller.shared / "results").mkdir()
    (controller.shared / "results" / "a.txt").write_text("a")
    listed = _json(cli(["ls", "--json"]))
    assert [(e["name"], e["type"]) for e in listed] == [("results", "dir")]
    inner = _json(cli(["ls", "results", "--json"]))
    assert [(e["name"], e["size"]) for e in inner] == [("a.txt", 1)]

    kept = cli(["rm", "results"], input="n\n")
    assert kept.exit_code == 1 and (controller.shared / "results").exists()
    removed = cli(["rm", "results", "--yes"])
    assert removed.exit_code == 0, removed.output
    assert not (controller.shared / "results").exists()


def test_rm_of_a_symlink_removes_the_link_not_its_target(controller, cli, tmp_path) -> None:  # noqa: F811
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (controller.shared / "link").symlink_to(outside)
    assert cli(["rm", "link", "--yes"]).exit_code == 0
    assert (outside / "keep.txt").read_text() == "keep"
    assert not (controller.shared / "link").is_symlink()


@pytest.mark.parametrize("method", METHODS)
def test_local_names_with_a_colon_are_local(controller, cli, tmp_path, monkeypatch, method) -> None:  # noqa: F811
    """rsync reads `run:1.csv` as host `run`; a relative name with a colon must stay a local file."""
    monkeypatch.chdir(tmp_path)
    Path("run:1.csv").write_text("a,b\n")
    sent = cli(["put", "run:1.csv", "results/", "--method", method])
    assert sent.exit_code == 0, sent.output
    assert (controller.shared / "results" / "run:1.csv").read_text() == "a,b\n"
    (tmp_path / "back").mkdir()
    monkeypatch.chdir(tmp_path / "back")
    got = cli(["get", "results/run:1.csv", "copy:1.csv", "--method", method])
    assert got.exit_code == 0, got.output
    assert Path("copy:1.csv").read_text() == "a,b\n"


def test_sftp_put_never_writes_through_a_planted_symlink(controller, cli, tmp_path) -> None:  # noqa: F811
    """A pod plants the old fixed temporary name, and a link at the destination itself."""
    secret = tmp_path / "authorized_keys"
    secret.write_text("ssh-ed25519 AAAA the user's key\n")
    (controller.shared / ".notes.txt.clusterous-part").symlink_to(secret)
    (controller.shared / "link.txt").symlink_to(secret)
    local = tmp_path / "notes.txt"
    local.write_text("attacker-controlled? no: the user's notes\n")

    sent = cli(["put", str(local), "notes.txt", "--method", "sftp"])
    assert sent.exit_code == 0, sent.output
    assert (controller.shared / "notes.txt").read_text() == local.read_text()
    assert not (controller.shared / "notes.txt").is_symlink()

    refused = cli(["put", str(local), "link.txt", "--method", "sftp"])
    assert refused.exit_code == 2, refused.output
    assert "symlink" in refused.output
    assert secret.read_text() == "ssh-ed25519 AAAA the user's key\n"


def test_rm_refuses_a_directory_swapped_for_a_symlink_while_it_asks(
    controller,  # noqa: F811
    cli,
    tmp_path,
    monkeypatch,
) -> None:
    """A pod replaces results/ with a link to the login user's files during the prompt."""
    import shutil

    import typer

    outside = tmp_path / "home-of-the-login-user"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "keep.txt").write_text("keep")
    (controller.shared / "results" / "data").mkdir(parents=True)

    def swap_then_say_yes(*args, **kwargs) -> bool:
        shutil.rmtree(controller.shared / "results")
        (controller.shared / "results").symlink_to(outside)
        return True

    monkeypatch.setattr(typer, "confirm", swap_then_say_yes)
    result = cli(["rm", "results/data"])
    assert result.exit_code == 2, result.output
    assert "no symlink leads out of" in result.output
    assert (outside / "data" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "argv",
    [
        ["put", "{local}", "../escape"],
        ["put", "{local}", "/etc/escape"],
        ["put", "{local}", "a/../../escape"],
        ["put", "{local}", "out/escape"],
        ["get", "../x"],
        ["get", "out"],
        ["ls", "out"],
        ["ls", "/"],
        ["rm", "../x", "--yes"],
        ["rm", "out/inner", "--yes"],
    ],
)
def test_paths_cannot_escape_the_volume(controller, cli, tmp_path, argv) -> None:  # noqa: F811
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (controller.shared / "out").symlink_to(outside)
    local = tmp_path / "payload.txt"
    local.write_text("must not leave the volume")
    result = cli(
        [a.replace("{local}", str(local)) for a in argv] + ["--method", "sftp"] * (argv[0] in ("put", "get"))
    )
    assert result.exit_code == 2, result.output
    assert "shared volume" in result.output
    assert [p.name for p in outside.rglob("*")] == ["inner"]
    assert not (controller.sshd.workdir / "home" / "escape").exists()


@pytest.mark.parametrize("method", METHODS)
def test_symlinks_pointing_out_of_a_tree_are_not_followed(controller, cli, tmp_path, method) -> None:  # noqa: F811
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    source = _make_tree(tmp_path / "src")
    (source / "leak").symlink_to(secret)
    _json(cli(["put", str(source), "tree", "--method", method, "--json"]))
    assert not (controller.shared / "tree" / "leak").exists()

    (controller.shared / "tree" / "leak-back").symlink_to(secret)
    back = tmp_path / "back"
    _json(cli(["get", "tree", str(back), "--method", method, "--json"]))
    assert not (back / "leak-back").exists()
    assert (back / "small.txt").read_text() == "hello\n"


def test_missing_local_path_is_bad_input(controller, cli, tmp_path) -> None:  # noqa: F811
    result = cli(["put", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "LOCAL" in result.output and "existing" in result.output


def test_missing_remote_path_is_bad_input(controller, cli, tmp_path) -> None:  # noqa: F811
    result = cli(["get", "nothing-here", str(tmp_path / "x")])
    assert result.exit_code == 2 and "existing path" in result.output
    assert not (tmp_path / "x").exists()


def test_unreachable_controller_fails_with_one_message(controller, cli, tmp_path) -> None:  # noqa: F811
    controller.sshd.stop()
    result = cli(["ls"])
    assert result.exit_code == 1
    assert "cannot reach the controller" in result.output and "Traceback" not in result.output
