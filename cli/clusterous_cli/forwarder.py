"""The tunnel supervisor: one background process per cluster forwarding local ports over ONE SSH connection.

Modelled on kr8s's port-forward: listeners stay up while the connection comes and goes; every
accepted client gets a fresh channel on whatever connection is current; a dead connection is
replaced with exponential backoff (0.5 s doubling to 30 s), so a restarted controller or a laptop
waking from sleep needs no user action. A refusal no retry can cure (a changed host key, a
refused login) stops the retries until the pin, the key or tunnels.yml changes.

The connection is an OpenSSH ControlMaster (`controlmaster.Master`, each client socket handed to
it: OpenSSH's speed) where an `ssh` binary exists, else a paramiko transport whose channels
this process pumps itself; a liveness probe (a keepalive request that must be answered) notices
silently dead TCP connections that paramiko's one-way keepalive cannot.

Run by `tunnels.start_supervisor` as `python -m clusterous_cli.forwarder ... CLUSTER_DIR`; it
inherits the locked pid file's descriptor (`--lock-fd`) and holds the lock while it lives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import paramiko

from clusterous_cli import controlmaster, hostkeys, openssh, ssh, tunnels
from clusterous_cli.endpoint import ClusterRef, load_endpoint
from clusterous_core.errors import ClusterousError

log = logging.getLogger("clusterous.tunnels")

# 256 KiB reads: measured faster than 64 KiB (per-call overhead) and than draining the whole
# channel window at once (2 MiB copies fall out of the CPU cache), for downloads in particular.
CHUNK = 256 * 1024
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
PROBE_EVERY, PROBE_TIMEOUT = 15.0, 10.0
CLIENT_WAIT = 30.0  # how long a new client waits for the connection to come back
POLL = 0.2


def pump(source_recv, dest_sendall, on_end) -> None:
    """Copy until EOF or error; big chunks keep per-call overhead out of the throughput."""
    try:
        while data := source_recv(CHUNK):
            dest_sendall(data)
    except (OSError, EOFError, Exception):  # noqa: BLE001 - either end may vanish mid-copy
        pass
    finally:
        with contextlib.suppress(Exception):
            on_end()


def _mtimes(paths: list[Path]) -> list[int | None]:
    stamps: list[int | None] = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            stamps.append(None)
    return stamps


def close_listener(listener: socket.socket) -> None:
    """shutdown() first: on Linux a bare close() leaves a thread blocked in accept() accepting."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        listener.close()


class Supervisor:
    """Holds the current connection and the listeners; the main loop reconciles both."""

    def __init__(self, ref: ClusterRef):
        self.ref = ref
        self.openssh = controlmaster.openssh_binary()
        self.connection: ssh.Connection | controlmaster.Master | None = None
        self.changed = threading.Condition()
        self.listeners: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
        self.port_states: dict[int, str] = {}
        self.stopping = threading.Event()
        self.last_error: str | None = None
        # A refusal retrying cannot fix (changed host key, refused login): what and what to do.
        self.refused: dict[str, str | None] | None = None
        self._refused_inputs: tuple[list[Path], list[int | None]] | None = None  # see _inputs
        self.reconnects = 0
        self.desired_mtime: int | None = None
        self._written: str | None = None
        self._retry_at = 0.0

    # --- connection ---------------------------------------------------------------------

    def current(self, timeout: float) -> ssh.Connection | controlmaster.Master | None:
        """The live connection, waiting up to `timeout` for the main loop to (re)connect."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.stopping.is_set():
                conn = self.connection
                if conn is not None and conn.is_active():
                    return conn
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, POLL))
        return None

    def _inputs(self) -> tuple[list[Path], list[int | None]]:
        """What a refusal depends on: the controller record, the pin and the key, and their mtimes."""
        paths = [self.ref.controller_file]
        with contextlib.suppress(ClusterousError):
            endpoint = load_endpoint(self.ref)
            paths += [endpoint.known_hosts, endpoint.key_file]
        return paths, _mtimes(paths)

    def _connect(self) -> bool:
        inputs = self._inputs()
        try:
            endpoint = load_endpoint(self.ref)
            if self.openssh:
                relearn = hostkeys.relearn_command(self.ref.cluster)
                conn: ssh.Connection | controlmaster.Master = controlmaster.Master.start(
                    endpoint, self.openssh, relearn
                )
            else:
                conn = ssh.connect_cluster(self.ref)
        except ClusterousError as exc:
            self.last_error = exc.render().replace("\n  next:", ";")
            refused = isinstance(exc, hostkeys.Refusal)
            self.refused = (
                {"error": exc.what, "next": exc.next_step} if isinstance(exc, hostkeys.Refusal) else None
            )
            self._refused_inputs = inputs if refused else None
            log.warning("connect %s: %s", "refused" if refused else "failed", self.last_error)
            return False
        with self.changed:
            self.connection = conn
            self.last_error = None
            self.refused = None
            self.changed.notify_all()
        via = "OpenSSH ControlMaster" if self.openssh else "paramiko"
        log.info("connected to %s:%s (%s)", endpoint.host, endpoint.port, via)
        return True

    def _drop(self, reason: str, expected: ssh.Connection | controlmaster.Master | None = None) -> None:
        """Forget the connection (only `expected`, when given: a newer one may have replaced it)."""
        with self.changed:
            conn = self.connection
            if expected is not None and conn is not expected:
                return
            self.connection = None
        if conn is not None:
            log.warning("connection lost: %s", reason)
            self.last_error = f"connection lost: {reason}; reconnecting"
            self.reconnects += 1
            conn.close()

    def _alive(self, conn: ssh.Connection | controlmaster.Master) -> bool:
        """Ask the server for an answer; no answer within PROBE_TIMEOUT means the link is dead."""
        if isinstance(conn, controlmaster.Master):
            return conn.alive(PROBE_TIMEOUT)  # OpenSSH probes the link itself (ServerAlive)
        answered = threading.Event()

        def probe() -> None:
            with contextlib.suppress(Exception):
                conn.transport.global_request("keepalive@openssh.com", wait=True)
                answered.set()

        threading.Thread(target=probe, daemon=True).start()
        return answered.wait(PROBE_TIMEOUT) and conn.is_active()

    # --- listeners ----------------------------------------------------------------------

    def _targets(self) -> dict[int, tuple[str, int]]:
        desired = tunnels.read_desired(self.ref)
        targets = {t.local: (t.host, t.port) for t in desired.tunnels}
        if desired.api_local:
            try:
                api_port = load_endpoint(self.ref).api_port
            except ClusterousError:
                api_port = 6443
            targets[desired.api_local] = ("127.0.0.1", api_port)
        return targets

    def reconcile(self) -> bool:
        """Open listeners for new tunnels, close removed ones, retarget changed ones; True when
        tunnels.yml changed (a command is waiting for this supervisor's answer)."""
        try:
            mtime = (self.ref.directory / tunnels.DESIRED_FILE).stat().st_mtime_ns
        except OSError:
            mtime = None
        retry_failed = len(self.listeners) < len(self.port_states) and time.monotonic() > self._retry_at
        if mtime == self.desired_mtime and not retry_failed:
            return False
        self._retry_at = time.monotonic() + 5.0
        try:
            targets = self._targets()
        except ClusterousError as exc:
            self.last_error = exc.render()
            return False
        for port in list(self.listeners):
            if port not in targets:
                close_listener(self.listeners.pop(port)[0])
                log.info("stopped listening on %s", port)
        self.port_states = {p: s for p, s in self.port_states.items() if p in targets}
        for port, target in targets.items():
            if port in self.listeners:
                self.listeners[port] = (self.listeners[port][0], target)
                continue
            try:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((tunnels.LISTEN_HOST, port))
                listener.listen(128)
            except OSError as exc:
                with contextlib.suppress(Exception):
                    listener.close()
                self.port_states[port] = f"port in use ({exc.strerror or exc})"
                log.warning("cannot listen on %s: %s", port, exc)
                continue
            self.listeners[port] = (listener, target)
            self.port_states[port] = "listening"
            threading.Thread(target=self._accept, args=(port, listener), daemon=True).start()
            log.info("listening on %s -> %s:%s", port, *target)
        changed, self.desired_mtime = mtime != self.desired_mtime, mtime
        return changed

    def _accept(self, port: int, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                client, origin = listener.accept()
            except OSError:
                return  # closed by reconcile or shutdown
            entry = self.listeners.get(port)
            if entry is None or entry[0] is not listener:
                client.close()
                return
            threading.Thread(target=self._serve, args=(client, origin, entry[1]), daemon=True).start()

    def _serve(self, client: socket.socket, origin, target: tuple[str, int]) -> None:
        """One client, one fresh channel; a stale connection is dropped and the open retried once."""
        ssh.tune_socket(client)
        channel = None
        for _attempt in range(2):
            conn = self.current(CLIENT_WAIT)
            if conn is None:
                break
            try:
                if isinstance(conn, controlmaster.Master):
                    control = conn.forward(client, target[0], target[1], openssh.CONNECT_TIMEOUT)
                    client.close()  # the master holds its own copy now and does all the copying
                    controlmaster.wait_closed(control)
                    return
                channel = conn.open_tcp(target[0], target[1], origin=origin)
                break
            except (paramiko.ChannelException, controlmaster.ForwardRefused) as exc:
                # the controller answered: the target refused
                log.warning("controller could not open %s:%s: %s", target[0], target[1], exc)
                break
            except Exception as exc:  # noqa: BLE001 - a dead connection raises several kinds
                self._drop(f"opening a channel failed: {exc}", conn)
        if channel is None:
            client.close()
            return
        client.settimeout(None)

        def client_done() -> None:
            channel.shutdown_write()

        def channel_done() -> None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        upstream = threading.Thread(
            target=pump, args=(client.recv, channel.sendall, client_done), daemon=True
        )
        upstream.start()
        pump(channel.recv, client.sendall, channel_done)
        upstream.join()
        channel.close()
        client.close()

    # --- status -------------------------------------------------------------------------

    def write_status(self) -> None:
        conn = self.connection
        status = {
            "pid": os.getpid(),
            "connected": bool(conn and conn.is_active()),
            "transport": "openssh" if self.openssh else "paramiko",
            # put/get run rsync's ssh through this master (no second handshake) while it lives.
            "control_socket": str(conn.socket_path) if isinstance(conn, controlmaster.Master) else None,
            "ports": {str(p): s for p, s in sorted(self.port_states.items())},
            "last_error": self.last_error,
            "refused": self.refused,
            "reconnects": self.reconnects,
            "desired_mtime": self.desired_mtime,
        }
        text = json.dumps(status, sort_keys=True)
        if text == self._written:
            return
        path = self.ref.directory / tunnels.STATUS_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        self._written = text

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        backoff, next_try, next_probe = BACKOFF_START, 0.0, time.monotonic() + PROBE_EVERY
        while not self.stopping.is_set():
            if not self.ref.controller_file.exists():
                log.info("controller record gone (cluster down?): stopping")
                break
            changed = self.reconcile()
            now = time.monotonic()
            conn = self.connection
            if conn is not None and not conn.is_active():
                self._drop("the transport closed")
                conn = None
                next_try = now  # first retry right away, then back off
            if conn is None and self.refused:
                # No retry cures a refusal: try again only when what it depends on changed, or
                # when a command waits on a tunnels.yml change (answer it with a fresh attempt,
                # not with the refusal of a minute ago).
                paths, stamps = self._refused_inputs or ([], [])
                next_try = now if changed or _mtimes(paths) != stamps else float("inf")
            if conn is None and now >= next_try:
                if self._connect():
                    backoff, next_probe = BACKOFF_START, now + PROBE_EVERY
                elif not self.refused:
                    next_try = time.monotonic() + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX)
            elif conn is not None and now >= next_probe:
                if not self._alive(conn):
                    self._drop("no answer to a keepalive")
                next_probe = time.monotonic() + PROBE_EVERY
            self.write_status()
            self.stopping.wait(POLL)
        self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        for listener, _ in self.listeners.values():
            close_listener(listener)
        if self.connection is not None:
            self.connection.close()
        with contextlib.suppress(OSError):
            (self.ref.directory / tunnels.STATUS_FILE).unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clusterous_cli.forwarder")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--lock-fd", type=int, help="the locked pid file, held while this process lives")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.lock_fd is not None:
        os.set_inheritable(args.lock_fd, False)  # the lock is ours alone: an ssh child must not keep it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    supervisor = Supervisor(ClusterRef(args.profile, args.cluster, args.directory))
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("tunnel supervisor %s started for %s/%s", os.getpid(), args.profile, args.cluster)
    supervisor.run()
    log.info("tunnel supervisor %s stopped", os.getpid())


if __name__ == "__main__":
    main()
