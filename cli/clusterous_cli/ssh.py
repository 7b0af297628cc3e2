"""SSH to the controller: one paramiko transport, checked against the pinned host key, tuned for speed.

Why a bare `paramiko.Transport` and not `SSHClient`: we check the host key ourselves right after
key exchange (before authenticating), offer only the pinned key types, and set window, packet,
cipher and socket options that a naive client leaves at slow defaults. The same facts also build
the OpenSSH command line rsync uses (openssh.py), so both paths trust exactly the same key.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clusterous_cli import hostkeys
from clusterous_cli.endpoint import ControllerEndpoint, JumpHost
from clusterous_cli.openssh import CONNECT_TIMEOUT, KEEPALIVE_SECONDS
from clusterous_core.errors import BadInput, Failure

if TYPE_CHECKING:
    import paramiko

# Big windows keep the pipe full on long fat links; 32 KiB packets are what OpenSSH's
# direct-tcpip channels accept anyway. AES-GCM is an AEAD (no separate MAC pass) and runs on
# AES-NI through `cryptography`; paramiko has no chacha20-poly1305.
WINDOW_SIZE = 16 * 1024 * 1024
# Tunnel channels get OpenSSH's own direct-tcpip window (2 MiB), not 16 MiB: the window is how much
# the server may push ahead of our reader, and sshd keeps whatever the socket cannot take in its
# own output buffer, growing, copying and zeroing it. With 16 MiB, a reader that lagged for a
# moment (2 shared cores) left sshd juggling megabytes at 5-10x the CPU per byte, and downloads
# collapsed to 50-250 MB/s for whole transfers. At 2 MiB they stay steady; on a slow link we are
# capped exactly like `ssh -L` (window / RTT, about 40 MB/s at 50 ms).
TUNNEL_WINDOW_SIZE = 2 * 1024 * 1024
MAX_PACKET_SIZE = 32768
SOCKET_BUFFER = 4 * 1024 * 1024
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256")


def tune_socket(sock: socket.socket) -> None:
    """Large buffers and no Nagle delay: small interactive writes and bulk copies both stay fast."""
    for option, value in (
        (socket.SO_SNDBUF, SOCKET_BUFFER),
        (socket.SO_RCVBUF, SOCKET_BUFFER),
        (socket.SO_KEEPALIVE, 1),
    ):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, value)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def load_key(key_file: Path) -> paramiko.PKey:
    import paramiko

    if not key_file.is_file():
        raise BadInput(str(key_file), None, "the cluster's private SSH key (file not found)")
    try:
        return paramiko.PKey.from_path(str(key_file))
    except paramiko.PasswordRequiredException:
        raise BadInput(str(key_file), None, "a private key without a passphrase") from None
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise BadInput(str(key_file), None, "an OpenSSH or PEM private key", str(exc)) from None


def unreachable(where: str, reason: object) -> Failure:
    return Failure(
        f"cannot reach the controller at {where}: {reason}",
        "check the cluster is up (`clusterous-k8s status`) and that your address may connect "
        "(the cluster's ssh_cidr; `up --ssh-cidr` changes it)",
    )


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise unreachable(f"{host}:{port}", exc.strerror or exc) from None
    tune_socket(sock)
    return sock


def _jump_channel(endpoint: ControllerEndpoint, timeout: float):
    """A direct-tcpip channel through the bastion; its host key must already be known, never added."""
    import paramiko

    jump = JumpHost.parse(endpoint.jump_host or "")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with contextlib.suppress(OSError):
        client.load_system_host_keys()
    if endpoint.known_hosts.exists():
        client.load_host_keys(str(endpoint.known_hosts))
    try:
        client.connect(
            jump.host,
            port=jump.port,
            username=jump.user or endpoint.user,
            key_filename=str(endpoint.key_file),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        transport = client.get_transport()
        assert transport is not None  # connect() made it
        channel = transport.open_channel(
            "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise Failure(
            f"the jump host {jump.host} presented a different host key than ~/.ssh/known_hosts pins ({exc})",
            "check the bastion's key with its administrator",
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        raise Failure(
            f"jump host {jump.host}:{jump.port}: {exc}",
            "its host key must be in ~/.ssh/known_hosts and it must accept your key",
        ) from None
    except OSError as exc:
        client.close()
        raise unreachable(f"jump host {jump.host}:{jump.port}", exc.strerror or exc) from None
    return channel, client


def key_refused(endpoint: ControllerEndpoint) -> hostkeys.Refusal:
    return hostkeys.Refusal(
        f"the controller refused the key {endpoint.key_file} for user '{endpoint.user}'",
        "check key_file in the profile (`clusterous-k8s profile show`) or the cluster's controller.yml",
    )


class Connection:
    """An authenticated transport to the controller (plus the bastion's, when there is one)."""

    def __init__(self, endpoint: ControllerEndpoint, transport: paramiko.Transport, jump=None):
        self.endpoint, self.transport, self._jump = endpoint, transport, jump

    def is_active(self) -> bool:
        return self.transport.is_active()

    def open_tcp(self, host: str, port: int, origin=("127.0.0.1", 0), timeout: float = CONNECT_TIMEOUT):
        """A fresh direct-tcpip channel to host:port as seen from the controller."""
        return self.transport.open_channel(
            "direct-tcpip",
            (host, port),
            origin,
            window_size=TUNNEL_WINDOW_SIZE,
            max_packet_size=MAX_PACKET_SIZE,
            timeout=timeout,
        )

    def sftp(self):
        import paramiko

        return paramiko.SFTPClient.from_transport(
            self.transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
        )

    def run(self, argv: list[str], timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """Run a command on the controller; arguments are quoted, never interpreted by a shell."""
        channel = self.transport.open_session(timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(shlex.join(argv))
            out, err = bytearray(), bytearray()
            # The 16 MiB window holds any stderr we read after stdout; no deadlock for our commands.
            while chunk := channel.recv(65536):
                out += chunk
            while chunk := channel.recv_stderr(65536):
                err += chunk
            return channel.recv_exit_status(), bytes(out), bytes(err)
        finally:
            channel.close()

    def close(self) -> None:
        self.transport.close()
        if self._jump is not None:
            self._jump.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    endpoint: ControllerEndpoint, timeout: float = CONNECT_TIMEOUT, relearn: str = hostkeys.RELEARN
) -> Connection:
    """Open, check the host key against the pin, authenticate with the cluster key, keep alive."""
    import logging  # here, with paramiko: not needed before a connection is made

    import paramiko

    key = load_key(endpoint.key_file)
    name = endpoint.host_key_name
    pinned = hostkeys.read_pinned(endpoint.known_hosts, name)
    if not pinned:
        hostkeys.check(hostkeys.HostKey("none", ""), pinned, name, relearn)  # raises: nothing pinned
    jump = None
    logging.getLogger(__name__).debug(
        "SSH to %s@%s:%s%s, host key pinned as %s",
        endpoint.user, endpoint.host, endpoint.port,
        f" through {endpoint.jump_host}" if endpoint.jump_host else "", name,
    )  # fmt: skip
    if endpoint.jump_host:
        sock, jump = _jump_channel(endpoint, timeout)
    else:
        sock = _open_socket(endpoint.host, endpoint.port, timeout)
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
    )
    try:
        options = transport.get_security_options()
        options.ciphers = _prefer(options.ciphers, PREFERRED_CIPHERS)
        options.digests = _prefer(options.digests, PREFERRED_MACS)
        offered = [a for a in hostkeys.host_key_algorithms(pinned) if a in options.key_types]
        if offered:
            options.key_types = tuple(offered)
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise unreachable(f"{endpoint.host}:{endpoint.port}", f"SSH handshake failed ({exc})") from None
        server_key = transport.get_remote_server_key()
        hostkeys.check(
            hostkeys.HostKey(server_key.get_name(), server_key.get_base64()), pinned, name, relearn
        )
        try:
            transport.auth_publickey(endpoint.user, key)
        except paramiko.AuthenticationException:
            raise key_refused(endpoint) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise unreachable(f"{endpoint.host}:{endpoint.port}", f"authentication failed ({exc})") from None
        transport.set_keepalive(KEEPALIVE_SECONDS)
    except BaseException:
        transport.close()
        if jump is not None:
            jump.close()
        raise
    return Connection(endpoint, transport, jump)


def _prefer(available: Sequence[str], preferred: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(p for p in preferred if p in available)
    return first + tuple(a for a in available if a not in first)


def connect_cluster(ref, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """Connect to a cluster's controller; a refused key names the exact re-learn command."""
    from clusterous_cli.endpoint import load_endpoint

    return connect(load_endpoint(ref), timeout=timeout, relearn=hostkeys.relearn_command(ref.cluster))
