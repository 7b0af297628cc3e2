"""Running the real `clusterous-k8s` command in tests, with a private config directory.

`isolated_config` (autouse) points XDG_CONFIG_HOME at a fresh folder so no test reads or writes
the developer's own profiles. `cli` runs the CLI in-process through the same `run()` the console
script uses (the error model included); `cli_subprocess` runs the installed console script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch, tmp_path) -> Path:
    home = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("CLUSTEROUS_K8S_PROFILE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return home / "clusterous-k8s"


def run_cli(argv: list[str], input: str | None = None) -> Result:
    """Run the CLI in-process with stdin/stdout/stderr swapped, like a terminal-less user."""
    from click.testing import CliRunner

    from clusterous_cli.main import run

    runner = CliRunner()
    with runner.isolation(input=input) as streams:
        code = run(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = streams[0].getvalue(), streams[1].getvalue()
    return Result(code, stdout.decode(), stderr.decode())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def cli_subprocess():
    def run(
        argv: list[str], input: str | None = None, env: dict | None = None, timeout: float = 120
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "clusterous_cli", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run
