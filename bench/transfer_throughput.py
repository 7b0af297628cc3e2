"""MB/s of our `put` and `get` of a 200 MB tree ÷ MB/s of plain `rsync -e ssh` for the same tree, same sshd.

Each round copies the tree into an empty destination (a full transfer, not a no-op delta), with our
command (run in-process through the CLI's own entry point, connection set-up included) and with
rsync using the harness's ssh options. The SFTP fallback is timed too, for information. The ratio
uses the median round of each; last line `ratio=<value>` (goal ≥ 0.9).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _common import controller_stand_in

TREE_MB = int(os.environ.get("BENCH_TREE_MB", "200"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
FILE_MB = 5


def make_tree(root: Path) -> int:
    block = os.urandom(1024 * 1024)
    for i in range(TREE_MB // FILE_MB):
        folder = root / f"part{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"chunk{i:03d}.bin").open("wb") as fh:
            for j in range(FILE_MB):
                fh.write(block[j:] + block[:j])
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cli(*argv: str) -> None:
    """Our command, in-process; its file list goes nowhere (we time it, we do not read it)."""
    import contextlib
    import io

    from clusterous_cli.main import run

    with contextlib.redirect_stdout(io.StringIO()):
        code = run(list(argv))
    assert code == 0, (argv, code)


def main() -> None:
    with controller_stand_in() as (sshd, ref, scratch):
        tree = scratch / "tree"
        size = make_tree(tree)
        shared = Path(sshd.workdir / "home" / "shared")
        results: dict[str, list[float]] = {k: [] for k in ("put", "get", "rsync-put", "rsync-get")}

        def fresh(*paths: Path) -> None:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        rsync = ["rsync", "-rlpt", "-e", sshd.rsync_rsh()]
        for round_no in range(ROUNDS):
            fresh(shared / "ours", scratch / "back-ours")
            results["put"].append(size / timed(lambda: cli("put", str(tree), "ours")) / 1e6)
            results["get"].append(size / timed(lambda: cli("get", "ours", str(scratch / "back-ours"))) / 1e6)
            fresh(shared / "theirs", scratch / "back-theirs")
            results["rsync-put"].append(
                size
                / timed(
                    lambda: subprocess.run([*rsync, f"{tree}/", sshd.remote(f"{shared}/theirs/")], check=True)
                )
                / 1e6
            )
            results["rsync-get"].append(
                size
                / timed(
                    lambda: subprocess.run(
                        [*rsync, sshd.remote(f"{shared}/theirs/"), f"{scratch}/back-theirs/"], check=True
                    )
                )
                / 1e6
            )
            print(f"round {round_no + 1}: " + "  ".join(f"{k} {v[-1]:6.1f} MB/s" for k, v in results.items()))
        fresh(shared / "sftp", scratch / "back-sftp")
        sftp_put = size / timed(lambda: cli("put", str(tree), "sftp", "--method", "sftp")) / 1e6
        sftp_get = (
            size / timed(lambda: cli("get", "sftp", str(scratch / "back-sftp"), "--method", "sftp")) / 1e6
        )
        print(f"SFTP fallback (information only): put {sftp_put:.1f} MB/s, get {sftp_get:.1f} MB/s")
    med = {k: statistics.median(v) for k, v in results.items()}
    ours = 2 / (1 / med["put"] + 1 / med["get"])
    theirs = 2 / (1 / med["rsync-put"] + 1 / med["rsync-get"])
    print(f"tree {size / 1e6:.0f} MB; median put+get: ours {ours:.1f} MB/s, rsync -e ssh {theirs:.1f} MB/s")
    print(f"ratio={ours / theirs:.3f}")


if __name__ == "__main__":
    main()
