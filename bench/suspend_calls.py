"""Counts the AWS API calls of `suspend` and of `resume` (its AWS part, lifecycle.resume) for a
cluster with 1, 10 and 40 workers, against moto behind the test harness's AWS realism layer.

For each size: `up --workers N --no-wait` makes the cluster in moto, `suspend --yes` stops it and
removes the NAT gateway, then the front door's resume brings it back (the readiness wait inside
the instances is `up`'s and makes no AWS call per node beyond one DescribeInstances). The calls
must not grow with N (one StopInstances, one StartInstances whatever the node count).

Run: python bench/suspend_calls.py
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import sys
import urllib.request
from pathlib import Path

from _common import counted_calls, moto_account

SIZES = (1, 10, 40)


def measure(url: str, workdir: Path, workers: int) -> tuple[collections.Counter, collections.Counter]:
    """(calls of suspend, calls of resume) for a cluster with `workers` workers."""
    from clusterous_cli.main import run
    from clusterous_provisioner import lifecycle
    from clusterous_provisioner.clients import Clients

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")).read()
    log = workdir / f"calls-{workers}.log"
    (workdir / f"faults-{workers}.json").write_text(json.dumps({"log": str(log), "faults": []}))
    os.environ["CLUSTEROUS_FAULTS_FILE"] = str(workdir / f"faults-{workers}.json")
    os.environ["XDG_CONFIG_HOME"] = str(workdir / f"xdg-{workers}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run(["setup", "--region", "us-east-1", "--yes"]) == 0
        assert run(["up", "--cluster", "bench", "--workers", str(workers), "--ssh-cidr", "198.51.100.7/32",
                    "--no-wait", "--yes"]) == 0  # fmt: skip
        log.write_text("")
        assert run(["suspend", "--cluster", "bench", "--yes"]) == 0
        suspended = counted_calls(log)
        log.write_text("")
        request = lifecycle.ResumeRequest("bench", "bench-bucket")
        lifecycle.resume(Clients("us-east-1"), request, lifecycle.Hooks(report=lambda _line: None))
        return suspended, counted_calls(log)


def main() -> int:
    results = {}
    with moto_account() as (url, tmp):
        for workers in SIZES:
            results[workers] = measure(url, tmp, workers)
    print("AWS calls of suspend and of resume (the front door; the readiness wait is up's)")
    for workers, (suspend, resume) in results.items():
        print(
            f"  {workers:>2} worker(s): suspend {sum(suspend.values()):>2} calls (StopInstances "
            f"{suspend['StopInstances']}), resume {sum(resume.values()):>2} calls (StartInstances "
            f"{resume['StartInstances']})"
        )
    first, last = results[SIZES[0]], results[SIZES[-1]]
    print("  suspend calls:", dict(sorted(last[0].items())))
    print("  resume calls :", dict(sorted(last[1].items())))
    same = all(sum(a.values()) == sum(b.values()) for a, b in zip(first, last, strict=True))
    print(f"constant in the number of nodes: {'yes' if same else 'NO'} (goal: O(1))")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
