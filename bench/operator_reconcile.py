#!/usr/bin/env python3
"""How much the operator writes, and how fast it reconciles, against the Kubernetes API emulator.

Starts the emulator of the test harness (tests/harness/k8s.py) on 127.0.0.1, posts the CRD, a
master node and four 4-CPU workers, and runs the real operator in a thread (kopf's KopfRunner
with `clusterous_operator.handlers`, as tests/test_operator_e2e.py does, watching the `default`
namespace). Writes are the POST/PUT/PATCH/DELETE requests the emulator received, the bench's
own (user agent `clusterous-bench`) left out. Three figures:

1. one 2-component app (a master, `auto` engines that depend on it) from create to Running,
   with the emulator's controllers (tests/harness/k8s_controllers.py: Deployment, ReplicaSet,
   scheduler, kubelet) running its pods, in a world of its own: the writes, and the seconds
   from the last Deployment becoming available to phase Running (polled in the emulator's loop
   every 5 ms; the resync timer has not fired yet, so only watch events can get it there).
   Goal: at most 8 writes (5 creates, kopf's finalizer, 2 status patches), under 1 s.
   Lines `writes=<n>` and `ready_to_running=<seconds>`.
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
import contextlib
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
sys.path[:0] = [str(ROOT / p) for p in ("", "core", "operator", "provisioner", "cli")]

import attrs  # noqa: E402
import kmock  # noqa: E402

from clusterous_core.names import GROUP, GROUP_LABEL, PLURAL, TIME_FORMAT, VERSION  # noqa: E402
from clusterous_operator.builders import APP_LABEL, SPEC_HASH_ANNOTATION  # noqa: E402
from clusterous_operator.reconcile import decide  # noqa: E402
from tests.addons_support import apply_storage_classes  # noqa: E402
from tests.harness import k8s_controllers  # noqa: E402
from tests.harness.k8s import ApiEmulator, K8sApi, find_resource  # noqa: E402

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
    """K8sApi serving a RecordingEmulator, with the harness's controllers if `live`."""

    def __init__(self, workdir: Path, live: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        self.live = live

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = RecordingEmulator()
        self.controllers = k8s_controllers.Controllers(self.emulator, self.world)
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            running = asyncio.ensure_future(self.controllers.run()) if self.live else None
            self._ready.set()
            await self._stop.wait()
            await self.emulator.close_watches()
            if running is not None:
                self.controllers.stop()
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

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


def clusterapp(name: str, namespace: str = NAMESPACE, depends: bool = False) -> dict:
    """A master and `auto` engines, as examples/basic-python (dependsOn only with `depends`)."""
    app = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterApp",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "components": [
                {
                    "name": "master",
                    "group": "master",
                    "image": "registry:5000/basic-python",
                    "cpu": "0.5",
                    "ports": [8888],
                },
                {
                    "name": "engine",
                    "group": "worker",
                    "image": "registry:5000/basic-python",
                    "replicas": "auto",
                    "cpu": "1",
                },
            ]
        },
    }
    if depends:
        app["spec"]["components"][1]["dependsOn"] = ["master"]
    return app


def decision_for(name: str, namespace: str, nodes: list[dict]):
    """What the operator makes of a new ClusterApp `name`: its children and its status."""
    body = clusterapp(name, namespace)
    body["metadata"]["generation"] = 1
    decision = decide(body, nodes, now=time.strftime(TIME_FORMAT, time.gmtime()))
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


class TimerRuns(logging.Handler):
    """Counts kopf's `Timer 'resync' succeeded` log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Timer 'resync' succeeded" in record.getMessage():
            self.count += 1


# -- the figures ----------------------------------------------------------------------------------


class Moments(threading.Thread):
    """Polls the emulator's store every 5 ms (in its loop, no request): when the app's last
    Deployment became available, and when the app's phase became Running."""

    def __init__(self, api: BenchApi, name: str) -> None:
        super().__init__(name="bench-moments", daemon=True)
        self.api, self.name = api, name
        self.available: float | None = None
        self.running: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.005) and self.running is None:
            available, phase = self.api.call(self.look)
            now = time.perf_counter()
            if available and self.available is None:
                self.available = now
            if phase == "Running":
                self.running = now

    def look(self, emulator) -> tuple[bool, str | None]:
        deployments = find_resource(emulator, "apps/v1/deployments")
        mine = [
            d
            for d in emulator._live(deployments, NAMESPACE)
            if (d["metadata"].get("labels") or {}).get(APP_LABEL) == self.name
        ]
        available = len(mine) == 2 and all(
            (d.get("status") or {}).get("observedGeneration") == d["metadata"].get("generation")
            and (d.get("status") or {}).get("availableReplicas", 0) == d["spec"].get("replicas", 1) > 0
            for d in mine
        )
        capps = find_resource(emulator, f"{GROUP}/{VERSION}/{PLURAL}")
        key = (capps, NAMESPACE, self.name)
        stored = emulator.objects.get(key)
        phase = None if stored is None or stored.deleted else (stored.raw.get("status") or {}).get("phase")
        return available, phase


def one_app(api: BenchApi, custom) -> tuple[list[dict], float, float]:
    """Figure 1: one app from create to Running with the emulator's controllers; the writes
    until all is quiet, the seconds to Running and from the last Deployment available to it."""
    moments = Moments(api, "solo")
    moments.start()
    since = api.mark()
    start = time.perf_counter()
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, clusterapp("solo", depends=True)
    )
    wait_for(lambda: moments.running is not None, "the app to be Running")
    moments.stopping.set()
    wait_quiet(api, since)
    if moments.available is None:
        raise BenchError("the app was Running before its Deployments were available")
    return api.writes(since), moments.running - start, moments.running - moments.available


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


def start_world(api: BenchApi):
    """The CRD, a 2-CPU master and four 4-CPU workers; a client for the bench's own requests."""
    import yaml

    os.environ["KUBECONFIG"] = str(api.kubeconfig)  # for kopf's login
    crd = yaml.safe_load((ROOT / "operator/clusterous_operator/crd.yaml").read_text())
    api.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    api.add_node("master-1", labels={GROUP_LABEL: "master"}, cpu="2")
    for i in range(WORKERS):
        api.add_node(f"worker-{i + 1}", labels={GROUP_LABEL: "worker"}, cpu="4")
    return new_client(api.kubeconfig)


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
    from kopf.testing import KopfRunner

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    timers = TimerRuns()
    logging.getLogger("kopf.objects").addHandler(timers)

    operator = ["run", "--standalone", f"--namespace={NAMESPACE}", "-m", "clusterous_operator.handlers"]
    with tempfile.TemporaryDirectory(prefix="clusterous-bench-") as scratch:
        # Figures 1 and 2: pods run (the emulator's controllers), in a world of their own.
        api = BenchApi(Path(scratch) / "live", live=True).start()
        try:
            client = start_world(api)
            custom = kubernetes.client.CustomObjectsApi(client)
            apply_storage_classes(api)
            runner = KopfRunner(operator, timeout=30)
            try:
                with runner:
                    wait_for(lambda: operator_watching(api), "the operator to watch ClusterApps")
                    before = timers.count
                    writes1, to_running, ready_to_running = one_app(api, custom)
                    timer_runs = timers.count - before
                    requests2 = resyncs(api, timers)
            finally:
                client.close()
            if runner.exception is not None:
                raise BenchError(f"the operator failed: {runner.exception!r}")
        finally:
            api.stop()

        # Figure 3: no controllers (100 apps' pods would measure the emulator, not the operator).
        api = BenchApi(Path(scratch) / "bare").start()
        try:
            client = start_world(api)
            custom = kubernetes.client.CustomObjectsApi(client)
            nodes = api.list("v1/nodes")
            bare_writes(api.kubeconfig, nodes, 3, BARE_NAMESPACE.format("warm-up"))  # imports, pools
            runner = KopfRunner(operator, timeout=30)
            try:
                with runner:
                    wait_for(lambda: operator_watching(api), "the operator to watch ClusterApps")
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

    print(f"1. one 2-component app (engines depend on the master), create to Running: {to_running:.2f} s")
    print(f"   writes: {len(writes1)} (goal: <= 8: 5 creates, the finalizer, 2 status patches)")
    print(*breakdown(writes1), sep="\n")
    print(
        f"   last Deployment available -> phase Running: {ready_to_running:.3f} s (goal: < 1 s;"
        f" resync timer runs meanwhile: {timer_runs})"
    )
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
    print(f"writes={len(writes1)}")
    print(f"ready_to_running={ready_to_running:.3f}")
    print(f"ratio={statistics.median(r.wall / b.wall for r, b in zip(reconciling, bare, strict=True)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
