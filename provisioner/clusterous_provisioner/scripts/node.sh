#!/usr/bin/env bash
# Node bootstrap: NFS client and the pinned k3s agent joining the controller, labelled with
# its group, with the agent token only (it can join agents, never servers). Idempotent like the
# controller's script.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh disable=SC1091  # checked on its own; written beside this script
. "$HERE/common.sh"
load_config
: "${CONTROLLER_IP:?}" "${NODE_GROUP:?}"

install_packages nfs-common -- nfs-utils
install_k3s agent \
    --server "https://$CONTROLLER_IP:6443" \
    --token-file "$AGENT_TOKEN_FILE" \
    --node-label "clusterous.io/group=$NODE_GROUP"
log "node of group $NODE_GROUP joined (k3s agent installed)"
