"""What the benchmarks share: a harness sshd and a cluster record whose controller it is; moto
behind the AWS realism layer, as an account with no credentials of the user's."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / p) for p in ("", "core", "cli", "provisioner", "operator")]
KEX_CIPHER = re.compile(r"kex: client->server cipher: (\S+)")
# moto as the AWS-call benches need it: AMI ids checked, AWS managed IAM policies present
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


@contextlib.contextmanager
def controller_stand_in() -> Iterator[tuple[object, object, Path]]:
    """(sshd, ClusterRef, scratch dir): a real sshd plus the records `up` would write, all temporary."""
    from tests.harness.sshd import running_sshd

    with tempfile.TemporaryDirectory(prefix="clusterous-bench-") as scratch:
        scratch_path = Path(scratch)
        os.environ["XDG_CONFIG_HOME"] = str(scratch_path / "xdg")
        os.environ.pop("CLUSTEROUS_K8S_PROFILE", None)
        from clusterous_cli import config, hostkeys
        from clusterous_cli.endpoint import ClusterRef, ControllerEndpoint, write_endpoint

        with running_sshd(scratch_path / "sshd") as sshd:
            config.save_profile(
                "default", config.Profile(region="eu-west-1", bucket="bench", current_cluster="bench")
            )
            ref = ClusterRef("default", "bench", config.cluster_dir("default", "bench"))
            shared = sshd.make_shared_volume("shared")
            endpoint = ControllerEndpoint(
                host=sshd.host,
                port=sshd.port,
                user=sshd.user,
                key_file=sshd.client_key_path,
                known_hosts=ref.directory / "known_hosts",
                shared_root=str(shared),
            )
            write_endpoint(ref, endpoint)
            hostkeys.pin_from_console_output(
                endpoint.known_hosts, endpoint.host_key_name, sshd.console_output()
            )
            yield sshd, ref, scratch_path


@contextlib.contextmanager
def moto_account() -> Iterator[tuple[str, Path]]:
    """moto on loopback behind the realism proxy, the AWS_* environment pointing at it and at no
    config file of the user's; yields (moto's URL, for /moto-api/reset; a temporary folder)."""
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
            yield url, Path(tmp)
    finally:
        proxy.stop()
        server.stop()


def counted_calls(log: Path) -> collections.Counter:
    """AWS API calls by operation, from the call log of tests/harness/faults.py (`<service> <operation>`
    a line)."""
    return collections.Counter(line.split()[1] for line in log.read_text().splitlines() if line.strip())


def offer_only(sshd, cipher: str) -> None:
    """Restart the sshd offering one cipher and logging (debug1) which one each connection gets.
    sshd takes the first value of a keyword, so the log level is replaced, not appended."""
    text = sshd.config_path.read_text().replace("LogLevel VERBOSE", "LogLevel DEBUG1")
    sshd.config_path.write_text(f"Ciphers {cipher}\n{text}")
    sshd.restart()


def negotiated_since(sshd, offset: int, timeout: float = 10) -> tuple[str, int]:
    """The cipher of the first connection sshd logged after `offset` (and the new offset)."""
    deadline = time.monotonic() + timeout
    while True:
        text = sshd.log_text()
        match = KEX_CIPHER.search(text, offset)
        if match or time.monotonic() > deadline:
            return (match.group(1) if match else "unknown"), len(text)
        time.sleep(0.05)
