"""Local state under concurrency (issue 15 item 5): several processes write the same file at once.

Each test starts real processes that run the product's own writers in a loop, all at the same
time, then reads what is left: every writer's change must be there and every file whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from clusterous_cli import config, kubeconfig, tunnels
from clusterous_cli.endpoint import ClusterRef

ROOT = Path(__file__).resolve().parents[1]
WRITERS = 6


def run_together(script: str, count: int = WRITERS) -> None:
    """`script` in `count` processes started together (each gets its index as argv[1])."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("", "core", "cli", "provisioner", "operator"))
    }
    code = textwrap.dedent(script)
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(count)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    failed = [(p.returncode, e) for p, e in zip(processes, errors, strict=True) if p.returncode]
    assert not failed, failed


def test_concurrent_tunnel_records_lose_nothing() -> None:
    ref = ClusterRef("default", "lab", config.cluster_dir("default", "lab"))
    run_together(
        """
        import sys
        from clusterous_cli import config, tunnels
        from clusterous_cli.endpoint import ClusterRef

        me = int(sys.argv[1])
        ref = ClusterRef("default", "lab", config.cluster_dir("default", "lab"))
        for n in range(10):
            tunnels.update_desired(
                ref, lambda d: d.tunnels.append(tunnels.Tunnel(20000 + me * 100 + n, "10.0.0.1", 80))
            )
        """
    )
    locals_ = sorted(t.local for t in tunnels.read_desired(ref).tunnels)
    assert locals_ == sorted(20000 + me * 100 + n for me in range(WRITERS) for n in range(10))


def test_concurrent_profile_writers_leave_a_whole_file() -> None:
    config.save_profile("default", config.Profile(region="eu-west-1", bucket="clusterous-test"))
    run_together(
        """
        import sys
        from clusterous_cli import config

        for n in range(25):
            config.set_current_cluster("default", f"c{sys.argv[1]}-{n}")
        """
    )
    profile = config.load_profile("default")
    assert profile.region == "eu-west-1" and profile.current_cluster.endswith("-24")
    folder = config.profile_path("default").parent
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []  # no leftovers


def test_concurrent_kubeconfig_merges_keep_every_cluster(tmp_path, monkeypatch) -> None:
    target = tmp_path / "kube" / "config"
    monkeypatch.setenv("KUBECONFIG", str(target))
    run_together(
        """
        import sys
        from clusterous_cli import kubeconfig

        me = sys.argv[1]
        credentials = {
            "clusters": [{"name": "default", "cluster": {"server": "https://127.0.0.1:6443"}}],
            "users": [{"name": "default", "user": {"token": "t" + me}}],
            "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
            "current-context": "default",
        }
        for _ in range(5):
            kubeconfig.write(credentials, f"cluster{me}")
        """
    )
    merged = yaml.safe_load(target.read_text())
    assert {c["name"] for c in merged["contexts"]} == {f"clusterous-cluster{i}" for i in range(WRITERS)}
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_symlinked_kubeconfig_stays_a_symlink(tmp_path) -> None:
    dotfiles = tmp_path / "dotfiles" / "kubeconfig"
    dotfiles.parent.mkdir()
    dotfiles.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "contexts": []}))
    link = tmp_path / "kube" / "config"
    link.parent.mkdir()
    link.symlink_to(dotfiles)
    credentials = {
        "clusters": [{"name": "default", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "default", "user": {"token": "t"}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "current-context": "default",
    }
    kubeconfig.write(credentials, "lab", path=link)
    assert link.is_symlink() and link.resolve() == dotfiles
    assert yaml.safe_load(dotfiles.read_text())["current-context"] == "clusterous-lab"
