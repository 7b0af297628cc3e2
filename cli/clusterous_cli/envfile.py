"""Clusterous environment files, read unchanged, as a ClusterApp plus what `run` must do first.

Why a converter and not a second spec: the operator knows one format (ClusterApp); an
environment file is translated here, checked field by field, and every mistake is a BadInput
that names the file, the field (and the component, port or $variable) and what is expected,
before anything is copied, built or applied. docs/applications.md has the mapping table.

Decisions the Clusterous format leaves open:
- `$name` and `${name}` are filled from --param, then the cluster file's `parameters`
  (envparams.py says how).
- `cmd` as a string: Marathon ran it with `sh -c`. A plain command is split with shlex and run
  directly (the program is PID 1 and gets signals); one that uses shell syntax (pipes, `&&`,
  redirections, variables, globs) runs as `/bin/sh -c CMD`, as it did under Clusterous.
- `ports: "host:container"` publishes the container port (the Service port); the host port
  has no meaning without Docker's port mapping, but a tunnel that names it reaches the
  container port it was mapped to.
- images: `registry:5000/x` becomes the short name `x` (the cluster registry); a Docker Hub
  short name (`python:3.12`) is written out as `docker.io/library/python:3.12`, because in a
  ClusterApp a short name means the cluster registry; other references are kept as written.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from clusterous_cli.envparams import Filler
from clusterous_core.errors import BadInput
from clusterous_core.names import API_VERSION, DNS_1035, GROUP_NAME, GROUP_NAME_EXPECTED, INSTANCE_TYPE

NODE_GROUPS_ANNOTATION = "clusterous.io/node-groups"
SOURCE_ANNOTATION = "clusterous.io/environment-file"
COMPONENT_KEYS = (
    "machine",
    "cpu",
    "count",
    "image",
    "cmd",
    "ports",
    "depends",
    "docker_network",
    "attach_volume",
)
MIN_LOCAL_PORT = 1024  # tunnels listen as the user: no privileged ports

_SHELL_EXPANSION = re.compile(r"[$`*?~\[]")
_IMAGE_NAME = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$"
)
_LEGACY_PREFIX = "registry:5000/"


@dataclass(frozen=True)
class CopyDir:
    """A local folder and where it lands on the shared volume (relative to its root)."""

    local: Path
    remote: str


@dataclass(frozen=True)
class ImageBuild:
    """An image to build on the cluster from a folder holding a Dockerfile."""

    context: Path
    name: str
    tag: str

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class Application:
    """What `run` needs: the ClusterApp, and the folders and images to prepare before it."""

    name: str
    source: Path
    clusterapp: dict
    copies: tuple[CopyDir, ...] = ()
    images: tuple[ImageBuild, ...] = ()
    node_groups: dict[str, dict] | None = None
    notes: tuple[str, ...] = field(default=())


# --- entry points ----------------------------------------------------------------------------


def load_application(path: Path, params: Mapping[str, object] | None = None) -> Application:
    """An environment file or a ClusterApp YAML, checked; BadInput names the file on any mistake."""
    data = read_yaml(path)
    if data.get("kind") == "ClusterApp" or "apiVersion" in data:
        return _from_clusterapp(path, data)
    return convert(path, data, params or {})


def node_groups_for_up(env_path: Path, parameters: Mapping[str, object]) -> dict[str, dict] | None:
    """The node groups an environment file's `cluster:` section asks for, in the cluster file's
    `node_groups` format ({group: {type, count}}), or None without a section. For `up`."""
    data = read_yaml(env_path)
    section = data.get("cluster")
    if section is None:
        return None
    return _node_groups(Filler(str(env_path), parameters), section)


def read_yaml(path: Path) -> dict:
    from clusterous_core.yamlfile import read_mapping

    return read_mapping(path, "environment file or ClusterApp YAML", empty_ok=False)


def to_yaml(app: Application) -> str:
    import yaml

    return yaml.safe_dump(app.clusterapp, sort_keys=False, width=100)


# --- conversion ------------------------------------------------------------------------------


def convert(path: Path, data: Mapping, params: Mapping[str, object]) -> Application:
    """An environment file's mapping as an Application; paths are relative to the file."""
    source = str(path)
    base = Path(path).resolve().parent
    fill = Filler(source, params)
    unknown = sorted(set(data) - {"name", "environment", "cluster"})
    if unknown:
        raise BadInput(
            source, unknown[0], "one of name, environment, cluster (Clusterous environment file keys)"
        )
    name = fill.value(data.get("name"), "name")
    if not isinstance(name, str) or not DNS_1035.match(name):
        raise BadInput(
            source,
            "name",
            "an application name: a lower case letter first, then letters, digits and '-'",
            name,
        )
    env = data.get("environment")
    if not isinstance(env, Mapping):
        raise BadInput(
            source,
            "environment",
            "a mapping with components (and optionally copy, image, expose_tunnel)",
            env,
        )
    unknown = sorted(set(env) - {"copy", "image", "components", "expose_tunnel"})
    if unknown:
        raise BadInput(source, f"environment.{unknown[0]}", "one of copy, image, components, expose_tunnel")
    raw_components = env.get("components")
    if not isinstance(raw_components, Mapping) or not raw_components:
        raise BadInput(
            source,
            "environment.components",
            "a mapping of component names to their settings (at least one)",
            raw_components,
        )
    names = [str(n) for n in raw_components]
    components, host_ports = [], {}
    for cname, raw in raw_components.items():
        component, mapping = _component(fill, str(cname), raw, names)
        components.append(component)
        host_ports[component["name"]] = mapping
    tunnels = _tunnels(fill, env.get("expose_tunnel"), names, host_ports)
    copies = _copies(fill, env.get("copy"), base)
    images = _images(fill, env.get("image"), base)
    groups = _node_groups(fill, data["cluster"]) if data.get("cluster") is not None else None

    metadata: dict = {"name": name, "annotations": {SOURCE_ANNOTATION: Path(path).name}}
    if groups:
        metadata["annotations"][NODE_GROUPS_ANNOTATION] = json.dumps(groups, sort_keys=True)
    spec: dict = {"components": components, "sharedVolume": {"mountPath": "/home/data"}}
    if tunnels:
        spec["tunnels"] = tunnels
    clusterapp = {"apiVersion": API_VERSION, "kind": "ClusterApp", "metadata": metadata, "spec": spec}
    _check_against_operator(source, clusterapp)
    return Application(name, Path(path), clusterapp, copies, images, groups, tuple(fill.notes))


def _from_clusterapp(path: Path, data: dict) -> Application:
    _check_against_operator(str(path), data)
    return Application(data["metadata"]["name"], Path(path), data)


def _check_against_operator(source: str, clusterapp: dict) -> None:
    """The operator's own rules (spec.py), so `run` never applies what the operator would fail."""
    from clusterous_operator.spec import SpecError, parse_app

    try:
        parse_app(clusterapp)
    except SpecError as exc:
        raise BadInput(source, source_field(clusterapp, exc.field), exc.expected, exc.got) from None


_ENV_KEYS = {"group": "machine", "replicas": "count", "dependsOn": "depends", "hostNetwork": "docker_network"}


def source_field(clusterapp: Mapping, field: str | None) -> str | None:
    """A ClusterApp field as the user wrote it: `spec.components[1].cpu` of an app converted
    from an environment file is `environment.components.web.cpu` there."""
    annotations = (clusterapp.get("metadata") or {}).get("annotations") or {}
    if SOURCE_ANNOTATION not in annotations:
        return field
    tunnel = re.fullmatch(r"spec\.tunnels\[(\d+)\]\..*", field or "")
    if tunnel:
        return f"environment.expose_tunnel[{tunnel[1]}].service"
    match = re.fullmatch(r"spec\.components\[(\d+)\]\.(\w+)(.*)", field or "")
    components = (clusterapp.get("spec") or {}).get("components") or []
    if not match or int(match[1]) >= len(components):
        return field
    name = components[int(match[1])].get("name")
    return f"environment.components.{name}.{_ENV_KEYS.get(match[2], match[2])}{match[3]}"


def _component(fill: Filler, cname: str, raw: object, names: list[str]) -> tuple[dict, dict[int, int]]:
    where = f"environment.components.{cname}"
    source = fill.source
    if not DNS_1035.match(cname) or len(cname) > 40:
        raise BadInput(
            source, where, "a component name: lower case letters, digits and '-', at most 40", cname
        )
    if not isinstance(raw, Mapping):
        raise BadInput(source, where, "a mapping with machine, image, cmd, ...", raw)
    unknown = sorted(set(raw) - set(COMPONENT_KEYS))
    if unknown:
        raise BadInput(source, f"{where}.{unknown[0]}", f"one of {', '.join(COMPONENT_KEYS)}")
    machine = fill.value(raw.get("machine"), f"{where}.machine")
    if not isinstance(machine, str) or not machine:
        raise BadInput(
            source, f"{where}.machine", "the node group it runs on (e.g. master or worker)", machine
        )
    image = fill.value(raw.get("image"), f"{where}.image")
    if not isinstance(image, str) or not image.strip():
        raise BadInput(source, f"{where}.image", "an image name, e.g. registry:5000/basic-python", image)
    out: dict = {"name": cname, "group": machine, "image": image.strip()}  # as Docker names it

    if raw.get("cmd") is not None:
        out["command"] = _command(fill, raw["cmd"], f"{where}.cmd")
    count = fill.value(raw.get("count", 1), f"{where}.count")
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    if count != "auto" and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise BadInput(source, f"{where}.count", "auto or a non-negative integer", count)
    out["replicas"] = count
    if raw.get("cpu") is not None:
        out["cpu"] = _cpu(source, fill.value(raw["cpu"], f"{where}.cpu"), f"{where}.cpu")
    elif count == "auto":
        raise BadInput(source, f"{where}.cpu", "auto or a number of CPUs per instance when count is auto")
    ports, host_ports = _ports(source, fill.value(raw.get("ports"), f"{where}.ports"), f"{where}.ports")
    if ports:
        out["ports"] = ports
    network = fill.value(raw.get("docker_network", "bridge"), f"{where}.docker_network")
    if network not in ("bridge", "host"):
        raise BadInput(source, f"{where}.docker_network", "bridge or host", network)
    if network == "host":
        out["hostNetwork"] = True
    depends = _depends(
        source, fill.value(raw.get("depends"), f"{where}.depends"), f"{where}.depends", cname, names
    )
    if depends:
        out["dependsOn"] = depends
    attach = fill.value(raw.get("attach_volume", True), f"{where}.attach_volume")
    if attach not in (True, "yes", "true"):
        fill.notes.append(
            f"{where}.attach_volume: the shared volume is mounted at /home/data in every container"
        )
    return out, host_ports


def _command(fill: Filler, raw: object, where: str) -> list[str]:
    if isinstance(raw, list) and raw and all(isinstance(a, (str, int, float)) for a in raw):
        return [str(fill.value(a, where, shell=True)) for a in raw]
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput(fill.source, where, "a command line (a string) or a list of arguments", raw)
    text = str(fill.value(raw, where, shell=True))  # a str already: raw is one
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise BadInput(fill.source, where, f"a command line with balanced quotes ({exc})", text) from None
    if needs_shell(text):
        return ["/bin/sh", "-c", text.strip()]
    return argv


def needs_shell(command: str) -> bool:
    """True when a command line uses shell syntax outside quotes: operators (`&&`, `|`, `>`, `;`,
    parentheses), expansions (`$x`, backquotes, `~`) or globs. A false positive is harmless: the
    shell runs a plain command the same way."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    if any(token and set(token) <= set("();<>|&") for token in lexer):
        return True
    return bool(_SHELL_EXPANSION.search(re.sub(r"'[^']*'", "", command)))


def _cpu(source: str, value: object, where: str) -> str:
    if value == "auto":
        return "auto"
    expected = "auto or a positive number of CPUs (e.g. 0.5 or 2), at most 3 decimals"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(source, where, expected, value)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadInput(source, where, expected, value) from None
    if not number.is_finite() or number <= 0 or number != number.quantize(Decimal("0.001")):
        raise BadInput(source, where, expected, value)
    text = format(number.normalize(), "f")
    return text


def _ports(source: str, value: object, where: str) -> tuple[list[int], dict[int, int]]:
    """Container ports, and host port -> container port for `host:container` entries."""
    if value is None or value == "":
        return [], {}
    if isinstance(value, bool):
        raise BadInput(source, where, 'ports as "8888", "8888,8889" or "host:container"', value)
    items = value if isinstance(value, list) else str(value).split(",")
    ports, mapping = [], {}
    for item in items:
        text = str(item).strip()
        host, sep, container = text.partition(":")
        numbers = [host, container] if sep else [host]
        if not all(n.strip().isdigit() and 1 <= int(n) <= 65535 for n in numbers):
            raise BadInput(
                source,
                where,
                "a port (1-65535) or a host:container pair such as 8080:80, separated by commas",
                text,
            )
        container_port = int(numbers[-1])
        if container_port not in ports:
            ports.append(container_port)
        mapping[int(numbers[0])] = container_port
    return ports, mapping


def _depends(source: str, value: object, where: str, cname: str, names: list[str]) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    out = []
    for item in items:
        dep = str(item).strip()
        if dep == cname or dep not in names:
            others = ", ".join(n for n in names if n != cname) or "none"
            raise BadInput(source, where, f"the name of another component ({others})", dep)
        out.append(dep)
    return out


def _tunnels(
    fill: Filler, value: object, names: list[str], host_ports: dict[str, dict[int, int]]
) -> list[dict]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = "environment.expose_tunnel" + (f"[{i}]" if isinstance(value, list) else "")
        if not isinstance(item, Mapping) or "service" not in item:
            raise BadInput(
                fill.source,
                where,
                "a mapping with service (local:component:port) and an optional message",
                item,
            )
        service = str(fill.value(item["service"], f"{where}.service")).strip()
        parts = service.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise BadInput(
                fill.source, f"{where}.service", "local_port:component:port, e.g. 8888:master:8888", service
            )
        local, component, port = int(parts[0]), parts[1], int(parts[2])
        if component not in names:
            raise BadInput(
                fill.source,
                f"{where}.service",
                f"a component of this environment ({', '.join(names)})",
                component,
            )
        if not MIN_LOCAL_PORT <= local <= 65535 or not 1 <= port <= 65535:
            raise BadInput(
                fill.source,
                f"{where}.service",
                f"a local port {MIN_LOCAL_PORT}-65535 and a component port 1-65535",
                service,
            )
        tunnel = {"localPort": local, "component": component, "port": host_ports[component].get(port, port)}
        message = item.get("message")
        if message is not None:
            if not isinstance(message, str):
                raise BadInput(
                    fill.source, f"{where}.message", "a text ({url} and {port} are filled in)", message
                )
            # $variables given are filled ($token: the URL carries it); any other $ stays as written
            tunnel["message"] = str(fill.value(message, f"{where}.message", shell=True)).rstrip("\n")
        out.append(tunnel)
    return out


def _copies(fill: Filler, value: object, base: Path) -> tuple[CopyDir, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"environment.copy[{i}]"
        text = fill.value(item, where)
        if not isinstance(text, str) or not text.strip():
            raise BadInput(fill.source, where, "a folder relative to the environment file", text)
        local = (base / text).resolve()
        if not local.is_dir():
            raise BadInput(
                fill.source, where, f"an existing folder relative to the environment file ({local})", text
            )
        out.append(CopyDir(local, local.name))
    return tuple(out)


def _images(fill: Filler, value: object, base: Path) -> tuple[ImageBuild, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"environment.image[{i}]"
        if not isinstance(item, Mapping) or "dockerfile" not in item or "image_name" not in item:
            raise BadInput(fill.source, where, "a mapping with dockerfile (a folder) and image_name", item)
        folder = fill.value(item["dockerfile"], f"{where}.dockerfile")
        context = (base / str(folder)).resolve()
        if not context.is_dir() or not (context / "Dockerfile").is_file():
            raise BadInput(
                fill.source,
                f"{where}.dockerfile",
                f"an existing folder holding a Dockerfile, relative to the environment file ({context})",
                folder,
            )
        name, tag = split_image_name(
            fill.source, f"{where}.image_name", fill.value(item["image_name"], f"{where}.image_name")
        )
        out.append(ImageBuild(context, name, tag))
    return tuple(out)


def split_image_name(source: str, where: str | None, value: object) -> tuple[str, str]:
    """`name[:tag]` of an image in the cluster registry (tag `latest` when absent)."""
    text = str(value).strip() if isinstance(value, str) else ""
    if text.startswith(_LEGACY_PREFIX):
        text = text[len(_LEGACY_PREFIX) :]
    if not _IMAGE_NAME.match(text):
        raise BadInput(
            source,
            where,
            "an image name in lower case (letters, digits, '.', '_', '-', '/') with an optional :tag",
            value,
        )
    name, _, tag = text.partition(":")
    return name, tag or "latest"


def _node_groups(fill: Filler, section: object) -> dict[str, dict]:
    if not isinstance(section, Mapping) or not section:
        raise BadInput(fill.source, "cluster", "a mapping of node groups to {type, count}", section)
    groups = {}
    for gname, raw in section.items():
        where = f"cluster.{gname}"
        if not isinstance(gname, str) or not GROUP_NAME.match(gname):
            raise BadInput(fill.source, where, GROUP_NAME_EXPECTED, gname)
        if not isinstance(raw, Mapping) or set(raw) != {"type", "count"}:
            raise BadInput(
                fill.source, where, "a mapping with exactly type (an instance type) and count", raw
            )
        itype = fill.value(raw["type"], f"{where}.type")
        if not isinstance(itype, str) or not INSTANCE_TYPE.match(itype):
            raise BadInput(fill.source, f"{where}.type", "an EC2 instance type such as t3.large", itype)
        count = fill.value(raw["count"], f"{where}.count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadInput(fill.source, f"{where}.count", "a non-negative integer", count)
        groups[str(gname)] = {"type": itype, "count": count}
    return groups
