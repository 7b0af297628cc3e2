"""The cluster's secrets and keys: the k3s agent token in SSM and the SSH key pair."""

from __future__ import annotations

import secrets
from pathlib import Path

from clusterous_core.errors import Failure
from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.steps import Report, Target, error_code


def ensure_token(clients, cluster: str) -> str:
    """The k3s *agent* token: created once per cluster in SSM (SecureString), never printed.

    It joins agents only. The server token is not made here: the controller generates it at its
    first boot and it never leaves that instance (docs/nodes-and-addons.md, "The tokens")."""
    from botocore.exceptions import ClientError

    name = layout.token_parameter(cluster)
    try:
        return clients.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as exc:
        if error_code(exc) != "ParameterNotFound":
            raise
    try:
        clients.ssm.put_parameter(
            Name=name,
            Value=secrets.token_hex(32),
            Type="SecureString",
            Description=f"k3s agent token (joins nodes, not servers) of clusterous cluster {cluster}",
            Tags=tags.tag_list(tags.tag_dict(cluster, "k3s-token", name)),
        )
    except ClientError as exc:
        if error_code(exc) != "ParameterAlreadyExists":
            raise
    return clients.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def read_token(clients, cluster: str) -> str:
    """The agent token `scale`/`add-nodes` put in new nodes' user-data (never the server token)."""
    from botocore.exceptions import ClientError

    try:
        return clients.ssm.get_parameter(Name=layout.token_parameter(cluster), WithDecryption=True)[
            "Parameter"
        ]["Value"]
    except ClientError as exc:
        if error_code(exc) != "ParameterNotFound":
            raise
        raise Failure(
            f"cluster {cluster}: its k3s token ({layout.token_parameter(cluster)}) is missing",
            "re-run `clusterous-k8s up` to finish the cluster",
        ) from None


def ensure_key_pair(
    clients, spec: ClusterSpec, target: Target, inv: Inventory, report: Report
) -> tuple[str, Path | None]:
    from clusterous_provisioner import keypairs

    if target.key_name:
        return target.key_name, None
    name = layout.key_pair_name(spec.name)
    key_file = target.state_dir / f"{name}.pem"
    if inv.key_pairs and not key_file.exists():
        # A run that died between CreateKeyPair and writing the key, or another machine's run.
        users = [i["InstanceId"] for i in inv.instances if i.get("KeyName") == name]
        if users:
            raise Failure(
                f"cluster {spec.name}: the private key of key pair {name} is not on this machine "
                f"({key_file}) and {len(users)} instance(s) use it ({', '.join(users[:3])}"
                f"{', ...' if len(users) > 3 else ''}); new instances would be unreachable",
                f"copy {key_file.name} from the machine that created the cluster to {key_file}, or "
                f"`clusterous-k8s down {spec.name}` and `up` again",
            )
        report(f"key pair {name} has no private key here and no instance uses it: making it again")
        clients.ec2.delete_key_pair(KeyName=name)
    elif inv.key_pairs:
        return name, key_file
    keypairs.create_key_pair(clients.ec2, name, tags.tag_dict(spec.name, "key-pair", name), key_file)
    report(f"created key pair {name}; private key {key_file} (0600)")
    return name, key_file
