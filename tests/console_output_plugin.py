"""A botocore client plugin that answers EC2 GetConsoleOutput with the text a test chose.

moto answers GetConsoleOutput with a fixed Xen boot log that holds no SSH host keys, and cannot
be told otherwise. This is the one AWS response the tests supply themselves: the call still goes
to moto (so it is recorded, faults apply, and an unknown instance is still an error), then this
handler replaces `Output` with the file named by CLUSTEROUS_CONSOLE_OUTPUT_FILE (the harness
sshd's cloud-init text), or removes it while the file does not exist, as EC2 does before an
instance's console is posted. It reaches every client the code makes the way the fault injector
does (tests/harness/faults.py): BOTOCORE_EXPERIMENTAL__PLUGINS names it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_FILE = "CLUSTEROUS_CONSOLE_OUTPUT_FILE"
PLUGIN_SPEC = "clusterous_console=tests.console_output_plugin"


def _replace_output(parsed, **kwargs) -> None:
    path = os.environ.get(ENV_FILE)
    if not path or "Error" in parsed:
        return
    if os.path.exists(path):
        parsed["Output"] = Path(path).read_text()
    else:
        parsed.pop("Output", None)


def initialize_client_plugin(client) -> None:
    # Last: after botocore's own handler has base64-decoded moto's Output.
    client.meta.events.register_last(
        "after-call.ec2.GetConsoleOutput", _replace_output, unique_id="clusterous-console-output"
    )
