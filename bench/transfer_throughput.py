"""`clusterous-k8s put/get` against plain `rsync -e ssh`, as whole processes, same sshd, same cipher.

Honest by construction (issue 15 item 3):
- both sides are whole processes: ours is the console script's own code (`sys.exit(main())` in a
  fresh interpreter: start-up, imports, connection, transfer; bytecode cached, as installed), rsync
  is `rsync -rlpt -e ssh` with the harness's ssh options;
- the sshd offers ONE cipher (`BENCH_CIPHER`, default aes128-gcm@openssh.com), so both must use
  it; the cipher each one negotiated is read back from sshd's debug log (`ciphers: ours=…
  openssh=…`);
- every round runs both, alternating which goes first; each transfer starts from an empty
  destination (a full copy, not a no-op delta);
- a 200 MB tree (`BENCH_TREE_MB`; 5 MB files in 4 folders) and one small file
  (`BENCH_SMALL_BYTES`, 1 KiB), each put and get;
- `ratio=` lines from the medians, with the worst round: MB/s ours ÷ rsync for the tree (goal
  ≥ 0.9), seconds ours ÷ rsync for the small file (goal ≤ 1.3).

Then the small-file rounds again with the tunnel supervisor running, whose OpenSSH master rsync's
ssh reuses (`small put+master`, against rsync in the same rounds): what a user with a cluster up
sees. The first ratios are the like-for-like ones (each side makes its own connection).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _common import ROOT, controller_stand_in, negotiated_since, offer_only

TREE_MB = int(os.environ.get("BENCH_TREE_MB", "200"))
SMALL_BYTES = int(os.environ.get("BENCH_SMALL_BYTES", "1024"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CIPHER = os.environ.get("BENCH_CIPHER", "aes128-gcm@openssh.com")
FILE_MB = 5
# What the installed `clusterous-k8s` script runs (without a version manager's shim in front).
MAIN = "import sys; from clusterous_cli.main import main; sys.exit(main())"
CASES = ("tree put", "tree get", "small put", "small get")
CPU_SECONDS: list[float] = []  # of each timed() call, in order


def make_tree(root: Path) -> int:
    block = os.urandom(1024 * 1024)
    for i in range(max(1, TREE_MB // FILE_MB)):
        folder = root / f"part{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"chunk{i:03d}.bin").open("wb") as fh:
            for j in range(min(FILE_MB, TREE_MB)):
                fh.write(block[j:] + block[:j])
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(argv: list[str]) -> float:
    """Wall seconds; the CPU seconds of the process and its children (rsync, ssh) go to CPU_SECONDS,
    a figure the other helpers' load on a shared machine disturbs less than wall time."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[3:5] if argv[1] == '-c' else argv[:1]} failed:\n{done.stderr}")
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def installed_like(scratch: Path) -> list[str]:
    """How to start ours as a regular install runs it: this checkout's code with bytecode caches
    (pip compiles on install; a PYTHONDONTWRITEBYTECODE in the environment would otherwise make
    every run compile our sources again, about 40 ms), in a clean virtual environment whose only
    `.pth` file puts the installed dependencies on its path. This machine's site-packages also
    runs two `.pth` hooks at every start that a user's installation has not (a sandbox's CA
    injection, which imports certifi and importlib.resources, and the editable install's finder):
    about 50 ms, none of it the CLI's. The venv's site does not run them (a path listed in a
    `.pth` file is added to sys.path; only site directories have their `.pth` files run)."""
    import sysconfig
    import venv

    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(ROOT / p) for p in ("core", "cli", "provisioner", "operator")
    )
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")  # filled by the cipher round
    env = scratch / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env)
    python = env / "bin" / "python"
    found = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(found.stdout.strip()) / "dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return [str(python), "-c", MAIN]


def main() -> None:
    with controller_stand_in() as (sshd, ref, scratch):
        ours = installed_like(scratch)
        offer_only(sshd, CIPHER)
        tree, small = scratch / "tree", scratch / "small.dat"
        size = make_tree(tree)
        small.write_bytes(os.urandom(SMALL_BYTES))
        shared = sshd.workdir / "home" / "shared"
        rsync = ["rsync", "-rlpt", "-e", sshd.rsync_rsh()]

        def commands(tool: str, case: str) -> tuple[list[str], list[Path]]:
            """The command for one case, and what to remove first so that it copies everything."""
            remote, back = f"{tool}-{case.split()[0]}", scratch / f"back-{tool}-{case.replace(' ', '-')}"
            source = tree if case.startswith("tree") else small
            if tool == "ours":
                if case.endswith("put"):
                    return [*ours, "put", str(source), remote], [shared / remote]
                return [*ours, "get", remote, str(back)], [back]
            if case.endswith("put"):
                slash = "/" if source.is_dir() else ""
                return [*rsync, f"{source}{slash}", sshd.remote(f"{shared / remote}{slash}")], [
                    shared / remote
                ]
            slash = "/" if (shared / remote).is_dir() else ""
            return [*rsync, sshd.remote(f"{shared / remote}{slash}"), f"{back}{slash}"], [back]

        def run(tool: str, case: str) -> float:
            argv, stale = commands(tool, case)
            for path in stale:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            return timed(argv)

        seconds: dict[tuple[str, str], list[float]] = {}
        ciphers = {}
        for tool in ("ours", "rsync"):  # the first put of each also tells the cipher it negotiated
            offset = len(sshd.log_text())
            run(tool, "small put")
            ciphers[tool], _ = negotiated_since(sshd, offset)
        print(f"ciphers: ours={ciphers['ours']} openssh={ciphers['rsync']}", flush=True)
        print(
            f"tree {size / 1e6:.0f} MB in {len(list(tree.rglob('*.bin')))} files; small file {SMALL_BYTES} bytes"
        )
        rounds(CASES, seconds, run)
        offset = len(sshd.log_text())
        with supervisor(ref):
            master_cipher, _ = negotiated_since(sshd, offset)
            print(f"tunnel supervisor's master: cipher {master_cipher}", flush=True)
            rounds(("small put", "small get"), seconds, run, label="+master")
    for case in [*CASES, "small put+master", "small get+master"]:
        ratio_line(case, seconds["ours", case], seconds["rsync", case], size)
        cpu = statistics.median(seconds["ours cpu", case]), statistics.median(seconds["rsync cpu", case])
        print(
            f"  cpu medians {case}: ours {cpu[0]:.3f} s, rsync {cpu[1]:.3f} s (client side: python, rsync, ssh)"
        )


def rounds(cases, seconds: dict, run, label: str = "") -> None:
    """ROUNDS rounds of each case, both tools, alternating which goes first."""
    for round_no in range(ROUNDS):
        order = ("ours", "rsync") if round_no % 2 == 0 else ("rsync", "ours")
        for case in cases:
            for tool in order:
                seconds.setdefault((tool, case + label), []).append(run(tool, case))
                seconds.setdefault((tool + " cpu", case + label), []).append(CPU_SECONDS[-1])
            ours, theirs = seconds["ours", case + label][-1], seconds["rsync", case + label][-1]
            cpu = seconds["ours cpu", case + label][-1], seconds["rsync cpu", case + label][-1]
            print(
                f"round {round_no + 1} {case + label:16s} first={order[0]:5s} ours {ours:6.3f} s  "
                f"rsync {theirs:6.3f} s  (cpu ours {cpu[0]:.3f} s, rsync {cpu[1]:.3f} s)",
                flush=True,
            )


@contextlib.contextmanager
def supervisor(ref):
    """The tunnel supervisor with one (idle) tunnel, connected through its OpenSSH master."""
    from clusterous_cli import tunnels

    tunnels.apply(ref, tunnels.Desired(tunnels=[tunnels.Tunnel(tunnels.free_port(), "127.0.0.1", 9)]), [])
    try:
        tunnels.wait_for(ref, lambda s: s.get("connected") and s.get("control_socket"), 30, "no master")
        yield
    finally:
        tunnels.stop_supervisor(ref)


def ratio_line(case: str, ours: list[float], theirs: list[float], size: int) -> None:
    per_round = [t / o for o, t in zip(ours, theirs, strict=True)]  # rsync's time ÷ ours
    med = statistics.median(theirs) / statistics.median(ours)
    if case.startswith("tree"):
        print(
            f"ratio={med:.3f} {case}: MB/s ours ÷ rsync -e ssh, medians of {len(ours)} rounds "
            f"(ours {size / statistics.median(ours) / 1e6:.1f} MB/s, "
            f"rsync {size / statistics.median(theirs) / 1e6:.1f}); worst round {min(per_round):.3f}; goal ≥ 0.9"
        )
    else:
        print(
            f"ratio={1 / med:.3f} {case}: seconds ours ÷ rsync -e ssh, medians of {len(ours)} rounds "
            f"(ours {statistics.median(ours):.3f} s, rsync {statistics.median(theirs):.3f} s); "
            f"worst round {1 / min(per_round):.3f}; goal ≤ 1.3"
        )


if __name__ == "__main__":
    main()
