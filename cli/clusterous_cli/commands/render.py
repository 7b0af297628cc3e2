"""`render APP [--nodes NODELIST] [--pods PODLIST]`: the objects the operator would create, offline.

It calls the operator's own builders, so what it prints is what the operator creates (the
operator adds owner references, which need the live ClusterApp, and holds a component at 0
replicas while its dependencies start; render shows the state once everything runs).
"""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_core.names import GROUP_LABEL

HELP = """Print the objects the operator would create for a ClusterApp, as multi-document YAML.

Works offline. NODELIST is what `kubectl get nodes -o yaml` prints; without --nodes the cluster
is taken to be 1 master node and 2 worker nodes with 2 CPUs each (said on stderr). PODLIST is
what `kubectl get pods -A -o yaml` prints: their CPU and memory requests are taken from what
the nodes offer, as the operator does.

Example: clusterous-k8s render examples/basic-python/clusterapp.yaml --nodes nodes.yaml --pods pods.yaml
"""

DEFAULT_NODES = (
    ("master-1", "master", "2", "8Gi"),
    ("worker-1", "worker", "2", "8Gi"),
    ("worker-2", "worker", "2", "8Gi"),
)


def render(
    app_file: Path = typer.Argument(..., metavar="APP", help="A ClusterApp YAML file."),
    nodes_file: Path = typer.Option(
        None, "--nodes", metavar="NODELIST", help="Nodes as `kubectl get nodes -o yaml` prints them."
    ),
    pods_file: Path = typer.Option(
        None, "--pods", metavar="PODLIST", help="Pods as `kubectl get pods -A -o yaml` prints them."
    ),
) -> None:
    import yaml

    from clusterous_cli import output
    from clusterous_core.errors import BadInput
    from clusterous_operator.builders import build_children
    from clusterous_operator.reconcile import check_against_cluster
    from clusterous_operator.spec import SpecError, parse_app

    body = _clusterapp(_load_yaml(app_file), app_file)
    nodes = default_nodes() if nodes_file is None else _items(_load_yaml(nodes_file), nodes_file, "Node")
    pods = [] if pods_file is None else _items(_load_yaml(pods_file), pods_file, "Pod")
    try:
        app = parse_app(body)
        reserved = check_against_cluster(app, nodes, pods)
    except SpecError as error:
        raise BadInput(str(app_file), error.field, error.expected, error.got) from None
    objects = build_children(app, nodes, reserved=reserved)
    if nodes_file is None:
        described = ", ".join(
            f"{name} ({group}, {cpu} CPU, {memory})" for name, group, cpu, memory in DEFAULT_NODES
        )
        output.say(f"no --nodes given: rendered for {described}")
    typer.echo(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False), nl=False)


def default_nodes() -> list[dict]:
    """The nodes render assumes without --nodes: Ready, labelled with their group."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {GROUP_LABEL: group}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for name, group, cpu, memory in DEFAULT_NODES
    ]


def _load_yaml(path: Path) -> list:
    from clusterous_core.yamlfile import parse, read_text

    return [d for d in parse(read_text(path, "YAML file"), path, every_document=True) if d is not None]


def _clusterapp(documents: list, path: Path) -> dict:
    from clusterous_core.errors import BadInput

    apps = [d for d in documents if isinstance(d, dict) and d.get("kind") == "ClusterApp"]
    if len(apps) != 1:
        raise BadInput(str(path), "kind", "exactly one document of kind ClusterApp", f"{len(apps)} found")
    return apps[0]


def _items(documents: list, path: Path, kind: str) -> list[dict]:
    """Objects of `kind` from a List / NodeList / PodList (kubectl's output) or from documents."""
    from clusterous_core.errors import BadInput

    items: list = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") in ("List", f"{kind}List"):
            items.extend(document.get("items") or [])
        else:
            items.append(document)
    command = f"kubectl get {kind.lower()}s{' -A' if kind == 'Pod' else ''} -o yaml"
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or item.get("kind", kind) != kind
            or "name" not in (item.get("metadata") or {})
        ):
            raise BadInput(str(path), f"items[{i}]", f"a {kind} with metadata.name ({command})")
    return items
