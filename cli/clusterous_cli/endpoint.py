"""Which controller a command talks to: the cluster it names and the facts in its `controller.yml`.

`up` writes `controller.yml` into the cluster's config directory (`record_controller`, below,
from what EC2 says about the controller); the SSH code reads only this file, so the two stay
decoupled. Format (YAML mapping):

    host: 203.0.113.10          # required: public address (or name) of the controller
    port: 22                    # SSH port                                   [22]
    user: ubuntu                # SSH login                                  [ubuntu]
    key_file: keys/mycl.pem     # private key; relative paths are relative to the cluster dir
                                #   [the profile's key_file, else <cluster dir>/id_ed25519]
    known_hosts: known_hosts    # pinned host keys, relative to the cluster dir  [known_hosts]
    jump_host: me@bastion:22    # optional bastion        [the profile's jump_host]
    shared_root: /export/shared # the shared volume's directory on the controller
    api_port: 6443              # the Kubernetes API port on the controller (loopback)
    k3s_kubeconfig: /etc/rancher/k3s/k3s.yaml   # where the cluster credentials live
    instance_id: i-0abc...      # lets `host-key --relearn` read the EC2 console output
    region: eu-west-1           # region of instance_id  [the profile's region]
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from clusterous_core.errors import BadInput

CONTROLLER_FILE = "controller.yml"
DEFAULT_SHARED_ROOT = "/export/shared"
DEFAULT_API_PORT = 6443
DEFAULT_K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


class ControllerEndpoint(NamedTuple):
    """Everything needed to open a checked SSH connection to one controller.

    The records a `put` reads are NamedTuples or plain classes, not dataclasses: importing
    `dataclasses` (and the `inspect` it imports) would be a sixth of a small transfer's start-up
    (docs/ssh.md "Throughput"; tests/test_startup.py keeps it off that path)."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    jump_host: str | None = None
    shared_root: str = DEFAULT_SHARED_ROOT
    api_port: int = DEFAULT_API_PORT
    k3s_kubeconfig: str = DEFAULT_K3S_KUBECONFIG
    instance_id: str | None = None
    region: str | None = None

    @property
    def address_name(self) -> str:
        """The address as known_hosts spells it: OpenSSH and paramiko both write a non-22 port `[host]:port`."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def host_key_name(self) -> str:
        """The name the host key is pinned under: the instance id when known (OpenSSH's
        `HostKeyAlias`), so a stop/start that changes the public address needs no relearn."""
        return self.instance_id or self.address_name


class JumpHost(NamedTuple):
    """A bastion in front of the controller, written `[user@]host[:port]` (`jump_host`)."""

    host: str
    port: int = 22
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> JumpHost:
        user, _, rest = text.rpartition("@")
        host, _, port = rest.partition(":")
        if not host or (port and not port.isdigit()):
            raise BadInput("jump_host", None, "[user@]host[:port]", text)
        return cls(host=host, port=int(port or 22), user=user or None)


class ClusterRef(NamedTuple):
    """A cluster as the CLI addresses it: profile, name, and its private state directory."""

    profile_name: str
    cluster: str
    directory: Path

    @property
    def controller_file(self) -> Path:
        return self.directory / CONTROLLER_FILE


def resolve_cluster(profile_option: str | None, cluster_option: str | None) -> ClusterRef:
    """--cluster, else the profile's current_cluster; a clear message when neither is set."""
    from clusterous_cli import config

    profile_name = config.selected_profile_name(profile_option)
    cluster = cluster_option
    if not cluster:
        profile = config.load_profile(profile_name)
        cluster = profile.current_cluster
    if not cluster:
        raise BadInput(
            "--cluster",
            None,
            f"a cluster name (profile '{profile_name}' has no current cluster; "
            "create one with `clusterous-k8s up` or pick one with `clusterous-k8s workon NAME`)",
        )
    if not config.PROFILE_NAME.match(cluster):
        raise BadInput("--cluster", None, "a cluster name of letters, digits, '.', '_' or '-'", cluster)
    return ClusterRef(profile_name, cluster, config.cluster_dir(profile_name, cluster))


def load_endpoint(ref: ClusterRef) -> ControllerEndpoint:
    """Read controller.yml, filling defaults from the profile; bad fields are the user's input error."""
    from clusterous_cli import config

    path = ref.controller_file
    if not path.exists():
        raise BadInput(
            str(path),
            None,
            f"the controller record of cluster '{ref.cluster}' (written by `clusterous-k8s up`); "
            "is the cluster up?",
        )
    data = config.read_yaml(path)
    refuse_suspended(ref, data)
    profile = (
        config.load_profile(ref.profile_name) if config.profile_path(ref.profile_name).exists() else None
    )

    def text(field: str) -> str | None:
        value = data.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise BadInput(str(path), field, "a non-empty string", value)
        return value

    def number(field: str, default: int) -> int:
        value = data.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise BadInput(str(path), field, "a port number 1-65535", value)
        return value

    host = text("host")
    if not host:
        raise BadInput(str(path), "host", "the controller's address")
    key = text("key_file") or (profile.key_file if profile and profile.key_file else None)
    key_path = ref.directory / Path(key or "id_ed25519").expanduser()
    endpoint = ControllerEndpoint(
        host=host,
        port=number("port", 22),
        user=text("user") or "ubuntu",
        key_file=key_path,
        known_hosts=ref.directory / (text("known_hosts") or "known_hosts"),
        jump_host=text("jump_host") or (profile.jump_host if profile else None),
        shared_root=text("shared_root") or DEFAULT_SHARED_ROOT,
        api_port=number("api_port", DEFAULT_API_PORT),
        k3s_kubeconfig=text("k3s_kubeconfig") or DEFAULT_K3S_KUBECONFIG,
        instance_id=text("instance_id"),
        region=text("region") or (profile.region if profile else None),
    )
    from clusterous_cli import hostkeys

    hostkeys.migrate(endpoint.known_hosts, endpoint.host_key_name, endpoint.address_name)
    return endpoint


SUSPENDED_FIELD = "suspended"  # written by `suspend` (the UTC time), dropped by `resume`'s record


def refuse_suspended(ref: ClusterRef, data: dict) -> None:
    """A suspended cluster has no controller to reach (stopped; its public address is gone): every
    command that would connect says so and what brings it back."""
    since = data.get(SUSPENDED_FIELD)
    if since:
        from clusterous_core.errors import Failure

        raise Failure(
            f"cluster {ref.cluster} is suspended (since {since}): its instances are stopped",
            f"bring it back with `clusterous-k8s resume --cluster {ref.cluster}`",
        )


def mark_suspended(ref: ClusterRef, since: str) -> None:
    """Note in controller.yml that the cluster is suspended (`resume` writes the record anew)."""
    import yaml

    from clusterous_cli import config

    if ref.controller_file.exists():
        data = config.read_yaml(ref.controller_file) or {}
        data[SUSPENDED_FIELD] = since
        config.write_private(ref.controller_file, yaml.safe_dump(data, sort_keys=False))


def write_endpoint(ref: ClusterRef, endpoint: ControllerEndpoint) -> Path:
    """The writer the provisioner calls at `up` (and tests use): 0600, atomic."""
    import yaml

    from clusterous_cli import config

    data = {k: str(v) if isinstance(v, Path) else v for k, v in endpoint._asdict().items() if v is not None}
    config.write_private(ref.controller_file, yaml.safe_dump(data, sort_keys=False))
    return ref.controller_file


# --- what `up` writes ---------------------------------------------------------------------------

SSH_USERS = {"ubuntu-24.04": "ubuntu", "al2023": "ec2-user"}
# Fields of controller.yml `up` does not learn from AWS: a hand-edited value (a jump host, a port
# forward, the login user of an --ami that is neither Ubuntu's nor Amazon Linux's) stays.
KEPT_ENDPOINT_FIELDS = (
    "port",
    "user",
    "jump_host",
    "shared_root",
    "api_port",
    "k3s_kubeconfig",
    "known_hosts",
)


def ssh_user(os_name: str | None) -> str:
    return SSH_USERS.get(os_name or "", "ubuntu")


def endpoint_fields(
    controller: dict, region: str, key_file: str | None, existing: dict | None = None
) -> dict:
    """controller.yml as `up` writes it: the controller's public address, the login user of its
    OS, the cluster's key and instance; hand-set fields of an existing file kept."""
    from clusterous_provisioner import tags

    fields: dict = {"user": ssh_user(tags.as_dict(controller.get("Tags")).get(tags.OS))}
    fields |= {k: v for k, v in (existing or {}).items() if k in KEPT_ENDPOINT_FIELDS}
    fields |= {
        "host": controller.get("PublicIpAddress"),
        "instance_id": controller["InstanceId"],
        "region": region,
    }
    if key_file:
        fields["key_file"] = key_file
    return fields


def record_controller(ref, controller: dict, region: str, key_file: str | None) -> dict | None:
    """Write controller.yml (0600) for the SSH code: what `up` learned, hand-set fields kept."""
    import yaml

    from clusterous_cli import config

    existing = config.read_yaml(ref.controller_file) if ref.controller_file.exists() else {}
    fields = endpoint_fields(controller, region, key_file, existing)
    if not fields.get("host"):
        return None  # nothing to reach yet; the wait says so, a later `up` writes the record
    known = set(ControllerEndpoint._fields)
    record = {k: str(v) if k == "key_file" else v for k, v in fields.items() if k in known and v is not None}
    config.write_private(ref.controller_file, yaml.safe_dump(record, sort_keys=False))
    load_endpoint(ref)  # the SSH code's reader must accept it (a bad hand-set field is named here)
    return record
