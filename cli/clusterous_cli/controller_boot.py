"""Has the controller booted: cloud-init's marker and result, the bootstrap unit's marker and
journal, read over SSH by `up`'s wait (readiness.py).

The argv builders and the parser are pure so the tests reach them without a controller; the
paths sit below `root` (normally "", a stand-in directory in the tests). Files cloud-init
writes are root's, hence `sudo -n` unless the login is root already.
"""

from __future__ import annotations

import json

# Where cloud-init leaves its results on the controller (below `cloud_init_root`, normally /).
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
CLOUD_INIT_RESULT = "/var/lib/cloud/data/result.json"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
# cloud-init only starts the bootstrap unit; a successful run leaves this marker.
BOOTSTRAP_UNIT = "clusterous-bootstrap.service"
BOOTSTRAP_DONE = "/var/lib/clusterous/bootstrap.done"
LOG_TAIL_LINES = 25


def cloud_init_script(root: str) -> list[str]:
    """argv that prints `finished` and cloud-init's result.json, or `running`."""
    script = (
        'as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }\n'
        'if [ -e "$1$2" ]; then echo finished; as_root cat -- "$1$3" 2>/dev/null || true; '
        "else echo running; fi\n"
    )
    return ["sh", "-c", script, "cloud-init-status", root, BOOT_FINISHED, CLOUD_INIT_RESULT]


def log_tail_command(root: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    script = (
        'if [ "$(id -u)" -eq 0 ]; then exec tail -n "$2" -- "$1"; else exec sudo -n tail -n "$2" -- "$1"; fi'
    )
    return ["sh", "-c", script, "cloud-init-log", root + CLOUD_INIT_LOG, str(lines)]


def bootstrap_script(root: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """argv that prints `done`, or `running` and the unit's last journal lines."""
    script = (
        'if [ -e "$1$2" ]; then echo done; exit 0; fi\n'
        "echo running\n"
        'if [ "$(id -u)" -eq 0 ]; then j=journalctl; else j="sudo -n journalctl"; fi\n'
        '$j -u "$3" -n "$4" --no-pager -o cat 2>/dev/null || true\n'
    )
    return ["sh", "-c", script, "bootstrap-status", root, BOOTSTRAP_DONE, BOOTSTRAP_UNIT, str(lines)]


def parse_cloud_init(output: str) -> tuple[bool, list[str]]:
    """(finished, errors) from what `cloud_init_script` printed."""
    first, _, rest = output.strip().partition("\n")
    if first.strip() != "finished":
        return False, []
    try:
        result = json.loads(rest) if rest.strip() else {}
    except ValueError:
        return True, []
    v1 = result.get("v1") if isinstance(result, dict) else None
    errors = (v1 or {}).get("errors") or []
    return True, [str(e) for e in errors]
