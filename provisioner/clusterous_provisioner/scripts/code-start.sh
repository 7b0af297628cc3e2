#!/bin/sh
# Entry point of the operator and autoscaler pods (a stock Python image pinned by digest; their
# code ConfigMaps: clusterous_provisioner/code_bundle.py). Install the lock beside this script
# (requirements.txt, every distribution pinned with its sha256) once per lock hash into a cache
# on the controller (a hostPath), so a restart or new code with the same lock needs no PyPI;
# then run python with the arguments the ConfigMap's `args` lists (one a line; the pod's own, if
# it gives any), the cache and the zipped code on PYTHONPATH.
set -eu
CODE_DIR="${CLUSTEROUS_CODE_DIR:-/opt/clusterous/code}"
SITE_ROOT="${CLUSTEROUS_SITE_ROOT:-/var/lib/clusterous-code}"
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
PYTHONPATH="$SITE"
for zip in "$CODE_DIR"/*.zip; do
    PYTHONPATH="$PYTHONPATH:$zip"
done
export PYTHONPATH
if [ "$#" -eq 0 ]; then
    while IFS= read -r arg; do
        set -- "$@" "$arg"
    done <"$CODE_DIR/args"
fi
exec python "$@"
