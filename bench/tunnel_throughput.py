"""MB/s through our tunnel supervisor ÷ MB/s through OpenSSH's `ssh -N -L`, same sshd, same cipher.

Honest by construction (issue 15 item 3):
- the sshd offers ONE cipher (`BENCH_CIPHER`, default aes128-gcm@openssh.com; also
  chacha20-poly1305@openssh.com), so both forwarders must use it; the cipher each one really
  negotiated is read back from sshd's own debug log and printed (`ciphers: ours=… openssh=…`);
- every round runs both forwarders, alternating which goes first;
- both forwarders run in a session of their own: the supervisor does (`tunnel start` detaches
  it), so `ssh -L` is started the same way. Linux's autogroup scheduler shares the CPU between
  sessions, not processes; with `ssh -L` in the bench's own session (beside the client and
  server threads) it got a different share, worth 5-10 % at 700-800 MB/s on 2 cores;
- payloads of 512 MB each way by default (`BENCH_PAYLOAD_MB`; CI runs a small smoke size);
- the ratio is taken from the medians of the rounds (`ratio=`), and the worst round is printed.

Each round is an upload (client → sink, which reports the byte count) and a download
(source → client), timed separately and combined as MB/s over all bytes.
Set `CLUSTEROUS_K8S_SSH=paramiko` to measure the paramiko fallback instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time

from _common import controller_stand_in, negotiated_since, offer_only

PAYLOAD_MB = int(os.environ.get("BENCH_PAYLOAD_MB", "512"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CIPHER = os.environ.get("BENCH_CIPHER", "aes128-gcm@openssh.com")
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
        offer_only(sshd, CIPHER)
        ours = {"up": tunnels.free_port(), "down": tunnels.free_port()}
        desired = tunnels.Desired(
            tunnels=[
                tunnels.Tunnel(ours["up"], "127.0.0.1", sink_port),
                tunnels.Tunnel(ours["down"], "127.0.0.1", source_port),
            ]
        )
        theirs = {"up": free_port(), "down": free_port()}
        openssh = None
        try:
            offset = len(sshd.log_text())
            tunnels.apply(ref, desired, list(ours.values()))
            tunnels.wait_for(ref, lambda s: s.get("connected"), 20, "tunnel not connected")
            ours_cipher, offset = negotiated_since(sshd, offset)
            openssh = subprocess.Popen(
                [
                    "ssh", *sshd.ssh_options(), "-N",
                    "-L", f"127.0.0.1:{theirs['up']}:127.0.0.1:{sink_port}",
                    "-L", f"127.0.0.1:{theirs['down']}:127.0.0.1:{source_port}",
                    f"{sshd.user}@{sshd.host}",
                ],
                start_new_session=True,  # as the supervisor runs: see the module's docstring
            )  # fmt: skip
            for port in theirs.values():
                wait_listening(port)
            openssh_cipher, _ = negotiated_since(sshd, offset)
            print(f"ciphers: ours={ours_cipher} openssh={openssh_cipher}", flush=True)
            results: dict[str, list[float]] = {"ours": [], "openssh": []}
            for round_no in range(ROUNDS):
                order = [("ours", ours), ("openssh", theirs)]
                for name, ports in order if round_no % 2 == 0 else order[::-1]:
                    up, down = upload(ports["up"]), download(ports["down"])
                    both = 2 / (1 / up + 1 / down)  # MB/s over the combined bytes
                    results[name].append(both)
                    print(
                        f"round {round_no + 1} {name:8s} upload {up:7.1f} MB/s  download {down:7.1f} MB/s",
                        flush=True,
                    )
        finally:
            if openssh is not None:
                openssh.terminate()
                openssh.wait(5)
            tunnels.stop_supervisor(ref)
    # Medians of interleaved rounds: a slow round of ours counts, it is not hidden behind a best one.
    med_ours, med_openssh = statistics.median(results["ours"]), statistics.median(results["openssh"])
    worst = min(o / t for o, t in zip(results["ours"], results["openssh"], strict=True))
    print(
        f"payload {PAYLOAD_MB} MB each way, {ROUNDS} rounds; median combined: "
        f"ours {med_ours:.1f} MB/s, OpenSSH {med_openssh:.1f} MB/s"
    )
    print(f"worst round ours/OpenSSH: {worst:.3f}")
    print(f"ratio={med_ours / med_openssh:.3f}")


if __name__ == "__main__":
    main()
