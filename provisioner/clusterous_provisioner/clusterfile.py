"""The cluster file (Clusterous format plus extensions) and command-line overrides, as one typed spec.

Clusterous users keep their files: `cluster_name`, `controller_instance_type`, `shared_volume_size`
or `shared_volume_id`, `central_logging_level`, `environment_file` and `parameters`
(`master_instance_type`, `worker_instance_type`, `worker_count`). Extensions: `region`, `spot`,
`ssh_cidr`, `k3s_version`, `os`, `ami`, `node_groups` (a custom layout) and `budget` (USD,
spending.py). Flags win over the file, the file over the profile, the profile over the defaults.
Every mistake is a BadInput naming the file (or flag), the field and what is expected.
Elastic groups' bounds are checked in bounds.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clusterous_core.errors import BadInput
from clusterous_core.names import (
    CLUSTER_NAME,
    CLUSTER_NAME_EXPECTED,
    DEFAULT_OS,
    GROUP_NAME,
    GROUP_NAME_RULE,
    INSTANCE_TYPE,
    SUPPORTED_OS,
)
from clusterous_core.validation import problem
from clusterous_core.yamlfile import read_mapping
from clusterous_provisioner.bootstrap import DEFAULT_K3S_VERSION  # the renderer's pinned default
from clusterous_provisioner.bounds import MAX_GROUP_SIZE, check_bounds, no_controller_bounds, parse_workers
from clusterous_provisioner.spending import BUDGET_EXPECTED

K3S_VERSION = re.compile(r"^v1\.\d+\.\d+\+k3s\d+$")
VOLUME_ID = re.compile(r"^vol-[0-9a-f]{8,17}$")
AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")

DEFAULT_CONTROLLER_TYPE = "t3.medium"
DEFAULT_MASTER_TYPE = "t3.large"
DEFAULT_WORKER_TYPE = "t3.large"
DEFAULT_WORKERS = 2
DEFAULT_VOLUME_GIB = 20
MAX_VOLUME_GIB = 16384
SpotFallback = Literal["none", "on-demand"]  # when EC2 has no spot capacity (docs/elastic.md)


def _non_negative_integer(value: Any) -> Any:
    """pydantic would turn 2.0 or "2" into 2; a size in the cluster file must be written as one."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("must be a non-negative integer")
    return value


def check_cluster_name(name: str, source: str = "--cluster", field: str | None = None) -> str:
    if not isinstance(name, str) or not CLUSTER_NAME.match(name):
        raise BadInput(source, field, CLUSTER_NAME_EXPECTED, name)
    return name


class GroupFile(BaseModel):
    """One node group of a custom layout, as written in the file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    instance_type: str = Field(alias="type")
    count: int = Field(ge=0, le=MAX_GROUP_SIZE)
    spot: bool | None = None
    spot_fallback: SpotFallback | None = None
    min: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)
    max: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)

    @field_validator("count", "min", "max", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must be a non-negative integer")
        return _non_negative_integer(value)

    @field_validator("instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not INSTANCE_TYPE.match(value):
            raise ValueError("must be an EC2 instance type such as t3.large")
        return value


class Parameters(BaseModel):
    """The default layout's $variables (Clusterous `parameters:`); other keys are kept for custom layouts."""

    model_config = ConfigDict(extra="allow")

    master_instance_type: str = DEFAULT_MASTER_TYPE
    worker_instance_type: str = DEFAULT_WORKER_TYPE
    worker_count: int = Field(default=DEFAULT_WORKERS, ge=0, le=MAX_GROUP_SIZE)
    worker_min: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)
    worker_max: int | None = Field(default=None, ge=0, le=MAX_GROUP_SIZE)

    @field_validator("worker_count", "worker_min", "worker_max", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must be a non-negative integer")
        return _non_negative_integer(value)

    @field_validator("master_instance_type", "worker_instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not INSTANCE_TYPE.match(value):
            raise ValueError("must be an EC2 instance type such as t3.large")
        return value


class ClusterFile(BaseModel):
    """The file as written: Clusterous keys plus our extensions, nothing else."""

    model_config = ConfigDict(extra="forbid")

    cluster_name: str | None = None
    controller_instance_type: str = DEFAULT_CONTROLLER_TYPE
    shared_volume_size: int | None = Field(default=None, ge=1, le=MAX_VOLUME_GIB)
    shared_volume_id: str | None = None
    central_logging_level: int = Field(default=0, ge=0, le=2)
    environment_file: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    region: str | None = None
    spot: bool = False
    spot_fallback: SpotFallback = "none"
    ssh_cidr: str | None = None
    k3s_version: str = DEFAULT_K3S_VERSION
    os: str = DEFAULT_OS
    ami: str | None = None
    node_groups: dict[str, GroupFile] | None = None
    budget: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # USD (spending.py)

    @field_validator("shared_volume_size", "central_logging_level", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("must be an integer")
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _usd(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(BUDGET_EXPECTED)
        return value

    @field_validator("cluster_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not CLUSTER_NAME.match(value):
            raise ValueError(CLUSTER_NAME_EXPECTED)
        return value

    @field_validator("controller_instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not INSTANCE_TYPE.match(value):
            raise ValueError("must be an EC2 instance type such as t3.medium")
        return value

    @field_validator("os")
    @classmethod
    def _os(cls, value: str) -> str:
        if value not in SUPPORTED_OS:
            raise ValueError(f"one of {', '.join(SUPPORTED_OS)}")
        return value

    @field_validator("shared_volume_id")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        if value is not None and not VOLUME_ID.match(value):
            raise ValueError("must be an EBS volume id such as vol-0123456789abcdef0")
        return value

    @field_validator("ami")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        if value is not None and not AMI_ID.match(value):
            raise ValueError("must be an AMI id such as ami-0123456789abcdef0")
        return value

    @field_validator("k3s_version")
    @classmethod
    def _k3s(cls, value: str) -> str:
        if not K3S_VERSION.match(value):
            raise ValueError("must be a k3s release name such as v1.31.4+k3s1")
        return value

    @field_validator("ssh_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        return None if value is None else check_cidr(value)

    @field_validator("node_groups")
    @classmethod
    def _groups(cls, value: dict | None) -> dict | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one group")
            for name in value:
                if not GROUP_NAME.match(name):
                    raise ValueError(f"node group names of {GROUP_NAME_RULE} (not {name!r})")
        return value

    @model_validator(mode="after")
    def _one_volume(self) -> ClusterFile:
        if self.shared_volume_size is not None and self.shared_volume_id is not None:
            raise ValueError("either shared_volume_size or shared_volume_id, not both")
        return self


def check_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("must be an IPv4 address range such as 203.0.113.7/32") from None
    if net.version != 4:
        raise ValueError("must be an IPv4 address range such as 203.0.113.7/32")
    return str(net)


class NodeGroup(BaseModel):
    """A resolved node group: what EC2 is asked to run."""

    model_config = ConfigDict(frozen=True)

    name: str
    instance_type: str
    count: int
    spot: bool = False
    spot_fallback: str | None = None  # "on-demand": the autoscaler's launches when spot has no capacity
    min: int | None = None  # both set, or neither: the group is elastic (docs/elastic.md)
    max: int | None = None

    @property
    def elastic(self) -> bool:
        return self.max is not None


class ClusterSpec(BaseModel):
    """Everything `up` needs to know about the cluster, after file, flags and profile are merged."""

    model_config = ConfigDict(frozen=True)

    name: str
    region: str
    controller_type: str
    groups: tuple[NodeGroup, ...]
    shared_volume_size: int | None
    shared_volume_id: str | None
    logging_level: int
    environment_file: str | None
    ssh_cidr: str | None
    k3s_version: str
    os: str
    ami: str | None
    source: str
    budget: float | None = None  # USD the cluster may spend (docs/elastic.md, "Budget")

    def group(self, name: str) -> NodeGroup | None:
        return next((g for g in self.groups if g.name == name), None)

    @property
    def instance_types(self) -> list[str]:
        return sorted({self.controller_type, *(g.instance_type for g in self.groups)})


# Flags as typed on the command line → the file field they override (for messages).
FLAG_FIELDS = {
    "name": ("--cluster", "cluster_name"),
    "workers": ("--workers", "parameters.worker_count"),
    "master_type": ("--master-type", "parameters.master_instance_type"),
    "worker_type": ("--worker-type", "parameters.worker_instance_type"),
    "controller_type": ("--controller-type", "controller_instance_type"),
    "shared_volume_size": ("--shared-volume-size", "shared_volume_size"),
    "shared_volume_id": ("--shared-volume-id", "shared_volume_id"),
    "logging_level": ("--logging-level", "central_logging_level"),
    "spot": ("--spot", "spot"),
    "region": ("--region", "region"),
    "ssh_cidr": ("--ssh-cidr", "ssh_cidr"),
    "os": ("--os", "os"),
    "ami": ("--ami", "ami"),
    "k3s_version": ("--k3s-version", "k3s_version"),
    "budget": ("--budget", "budget"),
}


def read_cluster_file(path: Path) -> dict:
    """The file's mapping; missing files and broken YAML are bad input naming the file."""
    return read_mapping(path, "cluster file")


def _validation_error(source: str, errors: list, flagged: dict[str, str]) -> BadInput:
    found = problem(errors)
    message, field, bounds = found.expected, found.field, found.kind.startswith(("greater", "less"))
    if field == "shared_volume_size" and bounds:
        message = f"an integer number of GiB from 1 to {MAX_VOLUME_GIB}"
    elif field == "central_logging_level" and bounds:
        message = "0 (off), 1 (application logs) or 2 (application and system logs)"
    elif field == "budget":
        message = BUDGET_EXPECTED
    elif field and field.endswith(("count", "min", "max")) and bounds:
        message = f"a non-negative integer (at most {MAX_GROUP_SIZE})"
    if field in flagged:  # the value came from a flag: name the flag, not the file
        return BadInput(flagged[field], None, message, found.got)
    return BadInput(source, field, message, found.got)


def load_spec(
    path: Path | None,
    overrides: dict[str, Any] | None = None,
    profile_region: str | None = None,
    profile_ssh_cidr: str | None = None,
    default_name: str | None = None,
    environment_groups: Any = None,
) -> ClusterSpec:
    """Merge file, flags and profile into a ClusterSpec; raise BadInput on the first mistake.

    `environment_groups(env_path, parameters)`, when given, reads the node groups of the
    environment file the cluster file names (its Clusterous `cluster:` section, or None);
    they are the layout unless the cluster file has its own `node_groups`.
    """
    from clusterous_provisioner.aws import check_region

    source = str(path) if path else "cluster settings"
    data = read_cluster_file(path) if path else {}
    no_controller_bounds(source, data)
    merged, flagged, flag_bounds = _merge_flags(source, data, overrides)
    try:
        model = ClusterFile.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(source, exc.errors(), flagged) from None

    name = model.cluster_name or default_name
    if not name:
        raise BadInput(source, "cluster_name", "a cluster name (in the file or with --cluster)")
    region = model.region or profile_region
    if not region:
        raise BadInput("--region", None, "an AWS region (flag, cluster file or profile)")
    check_region(region, flagged.get("region") or (f"{source}: region" if model.region else "profile region"))

    if model.node_groups is None and model.environment_file and environment_groups is not None:
        env_path = (Path(path).parent if path else Path.cwd()) / model.environment_file
        found = environment_groups(env_path, model.parameters.model_dump())
        if found:
            model.node_groups = {g: GroupFile.model_validate(v) for g, v in found.items()}
    groups = _layout(model, source, flagged, flag_bounds)

    ssh_cidr = model.ssh_cidr
    if ssh_cidr is None and profile_ssh_cidr:
        try:
            ssh_cidr = check_cidr(profile_ssh_cidr)
        except ValueError as exc:
            raise BadInput(
                "profile", "ssh_cidr", str(exc).removeprefix("must be "), profile_ssh_cidr
            ) from None

    volume_size = model.shared_volume_size
    if volume_size is None and model.shared_volume_id is None:
        volume_size = DEFAULT_VOLUME_GIB
    return ClusterSpec(
        name=name,
        region=region,
        controller_type=model.controller_instance_type,
        groups=tuple(groups),
        shared_volume_size=volume_size,
        shared_volume_id=model.shared_volume_id,
        logging_level=model.central_logging_level,
        environment_file=model.environment_file,
        ssh_cidr=ssh_cidr,
        k3s_version=model.k3s_version,
        os=model.os,
        ami=model.ami,
        source=source,
        budget=model.budget,
    )


def _merge_flags(
    source: str, data: dict, overrides: dict[str, Any] | None
) -> tuple[dict, dict[str, str], tuple[int, int] | None]:
    """The file's mapping with the flags written into it, which field each flag set, and
    `--workers MIN..MAX` as bounds (the start is MIN)."""
    merged = _deep_copy(data)
    flagged: dict[str, str] = {}
    overrides = dict(overrides or {})
    flag_bounds = parse_workers(overrides.get("workers"))
    if flag_bounds is not None:  # --workers MIN..MAX: start at MIN
        overrides["workers"] = flag_bounds[0]
    elif isinstance(overrides.get("workers"), str):
        overrides["workers"] = int(overrides["workers"])
    for key, value in overrides.items():
        if value is None or key not in FLAG_FIELDS:
            continue
        flag, field = FLAG_FIELDS[key]
        if key == "spot" and value is False:
            continue
        flagged[field] = flag
        if "." in field:
            outer, inner = field.split(".")
            section = merged.setdefault(outer, {})
            if not isinstance(section, dict):
                raise BadInput(source, outer, "a mapping of parameters", section)
            section[inner] = value
        else:
            merged[field] = value
    if "shared_volume_id" in flagged and "shared_volume_size" not in flagged:
        merged.pop("shared_volume_size", None)  # the flag replaces the file's choice of volume
    if "shared_volume_size" in flagged and "shared_volume_id" not in flagged:
        merged.pop("shared_volume_id", None)
    return merged, flagged, flag_bounds


def _layout(
    model: ClusterFile, source: str, flagged: dict[str, str], flag_bounds: tuple[int, int] | None
) -> list[NodeGroup]:
    """The node groups: the file's (or environment file's) `node_groups` with the flags that
    override the worker and master groups, or the default master + worker layout."""
    if model.node_groups is not None:
        worker_flags = "parameters.worker_count" in flagged or "parameters.worker_instance_type" in flagged
        if worker_flags and "worker" not in model.node_groups:
            raise BadInput(
                flagged.get("parameters.worker_count") or "--worker-type",
                None,
                f"a layout with a 'worker' group ({source} defines: {', '.join(model.node_groups)})",
            )
        groups = []
        for gname, g in model.node_groups.items():
            itype, count = g.instance_type, g.count
            where = f"node_groups.{gname}."
            low, high = g.min, g.max
            if gname == "worker" and "parameters.worker_count" in flagged:
                count = model.parameters.worker_count
            if gname == "worker" and flag_bounds is not None:
                low, high, where = flag_bounds[0], flag_bounds[1], "--workers"
            if gname == "worker" and "parameters.worker_instance_type" in flagged:
                itype = model.parameters.worker_instance_type
            if gname == "master" and "parameters.master_instance_type" in flagged:
                itype = model.parameters.master_instance_type
            low, high = check_bounds(source, where, count, low, high)
            market = _market(source, g.spot, g.spot_fallback, f"node_groups.{gname}.", model)
            groups.append(
                NodeGroup(name=gname, instance_type=itype, count=count, min=low, max=high, **market)
            )
    else:
        p = model.parameters
        low, high, where = p.worker_min, p.worker_max, "parameters.worker_"
        if flag_bounds is not None:
            low, high, where = flag_bounds[0], flag_bounds[1], "--workers"
        low, high = check_bounds(source, where, p.worker_count, low, high)
        market = _market(source, None, None, "", model)
        groups = [
            NodeGroup(name="master", instance_type=p.master_instance_type, count=1, **market),
            NodeGroup(
                name="worker",
                instance_type=p.worker_instance_type,
                count=p.worker_count,
                min=low,
                max=high,
                **market,
            ),
        ]
    return groups


def _market(source: str, spot: bool | None, fallback: str | None, where: str, model: ClusterFile) -> dict:
    """A group's `spot` and `spot_fallback` (its own, else the file's); a fallback where the
    nodes are on-demand already is bad input."""
    spot = model.spot if spot is None else spot
    chosen = fallback if fallback is not None else model.spot_fallback
    if chosen == "on-demand" and not spot:
        if fallback is not None:
            raise BadInput(source, f"{where}spot_fallback", "a spot group (spot: true) to fall back from")
        if model.node_groups is None:
            raise BadInput(
                source, "spot_fallback", "spot: true or --spot with it (on-demand needs no fallback)"
            )
        return {"spot": False}  # the file's default, for its spot groups; this one is on-demand
    return {"spot": spot, "spot_fallback": "on-demand" if chosen == "on-demand" else None}


def _deep_copy(data: dict) -> dict:
    import copy

    return copy.deepcopy(data)
