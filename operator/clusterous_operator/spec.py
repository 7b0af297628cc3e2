"""A ClusterApp as typed, checked values: every rule of the CRD schema plus the ones it cannot say.

The API server enforces the schema only on a real cluster; `render`, tests and the emulator do
not, so every rule is checked here too and reported as a SpecError naming the field path, the
way a person would look it up in the YAML (spec.components[1].dependsOn[0]).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clusterous_core.errors import shown
from clusterous_core.names import API_VERSION
from clusterous_operator.schema import (
    AUTO,
    DEFAULT_MOUNT_PATH,
    DNS_LABEL,
    GROUP_PATTERN,
    MAX_COMPONENT_NAME,
    MAX_GROUP,
    MI,
    Auto,
)

MAX_NAME = 63  # Service and label values are DNS labels: <app>-<component> must fit

_COMPONENT_NAME = re.compile(DNS_LABEL)
_GROUP = re.compile(GROUP_PATTERN)
_APP_NAME = _COMPONENT_NAME  # begins Service names: DNS-1035
_CPU = re.compile(r"^(?:(?P<cores>[0-9]+(?:\.[0-9]{1,3})?|\.[0-9]{1,3})|(?P<milli>[0-9]+)m)$")
_MEMORY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MEMORY_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_NOTHING = object()


class SpecError(ValueError):
    """A ClusterApp the operator cannot run: which field, what it should be, what it was."""

    def __init__(self, field: str, expected: str, got: object = _NOTHING):
        self.field, self.expected = field, expected
        self.got = None if got is _NOTHING else got
        message = f"{field}: expected {expected}"
        if got is not _NOTHING:
            message += f" (got {shown(got)})"
        super().__init__(message)


@dataclass(frozen=True)
class Component:
    """One part of the application; `replicas` and `cpu_m` may be AUTO until placed."""

    name: str
    group: str
    image: str
    command: tuple[str, ...] | None = None
    replicas: int | Auto = 1
    cpu_m: int | Auto | None = None  # millicores per replica, AUTO, or None for no request
    ports: tuple[int, ...] = ()
    host_network: bool = False
    depends_on: tuple[str, ...] = ()
    memory: int | None = None  # bytes per replica; None: derived from the CPU share


@dataclass(frozen=True)
class Tunnel:
    local_port: int
    component: str
    port: int
    message: str | None = None


@dataclass(frozen=True)
class Spec:
    components: tuple[Component, ...]
    mount_path: str = DEFAULT_MOUNT_PATH
    tunnels: tuple[Tunnel, ...] = ()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)


@dataclass(frozen=True)
class App:
    """A parsed ClusterApp: its identity and its checked spec."""

    name: str
    namespace: str
    spec: Spec
    generation: int | None = None
    uid: str | None = None


def parse_app(body: Mapping, default_namespace: str = "default") -> App:
    """Check a whole ClusterApp object (as read from YAML or the API) and return it typed."""
    _expect_mapping(body, "ClusterApp", "a ClusterApp object")
    if body.get("kind", "ClusterApp") != "ClusterApp":
        raise SpecError("kind", "ClusterApp", body.get("kind"))
    api_version = body.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise SpecError("apiVersion", API_VERSION, api_version)
    meta = body.get("metadata") or {}
    _expect_mapping(meta, "metadata", "a mapping with a name")
    name = meta.get("name")
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise SpecError(
            "metadata.name",
            "a DNS-1035 label (a lower case letter first, then letters, digits and '-')",
            name,
        )
    spec = parse_spec(body.get("spec"), "spec")
    longest = max(len(c.name) for c in spec.components)
    if len(name) + 1 + longest > MAX_NAME:
        raise SpecError(
            "metadata.name",
            f"a name short enough that '<name>-<component>' has at most {MAX_NAME} characters "
            f"(at most {MAX_NAME - 1 - longest} here)",
            name,
        )
    return App(
        name=name,
        namespace=meta.get("namespace") or default_namespace,
        spec=spec,
        generation=meta.get("generation"),
        uid=meta.get("uid"),
    )


def parse_spec(raw: object, path: str = "spec") -> Spec:
    """Check a ClusterApp spec: the schema's rules, unique names, dependsOn and tunnels."""
    raw = _expect_mapping(raw, path, "a mapping with components")
    components_raw = raw.get("components")
    if not isinstance(components_raw, list) or not components_raw:
        raise SpecError(f"{path}.components", "a non-empty list of components", components_raw)
    components = tuple(
        _parse_component(item, f"{path}.components[{i}]") for i, item in enumerate(components_raw)
    )
    _check_unique_names(components, path)
    _check_depends_on(components, path)
    shared = raw.get("sharedVolume") or {}
    _expect_mapping(shared, f"{path}.sharedVolume", "a mapping with mountPath")
    mount_path = shared.get("mountPath", DEFAULT_MOUNT_PATH)
    if not isinstance(mount_path, str) or not mount_path.startswith("/"):
        raise SpecError(f"{path}.sharedVolume.mountPath", "an absolute path", mount_path)
    tunnels = tuple(
        _parse_tunnel(item, f"{path}.tunnels[{i}]", components)
        for i, item in enumerate(_list(raw.get("tunnels"), f"{path}.tunnels", "a list of tunnels"))
    )
    return Spec(components=components, mount_path=mount_path, tunnels=tunnels)


def check_groups(spec: Spec, known_groups: Iterable[str], path: str = "spec") -> None:
    """Every component's group must be a node group of the cluster.

    Called with the groups the cluster's Node labels name; an empty set means nothing is
    known yet (no labelled node has joined), which is not the ClusterApp's fault.
    """
    known = sorted(set(known_groups))
    if not known:
        return
    for i, component in enumerate(spec.components):
        if component.group not in known:
            raise SpecError(
                f"{path}.components[{i}].group",
                f"one of the cluster's node groups ({', '.join(known)}), or add nodes to it "
                f"with `clusterous-k8s scale {component.group} N`",
                component.group,
            )


def cpu_millicores(quantity: object) -> int:
    """A CPU quantity ("2", "0.5", "1930m", 2) in millicores; ValueError when it is not one."""
    if isinstance(quantity, bool):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    if isinstance(quantity, int):
        return quantity * 1000
    match = _CPU.match(str(quantity).strip())
    if not match:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    if match["milli"] is not None:
        return int(match["milli"])
    whole, _, fraction = match["cores"].partition(".")
    return int(whole or 0) * 1000 + int((fraction + "000")[:3])


def memory_bytes(quantity: object) -> int:
    """A memory quantity ("512Mi", "2Gi", "1G", 1073741824) in bytes, rounded up as Kubernetes
    does; ValueError when it is not one (milli-bytes and exponents are refused)."""
    if isinstance(quantity, bool):
        raise ValueError(f"not a memory quantity: {quantity!r}")
    if isinstance(quantity, int):
        return quantity
    match = _MEMORY.match(str(quantity).strip())
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    whole, _, fraction = match["number"].partition(".")
    unit = _MEMORY_UNITS[match["suffix"]]
    scaled = int(whole) * unit
    if fraction:
        scaled += -(-int(fraction) * unit // 10 ** len(fraction))  # ceil
    return scaled


def format_memory(size: int) -> str:
    """Bytes as Kubernetes quantities are usually written: whole Gi or Mi, else bytes."""
    for suffix, unit in (("Gi", 2**30), ("Mi", MI)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def format_cpu(millicores: int) -> str:
    """Millicores as Kubernetes writes them: whole cores plainly, the rest as '500m'."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def dependency_order(spec: Spec) -> tuple[str, ...]:
    """Component names, each after the components it depends on (the spec is acyclic)."""
    done: list[str] = []
    pending = list(spec.components)
    while pending:
        ready = [c for c in pending if set(c.depends_on) <= set(done)]
        done.extend(c.name for c in ready)
        pending = [c for c in pending if c not in ready]
    return tuple(done)


def _parse_component(raw: object, path: str) -> Component:
    raw = _expect_mapping(raw, path, "a mapping with name, group and image")
    for required in ("name", "group", "image"):
        if required not in raw:
            raise SpecError(f"{path}.{required}", "a value (name, group and image are required)")
    name = raw["name"]
    if not isinstance(name, str) or len(name) > MAX_COMPONENT_NAME or not _COMPONENT_NAME.match(name):
        raise SpecError(
            f"{path}.name",
            f"a DNS label of at most {MAX_COMPONENT_NAME} characters (lower case letters, digits, '-')",
            name,
        )
    group = raw["group"]
    if not isinstance(group, str) or len(group) > MAX_GROUP or not _GROUP.match(group):
        raise SpecError(f"{path}.group", "a node group name (a label value)", group)
    image = raw["image"]
    if not isinstance(image, str) or not image or any(ch.isspace() for ch in image):
        raise SpecError(f"{path}.image", "an image name without spaces", image)
    command = raw.get("command")
    if command is not None and (
        not isinstance(command, list) or not all(isinstance(a, str) for a in command)
    ):
        raise SpecError(f"{path}.command", "a list of strings", command)
    replicas = _parse_replicas(raw.get("replicas", 1), f"{path}.replicas")
    cpu = _parse_cpu(raw.get("cpu"), f"{path}.cpu")
    if replicas == AUTO and cpu is None:
        raise SpecError(f"{path}.cpu", 'a CPU per replica (e.g. "0.5" or auto) when replicas is auto')
    memory = _parse_memory(raw.get("memory"), f"{path}.memory")
    ports = tuple(
        _parse_port(p, f"{path}.ports[{i}]")
        for i, p in enumerate(_list(raw.get("ports"), f"{path}.ports", "a list of port numbers"))
    )
    if len(set(ports)) != len(ports):
        raise SpecError(f"{path}.ports", "each port once", list(ports))
    host_network = raw.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        raise SpecError(f"{path}.hostNetwork", "true or false", host_network)
    depends_on = _list(raw.get("dependsOn"), f"{path}.dependsOn", "a list of component names")
    for i, dependency in enumerate(depends_on):
        if not isinstance(dependency, str):
            raise SpecError(f"{path}.dependsOn[{i}]", "a component name", dependency)
    return Component(
        name=name,
        group=group,
        image=image,
        command=tuple(command) if command is not None else None,
        replicas=replicas,
        cpu_m=cpu,
        ports=ports,
        host_network=host_network,
        depends_on=tuple(depends_on),
        memory=memory,
    )


def _parse_memory(value: object, path: str) -> int | None:
    if value is None:
        return None
    expected = 'a memory quantity ("512Mi", "2Gi", "1G") of at least 1Mi'
    if isinstance(value, float):
        raise SpecError(path, expected + " (with a unit, quoted)", value)
    try:
        size = memory_bytes(value)
    except ValueError:
        raise SpecError(path, expected, value) from None
    if size < MI:
        raise SpecError(path, expected, value)
    return size


def _parse_replicas(value: object, path: str) -> int | Auto:
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(path, 'an integer >= 0 or "auto"', value)
    return value


def _parse_cpu(value: object, path: str) -> int | Auto | None:
    if value is None or value == AUTO:
        return None if value is None else AUTO
    expected = 'a CPU quantity as a string ("0.5", "2", "500m") or "auto"'
    if isinstance(value, float):
        raise SpecError(path, expected + " (quote fractions)", value)
    try:
        millicores = cpu_millicores(value)
    except ValueError:
        raise SpecError(path, expected, value) from None
    if millicores <= 0:
        raise SpecError(path, "a CPU quantity greater than 0", value)
    return millicores


def _parse_port(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SpecError(path, "a port number from 1 to 65535", value)
    return value


def _parse_tunnel(raw: object, path: str, components: tuple[Component, ...]) -> Tunnel:
    raw = _expect_mapping(raw, path, "a mapping with localPort, component and port")
    for required in ("localPort", "component", "port"):
        if required not in raw:
            raise SpecError(f"{path}.{required}", "a value (localPort, component and port are required)")
    names = [c.name for c in components]
    if raw["component"] not in names:
        raise SpecError(f"{path}.component", f"one of the components ({', '.join(names)})", raw["component"])
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise SpecError(f"{path}.message", "a string", message)
    port = _parse_port(raw["port"], f"{path}.port")
    target = next(c for c in components if c.name == raw["component"])
    exposed = target.ports
    # nothing would listen there for the tunnel to reach; a hostNetwork component's process
    # binds the node's ports itself, declared or not (Clusterous' spark demo tunnels so)
    if port not in exposed and not target.host_network:
        ports = ", ".join(map(str, exposed)) or "none: add the port to its ports"
        raise SpecError(f"{path}.port", f"a port {raw['component']} exposes ({ports})", port)
    return Tunnel(
        local_port=_parse_port(raw["localPort"], f"{path}.localPort"),
        component=raw["component"],
        port=port,
        message=message,
    )


def _check_unique_names(components: tuple[Component, ...], path: str) -> None:
    seen: set[str] = set()
    for i, component in enumerate(components):
        if component.name in seen:
            raise SpecError(f"{path}.components[{i}].name", "a name no other component has", component.name)
        seen.add(component.name)


def _check_depends_on(components: tuple[Component, ...], path: str) -> None:
    names = [c.name for c in components]
    for i, component in enumerate(components):
        for j, dependency in enumerate(component.depends_on):
            if dependency == component.name or dependency not in names:
                others = ", ".join(n for n in names if n != component.name) or "none"
                raise SpecError(
                    f"{path}.components[{i}].dependsOn[{j}]",
                    f"the name of another component ({others})",
                    dependency,
                )
    cycle = _find_cycle(components)
    if cycle:
        index = names.index(cycle[0])
        raise SpecError(
            f"{path}.components[{index}].dependsOn",
            f"no dependency cycle (found {' -> '.join(cycle)})",
        )


def _find_cycle(components: tuple[Component, ...]) -> list[str] | None:
    """A dependency cycle as a path of names that ends where it starts, or None."""
    edges = {c.name: c.depends_on for c in components}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if state.get(name) == "open":
            return trail[trail.index(name) :] + [name]
        if state.get(name) == "done":
            return None
        state[name] = "open"
        for dependency in edges[name]:
            found = visit(dependency, trail + [name])
            if found:
                return found
        state[name] = "done"
        return None

    for component in components:
        found = visit(component.name, [])
        if found:
            return found
    return None


def _expect_mapping(value: object, path: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, expected, value)
    return value


def _list(value: object, path: str, expected: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(path, expected, value)
    return value
