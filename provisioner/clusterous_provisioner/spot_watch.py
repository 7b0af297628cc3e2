"""The spot watcher: EC2's two-minute interruption notice, turned into marks on the node's own Node.

It runs on every agent node that is not known to be on-demand (the DaemonSet of
manifests/spot-watch.yaml, on the host network because IMDSv2 with hop limit 1 answers only the
host's own network namespace), in the pinned stock Python image, with nothing but the standard
library: nothing is installed on a node. The file itself is the ConfigMap's script.

1. It labels its Node `clusterous.io/capacity-type` with IMDS `instance-life-cycle` (`spot`,
   `on-demand`, ...). The DaemonSet selects nodes where that label is not `on-demand`, so on an
   on-demand node Kubernetes removes the pod again; it idles until then.
2. On a spot node it asks IMDSv2 every 5 s (AWS: "We recommend that you check for these
   interruption notices every 5 seconds") for `/latest/meta-data/spot/instance-action`: 404 while
   there is no notice, else `{"action": "terminate"|"stop"|"hibernate", "time": "<UTC>"}`, the
   action and roughly when it happens (docs/elastic.md, "Spot interruptions", has the sources).
3. On a notice it cordons its Node, taints it `clusterous.io/spot-interruption=<action>:NoSchedule`
   and annotates it with the notice (one merge patch, guarded by the Node's resourceVersion).
   The autoscaler, woken by its watch on Nodes, drains the node and launches a replacement.

Its ServiceAccount may only get and patch Nodes. The API and IMDS addresses, the token file and
the poll interval come from the environment, so tests run it against loopback stand-ins.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

MARKET_LABEL = "clusterous.io/capacity-type"
TAINT = "clusterous.io/spot-interruption"
ANNOTATION = "clusterous.io/spot-interruption"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_TTL = 21600  # seconds: IMDSv2's longest session
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {message}", flush=True)


def label_value(text: str) -> str:
    """`text` if Kubernetes accepts it as a label (or taint) value, else "unknown"."""
    return text if LABEL_VALUE.match(text) else "unknown"


class Imds:
    """IMDSv2: a session token from a PUT, then GETs carrying it; a 401 renews the token."""

    def __init__(self, url: str, timeout: float = 2.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.token, self.expires = "", 0.0

    def _session(self) -> str:
        if not self.token or time.monotonic() > self.expires:
            request = urllib.request.Request(
                f"{self.url}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                self.token = reply.read().decode()
            self.expires = time.monotonic() + TOKEN_TTL - 60
        return self.token

    def get(self, path: str) -> str | None:
        """The metadata item's text, or None when IMDS answers 404 (not there)."""
        for attempt in (1, 2):
            request = urllib.request.Request(
                f"{self.url}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._session()}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return reply.read().decode()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code != 401 or attempt == 2:
                    raise
                self.token = ""  # the session expired: a new one, once
        return None

    def notice(self) -> dict | None:
        """The interruption notice {"action", "time"}, or None while there is none."""
        text = self.get("spot/instance-action")
        if text is None:
            return None
        found = json.loads(text)
        if not isinstance(found, dict):
            raise ValueError(f"spot/instance-action is not a JSON object: {text[:80]!r}")
        return {"action": label_value(str(found.get("action", ""))), "time": str(found.get("time", ""))}


class Api:
    """The few Kubernetes API calls the watcher makes, with the pod's ServiceAccount token."""

    def __init__(self, url: str, token_file: str, ca_file: str | None, timeout: float = 10.0):
        self.url, self.token_file, self.timeout = url.rstrip("/"), token_file, timeout
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @classmethod
    def from_environment(cls) -> Api:
        url = os.environ.get("CLUSTEROUS_API_URL")
        if not url:  # in the cluster: the API's Service address, as client-go's in-cluster config
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token = os.environ.get("CLUSTEROUS_TOKEN_FILE", f"{SA_DIR}/token")
        ca = f"{SA_DIR}/ca.crt" if url.startswith("https://") else None
        return cls(url, token, ca)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        with open(self.token_file) as stream:  # read each time: the kubelet rotates it
            token = stream.read().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/merge-patch+json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as reply:
            return json.loads(reply.read() or b"{}")

    def patch_node(self, name: str, change) -> dict:
        """Merge-patch a Node with `change(node)`, guarded by its resourceVersion (retried on 409)."""
        for attempt in range(5):
            node = self.call("GET", f"/api/v1/nodes/{name}")
            body = change(node)
            body.setdefault("metadata", {})["resourceVersion"] = node["metadata"]["resourceVersion"]
            try:
                return self.call("PATCH", f"/api/v1/nodes/{name}", body)
            except urllib.error.HTTPError as exc:
                if exc.code != 409 or attempt == 4:
                    raise
        raise AssertionError("unreachable")


def market_patch(market: str):
    return lambda node: {"metadata": {"labels": {MARKET_LABEL: label_value(market)}}}


def notice_patch(notice: dict, noticed: str):
    """Cordon, our taint (replacing an earlier one of ours, keeping every other), the annotation."""

    def change(node: dict) -> dict:
        kept = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT]
        taint = {"key": TAINT, "value": notice["action"], "effect": "NoSchedule"}
        return {
            "metadata": {
                "annotations": {ANNOTATION: json.dumps({**notice, "noticed": noticed}, sort_keys=True)}
            },
            "spec": {"unschedulable": True, "taints": [*kept, taint]},
        }

    return change


def watch(imds: Imds, api: Api, node: str, poll: float) -> None:
    """Label the node with its market; on a spot node, mark every new notice; never returns."""
    market = None
    while market is None:
        try:
            market = imds.get("instance-life-cycle") or "unknown"
            api.patch_node(node, market_patch(market))
        except (OSError, ValueError) as exc:  # IMDS or the API not answering yet: try again
            log(f"labelling {node}: {exc}")
            market = None
            time.sleep(poll)
    log(f"{node}: {MARKET_LABEL}={label_value(market)}")
    if market != "spot":  # the DaemonSet no longer selects this node: Kubernetes removes the pod
        while True:
            signal.pause()  # until its SIGTERM (main's handler exits)
    marked = None
    while True:
        try:
            notice = imds.notice()
            if notice is not None and notice != marked:
                noticed = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                api.patch_node(node, notice_patch(notice, noticed))
                log(f"{node}: spot interruption notice {notice}: cordoned, tainted {TAINT}")
                marked = notice
        except (OSError, ValueError) as exc:  # one failed look must not end the watch
            log(f"{node}: {type(exc).__name__}: {exc}")
        time.sleep(poll)


def main() -> int:
    # PID 1 in its container: without a handler SIGTERM would be ignored until the grace period ends.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    imds = Imds(os.environ.get("CLUSTEROUS_IMDS_URL", "http://169.254.169.254"))
    poll = float(os.environ.get("CLUSTEROUS_POLL_SECONDS", "5"))
    watch(imds, Api.from_environment(), os.environ["NODE_NAME"], poll)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
