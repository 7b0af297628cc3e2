"""Tunnels as the CLI manages them: specs, the per-cluster records, and the background supervisor's life.

Two files in the cluster's config directory connect the CLI and the supervisor process
(`clusterous_cli.forwarder`), so neither needs to talk to the other directly:

    tunnels.yml       what should be forwarded (written by the CLI, polled by the supervisor):
                        api: {local: 41234}                    # the Kubernetes API tunnel
                        tunnels:
                          - {local: 8888, host: 10.43.0.17, port: 8888, component: master}
    supervisor.json   what is (written by the supervisor): pid, connected, listening ports,
                      per-port errors, last error, reconnect count.
    supervisor.pid    the pid, written by the CLI the moment it starts the process, and flock()ed
                      by that process for as long as it lives: a pid in an unlocked file is stale
                      and is never signalled (it may belong to an unrelated process by now).
    tunnels.log       the supervisor's log (no secrets in it).

`socket` and `ipaddress` are imported where they are used: `put` and `get` only read the status
file, and start-up is most of a small transfer (docs/ssh.md "Throughput").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from clusterous_cli.endpoint import ClusterRef
from clusterous_core.errors import BadInput, Failure
from clusterous_core.polling import wait_until

DESIRED_FILE = "tunnels.yml"
STATUS_FILE = "supervisor.json"
PID_FILE = "supervisor.pid"
LOG_FILE = "tunnels.log"
API_NAME = "kubernetes-api"
LISTEN_HOST = "127.0.0.1"
MIN_LOCAL_PORT, MAX_PORT = 1024, 65535
COMPONENT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SPEC_HELP = (
    "LOCAL:COMPONENT:PORT (e.g. 8888:master:8888) or LOCAL:HOST:PORT with an IP address or dotted name"
)


class TunnelSpec(NamedTuple):
    """A parsed `LOCAL:TARGET:PORT`: TARGET is a component name or, when raw, a host."""

    local: int
    target: str
    port: int
    raw: bool  # True: target is a host the controller connects to directly


class Tunnel(NamedTuple):
    """One forwarded port as recorded in tunnels.yml."""

    local: int
    host: str
    port: int
    component: str | None = None

    @property
    def name(self) -> str:
        return self.component or f"{self.host}:{self.port}"


class Desired:
    """tunnels.yml: the Kubernetes API tunnel's local port and the other tunnels. (No dataclasses
    here: see endpoint.ControllerEndpoint on start-up.)"""

    def __init__(self, api_local: int | None = None, tunnels: list[Tunnel] | None = None) -> None:
        self.api_local = api_local
        self.tunnels = tunnels if tunnels is not None else []


def _port(text: str, what: str, spec: str, low: int) -> int:
    if not text.isdigit() or not low <= int(text) <= MAX_PORT:
        raise BadInput("tunnel spec", what, f"a port number {low}-{MAX_PORT} in {SPEC_HELP}", spec)
    return int(text)


def is_raw_host(target: str) -> bool:
    """IP addresses and dotted names are hosts; a bare lowercase label is a component."""
    import ipaddress

    with contextlib.suppress(ValueError):
        ipaddress.ip_address(target.strip("[]"))
        return True
    return "." in target


def parse_spec(spec: str) -> TunnelSpec:
    """`LOCAL:COMPONENT:PORT` or `LOCAL:HOST:PORT`; local ports 1024-65535 (no root needed)."""
    local, sep1, rest = spec.partition(":")
    target, sep2, port = rest.rpartition(":")
    if not (sep1 and sep2 and target):
        raise BadInput("tunnel spec", None, SPEC_HELP, spec)
    local_port = _port(local, "LOCAL", spec, MIN_LOCAL_PORT)
    remote_port = _port(port, "PORT", spec, 1)
    raw = is_raw_host(target)
    if not raw and not COMPONENT_NAME.match(target):
        raise BadInput(
            "tunnel spec", "COMPONENT", f"a component name (lowercase, digits, '-') in {SPEC_HELP}", spec
        )
    return TunnelSpec(local_port, target.strip("[]"), remote_port, raw)


def check_local_port(port: int, what: str = "LOCAL") -> int:
    if not MIN_LOCAL_PORT <= port <= MAX_PORT:
        raise BadInput("tunnel", what, f"a local port {MIN_LOCAL_PORT}-{MAX_PORT}", port)
    return port


# --- records -------------------------------------------------------------------------------


def read_desired(ref: ClusterRef) -> Desired:
    from clusterous_cli import config

    path = ref.directory / DESIRED_FILE
    if not path.exists():
        return Desired()
    data = config.read_yaml(path)
    api = data.get("api") or {}
    return Desired(
        api_local=api.get("local"),
        tunnels=[Tunnel(**t) for t in data.get("tunnels") or []],
    )


def update_desired(ref: ClusterRef, change) -> Desired:
    """Read tunnels.yml, let `change(desired)` edit it (or raise: nothing is written), write it
    back; under the file's lock, so concurrent commands never lose each other's tunnels."""
    from clusterous_cli import config

    with config.locked(ref.directory / DESIRED_FILE):
        desired = read_desired(ref)
        change(desired)
        write_desired(ref, desired)
    return desired


def write_desired(ref: ClusterRef, desired: Desired) -> None:
    import yaml

    from clusterous_cli import config

    data: dict = {}
    if desired.api_local:
        data["api"] = {"local": desired.api_local}
    data["tunnels"] = [{k: v for k, v in t._asdict().items() if v is not None} for t in desired.tunnels]
    config.write_private(ref.directory / DESIRED_FILE, yaml.safe_dump(data, sort_keys=False))


def read_status(ref: ClusterRef) -> dict:
    path = ref.directory / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- the supervisor process ---------------------------------------------------------------


def _locked_by_other(fd: int) -> bool:
    """True when another process holds the pid file's lock, i.e. the supervisor is alive."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def supervisor_pid(ref: ClusterRef) -> int | None:
    """The pid of this cluster's running supervisor, or None. Only a pid whose file the
    supervisor holds locked counts: a stale file (crash, reboot, reused pid) is ignored."""
    try:
        fd = os.open(ref.directory / PID_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _locked_by_other(fd):
            return None
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def start_supervisor(ref: ClusterRef) -> int:
    """Start the supervisor unless it runs; it outlives this command (own session, no terminal).

    The pid file is locked here and its descriptor handed to the child, which keeps the lock for
    its whole life; a concurrent start finds the lock taken and waits for that supervisor's pid."""
    pid = supervisor_pid(ref)
    if pid:
        return pid
    fd = os.open(ref.directory / PID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        found: list[int] = []

        def ours_or_running() -> bool:
            """The lock is ours (no supervisor lives), or another command's supervisor answers."""
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:  # a supervisor, one being started, or a brief probe
                found[:] = [supervisor_pid(ref) or 0]
                return bool(found[0])

        if not wait_until(ours_or_running, 5.0):
            raise Failure("another command holds the tunnel supervisor's pid file", "try again in a moment")
        if found and found[0]:
            return found[0]
        (ref.directory / STATUS_FILE).unlink(missing_ok=True)
        with open(ref.directory / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "clusterous_cli.forwarder",
                    "--profile", ref.profile_name, "--cluster", ref.cluster,
                    "--lock-fd", str(fd), str(ref.directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=(fd,),
            )  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{process.pid}\n".encode(), 0)
    finally:
        os.close(fd)  # the child's copy keeps the lock
    return process.pid


def stop_supervisor(ref: ClusterRef, timeout: float = 5.0) -> int | None:
    """SIGTERM and wait; SIGKILL its process group (it and its ssh) if it will not go.
    Returns the pid that was stopped."""
    pid = supervisor_pid(ref)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        _reap(pid)
        return supervisor_pid(ref) != pid

    if not wait_until(gone, timeout) and supervisor_pid(ref) == pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # its own session: the group is the supervisor's
        wait_until(gone, timeout)
    (ref.directory / STATUS_FILE).unlink(missing_ok=True)
    return pid


def _reap(pid: int) -> None:
    """Collect the exit status if the supervisor is our own child (tests run the CLI in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def refusal(ref: ClusterRef, status: dict) -> dict | None:
    """The supervisor's refusal that retrying cannot fix (a changed host key, a refused login),
    when it answers the current tunnels.yml: an older one may have been fixed since."""
    refused = status.get("refused")
    return refused if refused and status.get("desired_mtime") == _mtime(ref) else None


def wait_for(ref: ClusterRef, condition, timeout: float, what: str, refusals: bool = True) -> dict:
    """Poll supervisor.json until `condition(status)` holds; a Failure naming the log if it never
    does, and (`refusals`) at once when the supervisor reports a refusal waiting cannot cure."""
    started = time.monotonic()
    status: dict = {}

    def settled() -> bool:
        nonlocal status
        status = read_status(ref)
        # a supervisor that died (after 2 s to start) will not change its status any more
        return (
            condition(status)
            or (refusals and refusal(ref, status) is not None)
            or (supervisor_pid(ref) is None and time.monotonic() - started > 2)
        )

    met = wait_until(settled, timeout)
    refused = refusal(ref, status) if refusals else None
    if refused:
        raise Failure(f"the tunnel cannot connect: {refused['error']}", refused.get("next"))
    if met and condition(status):
        return status
    error = status.get("last_error") or "no answer from the tunnel supervisor"
    raise Failure(
        f"{what}: {error}",
        f"see {ref.directory / LOG_FILE}; `clusterous-k8s tunnel ls` shows the tunnels' state",
    )


def port_state(status: dict, port: int) -> str | None:
    """'listening', an error message, or None when the supervisor has not reached this port yet."""
    return (status.get("ports") or {}).get(str(port))


def bindable(port: int) -> bool:
    """True when a tunnel could listen on this local port now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def next_free_port(start: int, taken: set[int]) -> int:
    for port in range(start, MAX_PORT + 1):
        if port not in taken and bindable(port):
            return port
    raise Failure(f"no free local port from {start} up", "pick a LOCAL port yourself")


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LISTEN_HOST, 0))
        return probe.getsockname()[1]


def apply(ref: ClusterRef, desired: Desired | None, wait_ports: list[int], timeout: float = 20.0) -> dict:
    """Record `desired` (None: the caller did, with `update_desired`), make sure the supervisor
    runs, and wait until it has read tunnels.yml and listens on `wait_ports`."""
    if desired is not None:

        def replace(current: Desired) -> None:
            current.api_local, current.tunnels = desired.api_local, desired.tunnels

        update_desired(ref, replace)
    start_supervisor(ref)

    def settled(status: dict) -> bool:
        return status.get("desired_mtime") == _mtime(ref) and all(port_state(status, p) for p in wait_ports)

    # Only removing tunnels (no ports to wait for) works whatever the connection's state.
    status = wait_for(
        ref, settled, timeout, "the tunnel supervisor did not pick up the change", refusals=bool(wait_ports)
    )
    for port in wait_ports:
        state = port_state(status, port)
        if state != "listening":
            raise Failure(f"cannot listen on local port {port}: {state}", "pick another LOCAL port")
    return status


def _mtime(ref: ClusterRef) -> float | None:
    with contextlib.suppress(OSError):
        return (ref.directory / DESIRED_FILE).stat().st_mtime_ns
    return None


def ensure_api_tunnel(ref: ClusterRef, timeout: float = 20.0) -> int:
    """The local port of the Kubernetes API tunnel, started (and connected) if it was not."""

    def choose(desired: Desired) -> None:
        desired.api_local = desired.api_local or free_port()

    desired = update_desired(ref, choose)
    assert desired.api_local is not None  # choose() set it
    apply(ref, None, [desired.api_local], timeout)
    wait_for(
        ref,
        lambda s: s.get("connected"),
        timeout,
        "the SSH tunnel to the controller is not connected",
    )
    return desired.api_local
