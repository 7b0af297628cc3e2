"""Security groups: SSH to the controller from the client's range only; the cluster talks to itself."""

from __future__ import annotations

import json

from clusterous_provisioner import layout, tags
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.network import keyed_tags
from clusterous_provisioner.steps import Outcome


def ensure_security_groups(
    clients, spec: ClusterSpec, inv: Inventory, vpc_id: str, ssh_cidr: str, out: Outcome
) -> dict:
    """Controller: SSH from ssh_cidr only, plus the cluster; nodes: the cluster only. Nothing else."""
    ec2 = clients.ec2
    groups: dict[str, dict] = {}
    for key, what, description in (
        (
            "sg-controller",
            "controller",
            "clusterous controller: SSH from the client, cluster-internal traffic",
        ),
        ("sg-nodes", "nodes", "clusterous nodes: cluster-internal traffic only"),
    ):
        group = inv.security_group(key)
        if group is None:
            group_id = ec2.create_security_group(
                GroupName=layout.resource_name(spec.name, what),
                Description=description,
                VpcId=vpc_id,
                TagSpecifications=tags.tag_spec("security-group", keyed_tags(spec, "network", key, what)),
            )["GroupId"]
            out.created.append(f"security group {group_id} ({what})")
            group = {"GroupId": group_id, "IpPermissions": []}
        groups[key] = group
    ctrl, nodes = groups["sg-controller"]["GroupId"], groups["sg-nodes"]["GroupId"]
    wanted = {
        ctrl: [("ssh", ssh_cidr), ("group", ctrl), ("group", nodes)],
        nodes: [("group", ctrl), ("group", nodes)],
    }
    for group in groups.values():
        gid = group["GroupId"]
        have = _rules(group.get("IpPermissions", []))
        add = [rule for rule in wanted[gid] if rule not in have]
        stale = [rule for rule in have if rule not in wanted[gid]]
        if stale:
            ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[_permission(r) for r in stale])
        if add:
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[_permission(r) for r in add])
    return {"sg-controller": ctrl, "sg-nodes": nodes}


def _rules(permissions: list[dict]) -> list[tuple[str, str]]:
    rules = []
    for perm in permissions:
        if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22:
            rules += [("ssh", r["CidrIp"]) for r in perm.get("IpRanges", [])]
        elif perm.get("IpProtocol") == "-1":
            rules += [("group", p["GroupId"]) for p in perm.get("UserIdGroupPairs", [])]
            rules += [("any-from", r["CidrIp"]) for r in perm.get("IpRanges", [])]
        else:
            rules += [("other", json.dumps(perm, sort_keys=True, default=str))]
    return rules


def _permission(rule: tuple[str, str]) -> dict:
    kind, value = rule
    if kind == "ssh":
        return {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": value, "Description": "SSH from the client"}],
        }
    if kind == "group":
        return {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": value, "Description": "cluster-internal"}],
        }
    if kind == "any-from":
        return {"IpProtocol": "-1", "IpRanges": [{"CidrIp": value}]}
    return json.loads(value)
