"""Smoke test on real AWS: the example cluster file with one worker, waited for stage by stage, its
example application (basic-python: image built on the cluster, files copied, ClusterApp followed
to Running, tunnel opened) answering through the tunnel, a `put`/`get` round trip on the shared
volume, then `quit` and `down` with nothing billable left.

Skipped unless CLUSTEROUS_REAL_AWS=1 with credentials (CLUSTEROUS_REAL_AWS_REGION, default
us-east-1). Cost: the plan's price per hour (`clusterous-k8s up examples/mycluster.yml --workers 1
--dry-run`: about 0.36 USD per hour in us-east-1) for the 20-40 minutes it runs — a few tens of
cents (docs/testing.md, "Real AWS and real clusters").
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.harness.aws import requires_real_aws

pytestmark = [pytest.mark.aws, requires_real_aws]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def fetch_until(url: str, needle: str, timeout: float = 300.0) -> str:
    """The page once it shows `needle` (the engines need a moment to report)."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                text = response.read().decode(errors="replace")
            if re.search(needle, text):
                return text
        except OSError:
            pass
        time.sleep(5)
    raise AssertionError(f"{url} never showed {needle!r}; last page: {text[:500]}")


@pytest.mark.timeout(3600)
def test_example_cluster_runs_the_example_application_on_real_aws(cli, tmp_path):
    region = os.environ.get("CLUSTEROUS_REAL_AWS_REGION", "us-east-1")
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    setup = cli(["setup", "--region", region, "--yes"])
    assert setup.exit_code == 0, setup.output
    try:
        # Waits for the cluster (host key, SSH, cloud-init, API, nodes Ready, add-ons), then runs
        # the cluster file's environment_file, basic-python, and prints its tunnel's URL.
        up = cli(["up", str(EXAMPLES / "mycluster.yml"), "--cluster", name, "--workers", "1", "--yes"])
        assert up.exit_code == 0, up.output
        url = re.search(r"http://localhost:\d+", up.stdout)
        assert url, up.output
        assert re.search(r"[1-9]\d* engines", fetch_until(url.group(0), r"[1-9]\d* engines"))

        # The shared volume round trip as the login user (its root belongs to uid 1000).
        sent = tmp_path / "input.csv"
        sent.write_text("x,y\n1,2\n")
        put = cli(["put", str(sent), "smoke/", "--cluster", name])
        assert put.exit_code == 0, put.output
        got = cli(["get", "smoke/input.csv", str(tmp_path / "back.csv"), "--cluster", name])
        assert got.exit_code == 0, got.output
        assert (tmp_path / "back.csv").read_text() == sent.read_text()

        status = cli(["status", "--cluster", name, "--json"])
        assert status.exit_code == 0, status.output
        data = json.loads(status.stdout)
        assert data["controller_public_ip"] and len(data["instances"]) == 3
        assert [(a["name"], a["phase"]) for a in data["applications"]] == [("basic-python", "Running")]

        quit_ = cli(["quit", "basic-python", "--cluster", name])
        assert quit_.exit_code == 0, quit_.output
    finally:
        down = cli(["down", name, "--yes", "--delete-shared-volume"])
        assert down.exit_code == 0, down.output
        assert "nothing billable is left" in down.stdout
