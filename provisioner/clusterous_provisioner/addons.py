"""The cluster's add-ons: the manifests in `manifests/` with one cluster's values filled in.

Templates mark values as `{{ name }}`; a template naming a value we do not know, or a value we
know but no template uses, is a bug caught by `render` and the tests. Values are plain strings
inserted inside quoted YAML scalars, so they never change a manifest's structure.
"""

from __future__ import annotations

import re
from importlib import resources

from clusterous_operator.images import CLUSTER_REGISTRY, LEGACY_REGISTRY

SHARED_DIR = "/export/shared"  # the shared volume's mount point and NFS export on the controller
REGISTRY_PORT = 5000
REGISTRY_MIRROR_PORT = 5004  # Docker Hub's pull-through cache (5001-5003, 5005: the others' ports)
# CNCF distribution 3: its S3 driver's aws-sdk-go 1.55 speaks IMDSv2 (2.8.3's 1.15 does not, and
# gets NoCredentialProviders from a controller with HttpTokens required). 3.1.1 also fixes
# CVE-2026-41888 (tags deletable with delete disabled). Pinned by the official image's index digest.
REGISTRY_IMAGE = "registry:3.1.1@sha256:849b7d29920d060df8091770ede2279c07924ecd29e2a4c029ee0b5ea2ea542b"
# The regions REGISTRY_IMAGE's S3 driver accepts: it refuses any region its aws-sdk-go 1.55.5
# endpoint table lacks ("invalid region provided") and would never start. Update with the image.
REGISTRY_S3_REGIONS = frozenset(
    """af-south-1 ap-east-1 ap-northeast-1 ap-northeast-2 ap-northeast-3 ap-south-1 ap-south-2
    ap-southeast-1 ap-southeast-2 ap-southeast-3 ap-southeast-4 ca-central-1 ca-west-1 cn-north-1
    cn-northwest-1 eu-central-1 eu-central-2 eu-isoe-west-1 eu-north-1 eu-south-1 eu-south-2
    eu-west-1 eu-west-2 eu-west-3 il-central-1 me-central-1 me-south-1 sa-east-1 us-east-1
    us-east-2 us-gov-east-1 us-gov-west-1 us-iso-east-1 us-iso-west-1 us-isob-east-1 us-west-1
    us-west-2""".split()
)
CSI_NFS_VERSION = "v4.11.0"
CSI_NFS_IMAGE = f"registry.k8s.io/sig-storage/nfsplugin:{CSI_NFS_VERSION}"

# In the order k3s should apply them (it applies each file on its own; the CRDs come first).
TEMPLATES = (
    "namespace.yaml",
    "kopf-peering.yaml",
    "cluster-info.yaml",
    "nfs-csi.yaml",
    "storage-classes.yaml",
    "registry.yaml",
    "operator.yaml",
)
CRD_FILE = "crd-clusterapp.yaml"  # the operator's CRD (clusterous_operator/crd.yaml), never edited here
OPERATOR_CODE_FILE = "operator-code.yaml"
AUTOSCALER_FILE = "autoscaler.yaml"  # the autoscaler's RBAC and Deployment (always deployed)
AUTOSCALER_CODE_FILE = "autoscaler-code.yaml"
SPOT_WATCH_FILE = "spot-watch.yaml"  # rendered by spot.manifest_text (it carries its script)
# Too big for EC2's 16 KiB user-data: applied by `up` through the API once it answers
# (cli/clusterous_cli/addon_setup.py), in this order; `render` and --render-dir show them too
# (the spot watcher only for a cluster with a spot group).
APPLIED_LATER = (OPERATOR_CODE_FILE, AUTOSCALER_CODE_FILE, AUTOSCALER_FILE, SPOT_WATCH_FILE)

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")


def registry_endpoint(controller_ip: str) -> str:
    """Where every node's containerd reaches the registry: the controller's host port."""
    return f"{controller_ip}:{REGISTRY_PORT}"


def registry_mirror_endpoint(controller_ip: str) -> str:
    """The controller's pull-through cache of Docker Hub (manifests/registry.yaml)."""
    return f"{controller_ip}:{REGISTRY_MIRROR_PORT}"


def registries_yaml(controller_ip: str) -> str:
    """k3s registries.yaml: the registry's names (cluster DNS and Clusterous' `registry:5000`)
    mirrored to the controller's plain-HTTP endpoint, reachable from the hosts' containerd; and
    docker.io to the controller's pull-through cache (containerd falls back to Docker Hub itself
    when the mirror fails: k3s always tries a registry's default endpoint last)."""
    mirrors = {name: registry_endpoint(controller_ip) for name in (CLUSTER_REGISTRY, LEGACY_REGISTRY)}
    mirrors["docker.io"] = registry_mirror_endpoint(controller_ip)
    lines = ["mirrors:"]
    for name, endpoint in mirrors.items():
        lines += [f'  "{name}":', "    endpoint:", f'      - "http://{endpoint}"']
    return "\n".join(lines) + "\n"


def values_for(inputs) -> dict[str, str]:
    """Template values from BootstrapInputs (duck-typed to keep this module free of a cycle)."""
    from clusterous_provisioner import code_bundle

    parent, _, name = SHARED_DIR.rpartition("/")
    return {
        "cluster_name": inputs.cluster_name,
        "region": inputs.region,
        "bucket": inputs.bucket,
        "bucket_region": inputs.bucket_region or inputs.region,
        "k3s_version": inputs.k3s_version,
        "controller_ip": inputs.controller_ip,
        "logging_level": str(inputs.logging_level),
        "shared_dir": SHARED_DIR,
        "shared_parent": parent,
        "shared_name": name,
        "registry": CLUSTER_REGISTRY,
        "registry_endpoint": registry_endpoint(inputs.controller_ip),
        "registry_mirror_endpoint": registry_mirror_endpoint(inputs.controller_ip),
        "registry_image": REGISTRY_IMAGE,
        "csi_nfs_version": CSI_NFS_VERSION,
        "csi_nfs_image": CSI_NFS_IMAGE,
        "operator_image": code_bundle.PYTHON_IMAGE,
        "operator_code_hash": code_bundle.OPERATOR.code_hash(),
        **autoscaler_values(),
    }


def autoscaler_values() -> dict[str, str]:
    """The autoscaler manifest's values: none depends on the cluster (its record does)."""
    from clusterous_provisioner.code_bundle import AUTOSCALER, PYTHON_IMAGE

    return {
        "operator_image": PYTHON_IMAGE,  # the same pinned Python as the operator's
        "autoscaler_code_hash": AUTOSCALER.code_hash(),
        "autoscaler_configmap": AUTOSCALER.configmap,
    }


def autoscaler_manifest() -> str:
    return fill(template(AUTOSCALER_FILE), autoscaler_values(), AUTOSCALER_FILE)


def template(name: str) -> str:
    return (resources.files("clusterous_provisioner") / "manifests" / name).read_text()


def fill(text: str, values: dict[str, str], name: str = "template") -> str:
    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{name}: no value for {{{{ {key} }}}}")
        return values[key]

    filled = _PLACEHOLDER.sub(replace, text)
    if "{{" in filled:
        raise ValueError(f"{name}: a malformed {{{{ placeholder }}}} is left")
    return filled


def render(values: dict[str, str], spot: bool = False) -> dict[str, str]:
    """Every add-on manifest, file name -> YAML text, in apply order; the spot watcher only for a
    cluster with a spot group (on other nodes its pod would only pull an image to say so)."""
    from clusterous_provisioner import spot as spot_addon
    from clusterous_provisioner.code_bundle import AUTOSCALER, OPERATOR

    rendered = {CRD_FILE: crd_text()}
    for name in TEMPLATES:
        rendered[name] = fill(template(name), values, name)
    rendered[OPERATOR_CODE_FILE] = OPERATOR.configmap_yaml()
    rendered[AUTOSCALER_CODE_FILE] = AUTOSCALER.configmap_yaml()
    rendered[AUTOSCALER_FILE] = autoscaler_manifest()
    if spot:
        rendered[SPOT_WATCH_FILE] = spot_addon.manifest_text()
    return rendered


def crd_text() -> str:
    """The ClusterApp CRD exactly as the operator package ships it."""
    return (resources.files("clusterous_operator") / "crd.yaml").read_text()
