"""What runs inside the instances: cloud-init user-data per role, and the cluster's add-ons.

The provisioner passes `render_controller` / `render_node` output to EC2 as user-data. The real
work is done by the shell scripts in `scripts/` (shellchecked and run in tests with stand-ins);
the user-data only writes them, their settings, the k3s *agent* token (a 0600 file, never on
a command line, never echoed) and the systemd unit `clusterous-bootstrap.service` that runs the
role's script and restarts it after a failure until one run succeeds (a late volume, a mirror
or GitHub hiccup); `runcmd` only enables and starts the unit. The k3s *server* token (cluster-admin
equivalent) is never in any user-data: the controller generates it at its first boot and keeps
it there; nodes join with the agent token only, in k3s' secure form with the server CA's hash,
which they read from their own instance tag at boot (joinhash.py). Add-on manifests are written into k3s's
auto-deploy directory, so k3s applies them as soon as its API is up.

EC2 limits user-data to 16 KiB, so the manifests travel gzip+base64 encoded (`gz+b64`, decoded
by cloud-init's write_files).
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from clusterous_core.errors import BadInput, Failure
from clusterous_core.names import DEFAULT_OS, LABEL_VALUE, SUPPORTED_OS
from clusterous_provisioner import addons, tags

DEFAULT_K3S_VERSION = "v1.33.5+k3s1"
# The k3s installer: install.sh of one k3s commit (the v1.36.3+k3s1 release's), run only when
# its sha256 is this one. It installs any INSTALL_K3S_VERSION, checking the binary against that
# release's sha256sum-<arch>.txt. To move the pin: curl -sfL <url> | sha256sum.
K3S_INSTALL_COMMIT = "5aed4d7beddeb3e67120da477c876ac9efd70318"
K3S_INSTALL_URL = f"https://raw.githubusercontent.com/k3s-io/k3s/{K3S_INSTALL_COMMIT}/install.sh"
K3S_INSTALL_SHA256 = "46177d4c99440b4c0311b67233823a8e8a2fc09693f6c89af1a7161e152fbfad"
USER_DATA_LIMIT = 16384  # bytes, EC2's limit on raw user-data
# The login user `put`, `run` and build uploads write the shared volume as: cloud-init's default
# user, `ubuntu` on Ubuntu 24.04 and `ec2-user` on Amazon Linux 2023, both uid/gid 1000.
LOGIN_UID = 1000

# Paths on the instance.
SCRIPT_DIR = "/usr/local/lib/clusterous"
CONFIG_FILE = "/etc/clusterous/bootstrap.env"
AGENT_TOKEN_FILE = "/etc/clusterous/k3s-agent-token"  # from user-data: joins agents, not servers
JOIN_TOKEN_FILE = "/etc/clusterous/k3s-join-token"  # a node's K10<CA hash>::node:<agent token>, made at boot
SERVER_TOKEN_FILE = "/etc/clusterous/k3s-server-token"  # made on the controller, never in user-data
REGISTRIES_FILE = "/etc/rancher/k3s/registries.yaml"
K3S_MANIFEST_DIR = "/var/lib/rancher/k3s/server/manifests"
ADDONS_FILE = f"{K3S_MANIFEST_DIR}/clusterous-addons.yaml"
UNIT = "clusterous-bootstrap.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
RESTART_SEC = 15  # between a failed run and the next
UNIT_DESCRIPTION = {
    "controller": "controller (shared volume, NFS server, k3s server)",
    "node": "node of group {group} (NFS client, k3s agent)",
}

_K3S_RELEASE = re.compile(r"^v1\.(\d+)\.(\d+)\+k3s(\d+)$")


@dataclass(frozen=True)
class BootstrapInputs:
    """Everything the instances of one cluster need to know about it."""

    cluster_name: str
    region: str
    k3s_version: str
    # The k3s agent token (the server's --agent-token-file, the nodes' --token-file): never shown,
    # not even in a traceback's repr. The server token is not an input: the controller makes it.
    agent_token: str = field(repr=False)
    controller_ip: str
    vpc_cidr: str
    shared_volume_id: str | None
    bucket: str
    node_groups: list[str]
    logging_level: int = 0
    os: str = DEFAULT_OS
    bucket_region: str | None = None  # the registry's S3 region; None: the cluster's (up checks they match)
    spot: bool = False  # a group runs on spot: the spot watcher is one of the add-ons


def check_k3s_version(version: str, source: str = "cluster file", field_name: str = "k3s_version") -> str:
    """A k3s release name such as v1.33.5+k3s1; anything else would fail on every instance at boot."""
    if not isinstance(version, str) or not _K3S_RELEASE.match(version):
        raise BadInput(source, field_name, "a k3s release name like v1.33.5+k3s1", version)
    return version


def _check_inputs(inputs: BootstrapInputs) -> None:
    check_k3s_version(inputs.k3s_version)
    if inputs.os not in SUPPORTED_OS:
        raise BadInput("cluster file", "os", f"one of {', '.join(SUPPORTED_OS)}", inputs.os)
    for group in inputs.node_groups:
        if not LABEL_VALUE.match(group):
            raise BadInput(
                "cluster file", "node_groups", "group names usable as Kubernetes label values", group
            )


def _script(name: str) -> str:
    return (resources.files("clusterous_provisioner") / "scripts" / name).read_text()


def _shipped(name: str) -> str:
    """A script as the instance gets it: without comment or blank lines (the shebang kept), to
    fit EC2's 16 KiB. Safe because the scripts hold no heredocs or multi-line strings; the
    documented source is in the package."""
    lines = _script(name).splitlines()
    kept = [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(lines[:1] + kept) + "\n"


def _settings(inputs: BootstrapInputs, role: str, group: str | None = None) -> str:
    """bootstrap.env: plain settings the scripts source. It deliberately holds no token."""
    values = {
        "CLUSTEROUS_CLUSTER": inputs.cluster_name,
        "CLUSTEROUS_ROLE": role,
        "K3S_VERSION": inputs.k3s_version,
        "K3S_INSTALL_URL": K3S_INSTALL_URL,
        "K3S_INSTALL_SHA256": K3S_INSTALL_SHA256,
        "OS_FAMILY": inputs.os.split("-")[0],
        "CONTROLLER_IP": inputs.controller_ip,
        "VPC_CIDR": inputs.vpc_cidr,
        "SHARED_VOLUME_ID": inputs.shared_volume_id or "",  # vol-... or empty
        "SHARED_DIR": addons.SHARED_DIR,
        "SHARED_FS": "ext4",
        "SHARED_OWNER": f"{LOGIN_UID}:{LOGIN_UID}",  # owner of the shared volume's root
    }
    if group is not None:
        values["NODE_GROUP"] = group
        values["CA_HASH_TAG"] = tags.CA_HASH  # the instance tag node.sh reads the CA hash from
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def _file(path: str, content: str, permissions: str = "0644", compress: bool = False) -> dict:
    entry = {"path": path, "owner": "root:root", "permissions": permissions}
    if compress:
        entry["encoding"] = "gz+b64"
        entry["content"] = base64.b64encode(gzip.compress(content.encode(), mtime=0)).decode()
    else:
        entry["content"] = content
    return entry


def _unit(what: str, script: str) -> str:
    """The bootstrap as a oneshot service: systemd restarts it after a failure, without a start
    limit, until one run succeeds; its output goes to the journal and the serial console (EC2's
    console output, which `up` already reads, shows a failing run). Enabled, so a reboot runs it
    again (idempotent: it finds everything done and changes nothing)."""
    return f"""[Unit]
Description=clusterous bootstrap: {what}
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=oneshot
ExecStart={SCRIPT_DIR}/{script}
Restart=on-failure
RestartSec={RESTART_SEC}
RemainAfterExit=yes
TimeoutStartSec=45min
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def _cloud_config(files: list[dict]) -> str:
    config = {
        "write_files": files,
        # runcmd runs once per instance: it hands the bootstrap to systemd and returns at once
        # (--no-block), so cloud-init finishes while the unit works and retries.
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", UNIT],
            ["systemctl", "start", "--no-block", UNIT],
        ],
    }
    return "#cloud-config\n" + yaml.dump(config, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def _common_files(inputs: BootstrapInputs, role: str, group: str | None = None) -> list[dict]:
    script = "controller.sh" if role == "controller" else "node.sh"
    return [
        _file(AGENT_TOKEN_FILE, inputs.agent_token + "\n", "0600"),
        _file(CONFIG_FILE, _settings(inputs, role, group), "0600"),
        _file(f"{SCRIPT_DIR}/common.sh", _shipped("common.sh"), "0644", compress=True),
        _file(f"{SCRIPT_DIR}/{script}", _shipped(script), "0755", compress=True),
        _file(UNIT_FILE, _unit(UNIT_DESCRIPTION[role].format(group=group), script), "0644"),
        _file(REGISTRIES_FILE, addons.registries_yaml(inputs.controller_ip), "0644"),
    ]


def render_controller(inputs: BootstrapInputs) -> str:
    """User-data of the controller: NFS server on the shared volume, k3s server, add-ons."""
    _check_inputs(inputs)
    files = _common_files(inputs, "controller")
    files.append(_file(ADDONS_FILE, boot_manifests(inputs), "0600", compress=True))
    user_data = _cloud_config(files)
    if len(user_data.encode()) > USER_DATA_LIMIT:
        raise Failure(
            f"controller user-data is {len(user_data.encode())} bytes, over EC2's {USER_DATA_LIMIT}",
            "this is a bug in clusterous-k8s: please report it",
        )
    return user_data


def boot_manifests(inputs: BootstrapInputs) -> str:
    """The add-ons k3s applies at boot, as one multi-document file (it compresses best).

    k3s retries a file until every object in it applies, so objects of a CRD defined earlier in
    the file (the kopf peering) land once the CRD is served.
    Comments are dropped (the objects re-dumped) to fit EC2's 16 KiB; `--render-dir` keeps them.
    """
    texts = [text for name, text in render_manifests(inputs).items() if name not in addons.APPLIED_LATER]
    docs = [doc for text in texts for doc in yaml.safe_load_all(text) if doc]
    return yaml.safe_dump_all(docs, sort_keys=False, width=1000, explicit_start=True)


def render_node(inputs: BootstrapInputs, group: str) -> str:
    """User-data of a node of `group`: NFS client and a k3s agent joining the controller."""
    _check_inputs(inputs)
    if group not in inputs.node_groups:
        raise BadInput("cluster file", "node_groups", f"one of {', '.join(inputs.node_groups)}", group)
    return _cloud_config(_common_files(inputs, "node", group))


def render_manifests(inputs: BootstrapInputs) -> dict[str, str]:
    """Add-on manifests (file name -> YAML) with this cluster's values filled in."""
    _check_inputs(inputs)
    return addons.render(addons.values_for(inputs), spot=inputs.spot)


def write_render_dir(inputs: BootstrapInputs, directory: Path | str) -> list[Path]:
    """`up --dry-run --render-dir DIR`: every user-data file and manifest a real `up` would use."""
    root = Path(directory)
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)  # user-data holds the agent token
        written.append(path)

    write(root / "user-data" / "controller.user-data", render_controller(inputs))
    for group in inputs.node_groups:
        write(root / "user-data" / f"{group}.user-data", render_node(inputs, group))
    for name, text in render_manifests(inputs).items():
        write(root / "manifests" / name, text)
    return written


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (scripts, settings) as readable `|` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)
