#!/usr/bin/env bash
# Controller bootstrap: shared EBS volume (format only if blank) exported over NFS to the VPC,
# then the pinned k3s server, tainted so application pods stay off it.
# Idempotent: a re-run (reboot, `cloud-init clean`) finds everything in place and changes nothing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh disable=SC1091  # checked on its own; written beside this script
. "$HERE/common.sh"
load_config
: "${CONTROLLER_IP:?}" "${VPC_CIDR:?}"

SHARED_DIR="${SHARED_DIR:-/export/shared}"
MNT="$ROOT$SHARED_DIR"
FSTAB="$ROOT/etc/fstab"
EXPORTS="$ROOT/etc/exports"
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

setup_shared_volume() {
    mkdir -p "$MNT"
    if [ -z "${SHARED_VOLUME_ID:-}" ]; then
        log "no shared volume id: exporting $SHARED_DIR from the root disk"
        return 0
    fi
    local device fstype uuid
    device="$(find_device)"
    fstype="$(blkid -o value -s TYPE "$device" || true)"
    if [ -z "$fstype" ]; then
        log "formatting blank shared volume $SHARED_VOLUME_ID as $SHARED_FS"
        "mkfs.$SHARED_FS" -L clusterous "$device"
        fstype="$SHARED_FS"
    else
        log "shared volume $SHARED_VOLUME_ID already has a $fstype filesystem: kept"
    fi
    uuid="$(blkid -o value -s UUID "$device")"
    if ! grep -qsE "^[^#]*[[:space:]]${SHARED_DIR}[[:space:]]" "$FSTAB"; then
        printf 'UUID=%s %s %s defaults,nofail 0 2\n' "$uuid" "$SHARED_DIR" "$fstype" >>"$FSTAB"
    fi
    if ! mountpoint -q "$MNT"; then
        mount "$MNT"
    fi
}

# The shared root read-write; its parent read-only (crossmnt), which the NFS provisioner mounts
# to reach the root as a fixed sub-directory (see manifests/storage-classes.yaml).
export_shared_volume() {
    local line
    mkdir -p "$MNT/.private"
    for line in \
        "$SHARED_DIR $VPC_CIDR(rw,sync,no_subtree_check,no_root_squash)" \
        "$(dirname "$SHARED_DIR") $VPC_CIDR(ro,sync,no_subtree_check,crossmnt)"; do
        if ! grep -qsF "$line" "$EXPORTS"; then
            printf '%s\n' "$line" >>"$EXPORTS"
        fi
    done
    systemctl enable --now nfs-server
    exportfs -ra
}

install_packages nfs-kernel-server -- nfs-utils
setup_shared_volume
export_shared_volume
install_k3s server \
    --token-file "$TOKEN_FILE" \
    --node-ip "$CONTROLLER_IP" \
    --advertise-address "$CONTROLLER_IP" \
    --tls-san 127.0.0.1 --tls-san localhost --tls-san "$CONTROLLER_IP" \
    --node-taint clusterous.io/controller=true:NoSchedule \
    --write-kubeconfig-mode 0600 \
    --disable traefik
log "controller ready for k3s to start"
