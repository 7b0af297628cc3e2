#!/bin/sh
# Entry point of the operator pod (a stock Python image): install the pinned dependencies once
# per version into a directory on the controller, then run kopf on the zipped clusterous_operator
# package shipped beside this script in the clusterous-operator-code ConfigMap.
set -eu
CODE_DIR="${CLUSTEROUS_CODE_DIR:-/opt/clusterous/code}"
SITE_ROOT="${CLUSTEROUS_SITE_ROOT:-/var/lib/clusterous-operator}"
SITE="$SITE_ROOT/site-$CLUSTEROUS_OPERATOR_CODE_HASH"

if [ ! -e "$SITE/.complete" ]; then
    rm -rf "$SITE.partial"
    # shellcheck disable=SC2086  # the requirements are a space-separated list on purpose
    python -m pip install --no-cache-dir --disable-pip-version-check --target "$SITE.partial" \
        $CLUSTEROUS_OPERATOR_REQUIREMENTS
    touch "$SITE.partial/.complete"
    rm -rf "$SITE"
    mv "$SITE.partial" "$SITE"
fi
export PYTHONPATH="$SITE:$CODE_DIR/clusterous_operator.zip"
exec python -m kopf run --all-namespaces --peering=clusterous-operator \
    --liveness=http://0.0.0.0:8080/healthz -m "$CLUSTEROUS_OPERATOR_MODULE"
