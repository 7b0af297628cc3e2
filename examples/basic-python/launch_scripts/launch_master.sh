#!/bin/bash
# Master: serve a page summarising what every engine wrote to the shared volume.
set -euo pipefail
mkdir -p /home/data/results
exec python3 /home/data/launch_scripts/master.py --port 8888 --results /home/data/results
