"""Waiting for AWS to catch up: one retry mechanism for every client a cluster command makes.

Two kinds of refusal are not errors but AWS being eventually consistent (EC2 API guide,
"Eventual consistency"; docs/provisioning.md says what was confirmed):

- **not yet**: a call naming a resource this command created moments ago answers
  `<Kind>.NotFound` (`InvalidInternetGatewayID.NotFound`, `InvalidGroup.NotFound`,
  `NatGatewayNotFound`, ...) because the id has not reached every part of EC2 yet; and
  RunInstances refuses a new instance profile (`InvalidParameterValue` "... Invalid IAM Instance
  Profile name/ARN") until IAM has propagated it.
- **still in use**: after TerminateInstances and DeleteNatGateway, AWS keeps network interfaces
  and mapped public addresses for minutes; DetachInternetGateway, DeleteSubnet,
  DeleteSecurityGroup, DeleteVpc answer `DependencyViolation` meanwhile, and ReleaseAddress of
  the NAT gateway's address `InvalidIPAddress.InUse` or `AuthFailure`.

Both are retried with exponential backoff (0.2 s doubling), bounded in total time, by a handler
on botocore's `needs-retry` event — the hook botocore's own retry modes use — registered first on
every client `Clients` makes. So the request is resent as it was (the same ClientToken, a new
signature), waiters and paginators are covered too, and no call needs a special case. A
`NotFound` is retried only when the call names an id this command itself created (collected from
the responses of Create*/RunInstances/Allocate*), so "already gone" in `down` and a mistyped id
in `up` still answer at once. Throttling and 5xx stay with botocore's retry mode (`aws.client`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Replaceable by tests (monkeypatch) to let the budget run out without waiting for it.
clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Budget:
    """Backoff from `first` seconds, doubling up to `longest`, for at most `total` seconds."""

    first: float
    longest: float
    total: float


NOT_YET = Budget(first=0.2, longest=5.0, total=60.0)
STILL_IN_USE = Budget(first=0.2, longest=15.0, total=900.0)

# (operation, error code) AWS answers while something the resource depended on drains.
IN_USE = {
    ("DetachInternetGateway", "DependencyViolation"),
    ("DeleteInternetGateway", "DependencyViolation"),
    ("DeleteSubnet", "DependencyViolation"),
    ("DeleteRouteTable", "DependencyViolation"),
    ("DeleteSecurityGroup", "DependencyViolation"),
    ("DeleteVpc", "DependencyViolation"),
    ("ReleaseAddress", "InvalidIPAddress.InUse"),
    ("ReleaseAddress", "AuthFailure"),  # the address of a NAT gateway still being deleted
    ("DeleteVolume", "VolumeInUse"),
    ("DeleteVolume", "IncorrectState"),  # still detaching
    ("DeleteRole", "DeleteConflict"),  # IAM: the instance profile's removal not yet seen
    ("DeleteInstanceProfile", "DeleteConflict"),
}

# Operations whose responses name resources this command created.
_CREATING = re.compile(r"^(Create|Run|Allocate)")
_EC2_ID = re.compile(r"^[a-z]+(-[a-z]+)?-[0-9a-f]{8,17}$")


def _ids(value, found: set[str]) -> None:
    if isinstance(value, str):
        if _EC2_ID.match(value):
            found.add(value)
    elif isinstance(value, dict):
        for item in value.values():
            _ids(item, found)
    elif isinstance(value, list):
        for item in value:
            _ids(item, found)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def kind_of(operation: str, code: str, message: str, names_new_id: bool) -> Budget | None:
    """The budget to retry this refusal with, or None if it is a real answer."""
    if code.endswith("NotFound") and names_new_id:
        return NOT_YET
    if code == "InvalidParameterValue" and "iam instance profile" in message.lower():
        return NOT_YET
    if (operation, code) in IN_USE:
        return STILL_IN_USE
    return None


@dataclass
class Patience:
    """Retries the refusals above for the clients it is registered on; `report` shows the waits."""

    report: Callable[[str], None] = lambda message: None
    created: set[str] = field(default_factory=set)
    waits: list[tuple[str, str]] = field(default_factory=list)  # (operation, code) retried, in order

    def register(self, client) -> None:
        events = client.meta.events
        service = client.meta.service_model.service_id.hyphenize()
        events.register(f"before-parameter-build.{service}", self._note_request)
        events.register(f"after-call.{service}", self._learn)
        events.register_first(f"needs-retry.{service}", self._needs_retry)

    def _note_request(self, params, context, **kwargs) -> None:
        context["clusterous_params"] = params
        context["clusterous_new_id"] = bool(self.created) and any(s in self.created for s in _strings(params))

    def _learn(self, parsed, model, **kwargs) -> None:
        if _CREATING.match(model.name) and not (parsed or {}).get("Error"):
            _ids(parsed, self.created)

    def _needs_retry(self, response, operation, request_dict, caught_exception=None, **kwargs):
        if caught_exception is not None or response is None:
            return None
        error = (response[1] or {}).get("Error") or {}
        code = error.get("Code")
        if not code:
            return None
        context = request_dict.get("context", {})
        budget = kind_of(
            operation.name, code, error.get("Message", ""), context.get("clusterous_new_id", False)
        )
        if budget is None:
            return None
        now = clock()
        state = context.setdefault("clusterous_wait", {"since": now, "delay": budget.first, "said": None})
        delay = state["delay"]
        if now - state["since"] + delay > budget.total:
            return None  # out of patience: the error reaches the caller
        state["delay"] = min(delay * 2, budget.longest)
        self.waits.append((operation.name, code))
        self._progress(operation.name, code, error.get("Message", ""), context, state, now, budget)
        return delay

    def _progress(self, operation, code, message, context, state, now, budget) -> None:
        waited = now - state["since"]
        if budget is NOT_YET and waited < 2:
            return  # the usual case: a fraction of a second, not worth a line
        if state["said"] is not None and now - state["said"] < 10:
            return
        state["said"] = now
        params = context.get("clusterous_params") or {}
        subject = next((s for s in _strings(params) if _EC2_ID.match(s)), "")
        what = f"{operation} {subject}".strip()
        if budget is NOT_YET:
            self.report(
                f"{what}: AWS has not propagated it yet ({code}); retrying "
                f"({waited:.0f} s of at most {budget.total:.0f} s)"
            )
        else:
            self.report(
                f"{what}: AWS still holds what it depends on ({code}: {message}); waiting "
                f"({waited:.0f} s of at most {budget.total / 60:.0f} min)"
            )
