#!/bin/bash
# Notebook: Jupyter on 8888 over the notebooks on the shared volume. It is reached only through
# the SSH tunnel to localhost, so it runs without a token.
set -euo pipefail
mkdir -p /home/data/notebooks
export DASK_SCHEDULER_ADDRESS="tcp://${CLUSTEROUS_SCHEDULER_HOST}:8786"
exec jupyter lab --ip 0.0.0.0 --port 8888 --no-browser \
    --ServerApp.token='' --ServerApp.password='' \
    --ServerApp.root_dir=/home/data/notebooks
