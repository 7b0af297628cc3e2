"""AWS on loopback: a moto server (ThreadedMotoServer) reached over HTTP via AWS_ENDPOINT_URL,
through the AWS realism layer (tests/harness/aws_realism.py) in front of it.

Fixtures:
    moto_server  session-wide server on 127.0.0.1 (AMI validation and managed policies on; the
                 Canonical Ubuntu 24.04 AMIs and SSM parameters seeded)
    aws_proxy    session-wide realism layer in front of it (every behaviour off unless a test
                 switches it on through aws.realism)
    aws          per test: server state and realism reset, fake credentials, the CLI pointed at the
                 layer, every AWS call recorded, and failures injectable at the k-th call of an
                 operation
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import faults
from tests.harness.aws_realism import Realism, RealismProxy, install_public_images

REPO = Path(__file__).resolve().parents[2]

# moto reads these when its backends start; they must be set before the server handles a call.
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    install_public_images()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws_proxy(moto_server):
    """The AWS realism layer in front of moto; `aws` resets it for every test."""
    with RealismProxy(moto_server) as proxy:
        yield proxy


@dataclass
class AwsEnv:
    """Handle on the moto server, through the realism layer, for one test."""

    url: str  # the realism layer: what AWS_ENDPOINT_URL points at
    region: str
    workdir: Path
    moto_url: str = ""  # moto itself, behind the layer
    realism: Realism = field(default_factory=Realism)
    _faults: list = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "calls.log"

    @property
    def config_file(self) -> Path:
        return self.workdir / "faults.json"

    def client(self, service: str, region: str | None = None, direct: bool = False):
        """A boto3 client through the realism layer, or straight to moto with direct=True (to look
        at the account without being subject to, or counted by, the layer's behaviours)."""
        import boto3

        url = self.moto_url if direct and self.moto_url else self.url
        return boto3.client(service, region_name=region or self.region, endpoint_url=url)

    def calls(self, operation: str | None = None) -> list[tuple[str, str]]:
        """AWS calls made so far by any client, in order, as (service, operation)."""
        if not self.log.exists():
            return []
        entries = [tuple(line.split()) for line in self.log.read_text().splitlines() if line.strip()]
        return [e for e in entries if operation is None or e[1] == operation]

    def reset_calls(self) -> None:
        self.log.write_text("")

    def fail(
        self,
        operation: str,
        at: int = 1,
        code: str = "InternalError",
        message: str = "injected fault",
        status: int = 400,
        service: str | None = None,
    ) -> None:
        """Make the `at`-th call (counted from now, 1-based) of `operation` fail with an AWS error."""
        fault = {
            "operation": operation,
            "at": at + len(self.calls(operation)),
            "code": code,
            "message": message,
            "status": status,
        }
        if service:
            fault["service"] = service
        self._faults.append(fault)
        self._write()

    def crash(self, operation: str, at: int = 1) -> None:
        """Make the process die (SimulatedCrash) just before the `at`-th call of `operation`."""
        self._faults.append({"operation": operation, "at": at + len(self.calls(operation)), "crash": True})
        self._write()

    def clear_faults(self) -> None:
        self._faults.clear()
        self._write()

    def _write(self) -> None:
        self.config_file.write_text(json.dumps({"log": str(self.log), "faults": self._faults}))


def reset_moto(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=30).read()


@pytest.fixture
def aws(moto_server, aws_proxy, monkeypatch, tmp_path):
    """A clean AWS account on the moto server, with the standard environment pointing at it."""
    reset_moto(moto_server)
    aws_proxy.realism.reset()
    workdir = tmp_path / "aws"
    workdir.mkdir()
    env = AwsEnv(
        url=aws_proxy.url,
        region="us-east-1",
        workdir=workdir,
        moto_url=moto_server,
        realism=aws_proxy.realism,
    )
    env._write()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_proxy.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", env.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(workdir / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "no-aws-credentials"))
    monkeypatch.setenv("BOTOCORE_EXPERIMENTAL__PLUGINS", faults.PLUGIN_SPEC)
    monkeypatch.setenv(faults.ENV_FILE, str(env.config_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    yield env
    errors, aws_proxy.errors[:] = list(aws_proxy.errors), []
    assert not errors, f"the AWS realism layer failed on: {errors}"


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No credentials and no reachable AWS: what a newcomer without an account has."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "BOTOCORE_EXPERIMENTAL__PLUGINS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Nothing listens here: any call that slipped through fails fast instead of reaching out.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


def real_aws_enabled() -> bool:
    return os.environ.get("CLUSTEROUS_REAL_AWS") == "1"


requires_real_aws = pytest.mark.skipif(
    not real_aws_enabled(), reason="real AWS test: set CLUSTEROUS_REAL_AWS=1 with credentials to run"
)
