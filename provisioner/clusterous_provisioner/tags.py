"""Tags are the cluster's only record in AWS: discovery, `down` and the sweep all read them.

Every resource carries `clusterous:cluster`, `clusterous:role` and `Name`; nodes also
`clusterous:group`. A lost laptop must not mean a lost bill, so nothing depends on local state.
"""

from __future__ import annotations

CLUSTER = "clusterous:cluster"
ROLE = "clusterous:role"
GROUP = "clusterous:group"
KEY = "clusterous:key"  # which planned resource this is (vpc, subnet-public, ...)
VOLUME_ORIGIN = "clusterous:volume-origin"  # created | external: decides the volume's fate at down
LAST_CLUSTER = "clusterous:last-cluster"  # on a shared volume kept after its cluster went
K3S_VERSION = "clusterous:k3s-version"  # on the controller: what nodes added later must run
OS = "clusterous:os"
CREATED = "clusterous:created"  # ISO time the cluster's VPC was made (age in `clusters`)
REGION = "clusterous:region"  # on IAM resources (account-wide): the region of the cluster they serve
CA_HASH = "clusterous:k3s-ca-hash"  # on every instance: the hash nodes join k3s with (joinhash.py)
LAUNCHED = "clusterous:launched"  # microsecond UTC time of a node's RunInstances: newest-first order
SUSPENDED = "clusterous:suspended"  # on the controller: UTC time `suspend` began (suspension.py)
SUSPENDED_SPOT = "clusterous:suspended-spot"  # on the controller: spot groups to launch again at `resume`


def tag_dict(cluster: str, role: str, name: str, **extra: str) -> dict[str, str]:
    tags = {CLUSTER: cluster, ROLE: role, "Name": name}
    tags.update({k: v for k, v in extra.items() if v is not None})
    return tags


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_spec(resource_type: str, tags: dict[str, str]) -> list[dict]:
    """EC2 TagSpecifications: tags applied atomically with creation, so a crash leaves nothing untagged."""
    return [{"ResourceType": resource_type, "Tags": tag_list(tags)}]


def as_dict(tags: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def cluster_filter(cluster: str) -> list[dict]:
    return [{"Name": f"tag:{CLUSTER}", "Values": [cluster]}]
