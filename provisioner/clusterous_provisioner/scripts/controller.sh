#!/usr/bin/env bash
# Controller bootstrap: shared EBS volume (format only if blank) exported over NFS to the VPC,
# then the pinned k3s server, tainted so application pods stay off it.
# Idempotent: a re-run (a retry after a failure, a reboot) finds everything done in place and
# changes nothing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh disable=SC1091  # checked on its own; written beside this script
. "$HERE/common.sh"
load_config
: "${CONTROLLER_IP:?}" "${VPC_CIDR:?}" "${SHARED_OWNER:?}"

SHARED_DIR="${SHARED_DIR:-/export/shared}"
MNT="$ROOT$SHARED_DIR"
FSTAB="$ROOT/etc/fstab"
DEVICE_WAIT="${CLUSTEROUS_DEVICE_WAIT:-600}"

# The attached volume's device: the by-id link on Nitro (NVMe), /dev/xvdf or /dev/sdf on Xen.
find_device() {
    local id="${SHARED_VOLUME_ID//-/}" waited=0 candidate
    while :; do
        for candidate in \
            "$ROOT/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$id" \
            "$ROOT/dev/xvdf" "$ROOT/dev/sdf"; do
            if [ -e "$candidate" ]; then
                readlink -f "$candidate"
                return 0
            fi
        done
        if [ "$waited" -ge "$DEVICE_WAIT" ]; then
            log "shared volume $SHARED_VOLUME_ID not attached after ${DEVICE_WAIT}s" >&2
            return 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# probe_volume DEVICE: the filesystem type on DEVICE, or nothing when the device is blank.
# Low-level probing (blkid -p) reads the device itself rather than blkid's cache and also
# reports partition tables and non-filesystem signatures. Anything that is neither a
# filesystem nor blank (a partition table, LVM, RAID, LUKS, swap, signatures blkid cannot tell
# apart) is refused: formatting it would destroy someone's data, mounting it cannot work.
probe_volume() {
    local device="$1" probe="" rc=0 fstype pttype usage
    probe="$(blkid -p -o export "$device")" || rc=$?
    case "$rc" in
        0) ;;
        2) return 0 ;;  # no signature of any kind: blank
        8) refuse_volume "$device" "signatures blkid cannot tell apart" ;;
        *) log "blkid -p $device failed (exit $rc)" >&2; return 1 ;;
    esac
    fstype="$(export_value TYPE "$probe")"
    pttype="$(export_value PTTYPE "$probe")"
    usage="$(export_value USAGE "$probe")"
    if [ -n "$pttype" ]; then
        refuse_volume "$device" "a $pttype partition table"
    fi
    if [ "$usage" != filesystem ] || [ -z "$fstype" ]; then
        refuse_volume "$device" "a ${fstype:-unknown} signature (${usage:-no usage}), not a filesystem"
    fi
    printf '%s\n' "$fstype"
}

export_value() { printf '%s\n' "$2" | sed -n "s/^$1=//p"; }

refuse_volume() {
    log "shared volume $SHARED_VOLUME_ID ($1) has $2: refusing to format or mount it." \
        "Use a blank volume or one with a filesystem on the whole device (no partitions)." >&2
    exit 1
}

# The shared root belongs to the login user (uid 1000 on Ubuntu 24.04 and Amazon Linux 2023),
# who runs put, run and build-context uploads over SSH, and every NFS client acts as that user
# (all_squash, below). mkfs leaves it root:root 0755, so a directory still owned by root is
# handed over: owner and group SHARED_OWNER, mode 0775 (the login user and its group write;
# everybody else reads). A root with any other owner is left as is.
own_by_login_user() {
    if [ "$(stat -c %u "$1")" = 0 ]; then
        chown "$SHARED_OWNER" "$1"
        chmod "$2" "$1"
        log "${1#"$ROOT"} handed to the login user ($SHARED_OWNER, mode $2)"
    fi
}

own_shared_root() { own_by_login_user "$MNT" 0775; }

setup_shared_volume() {
    mkdir -p "$MNT"
    if [ -z "${SHARED_VOLUME_ID:-}" ]; then
        log "no shared volume id: exporting $SHARED_DIR from the root disk"
        own_shared_root
        return 0
    fi
    local device fstype uuid
    device="$(find_device)"
    fstype="$(probe_volume "$device")"
    if [ -z "$fstype" ]; then
        log "formatting blank shared volume $SHARED_VOLUME_ID as $SHARED_FS"
        "mkfs.$SHARED_FS" -L clusterous "$device"
        fstype="$(probe_volume "$device")"
    else
        log "shared volume $SHARED_VOLUME_ID already has a $fstype filesystem: kept"
    fi
    uuid="$(export_value UUID "$(blkid -p -o export "$device")")"
    if ! grep -qsE "^[^#]*[[:space:]]${SHARED_DIR}[[:space:]]" "$FSTAB"; then
        printf 'UUID=%s %s %s defaults,nofail 0 2\n' "$uuid" "$SHARED_DIR" "$fstype" >>"$FSTAB"
    fi
    if ! mountpoint -q "$MNT"; then
        mount "$MNT"
    fi
    own_shared_root
}

# The shared root read-write; its parent read-only (crossmnt), which the NFS provisioner mounts
# to reach the root as a fixed sub-directory (see manifests/storage-classes.yaml). Every client
# request runs as the login user (all_squash,anonuid,anongid: root and any other uid alike), so
# a container's root is no one special on the volume and files stay the login user's.
# .private holds the private claims' directories, which csi-driver-nfs creates and deletes over
# NFS, so as the login user too. Our export lines live in their own file, rewritten each run.
export_shared_volume() {
    local exports="$ROOT/etc/exports.d/clusterous.exports" squash
    squash="all_squash,anonuid=${SHARED_OWNER%:*},anongid=${SHARED_OWNER#*:}"
    mkdir -p "$MNT/.private" "$(dirname "$exports")"
    own_by_login_user "$MNT/.private" 0755
    printf '%s\n' \
        "$SHARED_DIR $VPC_CIDR(rw,sync,no_subtree_check,$squash)" \
        "$(dirname "$SHARED_DIR") $VPC_CIDR(ro,sync,no_subtree_check,root_squash,crossmnt)" \
        >"$exports.new"
    mv "$exports.new" "$exports"
    systemctl enable --now nfs-server
    exportfs -ra
}

# The k3s server token: 32 random bytes (hex) made here at the first boot, kept across re-runs
# (k3s derives the key that encrypts its datastore's secrets from it, so it must never change),
# 0600 and never printed. It leaves this instance never: not in user-data, not in SSM. Agents
# join with the agent token (--agent-token-file), which cannot join servers.
ensure_server_token() {
    local file="$ROOT$SERVER_TOKEN_FILE"
    [ -s "$file" ] && return 0
    mkdir -p "$(dirname "$file")"
    (
        umask 077
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file.new"
        printf '\n' >>"$file.new"
    )
    mv "$file.new" "$file"
    log "generated the k3s server token ($SERVER_TOKEN_FILE, 0600)"
}

install_packages nfs-kernel-server -- nfs-utils
setup_shared_volume
export_shared_volume
ensure_server_token
preload_k3s_images
reservations="$(kubelet_args)"
mapfile -t kubelet <<<"$reservations"
install_k3s server \
    --token-file "$SERVER_TOKEN_FILE" \
    --agent-token-file "$AGENT_TOKEN_FILE" \
    --node-ip "$CONTROLLER_IP" \
    --advertise-address "$CONTROLLER_IP" \
    --tls-san 127.0.0.1 --tls-san localhost --tls-san "$CONTROLLER_IP" \
    --node-taint CriticalAddonsOnly=true:NoExecute \
    --write-kubeconfig-mode 0600 \
    --disable traefik \
    "${kubelet[@]}"
bootstrap_done "controller ready for k3s to start"
