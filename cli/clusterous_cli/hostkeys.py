"""The controller's SSH host key: learned from the EC2 console output, pinned, checked on every use.

cloud-init prints the host keys twice at first boot: a fingerprint block (through syslog, so
each line carries a `<14>... cloud-init:` prefix) and a key block with the public keys. Only
the keys of the *last* key block count (a rebooted instance prints them again), and each must
match a fingerprint of the last fingerprint block when one is there: the two blocks come from
different code paths, so a mismatch means the output is not what we think it is.

The pin is a known_hosts file in the cluster's config directory, readable by OpenSSH
(`UserKnownHostsFile=`, used for rsync) and by our paramiko code alike. Nothing ever adds a
key silently: learning happens at `up` or with `clusterous-k8s host-key --relearn`.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import NamedTuple

from clusterous_core.errors import Failure

KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
FP_BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
FP_END = "-----END SSH HOST KEY FINGERPRINTS-----"
KEY_LINE = re.compile(r"\b(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521))\s+(AAAA[0-9A-Za-z+/]+={0,2})")
FINGERPRINT = re.compile(r"\bSHA256:([0-9A-Za-z+/]{43})\b")
RELEARN = "clusterous-k8s host-key --relearn"


class HostKey(NamedTuple):
    """One public host key: its algorithm name and base64 blob."""

    key_type: str
    blob: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's `SHA256:...` form, the one cloud-init and ssh-keygen print."""
        import hashlib  # loads OpenSSL: not on every command's path (load_endpoint imports us)

        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Refusal(Failure):
    """A refusal that retrying cannot fix (a key, not the network): the tunnel supervisor reports
    it at once instead of reconnecting in silence, and the CLI stops waiting for it."""


class HostKeyChanged(Refusal):
    """The controller presented a key we did not pin: refuse, and say how to re-learn on purpose."""

    def __init__(self, name: str, presented: str, pinned: list[str], relearn: str):
        super().__init__(
            f"the SSH host key of the controller {name} has CHANGED (it presented {presented}; "
            f"pinned: {', '.join(pinned)}); refusing to connect: this is either a replaced controller "
            "or someone in the middle",
            f"if the controller was replaced or rebuilt, re-learn its key from the EC2 console output: {relearn}",
        )


def _last_block(lines: list[str], begin: str, end: str) -> list[str] | None:
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith(begin)]
    if not starts:
        return None
    start = starts[-1]
    for i in range(start + 1, len(lines)):
        if lines[i].rstrip().endswith(end):
            return lines[start + 1 : i]
    return None


def parse_console_output(text: str) -> list[HostKey]:
    """The host keys in EC2 console output; a Failure when there are none or they do not add up."""
    lines = text.replace("\r", "").splitlines()
    block = _last_block(lines, KEYS_BEGIN, KEYS_END)
    if block is None:
        raise Failure(
            "no SSH host keys in the controller's console output (cloud-init has not printed them yet)",
            "wait a minute for the controller to finish booting, then try again",
        )
    keys = []
    for line in block:
        match = KEY_LINE.search(line)
        if match:
            key = HostKey(match.group(1), match.group(2))
            try:
                base64.b64decode(key.blob, validate=True)
            except ValueError:
                continue
            if key not in keys:
                keys.append(key)
    if not keys:
        raise Failure("the console output's host key block holds no public keys", "try again later")
    fingerprints = _last_block(lines, FP_BEGIN, FP_END)
    if fingerprints is not None:
        listed = {"SHA256:" + m.group(1) for line in fingerprints for m in FINGERPRINT.finditer(line)}
        stray = [k for k in keys if k.fingerprint not in listed]
        if stray:
            raise Failure(
                "the console output's host keys do not match its fingerprints "
                f"({', '.join(k.fingerprint for k in stray)} not listed); not trusting them",
                "check the instance in the EC2 console",
            )
    return keys


def read_pinned(path: Path, name: str) -> list[HostKey]:
    """The keys pinned for `name` (`host` or `[host]:port`) in a known_hosts file."""
    if not path.exists():
        return []
    keys = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#") and name in parts[0].split(","):
            keys.append(HostKey(parts[1], parts[2]))
    return keys


def _replace(path: Path, names: list[str], name: str, keys: list[HostKey]) -> None:
    """Drop the entries of `names`, add `keys` under `name`, others stay; atomically and 0600."""
    from clusterous_cli.config import write_private

    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts and set(names) & set(parts[0].split(",")):
                continue
            kept.append(line)
    kept += [f"{name} {k.key_type} {k.blob}" for k in keys]
    write_private(path, "\n".join(kept) + "\n")


def pin(path: Path, name: str, keys: list[HostKey]) -> None:
    """Replace the keys pinned for `name` (others stay), atomically, 0600, under the file's lock."""
    from clusterous_cli.config import locked

    with locked(path):
        _replace(path, [name], name, keys)


def migrate(path: Path, alias: str, address: str) -> None:
    """Move a pin made under the controller's address (`[host]:port`, before pins were keyed by
    instance id) to its instance id, once: the key checked is the same, only its name changes,
    so a later stop/start with a new public address still finds it."""
    if alias == address or not path.exists() or read_pinned(path, alias) or not read_pinned(path, address):
        return
    from clusterous_cli.config import locked

    with locked(path):
        old = read_pinned(path, address)
        if old and not read_pinned(path, alias):
            _replace(path, [address], alias, old)


def pin_from_console_output(path: Path, name: str, console_output: str) -> list[HostKey]:
    """What `up` and `host-key --relearn` do: parse, then pin."""
    keys = parse_console_output(console_output)
    pin(path, name, keys)
    return keys


def host_key_algorithms(keys: list[HostKey]) -> list[str]:
    """Algorithms to offer so the server presents a key type we pinned (as OpenSSH does)."""
    algorithms = []
    for key in keys:
        if key.key_type == "ssh-rsa":
            algorithms += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        else:
            algorithms.append(key.key_type)
    return list(dict.fromkeys(algorithms))


def check(presented: HostKey, pinned: list[HostKey], name: str, relearn: str = RELEARN) -> None:
    """Accept only a pinned key; the refusal names both fingerprints and the way out."""
    if not pinned:
        raise Refusal(
            f"no host key pinned for the controller {name}; refusing to connect unchecked",
            f"learn it from the EC2 console output: {relearn}",
        )
    if presented not in pinned:
        raise HostKeyChanged(name, presented.fingerprint, [k.fingerprint for k in pinned], relearn)


def relearn_command(cluster: str) -> str:
    return f"{RELEARN} --cluster {cluster}"
