"""The plan: what a cluster should have, set against what its tags say it has.

Pure: takes a ClusterSpec and an Inventory, returns the list of resources with the action for each
(create, exists, launch N) and the cost per hour. `up` shows it, `up --dry-run` prints it, `apply`
carries it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from clusterous_provisioner import layout, pricing
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.inventory import Inventory

CREATE, EXISTS, LAUNCH, EXTRA = "create", "exists", "launch", "exists (more than desired)"


@dataclass(frozen=True)
class Item:
    """One planned resource (or node group) and what `up` will do about it."""

    key: str
    kind: str
    name: str
    action: str
    detail: str = ""
    count: int = 1  # instances desired (groups) or 1
    existing: int = 0  # instances running (groups)
    hourly_usd: float | None = 0.0  # cost of the desired resource when it runs
    price_note: str = ""


@dataclass(frozen=True)
class Plan:
    cluster: str
    region: str
    items: tuple[Item, ...]
    checked_aws: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hourly_cost_usd(self) -> float:
        return round(sum(i.hourly_usd or 0.0 for i in self.items), 4)

    @property
    def unpriced(self) -> list[str]:
        return [f"{i.name}: {i.price_note}" for i in self.items if i.hourly_usd is None]

    @property
    def unpriced_instances(self) -> int:
        """Instances the total leaves out (their type has no known price): it is then a lower bound."""
        return sum(
            i.count for i in self.items if i.hourly_usd is None and i.kind in ("instance", "node group")
        )

    @property
    def cost_line(self) -> str:
        if self.unpriced:
            n = self.unpriced_instances
            what = f"{n} instance{'s' if n != 1 else ''}" if n else "some resources"
            return f"at least {self.hourly_cost_usd:.4f} USD/hour; {what} not priced"
        monthly = self.hourly_cost_usd * pricing.HOURS_PER_MONTH
        return f"{self.hourly_cost_usd:.4f} USD per hour (about {monthly:.0f} USD per 30 days of uptime)"

    @property
    def changes(self) -> list[Item]:
        return [i for i in self.items if i.action in (CREATE, LAUNCH)]

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "region": self.region,
            "checked_existing_resources": self.checked_aws,
            "hourly_cost_usd": self.hourly_cost_usd,
            "monthly_cost_usd": round(self.hourly_cost_usd * pricing.HOURS_PER_MONTH, 2),
            "unpriced": self.unpriced,
            "unpriced_instances": self.unpriced_instances,
            "hourly_cost_is_lower_bound": bool(self.unpriced),
            "changes": len(self.changes),
            "resources": [asdict(i) for i in self.items],
            "notes": list(self.notes),
        }


def _exists(found: object) -> str:
    return EXISTS if found else CREATE


def make_plan(
    spec: ClusterSpec,
    inv: Inventory,
    profile_key_name: str | None = None,
    bucket: str | None = None,
    prices: dict[str, float] | None = None,
) -> Plan:
    """Desired resources of `spec` against `inv`; prices from the bundled table, then `prices`
    (what the Pricing API gave for types the table lacks)."""
    region, name = spec.region, spec.name
    nat_price = pricing.nat_gateway_hourly(region)
    ip_price = pricing.public_ip_hourly(region)
    items = _network_items(spec, inv, ip_price, nat_price)
    items += _identity_items(spec, inv, profile_key_name, bucket)
    items.append(_volume_item(spec, inv))
    root = pricing.gp3_hourly(layout.ROOT_VOLUME_GIB, region).hourly_usd
    items += _instance_items(spec, inv, prices, root, ip_price)
    notes = []
    if not inv.online:
        notes.append("existing resources not checked (no AWS credentials): everything is shown as new")
    extra_groups = sorted(set(inv.groups) - {g.name for g in spec.groups})
    if extra_groups:
        notes.append(f"running groups not in this layout are left alone: {', '.join(extra_groups)}")
    if any(i.action == EXTRA for i in items):
        notes.append("`up` never removes nodes: use `clusterous-k8s scale GROUP COUNT` to shrink a group")
    hourly = sum(i.hourly_usd or 0.0 for i in items)
    notes += _elastic_notes(spec, region, root, hourly, prices)
    notes += _budget_notes(spec, hourly)
    source = "bundled table and AWS Pricing API" if prices else "bundled table"
    notes.append(f"costs: on-demand, {source}; data transfer and NAT per-GB charges not included")
    return Plan(cluster=name, region=region, items=tuple(items), checked_aws=inv.online, notes=tuple(notes))


def _network_items(spec: ClusterSpec, inv: Inventory, ip_price, nat_price) -> list[Item]:
    """VPC, gateways, subnets, route tables, the NAT's address and the security groups."""
    n = lambda what: layout.resource_name(spec.name, what)  # noqa: E731
    return [
        Item("vpc", "VPC", n("vpc"), _exists(inv.vpc), layout.VPC_CIDR),
        Item("internet-gateway", "internet gateway", n("igw"), _exists(inv.internet_gateways)),
        Item(
            "subnet-public", "subnet", n("public"), _exists(inv.subnet("subnet-public")), layout.PUBLIC_CIDR
        ),
        Item(
            "subnet-private",
            "subnet",
            n("private"),
            _exists(inv.subnet("subnet-private")),
            layout.PRIVATE_CIDR,
        ),
        Item("rtb-public", "route table", n("public"), _exists(inv.route_table("rtb-public"))),
        Item("rtb-private", "route table", n("private"), _exists(inv.route_table("rtb-private"))),
        Item(
            "nat-eip",
            "Elastic IP",
            n("nat"),
            _exists(inv.address),
            "NAT gateway's address",
            hourly_usd=ip_price.hourly_usd,
        ),
        Item(
            "nat-gateway",
            "NAT gateway",
            n("nat"),
            _exists(inv.nat_gateway),
            "private subnet's way out",
            hourly_usd=nat_price.hourly_usd,
            price_note=nat_price.note,
        ),
        Item(
            "sg-controller",
            "security group",
            n("controller"),
            _exists(inv.security_group("sg-controller")),
            f"SSH from {spec.ssh_cidr or 'your address'}; cluster-internal",
        ),
        Item(
            "sg-nodes",
            "security group",
            n("nodes"),
            _exists(inv.security_group("sg-nodes")),
            "cluster-internal",
        ),
    ]


def _identity_items(
    spec: ClusterSpec, inv: Inventory, profile_key_name: str | None, bucket: str | None
) -> list[Item]:
    """The controller's IAM role, the key pair (the profile's, or one per cluster) and the token."""
    name, region = spec.name, spec.region
    items: list[Item] = [
        Item(
            "iam-role",
            "IAM role + instance profile",
            layout.role_name(name, region),
            _exists(inv.role and inv.instance_profile),
            f"controller: registry bucket {bucket}, its own nodes"
            if bucket
            else "controller: registry bucket, its own nodes",
        ),
    ]
    if profile_key_name:
        items.append(Item("key-pair", "key pair", profile_key_name, EXISTS, "the profile's"))
    else:
        items.append(
            Item(
                "key-pair",
                "key pair",
                layout.key_pair_name(name),
                _exists(inv.key_pairs),
                "deleted with the cluster",
            )
        )
    items.append(
        Item(
            "k3s-token",
            "SSM parameter",
            layout.token_parameter(name),
            _exists(inv.token_parameter),
            "SecureString",
        )
    )
    return items


def _volume_item(spec: ClusterSpec, inv: Inventory) -> Item:
    """The shared volume: a new gp3 one, or the user's by id (priced once its size is known)."""
    region = spec.region
    if spec.shared_volume_id:
        vol_price = pricing.Price(0.0, "existing volume, billed already")
        size = inv.shared_volume["Size"] if inv.shared_volume else None
        if size:
            vol_price = pricing.gp3_hourly(size, region)
        return Item(
            "shared-volume",
            "EBS volume",
            spec.shared_volume_id,
            EXISTS,
            "existing volume, kept at down",
            hourly_usd=vol_price.hourly_usd,
            price_note=vol_price.note,
        )
    vol_price = pricing.gp3_hourly(spec.shared_volume_size or 0, region)
    return Item(
        "shared-volume",
        "EBS volume",
        layout.resource_name(spec.name, "shared"),
        _exists(inv.shared_volume),
        f"gp3 {spec.shared_volume_size} GiB, encrypted",
        hourly_usd=vol_price.hourly_usd,
        price_note=vol_price.note,
    )


def _instance_items(spec: ClusterSpec, inv: Inventory, prices, root: float | None, ip_price) -> list[Item]:
    """The controller and the node groups, each instance priced with its root volume."""
    region, n = spec.region, lambda what: layout.resource_name(spec.name, what)  # noqa: E731
    items: list[Item] = []
    ctrl = pricing.instance_hourly(spec.controller_type, region, prices)
    ctrl_cost = (
        None
        if ctrl.hourly_usd is None or root is None or ip_price.hourly_usd is None
        else ctrl.hourly_usd + root + ip_price.hourly_usd
    )
    items.append(
        Item(
            "controller",
            "instance",
            n("controller"),
            _exists(inv.controller),
            f"{spec.controller_type}, public subnet, {layout.CONTROLLER_IP}",
            hourly_usd=ctrl_cost,
            price_note=ctrl.note,
        )
    )
    for group in spec.groups:
        have = len(inv.group_instances(group.name))
        price = pricing.instance_hourly(group.instance_type, region, prices)
        each = None if price.hourly_usd is None or root is None else price.hourly_usd + root
        action = EXISTS if have == group.count else LAUNCH if have < group.count else EXTRA
        detail = (
            f"{group.count} × {group.instance_type}" + (" spot" if group.spot else "") + ", private subnet"
        )
        if have:
            detail += f" ({have} running)"
        if group.elastic:
            detail += f", autoscaled {group.min}..{group.max}"
        items.append(
            Item(
                f"group:{group.name}",
                "node group",
                n(group.name),
                action,
                detail,
                count=group.count,
                existing=have,
                hourly_usd=None if each is None else round(each * group.count, 6),
                price_note=price.note + (" (spot: at most this)" if group.spot else ""),
            )
        )
    return items


AUTOSCALER_NOTE = (
    "autoscaler: Deployment clusterous-system/clusterous-autoscaler on the controller, applied by `up` "
    "once the API answers"
)


def _elastic_notes(
    spec: ClusterSpec, region: str, root: float | None, hourly: float, prices: dict[str, float] | None
) -> list[str]:
    """Groups with bounds (docs/elastic.md): the autoscaler, and the cost per hour at min and at max."""
    elastic = [g for g in spec.groups if g.elastic]
    if not elastic:
        doing = "it only counts the budget's spending" if spec.budget is not None else "it idles"
        return [f"{AUTOSCALER_NOTE}; {doing}: no group has bounds"]
    at_min = at_max = hourly
    for g in elastic:
        price = pricing.instance_hourly(g.instance_type, region, prices).hourly_usd
        if price is None or root is None:
            return [
                AUTOSCALER_NOTE,
                f"autoscaler bounds: {_bounds(elastic)}; cost at min/max not priced ({g.instance_type})",
            ]
        assert g.min is not None and g.max is not None  # elastic: both bounds are set
        at_min += (price + root) * (g.min - g.count)
        at_max += (price + root) * (g.max - g.count)
    return [
        AUTOSCALER_NOTE,
        f"autoscaler bounds: {_bounds(elastic)} (docs/elastic.md)",
        f"cost with every elastic group at min: {at_min:.4f} USD per hour; at max: {at_max:.4f} USD per hour",
    ]


def _budget_notes(spec: ClusterSpec, hourly: float) -> list[str]:
    """How long the budget lasts at the starting cost, and what happens at 80% and 100%."""
    if spec.budget is None:
        return []
    lasts = f"about {spec.budget / hourly:.0f} hours at the starting cost" if hourly > 0 else "not priced"
    then = "status and run warn at 80%, and at 100% the autoscaler keeps every group at its min"
    return [f"budget: {spec.budget:.2f} USD ({lasts}); {then} until `clusterous-k8s budget N` raises it"]


def _bounds(groups) -> str:
    return ", ".join(f"{g.name} {g.min}..{g.max} (starts at {g.count})" for g in groups)
