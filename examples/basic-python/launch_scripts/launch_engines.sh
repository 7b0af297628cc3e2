#!/bin/bash
# Engine: count primes in ranges and report to the shared volume, one file per engine.
set -euo pipefail
mkdir -p /home/data/results
exec python3 /home/data/launch_scripts/engine.py --results /home/data/results --name "$(hostname)"
