"""The sshd harness works with every client our code and our benchmarks will use."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.harness.sshd import (
    SshServer,
    cloud_init_console_output,
    keygen_fingerprint_line,
    require_tools,
    start_on_a_free_port,
)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 (or 'dir'), to compare two trees byte for byte."""
    digest = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        digest[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def _echo_connection(conn: socket.socket) -> None:
    conn.settimeout(None)
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 standing for a service behind the controller."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so the accept loop notices `stop` promptly
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- paramiko ----------------------------------------------------------------------------


def test_paramiko_runs_a_command_and_opens_sftp(sshd_module: SshServer) -> None:
    client = sshd_module.paramiko_client()
    try:
        _, stdout, _ = client.exec_command("echo hello from $USER")
        assert stdout.read().decode().strip() == f"hello from {sshd_module.user}"
        assert stdout.channel.recv_exit_status() == 0
        volume = sshd_module.make_shared_volume()
        with client.open_sftp() as sftp:
            with sftp.open(str(volume / "via-sftp.txt"), "w") as remote:
                remote.write(b"sftp works")
            assert "via-sftp.txt" in sftp.listdir(str(volume))
        assert (volume / "via-sftp.txt").read_bytes() == b"sftp works"
    finally:
        client.close()


def test_paramiko_sees_the_fixtures_host_key(sshd_module: SshServer) -> None:
    client = sshd_module.paramiko_client()
    try:
        server_key = client.get_transport().get_remote_server_key()
        assert f"{server_key.get_name()} {server_key.get_base64()}" in sshd_module.host_public_key
        assert server_key.fingerprint == sshd_module.host_key_fingerprint
    finally:
        client.close()


def test_client_key_is_private(sshd_module: SshServer) -> None:
    assert sshd_module.client_key_path.stat().st_mode & 0o777 == 0o600


def test_direct_tcpip_channel_carries_bytes_intact(sshd_module: SshServer) -> None:
    payload = os.urandom(256 * 1024)
    client = sshd_module.paramiko_client()
    try:
        with echo_server() as echo_port:
            channel = client.get_transport().open_channel(
                "direct-tcpip", ("127.0.0.1", echo_port), ("127.0.0.1", 0)
            )
            channel.sendall(payload)
            channel.shutdown_write()
            received = bytearray()
            while chunk := channel.recv(65536):
                received += chunk
            channel.close()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    finally:
        client.close()


# --- OpenSSH client and rsync ------------------------------------------------------------


def test_openssh_client_checks_the_host_key_and_runs_a_command(sshd_module: SshServer) -> None:
    argv = sshd_module.ssh_command("echo", "openssh-ok")
    assert "StrictHostKeyChecking=yes" in argv
    result = _run(argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "openssh-ok"


def test_rsync_over_ssh_copies_a_tree_byte_identically(sshd_module: SshServer, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "empty.txt").write_bytes(b"")
    (source / "small.txt").write_text("hello\n")
    (source / "nested" / "random.bin").write_bytes(os.urandom(300_000))
    (source / "nested" / "deeper" / "name with spaces.dat").write_bytes(os.urandom(1000))
    target = sshd_module.make_shared_volume() / "rsync-copy"

    result = _run(
        ["rsync", "-a", "-e", sshd_module.rsync_rsh(), f"{source}/", sshd_module.remote(f"{target}/")]
    )

    assert result.returncode == 0, result.stderr
    assert _tree_digest(target) == _tree_digest(source)


# --- lifecycle ---------------------------------------------------------------------------


def test_restart_keeps_port_and_host_key_and_drops_old_sessions(sshd: SshServer) -> None:
    port, known_host = sshd.port, sshd.known_hosts_line
    before = sshd.paramiko_client()
    try:
        sshd.restart()
        assert (sshd.port, sshd.known_hosts_line) == (port, known_host)
        assert _wait_until(lambda: not before.get_transport().is_active()), "old session survived restart"
    finally:
        before.close()
    after = sshd.paramiko_client(known_hosts_line=known_host)
    try:
        _, stdout, _ = after.exec_command("echo back")
        assert stdout.read() == b"back\n"
    finally:
        after.close()


def test_stopped_server_refuses_connections(sshd: SshServer) -> None:
    sshd.stop()
    assert not sshd.is_running
    with pytest.raises(OSError):
        socket.create_connection((sshd.host, sshd.port), timeout=2).close()
    sshd.start()
    assert sshd.is_running


def test_rotated_host_key_is_refused_by_the_old_known_host(sshd: SshServer) -> None:
    old_line, old_port = sshd.known_hosts_line, sshd.port
    new_key = sshd.rotate_host_key()
    assert sshd.port == old_port
    assert new_key.split()[1] not in old_line
    with pytest.raises(paramiko.BadHostKeyException):
        sshd.paramiko_client(known_hosts_line=old_line)
    sshd.paramiko_client().close()  # the fixture's own known host follows the rotation


def test_first_start_moves_off_a_port_taken_meanwhile(tmp_path: Path) -> None:
    require_tools()
    server = SshServer(workdir=tmp_path / "sshd")
    server.prepare()
    taken = server.port
    try:
        with socket.create_server((server.host, taken)):
            start_on_a_free_port(server)
        assert server.is_running and server.port != taken
        assert _run(server.ssh_command("true")).returncode == 0
    finally:
        server.stop()


# --- console output ----------------------------------------------------------------------


def test_console_output_fingerprint_matches_ssh_keygen(sshd_module: SshServer) -> None:
    keygen = _run(["ssh-keygen", "-l", "-f", f"{sshd_module.host_key_path}.pub"])
    assert keygen.returncode == 0, keygen.stderr
    output = sshd_module.console_output()
    fingerprints = output.split("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n")[1].split("\n")[0]
    assert fingerprints.split("cloud-init: ", 1)[1] == keygen.stdout.strip()
    assert sshd_module.host_key_fingerprint == keygen.stdout.split()[1]


def test_console_output_has_cloud_init_blocks_in_order() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIcBvkPpINYBuE6tXcix0LNOCEVWgpK9d8oVckKIHLBb root@ip-10-0-0-5"
    when = time.struct_time((2025, 3, 7, 9, 5, 1, 4, 66, 0))
    lines = cloud_init_console_output([key], when=when).splitlines()
    begin_fp = lines.index("<14>Mar  7 09:05:01 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----")
    assert lines[begin_fp - 1] == "<14>Mar  7 09:05:01 cloud-init: " + "#" * 61
    assert lines[begin_fp + 1] == "<14>Mar  7 09:05:01 cloud-init: " + keygen_fingerprint_line(key)
    assert lines[begin_fp + 2] == "<14>Mar  7 09:05:01 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----"
    begin_keys = lines.index("-----BEGIN SSH HOST KEY KEYS-----")
    assert lines[begin_keys + 1 : begin_keys + 3] == [key, "-----END SSH HOST KEY KEYS-----"]


# --- missing tools -----------------------------------------------------------------------


def test_missing_openssh_skips_locally(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="sshd"):
        require_tools(environ={}, search_path=str(tmp_path))


def test_missing_openssh_fails_in_ci(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="ssh-keygen"):
        require_tools(environ={"CI": "true"}, search_path=str(tmp_path))
