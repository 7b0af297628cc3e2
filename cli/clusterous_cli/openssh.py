"""The OpenSSH client's command line to the controller, for rsync's `-e` and the tunnel
supervisor's master: it trusts exactly what our paramiko connection (ssh.py) trusts, the pinned
host key and the cluster key, and nothing of the user's own ssh configuration.

Apart from ssh.py (paramiko's side) so that a `put` that runs rsync imports no more than these
builders (docs/ssh.md "Throughput").
"""

from __future__ import annotations

import os
import shlex

from clusterous_cli.endpoint import ControllerEndpoint, JumpHost

CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 15
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"


def options(endpoint: ControllerEndpoint) -> list[str]:
    """OpenSSH client options that trust only the pinned key and use only the cluster key."""
    result = _common(endpoint, str(endpoint.known_hosts))
    # The pin's name, whatever the address: the instance id once `up` knows it (a stop/start that
    # changes the public address needs no relearn), else `[host]:port` as paramiko spells it.
    result += ["-o", f"HostKeyAlias={endpoint.host_key_name}"]
    result += ["-p", str(endpoint.port), "-l", endpoint.user]
    if endpoint.jump_host:
        jump = JumpHost.parse(endpoint.jump_host)
        user_known = os.path.expanduser("~/.ssh/known_hosts")
        inner = [
            "ssh", *_common(endpoint, f"{endpoint.known_hosts} {user_known}"),
            "-p", str(jump.port), "-l", jump.user or endpoint.user, "-W", "[%h]:%p", jump.host,
        ]  # fmt: skip
        result += ["-o", "ProxyCommand=" + shlex.join(inner)]
    return result


def _common(endpoint: ControllerEndpoint, known_hosts: str) -> list[str]:
    return [
        "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
        "-o", f"ServerAliveInterval={KEEPALIVE_SECONDS}",
        "-o", "ServerAliveCountMax=4",
        "-o", f"Ciphers={CIPHERS}",
        "-o", "LogLevel=ERROR",
        "-i", str(endpoint.key_file),
    ]  # fmt: skip


def argv(endpoint: ControllerEndpoint) -> list[str]:
    """`ssh` plus options; append the host (and a command) to use it, or join it for `rsync -e`."""
    return ["ssh", *options(endpoint)]
