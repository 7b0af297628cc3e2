"""Fixed addresses and names of a cluster, computed before anything exists.

The controller's private address is fixed (the .10 of the public subnet) so node user-data can be
rendered, and node groups launched, without waiting for the controller. The VPC range avoids
k3s's own pod (10.42/16) and service (10.43/16) ranges.
"""

from __future__ import annotations

VPC_CIDR = "10.20.0.0/16"
PUBLIC_CIDR = "10.20.0.0/24"
PRIVATE_CIDR = "10.20.16.0/20"  # room for 4091 nodes
CONTROLLER_IP = "10.20.0.10"
# The NAT gateway's own fixed address: without one AWS picks a random free address of the public
# subnet, which may be the controller's before the controller asks for it (CreateNatGateway's
# PrivateIpAddress, EC2 API reference).
NAT_GATEWAY_IP = "10.20.0.11"
ROOT_VOLUME_GIB = 30
SHARED_VOLUME_DEVICE = "/dev/sdf"


def role_name(cluster: str, region: str) -> str:
    """IAM role and instance profile of the controller. IAM names are account-wide, so the region
    is part of it: the same cluster name in two regions is two clusters (64-character limit:
    cluster names ≤ 40, regions ≤ 14; the /clusterous/ path says whose it is)."""
    return f"{cluster}-{region}-controller"[:64]


IAM_PATH = "/clusterous/"


def key_pair_name(cluster: str) -> str:
    return f"clusterous-{cluster}"


def token_parameter(cluster: str) -> str:
    """SSM SecureString holding the k3s agent token (never the server token): reused by re-runs
    and `scale` from any laptop."""
    return f"/clusterous/{cluster}/k3s-token"


def resource_name(cluster: str, what: str) -> str:
    return f"{cluster}-{what}"
