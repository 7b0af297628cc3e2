"""`convert`: Clusterous environment files as ClusterApps, mapping by mapping and mistake by mistake.

Every converted app is also parsed by the operator's spec and rendered by its builders (and the
objects validated against the Kubernetes schemas), so "converts" means "the operator runs it".
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from clusterous_cli import envfile
from clusterous_operator.builders import build_children
from clusterous_operator.images import CLUSTER_REGISTRY
from clusterous_operator.spec import parse_app
from tests.harness.tools import shellcheck, validate_k8s

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BASIC = EXAMPLES / "basic-python" / "basic-python-env.yml"
DASK = EXAMPLES / "dask" / "dask-env.yml"


def node(name: str, group: str, cpu: str = "4") -> dict:
    return {
        "metadata": {"name": name, "labels": {"clusterous.io/group": group}},
        "status": {"allocatable": {"cpu": cpu}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node("m1", "master", "2"), node("w1", "worker"), node("w2", "worker")]


def render(clusterapp: dict) -> dict[tuple[str, str], dict]:
    """What the operator would create on NODES, validated against Kubernetes' schemas."""
    objects = build_children(parse_app(clusterapp), NODES)
    assert validate_k8s(objects) == len(objects)
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def write_env(tmp_path: Path, body: str | dict, folders: tuple[str, ...] = ()) -> Path:
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "env.yml"
    path.write_text(textwrap.dedent(body) if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def convert(path: Path, **params) -> dict:
    return envfile.load_application(path, params).clusterapp


def one(
    fields: dict | None = None, environment: dict | None = None, drop: tuple[str, ...] = (), **top
) -> dict:
    """A minimal environment file: component `main` with `fields` added (or `drop`ped)."""
    main = {"machine": "master", "cpu": 1, "image": "registry:5000/tool", **(fields or {})}
    for key in drop:
        main.pop(key)
    return {"name": "app", "environment": {"components": {"main": main}, **(environment or {})}, **top}


def component(app: dict, name: str = "main") -> dict:
    return next(c for c in app["spec"]["components"] if c["name"] == name)


# --- the examples ------------------------------------------------------------------------------


def test_basic_python_converts_to_what_the_handwritten_clusterapp_says(cli) -> None:
    result = cli(["convert", str(BASIC)])
    assert result.exit_code == 0, result.output
    converted = yaml.safe_load(result.stdout)
    handwritten = yaml.safe_load((BASIC.parent / "clusterapp.yaml").read_text())
    master, handmade = component(converted, "master"), component(handwritten, "master")
    for field in ("group", "image", "command", "replicas", "cpu", "ports"):
        assert master[field] == handmade[field], field
    engine = component(converted, "engine")
    assert engine["replicas"] == "auto" and engine["dependsOn"] == ["master"]
    assert engine["cpu"] == "auto"  # kept: the env file says auto (the handwritten app chose "1")
    assert converted["spec"]["tunnels"] == handwritten["spec"]["tunnels"]
    objects = render(converted)
    deployment = objects[("Deployment", "basic-python-master")]
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{CLUSTER_REGISTRY}/basic-python"
    )
    assert objects[("Service", "basic-python-master")]["spec"]["ports"][0]["port"] == 8888


def test_basic_python_names_its_folders_and_image() -> None:
    app = envfile.load_application(BASIC)
    assert [(c.local.name, c.remote) for c in app.copies] == [("launch_scripts", "launch_scripts")]
    assert [(i.context.name, i.reference) for i in app.images] == [("image", "basic-python:latest")]
    assert app.node_groups is None


def test_dask_example_converts_with_the_cluster_files_parameters_and_renders(cli) -> None:
    result = cli(
        ["convert", str(DASK), "--cluster-file", str(EXAMPLES / "mycluster.yml"), "-P", "worker_count=3"]
    )
    assert result.exit_code == 0, result.output
    app = yaml.safe_load(result.stdout)
    groups = json.loads(app["metadata"]["annotations"][envfile.NODE_GROUPS_ANNOTATION])
    cluster_params = yaml.safe_load((EXAMPLES / "mycluster.yml").read_text())["parameters"]
    assert groups == {
        "master": {"type": cluster_params["master_instance_type"], "count": 1},
        "worker": {"type": cluster_params["worker_instance_type"], "count": 3},  # --param wins
    }
    assert [t["localPort"] for t in app["spec"]["tunnels"]] == [8888, 8787]
    objects = render(app)
    workers = objects[("Deployment", "dask-worker")]
    assert (
        workers["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"{CLUSTER_REGISTRY}/dask-notebook:2024.12.1"
    )
    worker_cpus = sum(
        int(n["status"]["allocatable"]["cpu"])
        for n in NODES
        if n["metadata"]["labels"]["clusterous.io/group"] == "worker"
    )
    assert workers["spec"]["replicas"] == worker_cpus  # count auto at cpu 1: one worker per CPU
    env = {e["name"]: e["value"] for e in workers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CLUSTEROUS_SCHEDULER_HOST"] == "dask-scheduler"  # what launch_worker.sh connects to
    assert "CLUSTEROUS_SCHEDULER_HOST" in (DASK.parent / "launch_scripts" / "launch_worker.sh").read_text()


def test_a_tunnel_to_a_host_network_component_needs_no_declared_port(tmp_path) -> None:
    """As in Clusterous' spark demo: the notebook binds the node's port itself."""
    body = one({"docker_network": "host"}, environment={"expose_tunnel": [{"service": "31888:main:31888"}]})
    app = convert(write_env(tmp_path, body))
    assert app["spec"]["tunnels"] == [{"localPort": 31888, "component": "main", "port": 31888}]
    render(app)


def test_dask_notebook_requires_a_generated_token_that_the_tunnel_url_carries(cli, tmp_path) -> None:
    """Jupyter binds 0.0.0.0 in its pod (no host check): an empty token would let any web page
    open on the laptop run code through the tunnel."""
    from clusterous_cli import apps
    from clusterous_cli.commands.apps import collect_params

    app = envfile.load_application(DASK, collect_params(None, EXAMPLES / "mycluster.yml", tmp_path))
    token = (tmp_path / apps.TOKEN_FILE).read_text().strip()
    assert len(token) >= 32 and (tmp_path / apps.TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    notebook = component(app.clusterapp, "notebook")
    assert notebook["command"][-1] == token
    [message] = [t["message"] for t in app.clusterapp["spec"]["tunnels"] if t["component"] == "notebook"]
    assert apps.fill_message(message, 8888).endswith(
        f"http://localhost:8888/lab/tree/dask-demo.ipynb?token={token}"
    )
    script = (DASK.parent / "launch_scripts" / "launch_notebook.sh").read_text()
    assert "token=''" not in script and 'JUPYTER_TOKEN="$token"' in script
    again = envfile.load_application(DASK, collect_params(None, EXAMPLES / "mycluster.yml", tmp_path))
    assert component(again.clusterapp, "notebook")["command"][-1] == token  # no restart on `run` again
    other = envfile.load_application(DASK, collect_params(None, EXAMPLES / "mycluster.yml"))
    assert component(other.clusterapp, "notebook")["command"][-1] != token  # convert: a fresh one


def test_dask_example_files_exist_and_scripts_pass_shellcheck() -> None:
    app = envfile.load_application(
        DASK, {"master_instance_type": "t3.large", "worker_instance_type": "c5.xlarge", "worker_count": 2}
    )
    assert {c.remote for c in app.copies} == {"launch_scripts", "notebooks"}
    for script in (DASK.parent / "launch_scripts").glob("*.sh"):
        result = shellcheck(script)
        assert result.returncode == 0, result.stdout
    notebook = json.loads((DASK.parent / "notebooks" / "dask-demo.ipynb").read_text())
    assert notebook["nbformat"] == 4
    assert "dask-demo.ipynb" in app.clusterapp["spec"]["tunnels"][0]["message"]


# --- mappings ----------------------------------------------------------------------------------


def test_machine_count_cpu_and_depends_map_to_the_clusterapp(tmp_path) -> None:
    path = write_env(
        tmp_path,
        """
        name: sim
        environment:
          components:
            queue: {machine: master, cpu: auto, image: registry:5000/q, ports: "6379"}
            ui: {machine: master, cpu: auto, image: registry:5000/q, depends: queue}
            work: {machine: gpu-nodes, cpu: 0.25, count: 3, image: registry:5000/q, depends: "queue, ui"}
        """,
    )
    app = convert(path)
    work = component(app, "work")
    assert (work["group"], work["replicas"], work["cpu"], work["dependsOn"]) == (
        "gpu-nodes",
        3,
        "0.25",
        ["queue", "ui"],
    )
    assert component(app, "ui")["replicas"] == 1  # Clusterous' default count
    assert component(app, "queue")["cpu"] == "auto"


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("/bin/bash /home/data/run.sh --n 4", ["/bin/bash", "/home/data/run.sh", "--n", "4"]),
        ("python3 -c 'print(1)'", ["python3", "-c", "print(1)"]),
        ("cd /home/data && ./run.sh > log.txt", ["/bin/sh", "-c", "cd /home/data && ./run.sh > log.txt"]),
        ("echo $HOSTNAME", ["/bin/sh", "-c", "echo $HOSTNAME"]),  # the shell's variable, untouched
    ],
)
def test_cmd_is_split_or_run_by_a_shell_when_it_uses_shell_syntax(tmp_path, cmd, expected) -> None:
    path = write_env(tmp_path, one({"cmd": cmd}))
    assert component(convert(path))["command"] == expected


def test_a_given_variable_is_filled_in_cmd_and_the_shells_are_left(tmp_path) -> None:
    path = write_env(tmp_path, one({"cmd": "run --size $size --host $HOSTNAME"}))
    assert component(convert(path, size=7))["command"] == ["/bin/sh", "-c", "run --size 7 --host $HOSTNAME"]


@pytest.mark.parametrize(
    "ports, tunnel, expected_ports, expected_tunnel_port",
    [
        ("8888", "8888:main:8888", [8888], 8888),
        ("2000,2001,2002", "9000:main:2001", [2000, 2001, 2002], 2001),
        ("2000:8000,2001:8001", "9000:main:2001", [8000, 8001], 8001),  # host port -> its container port
        (8080, "9000:main:8080", [8080], 8080),
    ],
)
def test_ports_and_host_container_pairs(
    tmp_path, ports, tunnel, expected_ports, expected_tunnel_port
) -> None:
    path = write_env(tmp_path, one({"ports": ports}, {"expose_tunnel": {"service": tunnel}}))
    app = convert(path)
    assert component(app)["ports"] == expected_ports
    assert app["spec"]["tunnels"][0]["port"] == expected_tunnel_port
    render(app)


def test_docker_network_host_becomes_host_network(tmp_path) -> None:
    path = write_env(tmp_path, one({"docker_network": "host"}))
    app = convert(path)
    assert component(app)["hostNetwork"] is True
    pod = render(app)[("Deployment", "app-main")]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True


@pytest.mark.parametrize(
    "image, expected, pulled",
    [
        ("registry:5000/basic-python", "registry:5000/basic-python", f"{CLUSTER_REGISTRY}/basic-python"),
        (
            "registry:5000/bdkd:spark_v11",
            "registry:5000/bdkd:spark_v11",
            f"{CLUSTER_REGISTRY}/bdkd:spark_v11",
        ),
        ("python:3.12", "python:3.12", "docker.io/library/python:3.12"),
        ("ubuntu", "ubuntu", "docker.io/library/ubuntu"),
        ("redis:7", "redis:7", "docker.io/library/redis:7"),
        ("jupyter/minimal-notebook", "jupyter/minimal-notebook", "docker.io/jupyter/minimal-notebook"),
        ("ghcr.io/dask/dask:2024.12.1", "ghcr.io/dask/dask:2024.12.1", "ghcr.io/dask/dask:2024.12.1"),
        ("localhost:5000/x", "localhost:5000/x", "localhost:5000/x"),
    ],
)
def test_images_keep_their_meaning(tmp_path, image, expected, pulled) -> None:
    app = convert(write_env(tmp_path, one({"image": image})))
    assert component(app)["image"] == expected
    container = render(app)[("Deployment", "app-main")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == pulled


def test_expose_tunnel_as_a_list_with_messages(tmp_path) -> None:
    path = write_env(
        tmp_path,
        one(
            {"ports": "8080,9090"},
            {
                "expose_tunnel": [
                    {"service": "8080:main:8080", "message": "Notebook is available at {url}"},
                    {"service": "9090:main:9090", "message": "Console on port {port}"},
                ]
            },
        ),
    )
    tunnels = convert(path)["spec"]["tunnels"]
    assert tunnels == [
        {"localPort": 8080, "component": "main", "port": 8080, "message": "Notebook is available at {url}"},
        {"localPort": 9090, "component": "main", "port": 9090, "message": "Console on port {port}"},
    ]


def test_tunnel_messages_are_filled_with_the_local_url_and_port() -> None:
    from clusterous_cli.apps import fill_message

    assert fill_message("open {url} (port {port})", 8890) == "open http://localhost:8890 (port 8890)"
    assert fill_message(None, 8888) == "http://localhost:8888"


def test_cluster_section_becomes_node_groups_for_up(tmp_path) -> None:
    path = write_env(
        tmp_path,
        one(
            cluster={
                "master": {"type": "$master_instance_type", "count": 1},
                "spark": {"type": "$spark_type", "count": "$spark_count - 1"},
            }
        ),
    )
    params = {"master_instance_type": "t3.large", "spark_type": "r5.large", "spark_count": 5}
    groups = envfile.node_groups_for_up(path, params)
    assert groups == {"master": {"type": "t3.large", "count": 1}, "spark": {"type": "r5.large", "count": 4}}
    app = convert(path, **params)
    assert json.loads(app["metadata"]["annotations"][envfile.NODE_GROUPS_ANNOTATION]) == groups
    assert envfile.node_groups_for_up(BASIC, {}) is None


def test_params_are_typed_like_yaml_and_fill_anywhere(tmp_path, cli) -> None:
    path = write_env(tmp_path, one({"count": "$engines", "image": "registry:5000/tool:$version"}))
    result = cli(["convert", str(path), "--param", "engines=4", "--param", "version=1.2"])
    assert result.exit_code == 0, result.output
    main = component(yaml.safe_load(result.stdout))
    assert main["replicas"] == 4 and main["image"] == "registry:5000/tool:1.2"


def test_a_clusterapp_yaml_is_accepted_as_it_is(tmp_path) -> None:
    app = envfile.load_application(BASIC.parent / "clusterapp.yaml")
    assert app.name == "basic-python" and not app.copies and not app.images
    render(app.clusterapp)


# --- bad input: exit 2, one message naming the file, the field and what is expected -------------

C = "environment.components.main"
IMG = {"image": [{"dockerfile": "img/", "image_name": "tool"}]}
BAD = [
    ("name starts with a digit", one(name="2024-sim"), (), "name", "a lower case letter first"),
    (
        "no components",
        {"name": "app", "environment": {"copy": []}},
        (),
        "environment.components",
        "a mapping of component names",
    ),
    (
        "empty components",
        {"name": "app", "environment": {"components": {}}},
        (),
        "environment.components",
        "at least one",
    ),
    ("count word", one({"count": "many"}), (), f"{C}.count", "auto or a non-negative integer"),
    ("count negative", one({"count": -1}), (), f"{C}.count", "non-negative integer"),
    ("count fraction", one({"count": 1.5}), (), f"{C}.count", "non-negative integer"),
    ("cpu word", one({"cpu": "lots"}), (), f"{C}.cpu", "positive number"),
    ("cpu zero", one({"cpu": 0}), (), f"{C}.cpu", "positive number"),
    ("cpu negative", one({"cpu": -2}), (), f"{C}.cpu", "positive number"),
    ("cpu too fine", one({"cpu": 0.0001}), (), f"{C}.cpu", "at most 3 decimals"),
    ("depends unknown", one({"depends": "mastr"}), (), f"{C}.depends", "another component"),
    ("port word", one({"ports": "88a"}), (), f"{C}.ports", "host:container"),
    ("port too big", one({"ports": "70000"}), (), f"{C}.ports", "1-65535"),
    ("port triple", one({"ports": "1:2:3"}), (), f"{C}.ports", "host:container"),
    (
        "tunnel short",
        one(environment={"expose_tunnel": {"service": "8888:main"}}),
        (),
        "expose_tunnel.service",
        "local_port:component:port",
    ),
    (
        "tunnel component",
        one(environment={"expose_tunnel": {"service": "8888:mian:8888"}}),
        (),
        "expose_tunnel.service",
        "a component of this environment (main)",
    ),
    (
        "tunnel in list",
        one(environment={"expose_tunnel": [{"service": "8888:main:x"}]}),
        (),
        "expose_tunnel[0].service",
        "local_port:component:port",
    ),
    (
        "tunnel to a port the component does not expose",
        one({"ports": "8080"}, environment={"expose_tunnel": {"service": "8888:main:8888"}}),
        (),
        "environment.expose_tunnel[0].service",
        "a port main exposes (8080)",
    ),
    (
        "tunnel to a component without ports",
        one(environment={"expose_tunnel": [{"service": "8888:main:8888"}]}),
        (),
        "environment.expose_tunnel[0].service",
        "a port main exposes (none: add the port to its ports)",
    ),
    ("variable missing", one({"count": "$engines"}), (), f"{C}.count", "$engines"),
    (
        "variable in cluster",
        one(cluster={"worker": {"type": "t3.large", "count": "$worker_count"}}),
        (),
        "cluster.worker.count",
        "$worker_count",
    ),
    (
        "copy missing",
        one(environment={"copy": ["scripts/"]}),
        (),
        "environment.copy[0]",
        "an existing folder",
    ),
    ("dockerfile missing", one(environment=IMG), (), "environment.image[0].dockerfile", "Dockerfile"),
    (
        "dockerfile folder without Dockerfile",
        one(environment=IMG),
        ("img",),
        "environment.image[0].dockerfile",
        "Dockerfile",
    ),
    ("network", one({"docker_network": "overlay"}), (), f"{C}.docker_network", "bridge or host"),
    ("auto count without cpu", one({"count": "auto"}, drop=("cpu",)), (), f"{C}.cpu", "count is auto"),
    ("unknown key", one({"memroy": 2}), (), f"{C}.memroy", "one of machine"),
]


@pytest.mark.parametrize("case, body, folders, field, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_file_field_and_expectation(
    tmp_path, cli, case, body, folders, field, expected
) -> None:
    path = write_env(tmp_path, body, folders)
    result = cli(["convert", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    message = result.stderr
    assert str(path) in message and field in message and expected in message, message
    assert "Traceback" not in message


def test_a_missing_file_and_a_bad_param_are_bad_input(tmp_path, cli) -> None:
    missing = cli(["convert", str(tmp_path / "nope.yml")])
    assert missing.exit_code == 2 and "nope.yml" in missing.stderr
    bad = cli(["convert", str(BASIC), "--param", "no-equals-sign"])
    assert bad.exit_code == 2 and "--param" in bad.stderr and "NAME=VALUE" in bad.stderr


# --- `up` with an environment_file whose `cluster:` section is the layout ------------------------


def test_up_dry_run_takes_the_node_groups_from_the_environment_file(no_aws, cli, tmp_path) -> None:
    app_dir = tmp_path / "spark"
    app_dir.mkdir()
    write_env(
        app_dir,
        one(
            cluster={
                "master": {"type": "$master_instance_type", "count": 1},
                "spark": {"type": "$spark_type", "count": "$spark_count - 1"},
            }
        ),
    )
    cluster_file = tmp_path / "cluster.yml"
    cluster_file.write_text(
        yaml.safe_dump(
            {
                "cluster_name": "sparky",
                "environment_file": "spark/env.yml",
                "parameters": {
                    "master_instance_type": "t3.large",
                    "spark_type": "r5.large",
                    "spark_count": 4,
                },
            }
        )
    )
    result = cli(["up", str(cluster_file), "--dry-run", "--json", "--region", "eu-west-1"])
    assert result.exit_code == 0, result.output
    groups = {r["key"]: r for r in json.loads(result.stdout)["resources"] if r["key"].startswith("group:")}
    assert groups["group:spark"]["count"] == 3 and groups["group:master"]["count"] == 1
    assert "group:worker" not in groups


def test_up_names_the_missing_variable_of_the_environment_files_cluster_section(
    no_aws, cli, tmp_path
) -> None:
    write_env(tmp_path, one(cluster={"worker": {"type": "t3.large", "count": "$nodes"}}))
    cluster_file = tmp_path / "cluster.yml"
    cluster_file.write_text(yaml.safe_dump({"cluster_name": "c1", "environment_file": "env.yml"}))
    result = cli(["up", str(cluster_file), "--dry-run", "--region", "eu-west-1"])
    assert result.exit_code == 2, result.output
    assert (
        "env.yml" in result.stderr and "cluster.worker.count" in result.stderr and "$nodes" in result.stderr
    )
    given = cli(
        ["up", str(cluster_file), "--dry-run", "--json", "--region", "eu-west-1", "--param", "nodes=3"]
    )
    assert given.exit_code == 0, given.output  # up takes --param like run and convert
    groups = {r["key"]: r for r in json.loads(given.stdout)["resources"] if r["key"].startswith("group:")}
    assert groups["group:worker"]["count"] == 3


def test_upstream_underscored_groups_convert_and_render_to_names_kubernetes_accepts(tmp_path) -> None:
    from tests.harness.k8s_admission import dns1035_label, dns1123_subdomain, label_value

    body = {
        "name": "sim",
        "environment": {
            "components": {
                "master": {"machine": "io_master", "cpu": 1, "image": "registry:5000/tool", "ports": "8888"},
                "engine": {
                    "machine": "cpu_worker",
                    "cpu": "auto",
                    "count": "auto",
                    "image": "registry:5000/tool",
                    "depends": "master",
                },
            }
        },
        "cluster": {
            "io_master": {"type": "t3.large", "count": 1},
            "cpu_worker": {"type": "c5.xlarge", "count": 2},
        },
    }
    path = write_env(tmp_path, body)
    assert envfile.node_groups_for_up(path, {}) == {
        "io_master": {"type": "t3.large", "count": 1},
        "cpu_worker": {"type": "c5.xlarge", "count": 2},
    }
    app = convert(path)
    assert {c["name"]: c["group"] for c in app["spec"]["components"]} == {
        "master": "io_master",
        "engine": "cpu_worker",
    }
    nodes = [node("m1", "io_master", "2"), node("w1", "cpu_worker"), node("w2", "cpu_worker")]
    objects = build_children(parse_app(app), nodes)
    assert validate_k8s(objects) == len(objects)
    for obj in objects:
        meta = obj["metadata"]
        rule = dns1035_label if obj["kind"] == "Service" else dns1123_subdomain
        assert rule(meta["name"]) == [], meta["name"]
        template = (obj.get("spec") or {}).get("template") or {}
        labels = {**meta["labels"], **(template.get("metadata") or {}).get("labels", {})}
        assert all(label_value(v) == [] for v in labels.values()), labels
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    pod = deployments["sim-engine"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"clusterous.io/group": "cpu_worker"}  # the raw group
    assert deployments["sim-engine"]["spec"]["replicas"] == 2  # cpu: auto takes a whole node
