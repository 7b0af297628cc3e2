"""Tunnels through the harness sshd: bytes intact, self-healing after a restart, clear refusals."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import pytest

from clusterous_cli import tunnels
from tests.ssh_support import controller, digest, echo_roundtrip, echo_server  # noqa: F401


def _wait_roundtrip(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Retry until the tunnel answers again (it reconnects in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            received = echo_roundtrip(port, payload, timeout=10)
            if received == payload or time.monotonic() > deadline:
                return received
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request, monkeypatch) -> str:
    """Both supervisors: OpenSSH's ControlMaster (where `ssh` exists) and the paramiko fallback."""
    if request.param == "paramiko":
        monkeypatch.setenv("CLUSTEROUS_K8S_SSH", "paramiko")
    else:
        monkeypatch.delenv("CLUSTEROUS_K8S_SSH", raising=False)
    return request.param


def test_tunnel_carries_bytes_and_heals_after_sshd_restart(controller, cli, transport) -> None:  # noqa: F811
    local = tunnels.free_port()
    with echo_server() as echo_port:
        added = cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"])
        assert added.exit_code == 0, added.output
        payload = os.urandom(3 * 1024 * 1024)
        assert digest(echo_roundtrip(local, payload)) == digest(payload)

        # Many clients at once: each gets its own channel on the one transport.
        small = [os.urandom(50_000) for _ in range(8)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda p: echo_roundtrip(local, p), small)) == small

        pid = tunnels.supervisor_pid(controller.ref)
        controller.sshd.restart()
        assert digest(_wait_roundtrip(local, payload)) == digest(payload)
        assert tunnels.supervisor_pid(controller.ref) == pid  # same process, no user action
        status = tunnels.read_status(controller.ref)
        assert status["reconnects"] >= 1 and status["connected"]
        assert status["transport"] == transport

        listed = cli(["tunnel", "ls", "--json"])
        data = json.loads(listed.stdout)
        assert data["connected"] and data["supervisor_pid"] == pid
        assert [(t["local"], t["target"], t["state"]) for t in data["tunnels"]] == [
            (local, f"127.0.0.1:{echo_port}", "up")
        ]

        removed = cli(["tunnel", "rm", str(local)])
        assert removed.exit_code == 0, removed.output
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", local), timeout=2).close()

    stopped = cli(["tunnel", "stop"])
    assert stopped.exit_code == 0 and tunnels.supervisor_pid(controller.ref) is None


def test_tunnel_waits_out_a_controller_outage(controller, cli, transport) -> None:  # noqa: F811
    local = tunnels.free_port()
    with echo_server() as echo_port:
        assert cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"]).exit_code == 0
        controller.sshd.stop()
        time.sleep(1.5)  # several failed reconnects: the backoff is running
        controller.sshd.start()
        assert _wait_roundtrip(local, b"back again") == b"back again"


@pytest.mark.parametrize(
    "spec, field",
    [
        ("8080:master", None),
        ("8080", None),
        ("80:master:8080", "LOCAL"),
        ("70000:master:8080", "LOCAL"),
        ("8080:master:0", "PORT"),
        ("8080:Master_1:80", "COMPONENT"),
        ("x:master:80", "LOCAL"),
    ],
)
def test_bad_tunnel_specs_are_bad_input(controller, cli, spec, field) -> None:  # noqa: F811
    result = cli(["tunnel", "add", spec])
    assert result.exit_code == 2, result.output
    assert "LOCAL:COMPONENT:PORT" in result.output
    if field:
        assert field in result.output
    assert not (controller.ref.directory / tunnels.DESIRED_FILE).exists()  # nothing half-written
    assert tunnels.supervisor_pid(controller.ref) is None


def test_local_port_in_use_is_refused_or_moved_on_request(controller, cli) -> None:  # noqa: F811
    with socket.create_server(("127.0.0.1", 0)) as squatter, echo_server() as echo_port:
        taken = squatter.getsockname()[1]
        refused = cli(["tunnel", "add", f"{taken}:127.0.0.1:{echo_port}"])
        assert refused.exit_code == 2
        assert "another program listens" in refused.output and "--next-free" in refused.output
        assert tunnels.read_desired(controller.ref).tunnels == []

        moved = cli(["tunnel", "add", f"{taken}:127.0.0.1:{echo_port}", "--next-free"])
        assert moved.exit_code == 0, moved.output
        local = int(moved.stdout.strip().rsplit(":", 1)[1])
        assert local > taken
        assert echo_roundtrip(local, b"moved") == b"moved"


def test_tunnel_to_a_refused_target_closes_the_client_only(controller, cli, transport) -> None:  # noqa: F811
    from tests.harness.sshd import free_port

    local = tunnels.free_port()
    assert cli(["tunnel", "add", f"{local}:127.0.0.1:{free_port()}"]).exit_code == 0
    # closed before reading what we sent: a reset is the kernel's way of saying so
    with contextlib.suppress(ConnectionResetError):
        assert echo_roundtrip(local, b"nobody home") == b""
    assert tunnels.read_status(controller.ref)["connected"]  # the transport survived


def test_rm_of_an_unknown_tunnel_is_bad_input(controller, cli) -> None:  # noqa: F811
    result = cli(["tunnel", "rm", "12345"])
    assert result.exit_code == 2 and "known: none" in result.output


def _timed(cli, argv: list[str]):  # noqa: F811
    started = time.monotonic()
    result = cli(argv)
    return result, time.monotonic() - started


# The CLI waits up to 20 s for a supervisor that is still (re)connecting; a refusal that no
# retry can cure must end the wait at once. Half of that timeout is far more than a refused
# handshake takes and far less than waiting it out.
PROMPTLY = 10.0


def test_changed_host_key_fails_tunnel_start_and_add_at_once(controller, cli, transport) -> None:  # noqa: F811
    with echo_server() as echo_port:
        local = tunnels.free_port()
        assert cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"]).exit_code == 0
        assert cli(["tunnel", "stop"]).exit_code == 0
        controller.sshd.rotate_host_key()

        started, elapsed = _timed(cli, ["tunnel", "start"])
        assert started.exit_code == 1, started.output
        assert elapsed < PROMPTLY, f"waited {elapsed:.1f}s for a refusal retrying cannot fix"
        assert "CHANGED" in started.output and "host-key --relearn --cluster lab" in started.output
        assert "Traceback" not in started.output

        other = tunnels.free_port()
        added, elapsed = _timed(cli, ["tunnel", "add", f"{other}:127.0.0.1:{echo_port}"])
        assert added.exit_code == 1 and "CHANGED" in added.output, added.output
        assert elapsed < PROMPTLY
        assert other not in [t.local for t in tunnels.read_desired(controller.ref).tunnels]

        by_name, elapsed = _timed(
            cli, ["tunnel", "add", f"{tunnels.free_port()}:master:8888"]
        )  # through the API tunnel
        assert by_name.exit_code == 1 and "CHANGED" in by_name.output, by_name.output
        assert elapsed < PROMPTLY

        removed = cli(["tunnel", "rm", str(local)])  # removing a tunnel needs no connection
        assert removed.exit_code == 0, removed.output

        # Re-learned on purpose: the supervisor still running is asked again, not believed.
        saved = controller.ref.directory / "console.txt"
        saved.write_text(controller.sshd.console_output())
        assert cli(["host-key", "--relearn", "--console-output", str(saved)]).exit_code == 0
        resumed = cli(["tunnel", "start"])
        assert resumed.exit_code == 0, resumed.output
        assert cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"]).exit_code == 0
        assert _wait_roundtrip(local, b"trusted again") == b"trusted again"


def test_refused_login_fails_tunnel_start_at_once(controller, cli, transport) -> None:  # noqa: F811
    authorized = controller.sshd.authorized_keys_path.read_text()
    controller.sshd.authorized_keys_path.write_text("")  # the controller no longer takes our key
    started, elapsed = _timed(cli, ["tunnel", "start"])
    assert started.exit_code == 1, started.output
    assert elapsed < PROMPTLY, f"waited {elapsed:.1f}s for a refusal retrying cannot fix"
    assert "refused the key" in started.output and "next:" in started.output

    # The refusal ends the retries: no new connection while nothing it depends on changes
    # (before, the backoff tried again after 0.5, 1 and 2 s) ...
    def connections() -> int:
        return controller.sshd.log_text().count("Connection from")

    seen = connections()
    time.sleep(4)
    assert connections() == seen, "the supervisor kept retrying a refused login"
    # ... and a changed controller record (say, another key_file) is tried at once, unasked.
    controller.sshd.authorized_keys_path.write_text(authorized)
    from clusterous_cli.endpoint import write_endpoint

    write_endpoint(controller.ref, controller.endpoint)
    assert tunnels.wait_for(controller.ref, lambda s: s.get("connected"), 10, "not back", refusals=False)


def test_a_stale_pid_file_never_signals_another_process(controller, cli) -> None:  # noqa: F811
    """A crashed supervisor's pid may be reused by anything, even by a process whose command line
    looks like a supervisor's: only a pid file the supervisor holds locked counts."""
    import subprocess
    import sys

    lookalike = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "clusterous_cli.forwarder",
            str(controller.ref.directory),
        ]
    )
    try:
        (controller.ref.directory / tunnels.PID_FILE).write_text(f"{lookalike.pid}\n")
        assert tunnels.supervisor_pid(controller.ref) is None
        stopped = cli(["tunnel", "stop"])
        assert stopped.exit_code == 0 and "was not running" in stopped.output
        assert lookalike.poll() is None  # not signalled

        with echo_server() as echo_port:  # and a new supervisor starts over the stale file
            local = tunnels.free_port()
            assert cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"]).exit_code == 0
            assert echo_roundtrip(local, b"fresh") == b"fresh"
        pid = tunnels.supervisor_pid(controller.ref)
        assert pid and pid != lookalike.pid
        assert cli(["tunnel", "stop"]).exit_code == 0
        assert tunnels.supervisor_pid(controller.ref) is None and lookalike.poll() is None
    finally:
        lookalike.kill()
        lookalike.wait()


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_tunnel_bench_runs_as_a_smoke_test(cipher) -> None:
    """CI runs the bench small, for its honesty (same cipher both sides, printed), not its timing."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.harness.sshd import require_tools

    require_tools()
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "BENCH_PAYLOAD_MB": "2",
        "BENCH_ROUNDS": "2",
        "BENCH_CIPHER": cipher,
        "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("", "core", "cli", "provisioner", "operator")),
    }
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "tunnel_throughput.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"ciphers: ours={cipher} openssh={cipher}" in lines
    assert [line.split()[2] for line in lines if line.startswith("round")] == [
        "ours", "openssh", "openssh", "ours"
    ]  # fmt: skip
    assert lines[-1].startswith("ratio=") and float(lines[-1].split("=")[1]) > 0


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ssh master through /proc (Linux)")
def test_a_killed_supervisor_takes_its_ssh_master_along(controller, cli) -> None:  # noqa: F811
    """SIGKILL leaves no chance to clean up: the master must not outlive the supervisor."""
    import contextlib
    import signal
    from pathlib import Path

    from tests.harness.sshd import _children

    with echo_server() as echo_port:
        local = tunnels.free_port()
        assert cli(["tunnel", "add", f"{local}:127.0.0.1:{echo_port}"]).exit_code == 0
        pid = tunnels.supervisor_pid(controller.ref)
        (master,) = [
            c for c in _children(pid) if b"-M" in Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
        ]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # our child: the CLI ran in-process
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        stat = Path(f"/proc/{master}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", (
            "the master lives on"
        )


def test_concurrent_starts_make_one_supervisor(controller) -> None:  # noqa: F811
    """Commands started together (say `kubeconfig` and `tunnel add`) share one supervisor."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("", "core", "cli", "provisioner", "operator"))
    }
    script = (
        "import sys; from pathlib import Path; from clusterous_cli import tunnels; "
        "from clusterous_cli.endpoint import ClusterRef; "
        "print(tunnels.start_supervisor(ClusterRef('default', 'lab', Path(sys.argv[1]))))"
    )
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(controller.ref.directory)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    pids = {int(p.communicate(timeout=60)[0]) for p in starters}
    assert pids == {tunnels.supervisor_pid(controller.ref)}, pids
