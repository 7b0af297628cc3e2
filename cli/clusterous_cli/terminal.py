"""An interactive terminal to a pod over the Kubernetes exec websocket (used by `connect`)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys


@contextlib.contextmanager
def raw_terminal():
    """Put a real terminal into raw mode for the session; leave pipes alone."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def interactive_exec(api, pod: str, namespace: str, command: list[str]) -> int:
    """Pump stdin → pod and pod → stdout/stderr until the shell exits; returns its exit code."""
    from kubernetes import client
    from kubernetes.stream import stream

    with raw_terminal() as tty:
        session = stream(
            client.CoreV1Api(api).connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=command,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=tty,
            _preload_content=False,
        )
        if tty:
            with contextlib.suppress(OSError):
                size = os.get_terminal_size()
                session.write_channel(4, json.dumps({"Width": size.columns, "Height": size.lines}))
        stdin = sys.stdin.fileno()
        while session.is_open():
            session.update(timeout=0.1)
            if session.peek_stdout():
                os.write(sys.stdout.fileno(), session.read_stdout().encode())
            if session.peek_stderr():
                os.write(sys.stderr.fileno(), session.read_stderr().encode())
            readable, _, _ = select.select([stdin], [], [], 0)
            if readable:
                data = os.read(stdin, 4096)
                if not data:
                    break
                session.write_stdin(data.decode(errors="replace"))
        session.close()
    code = session.returncode
    return code if isinstance(code, int) else 0
