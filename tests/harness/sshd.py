"""A real OpenSSH server on 127.0.0.1 that stands in for a cluster controller.

Tests reach SSH code through Debian's own ``sshd`` (DESIGN §6) rather than a mock, so
paramiko, the OpenSSH client and rsync are all exercised against the real protocol.
The server has its own ed25519 host key and client key pair in a temporary directory;
nothing under /etc/ssh or ~/.ssh is read or written.

Fixtures:
    ``sshd``          a fresh running server per test (function scope).
    ``sshd_module``   one server per test module, for read-only use (no stop/rotate).

``running_sshd(workdir)`` is the context manager both fixtures use, for other scopes.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "sshd"
SSH_KEYGEN = "ssh-keygen"
# sshd lives in /usr/sbin, which is not on every user's PATH.
TOOL_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PRIVSEP_DIR = Path("/run/sshd")
HOST_KEY_COMMENT = "root@clusterous-controller"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# What ssh-keygen -l prints after the fingerprint, per key type: (bits, label).
_KEY_TYPES = {"ssh-ed25519": (256, "ED25519")}


# --- tools -------------------------------------------------------------------------------


def missing_tools(search_path: str = TOOL_SEARCH_PATH) -> list[str]:
    """Names of the OpenSSH binaries the harness needs that are not installed."""
    return [tool for tool in (SSHD, SSH_KEYGEN) if shutil.which(tool, path=search_path) is None]


def require_tools(environ: Mapping[str, str] = os.environ, search_path: str = TOOL_SEARCH_PATH) -> None:
    """Skip when OpenSSH is missing on a laptop, but fail in CI where it must be installed."""
    missing = missing_tools(search_path)
    if not missing:
        return
    message = f"OpenSSH server harness needs {', '.join(missing)} (apt-get install openssh-server)"
    if environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _tool(name: str) -> str:
    found = shutil.which(name, path=TOOL_SEARCH_PATH)
    if found is None:
        raise FileNotFoundError(name)
    return found


# --- keys --------------------------------------------------------------------------------


def generate_ed25519_key(path: Path, comment: str) -> Path:
    """Write a fresh passphrase-less ed25519 key pair at ``path`` (+ ``.pub``), mode 0600."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [_tool(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path


def fingerprint_sha256(public_key_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a ``type base64 [comment]`` public key line."""
    blob = base64.b64decode(public_key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def keygen_fingerprint_line(public_key_line: str) -> str:
    """The line ``ssh-keygen -l -f KEY.pub`` prints, e.g. ``256 SHA256:... root@host (ED25519)``."""
    key_type, _blob, *comment = public_key_line.split(maxsplit=2)
    bits, label = _KEY_TYPES[key_type]
    return f"{bits} {fingerprint_sha256(public_key_line)} {comment[0] if comment else 'no comment'} ({label})"


def known_hosts_line(host: str, port: int, public_key_line: str) -> str:
    """A known_hosts entry; OpenSSH and paramiko both spell a non-22 port as ``[host]:port``."""
    key_type, blob = public_key_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key_type} {blob}"


# --- cloud-init console output -----------------------------------------------------------


def _syslog_prefix(when: time.struct_time) -> str:
    """What ``logger -s -p user.info -t cloud-init`` puts before each message (RFC 3164)."""
    return f"<14>{time.strftime('%b', when)} {when.tm_mday:2d} {time.strftime('%H:%M:%S', when)} cloud-init: "


def cloud_init_console_output(public_key_lines: list[str], when: time.struct_time | None = None) -> str:
    """EC2 console output as Ubuntu's cloud-init leaves it, around the host key blocks.

    Matches /usr/lib/cloud-init/write-ssh-key-fingerprints (run by cc_keys_to_console):
    the fingerprints go through ``logger -s`` (hence the ``<14>... cloud-init:`` prefix),
    the keys themselves are echoed bare. Boot noise before and after keeps parsers honest.
    """
    prefix = _syslog_prefix(when or time.gmtime())
    fingerprints = [
        "#" * 61,
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
        *(keygen_fingerprint_line(line) for line in public_key_lines),
        "-----END SSH HOST KEY FINGERPRINTS-----",
        "#" * 61,
    ]
    lines = [
        "[    0.000000] Linux version 6.8.0-1021-aws (buildd@lcy02-amd64-098) #23-Ubuntu SMP",
        "[   12.345678] cloud-init[612]: Cloud-init v. 24.4-0ubuntu1~24.04.2 running 'modules:config'",
        *(prefix + message for message in fingerprints),
        "-----BEGIN SSH HOST KEY KEYS-----",
        *(line.strip() for line in public_key_lines),
        "-----END SSH HOST KEY KEYS-----",
        "[   14.567890] cloud-init[701]: Cloud-init v. 24.4-0ubuntu1~24.04.2 finished. Up 14.50 seconds",
    ]
    return "\n".join(lines) + "\n"


# --- processes ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (sshd setsid()s its session processes)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may contain spaces and parentheses; fields resume after the last ')'.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid``, found before anything is killed so none get orphaned."""
    found, queue = [], [pid]
    while queue:
        for child in _children(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def _kill_quietly(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _end_sessions(listener_pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each session monitor while the listener can still reap it (no zombies)."""
    sessions = _children(listener_pid)
    for pid in sessions:
        _kill_quietly(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while set(sessions) & set(_children(listener_pid)) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_for_ssh_banner(host: str, port: int, process: subprocess.Popen, timeout: float) -> None:
    """Poll until the port answers with an SSH banner; raise early if sshd died."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0) as conn:
            if conn.recv(64).startswith(b"SSH-"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sshd did not answer on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.02)


# --- the server --------------------------------------------------------------------------


def sshd_config(server: SshServer) -> str:
    """The whole sshd configuration: key-only login as the current user, forwarding, SFTP."""
    options = {
        "ListenAddress": server.host,
        "Port": server.port,
        "HostKey": server.host_key_path,
        "PidFile": server.workdir / "sshd.pid",
        "AuthorizedKeysFile": server.authorized_keys_path,
        "UsePAM": "no",
        "StrictModes": "no",
        "PermitRootLogin": "prohibit-password",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "AllowTcpForwarding": "yes",
        "PermitOpen": "any",
        "Subsystem": "sftp internal-sftp",
        "X11Forwarding": "no",
        "PrintMotd": "no",
        # Tunnel and transfer tests open many connections at once.
        "MaxStartups": "100",
        "MaxSessions": "100",
        "LogLevel": "VERBOSE",
    }
    # sshd_config(5) SetEnv: set in every session, over the client's and over sshd's own PATH.
    environment = dict(server.environment)
    if server.login_path:
        environment["PATH"] = server.login_path
    if environment:
        options["SetEnv"] = " ".join(f"{name}={value}" for name, value in environment.items())
    return "".join(f"{key} {value}\n" for key, value in options.items())


@dataclass
class SshServer:
    """A controller stand-in: connection facts, client commands, and lifecycle controls."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    environment: dict[str, str] = field(default_factory=dict)  # what the controller's sessions see
    process: subprocess.Popen | None = field(default=None, repr=False)
    login_path: str | None = None  # PATH of login sessions; None: sshd's default

    # Paths, all inside workdir.
    @property
    def host_key_path(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def client_key_path(self) -> Path:
        """The client's private key (0600); its public half is the only authorized key."""
        return self.workdir / "client_ed25519_key"

    @property
    def authorized_keys_path(self) -> Path:
        return self.workdir / "authorized_keys"

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file holding the current host key (rewritten by rotate_host_key)."""
        return self.workdir / "known_hosts"

    @property
    def config_path(self) -> Path:
        return self.workdir / "sshd_config"

    @property
    def log_path(self) -> Path:
        """sshd's own log (``-e``): the first place to look when a login is refused."""
        return self.workdir / "sshd.log"

    # Host key facts.
    @property
    def host_public_key(self) -> str:
        """The host's public key line, ``ssh-ed25519 AAAA... comment``."""
        return Path(str(self.host_key_path) + ".pub").read_text().strip()

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint_sha256(self.host_public_key)

    @property
    def known_hosts_line(self) -> str:
        return known_hosts_line(self.host, self.port, self.host_public_key)

    def console_output(self) -> str:
        """What EC2 GetConsoleOutput would show for this host after cloud-init ran."""
        return cloud_init_console_output([self.host_public_key])

    # Clients.
    def ssh_options(self) -> list[str]:
        """OpenSSH client options that trust only this host key and use only the client key."""
        return [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.client_key_path),
            "-p", str(self.port),
        ]  # fmt: skip

    def ssh_command(self, *remote_command: str) -> list[str]:
        """argv for ``ssh`` to this server, optionally running ``remote_command`` there."""
        return ["ssh", *self.ssh_options(), f"{self.user}@{self.host}", *remote_command]

    def rsync_rsh(self) -> str:
        """The value for ``rsync -e``; pair it with destinations from ``remote()``."""
        return shlex.join(["ssh", *self.ssh_options()])

    def remote(self, path: str | os.PathLike) -> str:
        """An rsync/scp style ``user@host:path``."""
        return f"{self.user}@{self.host}:{path}"

    def paramiko_client(self, known_hosts_line: str | None = None, **connect_kwargs):
        """A connected paramiko SSHClient that rejects any host key but the expected one.

        ``known_hosts_line`` defaults to the current key; pass an old one to see it refused.
        """
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        entry = paramiko.hostkeys.HostKeyEntry.from_line(known_hosts_line or self.known_hosts_line)
        for name in entry.hostnames:
            client.get_host_keys().add(name, entry.key.get_name(), entry.key)
        options = {"look_for_keys": False, "allow_agent": False, "timeout": 10} | connect_kwargs
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(self.client_key_path),
                **options,
            )
        except BaseException:
            client.close()
            raise
        return client

    # Controller stand-in.
    def make_shared_volume(self, name: str = "data") -> Path:
        """A directory standing for the controller's /home/data (same path on both 'ends')."""
        volume = self.workdir / "home" / name
        volume.mkdir(parents=True, exist_ok=True)
        return volume

    def hide_rsync(self) -> None:
        """Make this a controller without rsync: sessions get a PATH holding every program of the
        standard directories except rsync (restarts the server if it is running)."""
        bin_dir = self.workdir / "bin-without-rsync"
        bin_dir.mkdir(exist_ok=True)
        for folder in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            for program in Path(folder).iterdir() if Path(folder).is_dir() else ():
                link = bin_dir / program.name
                if program.name != "rsync" and not link.exists() and not link.is_symlink():
                    link.symlink_to(program)
        self.login_path = str(bin_dir)
        self._write_config()
        if self.is_running:
            self.restart()

    # Lifecycle.
    def prepare(self) -> None:
        """Create keys, authorized_keys and config once; start() may run many times after."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        generate_ed25519_key(self.host_key_path, HOST_KEY_COMMENT)
        generate_ed25519_key(self.client_key_path, f"{self.user}@clusterous-test-client")
        client_pub = Path(str(self.client_key_path) + ".pub").read_text()
        self.authorized_keys_path.write_text(client_pub)
        self.authorized_keys_path.chmod(0o600)
        if not self.port:
            self.port = free_port(self.host)
        self._write_config()

    def _write_config(self) -> None:
        self.config_path.write_text(sshd_config(self))
        self.known_hosts_path.write_text(self.known_hosts_line + "\n")

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start sshd in the foreground (-D) and return once it greets on its port."""
        if self.is_running:
            return
        with contextlib.suppress(PermissionError):  # non-root sshd runs without privsep
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [_tool(SSHD), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_for_ssh_banner(self.host, self.port, self.process, timeout)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{error}; sshd log:\n{self.log_text()}") from error

    def stop(self, drop_sessions: bool = True) -> None:
        """Stop listening; by default also cut open sessions, as a controller reboot would."""
        if self.process is None:
            return
        process, self.process = self.process, None
        leftovers = _descendants(process.pid) if drop_sessions else []
        if drop_sessions:
            _end_sessions(process.pid)
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in leftovers:  # normally gone already; SIGKILL whatever ignored SIGTERM
            _kill_quietly(pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port with the same host key."""
        self.stop()
        self.start()

    def set_environment(self, **environment: str) -> None:
        """The environment of every later session, as a controller's own configuration sets it."""
        self.environment = dict(environment)
        self._write_config()
        if self.is_running:
            self.restart()

    def rotate_host_key(self) -> str:
        """Replace the host key (same port) and restart; returns the new public key line."""
        was_running = self.is_running
        self.stop()
        generate_ed25519_key(self.host_key_path, HOST_KEY_COMMENT)
        self._write_config()
        if was_running:
            self.start()
        return self.host_public_key

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_sshd(workdir: Path) -> Iterator[SshServer]:
    """A started SshServer in ``workdir``, always stopped (sessions too) on the way out."""
    server = SshServer(workdir=workdir)
    try:
        server.prepare()
        start_on_a_free_port(server)
        yield server
    finally:
        server.stop()


def start_on_a_free_port(server: SshServer, attempts: int = 3) -> None:
    """First start; if another process took the chosen port meanwhile, pick another."""
    for attempt in range(attempts):
        try:
            server.start()
            return
        except RuntimeError:
            if attempt == attempts - 1 or "Address already in use" not in server.log_text():
                raise
            server.log_path.unlink()
            server.port = free_port(server.host)
            server._write_config()


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A fresh sshd for one test; free to stop, restart or rotate its host key."""
    require_tools()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def sshd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One sshd shared by a test module; tests must not stop it or rotate its key."""
    require_tools()
    with running_sshd(tmp_path_factory.mktemp("sshd_module")) as server:
        yield server
