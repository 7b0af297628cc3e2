#!/bin/sh
# Entry point of the operator pod (a stock Python image pinned by digest): install the lock
# (requirements.txt, every distribution pinned with its sha256) once per lock hash into a cache
# on the controller (a hostPath), so a restart or new operator code with the same lock needs no
# PyPI; then run kopf on the zipped clusterous_operator package shipped beside this script in the
# clusterous-operator-code ConfigMap.
set -eu
CODE_DIR="${CLUSTEROUS_CODE_DIR:-/opt/clusterous/code}"
SITE_ROOT="${CLUSTEROUS_SITE_ROOT:-/var/lib/clusterous-operator}"
LOCK="$CODE_DIR/requirements.txt"
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
export PYTHONPATH="$SITE:$CODE_DIR/clusterous_operator.zip"
exec python -m kopf run --all-namespaces --peering=clusterous-operator \
    --liveness=http://0.0.0.0:8080/healthz -m "$CLUSTEROUS_OPERATOR_MODULE"
