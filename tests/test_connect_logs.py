"""`logs` and `connect` through the SSH tunnel, against the Kubernetes API emulator.

As in test_ssh_kube.py, the controller is the harness sshd and its `api_port` is the emulator's,
so every request goes through the tunnel supervisor. Pod logs are written by the test the way a
container would print them; exec runs the command as a local process standing in for the
container (tests/harness/k8s.py). `connect` and `logs -f` run as real processes with real pipes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from urllib.parse import urlsplit

import pytest

from clusterous_cli import tunnels
from tests.ssh_support import make_controller, write_k3s_yaml

COMPONENT_LABEL = "clusterous.io/component"


@pytest.fixture
def kube_controller(sshd, k8s_api):
    """A cluster whose controller is the sshd, with a k3s.yaml pointing at the emulator."""
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml", "connect-logs-token")
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml))
    try:
        yield made
    finally:
        tunnels.stop_supervisor(made.ref)


def add_pod(k8s_api, name: str, component: str, phase: str = "Running", env: dict | None = None) -> None:
    """A component's pod, placed and started by the emulator's scheduler and kubelet on a node of
    the test's; for phase "Succeeded" its image is one that exits 0 at once."""
    if k8s_api.get("v1/nodes", "node-1") is None:
        k8s_api.add_node("node-1", cpu="8")
    image = f"registry.local/{component}:1"
    container = {"name": component, "image": image}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    spec = {"containers": [container]}
    if phase == "Succeeded":

        async def exits_at_once(emulator, pod, container) -> int:
            return 0

        spec["restartPolicy"] = "Never"
        k8s_api.world.programs.append((re.compile(re.escape(image)), exits_at_once))
    k8s_api.create(
        "v1/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {COMPONENT_LABEL: component}},
            "spec": spec,
        },
        namespace="default",
    )
    k8s_api.wait_for(
        lambda: ((k8s_api.get("v1/pods", name, "default") or {}).get("status") or {}).get("phase") == phase,
        what=f"pod {name} {phase}",
    )


def cli_process(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clusterous_cli", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def follows_open(k8s_api) -> int:
    """How many `follow` log requests the emulator has received (kmock records every request)."""
    return k8s_api.call(
        lambda emulator: sum(
            1 for r in emulator if r.subresource == "log" and r.params.get("follow") == "true"
        )
    )


def read_until(process: subprocess.Popen, wanted: list[bytes], timeout: float = 30) -> bytes:
    """Read the process's stdout until every wanted piece has appeared; fail on timeout."""
    received = b""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    while not all(w in received for w in wanted):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out waiting for {wanted}; got {received!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"output ended before {wanted}; got {received!r}")
            received += chunk
    return received


def test_logs_prints_the_component_pods_log(kube_controller, k8s_api, cli):
    add_pod(k8s_api, "engine-a", "engine")
    k8s_api.write_pod_log("default", "engine-a", "starting\nready on :8080\n")
    k8s_api.write_pod_log("default", "engine-a", "served 3 requests\n")

    result = cli(["logs", "engine"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["starting", "ready on :8080", "served 3 requests"]

    tail = cli(["logs", "engine", "--tail", "1"])
    assert tail.exit_code == 0, tail.output
    assert tail.stdout.splitlines() == ["served 3 requests"]


def test_logs_all_prefixes_every_replica(kube_controller, k8s_api, cli):
    replicas = ["worker-0", "worker-1", "worker-2"]
    for pod in replicas:
        add_pod(k8s_api, pod, "worker")
        k8s_api.write_pod_log("default", pod, f"hello from {pod}\nbye from {pod}\n")
    add_pod(k8s_api, "other-0", "other")
    k8s_api.write_pod_log("default", "other-0", "not a worker\n")

    first = cli(["logs", "worker"])
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["hello from worker-0", "bye from worker-0"]

    every = cli(["logs", "worker", "--all"])
    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    expected = {f"[{pod}] {word} from {pod}" for pod in replicas for word in ("hello", "bye")}
    assert sorted(lines) == sorted(expected)
    for pod in replicas:  # each pod's lines keep their order
        own = [line for line in lines if line.startswith(f"[{pod}] ")]
        assert own == [f"[{pod}] hello from {pod}", f"[{pod}] bye from {pod}"]


def test_logs_follow_prints_appended_lines_until_the_pod_goes(kube_controller, k8s_api, cli):
    add_pod(k8s_api, "engine-a", "engine")
    k8s_api.write_pod_log("default", "engine-a", "before follow\n")
    assert cli(["kubeconfig", "--no-switch"]).exit_code == 0  # tunnel and credentials in place

    follower = cli_process("logs", "engine", "-f")
    try:
        read_until(follower, [b"before follow\n"])
        k8s_api.write_pod_log("default", "engine-a", "appended 1\nappended 2\n")
        read_until(follower, [b"appended 1\n", b"appended 2\n"])
        k8s_api.write_pod_log("default", "engine-a", "appended 3\n")
        read_until(follower, [b"appended 3\n"])
        assert follower.poll() is None  # still following

        k8s_api.delete("v1/pods", "engine-a")
        assert follower.wait(timeout=30) == 0, follower.stderr.read().decode()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_logs_follow_all_interleaves_replicas_and_stops_on_interrupt(kube_controller, k8s_api, cli):
    for pod in ("worker-0", "worker-1"):
        add_pod(k8s_api, pod, "worker")
    assert cli(["kubeconfig", "--no-switch"]).exit_code == 0

    follower = cli_process("logs", "worker", "--all", "-f")
    try:
        # Write only once both streams are open, so that these lines really are followed.
        k8s_api.wait_for(lambda: follows_open(k8s_api) == 2, what="two log follows")
        k8s_api.write_pod_log("default", "worker-1", "w1 first\n")
        k8s_api.write_pod_log("default", "worker-0", "w0 first\n")
        read_until(follower, [b"[worker-1] w1 first\n", b"[worker-0] w0 first\n"])
        k8s_api.write_pod_log("default", "worker-0", "w0 second\n")
        read_until(follower, [b"[worker-0] w0 second\n"])
        follower.send_signal(2)  # Ctrl-C
        follower.wait(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode != 0
    assert b"Traceback" not in follower.stderr.read()


def test_connect_runs_a_shell_in_the_pod_and_returns_its_exit_code(kube_controller, k8s_api, cli_subprocess):
    add_pod(k8s_api, "master-0", "master", env={"ROLE": "master"})

    result = cli_subprocess(
        ["connect", "master"], input="echo hello-$((6*7)) as $ROLE on $HOSTNAME\nexit 3\n"
    )
    assert result.exit_code == 3, result.stderr
    assert result.stdout.splitlines() == ["hello-42 as master on master-0"]

    # stdin ends without an `exit`: the shell sees end of input and ends with its last status.
    ended = cli_subprocess(["connect", "master"], input="echo to-stderr >&2\necho done; true\n")
    assert ended.exit_code == 0, ended.stderr
    assert ended.stdout.splitlines() == ["done"]
    assert "to-stderr" in ended.stderr


def test_connect_command_option_and_a_missing_program(kube_controller, k8s_api, cli_subprocess):
    add_pod(k8s_api, "master-0", "master")
    counted = cli_subprocess(["connect", "master", "--command", "wc -c"], input="12345")
    assert counted.exit_code == 0, counted.stderr
    assert counted.stdout.split() == ["5"]

    missing = cli_subprocess(["connect", "master", "--command", "no-such-program-here"], input="")
    assert missing.exit_code == 126
    assert "no-such-program-here" in missing.stderr


def test_connect_and_logs_without_a_pod_say_so(kube_controller, k8s_api, cli, cli_subprocess):
    add_pod(k8s_api, "master-0", "master")
    for argv in (["logs", "nosuch"], ["logs", "nosuch", "--all", "-f"]):
        result = cli(argv)
        assert result.exit_code == 1, result.output
        assert "no pods of component 'nosuch' in namespace 'default'" in result.stderr
    connect = cli_subprocess(["connect", "nosuch"], input="exit 0\n")
    assert connect.exit_code == 1
    assert "no pods of component 'nosuch'" in connect.stderr
    assert "Traceback" not in connect.stderr

    other_namespace = cli(["logs", "master", "--namespace", "kube-system"])
    assert other_namespace.exit_code == 1
    assert "no pods of component 'master' in namespace 'kube-system'" in other_namespace.stderr


def test_connect_to_a_completed_pod_is_refused_clearly(kube_controller, k8s_api, cli_subprocess):
    add_pod(k8s_api, "job-0", "job", phase="Succeeded")
    result = cli_subprocess(["connect", "job"], input="exit 0\n")
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert first == (
        "error: connecting to job-0: the Kubernetes API answered 400 "
        "cannot exec into a container in a completed pod; current phase is Succeeded"
    )


def test_connect_from_a_terminal_gets_a_terminal_of_its_size(kube_controller, k8s_api, cli):
    """With a terminal on stdin, the pod's shell gets a tty of the same size; keys go raw."""
    add_pod(k8s_api, "master-0", "master")
    assert cli(["kubeconfig", "--no-switch"]).exit_code == 0
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "clusterous_cli", "connect", "master", "--command", "sh"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(os.environ),
        start_new_session=True,
    )
    os.close(slave)
    received = b""
    try:
        # Type only once the remote shell has prompted: the CLI's switch to raw mode discards
        # what was typed before it (TCSAFLUSH), as on a real terminal.
        deadline = time.monotonic() + 30
        while not received.strip() and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                received += os.read(master, 65536)
        os.write(master, b"stty size; test -t 0 && echo remote-tty-$((2*3)); exit 4\r")
        while process.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):  # EIO once the CLI has exited
                    received += os.read(master, 65536)
        assert process.wait(timeout=5) == 4, received
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    lines = received.decode(errors="replace").splitlines()
    assert "33 101" in [line.strip() for line in lines]
    assert "remote-tty-6" in [line.strip() for line in lines]
