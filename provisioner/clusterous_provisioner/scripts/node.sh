#!/usr/bin/env bash
# Node bootstrap: NFS client and the pinned k3s agent joining the controller, labelled with
# its group, with the agent token only (it can join agents, never servers) in k3s' secure form
# K10<server CA hash>::node:<agent token>, so the agent checks the server's CA before it sends
# the token. The hash comes from this instance's own tag (IMDS), which `up` sets once the
# controller's k3s runs. Idempotent like the controller's script.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh disable=SC1091  # checked on its own; written beside this script
. "$HERE/common.sh"
load_config
: "${CONTROLLER_IP:?}" "${NODE_GROUP:?}" "${CA_HASH_TAG:?}"
IMDS="http://169.254.169.254"
# The agent's token file as k3s reads it: written here (0600), never in user-data.
JOIN_TOKEN_FILE="/etc/clusterous/k3s-join-token"
JOIN_ATTEMPTS="${CLUSTEROUS_JOIN_ATTEMPTS:-40}"  # looks per run, RETRY_DELAY apart; the unit retries

# imds PATH: one IMDSv2 read (a session token first: IMDSv1 is off on every instance).
imds() {
    local session
    session="$(curl -sf --max-time 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" \
        "$IMDS/latest/api/token")" || return 1
    curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $session" "$IMDS/latest/meta-data/$1"
}

# write_join_token: waits until `up` has tagged this instance with the SHA-256 of the server's CA
# (k3s' K10 hash; tags in IMDS are on for our instances) and writes the secure agent token. The
# agent token is read and written by shell builtins only: never on a command line. Kept once
# written (a reboot joins again with it).
write_join_token() {
    local file="$ROOT$JOIN_TOKEN_FILE" hash="" agent look=1
    [ -s "$file" ] && return 0
    until hash="$(imds "tags/instance/$CA_HASH_TAG")" && [[ "$hash" =~ ^[0-9a-f]{64}$ ]]; do
        if [ "$look" -ge "$JOIN_ATTEMPTS" ]; then
            log "no server CA hash in tag $CA_HASH_TAG after $look looks: \`clusterous-k8s up\` sets it" >&2
            return 1
        fi
        log "waiting for tag $CA_HASH_TAG (the server CA's hash, set by \`clusterous-k8s up\`): look $look of $JOIN_ATTEMPTS"
        sleep "$RETRY_DELAY"
        look=$((look + 1))
    done
    IFS= read -r agent <"$ROOT$AGENT_TOKEN_FILE"
    (umask 077 && printf 'K10%s::node:%s\n' "$hash" "$agent" >"$file.part")
    mv "$file.part" "$file"
    log "server CA hash $hash: joining with the secure agent token"
}

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
    --token-file "$JOIN_TOKEN_FILE" \
    --with-node-id \
    --node-label "clusterous.io/group=$NODE_GROUP" \
    "${kubelet[@]}"
write_join_token
# installed enabled but not started (install_k3s): it starts with its token, or restarts on a new k3s
if [ "$K3S_CHANGED" = 1 ]; then systemctl restart k3s-agent.service; else systemctl start k3s-agent.service; fi
bootstrap_done "node of group $NODE_GROUP joined (k3s agent installed)"
