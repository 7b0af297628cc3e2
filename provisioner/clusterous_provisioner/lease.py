"""One run at a time per cluster: a lease held in SSM Parameter Store by `up`, `down` and `scale`.

Two `up` of the same cluster started together would each find nothing and each create a VPC, a
NAT gateway and the instances. So every command that changes a cluster first creates the SSM
parameter /clusterous/<cluster>/lease with Overwrite=False — SSM answers ParameterAlreadyExists to
all but one caller (PutParameter, SSM API reference) — and deletes it when it ends, also on
failure. The value says who holds it (the AWS identity, host, pid, command) and until when; a
holder renews it while it works, so a lease whose time has passed belongs to a run that died.

A second run of the same AWS identity waits a little, then exits 1 naming the holder; a lease of
another identity of the account means the name is taken (bad input, exit 2). An expired lease, or
one whose holder is a dead process on this host, is taken over: the taker first creates
/clusterous/<cluster>/lease-takeover-<the stale lease's token> with Overwrite=False, so of two
runs taking over the same stale lease only one succeeds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from clusterous_core.errors import BadInput, Failure
from clusterous_core.polling import wait_until

LEASE_SECONDS = 600.0  # a holder that stops renewing loses the lease after this
RENEW_SECONDS = 120.0
WAIT_SECONDS = 10.0  # how long a second run waits for the first before it gives up
POLL_SECONDS = 1.0  # the longest pause between two looks at a held lease

Report = Callable[[str], None]


def parameter(cluster: str) -> str:
    return f"/clusterous/{cluster}/lease"


def takeover_marker(cluster: str, stale_token: str) -> str:
    return f"/clusterous/{cluster}/lease-takeover-{stale_token}"


@dataclass(frozen=True)
class Holder:
    owner: str  # the AWS identity (STS caller ARN)
    host: str
    pid: int
    command: str
    expires: float  # epoch seconds
    token: str

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires, UTC).strftime("%H:%M:%S UTC")
        return f"`{self.command}` of {self.owner} on {self.host} (pid {self.pid}), until {until}"

    def stale(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists (or by this very
        process: a process runs one command at a time, so it is an earlier command's that died)."""
        if now >= self.expires:
            return True
        if self.host == socket.gethostname() and self.pid == os.getpid():
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


def _code(exc) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _read(ssm, name: str) -> Holder | None:
    from botocore.exceptions import ClientError

    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if _code(exc) == "ParameterNotFound":
            return None
        raise
    try:
        return Holder(**json.loads(value))
    except (ValueError, TypeError):  # not ours to read: treat it as expired
        return Holder(owner="?", host="?", pid=0, command="?", expires=0.0, token=value[:32])


def _put(ssm, name: str, value: str, overwrite: bool) -> bool:
    """Write the parameter; False if Overwrite=False met an existing one."""
    from botocore.exceptions import ClientError

    try:
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=overwrite)
        return True
    except ClientError as exc:
        if _code(exc) == "ParameterAlreadyExists":
            return False
        raise


def _delete(ssm, name: str) -> None:
    from botocore.exceptions import ClientError

    try:
        ssm.delete_parameter(Name=name)
    except ClientError as exc:
        if _code(exc) != "ParameterNotFound":
            raise


@dataclass
class Lease:
    """A held lease; `release` ends it (only if still ours), a thread renews it meanwhile."""

    ssm: object
    cluster: str
    holder: Holder
    marker: str | None = None  # the takeover marker we created, removed at release
    _stop: threading.Event | None = None

    def _value(self) -> str:
        return json.dumps(asdict(self.holder), sort_keys=True)

    def renew(self) -> bool:
        current = _read(self.ssm, parameter(self.cluster))
        if current is None or current.token != self.holder.token:
            return False
        self.holder = Holder(**{**asdict(self.holder), "expires": time.time() + LEASE_SECONDS})
        _put(self.ssm, parameter(self.cluster), self._value(), overwrite=True)
        return True

    def start_renewing(self, report: Report) -> None:
        stop = self._stop = threading.Event()

        def loop() -> None:
            while not stop.wait(RENEW_SECONDS):
                try:
                    if not self.renew():
                        report(f"warning: the lease of cluster {self.cluster} was taken by another run")
                        return
                except Exception as exc:  # noqa: BLE001 - the next renewal may succeed
                    report(f"warning: could not renew the lease of cluster {self.cluster} ({exc})")

        threading.Thread(target=loop, name=f"lease-{self.cluster}", daemon=True).start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        current = _read(self.ssm, parameter(self.cluster))
        if current is not None and current.token == self.holder.token:
            _delete(self.ssm, parameter(self.cluster))
        if self.marker:
            _delete(self.ssm, self.marker)


def acquire(
    clients, cluster: str, command: str, report: Report, wait: float | None = None, source: str = "--cluster"
) -> Lease:
    """Take the cluster's lease, waiting up to `wait` seconds for a live holder of our identity;
    `source` is where the user gave the cluster's name (for the bad-input message)."""
    ssm = clients.ssm
    me = Holder(
        owner=clients.sts.get_caller_identity()["Arn"],
        host=socket.gethostname(),
        pid=os.getpid(),
        command=command,
        expires=time.time() + LEASE_SECONDS,
        token=uuid.uuid4().hex,
    )
    lease = Lease(ssm=ssm, cluster=cluster, holder=me)
    last: list[Holder] = []  # the live holder we wait for, for the message when time runs out

    def taken() -> bool:
        """One attempt: True once the lease is ours; False to look again; BadInput when another
        identity holds it (waiting would not help)."""
        lease.holder = Holder(**{**asdict(me), "expires": time.time() + LEASE_SECONDS})
        if _put(ssm, parameter(cluster), lease._value(), overwrite=False):
            return True
        holder = _read(ssm, parameter(cluster))
        if holder is None:
            return False  # released between our put and our read
        if holder.stale(time.time()):
            if _take_over(ssm, cluster, holder, lease):
                report(f"took over the expired lease of cluster {cluster} ({holder.describe()})")
                return True
            return False
        if holder.owner != me.owner:
            raise BadInput(
                source,
                None,
                f"a cluster nobody else is changing: {cluster} is leased to {holder.describe()}",
                cluster,
            )
        if not last:
            report(f"waiting for {holder.describe()} to finish with cluster {cluster}")
        last[:] = [holder]
        return False

    # Each look is an SSM put and get: start at a quarter second, back off to POLL_SECONDS.
    if wait_until(taken, WAIT_SECONDS if wait is None else wait, first=0.25, most=POLL_SECONDS):
        return lease
    raise Failure(
        f"cluster {cluster} is busy: {last[-1].describe() if last else 'another run'} is changing it",
        "wait for that run to finish and try again (a lease whose holder died expires on its own)",
    )


def _take_over(ssm, cluster: str, stale: Holder, lease: Lease) -> bool:
    """Replace a stale lease; of several runs trying at once, the one that creates the marker wins."""
    marker = takeover_marker(cluster, stale.token)
    if not _put(ssm, marker, lease.holder.token, overwrite=False):
        return False
    current = _read(ssm, parameter(cluster))
    if current is None or current.token != stale.token:
        _delete(ssm, marker)  # the stale lease went meanwhile (released, or taken): start again
        return False
    _put(ssm, parameter(cluster), lease._value(), overwrite=True)
    lease.marker = marker
    return True


@contextmanager
def held(
    clients, cluster: str, command: str, report: Report, hold: bool = True, source: str = "--cluster"
) -> Iterator[Lease | None]:
    """The cluster's lease for the duration of a command that changes the cluster (`hold`: False
    for one that does not, a dry run), released at the end, also on failure."""
    if not hold:
        yield None
        return
    from clusterous_provisioner import aws

    with aws.aws_errors(f"{command} {cluster}: taking the cluster's lease", "check your AWS credentials"):
        taken = acquire(clients, cluster, command, report, source=source)
    taken.start_renewing(report)
    try:
        yield taken
    finally:
        try:
            taken.release()
        except Exception as exc:  # noqa: BLE001 - the work is done; the lease expires on its own
            report(
                f"warning: could not release the lease of cluster {cluster} ({exc}); it expires on its own"
            )
