"""What kube-apiserver checks before it stores an object, and who may ask.

The emulator (tests/harness/k8s.py) calls `admit` on every create and update and `authorize`
on every request; both raise the `api_error` a real API server would answer with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kmock
    from kmock._internal import rendering

    from tests.harness.k8s import ApiEmulator


def admit(
    emulator: ApiEmulator,
    resource: kmock.resource,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    subresource: str | None = None,
) -> dict[str, Any]:
    """The object as it will be stored (defaulted, pruned), or raise 422 Invalid."""
    return obj


def authorize(emulator: ApiEmulator, request: rendering.Request) -> None:
    """Raise 403 Forbidden when the request's user may not do what it asks."""
