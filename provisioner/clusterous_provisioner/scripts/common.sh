# shellcheck shell=bash
# Shared helpers of the clusterous bootstrap scripts (sourced, never run alone).
#
# The scripts run as the systemd unit clusterous-bootstrap.service, which systemd restarts
# after a failure until one run succeeds; so every step is idempotent and a failing step just
# fails the run (the journal keeps every attempt: journalctl -u clusterous-bootstrap).
#
# Every path is under CLUSTEROUS_ROOT (empty on a real instance) so tests run the scripts
# unprivileged in a temporary directory with the system commands replaced by stand-ins.
# Nothing here ever reads or prints a k3s token: k3s reads them from their 0600 files.

ROOT="${CLUSTEROUS_ROOT:-}"
CONF_DIR="$ROOT/etc/clusterous"
STATE_DIR="$ROOT/var/lib/clusterous"
# As k3s sees them on the instance. The agent token comes in the user-data of every role (a node
# joins with it in the K10 form node.sh writes); the server token (cluster-admin equivalent)
# only ever exists on the controller, which makes it.
# shellcheck disable=SC2034  # used by the scripts that source this file
AGENT_TOKEN_FILE="/etc/clusterous/k3s-agent-token"
# shellcheck disable=SC2034  # used by the scripts that source this file
SERVER_TOKEN_FILE="/etc/clusterous/k3s-server-token"
K3S_IMAGES_DIR="$ROOT/var/lib/rancher/k3s/agent/images"
# Bounded retries of network steps inside one run (the unit's restarts come on top).
ATTEMPTS="${CLUSTEROUS_ATTEMPTS:-5}"
RETRY_DELAY="${CLUSTEROUS_RETRY_DELAY:-15}"
APT_LOCK_WAIT="${CLUSTEROUS_APT_LOCK_WAIT:-600}"  # seconds apt waits for dpkg's lock

log() { printf 'clusterous-bootstrap: %s\n' "$*"; }

# bootstrap_done MESSAGE: the run succeeded. `up` waits for this marker (cloud-init finishes as
# soon as it has started the unit, so cloud-init's result says nothing about the bootstrap).
bootstrap_done() {
    : >"$STATE_DIR/bootstrap.done"  # its mtime says when
    log "$1"
}

load_config() {
    # bootstrap.env holds plain settings only (never a token).
    # shellcheck source=/dev/null
    . "$CONF_DIR/bootstrap.env"
    : "${K3S_VERSION:?}" "${OS_FAMILY:?}" "${K3S_INSTALL_URL:?}" "${K3S_INSTALL_SHA256:?}"
    mkdir -p "$STATE_DIR"
}

# retry COMMAND...: COMMAND until it succeeds, at most ATTEMPTS times, RETRY_DELAY seconds
# apart; its last exit status when every attempt failed.
retry() {
    local attempt=1 rc
    while :; do
        "$@" && return 0
        rc=$?
        if [ "$attempt" -ge "$ATTEMPTS" ]; then
            log "$1 failed $attempt times (last exit $rc): giving up this run" >&2
            return "$rc"
        fi
        log "$1 failed (exit $rc, attempt $attempt of $ATTEMPTS): again in ${RETRY_DELAY}s" >&2
        sleep "$RETRY_DELAY"
        attempt=$((attempt + 1))
    done
}

# apt-get that waits up to APT_LOCK_WAIT s for dpkg's lock (unattended-upgrades holds it on a
# fresh Ubuntu) instead of failing at once, and retries each download itself.
apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" \
        -o Acquire::Retries=3 "$@"
}

# install_packages UBUNTU_PKGS -- AL2023_PKGS: once per instance (a marker makes reboots no-ops).
# `-o APT::Update::Error-Mode=any` (what `apt-get update --error-on=any` sets) makes a mirror
# error fail the update (plain update only warns), so a transient one is retried; the retries
# also wait out apt-get update's own lists lock, which DPkg::Lock::Timeout may not cover.
install_packages() {
    local marker="$STATE_DIR/packages.done" apt_pkgs=() dnf_pkgs=() side=apt
    [ -e "$marker" ] && return 0
    for arg in "$@"; do
        if [ "$arg" = "--" ]; then side=dnf; continue; fi
        if [ "$side" = apt ]; then apt_pkgs+=("$arg"); else dnf_pkgs+=("$arg"); fi
    done
    case "$OS_FAMILY" in
        ubuntu)
            retry apt_get -o APT::Update::Error-Mode=any update
            retry apt_get install -y "${apt_pkgs[@]}"
            ;;
        al2023) retry dnf install -y -q --setopt=retries=5 "${dnf_pkgs[@]}" ;;
        *) log "unknown OS family $OS_FAMILY"; return 1 ;;
    esac
    touch "$marker"
}

# download URL FILE: curl with its own retries on connection and HTTP 5xx/429 errors.
download() {
    curl -sfL --retry 10 --retry-connrefused --retry-delay 5 -o "$2" "$1"
}

sha256_of() { sha256sum "$1" | awk '{print $1}'; }

k3s_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) log "unsupported architecture $(uname -m)" >&2; return 1 ;;
    esac
}

# preload_k3s_images: the pinned release's airgap image archive into k3s' images directory,
# which k3s imports into containerd when it starts, so its system images (pause, CoreDNS,
# metrics-server, local-path, klipper) are never pulled from Docker Hub. Verified against the
# release's own sha256sum-<arch>.txt; a mismatch fails the run. A failed download only costs
# the preload: k3s then pulls those images as it would anyway.
preload_k3s_images() {
    local arch name release sums file expected
    arch="$(k3s_arch)"
    name="k3s-airgap-images-$arch.tar.zst"
    release="${K3S_RELEASE_URL:-https://github.com/k3s-io/k3s/releases/download}/${K3S_VERSION//+/%2B}"
    file="$K3S_IMAGES_DIR/$name"
    sums="$STATE_DIR/sha256sum-$arch-$K3S_VERSION.txt"
    mkdir -p "$K3S_IMAGES_DIR"
    if ! [ -s "$sums" ] && ! retry download "$release/sha256sum-$arch.txt" "$sums"; then
        rm -f "$sums"
        log "k3s image checksums unavailable: k3s will pull its images instead"
        return 0
    fi
    expected="$(awk -v f="$name" '$2 == f {print $1}' "$sums")"
    if [ -z "$expected" ]; then
        log "$name is not in the release's checksums" >&2
        return 1
    fi
    if [ -s "$file" ] && [ "$(sha256_of "$file")" = "$expected" ]; then
        return 0
    fi
    if ! retry download "$release/$name" "$file.part"; then
        rm -f "$file.part"
        log "k3s images unavailable: k3s will pull its images instead"
        return 0
    fi
    if [ "$(sha256_of "$file.part")" != "$expected" ]; then
        rm -f "$file.part"
        log "$name does not match the release's sha256 $expected: refused" >&2
        return 1
    fi
    mv "$file.part" "$file"
    log "preloaded $name ($K3S_VERSION)"
}

# kubelet_reservations CPUS MEMORY_MIB: the kubelet flags (k3s --kubelet-arg) that keep CPU
# and memory for k3s, containerd and the OS out of what pods may request (node allocatable).
# kube-reserved follows GKE's tiers: CPU 6% of the first core, 1% of the second, 0.5% of the
# 3rd and 4th, 0.25% of each further core; memory 25% of the first 4 GiB, 20% of the next
# 4 GiB, 10% of the next 8 GiB, 6% of the next 112 GiB, 2% above 128 GiB. system-reserved is a
# fixed 50m / 100Mi (sshd, journald, NFS, the SSM agent); eviction-hard is the kubelet's own
# default, written out so the whole reservation is in one place. Rounded up.
kubelet_reservations() {
    local cpus="$1" memory="$2" quarter_m=0 core hundredths=0 left tier size percent take
    for ((core = 1; core <= cpus; core++)); do
        if [ "$core" -eq 1 ]; then quarter_m=$((quarter_m + 240))
        elif [ "$core" -eq 2 ]; then quarter_m=$((quarter_m + 40))
        elif [ "$core" -le 4 ]; then quarter_m=$((quarter_m + 20))
        else quarter_m=$((quarter_m + 10)); fi
    done
    left="$memory"
    for tier in 4096:25 4096:20 8192:10 114688:6 0:2; do
        size="${tier%:*}" percent="${tier#*:}" take="$left"
        if [ "$size" -gt 0 ] && [ "$take" -gt "$size" ]; then take="$size"; fi
        hundredths=$((hundredths + take * percent))
        left=$((left - take))
    done
    printf '%s\n' \
        "--kubelet-arg=kube-reserved=cpu=$(((quarter_m + 3) / 4))m,memory=$(((hundredths + 99) / 100))Mi" \
        "--kubelet-arg=system-reserved=cpu=50m,memory=100Mi" \
        "--kubelet-arg=eviction-hard=memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%"
}

# This instance's reservations: CPUs online and MemTotal (MiB).
kubelet_args() {
    local kib
    kib="$(awk '$1 == "MemTotal:" {print $2}' "$ROOT/proc/meminfo")"
    kubelet_reservations "$(nproc)" "$((kib / 1024))"
}

# install_k3s ARGS...: the pinned version, skipped when exactly that version is installed
# (K3S_CHANGED=1 when this run installed it). The installer is install.sh of a pinned k3s commit,
# run only when its sha256 is the pinned one; with INSTALL_K3S_VERSION set it downloads that
# release's k3s binary and checks it against the release's sha256sum-<arch>.txt before
# installing it. An agent is installed enabled but not started (INSTALL_K3S_SKIP_START): node.sh
# starts it once its join token is written.
K3S_CHANGED=0
install_k3s() {
    local installed="" installer="$STATE_DIR/k3s-install.sh" skip_start=false
    if command -v k3s >/dev/null 2>&1; then
        installed="$(k3s --version 2>/dev/null | awk 'NR==1 {print $3}')"
    fi
    if [ "$installed" = "$K3S_VERSION" ]; then
        log "k3s $K3S_VERSION already installed"
        return 0
    fi
    log "installing k3s $K3S_VERSION ($1)"
    retry download "$K3S_INSTALL_URL" "$installer"
    if [ "$(sha256_of "$installer")" != "$K3S_INSTALL_SHA256" ]; then
        rm -f "$installer"
        log "$K3S_INSTALL_URL does not have the pinned sha256 $K3S_INSTALL_SHA256: not run" >&2
        return 1
    fi
    local skip_selinux=false
    [ "$OS_FAMILY" = al2023 ] && skip_selinux=true
    [ "$1" = agent ] && skip_start=true
    INSTALL_K3S_VERSION="$K3S_VERSION" INSTALL_K3S_SKIP_SELINUX_RPM="$skip_selinux" \
        INSTALL_K3S_SKIP_START="$skip_start" sh "$installer" "$@"
    # shellcheck disable=SC2034  # read by node.sh
    K3S_CHANGED=1
}
