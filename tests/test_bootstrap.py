"""Node bootstrap and add-ons: what the instances run, checked without AWS or a cluster.

The rendered user-data is unpacked into a temporary root exactly as cloud-init's write_files
would, and its scripts run there with every system command they call replaced by a recording
stand-in on PATH (DESIGN §6). PATH holds nothing else but a few harmless core utilities, so a
command the scripts call without a stand-in fails the test instead of touching this machine.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from clusterous_provisioner import addons, operator_bundle
from clusterous_provisioner.bootstrap import (
    ADDONS_FILE,
    AGENT_TOKEN_FILE,
    REGISTRIES_FILE,
    SERVER_TOKEN_FILE,
    USER_DATA_LIMIT,
    BootstrapInputs,
    boot_manifests,
    check_k3s_version,
    render_controller,
    render_manifests,
    render_node,
    write_render_dir,
)
from clusterous_provisioner.errors import BadInput
from tests.harness.k8s_controllers import tolerates
from tests.harness.tools import cloud_init_schema, shellcheck, validate_k8s

AGENT_TOKEN = "agent-s3cr3t-0123456789abcdef0123456789abcdef"  # what SSM holds for the cluster
VOLUME = "vol-0abc123def4567890"
SCRIPTS = Path(__file__).resolve().parents[1] / "provisioner" / "clusterous_provisioner" / "scripts"
CORE_UTILS = ("bash", "sh", "grep", "awk", "mkdir", "readlink", "dirname", "basename", "touch", "cat",
              "rm", "mv", "env", "sort", "sed", "chmod", "stat", "od", "tr")  # fmt: skip
STAND_INS = ("apt-get", "dnf", "curl", "blkid", "mkfs.ext4", "mkfs.xfs", "mount", "mountpoint",
             "exportfs", "systemctl", "sleep", "chown")  # fmt: skip


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

BEHAVIOUR = {
    # the k3s installer: logs its arguments and the whole environment, installs a k3s stand-in
    "curl": r"""
out=""; while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
cat >"$out" <<'EOF'
#!/bin/sh
{ printf 'k3s-installer'; printf ' %s' "$@"; echo; env | sed 's/^/  env: /'; } >>"$STANDIN_LOG"
printf '#!/bin/sh\necho "k3s version %s (0000)"\n' "$INSTALL_K3S_VERSION" >"$STANDIN_BIN/k3s"
chmod +x "$STANDIN_BIN/k3s"
EOF
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
}


class Instance:
    """A temporary root that user-data is unpacked into and bootstrap scripts run in."""

    def __init__(self, tmp: Path):
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        self.state = tmp / "state"
        self.log = tmp / "standins.log"
        for folder in (self.root, self.bin, self.state):
            folder.mkdir(parents=True)
        self.log.touch()
        for tool in CORE_UTILS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        for name in STAND_INS:
            script = self.bin / name
            script.write_text("#!/bin/sh\n" + RECORD + BEHAVIOUR.get(name, ""))
            script.chmod(0o755)
        self.outputs: list[str] = []

    def unpack(self, user_data: str) -> dict:
        """What cloud-init's write_files does, under the root."""
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
        """The user-data's runcmd, as root would run it on the instance."""
        (command,) = config["runcmd"]
        script = self.root / command[0].lstrip("/")
        environ = {
            "PATH": str(self.bin),
            "CLUSTEROUS_ROOT": str(self.root),
            "STANDIN_LOG": str(self.log),
            "STANDIN_BIN": str(self.bin),
            "STANDIN_STATE": str(self.state),
            **env,
        }
        result = subprocess.run(
            [str(self.bin / "bash"), str(script)], env=environ, capture_output=True, text=True, timeout=60
        )
        self.outputs += [result.stdout, result.stderr]
        return result

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
    assert operator_bundle.CONFIGMAP not in {doc["metadata"]["name"] for doc in shipped_docs}


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
    exports = instance.text("/etc/exports")
    assert f"{addons.SHARED_DIR} 10.42.0.0/16(rw," in exports
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
    before = {path: instance.text(path) for path in ("/etc/fstab", "/etc/exports")}
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
    assert ("--token-file", AGENT_TOKEN_FILE) in pairs  # the agent token, never the server's
    assert SERVER_TOKEN_FILE not in args and "--agent-token-file" not in args
    assert ("--node-label", f"clusterous.io/group={group}") in pairs
    assert instance.installer_env()["INSTALL_K3S_VERSION"] == "v1.33.5+k3s1"
    assert instance.calls("apt-get")[-1].split()[-1] == "nfs-common"
    assert instance.calls("mkfs.ext4") == [] and instance.calls("exportfs") == []
    rerun = instance.run(config)
    assert rerun.returncode == 0 and len(instance.calls("k3s-installer")) == 1


def test_amazon_linux_uses_dnf_and_skips_the_selinux_rpm(instance):
    instance.attach_volume(nvme_link())
    _, result = boot_controller(instance, make_inputs(os="al2023"))
    assert result.returncode == 0, result.stderr
    assert instance.calls("apt-get") == []
    assert instance.calls("dnf") == ["dnf install -y -q nfs-utils"]
    assert instance.installer_env()["INSTALL_K3S_SKIP_SELINUX_RPM"] == "true"


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
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"{doc['metadata']['name']}: {image}"


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
    start = operator_bundle.start_script()
    assert f"--peering={peering['metadata']['name']}" in start


def test_the_crd_is_the_operators_own():
    from importlib import resources

    shipped = render_manifests(make_inputs())[addons.CRD_FILE]
    assert shipped == (resources.files("clusterous_operator") / "crd.yaml").read_text()


def test_shared_class_maps_every_claim_to_the_exported_root(instance):
    """csi-driver-nfs mounts server:<share>/<subDir>: for clusterous-shared that must be the
    shared volume's root, exported read-write, with a fixed subDir and retained on delete."""
    instance.attach_volume(nvme_link())
    boot_controller(instance)
    exports = {line.split()[0]: line.split()[1] for line in instance.text("/etc/exports").splitlines()}
    classes = {d["metadata"]["name"]: d for d in all_docs() if d["kind"] == "StorageClass"}
    shared = classes["clusterous-shared"]["parameters"]
    assert shared["server"] == "10.42.1.10"
    assert f"{shared['share']}/{shared['subDir']}" == addons.SHARED_DIR
    assert "$" not in shared["subDir"] and shared["onDelete"] == "retain"
    assert "(rw," in exports[addons.SHARED_DIR] and shared["share"] in exports  # both mountable
    private = classes["clusterous-private"]["parameters"]
    assert "${pvc.metadata.name}" in private["subDir"]
    assert private["share"].startswith(addons.SHARED_DIR + "/")
    assert (instance.root / private["share"].lstrip("/")).is_dir()


# --------------------------------------------------------------------------------------------
# The operator's code bundle.
# --------------------------------------------------------------------------------------------


def test_operator_code_zip_imports_the_installed_package(tmp_path):
    archive = tmp_path / operator_bundle.ZIP_NAME
    archive.write_bytes(operator_bundle.operator_zip())
    assert operator_bundle.operator_zip() == archive.read_bytes()  # deterministic
    names = zipfile.ZipFile(archive).namelist()
    assert "clusterous_operator/__init__.py" in names and "clusterous_operator/crd.yaml" in names
    assert not any("__pycache__" in name for name in names)
    probe = (
        "import clusterous_operator.images as m, importlib.resources as r; "
        "print(m.__file__); print(len((r.files('clusterous_operator') / 'crd.yaml').read_text()))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(archive)!r}); {probe}"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(archive) in result.stdout  # imported from the zip, not from the checkout


def test_operator_requirements_cover_every_import_of_the_operator():
    """The pod has only the stdlib and the pinned requirements: nothing else may be imported."""
    import ast

    provided = {operator_bundle.PROVIDES[req.split("==")[0]] for req in operator_bundle.REQUIREMENTS}
    imported = set()
    with zipfile.ZipFile(io.BytesIO(operator_bundle.operator_zip())) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(archive.read(name))):
                    if isinstance(node, ast.Import):
                        imported |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"clusterous_operator"}
    assert third_party <= provided, f"not in operator_bundle.REQUIREMENTS: {third_party - provided}"
    assert "kopf" in third_party


def test_operator_code_configmap_matches_the_deployment(tmp_path):
    (configmap,) = yaml.safe_load_all(render_manifests(make_inputs())[addons.OPERATOR_CODE_FILE])
    validate_k8s([configmap])
    assert (
        base64.b64decode(configmap["binaryData"][operator_bundle.ZIP_NAME]) == operator_bundle.operator_zip()
    )
    (deployment,) = [
        d for d in all_docs() if d["metadata"]["name"] == "clusterous-operator" and d["kind"] == "Deployment"
    ]
    template = deployment["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["code"]["configMap"]["name"] == configmap["metadata"]["name"]
    annotation = "clusterous.io/code-hash"
    assert template["metadata"]["annotations"][annotation] == configmap["metadata"]["annotations"][annotation]
    assert len(configmap["binaryData"][operator_bundle.ZIP_NAME]) < 900_000  # ConfigMaps hold 1 MiB


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
        assert operator_bundle.apply_code(client) == "created"
        assert operator_bundle.apply_code(client) == "unchanged"
        k8s_api.patch(
            "configmaps", operator_bundle.CONFIGMAP, {"metadata": {"annotations": {"clusterous.io/code-hash": "old"}}},
            namespace="clusterous-system",
        )  # fmt: skip
        assert operator_bundle.apply_code(client) == "updated"
    stored = k8s_api.get("configmaps", operator_bundle.CONFIGMAP, namespace="clusterous-system")
    assert base64.b64decode(stored["binaryData"][operator_bundle.ZIP_NAME]) == operator_bundle.operator_zip()
    assert stored["metadata"]["annotations"]["clusterous.io/code-hash"] == operator_bundle.code_hash()


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
        up = run(*cli, "up", "--name", name, "--workers", "1", "--yes", timeout=2400)
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
