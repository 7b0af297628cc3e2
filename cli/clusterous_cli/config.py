"""Profiles and local state under $XDG_CONFIG_HOME/clusterous-k8s.

Layout (all files 0600, directories 0700):
    config.yml               current_profile
    profiles/<name>.yml      region, key pair, bucket and its region, current_cluster
    keys/<name>.pem          private keys we created
    clusters/<profile>/<cluster>/   per-cluster state (keys, known hosts, tunnels)

AWS credentials are never stored here: boto3's own chain supplies them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from clusterous_core.errors import BadInput
from clusterous_core.validation import bad_input
from clusterous_core.yamlfile import read_mapping

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_PROFILE = "default"


class Profile(NamedTuple):
    """One account/region setting the user picked with `setup`; a change is `_replace`d and saved.

    NamedTuples, not pydantic models nor dataclasses: every command reads the profile before it
    starts, and a small `put` would spend more time importing pydantic than rsync takes (and a
    sixth of its start-up importing dataclasses); `_from_file` checks these few string fields in
    pydantic's words (clusterous_core.validation) all the same."""

    region: str
    bucket: str  # S3 bucket for the image registry
    bucket_region: str | None = None  # the bucket's region (GetBucketLocation); None: recorded before it was
    key_name: str | None = None  # EC2 key pair; None: one per cluster
    key_file: str | None = None  # private key of key_name
    ssh_cidr: str | None = None
    jump_host: str | None = None
    current_cluster: str | None = None


class Settings(NamedTuple):
    current_profile: str | None = None


MIN_LENGTH = {"region": 1, "bucket": 3}  # of Profile's fields


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "clusterous-k8s"


def cache_dir() -> Path:
    """What may be thrown away and fetched again (prices, the region list): $XDG_CACHE_HOME."""
    from clusterous_provisioner.aws import cache_dir

    return cache_dir()


def settings_path() -> Path:
    return config_dir() / "config.yml"


def profile_path(name: str) -> Path:
    return config_dir() / "profiles" / f"{name}.yml"


def check_profile_name(name: str, source: str = "--profile") -> str:
    if not PROFILE_NAME.match(name):
        raise BadInput(source, None, "a profile name of letters, digits, '.', '_' or '-' (max 63)", name)
    return name


def read_yaml(path: Path) -> dict:
    """A YAML mapping from disk; bad YAML or a non-mapping is the user's input error."""
    return read_mapping(path, "configuration file")


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 so a crash never leaves half a file.

    The temporary file has a unique name (concurrent writers never share one), and a symlink
    stays a symlink: its target is what gets replaced (a ~/.kube/config kept in a dotfiles repo)."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile  # not at the top: most commands only read

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An advisory lock (flock) for a read-modify-write of `path`, held on a side file: the file
    itself is replaced by every write, and `<file>.lock` is client-go's own lock protocol."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.clusterous-lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _from_file(cls, data: dict, path: Path):
    """`cls` from a file's mapping. Every field is a string (None allowed where it has a default),
    the required ones present and long enough, no unknown key: the first problem is bad input
    worded as for the pydantic-checked files (validation.bad_input), in pydantic's order."""
    if problem := _first_problem(cls, data):
        raise bad_input(str(path), [problem])
    return cls(**data)


def _first_problem(cls, data: dict) -> dict | None:
    """The first problem as pydantic's error dict (what validation.bad_input words)."""
    for name in cls._fields:
        required, min_length = name not in cls._field_defaults, MIN_LENGTH.get(name, 0)
        if name not in data or (data[name] is None and not required):
            if required:
                return {"type": "missing", "loc": (name,), "input": data}
            continue
        value = data[name]
        if not isinstance(value, str):
            return {"type": "string_type", "loc": (name,), "input": value}
        elif len(value) < min_length:
            ctx = {"min_length": min_length}
            return {"type": "string_too_short", "loc": (name,), "input": value, "ctx": ctx}
    for key, value in data.items():
        if key not in cls._fields:
            return {"type": "extra_forbidden", "loc": (key,), "input": value}
    return None


def _dump(record: Profile | Settings) -> str:
    """The YAML of a profile or the settings: the fields that are set, in order."""
    import yaml

    data = {key: value for key, value in record._asdict().items() if value is not None}
    return yaml.safe_dump(data, sort_keys=False)


def load_settings() -> Settings:
    path = settings_path()
    if not path.exists():
        return Settings()
    return _from_file(Settings, read_yaml(path), path)


def save_settings(settings: Settings) -> None:
    write_private(settings_path(), _dump(settings))


def profile_names() -> list[str]:
    folder = config_dir() / "profiles"
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


def selected_profile_name(explicit: str | None = None) -> str:
    """--profile, then $CLUSTEROUS_K8S_PROFILE, then config.yml, then 'default'."""
    name = explicit or os.environ.get("CLUSTEROUS_K8S_PROFILE") or load_settings().current_profile
    return check_profile_name(name or DEFAULT_PROFILE)


def load_profile(name: str) -> Profile:
    check_profile_name(name)
    path = profile_path(name)
    if not path.exists():
        known = ", ".join(profile_names()) or "none yet"
        raise BadInput(
            str(path),
            None,
            f"an existing profile '{name}' (known: {known}); create it with `clusterous-k8s setup`",
        )
    return _from_file(Profile, read_yaml(path), path)


def save_profile(name: str, profile: Profile) -> Path:
    check_profile_name(name)
    path = profile_path(name)
    write_private(path, _dump(profile))
    return path


def remove_profile(name: str) -> None:
    load_profile(name)  # refuses unknown names with the usual message
    profile_path(name).unlink()
    with locked(settings_path()):
        settings = load_settings()
        if settings.current_profile == name:
            save_settings(settings._replace(current_profile=None))


def use_profile(name: str) -> None:
    load_profile(name)
    with locked(settings_path()):
        save_settings(load_settings()._replace(current_profile=name))


def set_current_cluster(profile_name: str, cluster: str | None) -> None:
    """The record that `workon` changes: which cluster commands act on by default."""
    with locked(profile_path(check_profile_name(profile_name))):
        save_profile(profile_name, load_profile(profile_name)._replace(current_cluster=cluster))


def cluster_dir(profile_name: str, cluster: str) -> Path:
    path = config_dir() / "clusters" / profile_name / cluster
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def keys_dir() -> Path:
    path = config_dir() / "keys"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
