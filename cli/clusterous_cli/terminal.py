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
    """Pump stdin → pod and pod → stdout/stderr until the command ends; returns its exit code.

    Bytes pass through unchanged (binary frames both ways). The end of a piped stdin is passed on
    (the v5 protocol's close of stdin; nothing can be sent on v4) and the session goes on until the
    command exits, so `... | clusterous-k8s connect C` gets all the output and the exit status.
    """
    from kubernetes import client
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import STDIN_CHANNEL

    with raw_terminal() as tty:
        try:
            session = stream(
                client.CoreV1Api(api).connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=command,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=tty,
                binary=True,
                _preload_content=False,
            )
        except client.ApiException as exc:
            raise refused_upgrade(exc) from None
        if tty:
            with contextlib.suppress(OSError):
                size = os.get_terminal_size()
                session.write_channel(4, json.dumps({"Width": size.columns, "Height": size.lines}))
        stdin = sys.stdin.fileno()
        reading = True
        while session.is_open():
            try:
                session.update(timeout=0.1)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed first and its close frame could not be answered
            _pass_output(session)
            if reading and select.select([stdin], [], [], 0)[0]:
                data = os.read(stdin, 65536)
                try:
                    if data:
                        session.write_stdin(data)
                    else:  # end of input: tell the command, keep reading its output
                        reading = False
                        session.close_channel(STDIN_CHANNEL)
                except (BrokenPipeError, ConnectionResetError):
                    # The command ended (and the server closed) before taking all its input, as
                    # `exit 3` in the middle of piped lines does: the rest is not for anyone;
                    # its output and exit status are still read below.
                    reading = False
        _pass_output(session)  # what arrived with the last frames
        with contextlib.suppress(OSError):
            session.close()
    return exit_status(session)


def _pass_output(session) -> None:
    if session.peek_stdout():
        _write_all(sys.stdout.fileno(), session.read_stdout())
    if session.peek_stderr():
        _write_all(sys.stderr.fileno(), session.read_stderr())


def refused_upgrade(exc):
    """An ApiException with the HTTP status and the Status message of a refused WebSocket upgrade.

    The client wraps the handshake error in ApiException(status=0, reason=<status line, headers
    and body in one string>); the original (its __context__) has the parts.
    """
    from kubernetes import client
    from websocket import WebSocketBadStatusException

    bad = exc.__context__
    if not isinstance(bad, WebSocketBadStatusException):
        return exc
    body = bad.resp_body.decode(errors="replace") if isinstance(bad.resp_body, bytes) else bad.resp_body
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return client.ApiException(status=bad.status_code, reason=message or str(bad).split(" -+-+- ")[0])


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def exit_status(session) -> int:
    """The command's exit code from the Status the API server sends on channel 3 at the end.

    (The client's own `returncode` fails with a TypeError when no status came.)
    """
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    raw = session.read_channel(ERROR_CHANNEL)
    try:
        status = json.loads(raw) if raw else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise ConnectionError("the session ended without the command's exit status (connection lost?)")
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message"))
    raise RuntimeError(status.get("message") or "the command failed without an exit code")
