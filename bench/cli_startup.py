#!/usr/bin/env python3
"""Startup time of `clusterous-k8s --help` against a minimal typer app's `--help`, same run.

Both are started the same way (a fresh `python` process), interleaved so machine noise hits
both alike. Prints the medians and, last, `ratio=<ours/minimal>`; the goal is <= 1.3.

Usage: python bench/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL_APP = '''
import typer

app = typer.Typer(help="A minimal typer app.")


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


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "100", "PYTHONDONTWRITEBYTECODE": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        minimal = Path(tmp) / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        ours_cmd = [sys.executable, "-m", "clusterous_cli", "--help"]
        base_cmd = [sys.executable, str(minimal), "--help"]
        for cmd in (ours_cmd, base_cmd):  # warm the bytecode caches once
            timed(cmd, env)
        ours, base = [], []
        for _ in range(args.runs):
            ours.append(timed(ours_cmd, env))
            base.append(timed(base_cmd, env))
    ours_median, base_median = statistics.median(ours), statistics.median(base)
    print(f"clusterous-k8s --help: median {ours_median * 1000:.0f} ms over {args.runs} runs")
    print(f"minimal typer --help:  median {base_median * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio={ours_median / base_median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
