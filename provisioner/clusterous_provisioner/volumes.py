"""Shared volumes kept from earlier clusters: list them, bring one back with --shared-volume-id, delete."""

from __future__ import annotations

from clusterous_core.errors import BadInput
from clusterous_provisioner import tags


def kept_volumes(clients) -> list[dict]:
    """Shared volumes that no cluster owns now (kept at `down`, or detached some other way)."""
    found = clients.ec2.describe_volumes(Filters=[{"Name": f"tag:{tags.ROLE}", "Values": ["shared-volume"]}])[
        "Volumes"
    ]
    return [v for v in found if tags.CLUSTER not in tags.as_dict(v.get("Tags"))]


def remove_volume(clients, volume_id: str) -> dict:
    """Delete a kept shared volume; anything else (in use, not ours) is refused."""
    volume = next((v for v in kept_volumes(clients) if v["VolumeId"] == volume_id), None)
    if volume is None:
        raise BadInput(
            "ID", None, "the id of a kept shared volume (see `clusterous-k8s volumes ls`)", volume_id
        )
    if volume["State"] != "available":
        raise BadInput("ID", None, "a detached volume", f"{volume_id} is {volume['State']}")
    clients.ec2.delete_volume(VolumeId=volume_id)
    return volume
