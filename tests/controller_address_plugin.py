"""A botocore client plugin that gives the cluster's controller the address of the tests' sshd.

moto gives every instance a made-up public IPv4 that nothing answers on. With
CLUSTEROUS_TEST_CONTROLLER_ADDRESS set, every DescribeInstances answer shows that address as the
public address of an instance tagged `clusterous:role=controller` that has one: the call still
goes to moto (recorded, faults applied), only the address is the one the test's sshd listens
on. Registered like the console-output plugin (tests/console_output_plugin.py), through
BOTOCORE_EXPERIMENTAL__PLUGINS, so it reaches every client the code makes.
"""

from __future__ import annotations

import os

ENV_ADDRESS = "CLUSTEROUS_TEST_CONTROLLER_ADDRESS"
PLUGIN_SPEC = "clusterous_controller_address=tests.controller_address_plugin"


def _replace_address(parsed, **kwargs) -> None:
    address = os.environ.get(ENV_ADDRESS)
    if not address or "Error" in parsed:
        return
    for reservation in parsed.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if tags.get("clusterous:role") == "controller" and instance.get("PublicIpAddress"):
                instance["PublicIpAddress"] = address


def initialize_client_plugin(client) -> None:
    client.meta.events.register_last(
        "after-call.ec2.DescribeInstances", _replace_address, unique_id="clusterous-controller-address"
    )
