"""The provisioner's front door: `up`, `down`, `scale`, `suspend` and `resume` are one call each.

Each call runs the whole sequence under the cluster's lease — what exists (by tags), the plan and
its checks, the bucket, the converge, the teardown or the resize — and reaches the person running
it only through `Hooks` (lines, questions, the plan, a progress display). The CLI keeps its
options, its output and the readiness wait inside the instances.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from clusterous_core.errors import BadInput, Failure
from clusterous_provisioner import aws, inventory, lease
from clusterous_provisioner.clusterfile import ClusterSpec
from clusterous_provisioner.plan import Plan
from clusterous_provisioner.steps import Outcome, Target

Report = Callable[[str], None]
Source = tuple[str, str, str | None]  # (instance type, the file or flag it was written in, field)

WIDE_SSH_PREFIX = 16  # a range wider than a /16 (65,536 addresses) is "the internet", not "my lab"


@contextlib.contextmanager
def _just_report(report: Report, title: str) -> Iterator[Report]:
    yield report


def _nobody_to_ask(question: str) -> None:
    """A caller that gave no way to ask: nothing is done without a yes (secure by default)."""
    raise Failure(f"not confirmed: {question}", "pass --yes to go ahead without being asked")


@dataclass(frozen=True)
class Hooks:
    """How the front door reaches the person running it. `confirm` asks and ends the command when
    the answer is no; `ask` is a choice whose default is no; with `yes` nothing is asked."""

    report: Report
    yes: bool = False
    confirm: Callable[[str], None] = _nobody_to_ask
    ask: Callable[[str], bool] = lambda question: False
    show_plan: Callable[[Plan], None] = lambda plan: None
    progress: Callable[[str], AbstractContextManager[Report]] | None = None  # title → a progress reporter
    remember_bucket_region: Callable[[str], None] = lambda region: None  # looked up once, kept


@dataclass(frozen=True)
class UpRequest:
    """What `up` makes, and with what: the profile's bucket and key pair, where local keys go."""

    spec: ClusterSpec
    bucket: str
    state_dir: Path
    key_name: str | None = None  # the profile's key pair; None: one per cluster
    bucket_region: str | None = None  # as the profile recorded it; None: looked up
    profile_file: str = ""  # named by a refused bucket region
    sources: tuple[Source, ...] = ()  # where each instance type was written, for bad-input messages
    dry_run: bool = False


@dataclass
class UpResult:
    plan: Plan
    outcome: Outcome | None = None  # None: a dry run
    instances: list[dict] = field(default_factory=list)  # controller and nodes as EC2 describes them

    @property
    def controller(self) -> dict:
        assert self.outcome is not None
        return next(i for i in self.instances if i["InstanceId"] == self.outcome.controller_id)

    @property
    def node_ids(self) -> list[str]:
        return [i for ids in (self.outcome.instance_ids if self.outcome else {}).values() for i in ids]


def up(clients, req: UpRequest, hooks: Hooks) -> UpResult:
    """Plan the cluster and, unless a dry run, create what it lacks (re-runnable after any failure)."""
    from clusterous_provisioner import apply
    from clusterous_provisioner import bucket as buckets
    from clusterous_provisioner.preflight import preflight

    spec, report = req.spec, hooks.report
    bucket_region = None if req.dry_run else _bucket_region(clients, req, hooks)
    with lease.held(clients, spec.name, "up", report, hold=not req.dry_run):
        inv, the_plan = _plan(clients, req, report)
        _refuse_if_suspended(inv, "up")
        if req.dry_run:
            if spec.ssh_cidr:
                confirm_ssh_cidr(spec.ssh_cidr, Hooks(report=report, yes=True))
            return UpResult(the_plan)
        cidr = _ssh_cidr(spec, hooks)
        with aws.aws_errors(
            f"up {spec.name}: checking the region", "check --os/--ami and the instance types"
        ):
            pre = preflight(clients, spec, inv, lambda t: next(s[1:] for s in req.sources if s[0] == t))
        hooks.show_plan(the_plan)
        if not the_plan.changes and not hooks.yes:
            report("nothing to create: the cluster matches the plan; checking it converged")
        elif not hooks.yes:
            hooks.confirm(f"Create these resources in {spec.region}?")
        target = Target(
            bucket=req.bucket,
            ssh_cidr=cidr,
            state_dir=req.state_dir,
            key_name=req.key_name,
            bucket_region=bucket_region,
        )
        progress = hooks.progress or (lambda title: _just_report(report, title))
        with aws.aws_errors(f"up {spec.name}"), progress(f"up {spec.name}") as step:
            buckets.ensure_bucket(clients.s3, req.bucket, spec.region)
            outcome = apply.apply(clients, spec, target, inv, step, pre)
    result = UpResult(the_plan, outcome)
    assert outcome.controller_id is not None  # apply() launched or found it
    with aws.aws_errors(f"up {spec.name}: reading the instances"):
        result.instances = inventory.describe_instances(
            clients.ec2, [outcome.controller_id, *result.node_ids]
        )
    return result


def _bucket_region(clients, req: UpRequest, hooks: Hooks) -> str:
    """The bucket's region as `setup` recorded it; for a profile recorded before that, looked up
    once (GetBucketLocation) and remembered; no such bucket yet: the cluster's region (`up` creates
    it there). Bad input, so checked before the lease: nothing is written."""
    from clusterous_provisioner import bucket as buckets

    spec = req.spec
    with aws.aws_errors(f"up {spec.name}: finding the bucket's region", "check your AWS credentials"):
        found = req.bucket_region
        if found is None:
            found = buckets.bucket_region(clients.s3, req.bucket)
            if found is not None:
                hooks.remember_bucket_region(found)
        found = found or spec.region
    buckets.check_registry_region(req.profile_file, req.bucket, found, spec.region)
    return found


def _plan(clients, req: UpRequest, report: Report):
    """(what exists, the plan): offline for a dry run without credentials, else found by tags."""
    from clusterous_provisioner import plan, pricing
    from clusterous_provisioner.clients import have_credentials
    from clusterous_provisioner.inventory import Inventory, discover

    spec, prices = req.spec, None
    if req.dry_run and not have_credentials():
        inv = Inventory.offline(spec.name, spec.region)
        if not spec.ami:  # an AMI's architecture is only known to AWS; the OS images are x86_64
            wrong = [t for t in spec.instance_types if pricing.likely_architecture(t) != "x86_64"]
            refuse_architecture(req.sources, wrong, "x86_64", f"the --os {spec.os} image")
    else:
        with aws.aws_errors(f"up {spec.name}: reading what exists", "check your AWS credentials and region"):
            inv = discover(clients, spec.name)
        report_duplicates(inv, report)
        prices = _prices(clients, spec, report)
    return inv, plan.make_plan(spec, inv, req.key_name, req.bucket, prices)


def report_duplicates(inv, report: Report) -> None:
    """A resource that should exist once but exists more than once (an earlier concurrent run)."""
    for line in inv.duplicates():
        report(f"warning: more than one {line}; `clusterous-k8s down` deletes them all")


def _prices(clients, spec: ClusterSpec, report: Report) -> dict[str, float]:
    """Pricing API prices for the types the bundled table lacks (cached 30 days per region)."""
    from clusterous_provisioner import pricing

    if all(pricing.bundled(t, spec.region) for t in spec.instance_types):
        return {}
    return pricing.fetch_prices(
        pricing.pricing_client(clients.session), spec.region, spec.instance_types, aws.cache_dir(), report
    )


def refuse_architecture(sources, wrong: list[str], architecture: str, image: str) -> None:
    """Exit 2 at plan time, naming where the first type that cannot run the image was written."""
    if not wrong:
        return
    _, source, field_name = next(s for s in sources if s[0] in wrong)
    raise BadInput(
        source,
        field_name,
        f"an instance type that runs {architecture}, the architecture of {image} "
        f"({', '.join(sorted(wrong))} cannot); pick another type or an image built for it",
        ", ".join(sorted(wrong)),
    )


def _ssh_cidr(spec: ClusterSpec, hooks: Hooks) -> str:
    """The range allowed to SSH to the controller: the spec's, else the client's public address."""
    from clusterous_provisioner import clientip
    from clusterous_provisioner.clusterfile import check_cidr

    cidr = spec.ssh_cidr
    if cidr is None:
        found = clientip.discover_client_cidr()
        if found is None:
            raise BadInput(
                "--ssh-cidr",
                None,
                "the address range allowed to SSH to the controller (your public address could not be "
                "discovered via checkip.amazonaws.com), e.g. --ssh-cidr 203.0.113.7/32",
            )
        cidr = check_cidr(found)
        hooks.report(f"SSH will be allowed from {cidr} (your public address)")
    confirm_ssh_cidr(cidr, hooks)
    return cidr


def confirm_ssh_cidr(cidr: str, hooks: Hooks) -> None:
    """SSH open to a very wide range is sometimes meant (a roaming laptop) but never by accident:
    say what it opens and ask, unless --yes."""
    import ipaddress

    net = ipaddress.ip_network(cidr)
    if net.prefixlen >= WIDE_SSH_PREFIX:
        return
    everyone = "every address on the internet" if net.prefixlen == 0 else f"{net.num_addresses:,} addresses"
    warning = (
        f"--ssh-cidr {cidr} opens SSH (port 22) on the controller to {everyone}; only its key pair "
        "then stands between the internet and the cluster"
    )
    if hooks.yes:
        hooks.report(f"warning: {warning}")
    else:
        hooks.confirm(f"{warning}. Continue?")


# --- down ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownRequest:
    cluster: str
    keep_shared_volume: bool = False
    delete_shared_volume: bool = False
    key_dir: Path | None = None  # where the cluster's private key was written


def down(clients, req: DownRequest, hooks: Hooks):
    """Delete everything the cluster owns (the shared volume as the person decides), then sweep."""
    from clusterous_provisioner import destroy
    from clusterous_provisioner.inventory import discover

    name, region, report = req.cluster, clients.region, hooks.report
    with (
        lease.held(clients, name, "down", report, source="NAME"),
        aws.aws_errors(f"down {name}", "re-run `clusterous-k8s down` to continue"),
    ):
        inv = discover(clients, name)
        volume, delete_volume = destroy.volume_fate(inv, req.keep_shared_volume, req.delete_shared_volume)
        if delete_volume is None:  # a volume the cluster created, and no flag: the user's call
            assert volume is not None  # volume_fate asks only about a volume
            delete_volume = not hooks.yes and hooks.ask(
                f"Also delete the shared volume {volume['VolumeId']} ({volume['Size']} GiB) and the data on it?"
            )
        if inv.empty and volume is None:
            report(f"cluster {name}: nothing tagged with it in {region}")
        else:
            lines = destroy.summary(inv, delete_volume)
            report(f"down {name} in {region} will delete:")
            for line in lines:
                report(f"  - {line}")
            if not hooks.yes:
                hooks.confirm("Delete all of this?")
        return destroy.destroy(clients, inv, delete_volume, report, req.key_dir)


# --- scale --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleRequest:
    """A node group's new size: `count`, or its size now plus `delta` (negative: remove)."""

    group: str
    count: int | None = None
    delta: int = 0
    instance_type: str | None = None  # for a group that has no nodes yet
    force: bool = False  # terminate without draining
    wait: bool = True  # for the instances to run or terminate


@dataclass(frozen=True)
class Resized:
    cluster: str
    group: str
    before: int
    after: int
    added: list[str]
    removed: list[str]


def scale(
    clients,
    cluster: str,
    bucket: str,
    req: ScaleRequest,
    hooks: Hooks,
    drain: Callable[[list[dict]], list[dict]],
    forget: Callable[[list[str]], None],
) -> Resized:
    """Grow a group in one launch, or drain (`drain`: the instances going → their drained Nodes)
    and terminate its newest nodes; `forget` then removes Nodes a kubelet registered again."""
    from clusterous_provisioner import scaling

    group, report = req.group, hooks.report
    with _existing_cluster(clients, cluster, "scale", report, "re-run the command to continue") as inv:
        _refuse_if_suspended(inv, "scale")
        have = len(inv.group_instances(group))
        target = have + req.delta if req.count is None else req.count
        if target < 0:
            raise BadInput("N", None, f"at most {have} (group {group} has {have} node(s))", -req.delta)
        added: list[str] = []
        removed: list[str] = []
        if target > have:
            if not hooks.yes:
                hooks.confirm(f"Launch {target - have} node(s) in group {group}?")
            added = scaling.grow(clients, inv, group, target, bucket, req.instance_type, req.wait, report)
        elif target < have:
            victims = scaling.pick_to_remove(inv.group_instances(group), have - target)
            verb = "Terminate" if req.force else "Drain and terminate"
            if not hooks.yes:
                hooks.confirm(
                    f"{verb} {len(victims)} node(s) of group {group} "
                    f"({', '.join(v['InstanceId'] for v in victims)})?"
                )
            drained: list[dict] = []
            if req.force:
                report("--force: terminating without draining")
            else:
                drained = drain(victims)
            removed = scaling.shrink(clients, inv, group, target, req.wait, report)
            if drained and req.wait:  # terminated now: no kubelet can bring the Nodes back
                forget([d["node"] for d in drained])
    return Resized(cluster, group, have, target, added, removed)


@contextlib.contextmanager
def _existing_cluster(clients, name: str, command: str, report: Callable[[str], None], next_step: str):
    """Under the cluster's lease, AWS errors worded for `command`: its inventory, which must
    exist (scale, suspend and resume act on a cluster; `up` makes one, `down` takes what it finds)."""
    with lease.held(clients, name, command, report), aws.aws_errors(f"{command} {name}", next_step):
        inv = inventory.discover(clients, name)
        if inv.vpc is None:
            raise Failure(f"no cluster {name} in {clients.region}", "see `clusterous-k8s clusters`")
        yield inv


# --- suspend and resume (suspension.py) ----------------------------------------------------------


def _refuse_if_suspended(inv, command: str) -> None:
    """`up` converges a running cluster and `scale` launches nodes that join its controller; a
    suspended one comes back with `resume` first (up's wait would never see stopped instances run)."""
    from clusterous_provisioner import suspension

    suspension.refuse_if_suspended(inv, command)


@dataclass(frozen=True)
class SuspendRequest:
    cluster: str


def suspend(clients, req: SuspendRequest, hooks: Hooks):
    """Stop every instance and remove the NAT gateway and its address; keep disks, bucket, record."""
    from clusterous_provisioner import suspension

    name, report = req.cluster, hooks.report
    with _existing_cluster(
        clients, name, "suspend", report, "re-run `clusterous-k8s suspend` to continue"
    ) as inv:
        if not hooks.yes:
            hooks.confirm(
                f"Stop the {len(inv.instances)} instance(s) of {name} and delete its NAT gateway "
                "(the shared volume, the images and the cluster are kept)?"
            )
        progress = hooks.progress or (lambda title: _just_report(report, title))
        with progress(f"suspend {name}") as step:
            return suspension.suspend(clients, inv, step)


@dataclass(frozen=True)
class ResumeRequest:
    cluster: str
    bucket: str  # the profile's registry bucket: nodes launched again (spot groups) mirror it


def resume(clients, req: ResumeRequest, hooks: Hooks):
    """The NAT gateway back, every instance running again (spot groups launched to their size)."""
    from clusterous_provisioner import suspension

    name, report = req.cluster, hooks.report
    with _existing_cluster(
        clients, name, "resume", report, "re-run `clusterous-k8s resume` to continue"
    ) as inv:
        if suspension.suspended_since(inv) is None:
            report(f"cluster {name} is not suspended; checking that it runs")
        progress = hooks.progress or (lambda title: _just_report(report, title))
        with progress(f"resume {name}") as step:
            return suspension.resume(clients, inv, req.bucket, step)
