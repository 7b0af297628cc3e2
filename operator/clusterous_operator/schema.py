"""The ClusterApp's fields, each documented once beside its definition (KubeRay's types are the model).

`python -m clusterous_operator.crdgen` turns these models into the CRD's openAPIV3Schema
(crd.yaml and its copy in manifests/) and the field tables of docs/clusterapp.md; a test fails
when the committed files differ. A field's `description` is short and goes to both (`kubectl
explain` shows it); `_docs(detail=...)` adds what only the docs say (the controller's user-data,
which carries the CRD, must fit EC2's 16 KiB) and, as `default=`, what an absent field means; its
bounds are the schema's; `x-kubernetes-*` keys and the CEL rules ride along in `json_schema_extra`.

The phases, component states, condition types and reasons are `StrEnum`s with their meanings:
the operator writes them (status.py) and the CLI reads them (apps.py) from here. The operator
imports this module at run time for them and for the bounds spec.py checks; pydantic is in its
lock anyway (the kubernetes client requires and imports it), see docs/clusterapp.md.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from clusterous_core.names import DNS_1035

AUTO: Final = "auto"
Auto = Literal["auto"]  # the type of AUTO, so `x == AUTO` narrows `int | Auto` to int
DEFAULT_MOUNT_PATH = "/home/data"
DNS_LABEL = DNS_1035.pattern  # component names; app names (DNS-1035, a letter first)
MAX_COMPONENT_NAME = 40
GROUP_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # a label value
MAX_GROUP = 63
CPU_PATTERN = r"^(auto|([0-9]+(\.[0-9]{1,3})?|\.[0-9]{1,3}|[0-9]+m))$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
MI = 2**20
MAX_COMPONENTS = 32

Port = Annotated[int, Field(ge=1, le=65535)]


class Documented(StrEnum):
    """A StrEnum whose members carry their meaning: `NAME = "Value", "what it means"`."""

    meaning: str

    def __new__(cls, value: str, meaning: str = ""):
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member


class Phase(Documented):
    """The application's phase (`status.phase`, the PHASE column)."""

    PENDING = "Pending", "Nothing is ready and something blocks it (no room, no node, failing containers)."
    DEPLOYING = "Deploying", "On its way: replicas are starting and nothing blocks them."
    RUNNING = "Running", "Every replica of every component is ready and no pod is Pending."
    DEGRADED = (
        "Degraded",
        (
            "Some replicas are ready but something blocks the rest, or fewer are ready than were "
            "while the spec did not change."
        ),
    )
    FAILED = "Failed", "The spec cannot run (see the `SpecValid` condition); nothing is created or changed."


class ComponentState(Documented):
    """One component's state (`status.components[].state`)."""

    WAITING = (
        "Waiting",
        "Its `dependsOn` components are not all ready: it has a Service but no Deployment yet.",
    )
    PENDING = (
        "Pending",
        "No replica is ready and something blocks them (no room, no node, failing containers).",
    )
    DEPLOYING = "Deploying", "Replicas are starting and nothing blocks them."
    READY = "Ready", "Every replica is ready."
    DEGRADED = "Degraded", "Some replicas are ready but something blocks the rest."


class Reason(Documented):
    """Why a condition has its status (`status.conditions[].reason`)."""

    VALID = "Valid", "The spec passed every check."
    INVALID_SPEC = (
        "InvalidSpec",
        (
            "A field is wrong; the message names it, e.g. `spec.components[1].dependsOn[0]: expected "
            "the name of another component (master) (got 'mastr')`."
        ),
    )
    PLACED = "Placed", "Every replica fits on its group's nodes."
    INSUFFICIENT_CPU = (
        "InsufficientCPU",
        (
            "Replicas do not fit: no node of the group has the CPU (or memory, or ports) free; the "
            "message gives the command that makes room, e.g. `3 of 8 crunch replicas Pending: no "
            "worker node has 0.5 CPU free — clusterous-k8s scale worker 4`."
        ),
    )
    NO_NODES = "NoNodes", "The group has no Ready, schedulable node; the message says how to add one."
    ALL_REPLICAS_READY = "AllReplicasReady", "Every replica of every component is ready."
    REPLICAS_NOT_READY = "ReplicasNotReady", "Replicas are starting (`1/4 engine replicas ready`)."
    WAITING_FOR_DEPENDENCY = (
        "WaitingForDependency",
        "A component waits for its `dependsOn` (`engine waiting for master (0/1 ready)`).",
    )
    CONTAINERS_FAILING = (
        "ContainersFailing",
        (
            "Containers crash or their image cannot be pulled; the message says what to check "
            "(`2 engine replicas failing: ImagePullBackOff — is … in the registry?`)."
        ),
    )


class ConditionType(Documented):
    """What a condition is about (`status.conditions[].type`); `reasons` are the ones it uses."""

    reasons: tuple[Reason, ...]

    def __new__(cls, value: str, meaning: str = "", reasons: tuple[Reason, ...] = ()):
        member = str.__new__(cls, value)
        member._value_, member.meaning, member.reasons = value, meaning, reasons
        return member

    SPEC_VALID = "SpecValid", "The spec can run.", (Reason.VALID, Reason.INVALID_SPEC)
    SCHEDULED = (
        "Scheduled",
        "Every replica fits on its group's nodes.",
        (Reason.PLACED, Reason.INSUFFICIENT_CPU, Reason.NO_NODES),
    )
    READY = (
        "Ready",
        "Every replica is ready.",
        (
            Reason.ALL_REPLICAS_READY,
            Reason.REPLICAS_NOT_READY,
            Reason.WAITING_FOR_DEPENDENCY,
            Reason.CONTAINERS_FAILING,
            Reason.INSUFFICIENT_CPU,
            Reason.NO_NODES,
            Reason.INVALID_SPEC,
        ),
    )


def _extra(**keys: Any) -> dict[str, Any]:
    """`json_schema_extra` with Python-friendly names: list_type -> x-kubernetes-list-type."""
    return {("x-" + k if k.startswith("kubernetes") else k).replace("_", "-"): v for k, v in keys.items()}


def _docs(detail: str = "", default: str = "", **kubernetes: Any) -> dict[str, Any]:
    """`json_schema_extra` of a field: what the docs add to its description (`detail`), what an
    absent field means there (`default`, when the schema has none) and `kubernetes_*` markers."""
    extra = _extra(**kubernetes)
    if detail:
        extra["x-docs-detail"] = detail
    if default:
        extra["x-docs-default"] = default
    return extra


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True)


class Component(_Model):
    """One part of the application: a Deployment `<app>-<name>` and a Service of the same name."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            kubernetes_validations=[
                {
                    "rule": "!has(self.replicas) || type(self.replicas) != string || has(self.cpu)",
                    "message": "replicas: auto needs cpu (a quantity or auto)",
                }
            ]
        )
    )

    name: str = Field(
        min_length=1,
        max_length=MAX_COMPONENT_NAME,
        pattern=DNS_LABEL,
        description="Component name, a DNS label. Names the Deployment and Service `<app>-<name>`.",
        json_schema_extra=_docs("It is also the value of the label `clusterous.io/component`."),
    )
    group: str = Field(
        min_length=1,
        max_length=MAX_GROUP,
        pattern=GROUP_PATTERN,
        description="Node group the replicas run on (the node label clusterous.io/group).",
        json_schema_extra=_docs(
            "The pods get `nodeSelector: {clusterous.io/group: <group>}`. It must be a group some "
            "Node is labelled with, or the app is Failed with the groups the cluster has. A label "
            "value, so Clusterous' `io_master` / `cpu_worker` work as they are (cluster files and "
            "environment files' `cluster:` sections accept `_` in group names too); a group is never "
            "part of an object name, only of labels, the node selector and AWS tags."
        ),
    )
    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="Container image, named as Docker names it; registry:5000/NAME is the cluster registry.",
        json_schema_extra=_docs(
            "`registry:5000/<name>` (Clusterous' name for the cluster registry, where `build-image` "
            "and `run` push) is pulled from `registry.clusterous-system.svc:5000/<name>`; a short "
            "name is Docker Hub's (`ubuntu` → `docker.io/library/ubuntu`, `jupyter/minimal-notebook` "
            "→ `docker.io/jupyter/minimal-notebook`); a reference whose first part is a host (has a "
            "`.` or `:`, or is `localhost`) is used unchanged. The pod spec carries the full name."
        ),
    )
    command: list[str] | None = Field(
        default=None,
        max_length=256,
        description="The container's command (entrypoint and arguments); the image's own when absent.",
        json_schema_extra=_docs(default="image's entrypoint"),
    )
    replicas: Annotated[int, Field(ge=0, le=10000)] | Annotated[str, Field(pattern=f"^{AUTO}$")] = Field(
        default=1,
        description='How many pods: an integer >= 0, or "auto" for as many as fit on the group\'s '
        "Ready nodes given cpu per replica.",
        json_schema_extra=_docs(
            "`auto` counts node by node (a pod cannot span nodes) on the group's **Ready, "
            "schedulable, untainted** nodes: allocatable CPU minus what pods of other apps request "
            "there, after this app's fixed-count components on the same group are placed (see "
            "*Placement arithmetic*). Several `auto` components on a group take turns, one replica "
            "each, on every node. `auto` needs `cpu`. The count follows the nodes: add or remove "
            "nodes and it changes within one resync (10 s)."
        ),
    )
    cpu: Annotated[int, Field(ge=1, le=1024)] | Annotated[str, Field(pattern=CPU_PATTERN)] | None = Field(
        default=None,
        description='CPU per replica, requested from the scheduler: cores ("0.5", "2") or millicores '
        '("500m"), or "auto" for the node\'s CPU shared evenly among this application\'s '
        "components on the group. No request when absent.",
        json_schema_extra=_docs(
            "Quote fractions: an unquoted `0.5` is a YAML number, which the schema rejects. `auto`: "
            "the smallest **free** CPU of the group's usable nodes (allocatable minus other pods' "
            "requests, see *Placement arithmetic*) divided by the number of the app's components on "
            "that group, in whole millicores. An explicit `cpu` must fit some usable node of the "
            "group beside the cluster's own pods, or the app is `Failed` with "
            "`spec.components[i].cpu: expected at most …` (`run` refuses it with exit 2 before "
            "applying). Without `cpu` the container requests no CPU (allowed only with a fixed "
            "`replicas`).",
            default="none",
        ),
    )
    memory: Annotated[int, Field(ge=MI)] | Annotated[str, Field(pattern=MEMORY_PATTERN)] | None = Field(
        default=None,
        description='Memory per replica, requested from the scheduler: a quantity of at least 1Mi ("512Mi", '
        '"2Gi", "1G", or bytes). Default: the replica\'s CPU share of the free memory. No memory '
        "limit is set.",
        json_schema_extra=_docs(
            "Without it, memory follows CPU as in Clusterous (see *Memory*): the CPU share of the "
            "memory other pods leave free, at the ratio of the group's tightest node, rounded down "
            "to Mi; 64Mi without `cpu`. It must fit the memory free beside the cluster's own pods on "
            "some usable node of the group, or the app is `Failed` with `spec.components[i].memory: "
            "expected at most …`. Environment files have no such field: converted components get "
            "the default.",
            default="derived from `cpu`",
        ),
    )
    ports: list[Port] = Field(
        default=[],
        max_length=64,
        description="TCP ports the container listens on; published by the component's Service.",
        json_schema_extra=_docs(
            "They become container ports and the ports of the component's Service (port = "
            "targetPort); a component without ports gets a headless Service.",
            kubernetes_list_type="set",
        ),
    )
    host_network: bool = Field(
        default=False,
        description="Use the node's network namespace (Clusterous docker_network host). With ports, "
        "at most one replica runs per node.",
        json_schema_extra=_docs(
            "DNS policy becomes `ClusterFirstWithHostNet`. With `ports`, the ports are the node's "
            "ports, so two replicas cannot share a node (a real node refuses the second: \"didn't "
            'have free ports"): the pods get a required pod anti-affinity on their own '
            "`clusterous.io/app`/`component` labels with `topologyKey: kubernetes.io/hostname`, "
            "`replicas: auto` counts at most one per usable node, and fixed replicas beyond one per "
            "node are reported unplaced (`… free (hostNetwork with ports: at most one replica per "
            "node) — clusterous-k8s scale <group> N`)."
        ),
    )
    depends_on: list[Annotated[str, Field(max_length=MAX_COMPONENT_NAME)]] = Field(
        default=[],
        max_length=MAX_COMPONENTS,
        description="Components that must be ready before this one starts.",
        json_schema_extra=_docs(
            "Ready means all their replicas. Until then it has no Deployment (its Service exists) "
            "and its status says what it waits for; the Deployment is created at its full replicas "
            "once the dependencies are ready. Once started it is not stopped again if a dependency "
            "restarts. Unknown names and cycles are rejected.",
            kubernetes_list_type="set",
        ),
    )


class SharedVolume(_Model):
    """Where the cluster's shared volume appears in every container."""

    mount_path: str = Field(
        default=DEFAULT_MOUNT_PATH,
        max_length=4096,
        pattern="^/",
        description="Absolute mount path in every container of every component.",
    )


class Tunnel(_Model):
    """An SSH tunnel the CLI opens from the laptop to a component's port."""

    local_port: Port = Field(description="Port on the laptop.")
    component: str = Field(
        max_length=MAX_COMPONENT_NAME, description="The component the tunnel reaches; one of `components`."
    )
    port: Port = Field(
        description="The component's port; one it exposes in `ports` (or any with hostNetwork)."
    )
    message: str | None = Field(
        default=None,
        max_length=1024,
        description="Printed when the tunnel opens; `{url}` and `{port}` are filled in.",
    )


class Spec(_Model):
    """What should run."""

    components: list[Component] = Field(
        min_length=1,
        max_length=MAX_COMPONENTS,
        description="The parts of the application; each becomes a Deployment and a Service. Names "
        "are unique (the list is a map keyed by `name`).",
        json_schema_extra=_extra(
            kubernetes_list_type="map",
            kubernetes_list_map_keys=["name"],
            kubernetes_validations=[
                {
                    "rule": "self.all(c, !has(c.dependsOn) || c.dependsOn.all(d, self.exists(o, o.name == d)))",
                    "message": "dependsOn must name components of this application",
                }
            ],
        ),
    )
    shared_volume: SharedVolume = Field(
        default_factory=SharedVolume,
        description="Where the shared volume appears.",
        json_schema_extra={"default": {}},
    )
    tunnels: list[Tunnel] = Field(
        default=[],
        max_length=32,
        description="SSH tunnels `clusterous-k8s run` opens from the laptop. The operator checks "
        "them and does nothing else with them.",
    )


class ComponentStatus(_Model):
    """One component as the operator last saw it."""

    name: str = Field(description="The component.")
    group: str | None = Field(default=None, description="Its node group.")
    state: ComponentState | None = Field(default=None, description="See *Component states*.")
    desired: int | None = Field(default=None, description="Replicas it should have (`auto` counted).")
    ready: int | None = Field(default=None, description="Replicas ready.")
    cpu: str | None = Field(default=None, description="CPU per replica as requested (`auto` resolved).")
    memory: str | None = Field(
        default=None, description="Memory per replica as requested (defaults resolved)."
    )
    message: str | None = Field(default=None, description="What it is doing or waiting for.")


class Condition(_Model):
    """A named aspect of the application, True or not, with a reason a person can act on."""

    type: str = Field(description="See *Conditions*.")
    status: str = Field(
        description="Whether the condition holds.", json_schema_extra={"enum": ["True", "False", "Unknown"]}
    )
    reason: str | None = Field(default=None, description="See *Reasons*.")
    message: str | None = Field(default=None, description="What to do about it.")
    last_transition_time: str | None = Field(
        default=None,
        description="When `status` last changed (not when the message did).",
        json_schema_extra={"format": "date-time"},
    )


class Status(_Model):
    """What the operator observed; written only by the operator, and only when something changed."""

    phase: Phase | None = Field(default=None, description="See *Phases*.")
    ready: str | None = Field(
        default=None, description="`<ready>/<desired>` replicas of all components (the READY column)."
    )
    ready_replicas: int | None = Field(default=None, description="Ready replicas of all components.")
    desired_replicas: int | None = Field(default=None, description="Desired replicas of all components.")
    message: str | None = Field(
        default=None, description="The message of the first condition that is not True, else a summary."
    )
    observed_generation: int | None = Field(
        default=None,
        description="The `metadata.generation` this status describes.",
        json_schema_extra={"format": "int64"},
    )
    components: list[ComponentStatus] = Field(
        default=[],
        description="Per component.",
        json_schema_extra=_extra(kubernetes_list_type="map", kubernetes_list_map_keys=["name"]),
    )
    conditions: list[Condition] = Field(
        default=[],
        description="`SpecValid`, `Scheduled` and `Ready`.",
        json_schema_extra=_extra(kubernetes_list_type="map", kubernetes_list_map_keys=["type"]),
    )


class ClusterApp(_Model):
    """A master/worker application: one Deployment and one Service per component, placed on the
    cluster's node groups, with the shared volume mounted in every container."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            kubernetes_validations=[
                {
                    "rule": f"self.metadata.name.matches('{DNS_LABEL}')",
                    "message": "metadata.name must start with a lower case letter and hold only lower "
                    "case letters, digits and '-': it begins the names of the app's Services "
                    "(DNS-1035 labels)",
                }
            ]
        )
    )

    api_version: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: Spec
    status: Status | None = None
