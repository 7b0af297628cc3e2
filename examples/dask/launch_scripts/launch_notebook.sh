#!/bin/bash
# Notebook: Jupyter on 8888 over the notebooks on the shared volume. Usage: launch_notebook.sh TOKEN
# (the environment file passes $token, which `run` generates once per cluster and shows in the
# tunnel's URL). Jupyter listens on 0.0.0.0 in the pod, which turns its host check off: without
# a token any web page open on the laptop could run code through the tunnel.
set -euo pipefail
token=${1:?usage: launch_notebook.sh TOKEN}
mkdir -p /home/data/notebooks
export DASK_SCHEDULER_ADDRESS="tcp://${CLUSTEROUS_SCHEDULER_HOST}:8786"
export JUPYTER_TOKEN="$token"  # from the environment, not the command line other processes see
exec jupyter lab --ip 0.0.0.0 --port 8888 --no-browser \
    --ServerApp.password='' --ServerApp.root_dir=/home/data/notebooks
