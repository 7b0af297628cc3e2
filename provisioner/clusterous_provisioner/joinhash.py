"""The server CA's hash that nodes join k3s with, `K10<hash>::node:<agent token>`, as an instance tag.

k3s' secure token carries the SHA-256 (hex) of the server's CA bundle as `https://<server>:6443/cacerts`
serves it (the file /var/lib/rancher/k3s/server/tls/server-ca.crt, read as is): an agent downloads
that bundle, compares its hash with the token's and sends no credentials on a mismatch (k3s
pkg/clientaccess/token.go, hashCA and validateCAHash). The CA is made at the server's first start,
after `up` has launched the nodes, so the hash cannot be in any user-data. Instead `up` reads the
CA over its host-key-checked SSH once the controller's k3s runs and tags the controller and every
node with the hash in one CreateTags; a node reads its own tag through IMDS (launched with
InstanceMetadataTags=enabled) and waits for it (scripts/node.sh). Later launches (`scale`,
`add-nodes`, the autoscaler) copy the controller's tag into their TagSpecifications. The hash is
not secret; only a principal allowed ec2:CreateTags on the cluster's instances can set it.
docs/nodes-and-addons.md, "The tokens".
"""

from __future__ import annotations

import hashlib
import re

from clusterous_core.errors import Failure
from clusterous_provisioner import tags

CA_FILE = "/var/lib/rancher/k3s/server/tls/server-ca.crt"  # what k3s serves at /cacerts
TAG = tags.CA_HASH
CREATE_TAGS_LIMIT = 1000  # resource ids per CreateTags call (EC2 API reference)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def ca_hash(bundle: bytes) -> str:
    """k3s' hashCA: SHA-256 of the bundle's bytes when it holds one certificate (k3s' own
    self-signed CA); with more, of the DER of the root the first certificate chains to (a custom
    CA with intermediates), or of the bytes again when no chain verifies."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError as exc:
        raise Failure(f"the controller's k3s CA ({CA_FILE}) holds no PEM certificate: {exc}") from None
    if len(certs) > 1:
        root = _root_of(certs)
        if root is not None:
            bundle = root.public_bytes(Encoding.DER)
    return hashlib.sha256(bundle).hexdigest()


def _key_ids(cert) -> tuple[bytes, bytes]:
    from cryptography import x509

    def value(kind):
        try:
            return cert.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    aki, ski = value(x509.AuthorityKeyIdentifier), value(x509.SubjectKeyIdentifier)
    return (aki.key_identifier or b"") if aki else b"", ski.digest if ski else b""


def _root_of(certs: list):
    """The root k3s finds for certs[0] among the others: a certificate without an authority key
    id, or whose authority key id is its own subject key id, ends the chain."""
    current, others = certs[0], certs[1:]
    for _ in others:
        issuer = next((c for c in others if _issued_by(current, c)), None)
        if issuer is None:
            return None
        aki, ski = _key_ids(issuer)
        if not aki or aki == ski:
            return issuer
        current = issuer
    return None


def _issued_by(cert, issuer) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # another issuer, key type or algorithm
        return False
    return True


def hash_of(instance: dict | None) -> str | None:
    """The CA hash an instance is tagged with (the controller's: what later nodes carry)."""
    value = tags.as_dict((instance or {}).get("Tags")).get(TAG)
    return value if value and _HEX64.match(value) else None


def launch_tags(controller: dict | None) -> dict[str, str]:
    """Tags a node launch adds so the node joins at once: the controller's hash, if it has one."""
    digest = hash_of(controller)
    return {TAG: digest} if digest else {}


def read_ca_argv(root: str = "") -> list[str]:
    """argv that prints the CA bundle k3s serves (root-only file: sudo for the login user)."""
    script = 'if [ "$(id -u)" -eq 0 ]; then exec cat -- "$1"; else exec sudo -n cat -- "$1"; fi'
    return ["sh", "-c", script, "k3s-ca", root + CA_FILE]


def cluster_instances(ec2, cluster: str) -> list[dict]:
    """Every instance of the cluster that is or may run again (one paginated call)."""
    states = ["pending", "running", "stopping", "stopped"]
    flt = [*tags.cluster_filter(cluster), {"Name": "instance-state-name", "Values": states}]
    found: list[dict] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=flt):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


def publish(ec2, cluster: str, bundle: bytes) -> tuple[str, list[str]]:
    """Tag every instance of the cluster that lacks the hash of `bundle` (or has another): one
    CreateTags per 1000 instances. Returns the hash and the ids tagged now."""
    digest = ca_hash(bundle)
    stale = [i["InstanceId"] for i in cluster_instances(ec2, cluster) if hash_of(i) != digest]
    for start in range(0, len(stale), CREATE_TAGS_LIMIT):
        ec2.create_tags(
            Resources=stale[start : start + CREATE_TAGS_LIMIT], Tags=[{"Key": TAG, "Value": digest}]
        )
    return digest, stale
