"""The shared volume: made (gp3, encrypted) or adopted by id, and attached to the controller."""

from __future__ import annotations

from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.preflight import Preflight
from clusterous_provisioner.steps import WAIT, Outcome


def ensure_shared_volume(clients, spec: ClusterSpec, inv: Inventory, pre: Preflight, out: Outcome) -> dict:
    """A new gp3 encrypted volume, or the user's volume by id, tagged as this cluster's."""
    ec2 = clients.ec2
    volume = inv.shared_volume
    if volume is not None:
        return volume
    if pre.external_volume is not None:
        volume = pre.external_volume
        ec2.create_tags(
            Resources=[volume["VolumeId"]],
            Tags=tags.tag_list(
                tags.tag_dict(
                    spec.name,
                    "shared-volume",
                    volume.get("Name") or layout.resource_name(spec.name, "shared"),
                )
                | {tags.VOLUME_ORIGIN: "external"}
            ),
        )
        out.created.append(f"shared volume {volume['VolumeId']} adopted (kept at down)")
        return volume
    volume = ec2.create_volume(
        AvailabilityZone=pre.zone,
        Size=spec.shared_volume_size,
        VolumeType="gp3",
        Encrypted=True,
        TagSpecifications=tags.tag_spec(
            "volume",
            tags.tag_dict(spec.name, "shared-volume", layout.resource_name(spec.name, "shared"))
            | {tags.VOLUME_ORIGIN: "created", tags.KEY: "shared-volume"},
        ),
    )
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume["VolumeId"]], WaiterConfig=WAIT)
    out.created.append(f"shared volume {volume['VolumeId']} ({spec.shared_volume_size} GiB gp3, encrypted)")
    return volume


def attach_shared_volume(clients, volume: dict, controller_id: str) -> None:
    ec2 = clients.ec2
    current = ec2.describe_volumes(VolumeIds=[volume["VolumeId"]])["Volumes"][0]
    if any(a["InstanceId"] == controller_id for a in current.get("Attachments", [])):
        return
    ec2.attach_volume(
        VolumeId=volume["VolumeId"], InstanceId=controller_id, Device=layout.SHARED_VOLUME_DEVICE
    )
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume["VolumeId"]], WaiterConfig=WAIT)
