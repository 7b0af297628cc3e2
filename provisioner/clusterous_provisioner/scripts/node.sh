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

# Rootless BuildKit (the build Jobs run on nodes) creates a user namespace as an unprivileged,
# AppArmor-unconfined process. Ubuntu 24.04 sets kernel.apparmor_restrict_unprivileged_userns=1,
# which gives such a namespace no capabilities, and rootlesskit then fails; the drop-in turns
# that Ubuntu-only restriction off on nodes (docs/nodes-and-addons.md, "Rootless builds").
# Amazon Linux 2023 has no AppArmor; it only needs user namespaces enabled at all.
allow_rootless_builds() {
    local conf="$ROOT/etc/sysctl.d/60-clusterous-rootless-builds.conf" setting
    case "$OS_FAMILY" in
        ubuntu) setting="kernel.apparmor_restrict_unprivileged_userns = 0" ;;
        *)
            [ "$(cat "$ROOT/proc/sys/user/max_user_namespaces" 2>/dev/null)" = 0 ] || return 0
            setting="user.max_user_namespaces = 28633"
            ;;
    esac
    mkdir -p "$(dirname "$conf")"
    printf '# clusterous: rootless BuildKit build Jobs need user namespaces\n%s\n' "$setting" >"$conf"
    sysctl -p "$conf"
}

install_packages nfs-common -- nfs-utils
allow_rootless_builds
preload_k3s_images
reservations="$(kubelet_args)"
mapfile -t kubelet <<<"$reservations"
install_k3s agent \
    --server "https://$CONTROLLER_IP:6443" \
    --token-file "$AGENT_TOKEN_FILE" \
    --with-node-id \
    --node-label "clusterous.io/group=$NODE_GROUP" \
    "${kubelet[@]}"
bootstrap_done "node of group $NODE_GROUP joined (k3s agent installed)"
