#!/usr/bin/env python3
"""Wall time of `clusterous-k8s status` against a minimal boto3 script making the same AWS calls.

Both run as fresh `python` processes against the same moto server (ThreadedMotoServer, Canonical
Ubuntu images seeded) holding a 2-instance cluster made by `up --workers 0 --no-wait`, in
alternating order so machine noise hits both alike. The minimal script makes exactly the calls
`status` makes (tests/harness/faults.py records them once first, so a change to `status` changes
the baseline too) with one boto3 session and nothing else. Prints the medians and, last,
`ratio=<status/minimal>`; the goal is <= 1.5.

Usage: python bench/command_latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")

# The calls as (service, botocore method, parameters): what a person writing `status` by hand
# would send, filled in from the recorded operation names below.
MINIMAL = """
import sys, boto3
cluster = sys.argv[1]
flt = [{"Name": "tag:clusterous:cluster", "Values": [cluster]}]
session = boto3.session.Session(region_name="us-east-1")
clients = {}
def client(service):
    if service not in clients:
        clients[service] = session.client(service)
    return clients[service]
calls = {
    "DescribeVpcs": ("ec2", "describe_vpcs", {"Filters": flt}),
    "DescribeSubnets": ("ec2", "describe_subnets", {"Filters": flt}),
    "DescribeInternetGateways": ("ec2", "describe_internet_gateways", {"Filters": flt}),
    "DescribeRouteTables": ("ec2", "describe_route_tables", {"Filters": flt}),
    "DescribeAddresses": ("ec2", "describe_addresses", {"Filters": flt}),
    "DescribeNatGateways": ("ec2", "describe_nat_gateways", {"Filters": flt}),
    "DescribeSecurityGroups": ("ec2", "describe_security_groups", {"Filters": flt}),
    "DescribeInstances": ("ec2", "describe_instances", {"Filters": flt}),
    "DescribeVolumes": ("ec2", "describe_volumes", {"Filters": flt}),
    "DescribeKeyPairs": ("ec2", "describe_key_pairs", {"Filters": flt}),
    "GetRole": ("iam", "get_role", {"RoleName": f"{cluster}-us-east-1-controller"}),
    "GetInstanceProfile": ("iam", "get_instance_profile", {"InstanceProfileName": f"{cluster}-us-east-1-controller"}),
    "DescribeParameters": ("ssm", "describe_parameters", {"ParameterFilters": [
        {"Key": "Name", "Option": "Equals", "Values": [f"/clusterous/{cluster}/k3s-token"]}]}),
}
for operation in sys.argv[2:]:
    service, method, params = calls[operation]
    getattr(client(service), method)(**params)
"""


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    from tests.harness import faults
    from tests.harness.aws_realism import install_public_images

    install_public_images()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory(prefix="clusterous-bench-") as scratch:
            work = Path(scratch)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(work / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
                "XDG_CONFIG_HOME": str(work / "config"),
                "XDG_CACHE_HOME": str(work / "cache"),
                "PYTHONPATH": os.pathsep.join(
                    str(REPO / p) for p in ("core", "cli", "provisioner", "operator", "")
                ),
                "COLUMNS": "120",
            }
            cli = [sys.executable, "-m", "clusterous_cli"]
            timed([*cli, "setup", "--region", "us-east-1", "--yes"], env)
            up = [
                "up",
                "--name",
                "bench",
                "--workers",
                "0",
                "--ssh-cidr",
                "198.51.100.7/32",
                "--no-wait",
                "--yes",
            ]
            timed([*cli, *up], env)

            # Record the calls `status` makes, once, with the harness's call-recording plugin.
            log, config = work / "calls.log", work / "faults.json"
            log.write_text("")
            config.write_text(json.dumps({"log": str(log), "faults": []}))
            recording = {
                **env,
                "BOTOCORE_EXPERIMENTAL__PLUGINS": faults.PLUGIN_SPEC,
                faults.ENV_FILE: str(config),
            }
            timed([*cli, "status", "--name", "bench"], recording)
            operations = [line.split()[1] for line in log.read_text().splitlines() if line.strip()]
            counted = collections.Counter(operations)
            minimal = work / "minimal_status.py"
            minimal.write_text(MINIMAL)

            ours_cmd = [*cli, "status", "--name", "bench"]
            base_cmd = [sys.executable, str(minimal), "bench", *operations]
            for cmd in (ours_cmd, base_cmd):  # warm the bytecode caches and the region list once
                timed(cmd, env)
            ours, base = [], []
            for i in range(args.runs):
                pair = [(ours, ours_cmd), (base, base_cmd)]
                for into, cmd in pair if i % 2 == 0 else reversed(pair):
                    into.append(timed(cmd, env))
    finally:
        server.stop()
    ours_median, base_median = statistics.median(ours), statistics.median(base)
    print(f"AWS calls of `status` (and of the minimal script): {len(operations)} {dict(counted)}")
    print(f"clusterous-k8s status: median {ours_median * 1000:.0f} ms over {args.runs} runs")
    print(f"minimal boto3 script:  median {base_median * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio={ours_median / base_median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
