#!/bin/bash
# Worker: one thread per worker (one worker per CPU: the component asks for cpu 1), connecting to
# the scheduler's Service, which the operator names in CLUSTEROUS_SCHEDULER_HOST.
set -euo pipefail
exec dask worker "tcp://${CLUSTEROUS_SCHEDULER_HOST}:8786" \
    --nthreads 1 --memory-limit auto --name "$(hostname)" \
    --local-directory /tmp/dask-worker
