"""Counts the AWS API calls of `clusterous-k8s up` with 1 and with 50 workers, and of `down` with
5 and with 50 workers, against moto.

The number of calls must not grow with the node count (one RunInstances per group, one waiter
for all instances; `down` terminates every instance in one call and never deletes a root volume
that termination deletes); the goal is a difference of at most 5 for each command. Starts its own ThreadedMotoServer (with the
Canonical Ubuntu images seeded, so `up` uses the default OS) behind the test harness's AWS realism
layer (all behaviours off), and counts calls with its botocore plugin (tests/harness/faults.py).

Run: python bench/provision_calls.py
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from _common import counted_calls, moto_account


def count_down(workdir: Path, workers: int) -> tuple[collections.Counter, float]:
    """`down` of the cluster count_up just made (call it right after count_up with the same workers)."""
    from clusterous_cli.main import run

    log = workdir / f"calls-{workers}.log"
    log.write_text("")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run(["down", "bench", "--yes"])
    elapsed = time.perf_counter() - start
    assert code == 0, f"down failed with exit code {code}"
    return counted_calls(log), elapsed


def count_up(url: str, workdir: Path, workers: int) -> tuple[collections.Counter, float]:
    from clusterous_cli.main import run

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")).read()
    log = workdir / f"calls-{workers}.log"
    config = workdir / f"faults-{workers}.json"
    config.write_text(json.dumps({"log": str(log), "faults": []}))
    os.environ["XDG_CONFIG_HOME"] = str(workdir / f"xdg-{workers}")
    os.environ["CLUSTEROUS_FAULTS_FILE"] = str(config)
    with contextlib.redirect_stderr(io.StringIO()):
        assert run(["setup", "--region", "us-east-1", "--yes"]) == 0
    log.write_text("")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run(["up", "--cluster", "bench", "--workers", str(workers),
                    "--ssh-cidr", "198.51.100.7/32", "--no-wait", "--yes"])  # fmt: skip
    elapsed = time.perf_counter() - start
    assert code == 0, f"up failed with exit code {code}"
    return counted_calls(log), elapsed


def main() -> int:
    with moto_account() as (url, tmp):
        one, t1 = count_up(url, tmp, 1)
        count_up(url, tmp, 5)
        down5, d5 = count_down(tmp, 5)
        fifty, t50 = count_up(url, tmp, 50)
        down50, d50 = count_down(tmp, 50)
    n1, n50 = sum(one.values()), sum(fifty.values())
    print(f"up with  1 worker : {n1} AWS calls ({t1:.2f} s against moto)")
    print(f"up with 50 workers: {n50} AWS calls ({t50:.2f} s against moto)")
    print(f"difference        : {n50 - n1} calls (goal: at most 5)")
    changed = {op: (one[op], fifty[op]) for op in sorted(set(one) | set(fifty)) if one[op] != fifty[op]}
    if changed:
        print("operations whose count changed:", ", ".join(f"{op} {a}→{b}" for op, (a, b) in changed.items()))
    print("RunInstances calls:", one["RunInstances"], "and", fifty["RunInstances"])
    m5, m50 = sum(down5.values()), sum(down50.values())
    print(f"down with  5 workers: {m5} AWS calls ({d5:.2f} s against moto)")
    print(f"down with 50 workers: {m50} AWS calls ({d50:.2f} s against moto)")
    print(f"difference          : {m50 - m5} calls (goal: at most 5)")
    changed = {
        op: (down5[op], down50[op]) for op in sorted(set(down5) | set(down50)) if down5[op] != down50[op]
    }
    if changed:
        print("operations whose count changed:", ", ".join(f"{op} {a}→{b}" for op, (a, b) in changed.items()))
    print("DeleteVolume calls of down:", down5["DeleteVolume"], "and", down50["DeleteVolume"])
    return 0 if n50 - n1 <= 5 and m50 - m5 <= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
