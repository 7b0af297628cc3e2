"""What every create step of `up` shares: the waiter budget, the inputs beyond the spec, the
record of what was created, and AWS's error code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

WAIT = {"Delay": 5, "MaxAttempts": 120}  # at most ten minutes per waiter

Report = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """What `up` needs beyond the spec: the profile's bucket and key pair, and where local keys go."""

    bucket: str
    ssh_cidr: str
    state_dir: Path
    key_name: str | None = None  # the profile's key pair; None: one per cluster
    bucket_region: str | None = None  # the bucket's region as setup recorded it; None: the cluster's


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    controller_id: str | None = None
    public_ip: str | None = None
    instance_ids: dict[str, list[str]] = field(default_factory=dict)
    key_file: Path | None = None


def error_code(exc) -> str:
    return exc.response.get("Error", {}).get("Code", "")
