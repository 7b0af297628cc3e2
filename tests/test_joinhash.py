"""The hash in k3s' secure join token, computed as k3s' hashCA does (pkg/clientaccess/token.go).

Certificates are made here with `cryptography` the way k3s makes them (a self-signed ECDSA CA)
or the way k3s' custom-CA script does (a root and an intermediate, server-ca.crt holding both);
the expected hashes come from their bytes, independently of the code under test.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from clusterous_core.errors import Failure
from clusterous_provisioner import joinhash
from tests.harness.certs import make_cert, pem


def test_k3s_own_ca_is_hashed_as_the_bytes_it_serves() -> None:
    cert, _ = make_cert("k3s-server-ca@1735689600", key_ids=False)
    bundle = pem(cert)
    assert joinhash.ca_hash(bundle) == hashlib.sha256(bundle).hexdigest()
    # the bytes as served, not the certificate: another encoding of it is another hash
    assert joinhash.ca_hash(bundle + b"\n") == hashlib.sha256(bundle + b"\n").hexdigest()


def test_a_custom_ca_bundle_is_hashed_as_the_der_of_its_root() -> None:
    root = make_cert("example-root-ca")
    intermediate = make_cert("example-intermediate-ca", issuer=root)
    bundle = pem(intermediate[0], root[0])  # k3s' server-ca.crt of a custom CA: intermediate, root
    expected = hashlib.sha256(root[0].public_bytes(serialization.Encoding.DER)).hexdigest()
    assert joinhash.ca_hash(bundle) == expected
    # rotating the intermediate keeps the hash (why k3s hashes the root of a bundle)
    renewed = make_cert("example-intermediate-ca-2", issuer=root)
    assert joinhash.ca_hash(pem(renewed[0], root[0])) == expected


def test_a_bundle_without_a_chain_is_hashed_as_its_bytes() -> None:
    first, second = make_cert("one")[0], make_cert("two")[0]
    bundle = pem(first, second)
    assert joinhash.ca_hash(bundle) == hashlib.sha256(bundle).hexdigest()


def test_no_certificate_is_a_failure_naming_the_file() -> None:
    with pytest.raises(Failure, match="server-ca.crt"):
        joinhash.ca_hash(b"not a certificate\n")


def test_only_a_sha256_tag_is_taken_from_the_controller() -> None:
    digest = "ab" * 32
    controller = {"Tags": [{"Key": "clusterous:k3s-ca-hash", "Value": digest}]}
    assert joinhash.hash_of(controller) == digest
    assert joinhash.launch_tags(controller) == {"clusterous:k3s-ca-hash": digest}
    for value in ("AB" * 32, "ab" * 31, "K10" + digest, ""):
        bad = {"Tags": [{"Key": "clusterous:k3s-ca-hash", "Value": value}]}
        assert joinhash.hash_of(bad) is None and joinhash.launch_tags(bad) == {}
    assert joinhash.launch_tags(None) == {} and joinhash.launch_tags({"Tags": []}) == {}
