"""EC2 key pairs: use one the user has, or create one and keep its private key 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clusterous_core.errors import BadInput


def key_pair_exists(ec2, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        ec2.describe_key_pairs(KeyNames=[name])
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "InvalidKeyPair.NotFound":
            return False
        raise


def create_key_pair(ec2, name: str, tags: dict[str, str], key_path: Path) -> Path:
    """Create an ED25519 key pair and write its private half atomically, mode 0600."""
    response = ec2.create_key_pair(
        KeyName=name,
        KeyType="ed25519",
        KeyFormat="pem",
        TagSpecifications=[
            {"ResourceType": "key-pair", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = key_path.with_name(f".{key_path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(response["KeyMaterial"])
    os.replace(tmp, key_path)
    return key_path


def check_private_key_file(path: str, source: str = "--key-file") -> Path:
    """OpenSSH refuses keys others can read; say so before a connection fails obscurely."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise BadInput(source, None, "an existing private key file", str(file))
    if stat.S_IMODE(file.stat().st_mode) & 0o077:
        raise BadInput(source, None, f"a private key readable only by you (run: chmod 600 {file})", str(file))
    return file
