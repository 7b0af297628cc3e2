"""The examples a newcomer runs: files well-formed, and the basic-python app really works."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.harness.tools import shellcheck

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = EXAMPLES / "basic-python" / "launch_scripts"


def test_cluster_file_is_in_clusterous_format():
    data = yaml.safe_load((EXAMPLES / "mycluster.yml").read_text())
    assert data["cluster_name"] == "mycluster"
    assert set(data["parameters"]) == {"master_instance_type", "worker_instance_type", "worker_count"}
    assert (EXAMPLES / data["environment_file"]).is_file()


def test_environment_file_names_what_exists():
    env_file = EXAMPLES / "basic-python" / "basic-python-env.yml"
    env = yaml.safe_load(env_file.read_text())["environment"]
    for folder in env["copy"]:
        assert (env_file.parent / folder).is_dir(), folder
    for image in env["image"]:
        assert (env_file.parent / image["dockerfile"] / "Dockerfile").is_file()
    assert set(env["components"]) == {"master", "engine"}


def test_launch_scripts_pass_shellcheck():
    for script in SCRIPTS.glob("*.sh"):
        result = shellcheck(script)
        assert result.returncode == 0, result.stdout


def test_engine_and_master_work_together(tmp_path):
    results = tmp_path / "results"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "engine.py"),
            "--results",
            str(results),
            "--name",
            "e1",
            "--chunk",
            "50",
            "--limit",
            "100",
        ],
        check=True,
        timeout=30,
    )
    assert yaml.safe_load((results / "e1.json").read_text())["primes"] == 25  # primes below 100

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "master.py"), "--port", str(port), "--results", str(results)]
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert "1 engines, 25 primes found" in body and "<td>e1</td>" in body
    finally:
        master.terminate()
        master.wait(timeout=10)
