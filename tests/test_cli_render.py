"""`clusterous-k8s render`: exactly the builders' objects, offline; bad input exits 2 in one line."""

from __future__ import annotations

from pathlib import Path

import yaml

from clusterous_cli.commands.render import default_nodes
from clusterous_cli.main import run
from clusterous_operator.builders import build_children
from clusterous_operator.spec import parse_app
from tests.test_operator_builders import node

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/basic-python/clusterapp.yaml"


def rendered(capsys, *args) -> tuple[int, list[dict], str]:
    code = run(["render", *map(str, args)])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d], err


def test_render_prints_the_builders_objects_for_the_default_nodes(capsys) -> None:
    code, objects, err = rendered(capsys, EXAMPLE)
    assert code == 0
    assert "no --nodes given" in err and "worker-2" in err
    expected = build_children(parse_app(yaml.safe_load(EXAMPLE.read_text())), default_nodes())
    assert objects == expected
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert ("Deployment", "basic-python-engine") in kinds and ("Service", "basic-python-master") in kinds
    engine = next(
        o for o in objects if o["metadata"]["name"] == "basic-python-engine" and o["kind"] == "Deployment"
    )
    assert engine["spec"]["replicas"] == 4  # 2 workers x 2 CPUs, 1 CPU per engine


def test_render_uses_the_nodes_kubectl_prints(capsys, tmp_path) -> None:
    nodes = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [node("m1", "master"), node("w1", "worker", "8"), node("w2", "worker", "4", ready=False)],
    }
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(nodes))
    code, objects, err = rendered(capsys, EXAMPLE, "--nodes", path)
    assert code == 0 and "no --nodes" not in err
    engine = next(
        o for o in objects if o["metadata"]["name"] == "basic-python-engine" and o["kind"] == "Deployment"
    )
    assert engine["spec"]["replicas"] == 8


def one_line_error(capsys, *args) -> str:
    code = run(["render", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_bad_spec_names_the_file_and_the_field(capsys, tmp_path) -> None:
    app = yaml.safe_load(EXAMPLE.read_text())
    app["spec"]["components"][0]["ports"] = [70000]
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    message = one_line_error(capsys, path)
    assert str(path) in message and "spec.components[0].ports[0]" in message and "65535" in message


def test_an_unknown_group_names_the_groups_of_the_nodes(capsys, tmp_path) -> None:
    app = yaml.safe_load(EXAMPLE.read_text())
    app["spec"]["components"][1]["group"] = "gpu"
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    message = one_line_error(capsys, path)
    assert "spec.components[1].group" in message and "master, worker" in message and "'gpu'" in message


def test_a_dependency_cycle_is_bad_input(capsys, tmp_path) -> None:
    app = yaml.safe_load(EXAMPLE.read_text())
    app["spec"]["components"][0]["dependsOn"] = ["engine"]
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    assert "master -> engine -> master" in one_line_error(capsys, path)


def test_missing_files_invalid_yaml_and_non_node_lists_are_bad_input(capsys, tmp_path) -> None:
    assert "existing YAML file" in one_line_error(capsys, tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert "valid YAML" in one_line_error(capsys, broken)
    not_an_app = tmp_path / "cm.yaml"
    not_an_app.write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    assert "ClusterApp" in one_line_error(capsys, not_an_app)
    pods = tmp_path / "pods.yaml"
    pods.write_text(yaml.safe_dump({"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "p"}}]}))
    assert "items[0]" in one_line_error(capsys, EXAMPLE, "--nodes", pods)


def test_help_has_an_example(capsys) -> None:
    assert run(["render", "--help"]) == 0
    assert "Example: clusterous-k8s render" in capsys.readouterr().out
