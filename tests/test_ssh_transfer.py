"""Shared-volume ls/put/get/rm through the harness sshd, with rsync and with the SFTP fallback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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
@pytest.mark.parametrize("method", METHODS)
def test_paths_cannot_escape_the_volume(controller, cli, tmp_path, argv, method) -> None:  # noqa: F811
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (controller.shared / "out").symlink_to(outside)
    local = tmp_path / "payload.txt"
    local.write_text("must not leave the volume")
    result = cli(
        [a.replace("{local}", str(local)) for a in argv] + ["--method", method] * (argv[0] in ("put", "get"))
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


# --- how a transfer reaches the controller (issue 15 item 2) ----------------------------------


def _sessions(sshd, since: int) -> tuple[int, list[str]]:
    """(connections, kinds of sessions) sshd logged after byte `since` of its log."""
    text = sshd.log_text()[since:]
    kinds = re.findall(r"Starting session: (command|subsystem 'sftp')", text)
    return text.count("Accepted publickey"), kinds


@pytest.mark.parametrize("direction", ["put", "get"])
def test_a_transfer_is_one_connection_and_one_exec(controller, cli, tmp_path, direction) -> None:  # noqa: F811
    """No question before rsync starts: no SFTP session, no `command -v rsync`, no second login."""
    small = tmp_path / "small.txt"
    small.write_text("tiny\n")
    (controller.shared / "small.txt").write_text("tiny, remote\n")
    since = len(controller.sshd.log_text())
    argv = (
        ["put", str(small), "inbox/"] if direction == "put" else ["get", "small.txt", str(tmp_path / "back")]
    )
    report = _json(cli([*argv, "--json"]))
    assert report["method"] == "rsync"
    assert _sessions(controller.sshd, since) == (1, ["command"])


def test_without_rsync_on_the_controller_it_falls_back_to_sftp(controller, cli, tmp_path) -> None:  # noqa: F811
    controller.sshd.hide_rsync()
    probe = subprocess.run(controller.sshd.ssh_command("command -v rsync"), capture_output=True)
    assert probe.returncode != 0, "the login PATH of the test sshd still finds rsync"
    source = _make_tree(tmp_path / "src")

    since = len(controller.sshd.log_text())
    sent = _json(cli(["put", str(source), "project", "--json"]))
    assert sent["method"] == "sftp" and len(sent["transferred"]) == 4
    assert tree_digest(controller.shared / "project") == tree_digest(source)
    # rsync was tried (one exec, which found no rsync), then SFTP: nothing was asked beforehand.
    assert _sessions(controller.sshd, since) == (2, ["command", "subsystem 'sftp'"])

    fetched = _json(cli(["get", "project", str(tmp_path / "back"), "--json"]))
    assert fetched["method"] == "sftp"
    assert tree_digest(tmp_path / "back") == tree_digest(source)

    forced = cli(["put", str(source), "project", "--method", "rsync"])
    assert forced.exit_code == 1 and "no rsync" in forced.output


@pytest.mark.parametrize("method", METHODS)
def test_put_refuses_a_symlink_at_or_on_the_way_to_the_destination(controller, cli, tmp_path, method) -> None:  # noqa: F811
    """With rsync the controller-side script checks the destination in the same exec as rsync runs."""
    secret = tmp_path / "authorized_keys"
    secret.write_text("ssh-ed25519 AAAA the user's key\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (controller.shared / "link.txt").symlink_to(secret)
    (controller.shared / "linkdir").symlink_to(elsewhere)
    (controller.shared / "inside").mkdir()
    (controller.shared / "alias").symlink_to(controller.shared / "inside")  # inside, still refused
    local = tmp_path / "notes.txt"
    local.write_text("the user's notes\n")

    for remote in ("link.txt", "linkdir", "linkdir/", "alias/notes.txt"):
        refused = cli(["put", str(local), remote, "--method", method])
        assert refused.exit_code == 2, (remote, refused.output)
        assert "symlink" in refused.output and "shared volume" in refused.output
    assert secret.read_text() == "ssh-ed25519 AAAA the user's key\n"
    assert list(elsewhere.iterdir()) == [] and list((controller.shared / "inside").iterdir()) == []


@pytest.mark.parametrize("method", METHODS)
def test_a_file_lands_in_an_existing_directory_or_renamed(controller, cli, tmp_path, method) -> None:  # noqa: F811
    data = tmp_path / "one.csv"
    data.write_text("a,b\n")
    (controller.shared / "inputs").mkdir()
    into = _json(cli(["put", str(data), "inputs", "--method", method, "--json"]))
    assert into["transferred"] == ["inputs/one.csv"]
    renamed = _json(cli(["put", str(data), "inputs/two.csv", "--method", method, "--json"]))
    assert renamed["transferred"] == ["inputs/two.csv"]
    assert sorted(p.name for p in (controller.shared / "inputs").iterdir()) == ["one.csv", "two.csv"]
    again = _json(cli(["put", str(data), "inputs/two.csv", "--method", method, "--json"]))
    assert again["transferred"] == [] and again["unchanged"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_names_with_wildcards_and_spaces_are_taken_literally(controller, cli, tmp_path, method) -> None:  # noqa: F811
    (controller.shared / "runs").mkdir()
    (controller.shared / "runs" / "data[1] *.csv").write_text("wanted\n")
    (controller.shared / "runs" / "data1 x.csv").write_text("not asked for\n")
    out = tmp_path / "out"
    out.mkdir()
    got = _json(cli(["get", "runs/data[1] *.csv", str(out), "--method", method, "--json"]))
    assert len(got["transferred"]) == 1
    assert [p.name for p in out.iterdir()] == ["data[1] *.csv"]
    sent = _json(
        cli(["put", str(out / "data[1] *.csv"), "runs/$(id) `x`;.csv", "--method", method, "--json"])
    )
    assert sent["transferred"] == ["runs/$(id) `x`;.csv"]
    assert (controller.shared / "runs" / "$(id) `x`;.csv").read_text() == "wanted\n"


def test_with_the_tunnel_supervisor_running_rsync_reuses_its_ssh_master(controller, cli, tmp_path) -> None:  # noqa: F811
    """The supervisor's OpenSSH master is already logged in: rsync's ssh opens a session through
    it, so sshd sees a new session but no new connection (no key exchange, no login)."""
    from clusterous_cli import tunnels
    from tests.harness.sshd import free_port

    assert cli(["tunnel", "add", f"{free_port()}:127.0.0.1:{free_port()}"]).exit_code == 0
    tunnels.wait_for(
        controller.ref, lambda s: s.get("connected") and s.get("control_socket"), 20, "no master"
    )
    small = tmp_path / "small.txt"
    small.write_text("tiny\n")
    since = len(controller.sshd.log_text())
    assert _json(cli(["put", str(small), "inbox/", "--json"]))["method"] == "rsync"
    assert _json(cli(["get", "inbox/small.txt", str(tmp_path / "back.txt"), "--json"]))["method"] == "rsync"
    assert (tmp_path / "back.txt").read_text() == "tiny\n"
    assert _sessions(controller.sshd, since) == (0, ["command", "command"])

    # A master that died without the status file noticing: ssh connects by itself.
    status = tunnels.read_status(controller.ref)
    tunnels.stop_supervisor(controller.ref)
    (controller.ref.directory / tunnels.STATUS_FILE).write_text(json.dumps(status))
    since = len(controller.sshd.log_text())
    assert _json(cli(["put", str(small), "again.txt", "--json"]))["transferred"] == ["again.txt"]
    assert _sessions(controller.sshd, since) == (1, ["command"])


def test_transfer_bench_runs_as_a_smoke_test() -> None:
    """CI runs the bench small, for its honesty (one cipher, printed; alternating order; ratio
    lines for every case), never for its timing."""
    import sys

    from tests.harness.sshd import require_tools

    require_tools()
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "BENCH_TREE_MB": "2",
        "BENCH_ROUNDS": "2",
        "BENCH_SMALL_BYTES": "100",
        "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("", "cli", "provisioner", "operator")),
    }
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "transfer_throughput.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "ciphers: ours=aes128-gcm@openssh.com openssh=aes128-gcm@openssh.com" in lines
    firsts = [line.split("first=")[1].split()[0] for line in lines if line.startswith("round")]
    assert firsts == ["ours"] * 4 + ["rsync"] * 4 + ["ours"] * 2 + ["rsync"] * 2
    cases = [
        line.split()[1] + " " + line.split()[2].rstrip(":") for line in lines if line.startswith("ratio=")
    ]
    assert cases == ["tree put", "tree get", "small put", "small get", "small put+master", "small get+master"]
    assert all(float(line.split()[0].split("=")[1]) > 0 for line in lines if line.startswith("ratio="))


@pytest.mark.parametrize("method", METHODS)
def test_get_of_a_directory_onto_a_local_file_is_bad_input(controller, cli, tmp_path, method) -> None:  # noqa: F811
    """Only the controller knows that REMOTE is a directory; the refusal still names LOCAL."""
    (controller.shared / "d").mkdir()
    (controller.shared / "d" / "a.txt").write_text("a")
    (controller.shared / "d" / "b.txt").write_text("b")
    (tmp_path / "afile").write_text("mine")
    result = cli(["get", "d", str(tmp_path / "afile"), "--method", method])
    assert result.exit_code == 2, result.output
    assert "LOCAL" in result.output and "a file is in the way" in result.output
    assert (tmp_path / "afile").read_text() == "mine"


def test_rsync_reports_ssh_refusals_as_the_paramiko_path_does(controller, cli, tmp_path) -> None:  # noqa: F811
    """put/get no longer connect with paramiko first, so ssh's own refusals must read the same."""
    from clusterous_cli.endpoint import write_endpoint
    from tests.harness.sshd import generate_ed25519_key

    local = tmp_path / "a.txt"
    local.write_text("a")

    def with_endpoint(**changes) -> None:
        write_endpoint(controller.ref, controller.endpoint._replace(**changes))

    with_endpoint(key_file=tmp_path / "gone.pem")
    missing = cli(["put", str(local), "--method", "rsync"])
    assert missing.exit_code == 2 and "gone.pem" in missing.output and "not found" in missing.output

    with_endpoint(key_file=generate_ed25519_key(tmp_path / "other", "someone-else"))
    wrong = cli(["put", str(local), "--method", "rsync"])
    assert wrong.exit_code == 1 and "refused the key" in wrong.output

    with_endpoint()
    controller.sshd.rotate_host_key()
    changed = cli(["get", "a.txt", str(tmp_path / "b.txt"), "--method", "rsync"])
    assert changed.exit_code == 1 and "host-key --relearn" in changed.output

    controller.sshd.stop()
    down = cli(["put", str(local), "--method", "rsync"])
    assert down.exit_code == 1 and "cannot reach the controller" in down.output
    assert "Traceback" not in missing.output + wrong.output + changed.output + down.output


def test_rsync_reports_progress_only_to_a_bar_that_is_shown(controller, cli, tmp_path, monkeypatch) -> None:  # noqa: F811
    """A terminal's bar gets rsync's progress2 figures; without one (a pipe, a script) rsync is not
    asked for them, so neither it nor we spend time on progress nobody sees. What rsync was asked
    is read from a stand-in on PATH that writes down its arguments and runs the real rsync."""
    from clusterous_cli import transfer, volume_copy

    shim, calls = tmp_path / "shim", tmp_path / "rsync-calls"
    shim.mkdir()
    real = shutil.which("rsync")
    (shim / "rsync").write_text(f'#!/bin/sh\nprintf "%s\\n" "-- call" "$@" >> {calls}\nexec {real} "$@"\n')
    (shim / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")

    class Bar:  # what volume_copy.RichProgress does with the figures, recorded
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def total(self, size: int) -> None: ...

        def advance(self, size: int) -> None: ...

        def absolute(self, done: int, percent: int) -> None:
            self.seen.append((done, percent))

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    bar = Bar()
    with volume_copy._on_demand(None, None) as conn:
        report = transfer.put(conn, data, "data.bin", "auto", bar)
    assert report.method == "rsync" and (controller.shared / "data.bin").read_bytes() == data.read_bytes()
    assert bar.seen and bar.seen[-1] == (3 * 1024 * 1024, 100)
    assert "--info=progress2" in calls.read_text().splitlines()

    calls.unlink()
    piped = cli(["put", str(data), "again.bin"])  # the runner's stderr is no terminal: no bar
    assert piped.exit_code == 0 and (controller.shared / "again.bin").read_bytes() == data.read_bytes()
    fetched = cli(["get", "again.bin", str(tmp_path / "back.bin")])
    assert fetched.exit_code == 0 and (tmp_path / "back.bin").read_bytes() == data.read_bytes()
    asked = calls.read_text().splitlines()
    assert asked.count("-- call") == 2 and "--info=progress2" not in asked
