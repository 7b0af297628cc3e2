"""The tunnel supervisor's OpenSSH transport: one ControlMaster per cluster, one stdio forward per client.

Why OpenSSH: paramiko encrypts and copies every packet in Python, which caps a tunnel at about
half of `ssh -L` with the same cipher (issue 15). The supervisor therefore runs
`ssh -M -S SOCKET -N` to the controller with the options `openssh.options` builds (the
pinned known_hosts, `StrictHostKeyChecking=yes`, `HostKeyAlias`, the cluster key only) and hands
each accepted client socket to that master with the multiplexing request `ssh -S SOCKET -W
host:port` sends (MUX_C_NEW_STDIO_FWD, OpenSSH's PROTOCOL.mux §3): the client's descriptor is
passed over the control socket (SCM_RIGHTS) and from then on the master reads and writes it
itself, so no tunnelled byte passes through Python.

Why not `-O forward`: the listeners stay the supervisor's, so a local port stays open (and
ours) while the master is restarted, a new client waits for the connection to come back as it
always did, and a port taken by another program is reported per port, not fatal to the master.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

from clusterous_cli import hostkeys, openssh, ssh
from clusterous_cli.endpoint import ControllerEndpoint
from clusterous_core.errors import BadInput
from clusterous_core.polling import wait_until

SSH_ENV = "CLUSTEROUS_K8S_SSH"  # `paramiko` forces the paramiko transport; else the ssh binary
MUX_VERSION = 4
MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_SESSION_OPENED = 0x80000006
MUX_S_ALIVE = 0x80000005
PRESENTED = re.compile(r"\b(SHA256:[0-9A-Za-z+/]{43})")


class ForwardRefused(Exception):
    """The controller could not open the target (the master itself is fine)."""


def openssh_binary() -> str | None:
    """The `ssh` to drive, or None: not installed, or $CLUSTEROUS_K8S_SSH=paramiko."""
    choice = os.environ.get(SSH_ENV) or "ssh"
    return None if choice == "paramiko" else shutil.which(choice)


# --- the multiplexing protocol (PROTOCOL.mux): length-prefixed packets of SSH wire types ----


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(value: bytes) -> bytes:
    return _u32(len(value)) + value


def _send(control: socket.socket, body: bytes) -> None:
    control.sendall(_string(body))


def _recv_exact(control: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = control.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the ControlMaster closed the control connection")
        data += chunk
    return bytes(data)


def _recv(control: socket.socket) -> tuple[int, bytes]:
    (size,) = struct.unpack(">I", _recv_exact(control, 4))
    body = _recv_exact(control, size)
    return struct.unpack(">I", body[:4])[0], body[4:]


def _reason(body: bytes) -> str:
    """The text of a MUX_S_FAILURE / MUX_S_PERMISSION_DENIED (after the request id)."""
    with contextlib.suppress(struct.error):
        (size,) = struct.unpack(">I", body[4:8])
        return body[8 : 8 + size].decode(errors="replace")
    return "refused"


def _hello(path: Path, timeout: float) -> socket.socket:
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        control.settimeout(timeout)
        control.connect(str(path))
        _send(control, _u32(MUX_MSG_HELLO) + _u32(MUX_VERSION))
        kind, body = _recv(control)
        if kind != MUX_MSG_HELLO or body[:4] != _u32(MUX_VERSION):
            raise ConnectionError(f"unexpected multiplexing hello from the ControlMaster ({kind:#x})")
    except BaseException:
        control.close()
        raise
    return control


# --- the master -----------------------------------------------------------------------------


class Master:
    """A running `ssh -M` to the controller; `forward` hands it one client socket."""

    def __init__(self, process: subprocess.Popen, workdir: Path):
        self.process, self.workdir = process, workdir
        self.socket_path = workdir / "master.sock"

    @classmethod
    def start(
        cls,
        endpoint: ControllerEndpoint,
        binary: str,
        relearn: str = hostkeys.RELEARN,
        timeout: float = openssh.CONNECT_TIMEOUT,
    ) -> Master:
        """Connect, or raise what the paramiko path raises: a Refusal for a changed or missing
        host key and a refused login (retrying cannot help), a Failure for the network."""
        if not endpoint.key_file.is_file():
            raise BadInput(str(endpoint.key_file), None, "the cluster's private SSH key (file not found)")
        name = endpoint.host_key_name
        pinned = hostkeys.read_pinned(endpoint.known_hosts, name)
        if not pinned:
            hostkeys.check(hostkeys.HostKey("none", ""), pinned, name, relearn)  # raises: nothing pinned
        # A short private directory: a socket path must fit in 104 bytes (macOS), a cluster dir may not.
        workdir = Path(tempfile.mkdtemp(prefix="clusterous-ssh-"))
        errors = workdir / "master.err"
        argv = [
            binary, "-M", "-S", str(workdir / "master.sock"), "-N",
            "-o", "ControlPersist=no",
            "-o", "ExitOnForwardFailure=yes",
            # Two unanswered probes 15 s apart and the master exits: a dead link is replaced.
            "-o", "ServerAliveCountMax=2",
            *openssh.options(endpoint),
            endpoint.host,
        ]  # fmt: skip
        # Linux: the master gets SIGTERM when the supervisor dies, even by SIGKILL (util-linux
        # setpriv sets PR_SET_PDEATHSIG, which survives the exec of ssh); elsewhere only a
        # supervisor's own exit or `tunnel stop`'s process-group kill ends it.
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        with errors.open("wb") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, close_fds=True
            )
        master = cls(process, workdir)

        def settled() -> bool:
            """The master exited, or its control socket answers."""
            if process.poll() is not None:
                return True
            if master.socket_path.exists():
                with contextlib.suppress(OSError):
                    _hello(master.socket_path, timeout).close()
                    return True
            return False

        # ConnectTimeout covers TCP only, not the handshake: 5 s more for it.
        answered = wait_until(settled, timeout + 5)
        if process.poll() is not None:
            text = errors.read_text(errors="replace")
            master.close()
            raise _classify(text, endpoint, pinned, relearn)
        if not answered:
            master.close()
            raise ssh.unreachable(f"{endpoint.host}:{endpoint.port}", "SSH handshake timed out")
        return master

    def is_active(self) -> bool:
        return self.process.poll() is None and self.socket_path.exists()

    def alive(self, timeout: float) -> bool:
        """The master answers a MUX_C_ALIVE_CHECK (the link itself OpenSSH's ServerAlive checks)."""
        try:
            with _hello(self.socket_path, timeout) as control:
                _send(control, _u32(MUX_C_ALIVE_CHECK) + _u32(1))
                return _recv(control)[0] == MUX_S_ALIVE
        except (OSError, ConnectionError, struct.error):
            return False

    def forward(self, client: socket.socket, host: str, port: int, timeout: float) -> socket.socket:
        """Hand `client` to the master as a stdio forward to host:port (as seen from the controller).

        Returns the control connection: the master closes it when the forward ends, and closing
        it ends the forward. ForwardRefused when the controller cannot reach the target; OSError
        or ConnectionError when the master is gone."""
        control = _hello(self.socket_path, timeout)
        try:
            _send(
                control,
                _u32(MUX_C_NEW_STDIO_FWD) + _u32(1) + _string(b"") + _string(host.encode()) + _u32(port),
            )
            for _ in range(2):  # its "stdin" and "stdout": the same socket
                socket.send_fds(control, [b"\0"], [client.fileno()])
            kind, body = _recv(control)
            if kind != MUX_S_SESSION_OPENED:
                raise ForwardRefused(_reason(body))
        except BaseException:
            control.close()
            raise
        control.settimeout(None)
        return control

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_closed(control: socket.socket) -> None:
    """Block until the master ends the forward (it closes the control connection)."""
    with control, contextlib.suppress(OSError):
        while control.recv(4096):
            pass


def _classify(stderr: str, endpoint: ControllerEndpoint, pinned, relearn: str) -> Exception:
    """The master's last words as the error the paramiko path would raise."""
    name = endpoint.host_key_name
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        presented = PRESENTED.search(stderr)
        return hostkeys.HostKeyChanged(
            name,
            presented.group(1) if presented else "another key",
            [k.fingerprint for k in pinned],
            relearn,
        )
    if "Permission denied" in stderr:
        return ssh.key_refused(endpoint)
    lines = [line for line in stderr.splitlines() if line.strip()]
    return ssh.unreachable(
        f"{endpoint.host}:{endpoint.port}", lines[-1] if lines else "ssh exited before connecting"
    )
