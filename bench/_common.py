"""What both benchmarks share: a harness sshd, and a cluster record whose controller it is."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "cli"), str(ROOT / "provisioner"), str(ROOT / "operator")]


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
