"""The README's first command works on a fresh machine: no AWS account, no profile."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_quickstart_dry_run_needs_no_account(no_aws, cli_subprocess, isolated_config, monkeypatch):
    readme = (REPO / "README.md").read_text()
    assert "clusterous-k8s up examples/mycluster.yml --dry-run" in readme
    monkeypatch.chdir(REPO)
    result = cli_subprocess(["up", "examples/mycluster.yml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "plan for cluster mycluster in us-east-1" in result.stdout + result.stderr
    assert "USD per hour" in result.output
    assert not isolated_config.exists()  # a dry run writes nothing


def test_dry_run_json_without_profile(no_aws, cli, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    result = cli(["up", "examples/mycluster.yml", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["region"] == "eu-west-1"
    assert isinstance(plan["hourly_cost_usd"], float) and plan["hourly_cost_usd"] > 0
