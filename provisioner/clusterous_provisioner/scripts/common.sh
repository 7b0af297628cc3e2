# shellcheck shell=bash
# Shared helpers of the clusterous bootstrap scripts (sourced, never run alone).
#
# Every path is under CLUSTEROUS_ROOT (empty on a real instance) so tests run the scripts
# unprivileged in a temporary directory with the system commands replaced by stand-ins.
# Nothing here ever reads or prints a k3s token: k3s reads them from their 0600 files.

ROOT="${CLUSTEROUS_ROOT:-}"
CONF_DIR="$ROOT/etc/clusterous"
STATE_DIR="$ROOT/var/lib/clusterous"
# As k3s sees them on the instance. The agent token comes in the user-data of every role; the
# server token (cluster-admin equivalent) only ever exists on the controller, which makes it.
# shellcheck disable=SC2034  # used by the scripts that source this file
AGENT_TOKEN_FILE="/etc/clusterous/k3s-agent-token"
# shellcheck disable=SC2034  # used by the scripts that source this file
SERVER_TOKEN_FILE="/etc/clusterous/k3s-server-token"

log() { printf 'clusterous-bootstrap: %s\n' "$*"; }

load_config() {
    # bootstrap.env holds plain settings only (never a token).
    # shellcheck source=/dev/null
    . "$CONF_DIR/bootstrap.env"
    : "${K3S_VERSION:?}" "${OS_FAMILY:?}"
    mkdir -p "$STATE_DIR"
}

# install_packages UBUNTU_PKGS -- AL2023_PKGS: once per instance (a marker makes reboots no-ops).
install_packages() {
    local marker="$STATE_DIR/packages.done" apt_pkgs=() dnf_pkgs=() side=apt
    [ -e "$marker" ] && return 0
    for arg in "$@"; do
        if [ "$arg" = "--" ]; then side=dnf; continue; fi
        if [ "$side" = apt ]; then apt_pkgs+=("$arg"); else dnf_pkgs+=("$arg"); fi
    done
    case "$OS_FAMILY" in
        ubuntu)
            DEBIAN_FRONTEND=noninteractive apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_pkgs[@]}"
            ;;
        al2023) dnf install -y -q "${dnf_pkgs[@]}" ;;
        *) log "unknown OS family $OS_FAMILY"; return 1 ;;
    esac
    touch "$marker"
}

# install_k3s ARGS...: the pinned version, skipped when exactly that version is installed.
install_k3s() {
    local installed="" installer="$STATE_DIR/k3s-install.sh"
    if command -v k3s >/dev/null 2>&1; then
        installed="$(k3s --version 2>/dev/null | awk 'NR==1 {print $3}')"
    fi
    if [ "$installed" = "$K3S_VERSION" ]; then
        log "k3s $K3S_VERSION already installed"
        return 0
    fi
    log "installing k3s $K3S_VERSION ($1)"
    curl -sfL --retry 10 --retry-connrefused --retry-delay 5 -o "$installer" "${K3S_INSTALL_URL:-https://get.k3s.io}"
    local skip_selinux=false
    [ "$OS_FAMILY" = al2023 ] && skip_selinux=true
    INSTALL_K3S_VERSION="$K3S_VERSION" INSTALL_K3S_SKIP_SELINUX_RPM="$skip_selinux" sh "$installer" "$@"
}
