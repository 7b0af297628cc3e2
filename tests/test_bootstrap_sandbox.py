"""The bootstrap scripts against real file-system state, in a root sandbox.

tests/test_bootstrap.py records which commands the scripts call; here the real mkfs.ext4,
blkid, mount, chown and friends run on a real block device (a loop device standing for the EBS
volume) inside a private mount namespace, and the tests look at the result: the file system,
the mount, fstab, exports, ownership and modes, and what a process of the login user's uid (or
of another uid) may do there. See tests/harness/bootstrap_sandbox.py for how the sandbox is
built; it skips without root, unshare or loop devices, and fails instead under CI=true.
"""

from __future__ import annotations

import pytest

from clusterous_provisioner import addons
from clusterous_provisioner.bootstrap import LOGIN_UID, render_controller, render_node
from tests.harness.bootstrap_sandbox import CA_DIGEST, CA_HASH_TAG, FSTAB, NVME_DEVICE, Sandbox
from tests.test_bootstrap import AGENT_TOKEN, VOLUME, make_inputs, nvme_link

SHARED = addons.SHARED_DIR  # /export/shared: the volume's mount point and NFS export
CIDR = "10.42.0.0/16"
EXPORTS_FILE = "/etc/exports.d/clusterous.exports"
EXPORTS = (
    f"{SHARED} {CIDR}(rw,sync,no_subtree_check,all_squash,anonuid={LOGIN_UID},anongid={LOGIN_UID})\n"
    f"/export {CIDR}(ro,sync,no_subtree_check,root_squash,crossmnt)\n"
)
OTHER_UID = 1001  # any uid that is neither root nor the login user


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    try:
        yield box
    finally:
        box.close()


def boot_controller(sandbox: Sandbox, **changes):
    config = sandbox.unpack(render_controller(make_inputs(**changes)))
    return config, sandbox.run(config)


def probe(sandbox: Sandbox, device: str = NVME_DEVICE) -> dict[str, str]:
    """blkid's low-level probe of the device, as KEY -> value."""
    result = sandbox.exec(["blkid", "-p", "-o", "export", device])
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def mount_of(sandbox: Sandbox, path: str = SHARED) -> list[str]:
    """findmnt's SOURCE FSTYPE OPTIONS for every mount exactly at path (empty: not a mount point)."""
    result = sandbox.exec(["findmnt", "--noheadings", "--raw", "--output", "SOURCE,FSTYPE,OPTIONS",
                           "--mountpoint", path])  # fmt: skip
    return result.stdout.splitlines()


def can_create(sandbox: Sandbox, path: str, uid: int, gids: tuple[int, ...] = ()) -> bool:
    result = sandbox.exec(["touch", path], uid=uid, gids=gids)
    assert result.returncode == 0 or "Permission denied" in result.stderr, result.stderr
    return result.returncode == 0


# --------------------------------------------------------------------------------------------
# A blank volume.
# --------------------------------------------------------------------------------------------


def test_a_blank_volume_gets_ext4_mounted_at_the_shared_dir(sandbox):
    sandbox.attach_volume(nvme_link())
    _, result = boot_controller(sandbox)
    assert result.returncode == 0, result.stderr
    signature = probe(sandbox)
    assert signature["TYPE"] == "ext4" and signature["LABEL"] == "clusterous"
    ((source, fstype, options),) = [line.split() for line in mount_of(sandbox)]
    assert source.startswith("/dev/loop") and fstype == "ext4" and "rw" in options.split(",")
    # fstab: the image's own lines kept, one line added, by UUID, nofail (a lost volume must not
    # stop the controller from booting)
    fstab = sandbox.read("/etc/fstab")
    assert fstab.startswith(FSTAB)
    (added,) = fstab[len(FSTAB) :].splitlines()
    assert added.split() == [f"UUID={signature['UUID']}", SHARED, "ext4", "defaults,nofail", "0", "2"]
    assert sandbox.read(EXPORTS_FILE) == EXPORTS
    assert sandbox.calls("exportfs") == ["exportfs -ra"]
    assert sandbox.calls("systemctl") == ["systemctl enable --now nfs-server"]
    assert sandbox.calls("k3s-installer")[0].split()[1] == "server"


def test_the_volume_root_belongs_to_the_login_user_and_others_only_read_it(sandbox):
    sandbox.attach_volume(nvme_link())
    _, result = boot_controller(sandbox)
    assert result.returncode == 0, result.stderr
    # mkfs.ext4 leaves the root root:root 0755; put/run/build uploads (uid 1000) need to write it
    assert sandbox.stat(SHARED) == (LOGIN_UID, LOGIN_UID, 0o775)
    assert sandbox.check(f"stat -c %U {SHARED}").strip() == "ubuntu"
    assert sandbox.stat("/export") == (0, 0, 0o755)
    assert sandbox.stat(f"{SHARED}/.private") == (LOGIN_UID, LOGIN_UID, 0o755)
    assert sandbox.stat(f"{SHARED}/lost+found") == (0, 0, 0o700)
    assert can_create(sandbox, f"{SHARED}/by-login-user", LOGIN_UID)
    assert sandbox.stat(f"{SHARED}/by-login-user")[:2] == (LOGIN_UID, LOGIN_UID)
    assert not can_create(sandbox, f"{SHARED}/by-another-user", OTHER_UID)  # not world-writable
    assert can_create(sandbox, f"{SHARED}/by-group-member", OTHER_UID, gids=(LOGIN_UID,))


def test_every_nfs_client_acts_as_the_login_user_on_the_volume(sandbox):
    """exports(5) all_squash,anonuid=1000,anongid=1000: nfsd runs every request, a container's
    root's or any other uid's, as uid 1000, gid 1000 and no supplementary groups (no nfsd here:
    such a request is a process with exactly those ids). It writes the root and makes, fills and
    deletes a private claim's directory in .private, as csi-driver-nfs does; it cannot chown."""
    sandbox.attach_volume(nvme_link())
    _, result = boot_controller(sandbox)
    assert result.returncode == 0, result.stderr
    (line,) = [entry for entry in sandbox.read(EXPORTS_FILE).splitlines() if entry.startswith(SHARED + " ")]
    options = line.split("(", 1)[1].rstrip(")").split(",")
    assert {"rw", "all_squash", f"anonuid={LOGIN_UID}", f"anongid={LOGIN_UID}"} <= set(options)
    assert "no_root_squash" not in options
    squashed = {"uid": LOGIN_UID}  # setpriv: uid and gid 1000, groups cleared
    assert can_create(sandbox, f"{SHARED}/by-a-container", **squashed)
    claim = f"{SHARED}/.private/pvc-0c6f6a51-1b7e-4b51-9d61-2f8d0b6f2a10"
    sandbox.check(f"mkdir {claim} && echo x >{claim}/data", **squashed)
    assert sandbox.exec(["chown", "0:0", f"{claim}/data"], **squashed).returncode != 0
    sandbox.check(f"rm -r {claim}", **squashed)
    assert not sandbox.exists(claim)
    assert sandbox.exec(["ls", f"{SHARED}/lost+found"], **squashed).returncode != 0  # root's 0700


# --------------------------------------------------------------------------------------------
# Re-runs.
# --------------------------------------------------------------------------------------------


def test_rerunning_changes_nothing_never_reformats_and_keeps_the_data(sandbox):
    sandbox.attach_volume(nvme_link())
    config, first = boot_controller(sandbox)
    assert first.returncode == 0, first.stderr
    sandbox.check(f"mkdir {SHARED}/results && echo 42 >{SHARED}/results/answer.txt", uid=LOGIN_UID)
    before = {
        "uuid": probe(sandbox)["UUID"], "fstab": sandbox.read("/etc/fstab"),
        "exports": sandbox.read(EXPORTS_FILE), "root": sandbox.stat(SHARED), "mounts": mount_of(sandbox),
    }  # fmt: skip
    second = sandbox.run(config)  # a reboot or `cloud-init clean` runs it again
    assert second.returncode == 0, second.stderr
    after = {
        "uuid": probe(sandbox)["UUID"], "fstab": sandbox.read("/etc/fstab"),
        "exports": sandbox.read(EXPORTS_FILE), "root": sandbox.stat(SHARED), "mounts": mount_of(sandbox),
    }  # fmt: skip
    assert after == before
    assert len(after["mounts"]) == 1  # not mounted twice
    assert sandbox.read(f"{SHARED}/results/answer.txt") == "42\n"
    assert "already has a ext4 filesystem: kept" in second.stdout
    assert "mke2fs" not in second.stdout + second.stderr
    assert len(sandbox.calls("k3s-installer")) == 1 and len(sandbox.calls("exportfs")) == 2


def test_after_a_reboot_the_fstab_line_mounts_the_same_volume_again(sandbox):
    sandbox.attach_volume(nvme_link())
    config, first = boot_controller(sandbox)
    assert first.returncode == 0, first.stderr
    sandbox.check(f"echo kept >{SHARED}/data.txt", uid=LOGIN_UID)
    sandbox.check(f"umount {SHARED}")  # the volume is not mounted yet when the script runs again
    assert mount_of(sandbox) == [] and not sandbox.exists(f"{SHARED}/data.txt")
    again = sandbox.run(config)
    assert again.returncode == 0, again.stderr
    assert len(mount_of(sandbox)) == 1
    assert sandbox.read(f"{SHARED}/data.txt") == "kept\n"
    assert sandbox.read("/etc/fstab").count(SHARED) == 1
    assert sandbox.stat(SHARED) == (LOGIN_UID, LOGIN_UID, 0o775)


def test_a_volume_attached_late_fails_one_run_and_the_next_formats_and_mounts_it(sandbox):
    """What systemd's Restart=on-failure meets when the volume comes after the first run."""
    config = sandbox.unpack(render_controller(make_inputs()))
    first = sandbox.run(config, CLUSTEROUS_DEVICE_WAIT="0")
    assert first.returncode != 0 and f"shared volume {VOLUME} not attached" in first.stderr
    assert mount_of(sandbox) == [] and sandbox.calls("k3s-installer") == []
    sandbox.attach_volume(nvme_link())
    second = sandbox.run(config, CLUSTEROUS_DEVICE_WAIT="0")
    assert second.returncode == 0, second.stderr
    assert probe(sandbox)["TYPE"] == "ext4" and len(mount_of(sandbox)) == 1
    assert sandbox.stat(SHARED) == (LOGIN_UID, LOGIN_UID, 0o775)
    assert len(sandbox.calls("k3s-installer")) == 1 and len(sandbox.calls("apt-get")) == 2


# --------------------------------------------------------------------------------------------
# Volumes that are not blank.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fstype, owner, expected_root",
    [
        # a volume formatted elsewhere, root still mkfs's root:root: handed to the login user
        ("ext4", "0:0", (LOGIN_UID, LOGIN_UID, 0o775)),
        # a volume whose owner someone chose (here uid 2000, 0750): left exactly as it is
        ("ext2", "2000:2000", (2000, 2000, 0o750)),
    ],
)
def test_a_volume_with_a_filesystem_is_never_formatted(sandbox, fstype, owner, expected_root):
    device = sandbox.attach_volume(nvme_link())
    sandbox.check(
        f"mkfs.{fstype} -q -L earlier {device} && mkdir -p /mnt/earlier && mount {device} /mnt/earlier"
        f" && echo precious >/mnt/earlier/results.csv && chown {owner} /mnt/earlier"
        " && chmod 0750 /mnt/earlier && umount /mnt/earlier"
    )
    uuid = probe(sandbox)["UUID"]
    _, result = boot_controller(sandbox)
    assert result.returncode == 0, result.stderr
    assert f"already has a {fstype} filesystem: kept" in result.stdout
    signature = probe(sandbox)
    assert (signature["UUID"], signature["TYPE"], signature["LABEL"]) == (uuid, fstype, "earlier")
    assert sandbox.read(f"{SHARED}/results.csv") == "precious\n"
    assert f"UUID={uuid} {SHARED} {fstype} defaults,nofail 0 2" in sandbox.read("/etc/fstab")
    assert sandbox.stat(SHARED) == expected_root


@pytest.mark.parametrize(
    "make, named",
    [
        ("printf 'label: gpt\\n,,L\\n' | sfdisk --quiet --no-reread --no-tell-kernel {device}",
         "a gpt partition table"),
        ("printf 'label: dos\\n,,83\\n' | sfdisk --quiet --no-reread --no-tell-kernel {device}",
         "a dos partition table"),
        ("mkswap {device} >/dev/null", "a swap signature"),
    ],
)  # fmt: skip
def test_a_partitioned_or_foreign_disk_is_refused_untouched(sandbox, make, named):
    device = sandbox.attach_volume(nvme_link())
    sandbox.check(make.format(device=device))
    before = sandbox.head_and_tail(device)
    _, result = boot_controller(sandbox)
    assert result.returncode != 0
    assert f"shared volume {VOLUME} ({device}) has {named}" in result.stderr
    assert "refusing to format or mount it" in result.stderr
    assert sandbox.head_and_tail(device) == before  # not a byte written
    assert "mke2fs" not in result.stdout + result.stderr
    assert mount_of(sandbox) == []
    assert sandbox.read("/etc/fstab") == FSTAB and not sandbox.exists(EXPORTS_FILE)
    assert sandbox.calls("k3s-installer") == []


# --------------------------------------------------------------------------------------------
# No volume, and the nodes.
# --------------------------------------------------------------------------------------------


def test_without_a_volume_the_root_disk_directory_is_exported_and_the_login_users(sandbox):
    _, result = boot_controller(sandbox, shared_volume_id=None)
    assert result.returncode == 0, result.stderr
    assert "no shared volume id" in result.stdout
    assert mount_of(sandbox) == []  # a plain directory on the root disk
    assert sandbox.read("/etc/fstab") == FSTAB
    assert sandbox.read(EXPORTS_FILE) == EXPORTS
    assert sandbox.stat(SHARED) == (LOGIN_UID, LOGIN_UID, 0o775)
    assert can_create(sandbox, f"{SHARED}/by-login-user", LOGIN_UID)
    assert not can_create(sandbox, f"{SHARED}/by-another-user", OTHER_UID)
    rerun = sandbox.run(sandbox.unpack(render_controller(make_inputs(shared_volume_id=None))))
    assert rerun.returncode == 0, rerun.stderr
    assert sandbox.read(EXPORTS_FILE) == EXPORTS and sandbox.stat(SHARED) == (LOGIN_UID, LOGIN_UID, 0o775)


def test_the_controller_makes_a_0600_server_token_and_keeps_it(sandbox):
    config, result = boot_controller(sandbox, shared_volume_id=None)
    assert result.returncode == 0, result.stderr
    token_file = "/etc/clusterous/k3s-server-token"
    assert sandbox.stat(token_file) == (0, 0, 0o600)
    token = sandbox.read(token_file)
    assert len(token.strip()) == 64 and int(token, 16) >= 0 and token.endswith("\n")
    assert sandbox.read("/etc/clusterous/k3s-agent-token").strip() != token.strip()
    assert token.strip() not in result.stdout + result.stderr
    rerun = sandbox.run(config)
    assert rerun.returncode == 0, rerun.stderr
    assert sandbox.read(token_file) == token


def test_a_node_installs_the_agent_and_touches_no_disk(sandbox):
    config = sandbox.unpack(render_node(make_inputs(), "worker"))
    result = sandbox.run(config)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls("k3s-installer")[0].split()[:3] == ["k3s-installer", "agent", "--server"]
    assert sandbox.check("k3s --version").startswith("k3s version v1.33.5+k3s1")  # what the installer left
    assert sandbox.read("/etc/fstab") == FSTAB and not sandbox.exists("/export")
    assert sandbox.stat("/etc/clusterous/k3s-agent-token")[2] == 0o600
    assert not sandbox.exists("/etc/clusterous/k3s-server-token")  # only the controller has one
    rerun = sandbox.run(config)
    assert rerun.returncode == 0 and len(sandbox.calls("k3s-installer")) == 1


def test_a_node_waits_for_the_ca_hash_tag_then_writes_the_k10_token_and_starts_the_agent(sandbox):
    """Until `up` tags it, a run installs k3s without starting it and fails after its looks (the
    unit runs it again); once the tag is there the next run writes the secure token and starts."""
    join_token = "/etc/clusterous/k3s-join-token"
    sandbox.tag(CA_HASH_TAG, None)
    config = sandbox.unpack(render_node(make_inputs(), "worker"))
    env = {"CLUSTEROUS_JOIN_ATTEMPTS": "3", "CLUSTEROUS_RETRY_DELAY": "0"}
    first = sandbox.run(config, **env)
    assert first.returncode == 1
    assert first.stdout.count(f"waiting for tag {CA_HASH_TAG}") == 2  # 3 looks, 2 waits
    assert sandbox.check("k3s --version").startswith("k3s version v1.33.5+k3s1")  # installed already
    assert not sandbox.exists(join_token) and not sandbox.exists(join_token + ".part")
    assert not [c for c in sandbox.calls("systemctl") if "k3s-agent" in c]  # not started without it
    sandbox.tag(CA_HASH_TAG, CA_DIGEST)
    second = sandbox.run(config, **env)
    assert second.returncode == 0, second.stderr
    assert sandbox.read(join_token) == f"K10{CA_DIGEST}::node:{AGENT_TOKEN}\n"
    assert sandbox.stat(join_token) == (0, 0, 0o600)
    assert [c for c in sandbox.calls("systemctl") if "k3s-agent" in c] == [
        "systemctl start k3s-agent.service"
    ]
    assert AGENT_TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr
    assert not [c for c in sandbox.read("/var/log/standins.log").splitlines() if AGENT_TOKEN in c]
