"""`host-key`: show the controller's pinned SSH host key, or re-learn it on purpose."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, cluster_ref

HELP = """Show the controller's pinned SSH host key; --relearn pins it again from the EC2 console output.

Connections are refused when the controller presents another key. Re-learn only when you know
the controller was replaced: the new key is read from what cloud-init printed at boot (the
instance's console output, fetched from EC2, or a saved copy with --console-output).

Example: clusterous-k8s host-key --relearn
"""


def host_key(
    ctx: typer.Context,
    cluster: str | None = CLUSTER_OPTION,
    relearn: bool = typer.Option(False, "--relearn", help="Pin the key printed in the console output."),
    console_output: Path = typer.Option(
        None, "--console-output", help="Read the console output from this file instead of EC2."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import hostkeys, output
    from clusterous_cli.endpoint import load_endpoint
    from clusterous_core.errors import BadInput, Failure

    ref = cluster_ref(ctx, cluster)
    endpoint = load_endpoint(ref)
    name = endpoint.host_key_name
    if relearn:
        if console_output is not None:
            try:
                text = console_output.read_text(errors="replace")
            except OSError as exc:
                raise BadInput(str(console_output), None, "a readable file", exc.strerror) from None
        else:
            if not endpoint.instance_id:
                raise BadInput(
                    str(ref.controller_file),
                    "instance_id",
                    "the controller's instance id (or pass --console-output)",
                )
            from clusterous_provisioner import aws, inventory

            with aws.aws_errors("reading the console output", "check your AWS credentials"):
                text = inventory.console_output(aws.client("ec2", endpoint.region), endpoint.instance_id)
            if not text:
                raise Failure("EC2 has no console output for the controller yet", "try again in a minute")
        old = {k.fingerprint for k in hostkeys.read_pinned(endpoint.known_hosts, name)}
        keys = hostkeys.pin_from_console_output(endpoint.known_hosts, name, text)
        changed = old != {k.fingerprint for k in keys}
        output.say(f"pinned {len(keys)} host key(s) for {name}" + (" (changed)" if changed and old else ""))
    keys = hostkeys.read_pinned(endpoint.known_hosts, name)
    rows = [{"host": name, "type": k.key_type, "fingerprint": k.fingerprint} for k in keys]
    if as_json:
        output.print_json({"known_hosts": str(endpoint.known_hosts), "keys": rows})
    elif rows:
        output.print_table(
            f"host keys pinned in {endpoint.known_hosts}",
            ["host", "type", "fingerprint"],
            [(r["host"], r["type"], r["fingerprint"]) for r in rows],
        )
    else:
        output.say(f"no host key pinned for {name}: run `clusterous-k8s host-key --relearn`")
