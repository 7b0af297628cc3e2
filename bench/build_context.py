"""Bytes a build-context upload puts on the wire: first upload, unchanged re-run, one file changed.

The context is examples/basic-python/image plus what a real project folder holds beside its
Dockerfile: application code (2 MB in 20 files), a data file (8 MB), and what `.dockerignore`
leaves out (a 20 MB virtualenv, a 10 MB `.git`). Each upload is the one `build-image` and `run`
make (`transfer.put(only=..., delete=True)` of the files `buildcontext.load` keeps) to the
harness sshd; the bytes are counted by a TCP relay between the
client and the sshd (client → server, SSH framing included, the connection's handshake left out;
rsync's own ssh connection is counted whole), so they are what would cross the network to the
controller. Both transfer methods are measured (rsync sends only the changed blocks of a changed
file; SFTP re-sends a changed file whole).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from pathlib import Path

from _common import ROOT, controller_stand_in


class CountingRelay:
    """127.0.0.1:port → target, counting the bytes each client sends."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.sent = target, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upload: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if upload:
                    with self.lock:
                        self.sent += len(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def take(self) -> int:
        with self.lock:
            sent, self.sent = self.sent, 0
        return sent


def make_context(root: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "basic-python" / "image", root)
    (root / ".dockerignore").write_text(".git\nvenv\n**/__pycache__\n")
    for i in range(20):
        (root / "src" / f"module{i:02d}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / f"module{i:02d}.py").write_bytes(os.urandom(100_000))
    (root / "data.bin").write_bytes(os.urandom(8_000_000))
    for folder, megabytes in (("venv/lib", 20), (".git/objects", 10)):
        (root / folder).mkdir(parents=True)
        for i in range(megabytes):
            (root / folder / f"blob{i}").write_bytes(os.urandom(1_000_000))
    return root


def main() -> None:
    from clusterous_cli import buildcontext, buildjob, endpoint, hostkeys, ssh, transfer

    with controller_stand_in() as (sshd, ref, scratch):
        context = make_context(scratch / "context")
        relay = CountingRelay((sshd.host, sshd.port))
        relayed = endpoint.load_endpoint(ref)._replace(port=relay.port)
        endpoint.write_endpoint(ref, relayed)
        hostkeys.pin_from_console_output(relayed.known_hosts, relayed.host_key_name, sshd.console_output())
        on_disk = sum(p.stat().st_size for p in context.rglob("*") if p.is_file())
        print(f"context folder {on_disk / 1e6:.1f} MB on disk")
        for method in ("rsync", "sftp"):
            tag = f"bench-{method}"

            def upload(method: str = method, tag: str = tag) -> tuple[int, int]:
                ctx = buildcontext.load(context)
                relay.take()
                with ssh.connect_cluster(ref) as conn:
                    relay.take()  # the SSH handshake: not the context's cost
                    transfer.put(
                        conn, ctx.root, buildjob.context_dir("sim", tag), method=method,
                        only=list(ctx.files), delete=True,
                    )  # fmt: skip
                    return relay.take(), ctx.size

            first, sent_size = upload()
            unchanged, _ = upload()
            module = context / "src" / "module07.py"
            module.write_bytes(
                module.read_bytes()[:50_000] + b"# one line changed\n" + module.read_bytes()[50_000:]
            )
            changed, _ = upload()
            print(
                f"{method:5s}: context after .dockerignore {sent_size / 1e6:.1f} MB; bytes sent: "
                f"first upload {first / 1e6:.2f} MB, unchanged re-run {unchanged / 1e3:.1f} kB, "
                f"one file changed {changed / 1e3:.1f} kB"
            )


if __name__ == "__main__":
    main()
