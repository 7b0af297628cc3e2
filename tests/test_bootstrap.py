"""Node bootstrap and add-ons: what the instances run, checked without AWS or a cluster.

The rendered user-data is unpacked into a temporary root exactly as cloud-init's write_files
would, and its scripts run there with every system command they call replaced by a recording
stand-in on PATH (DESIGN §6). PATH holds nothing else but a few harmless core utilities, so a
command the scripts call without a stand-in fails the test instead of touching this machine.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from clusterous_core.errors import BadInput
from clusterous_provisioner import addons, code_bundle
from clusterous_provisioner.bootstrap import (
    ADDONS_FILE,
    AGENT_TOKEN_FILE,
    JOIN_TOKEN_FILE,
    K3S_INSTALL_SHA256,
    K3S_INSTALL_URL,
    REGISTRIES_FILE,
    SERVER_TOKEN_FILE,
    UNIT,
    UNIT_FILE,
    USER_DATA_LIMIT,
    BootstrapInputs,
    boot_manifests,
    check_k3s_version,
    render_controller,
    render_manifests,
    render_node,
    write_render_dir,
)
from tests.harness.k8s_controllers import tolerates
from tests.harness.tools import cloud_init_schema, shellcheck, system_tool, validate_k8s

AGENT_TOKEN = "agent-s3cr3t-0123456789abcdef0123456789abcdef"  # what SSM holds for the cluster
VOLUME = "vol-0abc123def4567890"
SCRIPTS = Path(__file__).resolve().parents[1] / "provisioner" / "clusterous_provisioner" / "scripts"
CORE_UTILS = ("bash", "sh", "grep", "awk", "mkdir", "readlink", "dirname", "basename", "touch", "cat",
              "rm", "mv", "env", "sort", "sed", "chmod", "stat", "od", "tr", "sha256sum", "uname")  # fmt: skip
STAND_INS = ("apt-get", "dnf", "curl", "blkid", "mkfs.ext4", "mkfs.xfs", "mount", "mountpoint",
             "exportfs", "systemctl", "sleep", "chown", "nproc", "sysctl")  # fmt: skip
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
AIRGAP = f"k3s-airgap-images-{ARCH}.tar.zst"
SUMS = f"sha256sum-{ARCH}.txt"
# what the stand-in instance reports: 2 CPUs (nproc) and a t3.large's MemTotal (8 GiB nominal)
MEMTOTAL_KIB = 8039272
EXPORTS_FILE = "/etc/exports.d/clusterous.exports"  # the controller's export lines, its own file
CA_HASH = "clusterous:k3s-ca-hash"  # the instance tag `up` writes the server CA's hash into
CA_DIGEST = hashlib.sha256(b"-----BEGIN CERTIFICATE-----\nthe controller's CA\n").hexdigest()


def make_inputs(**changes) -> BootstrapInputs:
    base = BootstrapInputs(
        cluster_name="demo",
        region="eu-west-1",
        k3s_version="v1.33.5+k3s1",
        agent_token=AGENT_TOKEN,
        controller_ip="10.42.1.10",
        vpc_cidr="10.42.0.0/16",
        shared_volume_id=VOLUME,
        bucket="clusterous-123456789012-eu-west-1",
        node_groups=["master", "worker"],
    )
    return replace(base, **changes)


# --------------------------------------------------------------------------------------------
# A fake instance: a root directory, stand-ins that log their argv, and the user-data unpacked.
# --------------------------------------------------------------------------------------------

RECORD = 'printf "%s" "$(basename "$0")" >>"$STANDIN_LOG"; printf " %s" "$@" >>"$STANDIN_LOG"; echo >>"$STANDIN_LOG"\n'
# A stand-in fails while $STANDIN_STATE/fail-<name> holds a count above 0 (one less each call).
FAIL = r"""
fails="$STANDIN_STATE/fail-$(basename "$0")"
if [ -s "$fails" ] && [ "$(cat "$fails")" -gt 0 ]; then
    echo $(($(cat "$fails") - 1)) >"$fails"; echo "$(basename "$0"): injected failure" >&2; exit 100
fi
"""

# The k3s installer a test's upstream serves: logs its arguments and the whole environment,
# installs a k3s stand-in that reports the version it was asked for.
INSTALLER = r"""#!/bin/sh
{ printf 'k3s-installer'; printf ' %s' "$@"; echo; env | sed 's/^/  env: /'; } >>"$STANDIN_LOG"
printf '#!/bin/sh\necho "k3s version %s (0000)"\n' "$INSTALL_K3S_VERSION" >"$STANDIN_BIN/k3s"
chmod +x "$STANDIN_BIN/k3s"
"""

BEHAVIOUR = {
    # GitHub, as far as the scripts see it: `curl ... -o FILE URL` writes $STANDIN_WEB/<last
    # part of URL>, or fails like curl -f on a 404; $STANDIN_STATE/fail-url-<name> fails it N times.
    # The EC2 metadata service as IMDSv2 answers (http://169.254.169.254/...): a session token
    # only for a PUT with a TTL header; every other path only with that token (else 401, which
    # curl -f exits 22 on), served from $STANDIN_IMDS/<path> (404 when absent).
    "curl": r"""
out=""; url=""; method=GET; ttl=""; session=""
while [ $# -gt 0 ]; do case "$1" in
    -o) out="$2"; shift ;;
    -X) method="$2"; shift ;;
    -H) case "$2" in
            X-aws-ec2-metadata-token-ttl-seconds:*) ttl="${2#*: }" ;;
            X-aws-ec2-metadata-token:*) session="${2#*: }" ;;
        esac; shift ;;
    http*) url="$1" ;;
esac; shift; done
name="$(basename "$url")"; fails="$STANDIN_STATE/fail-url-$name"
if [ -s "$fails" ] && [ "$(cat "$fails")" -gt 0 ]; then echo $(($(cat "$fails") - 1)) >"$fails"; exit 22; fi
case "$url" in http://169.254.169.254/*)
    path="${url#http://169.254.169.254}"
    if [ "$path" = /latest/api/token ]; then
        [ "$method" = PUT ] && [ -n "$ttl" ] || exit 22
        echo "imds-session-token"; exit 0
    fi
    [ "$session" = imds-session-token ] || exit 22
    [ -f "$STANDIN_IMDS$path" ] || exit 22
    cat "$STANDIN_IMDS$path"; exit 0 ;;
esac
[ -e "$STANDIN_WEB/$name" ] || exit 22
cat "$STANDIN_WEB/$name" >"$out"
""",
    # blkid -p -o export: the signature a test or mkfs left in the state file (KEY=VALUE lines)
    "blkid": r"""
for dev; do :; done
state="$STANDIN_STATE/fs-$(basename "$dev")"
[ -s "$state" ] || exit 2
echo UUID=0d3c5a1e-1111-4222-8333-444455556666
cat "$state"
""",
    "mkfs.ext4": 'for dev; do :; done\nprintf "TYPE=ext4\\nUSAGE=filesystem\\n" >"$STANDIN_STATE/fs-$(basename "$dev")"\n',
    "mkfs.xfs": 'for dev; do :; done\nprintf "TYPE=xfs\\nUSAGE=filesystem\\n" >"$STANDIN_STATE/fs-$(basename "$dev")"\n',
    "mount": 'for dir; do :; done\ntouch "$STANDIN_STATE/mounted-$(basename "$dir")"\n',
    "mountpoint": 'for dir; do :; done\n[ -e "$STANDIN_STATE/mounted-$(basename "$dir")" ]\n',
    "nproc": "echo 2\n",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unit_of(config: dict) -> dict[str, str]:
    """The bootstrap unit's settings (KEY -> value) from the user-data's write_files."""
    (entry,) = [e for e in config["write_files"] if e["path"] == UNIT_FILE]
    return dict(line.split("=", 1) for line in entry["content"].splitlines() if "=" in line)


class Instance:
    """A temporary root that user-data is unpacked into and bootstrap scripts run in."""

    def __init__(self, tmp: Path):
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        self.state = tmp / "state"
        self.web = tmp / "web"  # what the GitHub URLs serve
        self.imds = tmp / "imds"  # what the instance metadata service serves
        self.log = tmp / "standins.log"
        for folder in (self.root, self.bin, self.state, self.web, self.imds):
            folder.mkdir(parents=True)
        self.log.touch()
        for tool in CORE_UTILS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        for name in STAND_INS:
            script = self.bin / name
            script.write_text("#!/bin/sh\n" + RECORD + FAIL + BEHAVIOUR.get(name, ""))
            script.chmod(0o755)
        (self.root / "proc").mkdir()
        (self.root / "proc" / "meminfo").write_text(f"MemTotal:       {MEMTOTAL_KIB} kB\nMemFree: 1 kB\n")
        self.publish_release(b"zstd-compressed image archive\n")
        (self.web / "install.sh").write_text(INSTALLER)
        self.tag(CA_HASH, CA_DIGEST)  # `up` has tagged it already (the tests of waiting untag it)
        self.outputs: list[str] = []

    def tag(self, key: str, value: str | None) -> None:
        """The instance's tag `key` as IMDS shows it (tags in metadata on), or gone (None)."""
        path = self.imds / "latest/meta-data/tags/instance" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(value)  # IMDS answers a tag's value without a newline

    def publish_release(self, airgap: bytes, listed: bytes | None = None) -> None:
        """The k3s release's airgap archive and its sha256sum file (listing `listed`'s hash)."""
        (self.web / AIRGAP).write_bytes(airgap)
        (self.web / SUMS).write_text(f"{sha256(b'k3s')}  k3s\n{sha256(listed or airgap)}  {AIRGAP}\n")

    def fail(self, name: str, times: int) -> None:
        """The stand-in `name` (or URL file `url-<name>`) fails its next `times` calls."""
        (self.state / f"fail-{name}").write_text(f"{times}\n")

    def unpack(self, user_data: str, pin_installer: bool = True) -> dict:
        """What cloud-init's write_files does, under the root. With pin_installer, the settings
        pin the sha256 of the installer this test's upstream serves (the stand-in's)."""
        assert user_data.startswith("#cloud-config\n")
        config = yaml.safe_load(user_data)
        for entry in config["write_files"]:
            content = entry["content"]
            if entry.get("encoding") == "gz+b64":
                content = gzip.decompress(base64.b64decode(content)).decode()
            path = self.root / entry["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(int(entry["permissions"], 8))
        if pin_installer:
            settings = self.root / "etc/clusterous/bootstrap.env"
            ours = sha256((self.web / "install.sh").read_bytes())
            settings.write_text(settings.read_text().replace(K3S_INSTALL_SHA256, ours))
        return config

    def attach_volume(self, link: str) -> Path:
        device = self.root / "dev" / "nvme1n1"
        device.parent.mkdir(parents=True, exist_ok=True)
        device.touch()
        path = self.root / link.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path != device:
            path.symlink_to(device)
        return device

    def run(self, config: dict, **env) -> subprocess.CompletedProcess:
        """One run of the bootstrap unit's ExecStart, as root would run it on the instance."""
        assert config["runcmd"][-1] == ["systemctl", "start", "--no-block", UNIT]
        script = self.root / unit_of(config)["ExecStart"].lstrip("/")
        environ = {
            "PATH": str(self.bin),
            "CLUSTEROUS_ROOT": str(self.root),
            "STANDIN_LOG": str(self.log),
            "STANDIN_BIN": str(self.bin),
            "STANDIN_STATE": str(self.state),
            "STANDIN_WEB": str(self.web),
            "STANDIN_IMDS": str(self.imds),
            **env,
        }
        result = subprocess.run(
            [str(self.bin / "bash"), str(script)], env=environ, capture_output=True, text=True, timeout=60
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def run_unit(self, config: dict, between=lambda attempt: None, limit: int = 5, **env):
        """What systemd does with the unit: run it, and while a run fails and the unit says
        Restart=on-failure, call between(attempt) (the world changing meanwhile) and run again."""
        runs = [self.run(config, **env)]
        while runs[-1].returncode != 0 and unit_of(config)["Restart"] == "on-failure" and len(runs) < limit:
            between(len(runs))
            runs.append(self.run(config, **env))
        return runs

    def calls(self, name: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.split(" ", 1)[0] == name]

    def installer_args(self) -> list[str]:
        (line,) = self.calls("k3s-installer")
        return line.split()[1:]

    def installer_env(self) -> dict[str, str]:
        pairs = [
            line.removeprefix("  env: ").split("=", 1)
            for line in self.log.read_text().splitlines()
            if line.startswith("  env: ")
        ]
        return dict(pairs)

    def text(self, path: str) -> str:
        file = self.root / path.lstrip("/")
        return file.read_text() if file.exists() else ""


@pytest.fixture
def instance(tmp_path) -> Instance:
    return Instance(tmp_path)


def nvme_link(volume_id: str = VOLUME) -> str:
    return f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"


def boot_controller(instance: Instance, inputs: BootstrapInputs | None = None, **env):
    config = instance.unpack(render_controller(inputs or make_inputs()))
    return config, instance.run(config, **env)


# --------------------------------------------------------------------------------------------
# Static checks: cloud-init schema, shellcheck, Kubernetes schemas.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("os_name", ["ubuntu-24.04", "al2023"])
def test_every_user_data_passes_cloud_init_schema(tmp_path, os_name):
    written = write_render_dir(make_inputs(os=os_name), tmp_path)
    user_data = [path for path in written if path.suffix == ".user-data"]
    assert {path.stem for path in user_data} == {"controller", "master", "worker"}
    for path in user_data:
        result = cloud_init_schema(path)
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_every_script_passes_shellcheck(script):
    result = shellcheck(SCRIPTS / script)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_passes_kubernetes_validate():
    manifests = render_manifests(make_inputs())
    docs = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
    checked = validate_k8s(docs, skip_kinds={"ClusterKopfPeering"})
    assert checked == len(docs) - 1
    assert {doc["kind"] for doc in docs} >= {
        "Namespace", "CustomResourceDefinition", "ConfigMap", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Deployment", "DaemonSet", "Service", "StorageClass", "CSIDriver",
    }  # fmt: skip


def test_user_data_fits_ec2_limit_and_carries_every_boot_manifest(instance):
    inputs = make_inputs()
    user_data = render_controller(inputs)
    assert len(user_data.encode()) <= USER_DATA_LIMIT
    instance.unpack(user_data)
    shipped = instance.text(ADDONS_FILE)
    assert shipped == boot_manifests(inputs)
    shipped_docs = [doc for doc in yaml.safe_load_all(shipped) if doc]
    shipped_kinds = {doc["kind"] for doc in shipped_docs}
    assert {"CustomResourceDefinition", "StorageClass", "Deployment", "DaemonSet"} <= shipped_kinds
    # the operator's code is applied through the API instead (too big for user-data)
    assert code_bundle.OPERATOR.configmap not in {doc["metadata"]["name"] for doc in shipped_docs}


# --------------------------------------------------------------------------------------------
# The controller's script, run.
# --------------------------------------------------------------------------------------------


def test_controller_formats_a_blank_volume_mounts_and_exports_it(instance):
    device = instance.attach_volume(nvme_link())
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    (mkfs,) = instance.calls("mkfs.ext4")
    assert mkfs.endswith(str(device))
    fstab = instance.text("/etc/fstab").splitlines()
    assert len(fstab) == 1
    spec, mount_dir, fstype, options, *_ = fstab[0].split()
    assert spec.startswith("UUID=") and mount_dir == addons.SHARED_DIR and fstype == "ext4"
    assert "nofail" in options.split(",")
    assert instance.calls("mount") == [f"mount {instance.root}{addons.SHARED_DIR}"]
    exports = instance.text(EXPORTS_FILE)
    assert f"{addons.SHARED_DIR} 10.42.0.0/16(rw," in exports
    assert instance.text("/etc/exports") == ""  # the image's own file is left alone
    assert instance.calls("exportfs") == ["exportfs -ra"]
    assert "systemctl enable --now nfs-server" in instance.calls("systemctl")
    assert instance.calls("apt-get")[-1].split()[-1] == "nfs-kernel-server"


def test_controller_never_formats_a_volume_that_has_a_filesystem(instance):
    device = instance.attach_volume(nvme_link())
    (instance.state / f"fs-{device.name}").write_text("TYPE=xfs\nUSAGE=filesystem\n")
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    assert instance.calls("mkfs.ext4") == [] and instance.calls("mkfs.xfs") == []
    assert instance.text("/etc/fstab").split()[2] == "xfs"  # mounted as what it is
    assert "already has a xfs filesystem" in result.stdout


@pytest.mark.parametrize(
    "signature, named",
    [
        ("PTTYPE=gpt\nPTUUID=5c1e\n", "a gpt partition table"),
        ("TYPE=LVM2_member\nUSAGE=raid\n", "LVM2_member"),
    ],
)
def test_controller_refuses_a_volume_that_is_neither_blank_nor_a_filesystem(instance, signature, named):
    device = instance.attach_volume(nvme_link())
    (instance.state / f"fs-{device.name}").write_text(signature)
    _, result = boot_controller(instance)
    assert result.returncode != 0
    assert VOLUME in result.stderr and named in result.stderr and "refusing to format" in result.stderr
    assert instance.calls("mkfs.ext4") == [] and instance.calls("mount") == []
    assert instance.calls("k3s-installer") == [] and instance.text("/etc/fstab") == ""


def test_controller_finds_the_volume_on_xen_instances(instance):
    device = instance.attach_volume("/dev/xvdf")
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    assert instance.calls("mkfs.ext4")[0].endswith(str(device))


def test_controller_fails_naming_the_volume_when_it_never_appears(instance):
    _, result = boot_controller(instance, CLUSTEROUS_DEVICE_WAIT="0")
    assert result.returncode != 0
    assert VOLUME in result.stdout + result.stderr
    assert instance.calls("mkfs.ext4") == [] and instance.calls("k3s-installer") == []


def test_rerunning_the_controller_changes_nothing(instance):
    instance.attach_volume(nvme_link())
    config, first = boot_controller(instance)
    assert first.returncode == 0, first.stderr
    before = {path: instance.text(path) for path in ("/etc/fstab", EXPORTS_FILE)}
    calls_before = instance.log.read_text().splitlines()
    second = instance.run(config)  # a reboot or `cloud-init clean` runs it again
    assert second.returncode == 0, second.stderr
    assert {path: instance.text(path) for path in before} == before
    new_calls = instance.log.read_text().splitlines()[len(calls_before) :]
    commands = {line.split(" ", 1)[0] for line in new_calls}
    assert not commands & {"mkfs.ext4", "mkfs.xfs", "apt-get", "curl", "k3s-installer", "mount"}
    assert "k3s v1.33.5+k3s1 already installed" in second.stdout


def test_a_new_k3s_version_is_installed_over_the_old(instance):
    instance.attach_volume(nvme_link())
    boot_controller(instance)
    config = instance.unpack(render_controller(make_inputs(k3s_version="v1.34.1+k3s1")))
    result = instance.run(config)
    assert result.returncode == 0, result.stderr
    assert len(instance.calls("k3s-installer")) == 2
    assert instance.installer_env()["INSTALL_K3S_VERSION"] == "v1.34.1+k3s1"


def test_controller_installs_pinned_k3s_server_with_taint_sans_and_token_files(instance):
    instance.attach_volume(nvme_link())
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    args = instance.installer_args()
    assert args[0] == "server"
    assert instance.installer_env()["INSTALL_K3S_VERSION"] == "v1.33.5+k3s1"
    pairs = list(zip(args, args[1:], strict=False))
    assert ("--token-file", SERVER_TOKEN_FILE) in pairs  # the server token, made on the controller
    assert ("--agent-token-file", AGENT_TOKEN_FILE) in pairs  # what agents join with
    assert ("--node-taint", "CriticalAddonsOnly=true:NoExecute") in pairs
    sans = {value for flag, value in pairs if flag == "--tls-san"}
    assert sans == {"127.0.0.1", "localhost", "10.42.1.10"}
    assert ("--write-kubeconfig-mode", "0600") in pairs
    assert ("--disable", "traefik") in pairs
    assert not {"--token", "--agent-token"} & set(args)
    assert not any(a.startswith(("--token=", "--agent-token=")) for a in args)


@pytest.mark.parametrize("group", ["master", "worker"])
def test_node_joins_the_controller_with_its_group_label(instance, group):
    config = instance.unpack(render_node(make_inputs(), group))
    result = instance.run(config)
    assert result.returncode == 0, result.stderr
    args = instance.installer_args()
    pairs = list(zip(args, args[1:], strict=False))
    assert args[0] == "agent"
    assert ("--server", "https://10.42.1.10:6443") in pairs
    assert ("--token-file", JOIN_TOKEN_FILE) in pairs  # the agent token, never the server's
    assert SERVER_TOKEN_FILE not in args and "--agent-token-file" not in args
    assert ("--node-label", f"clusterous.io/group={group}") in pairs
    assert instance.installer_env()["INSTALL_K3S_VERSION"] == "v1.33.5+k3s1"
    assert instance.text(JOIN_TOKEN_FILE) == f"K10{CA_DIGEST}::node:{AGENT_TOKEN}\n"
    assert instance.calls("apt-get")[-1].split()[-1] == "nfs-common"
    assert instance.calls("mkfs.ext4") == [] and instance.calls("exportfs") == []
    rerun = instance.run(config)
    assert rerun.returncode == 0 and len(instance.calls("k3s-installer")) == 1


def test_a_node_waits_for_its_ca_hash_tag_then_joins_with_the_secure_token(instance):
    """`up` tags the nodes once the controller's k3s runs: until then the agent is installed but
    not started; IMDS answers 404 for the tag twice, then the hash, and the agent starts."""
    instance.tag(CA_HASH, None)
    config = instance.unpack(render_node(make_inputs(), "worker"))
    looks = []

    def tag_appears(attempt: int) -> None:
        looks.append(len(instance.calls("sleep")))
        instance.tag(CA_HASH, CA_DIGEST)

    runs = instance.run_unit(config, between=tag_appears, CLUSTEROUS_JOIN_ATTEMPTS="3")
    assert [r.returncode for r in runs] == [1, 0], runs[-1].stderr
    assert looks == [2]  # 3 looks, 2 waits between them, in the failed run
    assert f"no server CA hash in tag {CA_HASH} after 3 looks" in runs[0].stderr
    assert "`clusterous-k8s up` sets it" in runs[0].stderr
    assert f"waiting for tag {CA_HASH}" in runs[0].stdout
    assert instance.installer_env()["INSTALL_K3S_SKIP_START"] == "true"  # installed, not started
    token = instance.root / JOIN_TOKEN_FILE.lstrip("/")
    assert token.read_text() == f"K10{CA_DIGEST}::node:{AGENT_TOKEN}\n"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    starts = [c for c in instance.calls("systemctl") if "k3s-agent.service" in c]
    assert starts == ["systemctl start k3s-agent.service"]  # once, after the token: never without it
    imds = [c for c in instance.calls("curl") if "169.254.169.254" in c]
    assert f"http://169.254.169.254/latest/meta-data/tags/instance/{CA_HASH}" in imds[-1]
    assert "-X PUT -H X-aws-ec2-metadata-token-ttl-seconds: 60" in imds[-2]  # IMDSv2 session first
    assert AGENT_TOKEN not in instance.log.read_text() and not any(AGENT_TOKEN in o for o in instance.outputs)
    rerun = instance.run(config)  # a reboot: the token is kept, the agent (enabled) just started
    assert rerun.returncode == 0 and token.read_text().startswith(f"K10{CA_DIGEST}::")


def test_a_tag_that_is_no_sha256_is_never_written_into_the_token(instance):
    instance.tag(CA_HASH, "not-a-hash")
    config = instance.unpack(render_node(make_inputs(), "master"))
    result = instance.run(config, CLUSTEROUS_JOIN_ATTEMPTS="2")
    assert result.returncode == 1
    assert not (instance.root / JOIN_TOKEN_FILE.lstrip("/")).exists()
    assert not [c for c in instance.calls("systemctl") if "k3s-agent" in c]


def test_the_controller_starts_its_server_at_install(instance):
    instance.attach_volume(nvme_link())
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    assert instance.installer_env()["INSTALL_K3S_SKIP_START"] == "false"


def test_amazon_linux_uses_dnf_and_skips_the_selinux_rpm(instance):
    instance.attach_volume(nvme_link())
    _, result = boot_controller(instance, make_inputs(os="al2023"))
    assert result.returncode == 0, result.stderr
    assert instance.calls("apt-get") == []
    assert instance.calls("dnf") == ["dnf install -y -q --setopt=retries=5 nfs-utils"]
    assert instance.installer_env()["INSTALL_K3S_SKIP_SELINUX_RPM"] == "true"


# --------------------------------------------------------------------------------------------
# The bootstrap unit: systemd runs the script and retries it until one run succeeds.
# --------------------------------------------------------------------------------------------


def systemd_verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    """systemd's own check of a unit in an unpacked instance root (the host's unit directory
    copied in, for the targets the unit names)."""
    exe = system_tool("systemd-analyze")
    units = root / "usr/lib/systemd/system"
    units.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree("/lib/systemd/system", units, symlinks=True, dirs_exist_ok=True)
    return subprocess.run([exe, "verify", f"--root={root}", unit], capture_output=True, text=True)


@pytest.mark.parametrize("role", ["controller", "worker"])
def test_the_bootstrap_is_a_retrying_systemd_unit_that_runcmd_only_starts(instance, role):
    inputs = make_inputs()
    user_data = render_controller(inputs) if role == "controller" else render_node(inputs, role)
    config = instance.unpack(user_data)
    unit = unit_of(config)
    assert (unit["Type"], unit["Restart"], unit["StartLimitIntervalSec"]) == ("oneshot", "on-failure", "0")
    assert int(unit["RestartSec"]) > 0 and unit["WantedBy"] == "multi-user.target"
    assert unit["StandardOutput"] == unit["StandardError"] == "journal+console"
    assert unit["ExecStart"].endswith("controller.sh" if role == "controller" else "node.sh")
    assert (instance.root / unit["ExecStart"].lstrip("/")).stat().st_mode & 0o100
    assert config["runcmd"] == [
        ["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT], ["systemctl", "start", "--no-block", UNIT],
    ]  # fmt: skip
    verified = systemd_verify(instance.root, UNIT)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_volume_attached_late_fails_a_run_and_the_retry_finishes(instance):
    """The controller boots before its volume is attached: the run fails naming it, systemd runs
    the unit again, by then the volume is there and everything happens exactly once."""
    config = instance.unpack(render_controller(make_inputs()))
    done = instance.root / "var/lib/clusterous/bootstrap.done"  # what `up` waits for

    def between(attempt) -> None:
        assert not done.exists()
        instance.attach_volume(nvme_link())

    runs = instance.run_unit(config, between=between, CLUSTEROUS_DEVICE_WAIT="0")
    assert [run.returncode != 0 for run in runs] == [True, False], runs[-1].stderr
    assert done.exists()
    assert f"shared volume {VOLUME} not attached" in runs[0].stderr
    assert len(instance.calls("mkfs.ext4")) == 1 and len(instance.calls("k3s-installer")) == 1
    assert len(instance.text("/etc/fstab").splitlines()) == 1
    assert len(instance.calls("apt-get")) == 2  # update and install, in the first run only


def test_a_command_failing_once_fails_the_run_and_the_retry_finishes(instance):
    instance.attach_volume(nvme_link())
    instance.fail("exportfs", 1)
    runs = instance.run_unit(instance.unpack(render_controller(make_inputs())))
    assert [run.returncode != 0 for run in runs] == [True, False]
    assert "exportfs: injected failure" in runs[0].stderr
    assert len(instance.calls("exportfs")) == 2 and len(instance.calls("k3s-installer")) == 1
    assert len(instance.calls("mkfs.ext4")) == 1  # the second run kept the first run's file system


def test_apt_waits_for_the_dpkg_lock_and_retries_mirror_errors(instance):
    instance.attach_volume(nvme_link())
    instance.fail("apt-get", 2)  # the mirror answers badly twice, then well
    _, result = boot_controller(instance)
    assert result.returncode == 0, result.stderr
    apt = instance.calls("apt-get")
    assert len(apt) == 4  # update failed twice, then update and install
    for call in apt:
        assert "-o DPkg::Lock::Timeout=600" in call  # waits for unattended-upgrades' dpkg lock
    assert [c.split()[-3:] for c in apt[:3]] == [["-o", "APT::Update::Error-Mode=any", "update"]] * 3
    assert apt[3].endswith("install -y nfs-kernel-server")
    assert instance.calls("sleep") == ["sleep 15", "sleep 15"]
    assert result.stderr.count("apt_get failed") == 2


def test_apt_gives_up_after_bounded_attempts_and_the_unit_tries_again(instance):
    instance.attach_volume(nvme_link())
    instance.fail("apt-get", 7)  # five attempts fail the first run; the second run's third works
    runs = instance.run_unit(instance.unpack(render_controller(make_inputs())))
    assert [run.returncode != 0 for run in runs] == [True, False]
    assert "apt_get failed 5 times" in runs[0].stderr
    assert len([c for c in instance.calls("apt-get") if " update " in c + " "]) == 5 + 3
    assert len(instance.calls("k3s-installer")) == 1


def test_dnf_retries_bounded_too(instance):
    instance.attach_volume(nvme_link())
    instance.fail("dnf", 2)
    _, result = boot_controller(instance, make_inputs(os="al2023"))
    assert result.returncode == 0, result.stderr
    assert instance.calls("dnf") == ["dnf install -y -q --setopt=retries=5 nfs-utils"] * 3
    instance.fail("dnf", 5)
    (instance.root / "var/lib/clusterous/packages.done").unlink()
    _, again = boot_controller(instance, make_inputs(os="al2023"))
    assert again.returncode != 0 and "dnf failed 5 times" in again.stderr


# --------------------------------------------------------------------------------------------
# What the scripts download: the pinned installer and k3s' own images.
# --------------------------------------------------------------------------------------------


def test_the_installer_is_a_pinned_commit_and_runs_only_with_the_pinned_sha256(instance):
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/k3s-io/k3s/[0-9a-f]{40}/install\.sh", K3S_INSTALL_URL
    )
    assert re.fullmatch(r"[0-9a-f]{64}", K3S_INSTALL_SHA256)
    settings = written_files(render_node(make_inputs(), "worker"))["/etc/clusterous/bootstrap.env"]
    assert f"K3S_INSTALL_URL={K3S_INSTALL_URL}\n" in settings
    assert f"K3S_INSTALL_SHA256={K3S_INSTALL_SHA256}\n" in settings
    # this test's upstream serves another install.sh than the pinned one: it is never run
    config = instance.unpack(render_node(make_inputs(), "worker"), pin_installer=False)
    result = instance.run(config)
    assert result.returncode != 0
    assert f"does not have the pinned sha256 {K3S_INSTALL_SHA256}: not run" in result.stderr
    assert instance.calls("k3s-installer") == [] and not (instance.bin / "k3s").exists()
    assert not (instance.root / "var/lib/clusterous/k3s-install.sh").exists()
    (url,) = [c for c in instance.calls("curl") if c.endswith("install.sh")]
    assert url.endswith(K3S_INSTALL_URL)


def images_dir(machine: Instance) -> Path:
    return machine.root / "var/lib/rancher/k3s/agent/images"


@pytest.mark.parametrize("role", ["controller", "worker"])
def test_k3s_images_are_preloaded_from_the_release_and_verified(instance, role):
    instance.attach_volume(nvme_link())
    inputs = make_inputs()
    config = instance.unpack(render_controller(inputs) if role == "controller" else render_node(inputs, role))
    result = instance.run(config)
    assert result.returncode == 0, result.stderr
    assert (images_dir(instance) / AIRGAP).read_bytes() == (instance.web / AIRGAP).read_bytes()
    assert sorted(p.name for p in images_dir(instance).iterdir()) == [AIRGAP]  # no .part left
    release = "https://github.com/k3s-io/k3s/releases/download/v1.33.5%2Bk3s1"
    urls = [c.split()[-1] for c in instance.calls("curl")]
    assert urls[:2] == [f"{release}/{SUMS}", f"{release}/{AIRGAP}"]  # before k3s is installed
    assert urls[2] == K3S_INSTALL_URL


def test_an_image_archive_that_does_not_match_the_release_checksum_is_refused(instance):
    built = b"what the release built\n"
    instance.publish_release(b"tampered\n", listed=built)
    config = instance.unpack(render_node(make_inputs(), "worker"))
    result = instance.run(config)
    assert result.returncode != 0
    assert f"{AIRGAP} does not match the release's sha256 {sha256(built)}: refused" in result.stderr
    assert list(images_dir(instance).iterdir()) == [] and instance.calls("k3s-installer") == []


def test_without_the_image_archive_k3s_is_installed_and_pulls_its_images(instance):
    (instance.web / AIRGAP).unlink()  # e.g. GitHub down for the archive: 5 attempts, then go on
    result = instance.run(instance.unpack(render_node(make_inputs(), "worker")))
    assert result.returncode == 0, result.stderr
    assert "k3s images unavailable: k3s will pull its images instead" in result.stdout
    assert list(images_dir(instance).iterdir()) == [] and len(instance.calls("k3s-installer")) == 1


def test_a_download_that_fails_twice_is_retried(instance):
    instance.fail(f"url-{AIRGAP}", 2)
    result = instance.run(instance.unpack(render_node(make_inputs(), "worker")))
    assert result.returncode == 0, result.stderr
    assert (images_dir(instance) / AIRGAP).exists()
    assert len([c for c in instance.calls("curl") if c.endswith(AIRGAP)]) == 3


# --------------------------------------------------------------------------------------------
# Kubelet reservations.
# --------------------------------------------------------------------------------------------


def reservations(cpus: int, memory_mib: int) -> list[str]:
    """common.sh's kubelet_reservations, run alone."""
    script = f'. "{SCRIPTS / "common.sh"}"; kubelet_reservations {cpus} {memory_mib}'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    "cpus, memory_mib, cpu, memory",
    [
        (1, 1024, "60m", "256Mi"),  # 6% of a core; 25% of the first 4 GiB
        (2, 7850, "70m", "1775Mi"),  # t3.large: + 1% of the 2nd core; + 20% of what is above 4 GiB
        (4, 16384, "80m", "2663Mi"),  # + 0.5% of cores 3-4; 1024 + 819.2 + 819.2 (10% of 8-16 GiB)
        (8, 32768, "90m", "3646Mi"),  # + 0.25% per core above 4; + 6% of 16-32 GiB
        (96, 393216, "310m", "14787Mi"),  # 6% up to 128 GiB, 2% above
    ],
)  # fmt: skip
def test_kubelet_reservations_follow_the_documented_tiers(cpus, memory_mib, cpu, memory):
    assert reservations(cpus, memory_mib) == [
        f"--kubelet-arg=kube-reserved=cpu={cpu},memory={memory}",
        "--kubelet-arg=system-reserved=cpu=50m,memory=100Mi",
        (
            "--kubelet-arg=eviction-hard=memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,"
            "nodefs.inodesFree<5%"
        ),
    ]


@pytest.mark.parametrize("role", ["controller", "worker"])
def test_every_k3s_gets_the_reservations_of_its_own_size(instance, role):
    instance.attach_volume(nvme_link())
    inputs = make_inputs()
    instance.run(
        instance.unpack(render_controller(inputs) if role == "controller" else render_node(inputs, role))
    )
    args = instance.installer_args()
    assert reservations(2, MEMTOTAL_KIB // 1024) == [a for a in args if a.startswith("--kubelet-arg=")]
    assert "--kubelet-arg=kube-reserved=cpu=70m,memory=1775Mi" in args  # nproc 2, MemTotal of a t3.large


# --------------------------------------------------------------------------------------------
# Nodes: rootless builds, node ids.
# --------------------------------------------------------------------------------------------

USERNS_DROP_IN = "/etc/sysctl.d/60-clusterous-rootless-builds.conf"


def test_ubuntu_nodes_let_rootless_buildkit_make_user_namespaces(instance):
    result = instance.run(instance.unpack(render_node(make_inputs(), "worker")))
    assert result.returncode == 0, result.stderr
    settings = [line for line in instance.text(USERNS_DROP_IN).splitlines() if not line.startswith("#")]
    assert settings == ["kernel.apparmor_restrict_unprivileged_userns = 0"]
    # applied now, not only at the next boot
    assert instance.calls("sysctl") == [f"sysctl -p {instance.root}{USERNS_DROP_IN}"]
    assert "--with-node-id" in instance.installer_args()  # a node reusing an address joins anew


@pytest.mark.parametrize("max_userns, expected", [("63357", ""), ("0", "user.max_user_namespaces = 28633")])
def test_amazon_linux_nodes_only_enable_user_namespaces_when_off(instance, max_userns, expected):
    (instance.root / "proc/sys/user").mkdir(parents=True)
    (instance.root / "proc/sys/user/max_user_namespaces").write_text(max_userns + "\n")
    result = instance.run(instance.unpack(render_node(make_inputs(os="al2023"), "worker")))
    assert result.returncode == 0, result.stderr
    settings = [line for line in instance.text(USERNS_DROP_IN).splitlines() if not line.startswith("#")]
    assert settings == ([expected] if expected else [])
    assert len(instance.calls("sysctl")) == (1 if expected else 0)


def test_the_controller_neither_runs_builds_nor_changes_user_namespaces(instance):
    instance.attach_volume(nvme_link())
    assert boot_controller(instance)[1].returncode == 0
    assert instance.text(USERNS_DROP_IN) == "" and instance.calls("sysctl") == []
    assert "--with-node-id" not in instance.installer_args()


def server_token(machine: Instance) -> str:
    return (machine.root / SERVER_TOKEN_FILE.lstrip("/")).read_text().strip()


def test_the_tokens_are_only_in_their_0600_files(instance, tmp_path):
    instance.attach_volume(nvme_link())
    _, controller = boot_controller(instance)
    assert controller.returncode == 0, controller.stderr
    node = Instance(tmp_path / "node")
    node.run(node.unpack(render_node(make_inputs(), "worker")))
    secret = server_token(instance)
    for machine in (instance, node):
        token_file = machine.root / AGENT_TOKEN_FILE.lstrip("/")
        assert token_file.read_text().strip() == AGENT_TOKEN
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        for token in (AGENT_TOKEN, secret):
            assert token not in machine.log.read_text()  # no argv, no environment of any command
            assert not any(token in output for output in machine.outputs)
            settings = machine.root / "etc/clusterous/bootstrap.env"
            assert token not in settings.read_text()
    assert stat.S_IMODE((instance.root / SERVER_TOKEN_FILE.lstrip("/")).stat().st_mode) == 0o600
    assert AGENT_TOKEN not in repr(make_inputs())
    for text in render_manifests(make_inputs()).values():
        assert AGENT_TOKEN not in text


def test_the_controller_makes_its_server_token_once_and_agents_get_another(instance, tmp_path):
    instance.attach_volume(nvme_link())
    config, first = boot_controller(instance)
    assert first.returncode == 0, first.stderr
    secret = server_token(instance)
    assert len(secret) == 64 and int(secret, 16) >= 0  # 32 random bytes, hex
    assert secret != AGENT_TOKEN and secret not in render_controller(make_inputs())
    again = instance.run(config)  # a re-run keeps it: k3s encrypts its datastore's secrets with it
    assert again.returncode == 0, again.stderr
    assert server_token(instance) == secret
    other = Instance(tmp_path / "other-cluster")
    other.attach_volume(nvme_link())
    assert boot_controller(other)[1].returncode == 0
    assert server_token(other) != secret  # random per cluster (per controller)


def written_files(user_data: str) -> dict[str, str]:
    """Every file a user-data writes, path -> decoded content (what anyone reading it learns)."""
    files = {}
    for entry in yaml.safe_load(user_data)["write_files"]:
        content = entry["content"]
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode()
        files[entry["path"]] = content
    return files


@pytest.mark.parametrize("os_name", ["ubuntu-24.04", "al2023"])
def test_no_node_ever_holds_the_server_token(instance, tmp_path, os_name):
    """The server token is cluster-admin equivalent: not in any node's user-data (which
    ec2:DescribeInstanceAttribute and hostNetwork pods read) nor anywhere on a booted node."""
    inputs = make_inputs(os=os_name)
    instance.attach_volume(nvme_link())
    assert boot_controller(instance, inputs)[1].returncode == 0
    secret = server_token(instance)
    controller_files = written_files(render_controller(inputs))
    assert SERVER_TOKEN_FILE not in controller_files  # made on the controller, not shipped
    assert [path for path, text in controller_files.items() if AGENT_TOKEN in text] == [AGENT_TOKEN_FILE]
    for group in inputs.node_groups:
        user_data = render_node(inputs, group)
        assert secret not in user_data
        files = written_files(user_data)
        assert SERVER_TOKEN_FILE not in files and not any(secret in text for text in files.values())
        assert [path for path, text in files.items() if AGENT_TOKEN in text] == [AGENT_TOKEN_FILE]
        assert "K10" not in user_data and CA_DIGEST not in user_data  # the hash comes by tag, later
        node = Instance(tmp_path / group)
        result = node.run(node.unpack(user_data))
        assert result.returncode == 0, result.stderr
        on_disk = [p for p in node.root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert on_disk == [] and not (node.root / SERVER_TOKEN_FILE.lstrip("/")).exists()


def test_every_node_mirrors_the_registry_names_to_the_controller(instance, tmp_path):
    from clusterous_operator.images import CLUSTER_REGISTRY, LEGACY_REGISTRY

    inputs = make_inputs()
    files = {}
    for name, user_data in [("controller", render_controller(inputs))] + [
        (group, render_node(inputs, group)) for group in inputs.node_groups
    ]:
        machine = Instance(tmp_path / name)
        machine.unpack(user_data)
        files[name] = machine.text(REGISTRIES_FILE)
    assert len(set(files.values())) == 1
    mirrors = yaml.safe_load(files["controller"])["mirrors"]
    for name in (CLUSTER_REGISTRY, LEGACY_REGISTRY):
        assert mirrors[name]["endpoint"] == ["http://10.42.1.10:5000"]
    # Docker Hub through the controller's pull-through cache, which registry-mirror serves there.
    assert mirrors["docker.io"]["endpoint"] == ["http://10.42.1.10:5004"]
    (mirror,) = [d for d, _ in pod_specs(all_docs(inputs)) if d["metadata"]["name"] == "registry-mirror"]
    env = {e["name"]: e.get("value") for e in mirror["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REGISTRY_HTTP_ADDR"] == "10.42.1.10:5004"


# --------------------------------------------------------------------------------------------
# Add-ons.
# --------------------------------------------------------------------------------------------


def all_docs(inputs: BootstrapInputs | None = None) -> list[dict]:
    manifests = render_manifests(inputs or make_inputs())
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def pod_specs(docs):
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            yield doc, doc["spec"]["template"]["spec"]


def test_manifests_are_filled_with_the_cluster_values():
    inputs = make_inputs(cluster_name="lab-7", region="us-east-2", controller_ip="10.9.1.5", bucket="bkt-x")
    manifests = render_manifests(inputs)
    assert not any("{{" in text for text in manifests.values())
    (info,) = [
        d for d in all_docs(inputs) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cluster-info"
    ]
    assert info["data"]["clusterName"] == "lab-7"
    assert info["data"]["nfsServer"] == "10.9.1.5"
    assert info["data"]["registryEndpoint"] == "10.9.1.5:5000"
    (registry,) = [
        d for d in all_docs(inputs) if d["kind"] == "Deployment" and d["metadata"]["name"] == "registry"
    ]
    env = {e["name"]: e["value"] for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REGISTRY_STORAGE"] == "s3"
    assert env["REGISTRY_STORAGE_S3_BUCKET"] == "bkt-x" and env["REGISTRY_STORAGE_S3_REGION"] == "us-east-2"
    assert not any("ACCESSKEY" in key or "SECRETKEY" in key for key in env)  # instance profile only


def test_every_image_is_pinned_by_version():
    for doc, spec in pod_specs(all_docs()):
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container["image"]
            reference, _, digest = image.partition("@")
            name, _, tag = reference.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"{doc['metadata']['name']}: {image}"
            assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image


def registry_container(inputs) -> dict:
    (spec,) = [s for d, s in pod_specs(all_docs(inputs)) if d["metadata"]["name"] == "registry"]
    (container,) = spec["containers"]
    return container


def test_the_registry_is_distribution_3_by_digest_with_the_health_check_in_the_buckets_region():
    """distribution 3 (IMDSv2-capable SDK), pinned by its image index digest; S3 in the bucket's
    region (not the cluster's); the storage health check on, and the readiness probe first asks
    after the check has had `threshold` polls, so a registry that cannot use S3 never turns Ready."""
    container = registry_container(make_inputs(region="eu-west-1", bucket="bkt-x", bucket_region="eu-west-3"))
    assert re.fullmatch(r"registry:3\.\d+\.\d+@sha256:[0-9a-f]{64}", container["image"]), container["image"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REGISTRY_STORAGE"] == "s3" and env["REGISTRY_STORAGE_S3_BUCKET"] == "bkt-x"
    assert env["REGISTRY_STORAGE_S3_REGION"] == "eu-west-3"
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"] == "false"
    assert not any("ACCESSKEY" in key or "SECRETKEY" in key for key in env)  # instance profile only
    assert env["REGISTRY_HTTP_DEBUG_ADDR"].startswith("127.0.0.1:")  # pprof never leaves the controller
    assert env["REGISTRY_HEALTH_STORAGEDRIVER_ENABLED"] == "true"
    interval = float(env["REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL"].removesuffix("s"))
    polls = interval * int(env["REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD"])
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/" and readiness["initialDelaySeconds"] > polls
    assert "tcpSocket" in container["livenessProbe"]  # a restart would not mend S3

    # Without a recorded bucket region (a bucket `up` is about to create), the cluster's.
    container = registry_container(make_inputs(region="eu-west-1"))
    assert {e["name"]: e["value"] for e in container["env"]}["REGISTRY_STORAGE_S3_REGION"] == "eu-west-1"


def test_cluster_services_run_on_the_controller_and_tolerate_its_taint():
    for name in ("clusterous-operator", "registry", "csi-nfs-controller"):
        (spec,) = [s for d, s in pod_specs(all_docs()) if d["metadata"]["name"] == name]
        assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": "true"}
        taint = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}
        assert tolerates(spec["tolerations"], taint), name
    (registry,) = [s for d, s in pod_specs(all_docs()) if d["metadata"]["name"] == "registry"]
    assert registry["hostNetwork"] is True  # reaches IMDS (hop limit 1) and the nodes' containerd


def test_operator_rbac_is_least_privilege():
    """Its ClusterRole and the Role in the application namespace together (tests/test_pins.py
    checks that writes are granted only by the Role)."""
    roles = [
        d
        for d in all_docs()
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == "clusterous-operator"
    ]
    granted = {}
    for rule in (rule for role in roles for rule in role["rules"]):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert not any("*" in verbs or "*" in key for key, verbs in granted.items())
    assert ("", "secrets") not in granted
    assert granted[("", "nodes")] == {"get", "list", "watch"}
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert {"patch"} <= granted[("clusterous.io", "clusterapps/status")]
    assert {"create", "delete"} <= granted[("apps", "deployments")]
    assert {"create", "delete"} <= granted[("", "services")] & granted[("", "persistentvolumeclaims")]
    assert {"patch", "list", "watch"} <= granted[("kopf.dev", "clusterkopfpeerings")]


def test_kopf_peering_crds_and_object_exist():
    docs = all_docs()
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "clusterapps.clusterous.io"} <= crds
    (peering,) = [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    start = code_bundle.OPERATOR.configmap_body()["data"]["args"]  # what the start script runs
    assert f"--peering={peering['metadata']['name']}" in start.splitlines()


def test_the_crd_is_the_operators_own():
    from importlib import resources

    shipped = render_manifests(make_inputs())[addons.CRD_FILE]
    assert shipped == (resources.files("clusterous_operator") / "crd.yaml").read_text()


def test_shared_class_maps_every_claim_to_the_exported_root(instance):
    """csi-driver-nfs mounts server:<share>/<subDir>: for clusterous-shared that must be the
    shared volume's root, exported read-write, with a fixed subDir and retained on delete."""
    instance.attach_volume(nvme_link())
    boot_controller(instance)
    exports = {line.split()[0]: line.split()[1] for line in instance.text(EXPORTS_FILE).splitlines()}
    classes = {d["metadata"]["name"]: d for d in all_docs() if d["kind"] == "StorageClass"}
    shared = classes["clusterous-shared"]["parameters"]
    assert shared["server"] == "10.42.1.10"
    assert f"{shared['share']}/{shared['subDir']}" == addons.SHARED_DIR
    assert "$" not in shared["subDir"] and shared["onDelete"] == "retain"
    assert "(rw," in exports[addons.SHARED_DIR] and shared["share"] in exports  # both mountable
    private = classes["clusterous-private"]["parameters"]
    # keyed by the PV's name (pvc-<claim uid>), never reused: two claims never share a directory,
    # and deleting a claim never deletes a newer claim's of the same name
    assert private["subDir"] == "${pv.metadata.name}" and private["onDelete"] == "delete"
    assert private["share"].startswith(addons.SHARED_DIR + "/")
    assert (instance.root / private["share"].lstrip("/")).is_dir()
    for storage_class in classes.values():  # set-uid files and device nodes mean nothing
        assert {"nosuid", "nodev"} <= set(storage_class["mountOptions"])
    (csi,) = [
        d for d in all_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "csi-nfs-controller"
    ]
    (provisioner,) = [
        c for c in csi["spec"]["template"]["spec"]["containers"] if c["name"] == "csi-provisioner"
    ]
    assert "--extra-create-metadata=true" in provisioner["args"]  # what fills ${pv.metadata.name}


# --------------------------------------------------------------------------------------------
# The operator's code bundle.
# --------------------------------------------------------------------------------------------


def test_operator_code_zip_imports_the_installed_package(tmp_path):
    archive = tmp_path / code_bundle.OPERATOR.zip_name
    archive.write_bytes(code_bundle.OPERATOR.zip())
    assert code_bundle.OPERATOR.zip() == archive.read_bytes()  # deterministic
    names = zipfile.ZipFile(archive).namelist()
    assert "clusterous_operator/__init__.py" in names and "clusterous_operator/crd.yaml" in names
    assert "clusterous_core/__init__.py" in names  # the core the operator imports rides along
    assert not any("__pycache__" in name for name in names)
    probe = (
        "import clusterous_operator.spec as m, clusterous_core.names as c, importlib.resources as r; "
        "print(m.__file__); print(c.__file__); "
        "print(len((r.files('clusterous_operator') / 'crd.yaml').read_text()))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(archive)!r}); {probe}"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    operator_file, core_file = result.stdout.splitlines()[:2]
    assert operator_file.startswith(str(archive)) and core_file.startswith(str(archive))  # not the checkout


def test_operator_requirements_cover_every_import_of_the_operator():
    """The pod has only the stdlib and the pinned requirements: nothing else may be imported."""
    import ast

    provided = {
        dict(code_bundle.OPERATOR.provides)[req.split("==")[0]] for req in code_bundle.OPERATOR.requirements()
    }
    imported = set()
    with zipfile.ZipFile(io.BytesIO(code_bundle.OPERATOR.zip())) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(archive.read(name))):
                    if isinstance(node, ast.Import):
                        imported |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - set(code_bundle.OPERATOR.packages)
    assert third_party <= provided, f"not in code_bundle.OPERATOR.requirements(): {third_party - provided}"
    assert "kopf" in third_party


def test_operator_code_configmap_matches_the_deployment(tmp_path):
    (configmap,) = yaml.safe_load_all(render_manifests(make_inputs())[addons.OPERATOR_CODE_FILE])
    validate_k8s([configmap])
    assert (
        base64.b64decode(configmap["binaryData"][code_bundle.OPERATOR.zip_name]) == code_bundle.OPERATOR.zip()
    )
    (deployment,) = [
        d for d in all_docs() if d["metadata"]["name"] == "clusterous-operator" and d["kind"] == "Deployment"
    ]
    template = deployment["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["code"]["configMap"]["name"] == configmap["metadata"]["name"]
    annotation = "clusterous.io/code-hash"
    assert template["metadata"]["annotations"][annotation] == configmap["metadata"]["annotations"][annotation]
    assert len(configmap["binaryData"][code_bundle.OPERATOR.zip_name]) < 900_000  # ConfigMaps hold 1 MiB


# The operator's start script (install the lock once per lock hash, then kopf): tests/test_pins.py.


# --------------------------------------------------------------------------------------------
# Render dir and bad input.
# --------------------------------------------------------------------------------------------


def test_render_dir_holds_every_user_data_and_manifest(tmp_path):
    inputs = make_inputs(node_groups=["master", "worker", "gpu"])
    written = write_render_dir(inputs, tmp_path)
    assert sorted(p.name for p in (tmp_path / "user-data").iterdir()) == [
        "controller.user-data", "gpu.user-data", "master.user-data", "worker.user-data",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "manifests").iterdir()) == sorted(render_manifests(inputs))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)  # user-data holds the token
    assert (tmp_path / "user-data" / "gpu.user-data").read_text() == render_node(inputs, "gpu")


@pytest.mark.parametrize("good", ["v1.33.5+k3s1", "v1.30.14+k3s2", "v1.34.1+k3s1"])
def test_k3s_release_names_are_accepted(good):
    assert check_k3s_version(good) == good


@pytest.mark.parametrize(
    "bad", ["1.33.5+k3s1", "v1.33.5", "v1.33+k3s1", "latest", "v1.33.5-rc1+k3s1", "", None]
)
def test_a_k3s_version_that_is_no_release_name_is_bad_input(bad):
    with pytest.raises(BadInput) as caught:
        check_k3s_version(bad, source="cluster.yml")
    assert caught.value.exit_code == 2
    assert "cluster.yml: k3s_version" in str(caught.value) and "v1.33.5+k3s1" in str(caught.value)
    with pytest.raises(BadInput):
        render_controller(make_inputs(k3s_version=bad))


def test_unknown_group_and_os_are_bad_input():
    with pytest.raises(BadInput, match="node_groups"):
        render_node(make_inputs(), "gpu")
    with pytest.raises(BadInput, match="os"):
        render_node(make_inputs(os="windows"), "worker")


def test_a_template_naming_an_unknown_value_fails_loudly():
    with pytest.raises(KeyError, match="cluster_nmae"):
        addons.fill('name: "{{ cluster_nmae }}"', addons.values_for(make_inputs()), "typo.yaml")


def test_up_applies_the_operator_code_through_the_api_once(k8s_api):
    import kubernetes

    k8s_api.create(
        "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "clusterous-system"}}
    )
    with kubernetes.config.new_client_from_config(config_file=str(k8s_api.kubeconfig)) as client:
        assert code_bundle.OPERATOR.apply(client) == "created"
        assert code_bundle.OPERATOR.apply(client) == "unchanged"
        k8s_api.patch(
            "configmaps", code_bundle.OPERATOR.configmap, {"metadata": {"annotations": {"clusterous.io/code-hash": "old"}}},
            namespace="clusterous-system",
        )  # fmt: skip
        assert code_bundle.OPERATOR.apply(client) == "updated"
    stored = k8s_api.get("configmaps", code_bundle.OPERATOR.configmap, namespace="clusterous-system")
    assert base64.b64decode(stored["binaryData"][code_bundle.OPERATOR.zip_name]) == code_bundle.OPERATOR.zip()
    assert stored["metadata"]["annotations"]["clusterous.io/code-hash"] == code_bundle.OPERATOR.code_hash()


# --------------------------------------------------------------------------------------------
# Real AWS.
# --------------------------------------------------------------------------------------------


@pytest.mark.aws
@pytest.mark.skipif(
    os.environ.get("CLUSTEROUS_REAL_AWS") != "1", reason="needs CLUSTEROUS_REAL_AWS=1 and credentials"
)
@pytest.mark.timeout(5400)  # up and down take many minutes each; pyproject's 300 s would cut them
def test_real_cluster_with_one_worker_becomes_ready(tmp_path):
    """`up --workers 1`, then every node Ready with its group label and the operator available."""
    import json

    from tests.harness.tools import tool_path

    region = os.environ.get("CLUSTEROUS_REAL_AWS_REGION", "us-east-1")
    name = f"ci-{os.getpid()}"
    cli = [sys.executable, "-m", "clusterous_cli"]  # the package's __main__, as the console script
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}  # `kubeconfig` writes here, not ~/.kube

    def run(*argv, timeout=120, **kwargs):
        return subprocess.run([*argv], env=env, timeout=timeout, **kwargs)

    assert run(*cli, "setup", "--region", region, "--yes", timeout=600).returncode == 0
    try:
        up = run(*cli, "up", "--cluster", name, "--workers", "1", "--yes", timeout=2400)
        assert up.returncode == 0
        assert run(*cli, "kubeconfig", "--cluster", name).returncode == 0
        kubectl = [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig)]
        nodes = run(*kubectl, "get", "nodes", "-o", "json", capture_output=True, text=True, check=True)
        items = json.loads(nodes.stdout)["items"]
        groups = sorted(n["metadata"]["labels"].get("clusterous.io/group", "") for n in items)
        assert groups == ["", "master", "worker"]  # the controller has no group
        for node in items:
            ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
            assert ready == "True"
        available = run(
            *kubectl, "-n", "clusterous-system", "wait", "--for=condition=Available",
            "deployment/clusterous-operator", "--timeout=300s", timeout=330,
        )  # fmt: skip
        assert available.returncode == 0
    finally:
        down = run(*cli, "down", name, "--yes", "--delete-shared-volume", timeout=1800)
        assert down.returncode == 0
