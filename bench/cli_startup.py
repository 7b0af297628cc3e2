#!/usr/bin/env python3
"""Start-up time of `clusterous-k8s --help` and `put --help` against a minimal typer app's `--help`.

All are started the same way (a fresh `python` process with bytecode caches, as an installed
CLI has them), interleaved so machine noise hits all alike. The minimal app's help is plain text
like ours (typer's default rich help would import rich and flatter any app beside it). Prints
the medians (wall and CPU) and a `ratio=<ours/minimal>` line for each of ours; the goal is
<= 1.3. `put --help` goes as far as a `put` does before it reads a file: the start-up cost of
every transfer (docs/ssh.md "Throughput").

Usage: python bench/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINIMAL_APP = '''
import typer

app = typer.Typer(help="A minimal typer app.", rich_markup_mode=None)  # plain help, as ours


@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    typer.echo(f"hello {name}")


@app.command()
def bye() -> None:
    """Say bye."""


if __name__ == "__main__":
    app()
'''


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env |= {
            "COLUMNS": "100",
            "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),  # writable caches, filled by the warm-up
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("core", "cli", "provisioner", "operator")),
        }
        minimal = Path(tmp) / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],  # the interpreter alone, for scale
            "minimal typer --help": [sys.executable, str(minimal), "--help"],
            "clusterous-k8s --help": [sys.executable, "-m", "clusterous_cli", "--help"],
            "clusterous-k8s put --help": [sys.executable, "-m", "clusterous_cli", "put", "--help"],
        }
        for argv in commands.values():  # warm the bytecode caches once
            timed(argv, env)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                runs[name].append(timed(argv, env))
    medians = {
        name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
        for name, r in runs.items()
    }
    for name, (wall, cpu) in medians.items():
        print(f"{name:26s} median {wall * 1000:4.0f} ms wall, {cpu * 1000:4.0f} ms CPU over {args.runs} runs")
    base = medians["minimal typer --help"][0]
    for name in list(commands)[2:]:
        print(
            f"ratio={medians[name][0] / base:.2f} {name} ÷ minimal typer --help (wall medians); goal <= 1.3"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
