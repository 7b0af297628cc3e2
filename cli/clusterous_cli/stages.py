"""The stage engine of `up`'s wait: stages in order, each polled until done or its deadline.

A stage's poll returns a `Check` (done or not, a one-line summary, what is stuck); the engine
shows it on a progress line and, when time runs out, fails naming what is stuck and saying to
re-run `up`. What each stage looks at is readiness.py's business; the engine is tested alone
with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clusterous_core.errors import BadInput, Failure

RERUN = (
    "re-run `clusterous-k8s up` to keep waiting (it creates nothing that exists); "
    "`clusterous-k8s status` lists the instances"
)
# Seconds each stage may take unless `up --timeout` says otherwise. Console output reaches EC2
# minutes after boot; cloud-init installs packages and k3s; images are pulled from the internet.
DEFAULT_TIMEOUTS = {
    "host key": 600.0,
    "ssh": 300.0,
    "cloud-init": 900.0,
    "bootstrap": 900.0,
    "ca hash": 300.0,
    "api": 300.0,
    "setup": 300.0,
    "nodes": 600.0,
    "add-ons": 600.0,
}


@dataclass(frozen=True)
class Check:
    """One look at a stage: done or not, a one-line summary, and what is stuck (for the failure)."""

    done: bool
    summary: str
    stuck: tuple[str, ...] = ()


@dataclass
class Stage:
    key: str  # a key of DEFAULT_TIMEOUTS
    title: str  # what the progress line says is awaited
    poll: Callable[[], Check]
    explain: Callable[[Check], list[str]] | None = None  # more detail, asked only when timing out


def poll_interval(timeout: float) -> float:
    """Short stages are polled often, long ones at most every 5 s."""
    return min(5.0, max(0.2, timeout / 50))


class StageTimeout(Failure):
    def __init__(self, stage: Stage, timeout: float, check: Check, details: list[str]):
        lines = [f"timed out after {timeout:.0f} s waiting for {stage.title}: {check.summary}"]
        lines += [f"  - {item}" for item in (*check.stuck, *details)]
        super().__init__("\n".join(lines), RERUN)


def run_stage(
    stage: Stage,
    timeout: float,
    update: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    """Poll until done; StageTimeout with the last check (and its explanation) when time runs out.

    A poll raises (a Failure) only for what waiting cannot fix, e.g. a changed host key.
    """
    deadline = clock() + timeout
    interval = poll_interval(timeout)
    while True:
        check = stage.poll()
        update(f"{stage.title}: {check.summary}")
        if check.done:
            return check
        if clock() + interval > deadline:
            details: list[str] = []
            if stage.explain is not None:
                try:
                    details = stage.explain(check)
                except Exception as exc:  # noqa: BLE001 - the explanation is a bonus, the timeout the news
                    details = [f"(could not look closer: {exc})"]
            raise StageTimeout(stage, timeout, check, details)
        sleep(interval)


class Progress:
    """A rich status line while a stage runs and a ✓ line when it is done (stderr)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self._status = None

    def __enter__(self) -> Progress:
        self._status = self.console.status("waiting for the cluster")
        self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._status.__exit__(*exc)

    def update(self, text: str) -> None:
        self._status.update(text)

    def done(self, stage: Stage, seconds: float, check: Check) -> None:
        self.console.print(f"✓ {stage.title}: {check.summary} ({seconds:.0f} s)", markup=False)


def run_stages(stages: Iterable[Stage], timeouts: dict[str, float], progress: Progress) -> list[Check]:
    results = []
    for stage in stages:
        started = time.monotonic()
        progress.update(f"{stage.title} …")
        check = run_stage(stage, timeouts[stage.key], progress.update)
        progress.done(stage, time.monotonic() - started, check)
        results.append(check)
    return results


def timeouts_for(timeout: float | None) -> dict[str, float]:
    """One --timeout for every stage, else the defaults."""
    if timeout is None:
        return dict(DEFAULT_TIMEOUTS)
    if timeout <= 0:
        raise BadInput("--timeout", None, "a number of seconds above 0", timeout)
    return dict.fromkeys(DEFAULT_TIMEOUTS, float(timeout))
