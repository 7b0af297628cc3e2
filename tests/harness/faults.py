"""A botocore client plugin that records every AWS call and injects failures on request.

botocore loads it into every client it creates, in this process and in CLI subprocesses alike,
when BOTOCORE_EXPERIMENTAL__PLUGINS names it (the `aws` fixture sets that). Its configuration is
a JSON file named by CLUSTEROUS_FAULTS_FILE:

    {"log": "/tmp/.../calls.log",
     "faults": [{"operation": "RunInstances", "at": 2, "code": "InsufficientInstanceCapacity",
                 "message": "...", "status": 500, "crash": false}]}

Every call appends "<service> <operation>" to the log (under a lock, so the k-th call is counted
across clients and processes). A fault makes the k-th call of an operation (1-based) return the
given AWS error, or raise SimulatedCrash (a process dying between two calls) when "crash" is true.

A response carrying CRASH_HEADER (sent by the AWS realism layer's crash_after, after AWS applied
the call) also raises SimulatedCrash, before botocore parses it: the process dies having made a
call whose answer it never saw.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

ENV_FILE = "CLUSTEROUS_FAULTS_FILE"
PLUGIN_SPEC = "clusterous_faults=tests.harness.faults"
CRASH_HEADER = "x-clusterous-simulated-crash"  # tests.harness.aws_realism sends it: see crash_after


class SimulatedCrash(BaseException):
    """Stands for the process dying mid-way; BaseException so no `except Exception` swallows it."""


def _config() -> dict | None:
    path = os.environ.get(ENV_FILE)
    if not path or not os.path.exists(path):
        return None
    return json.loads(Path(path).read_text())


def _record(log: str, service: str, operation: str) -> int:
    """Append the call and return how many calls of this operation the log now holds."""
    with open(log, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"{service} {operation}\n")
        fh.flush()
        fh.seek(0)
        count = sum(1 for line in fh if line.split() == [service, operation])
        fcntl.flock(fh, fcntl.LOCK_UN)
    return count


def error_response(operation: str, code: str, message: str, status: int = 400):
    """What botocore would have parsed from AWS refusing the call."""
    from botocore.awsrequest import AWSResponse

    http = AWSResponse(url="https://fault.injected/", status_code=status, headers={}, raw=None)
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "injected-fault"},
    }
    return http, parsed


def _before_call(model, **kwargs):
    config = _config()
    if config is None:
        return None
    service = model.service_model.service_name
    count = _record(config["log"], service, model.name)
    for fault in config.get("faults", []):
        if (
            fault["operation"] == model.name
            and fault.get("service", service) == service
            and fault["at"] == count
        ):
            if fault.get("crash"):
                raise SimulatedCrash(f"simulated crash before {service}.{model.name} call #{count}")
            return error_response(
                model.name,
                fault.get("code", "InternalError"),
                fault.get("message", "injected fault"),
                fault.get("status", 400),
            )
    return None


def _before_parse(operation_model, response_dict, **kwargs):
    operation = response_dict["headers"].get(CRASH_HEADER)
    if operation:
        raise SimulatedCrash(f"simulated crash after {operation_model.name} was applied ({operation})")


def initialize_client_plugin(client) -> None:
    """botocore's plugin entry point: called once for every new client."""
    client.meta.events.register("before-call.*.*", _before_call, unique_id="clusterous-faults")
    client.meta.events.register("before-parse.*.*", _before_parse, unique_id="clusterous-crash-after")
