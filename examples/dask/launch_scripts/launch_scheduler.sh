#!/bin/bash
# Scheduler: workers and clients connect on 8786; the dashboard is on 8787.
set -euo pipefail
exec dask scheduler --port 8786 --dashboard-address :8787
