"""A code bundle's lock as the tests check it (the operator's in test_pins.py, the autoscaler's in
test_code_bundle.py): plain name==version pins with sha256 hashes, closed under what the pinned
distributions require on the pinned Python image."""

from __future__ import annotations

import importlib.metadata
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# the pinned Python image's CPython 3.12 on Linux, for evaluating requirement markers
MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.11", "sys_platform": "linux",
    "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython", "extra": "",
    "platform_python_implementation": "CPython", "platform_machine": "x86_64",
}  # fmt: skip


def locked_versions(bundle) -> dict[str, str]:
    """Canonical distribution name -> the version the lock pins."""
    pins = {}
    for name, (version, _) in bundle.read_lock().items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not name==version: {name}=={version}"
        pins[canonicalize_name(name)] = version
    return pins


def assert_hashed_and_closed(bundle) -> None:
    """Every pin carries sha256 hashes, and what each locked distribution requires (as installed
    here, on the image's markers) is locked too, in a version the requirement accepts."""
    for name, (_, hashes) in bundle.read_lock().items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    pins = locked_versions(bundle)
    for name, version in pins.items():
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(MARKERS):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pins, f"{name} {version} needs {requirement}, which the lock lacks"
            assert requirement.specifier.contains(pins[dependency], prereleases=True), (name, requirement)
