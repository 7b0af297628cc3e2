"""Host keys learned from console output, pinned, and enforced; the connection's failure messages."""

from __future__ import annotations

import shutil

import pytest

from clusterous_cli import hostkeys, openssh, ssh
from clusterous_cli.endpoint import load_endpoint, write_endpoint
from clusterous_core.errors import BadInput, Failure
from tests.harness.sshd import SshServer, cloud_init_console_output
from tests.ssh_support import controller, make_controller  # noqa: F401

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIcBvkPpINYBuE6tXcix0LNOCEVWgpK9d8oVckKIHLBb root@other"


def test_console_output_yields_the_servers_key(sshd: SshServer) -> None:
    keys = hostkeys.parse_console_output(sshd.console_output())
    assert [f"{k.key_type} {k.blob}" for k in keys] == [" ".join(sshd.host_public_key.split()[:2])]
    assert keys[0].fingerprint == sshd.host_key_fingerprint


def test_last_key_block_wins_after_a_reboot(sshd: SshServer) -> None:
    text = cloud_init_console_output([OTHER_KEY]) + "reboot\n" + sshd.console_output()
    assert [k.fingerprint for k in hostkeys.parse_console_output(text)] == [sshd.host_key_fingerprint]


def test_keys_that_do_not_match_the_fingerprints_are_not_trusted(sshd: SshServer) -> None:
    text = sshd.console_output().replace(sshd.host_public_key.split()[1], OTHER_KEY.split()[1])
    with pytest.raises(Failure, match="do not match"):
        hostkeys.parse_console_output(text)


def test_console_output_without_keys_is_a_failure() -> None:
    with pytest.raises(Failure, match="no SSH host keys"):
        hostkeys.parse_console_output("[ 0.0] booting\n")


def test_pinned_connection_runs_commands(controller) -> None:  # noqa: F811
    with ssh.connect(controller.endpoint) as conn:
        code, out, _ = conn.run(["echo", "hello world"])
        cipher = conn.transport.remote_cipher
    assert (code, out) == (0, b"hello world\n")
    assert cipher == "aes128-gcm@openssh.com"
    assert controller.endpoint.known_hosts.stat().st_mode & 0o777 == 0o600


def test_changed_host_key_is_refused_with_the_relearn_command(controller, cli) -> None:  # noqa: F811
    controller.sshd.rotate_host_key()
    with pytest.raises(hostkeys.HostKeyChanged) as refused:
        ssh.connect_cluster(controller.ref)
    message = refused.value.render()
    assert "CHANGED" in message and "host-key --relearn --cluster lab" in message

    result = cli(["tunnel", "start"])
    assert result.exit_code == 1 and "CHANGED" in result.output
    assert "Traceback" not in result.output

    saved = controller.ref.directory / "console.txt"
    saved.write_text(controller.sshd.console_output())
    relearned = cli(["host-key", "--relearn", "--console-output", str(saved)])
    assert relearned.exit_code == 0, relearned.output
    assert controller.sshd.host_key_fingerprint in relearned.output
    with ssh.connect_cluster(controller.ref) as conn:
        assert conn.run(["true"])[0] == 0


def test_nothing_pinned_means_no_connection(controller) -> None:  # noqa: F811
    controller.endpoint.known_hosts.unlink()
    with pytest.raises(Failure, match="no host key pinned"):
        ssh.connect(controller.endpoint)


def test_openssh_command_trusts_the_same_pin(controller) -> None:  # noqa: F811
    import subprocess

    argv = [*openssh.argv(controller.endpoint), controller.endpoint.host, "echo", "ok"]
    assert "StrictHostKeyChecking=yes" in argv
    assert subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout == "ok\n"
    controller.sshd.rotate_host_key()
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0


def test_jump_host_reaches_the_controller(sshd: SshServer) -> None:
    made = make_controller(sshd, jump_host=f"{sshd.user}@{sshd.host}:{sshd.port}")
    endpoint = load_endpoint(made.ref)
    assert endpoint.jump_host
    with ssh.connect(endpoint) as conn:
        assert conn.run(["echo", "via bastion"])[1] == b"via bastion\n"
    import subprocess

    argv = [*openssh.argv(endpoint), endpoint.host, "echo", "ok"]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout == "ok\n"
    from clusterous_cli import controlmaster  # the tunnel supervisor's master goes through it too

    master = controlmaster.Master.start(endpoint, controlmaster.openssh_binary() or "ssh")
    try:
        assert master.alive(5)
    finally:
        master.close()


def test_unreachable_controller_is_a_failure(controller) -> None:  # noqa: F811
    from clusterous_cli import controlmaster

    controller.sshd.stop()
    with pytest.raises(Failure, match="cannot reach the controller"):
        ssh.connect(controller.endpoint)
    with pytest.raises(Failure, match="cannot reach the controller") as failed:
        controlmaster.Master.start(controller.endpoint, controlmaster.openssh_binary() or "ssh")
    assert not isinstance(failed.value, hostkeys.Refusal)  # the network: worth retrying


def test_wrong_key_is_refused(controller, tmp_path) -> None:  # noqa: F811
    from tests.harness.sshd import generate_ed25519_key

    other = generate_ed25519_key(tmp_path / "other", "someone-else")
    write_endpoint(controller.ref, controller.endpoint._replace(key_file=other))
    with pytest.raises(Failure, match="refused the key"):
        ssh.connect_cluster(controller.ref)


def test_missing_key_file_is_bad_input(controller, tmp_path) -> None:  # noqa: F811
    gone = tmp_path / "gone.pem"
    shutil.copy(controller.endpoint.key_file, gone)
    gone.unlink()
    with pytest.raises(BadInput, match="not found"):
        ssh.connect(controller.endpoint._replace(key_file=gone))


def test_missing_controller_record_is_bad_input(cli) -> None:
    from clusterous_cli import config

    config.save_profile(
        "default", config.Profile(region="eu-west-1", bucket="b-test", current_cluster="nowhere")
    )
    result = cli(["tunnel", "add", "18080:10.0.0.1:80"])
    assert result.exit_code == 2
    assert "controller.yml" in result.output and "is the cluster up" in result.output


INSTANCE = "i-0123456789abcdef0"


def _reach_all_ways(ref) -> None:
    """paramiko, the OpenSSH command (rsync's) and the tunnel supervisor's ControlMaster."""
    import subprocess

    from clusterous_cli import controlmaster

    endpoint = load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        assert conn.run(["echo", "ok"])[1] == b"ok\n"
    argv = [*openssh.argv(endpoint), endpoint.host, "echo", "ok"]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout == "ok\n"
    master = controlmaster.Master.start(endpoint, controlmaster.openssh_binary() or "ssh")
    try:
        assert master.alive(5)
    finally:
        master.close()


def test_host_key_pinned_under_the_instance_id_survives_a_new_address(sshd: SshServer, cli) -> None:
    """Issue 14 item 9: a stop/start gives the controller a new public address, not a new key."""
    made = make_controller(sshd, instance_id=INSTANCE)
    pinned = made.endpoint.known_hosts.read_text()
    assert pinned.startswith(f"{INSTANCE} ssh-ed25519 ") and sshd.host not in pinned
    _reach_all_ways(made.ref)

    moved = made.endpoint._replace(host="localhost")  # a new address
    write_endpoint(made.ref, moved)
    _reach_all_ways(made.ref)  # no relearn
    listed = cli(["host-key", "--json"])
    assert listed.exit_code == 0 and f'"host": "{INSTANCE}"' in listed.stdout


def test_a_pin_keyed_by_address_moves_to_the_instance_id_once(sshd: SshServer) -> None:
    """Clusters pinned before keys were keyed by instance id keep working, then survive a move."""
    made = make_controller(sshd)  # pinned under [127.0.0.1]:port, no instance id known
    address_pin = made.endpoint.known_hosts.read_text()
    assert address_pin.startswith(f"[{sshd.host}]:{sshd.port} ")
    write_endpoint(made.ref, made.endpoint._replace(instance_id=INSTANCE))
    _reach_all_ways(made.ref)
    assert made.endpoint.known_hosts.read_text() == address_pin.replace(
        f"[{sshd.host}]:{sshd.port}", INSTANCE
    )
    write_endpoint(
        made.ref,
        made.endpoint._replace(instance_id=INSTANCE, host="localhost"),
    )
    _reach_all_ways(made.ref)
