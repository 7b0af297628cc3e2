"""MB/s through our tunnel supervisor ÷ MB/s through OpenSSH's `ssh -N -L`, same sshd, same payload.

Both forwarders carry the same bytes to the same local services on the same harness sshd, in
alternating rounds: an upload (client → sink, which reports the count) and a download
(source → client). The ratio uses the median round of each forwarder (the worst round is printed too), damping the noise of
a shared machine. Last line: `ratio=<value>` (goal ≥ 0.9).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time

from _common import controller_stand_in

PAYLOAD_MB = int(os.environ.get("BENCH_PAYLOAD_MB", "128"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BLOCK = os.urandom(1024 * 1024)


def serve(handler) -> int:
    listener = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1]


def sink(conn: socket.socket) -> None:
    total = 0
    with conn:
        while data := conn.recv(1 << 20):
            total += len(data)
        conn.sendall(str(total).encode())


def source(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        for _ in range(PAYLOAD_MB):
            conn.sendall(BLOCK)


def upload(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(PAYLOAD_MB):
            conn.sendall(BLOCK)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while data := conn.recv(100):
            reply += data
    assert int(reply) == PAYLOAD_MB * len(BLOCK), reply
    return PAYLOAD_MB * len(BLOCK) / (time.perf_counter() - started) / 1e6


def download(port: int) -> float:
    started = time.perf_counter()
    total = 0
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while data := conn.recv(1 << 20):
            total += len(data)
    assert total == PAYLOAD_MB * len(BLOCK), total
    return total / (time.perf_counter() - started) / 1e6


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(port)


def main() -> None:
    from clusterous_cli import tunnels
    from tests.harness.sshd import free_port

    sink_port, source_port = serve(sink), serve(source)
    with controller_stand_in() as (sshd, ref, _):
        ours = {"up": tunnels.free_port(), "down": tunnels.free_port()}
        desired = tunnels.Desired(
            tunnels=[
                tunnels.Tunnel(ours["up"], "127.0.0.1", sink_port),
                tunnels.Tunnel(ours["down"], "127.0.0.1", source_port),
            ]
        )
        theirs = {"up": free_port(), "down": free_port()}
        openssh = subprocess.Popen(
            [
                "ssh", *sshd.ssh_options(), "-N",
                "-L", f"127.0.0.1:{theirs['up']}:127.0.0.1:{sink_port}",
                "-L", f"127.0.0.1:{theirs['down']}:127.0.0.1:{source_port}",
                f"{sshd.user}@{sshd.host}",
            ]
        )  # fmt: skip
        try:
            tunnels.apply(ref, desired, list(ours.values()))
            tunnels.wait_for(ref, lambda s: s.get("connected"), 20, "tunnel not connected")
            for port in theirs.values():
                wait_listening(port)
            results = {"ours": [], "openssh": []}
            for round_no in range(ROUNDS):
                for name, ports in (("ours", ours), ("openssh", theirs)):
                    up, down = upload(ports["up"]), download(ports["down"])
                    both = 2 / (1 / up + 1 / down)  # MB/s over the combined bytes
                    results[name].append(both)
                    print(f"round {round_no + 1} {name:8s} upload {up:7.1f} MB/s  download {down:7.1f} MB/s")
        finally:
            openssh.terminate()
            openssh.wait(5)
            tunnels.stop_supervisor(ref)
    # Medians of interleaved rounds: a slow round of ours counts, it is not hidden behind a best one.
    med_ours, med_openssh = statistics.median(results["ours"]), statistics.median(results["openssh"])
    worst = min(o / t for o, t in zip(results["ours"], results["openssh"], strict=True))
    print(
        f"payload {PAYLOAD_MB} MB each way; median combined: ours {med_ours:.1f} MB/s, OpenSSH {med_openssh:.1f} MB/s"
    )
    print(f"worst single round ours/OpenSSH: {worst:.3f}")
    print(f"ratio={med_ours / med_openssh:.3f}")


if __name__ == "__main__":
    main()
