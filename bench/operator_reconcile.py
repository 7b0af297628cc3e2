#!/usr/bin/env python3
"""How much the operator writes, and how fast it reconciles, against the Kubernetes API emulator.

Starts the emulator of the test harness (tests/harness/k8s.py) on 127.0.0.1, posts the CRD, a
master node and four 4-CPU workers, and runs the real operator in a thread (kopf's KopfRunner
with `clusterous_operator.handlers`, as tests/test_operator_e2e.py does, watching the `default`
namespace). Writes are the POST/PUT/PATCH/DELETE requests the emulator received, the bench's
own (user agent `clusterous-bench`) left out. Three figures:

1. the writes for one 2-component app from create to Running; the bench plays the Deployment
   controller the emulator lacks: once the app reports a phase, its Deployments become ready.
   Goal: the creates plus one status patch.
2. the writes during two resyncs of that app with nothing changed. Goal: 0.
3. the time to reconcile 100 ClusterApps, from applying them to all having their children and
   status, as a ratio to the time of the bare API writes they need: the same ClusterApps,
   children (with owner references) and status patches, written one after the other with the
   same client library (`kubernetes`) to the same emulator, in a namespace the operator does
   not watch. Three rounds, each bare writes then the operator (whose apps are then deleted,
   untimed); the ratio is the median of the rounds'. Goal: <= 2. Last line: `ratio=<value>`.

The emulator, kopf and the clients share one process, so the collector's full passes over the
emulator's stored history (0.2-0.4 s each) would land at random in the timed windows: each
window starts with `gc.freeze()`, for both sides alike.

Run from the repository root: python bench/operator_reconcile.py [--apps N] [--rounds N]
[--resync SECONDS] (about 40 s on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import gc
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

import attrs  # noqa: E402
import kmock  # noqa: E402

from clusterous_operator.builders import APP_LABEL, SPEC_HASH_ANNOTATION  # noqa: E402
from clusterous_operator.reconcile import decide  # noqa: E402
from tests.harness.k8s import ApiEmulator, K8sApi, find_resource  # noqa: E402

GROUP, VERSION, PLURAL = "clusterous.io", "v1alpha1", "clusterapps"
NAMESPACE = "default"  # the operator runs with --namespace=default ...
BARE_NAMESPACE = "bench-bare-{}"  # ... so it never sees the ClusterApps of the bare writes
BENCH_AGENT = "clusterous-bench"  # the bench's own requests, left out of the counts
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
WORKERS = 4  # worker nodes of 4 CPUs
TIMEOUT = 30.0  # for any one wait


class BenchError(RuntimeError):
    pass


# -- the emulator, recording requests itself ------------------------------------------------------


@attrs.define(kw_only=True)
class RecordingEmulator(ApiEmulator):
    """The harness's emulator, keeping its own log of the requests it received.

    kmock keeps every request in `_requests` and routes a new one by scanning that whole list
    once per candidate reaction (about 20), so each request costs time in proportion to all the
    requests before it: a few thousand requests into a run, the emulator, not the code under
    test, would dominate the timings. Here kmock's list holds only the request being routed
    (it is the last one when `_handle` starts: nothing awaits between appending and routing),
    and `log` keeps them all. The bench adds no DSL reactions whose slices could count them.
    """

    log: list = attrs.field(factory=list, init=False)

    async def _handle(self, request):
        self.log.append(request)
        del self._requests[:-1]
        return await super()._handle(request)


class BenchApi(K8sApi):
    """K8sApi serving a RecordingEmulator; everything else as in the harness."""

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = RecordingEmulator()
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()
            await self.emulator.close_watches()

    def mark(self) -> int:
        return self.call(lambda emulator: len(emulator.log))

    def requests(self, since: int = 0) -> list[dict]:
        """Requests after `since`, not the bench's own, as {verb, resource, what, watch}."""
        described = self.call(lambda emulator: [_describe(r) for r in emulator.log[since:]])
        return [r for r in described if r["agent"] != BENCH_AGENT]

    def writes(self, since: int = 0) -> list[dict]:
        return [r for r in self.requests(since) if r["verb"] in WRITE_VERBS]


def _describe(request) -> dict:
    verb = str(getattr(request.method, "value", request.method)).upper()
    resource = request.resource.plural if request.resource is not None else None
    if resource and request.subresource:
        resource += "/" + request.subresource
    return {
        "verb": verb,
        "resource": resource or request.url.path,
        "agent": request.headers.get("User-Agent", ""),
        "watch": request.params.get("watch") == "true",
        "what": _patched_fields(request.data) if verb == "PATCH" else "",
    }


def _patched_fields(data) -> str:
    """Which fields a PATCH touches, e.g. `metadata.finalizers` or `status`."""
    if isinstance(data, list):  # a JSON patch; kopf's start with a test of the resourceVersion
        paths = {op.get("path", "?").strip("/").replace("/", ".") for op in data if op.get("op") != "test"}
        return ",".join(sorted(paths))
    if isinstance(data, dict):
        paths = []
        for key, value in data.items():
            if key == "metadata" and isinstance(value, dict):
                paths.extend(f"metadata.{sub}" for sub in value)
            else:
                paths.append(key)
        return ",".join(sorted(paths))
    return ""


def breakdown(writes: list[dict]) -> list[str]:
    counts = collections.Counter(
        f"{w['verb']} {w['resource']}" + (f" ({w['what']})" if w["what"] else "") for w in writes
    )
    return [f"     {n:4d}  {key}" for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


# -- helpers --------------------------------------------------------------------------------------


def clusterapp(name: str, namespace: str = NAMESPACE) -> dict:
    """A master and `auto` engines, as examples/basic-python (without dependsOn: both start at once)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterApp",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "components": [
                {"name": "master", "group": "master", "image": "basic-python", "cpu": "0.5", "ports": [8888]},
                {
                    "name": "engine",
                    "group": "worker",
                    "image": "basic-python",
                    "replicas": "auto",
                    "cpu": "1",
                },
            ]
        },
    }


def decision_for(name: str, namespace: str, nodes: list[dict]):
    """What the operator makes of a new ClusterApp `name`: its children and its status."""
    body = clusterapp(name, namespace)
    body["metadata"]["generation"] = 1
    decision = decide(body, nodes, now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if decision.error is not None:
        raise BenchError(f"the bench's app is invalid: {decision.error}")
    return decision


class Times(typing.NamedTuple):
    wall: float
    cpu: float  # of this whole process (emulator, operator, clients): close to `wall` when CPU-bound


class Stopwatch:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> Times:
        return Times(time.perf_counter() - self.wall, time.process_time() - self.cpu)


def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(poll)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_quiet(api: BenchApi, since: int, quiet: float = 1.0) -> None:
    """Until no write has arrived for `quiet` seconds (kopf posts Events in the background)."""
    seen, at = -1, time.monotonic()
    deadline = at + TIMEOUT
    while time.monotonic() < deadline:
        count = len(api.writes(since))
        if count != seen:
            seen, at = count, time.monotonic()
        elif time.monotonic() - at >= quiet:
            return
        time.sleep(0.05)
    raise BenchError("the operator kept writing")


def status_of(api: BenchApi, name: str) -> dict:
    return ((api.get("capp", name, namespace=NAMESPACE) or {}).get("status")) or {}


def new_client(kubeconfig: Path):
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    client.user_agent = BENCH_AGENT
    return client


class DeploymentController(threading.Thread):
    """Plays the Deployment controller for the app `name`: once the operator has reported the
    app (pods take longer to start than that), every Deployment of the app gets all its
    replicas ready in one step, straight in the emulator's store (no request)."""

    def __init__(self, api: BenchApi, name: str) -> None:
        super().__init__(name="bench-deployment-controller", daemon=True)
        self.api, self.name = api, name
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            if status_of(self.api, self.name).get("phase"):
                self.api.call(self.make_ready)

    async def make_ready(self, emulator) -> None:
        deployments = find_resource(emulator, "apps/v1/deployments")
        for deployment in list(emulator._live(deployments, NAMESPACE)):
            meta = deployment["metadata"]
            if (meta.get("labels") or {}).get(APP_LABEL) != self.name:
                continue
            replicas, generation = deployment["spec"].get("replicas", 1), meta.get("generation", 1)
            status = deployment.get("status") or {}
            if status.get("observedGeneration") == generation and status.get("readyReplicas") == replicas:
                continue
            ready = {
                "observedGeneration": generation,
                "replicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
            }
            await emulator.update(deployments, NAMESPACE, meta["name"], {"status": ready}, "status")


class TimerRuns(logging.Handler):
    """Counts kopf's `Timer 'resync' succeeded` log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Timer 'resync' succeeded" in record.getMessage():
            self.count += 1


# -- the figures ----------------------------------------------------------------------------------


def one_app(api: BenchApi, custom) -> tuple[list[dict], float]:
    """Figure 1: one app from create to Running, and the writes that follow until all is quiet."""
    controller = DeploymentController(api, "solo")
    controller.start()
    try:
        since = api.mark()
        start = time.perf_counter()
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, clusterapp("solo"))
        wait_for(lambda: status_of(api, "solo").get("phase") == "Running", "the app to be Running")
        elapsed = time.perf_counter() - start
        wait_quiet(api, since)
    finally:
        controller.stopping.set()
        controller.join(5)
    return api.writes(since), elapsed


def resyncs(api: BenchApi, timers: TimerRuns, runs: int = 2) -> list[dict]:
    """Figure 2: the requests made while `runs` resyncs pass with nothing changed."""
    first, since = timers.count, api.mark()
    wait_for(lambda: timers.count >= first + runs, f"{runs} resyncs", poll=0.05)
    return api.requests(since)


def bare_writes(kubeconfig: Path, nodes: list[dict], apps: int, namespace: str) -> Times:
    """The writes the operator needs for `apps` new apps, made directly, one after the other."""
    import kubernetes

    client = new_client(kubeconfig)
    try:
        core, apps_v1 = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        core.create_namespace({"metadata": {"name": namespace}}, _preload_content=False)
        create = {
            "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
            "Deployment": apps_v1.create_namespaced_deployment,
            "Service": core.create_namespaced_service,
        }
        names = [f"app-{i:03d}" for i in range(apps)]
        decisions = {name: decision_for(name, namespace, nodes) for name in names}  # not timed
        gc.freeze()
        watch = Stopwatch()
        for name in names:
            created = custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, clusterapp(name, namespace)
            )
            owner = {
                "apiVersion": created["apiVersion"],
                "kind": created["kind"],
                "name": name,
                "uid": created["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            for child in decisions[name].children:
                child = copy.deepcopy(child)
                child["metadata"]["ownerReferences"] = [owner]
                create[child["kind"]](namespace, child, _preload_content=False)
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": decisions[name].status}
            )
        return watch.read()
    finally:
        client.close()


def all_reconciled(api: BenchApi, names: list[str], nodes: list[dict]) -> Callable[[], bool]:
    """A check that every app has its children (by spec hash) and its status; run in the
    emulator's loop on the stored objects, without copies."""
    wanted = {}
    for name in names:
        decision = decision_for(name, NAMESPACE, nodes)
        children = {
            (c["kind"], c["metadata"]["name"]): c["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            for c in decision.children
        }
        wanted[name] = (children, decision.status["phase"], decision.status["ready"])

    def check(emulator) -> bool:
        kinds = {
            "Deployment": find_resource(emulator, "apps/v1/deployments"),
            "Service": find_resource(emulator, "v1/services"),
            "PersistentVolumeClaim": find_resource(emulator, "v1/persistentvolumeclaims"),
        }
        capps = find_resource(emulator, f"{GROUP}/{VERSION}/{PLURAL}")

        def stored(resource, name) -> dict | None:
            key = (resource, NAMESPACE, name)
            return (
                None
                if key not in emulator.objects or emulator.objects[key].deleted
                else emulator.objects[key].raw
            )

        for name, (children, phase, ready) in wanted.items():
            app = stored(capps, name)
            status = (app or {}).get("status") or {}
            if (status.get("phase"), status.get("ready")) != (phase, ready):
                return False
            if status.get("observedGeneration") != app["metadata"].get("generation"):
                return False
            for (kind, child), digest in children.items():
                obj = stored(kinds[kind], child)
                if (
                    obj is None
                    or (obj["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != digest
                ):
                    return False
        return True

    return lambda: api.call(check)


def many_apps(api: BenchApi, custom, nodes: list[dict], names: list[str]) -> tuple[Times, list[dict]]:
    """Figure 3, the operator's side: apply the apps, wait until all are reconciled; then delete
    them (not timed) and wait until they are gone, so that their resyncs add no load later."""
    done = all_reconciled(api, names, nodes)
    since = api.mark()
    gc.freeze()
    watch = Stopwatch()
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, clusterapp(name))
    wait_for(done, f"{len(names)} apps to be reconciled", timeout=60)
    elapsed = watch.read()
    writes = api.writes(since)
    for name in names:
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    wait_for(lambda: api.call(gone(names)), "the apps to be deleted", timeout=60, poll=0.25)
    return elapsed, writes


def gone(names: list[str]) -> Callable:
    """A check, run in the emulator's loop, that none of the ClusterApps `names` is stored."""

    def check(emulator) -> bool:
        capps = find_resource(emulator, f"{GROUP}/{VERSION}/{PLURAL}")
        keys = ((capps, NAMESPACE, name) for name in names)
        return all(key not in emulator.objects or emulator.objects[key].deleted for key in keys)

    return check


def over_goal(writes: list[dict], creates: int) -> str:
    """The writes beyond the creates and one status patch, by kind."""
    events = sum(1 for w in writes if w["verb"] == "POST" and w["resource"] == "events")
    statuses = sum(1 for w in writes if w["resource"] == f"{PLURAL}/status")
    finalizers = sum(1 for w in writes if w["resource"] == PLURAL and "finalizers" in w["what"])
    parts = [f"{events} Events"] if events else []
    if finalizers:
        parts.append(f"{finalizers} finalizer patch(es) by kopf")
    if statuses > 1:
        parts.append(f"{statuses - 1} more status patch(es)")
    other = len(writes) - creates - 1 - events - finalizers - max(statuses - 1, 0)
    if other:
        parts.append(f"{other} other")
    return ", ".join(parts)


def operator_watching(api: BenchApi) -> bool:
    return any(r["watch"] and r["resource"] == PLURAL for r in api.requests())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=100, help="ClusterApps for the third figure (100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the third figure (3)")
    parser.add_argument("--resync", type=float, default=5.0, help="the operator's resync interval (5 s)")
    args = parser.parse_args(argv)
    os.environ["CLUSTEROUS_RESYNC_SECONDS"] = str(args.resync)  # read when the handlers are imported
    import kubernetes
    import yaml
    from kopf.testing import KopfRunner

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    timers = TimerRuns()
    logging.getLogger("kopf.objects").addHandler(timers)

    with tempfile.TemporaryDirectory(prefix="clusterous-bench-") as scratch:
        api = BenchApi(Path(scratch)).start()
        try:
            os.environ["KUBECONFIG"] = str(api.kubeconfig)  # for kopf's login
            crd = yaml.safe_load((ROOT / "operator/clusterous_operator/crd.yaml").read_text())
            api.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            api.add_node("master-1", labels={"clusterous.io/group": "master"}, cpu="2")
            for i in range(WORKERS):
                api.add_node(f"worker-{i + 1}", labels={"clusterous.io/group": "worker"}, cpu="4")
            nodes = api.list("v1/nodes")

            bare_writes(api.kubeconfig, nodes, 3, BARE_NAMESPACE.format("warm-up"))  # imports, pools
            client = new_client(api.kubeconfig)
            custom = kubernetes.client.CustomObjectsApi(client)
            operator = [
                "run",
                "--standalone",
                f"--namespace={NAMESPACE}",
                "-m",
                "clusterous_operator.handlers",
            ]
            runner = KopfRunner(operator, timeout=30)
            try:
                with runner:
                    wait_for(lambda: operator_watching(api), "the operator to watch ClusterApps")
                    writes1, to_running = one_app(api, custom)
                    requests2 = resyncs(api, timers)
                    bare, reconciling = [], []
                    for i in range(args.rounds):  # interleaved: the machine's load hits both sides
                        bare.append(bare_writes(api.kubeconfig, nodes, args.apps, BARE_NAMESPACE.format(i)))
                        names = [f"r{i}-app-{n:03d}" for n in range(args.apps)]
                        elapsed, writes3 = many_apps(api, custom, nodes, names)
                        reconciling.append(elapsed)
            finally:
                client.close()
            if runner.exception is not None:
                raise BenchError(f"the operator failed: {runner.exception!r}")
        finally:
            api.stop()

    creates = sum(1 for w in writes1 if w["verb"] == "POST" and w["resource"] != "events")
    print(f"1. writes for one 2-component app, create to Running ({to_running:.1f} s): {len(writes1)}")
    print(*breakdown(writes1), sep="\n")
    print(f"   goal: {creates + 1} (the {creates} creates plus one status patch)")
    if len(writes1) > creates + 1:
        print(f"   over the goal: {over_goal(writes1, creates)}")
    writes2 = [r for r in requests2 if r["verb"] in WRITE_VERBS]
    print(
        f"2. writes on 2 resyncs with nothing changed: {len(writes2)} (requests of any kind: {len(requests2)})"
    )
    if writes2:
        print(*breakdown(writes2), sep="\n")
    print("   goal: 0")
    print(
        f"3. {args.apps} ClusterApps, from applying them to all reconciled, against their bare API writes;"
        " goal: ratio <= 2"
    )
    for i, (r, b) in enumerate(zip(reconciling, bare, strict=True)):
        print(
            f"   round {i + 1}: operator {r.wall:.2f} s (CPU {r.cpu:.2f} s),"
            f" bare writes {b.wall:.2f} s (CPU {b.cpu:.2f} s): {r.wall / b.wall:.2f}"
        )
    print(f"   the operator's writes in the last round ({len(writes3)}):")
    print(*breakdown(writes3), sep="\n")
    print(f"ratio={statistics.median(r.wall / b.wall for r, b in zip(reconciling, bare, strict=True)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
