"""Cluster lifecycle commands: up and down (status and the like: status.py; resizing: nodes.py).

Thin: they read the profile and flags, call the provisioner's front door (lifecycle.up, down),
and print. Heavy imports stay inside the functions so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from clusterous_cli.commands.options import (
    CLUSTER_ARGUMENT,
    CLUSTER_OPTION,
    JSON_OPTION,
    PARAM_OPTION,
    REGION_OPTION,
    YES_OPTION,
    one_cluster,
)
from clusterous_core.names import SUPPORTED_OS

PLACEHOLDER_TOKEN = "0" * 64  # dry runs render user-data without touching the real token
DEFAULT_NAME = "mycluster"

UP_HELP = """Create a cluster, or finish one a previous run left incomplete.

Reads an optional Clusterous cluster file; flags override it. Shows the plan with its cost per
hour, asks for confirmation (unless --yes), creates only what is missing, and can be re-run after
any failure. --dry-run prints the plan only and needs no AWS credentials. Then waits, stage by
stage, for the cluster inside the instances: the controller's SSH host key (from its console
output), SSH, cloud-init, the Kubernetes API, every node Ready, the add-ons; --no-wait skips it.

Example: clusterous-k8s up examples/mycluster.yml --workers 4 --yes
"""
DOWN_HELP = """Delete everything a cluster owns in AWS and prove nothing billable is left.

The shared volume holds your data, so it goes only when you say so: --delete-shared-volume
deletes it, --keep-shared-volume keeps it; without either you are asked about a volume the
cluster created, and --yes alone keeps it (`volumes ls` / `volumes rm` later). A volume brought in
with --shared-volume-id is kept unless --delete-shared-volume. Works without local state.

Example: clusterous-k8s down mycluster --yes --delete-shared-volume
"""


def _profile_name(ctx: typer.Context) -> str:
    from clusterous_cli import config

    return config.selected_profile_name(ctx.obj.profile if ctx.obj else None)


def _profile(ctx: typer.Context, required: bool = True):
    from clusterous_cli import config

    name = _profile_name(ctx)
    if not required and not config.profile_path(name).exists():
        return name, None
    return name, config.load_profile(name)


def _dry_run_region() -> str:
    """Without a profile a dry run still prices a plan: the AWS config's region, else us-east-1."""
    from clusterous_provisioner import aws

    return aws.session().region_name or "us-east-1"


def _reporter():
    from clusterous_cli import output

    return output.say


def _render(
    spec, bucket: str, bucket_region: str | None, directory: Path, token: str = PLACEHOLDER_TOKEN
) -> list[Path]:
    from clusterous_provisioner import apply, bootstrap

    volume = spec.shared_volume_id or "vol-00000000000000000"
    inputs = apply.bootstrap_inputs(spec, bucket, token, volume, bucket_region)
    return bootstrap.write_render_dir(inputs, directory)


def _confirm(question: str) -> None:
    """A yes/no question; no ends the command (`aborted`, exit 1)."""
    if not typer.confirm(question, default=False):
        raise typer.Abort()


def _ask(question: str) -> bool:
    return typer.confirm(question, default=False)


@contextlib.contextmanager
def _progress(title: str):
    """A spinner on stderr that shows the latest step, each step also printed as a line."""
    from rich.console import Console

    from clusterous_cli import output

    with Console(stderr=True).status(title) as status:

        def progress(message: str) -> None:
            status.update(message)
            output.say(message)

        yield progress


def _remember_bucket_region(profile_name: str, profile, region: str) -> None:
    """Record the bucket's region looked up for a profile written before `setup` recorded it."""
    from clusterous_cli import config

    config.save_profile(profile_name, profile._replace(bucket_region=region))


def instance_type_sources(
    spec, cluster_file: Path | None, overrides: dict
) -> list[tuple[str, str, str | None]]:
    """(instance type, where it was written, field) for the controller and every group."""
    from clusterous_provisioner.clusterfile import FLAG_FIELDS, read_cluster_file

    data = read_cluster_file(cluster_file) if cluster_file else {}

    def where(key: str, field: str) -> tuple[str, str | None]:
        return (FLAG_FIELDS[key][0], None) if overrides.get(key) else (spec.source, field)

    found = [(spec.controller_type, *where("controller_type", "controller_instance_type"))]
    for group in spec.groups:
        if isinstance(data.get("node_groups"), dict) and group.name in data["node_groups"]:
            found.append((group.instance_type, spec.source, f"node_groups.{group.name}.type"))
        elif group.name in ("master", "worker"):
            found.append(
                (group.instance_type, *where(f"{group.name}_type", f"parameters.{group.name}_instance_type"))
            )
        else:
            found.append((group.instance_type, spec.source, f"instance type of node group {group.name}"))
    return found


def check_instance_types(sources) -> None:
    """Every instance type must be one botocore knows (offline): a typo is exit 2 naming where it
    was written and the closest known types."""
    from clusterous_provisioner.pricing import check_instance_type

    for instance_type, source, field in sources:
        check_instance_type(instance_type, source, field)


def up(
    ctx: typer.Context,
    cluster_file: Path = typer.Argument(
        None, metavar="CLUSTER_FILE", help="Clusterous cluster file (YAML); optional."
    ),
    name: str = typer.Option(
        None, "--cluster", "-c", help="Cluster to create or converge [cluster file, else mycluster]."
    ),
    workers: str = typer.Option(
        None,
        "--workers",
        help="Number of worker nodes, or bounds MIN..MAX for the autoscaler (starts at MIN).",
    ),
    master_type: str = typer.Option(None, "--master-type", help="Instance type of the master node."),
    worker_type: str = typer.Option(None, "--worker-type", help="Instance type of the workers."),
    controller_type: str = typer.Option(None, "--controller-type", help="Instance type of the controller."),
    shared_volume_size: int = typer.Option(None, "--shared-volume-size", help="Shared volume GiB (1-16384)."),
    shared_volume_id: str = typer.Option(None, "--shared-volume-id", help="Use an existing EBS volume."),
    logging_level: int = typer.Option(None, "--logging-level", help="0 off, 1 app logs, 2 + system logs."),
    spot: bool = typer.Option(
        False, "--spot", help="Spot instances for the node groups (never the controller)."
    ),
    region: str = typer.Option(None, "--region", help="AWS region [cluster file, else profile]."),
    os_name: str = typer.Option(None, "--os", help="ubuntu-24.04 (default) or al2023."),
    ami: str = typer.Option(None, "--ami", help="An AMI id instead of --os."),
    ssh_cidr: str = typer.Option(None, "--ssh-cidr", help="Who may SSH to the controller [your address]."),
    budget: float = typer.Option(
        None, "--budget", help="USD the cluster may spend; at it, no node group grows [no budget]."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and its cost; create nothing."),
    as_json: bool = JSON_OPTION,
    render_dir: Path = typer.Option(None, "--render-dir", help="Also write user-data and manifests to DIR."),
    no_wait: bool = typer.Option(
        False,
        "--no-wait",
        help="Return once the instances run, without waiting for the cluster in them "
        "(nodes join once an `up` that waits has run).",
    ),
    timeout: float = typer.Option(
        None, "--timeout", help="Seconds each readiness stage may take [host key 600, cloud-init 900, ...]."
    ),
    yes: bool = YES_OPTION,
    param: list[str] = PARAM_OPTION,
) -> None:
    from clusterous_cli import cluster_views as views
    from clusterous_cli import config, envfile, output
    from clusterous_cli.commands.apps import collect_params
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import lifecycle
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.clusterfile import read_cluster_file

    if os_name is not None and os_name not in SUPPORTED_OS:
        raise BadInput("--os", None, " or ".join(SUPPORTED_OS), os_name)
    profile_name, profile = _profile(ctx, required=not dry_run)
    overrides = {
        "name": name,
        "workers": workers,
        "master_type": master_type,
        "worker_type": worker_type,
        "controller_type": controller_type,
        "shared_volume_size": shared_volume_size,
        "shared_volume_id": shared_volume_id,
        "logging_level": logging_level,
        "spot": spot,
        "region": region,
        "ssh_cidr": ssh_cidr,
        "os": os_name,
        "ami": ami,
        "budget": budget,
    }
    spec = _load_spec(cluster_file, overrides, profile, param)
    sources = instance_type_sources(spec, cluster_file, overrides)
    check_instance_types(sources)
    bucket = profile.bucket if profile else "registry-bucket-of-your-profile"
    key_name = profile.key_name if profile else None
    report = _reporter()
    # The environment file the cluster file names is checked now, before anything is created.
    env_app = None
    if spec.environment_file and cluster_file is not None:
        env_path = cluster_file.parent / spec.environment_file
        token_dir = None if dry_run else config.cluster_dir(profile_name, spec.name)  # `run`'s $token
        env_app = envfile.load_application(env_path, collect_params(param, cluster_file, token_dir))

    if render_dir is not None:
        written = _render(spec, bucket, profile.bucket_region if profile else None, render_dir)
        report(f"wrote {len(written)} files under {render_dir} (placeholder token)")

    clients = Clients(spec.region)
    request = lifecycle.UpRequest(
        spec=spec,
        bucket=bucket,
        # a dry run writes nothing locally: the folder is made only when there is something to keep
        state_dir=(config.config_dir() / "clusters" / profile_name / spec.name)
        if dry_run
        else config.cluster_dir(profile_name, spec.name),
        key_name=key_name,
        bucket_region=profile.bucket_region if profile else None,
        profile_file=str(config.profile_path(profile_name)),
        sources=tuple(sources),
        dry_run=dry_run,
    )
    hooks = lifecycle.Hooks(
        report=report,
        yes=yes,
        confirm=_confirm,
        show_plan=lambda plan: None if as_json else views.print_plan(plan, False),
        progress=_progress,
        remember_bucket_region=lambda found: _remember_bucket_region(profile_name, profile, found),
    )
    result = lifecycle.up(clients, request, hooks)
    if dry_run:
        views.print_plan(result.plan, as_json)
        return
    outcome, the_plan = result.outcome, result.plan
    assert outcome is not None  # not a dry run
    config.set_current_cluster(profile_name, spec.name)

    from clusterous_cli.endpoint import ClusterRef, record_controller

    ref = ClusterRef(profile_name, spec.name, config.cluster_dir(profile_name, spec.name))
    key_file = outcome.key_file or (profile.key_file if profile else None)
    record_controller(ref, result.controller, spec.region, str(key_file) if key_file else None)
    if not as_json:
        views.print_created(spec, outcome, result.node_ids)
    ready = None
    if not no_wait:
        explicit = logging_level is not None or (
            cluster_file is not None and "central_logging_level" in read_cluster_file(cluster_file)
        )
        ready = _wait_for_cluster(clients, ref, spec, bucket, result, explicit, timeout)
    if ready is not None:
        _record_bounds(ref, spec, bucket, report)
    if as_json:
        output.print_json(views.up_json(spec, outcome, the_plan, ready, no_wait))
    elif ready is not None:
        views.print_ready(spec, ready)
    else:
        report(
            "not waiting for the cluster inside the instances (--no-wait): re-run `up` to wait for it "
            "(nodes join once that `up` has tagged them with the server CA's hash)"
        )
    if env_app is not None:
        _run_environment(ref, env_app, env_path, cluster_file, ready is None or as_json, timeout, report)


def _load_spec(cluster_file: Path | None, overrides: dict, profile, param: list[str] | None):
    from clusterous_cli import envfile, envparams
    from clusterous_provisioner.clusterfile import load_spec

    return load_spec(
        cluster_file,
        overrides,
        profile_region=profile.region if profile else _dry_run_region(),
        profile_ssh_cidr=profile.ssh_cidr if profile else None,
        default_name=DEFAULT_NAME,
        # --param wins over the cluster file's parameters, as in `run` and `convert`
        environment_groups=lambda path, values: envfile.node_groups_for_up(
            path, {**values, **envparams.parse_params(param)}
        ),
    )


def _wait_for_cluster(clients, ref, spec, bucket: str, result, explicit_logging: bool, timeout) -> dict:
    """The readiness wait inside the instances (cli/readiness.py); logging is set only when asked."""
    from clusterous_cli import readiness, stages
    from clusterous_provisioner import aws

    with aws.aws_errors(f"up {spec.name}: waiting for the cluster", stages.RERUN):
        return readiness.wait_for_cluster(
            clients.ec2, ref, spec, bucket, result.instances, result.outcome.controller_id,
            spec.logging_level if explicit_logging else None, timeout,
        )  # fmt: skip


def _run_environment(ref, env_app, env_path: Path, cluster_file: Path, later: bool, timeout, report) -> None:
    """The environment file the cluster file names: run now, or (`later`) say how to run it."""
    if later:  # not waited for, or --json, which keeps stdout for the JSON document
        report(f"once the cluster is ready: clusterous-k8s run {env_path} --cluster-file {cluster_file}")
        return
    from clusterous_cli.commands.apps import run_application

    report(f"running {env_path} ({env_app.name}), as the cluster file asks")
    run_application(ref, env_app, timeout=timeout or 900)


def _record_bounds(ref, spec, bucket: str, report) -> None:
    """Elastic groups: their bounds go to the autoscaler's ConfigMap (docs/elastic.md); a cluster
    whose groups lost their bounds has them emptied there."""
    from clusterous_cli import kubeapi
    from clusterous_provisioner import autoscaler

    try:
        done = autoscaler.write_record(kubeapi.api_client(ref), spec, bucket)
    except Exception as exc:  # noqa: BLE001 - ApiException, a dropped tunnel
        raise kubeapi.api_failure(f"up {spec.name}: recording the node groups' bounds", exc) from None
    if done:
        bounds = (
            ", ".join(f"{g.name} {g.min}..{g.max}" for g in spec.groups if g.elastic) or "no elastic group"
        )
        report(f"autoscaler bounds {done}: {bounds} ({autoscaler.NAMESPACE}/{autoscaler.CONFIGMAP})")
    if done and spec.budget is not None:
        report(f"budget: {spec.budget:.2f} USD (`clusterous-k8s budget` shows what is spent)")


def down(
    ctx: typer.Context,
    name: str | None = CLUSTER_ARGUMENT,
    cluster: str | None = CLUSTER_OPTION,
    region: str | None = REGION_OPTION,
    keep_shared_volume: bool = typer.Option(
        False, "--keep-shared-volume", help="Keep the shared volume without asking."
    ),
    delete_shared_volume: bool = typer.Option(
        False,
        "--delete-shared-volume",
        help="Delete the shared volume and its data (also one brought in by id).",
    ),
    as_json: bool = JSON_OPTION,
    yes: bool = YES_OPTION,
) -> None:
    import shutil

    from clusterous_cli import cluster_views as views
    from clusterous_cli import config, output
    from clusterous_core.errors import BadInput, Failure
    from clusterous_provisioner import aws, lifecycle
    from clusterous_provisioner.clients import Clients
    from clusterous_provisioner.clusterfile import check_cluster_name

    if keep_shared_volume and delete_shared_volume:
        raise BadInput(
            "--keep-shared-volume", None, "either --keep-shared-volume or --delete-shared-volume, not both"
        )
    name, source = one_cluster(name, cluster)
    profile_name, profile = _profile(ctx, required=False)
    name = name or (profile.current_cluster if profile else None)
    if not name:
        raise BadInput(source, None, "a cluster name (no current cluster: see `clusterous-k8s clusters`)")
    check_cluster_name(name, source)
    region = aws.check_region(
        region or (profile.region if profile else None) or aws.session().region_name or "", "--region"
    )
    request = lifecycle.DownRequest(
        name, keep_shared_volume, delete_shared_volume, config.config_dir() / "clusters" / profile_name / name
    )
    hooks = lifecycle.Hooks(report=_reporter(), yes=yes, confirm=_confirm, ask=_ask)
    receipt = lifecycle.down(Clients(region), request, hooks)
    if profile and profile.current_cluster == name:
        config.set_current_cluster(profile_name, None)
    if not receipt.leftovers:
        shutil.rmtree(config.config_dir() / "clusters" / profile_name / name, ignore_errors=True)
    if as_json:
        output.print_json(receipt.to_json())
    else:
        views.print_receipt(receipt)
    if receipt.leftovers:
        raise Failure(
            f"down {name}: still tagged with the cluster: {', '.join(receipt.leftovers)}",
            "re-run `clusterous-k8s down` to continue",
        )


def _cluster_region(ctx, name, region):
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import aws
    from clusterous_provisioner.clusterfile import check_cluster_name

    profile_name, profile = _profile(ctx, required=False)
    name = name or (profile.current_cluster if profile else None)
    if not name:
        raise BadInput(
            "--cluster", None, "a cluster name (no current cluster: see `clusterous-k8s clusters`)"
        )
    check_cluster_name(name, "--cluster")
    region = aws.check_region(
        region or (profile.region if profile else None) or aws.session().region_name or "", "--region"
    )
    return profile_name, profile, name, region
