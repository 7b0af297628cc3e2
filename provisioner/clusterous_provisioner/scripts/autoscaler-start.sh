#!/bin/sh
# Entry point of the autoscaler pod (the operator's stock Python image, pinned by digest): install
# the lock (autoscaler-requirements.txt, every distribution pinned with its sha256) once per lock
# hash into a cache on the controller (a hostPath), so a restart or new code with the same lock
# needs no PyPI; then run python with the pod's arguments on the zipped code shipped beside this
# script in the clusterous-autoscaler-code ConfigMap (clusterous_provisioner/code_bundle.py).
set -eu
CODE_DIR="${CLUSTEROUS_CODE_DIR:-/opt/clusterous/code}"
SITE_ROOT="${CLUSTEROUS_SITE_ROOT:-/var/lib/clusterous-autoscaler}"
LOCK="$CODE_DIR/autoscaler-requirements.txt"
LOCK_HASH="$(sha256sum "$LOCK" | cut -c1-16)"
SITE="$SITE_ROOT/site-$LOCK_HASH"

if [ ! -e "$SITE/.complete" ]; then
    rm -rf "$SITE.partial"
    # --require-hashes: a wheel whose sha256 is not in the lock is refused; --no-deps: the lock
    # is the whole closure; --only-binary: no build step runs code from an sdist.
    python -m pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        --only-binary=:all: --target "$SITE.partial" -r "$LOCK"
    touch "$SITE.partial/.complete"
    rm -rf "$SITE"
    mv "$SITE.partial" "$SITE"
fi
export PYTHONPATH="$SITE:$CODE_DIR/clusterous_autoscaler.zip"
exec python "$@"
