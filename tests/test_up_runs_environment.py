"""`up` with a cluster file that names an environment file runs that application once the
cluster is ready: files copied, ClusterApp applied and Running, tunnel open, message printed.

The stand-ins are those of test_up_ready.py (moto, the harness sshd as the controller, the
Kubernetes emulator behind the SSH tunnel, FakeK3s playing k3s) and test_run_quit.py (the
real kopf operator, Services given 127.0.0.1 where the test's web server listens).
"""

from __future__ import annotations

import os

import pytest
import yaml

os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")

import kopf.testing as kopf_testing  # noqa: E402 - a broken kopf fails the module, never skips it

from clusterous_cli import tunnels  # noqa: E402
from tests.test_run_quit import OPERATOR_ARGS, env_file, fetch, web_server  # noqa: E402
from tests.test_up_ready import CLUSTER, SSH_CIDR, cluster_side  # noqa: E402, F401


@pytest.mark.usefixtures("cluster_side")
def test_up_runs_the_environment_file_of_the_cluster_file(
    k8s_api,
    aws,
    cli,
    tmp_path,
    monkeypatch,  # noqa: F811
):
    shared = tmp_path / "shared-volume"
    shared.mkdir()
    overrides = os.environ["CLUSTEROUS_CONTROLLER_OVERRIDES"]
    with open(overrides) as fh:
        record = yaml.safe_load(fh)
    record["shared_root"] = str(shared)
    with open(overrides, "w") as fh:
        yaml.safe_dump(record, fh)
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))  # the operator's own access
    # every Service's cluster IP is 127.0.0.1, where the test's web server listens
    k8s_api.call(lambda emulator: setattr(emulator, "service_address", "127.0.0.1"))

    page = os.urandom(16).hex().encode()
    local = tunnels.free_port()
    with web_server(page) as web_port:
        env_path = env_file(tmp_path, web_port, local)
        cluster_file = env_path.parent / "cluster.yml"
        cluster_file.write_text(
            yaml.safe_dump(
                {
                    "cluster_name": CLUSTER,
                    "environment_file": env_path.name,
                    "parameters": {"worker_count": 1},
                }
            )
        )
        with kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60) as runner:
            result = cli(
                [
                    "up",
                    str(cluster_file),
                    "--ssh-cidr",
                    SSH_CIDR,
                    "--yes",
                    "--timeout",
                    "60",
                ]
            )
            tunnelled = fetch(local) if result.exit_code == 0 else b""
        assert runner.exception is None, runner.output

    assert result.exit_code == 0, result.output
    assert tunnelled == page  # the application's page, through the tunnel `up` opened
    assert f"cluster {CLUSTER} is ready" in result.stdout
    assert "running" in result.stderr and "webdemo" in result.stderr
    assert (shared / "scripts" / "serve.sh").read_text() == (
        env_path.parent / "scripts" / "serve.sh"
    ).read_text()
    assert k8s_api.get("capp", "webdemo")["status"]["phase"] == "Running"
    assert f"Open http://localhost:{local} (port {local})" in result.stdout


def test_a_bad_environment_file_stops_up_before_anything_is_created(aws, cli, tmp_path):
    cli(["setup", "--region", aws.region, "--yes"])
    env = tmp_path / "env.yml"
    env.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "environment": {
                    "components": {"a": {"machine": "master", "count": -1, "image": "python:3.12"}}
                },
            }
        )
    )
    cluster_file = tmp_path / "cluster.yml"
    cluster_file.write_text(yaml.safe_dump({"cluster_name": "badenv", "environment_file": "env.yml"}))
    aws.reset_calls()
    result = cli(["up", str(cluster_file), "--os", "al2023", "--ssh-cidr", SSH_CIDR, "--yes"])
    assert result.exit_code == 2, result.output
    assert "env.yml" in result.stderr and "count" in result.stderr
    assert not [c for c in aws.calls() if c[1].startswith(("Create", "Run", "Allocate"))]
