"""An engine of the basic-python example: counts primes, reporting to the shared volume."""

import argparse
import json
import os
import time
from pathlib import Path


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def report(results: Path, name: str, upto: int, primes: int) -> None:
    tmp = results / f".{name}.tmp"
    tmp.write_text(json.dumps({"engine": name, "upto": upto, "primes": primes, "time": time.time()}))
    os.replace(tmp, results / f"{name}.json")  # the master never reads half a file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path("/home/data/results"))
    parser.add_argument("--name", default=os.uname().nodename)
    parser.add_argument("--chunk", type=int, default=20000)
    parser.add_argument("--limit", type=int, default=0, help="stop after this number (0: never)")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    upto, primes = 0, 0
    while not args.limit or upto < args.limit:
        primes += sum(1 for n in range(upto, upto + args.chunk) if is_prime(n))
        upto += args.chunk
        report(args.results, args.name, upto, primes)


if __name__ == "__main__":
    main()
