"""Smoke test on real AWS: `up --workers 1`, `status`, `down`. Costs a few cents; skipped unless
CLUSTEROUS_REAL_AWS=1 with credentials (and optionally CLUSTEROUS_REAL_AWS_REGION)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.harness.aws import requires_real_aws

pytestmark = [pytest.mark.aws, requires_real_aws]


def test_up_status_down_on_real_aws(cli):
    region = os.environ.get("CLUSTEROUS_REAL_AWS_REGION", "us-east-1")
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    assert cli(["setup", "--region", region, "--yes"]).exit_code == 0
    try:
        up = cli(["up", "--name", name, "--workers", "1", "--os", "al2023", "--no-wait", "--yes",
                  "--controller-type", "t3.small", "--master-type", "t3.small", "--worker-type", "t3.small"])  # fmt: skip
        assert up.exit_code == 0, up.output
        status = json.loads(cli(["status", "--name", name, "--json"]).stdout)
        assert status["controller_public_ip"] and len(status["instances"]) == 3
    finally:
        down = cli(["down", name, "--yes"])
        assert down.exit_code == 0, down.output
        assert "nothing billable is left" in down.stdout
