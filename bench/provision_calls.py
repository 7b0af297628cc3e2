"""Counts the AWS API calls of `clusterous-k8s up` with 1 and with 50 workers, against moto.

The number of calls must not grow with the node count (one RunInstances per group, one waiter
for all instances); the goal is a difference of at most 5. Starts its own ThreadedMotoServer (with the
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
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


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
        code = run(["up", "--name", "bench", "--workers", str(workers),
                    "--ssh-cidr", "198.51.100.7/32", "--no-wait", "--yes"])  # fmt: skip
    elapsed = time.perf_counter() - start
    assert code == 0, f"up failed with exit code {code}"
    calls = collections.Counter(line.split()[1] for line in log.read_text().splitlines() if line.strip())
    return calls, elapsed


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    from tests.harness.aws_realism import RealismProxy, install_public_images

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    install_public_images()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    proxy = RealismProxy(url).start()
    os.environ.update(
        AWS_ENDPOINT_URL=proxy.url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        BOTOCORE_EXPERIMENTAL__PLUGINS="clusterous_faults=tests.harness.faults",
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(
                Path(tmp) / "none"
            )
            one, t1 = count_up(url, Path(tmp), 1)
            fifty, t50 = count_up(url, Path(tmp), 50)
    finally:
        proxy.stop()
        server.stop()
    n1, n50 = sum(one.values()), sum(fifty.values())
    print(f"up with  1 worker : {n1} AWS calls ({t1:.2f} s against moto)")
    print(f"up with 50 workers: {n50} AWS calls ({t50:.2f} s against moto)")
    print(f"difference        : {n50 - n1} calls (goal: at most 5)")
    changed = {op: (one[op], fifty[op]) for op in sorted(set(one) | set(fifty)) if one[op] != fifty[op]}
    if changed:
        print("operations whose count changed:", ", ".join(f"{op} {a}→{b}" for op, (a, b) in changed.items()))
    print("RunInstances calls:", one["RunInstances"], "and", fifty["RunInstances"])
    return 0 if n50 - n1 <= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
