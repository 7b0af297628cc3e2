"""A root sandbox that runs the bootstrap scripts against real file-system state.

The recording stand-ins of tests/test_bootstrap.py show which commands the scripts call; this
sandbox shows what those commands *do*: a real ext4 file system made by the real mkfs.ext4 on a
real block device (a loop device over a sparse file, standing for the EBS volume), mounted by the
real mount(8) from the fstab line the script wrote, with real ownership and modes that a process
of another uid (setpriv) can or cannot write through.

How it is built (DESIGN §6, "Node bootstrap"):

- a private mount namespace (``unshare --mount --propagation private``) held open by a sleeping
  process; every step enters it with ``nsenter --mount``, so nothing mounted here is ever seen by
  the host;
- in it, a fresh instance's root: a tmpfs with the host's ``/usr`` bound read-only (the real
  tools), its own ``/etc`` (an Ubuntu-like passwd with ``ubuntu`` = uid 1000, a cloud image's
  fstab, no exports), its own ``/dev`` (a tmpfs holding only null/zero/urandom and the volume's
  device under its NVMe names), empty ``/var``, ``/run``, ``/tmp`` and ``/usr/local``; the scripts
  run ``chroot``-ed into it with their real paths (/etc/fstab, /etc/exports, /export/shared,
  /dev/disk/by-id/...), so the product scripts need no test-only knobs;
- stand-ins only for what cannot run here, in ``/usr/local/sbin`` (first on the PATH): ``curl``
  (GitHub: it serves files from a folder; the k3s installer there records its arguments and
  installs a ``k3s`` printing its version; the settings pin that installer's sha256),
  ``systemctl``, ``exportfs`` (no nfsd in a test machine), ``apt-get``, ``dnf`` and ``sysctl``
  (``/proc`` is the host's). Each records its argv in ``/var/log/standins.log``. ``curl`` also
  plays the EC2 metadata service as IMDSv2 answers: a session token only for a PUT with a TTL
  header, every other path only with that token, from ``/var/lib/standin-imds`` (``tag``: the
  instance's tags as IMDS shows them; a node reads the server CA's hash there).
  ``run`` runs the bootstrap unit's ExecStart once.

Requirements: root, ``unshare``/``nsenter`` (util-linux), and for volumes loop devices
(``losetup``, package ``mount``), ``mkfs.ext4`` (e2fsprogs) and ``sfdisk`` (fdisk). When one is
missing the test is skipped with the reason, except under CI=true, where it fails (as
tests/harness/tools.py does for missing tools). No fixtures here: tests/test_bootstrap_sandbox.py
defines the one it uses.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STANDIN_LOG = "/var/log/standins.log"
NVME_DEVICE = "/dev/nvme1n1"  # the name the kernel gives a Nitro instance's second EBS volume
VOLUME_SIZE = "64M"  # sparse; real mkfs.ext4 formats it in a few milliseconds
TIMEOUT = 60

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = "root:x:0:\nubuntu:x:1000:\nnogroup:x:65534:\n"
# An Ubuntu 24.04 cloud image's fstab: the script must add its line and keep these.
FSTAB = """\
LABEL=cloudimg-rootfs\t/\text4\tdiscard,commit=30,errors=remount-ro\t0 1
LABEL=BOOT\t/boot\text4\tdefaults\t0 2
LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1
"""

RECORD = f'log={STANDIN_LOG}; printf "%s" "$(basename "$0")" >>$log; printf " %s" "$@" >>$log; echo >>$log\n'
WEB = "/var/lib/standin-web"  # what the GitHub URLs serve, by the URL's last part
IMDS = "/var/lib/standin-imds"  # what the instance metadata service serves, by path
CA_HASH_TAG = "clusterous:k3s-ca-hash"
CA_DIGEST = hashlib.sha256(b"the controller's CA bundle\n").hexdigest()  # `up` tagged it already
# The k3s installer served at the pinned URL: records its arguments and the INSTALL_K3S_*
# settings, and installs a k3s that reports the version asked for.
INSTALLER = r"""#!/bin/sh
{ printf 'k3s-installer'; printf ' %s' "$@"; echo; env | grep '^INSTALL_K3S_' | sed 's/^/  env: /'; } >>/var/log/standins.log
printf '#!/bin/sh\necho "k3s version %s (0000)"\n' "$INSTALL_K3S_VERSION" >/usr/local/bin/k3s
chmod 0755 /usr/local/bin/k3s
"""
AIRGAP_ARCHIVE = "k3s system images\n"  # the release's k3s-airgap-images-<arch>.tar.zst, here
STAND_INS = {
    # GitHub: `curl ... -o FILE URL` copies WEB/<last part of URL>, or fails like curl -f on a 404.
    "curl": f"""
out=""; url=""; method=GET; ttl=""; session=""
while [ $# -gt 0 ]; do case "$1" in
    -o) out="$2"; shift ;;
    -X) method="$2"; shift ;;
    -H) case "$2" in
            X-aws-ec2-metadata-token-ttl-seconds:*) ttl="${{2#*: }}" ;;
            X-aws-ec2-metadata-token:*) session="${{2#*: }}" ;;
        esac; shift ;;
    http*) url="$1" ;;
esac; shift; done
case "$url" in http://169.254.169.254/*)
    path="${{url#http://169.254.169.254}}"
    if [ "$path" = /latest/api/token ]; then
        [ "$method" = PUT ] && [ -n "$ttl" ] || exit 22
        echo imds-session-token; exit 0
    fi
    [ "$session" = imds-session-token ] && [ -f "{IMDS}$path" ] || exit 22
    cat "{IMDS}$path"; exit 0 ;;
esac
[ -e "{WEB}/$(basename "$url")" ] || exit 22
cat "{WEB}/$(basename "$url")" >"$out"
""",
    "systemctl": "",
    "exportfs": "",
    "apt-get": "",
    "dnf": "",
    "sysctl": "",  # never the host's kernel settings: /proc is the host's
}

# Runs inside the namespace (not yet chroot-ed) with the sandbox root as $1.
SETUP = r"""
set -eu
R="$1"
mount -t tmpfs -o mode=0755 clusterous-sandbox "$R"
cd "$R"
mkdir -p usr etc dev proc sys run tmp var/lib var/log root home/ubuntu mnt
chmod 1777 tmp
chown 1000:1000 home/ubuntu
mount --bind /usr usr
mount -o remount,bind,ro usr
mount -t tmpfs -o mode=0755 usr-local usr/local
mkdir -p usr/local/bin usr/local/sbin usr/local/lib
for d in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$d" ]; then
        ln -s "$(readlink "/$d")" "$d"
    elif [ -d "/$d" ]; then
        mkdir "$d"
        mount --bind "/$d" "$d"
        mount -o remount,bind,ro "$d"
    fi
done
mount --bind /proc proc
mount --bind /sys sys
mount -o remount,bind,ro sys
mount -t tmpfs -o mode=0755 sandbox-dev dev
for node in null zero full random urandom; do
    touch "dev/$node"
    mount --bind "/dev/$node" "dev/$node"
done
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout
ln -s /proc/self/fd/2 dev/stderr
for f in ld.so.cache ld.so.conf mke2fs.conf nsswitch.conf; do
    if [ -e "/etc/$f" ]; then cp -p "/etc/$f" etc/; fi
done
for d in ld.so.conf.d alternatives; do  # alternatives: /usr/bin/awk -> /etc/alternatives/awk
    if [ -d "/etc/$d" ]; then cp -a "/etc/$d" etc/; fi
done
ln -s ../proc/self/mounts etc/mtab
touch "var/log/standins.log"
"""


def requirement(what: str) -> None:
    """Skip locally, fail in CI: a sandbox test that could not run never counts as passing."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: required in CI (root on a Debian machine; .ci/run installs the packages)")
    pytest.skip(f"{what}: not available here")


def require_root_namespace() -> None:
    if os.geteuid() != 0:
        requirement("root (the bootstrap sandbox mounts file systems)")
    for tool in ("unshare", "nsenter", "chroot", "mount", "setpriv"):
        if not shutil.which(tool):
            requirement(f"{tool} (util-linux / coreutils)")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        requirement(f"a private mount namespace (unshare --mount: {probe.stderr.strip()})")


def require_loop_devices() -> None:
    for tool, package in (("losetup", "mount"), ("mkfs.ext4", "e2fsprogs"), ("blkid", "util-linux"),
                          ("sfdisk", "fdisk")):  # fmt: skip
        if not shutil.which(tool):
            requirement(f"{tool} (apt-get install {package})")
    free = subprocess.run(["losetup", "--find"], capture_output=True, text=True)
    if free.returncode != 0:
        requirement(f"loop devices (losetup --find: {free.stderr.strip()})")


class Sandbox:
    """A fresh instance's root in a private mount namespace; see the module docstring."""

    def __init__(self, workdir: Path):
        require_root_namespace()
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"  # a tmpfs inside the namespace; an empty dir outside
        self.root.mkdir(parents=True)
        self.loops: list[str] = []
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "echo ready; exec sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready = self._holder.stdout.readline().strip()
        own = os.readlink("/proc/self/ns/mnt")
        if ready != "ready" or os.readlink(f"/proc/{self._holder.pid}/ns/mnt") == own:
            self.close()
            raise RuntimeError("the sandbox's mount namespace did not come up")
        try:
            self._host(["sh", "-c", SETUP, "sh", str(self.root)])
            files = {
                "/etc/passwd": (PASSWD, "0644"),
                "/etc/group": (GROUP, "0644"),
                "/etc/fstab": (FSTAB, "0644"),
            }
            for name, body in STAND_INS.items():
                files[f"/usr/local/sbin/{name}"] = ("#!/bin/sh\n" + RECORD + body, "0755")
            files[f"{WEB}/install.sh"] = (INSTALLER, "0644")
            arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
            digest = hashlib.sha256(AIRGAP_ARCHIVE.encode()).hexdigest()
            files[f"{WEB}/k3s-airgap-images-{arch}.tar.zst"] = (AIRGAP_ARCHIVE, "0644")
            files[f"{WEB}/sha256sum-{arch}.txt"] = (f"{digest}  k3s-airgap-images-{arch}.tar.zst\n", "0644")
            files[f"{IMDS}/latest/meta-data/tags/instance/{CA_HASH_TAG}"] = (CA_DIGEST, "0644")
            self.write_files(files)
        except BaseException:
            self.close()
            raise

    # ---- running things ---------------------------------------------------------------------

    def _host(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """argv inside the namespace, not chroot-ed (for setting the sandbox up)."""
        result = subprocess.run(
            ["nsenter", "--target", str(self._holder.pid), "--mount", "--", *argv],
            capture_output=True, text=True, timeout=TIMEOUT, **kwargs,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"sandbox setup failed: {argv}: {result.stderr}")
        return result

    def exec(
        self, argv: list[str], *, uid: int | None = None, gids: tuple[int, ...] = (), env=None, input=None
    ) -> subprocess.CompletedProcess:
        """argv inside the sandbox (chroot-ed, clean environment), as root or as another uid.

        With uid, the process runs as uid:uid with exactly the supplementary groups `gids`
        (setpriv --clear-groups when there are none), like a container's non-root user."""
        environ = ["env", "-i", f"PATH={SANDBOX_PATH}", "HOME=/root", "LANG=C.UTF-8"]
        environ += [f"{key}={value}" for key, value in (env or {}).items()]
        if uid is not None:
            groups = ["--groups", ",".join(map(str, gids))] if gids else ["--clear-groups"]
            argv = ["setpriv", "--reuid", str(uid), "--regid", str(uid), *groups, *argv]
        return subprocess.run(
            ["nsenter", "--target", str(self._holder.pid), "--mount", "--", "chroot", str(self.root),
             *environ, *argv],
            capture_output=True, text=not isinstance(input, bytes), timeout=TIMEOUT, input=input,
        )  # fmt: skip

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.exec(["sh", "-c", script], **kwargs)

    def check(self, script: str, **kwargs) -> str:
        result = self.sh(script, **kwargs)
        if result.returncode != 0:
            raise AssertionError(f"in the sandbox: {script!r} failed: {result.stderr}")
        return result.stdout

    # ---- files ------------------------------------------------------------------------------

    def write_files(self, files: dict[str, tuple[str, str]]) -> None:
        """Write {path: (content, octal mode)} into the sandbox as root, in one step (a tar)."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, (content, mode) in files.items():
                data = content.encode()
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode = len(data), int(mode, 8)
                tar.addfile(info, io.BytesIO(data))
        result = self.exec(["tar", "-x", "-C", "/", "-f", "-"], input=archive.getvalue())
        if result.returncode != 0:
            raise RuntimeError(f"writing {sorted(files)} in the sandbox failed: {result.stderr}")

    def write(self, path: str, content: str, mode: str = "0644") -> None:
        self.write_files({path: (content, mode)})

    def read(self, path: str) -> str:
        result = self.exec(["cat", path])
        return result.stdout if result.returncode == 0 else ""

    def exists(self, path: str) -> bool:
        return self.exec(["test", "-e", path]).returncode == 0

    def stat(self, path: str) -> tuple[int, int, int]:
        """(uid, gid, permission bits) of path in the sandbox."""
        uid, gid, mode = self.check(f"stat -c '%u %g %a' {shlex.quote(path)}").split()
        return int(uid), int(gid), int(mode, 8)

    def unpack(self, user_data: str) -> dict:
        """What cloud-init's write_files does with the user-data, inside the sandbox; the
        settings pin the sha256 of the installer this sandbox's GitHub serves."""
        config = yaml.safe_load(user_data)
        files = {}
        for entry in config["write_files"]:
            content = entry["content"]
            if entry.get("encoding") == "gz+b64":
                content = gzip.decompress(base64.b64decode(content)).decode()
            if entry["path"] == "/etc/clusterous/bootstrap.env":
                ours = hashlib.sha256(INSTALLER.encode()).hexdigest()
                content = re.sub(r"(?m)^K3S_INSTALL_SHA256=.*$", f"K3S_INSTALL_SHA256={ours}", content)
            files[entry["path"]] = (content, entry["permissions"])
        self.write_files(files)
        return config

    def run(self, config: dict, **env: str) -> subprocess.CompletedProcess:
        """One run of the bootstrap unit's ExecStart (what runcmd starts), as systemd runs it."""
        (unit,) = [
            e["content"] for e in config["write_files"] if e["path"].endswith("/clusterous-bootstrap.service")
        ]
        (command,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
        return self.exec([command], env=env)

    def publish(self, name: str, data: bytes) -> None:
        """Serve data at every GitHub URL ending in /name."""
        self.write_files({f"{WEB}/{name}": (data.decode(), "0644")})

    def tag(self, key: str, value: str | None) -> None:
        """The instance's tag as IMDS shows it (instance tags in metadata on), or none (None)."""
        path = f"{IMDS}/latest/meta-data/tags/instance/{key}"
        if value is None:
            self.check(f"rm -f -- {shlex.quote(path)}")
        else:
            self.write(path, value)

    def calls(self, name: str) -> list[str]:
        return [line for line in self.read(STANDIN_LOG).splitlines() if line.split(" ", 1)[0] == name]

    # ---- the shared volume ------------------------------------------------------------------

    def attach_volume(self, by_id_link: str) -> str:
        """A blank block device under the names EC2 gives an attached EBS volume.

        A sparse file on a loop device, seen in the sandbox as NVME_DEVICE, as by_id_link (a
        symlink to it, like udev's /dev/disk/by-id link) and as its own /dev/loopN (the name
        /proc/partitions gives it, which mount(8) needs to resolve UUID= in fstab).
        Returns the device's path in the sandbox."""
        require_loop_devices()
        image = self.workdir / f"ebs-{len(self.loops)}.img"
        image.write_bytes(b"")
        os.truncate(image, _size(VOLUME_SIZE))
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=TIMEOUT
        )
        if loop.returncode != 0:
            requirement(f"a free loop device (losetup: {loop.stderr.strip()})")
        device = loop.stdout.strip()
        self.loops.append(device)
        script = r"""
set -eu
R="$1"; loop="$2"; nvme="$3"; link="$4"
for name in "$loop" "$nvme"; do
    touch "$R$name"
    mount --bind "$loop" "$R$name"
done
mkdir -p "$R$(dirname "$link")"
ln -s "$nvme" "$R$link"
"""
        self._host(["sh", "-c", script, "sh", str(self.root), device, NVME_DEVICE, by_id_link])
        return NVME_DEVICE

    def head_and_tail(self, device: str = NVME_DEVICE) -> str:
        """A digest of the device's first and last MiB (partition tables and GPT's backup)."""
        return self.check(f"{{ head -c 1048576 {device}; tail -c 1048576 {device}; }} | sha256sum").split()[0]

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Unmount everything, end the namespace (our own holder process only), free the loops."""
        if self._holder.poll() is None:
            subprocess.run(
                ["nsenter", "--target", str(self._holder.pid), "--mount", "--", "umount", "--recursive",
                 str(self.root)],
                capture_output=True, timeout=TIMEOUT,
            )  # fmt: skip
            self._holder.kill()
        self._holder.wait(timeout=TIMEOUT)
        if self._holder.stdout:
            self._holder.stdout.close()
        for device in self.loops:
            subprocess.run(["losetup", "--detach", device], capture_output=True, timeout=TIMEOUT)
        self.loops.clear()


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
