"""The cluster file model: Clusterous files load unchanged, flags override, every mistake is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterous_core.errors import BadInput
from clusterous_provisioner.clusterfile import DEFAULT_VOLUME_GIB, load_spec

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cluster.yml"
    path.write_text(text)
    return path


def test_the_example_clusterous_file_loads(tmp_path):
    spec = load_spec(REPO / "examples" / "mycluster.yml", profile_region="eu-west-1")
    assert spec.name == "mycluster" and spec.region == "eu-west-1"
    assert spec.controller_type == "t3.medium"
    assert [(g.name, g.instance_type, g.count) for g in spec.groups] == [
        ("master", "t3.large", 1),
        ("worker", "c5.xlarge", 2),
    ]
    assert spec.shared_volume_size == 20 and spec.shared_volume_id is None


def test_defaults_without_a_file():
    spec = load_spec(None, {}, profile_region="us-east-1", default_name="mycluster")
    assert [g.name for g in spec.groups] == ["master", "worker"]
    assert spec.group("master").count == 1 and spec.group("worker").count >= 1
    assert spec.shared_volume_size == DEFAULT_VOLUME_GIB and spec.os == "ubuntu-24.04"


def test_flags_override_the_file(tmp_path):
    path = write(
        tmp_path,
        "cluster_name: a\nregion: eu-west-1\nparameters: {worker_count: 2, worker_instance_type: c5.large}\n",
    )
    spec = load_spec(
        path,
        {
            "name": "b",
            "workers": 7,
            "worker_type": "m5.large",
            "region": "us-west-2",
            "spot": True,
            "ssh_cidr": "1.2.3.4",
        },
        profile_region="us-east-1",
    )
    assert (spec.name, spec.region, spec.ssh_cidr) == ("b", "us-west-2", "1.2.3.4/32")
    worker = spec.group("worker")
    assert (worker.count, worker.instance_type, worker.spot) == (7, "m5.large", True)


def test_file_region_beats_profile_and_volume_id_flag_replaces_size(tmp_path):
    path = write(tmp_path, "cluster_name: a\nregion: eu-west-1\nshared_volume_size: 100\n")
    spec = load_spec(path, {"shared_volume_id": "vol-0123456789abcdef0"}, profile_region="us-east-1")
    assert spec.region == "eu-west-1"
    assert (spec.shared_volume_id, spec.shared_volume_size) == ("vol-0123456789abcdef0", None)


def test_custom_layout_with_node_groups(tmp_path):
    path = write(
        tmp_path,
        "cluster_name: lab\nnode_groups:\n  gpu: {type: g4dn.xlarge, count: 2, spot: true}\n  cpu: {instance_type: c5.large, count: 3}\n",
    )
    spec = load_spec(path, profile_region="us-east-1")
    assert {(g.name, g.instance_type, g.count, g.spot) for g in spec.groups} == {
        ("gpu", "g4dn.xlarge", 2, True),
        ("cpu", "c5.large", 3, False),
    }
    with pytest.raises(BadInput) as err:
        load_spec(path, {"workers": 3}, profile_region="us-east-1")
    assert "--workers" in str(err.value) and "worker" in str(err.value)


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("cluster_name: a\nparameters: {worker_count: two}\n", "parameters.worker_count", "integer"),
        ("cluster_name: a\nparameters: {worker_count: -1}\n", "parameters.worker_count", "non-negative"),
        ("cluster_name: a\nparameters: {worker_count: 1.5}\n", "parameters.worker_count", "integer"),
        ("cluster_name: My_Cluster\n", "cluster_name", "lowercase"),
        ("cluster_name: -abc\n", "cluster_name", "lowercase"),
        ("cluster_name: " + "a" * 41 + "\n", "cluster_name", "1-40"),
        ("cluster_name: a\nshared_volume_size: 0\n", "shared_volume_size", "1 to 16384"),
        ("cluster_name: a\nshared_volume_size: 16385\n", "shared_volume_size", "1 to 16384"),
        (
            "cluster_name: a\nshared_volume_size: 5\nshared_volume_id: vol-0123456789abcdef0\n",
            None,
            "not both",
        ),
        ("cluster_name: a\ncentral_logging_level: 3\n", "central_logging_level", "0 (off)"),
        ("cluster_name: a\nregion: mars-north-1\n", "region", "AWS region"),
        ("cluster_name: a\nos: windows\n", "os", "ubuntu-24.04"),
        ("cluster_name: a\nssh_cidr: everywhere\n", "ssh_cidr", "IPv4"),
        ("cluster_name: a\nk3s_version: latest\n", "k3s_version", "k3s release"),
        ("cluster_name: a\nworkers: 3\n", "workers", "unknown key"),
        ("cluster_name: a\ncontroller_instance_type: big\n", "controller_instance_type", "instance type"),
    ],
)
def test_bad_files_name_file_field_and_expectation(tmp_path, text, field, expected):
    path = write(tmp_path, text)
    with pytest.raises(BadInput) as err:
        load_spec(path, profile_region="us-east-1")
    message = str(err.value)
    assert str(path) in message
    if field:
        assert field in message
    assert expected in message


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "cluster_name: a\nparameters: [unclosed\n")
    with pytest.raises(BadInput) as err:
        load_spec(path, profile_region="us-east-1")
    assert str(path) in str(err.value) and "YAML" in str(err.value) and "line" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadInput) as err:
        load_spec(tmp_path / "nope.yml", profile_region="us-east-1")
    assert "nope.yml" in str(err.value) and "existing" in str(err.value)


def test_bad_flag_names_the_flag(tmp_path):
    with pytest.raises(BadInput) as err:
        load_spec(None, {"workers": -2}, profile_region="us-east-1", default_name="a")
    assert "--workers" in str(err.value)
    with pytest.raises(BadInput) as err:
        load_spec(None, {"name": "Bad Name"}, profile_region="us-east-1")
    assert "--name" in str(err.value)
    with pytest.raises(BadInput) as err:
        load_spec(None, {"region": "nowhere-1"}, default_name="a")
    assert "--region" in str(err.value)


@pytest.mark.parametrize(
    ("content", "flags", "needle"),
    [
        ("cluster_name: a\nparameters: {worker_count: -3}\n", [], "worker_count"),
        ("cluster_name: Bad!\n", [], "cluster_name"),
        ("{{{", [], "YAML"),
        (None, [], "existing cluster file"),
        ("cluster_name: a\n", ["--region", "moon-1"], "--region"),
        ("cluster_name: a\n", ["--shared-volume-size", "20000"], "--shared-volume-size"),
        ("cluster_name: a\n", ["--logging-level", "5"], "--logging-level"),
    ],
)
def test_cli_bad_input_is_exit_2_without_traceback_and_without_aws(
    no_aws, cli, tmp_path, content, flags, needle
):
    path = tmp_path / "c.yml"
    if content is not None:
        path.write_text(content)
    result = cli(
        ["up", str(path), "--dry-run", "--region", "us-east-1", *flags]
        if "--region" not in flags
        else ["up", str(path), "--dry-run", *flags]
    )
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert result.stderr.count("error:") == 1


def test_upstream_underscored_group_names_are_a_layout(tmp_path):
    """Clusterous' own docs name groups io_master and cpu_worker: label values, so accepted."""
    path = write(
        tmp_path,
        "cluster_name: lab\nnode_groups:\n  io_master: {type: t3.large, count: 1}\n"
        "  cpu_worker: {type: c5.xlarge, count: 3}\n",
    )
    spec = load_spec(path, profile_region="us-east-1")
    assert {(g.name, g.count) for g in spec.groups} == {("io_master", 1), ("cpu_worker", 3)}
    bad = write(tmp_path, "cluster_name: lab\nnode_groups:\n  _worker: {type: t3.large, count: 1}\n")
    with pytest.raises(BadInput) as err:
        load_spec(bad, profile_region="us-east-1")
    assert "node_groups" in str(err.value) and "'_'" in str(err.value)


# --- elastic groups (issue 17 item 1) ---------------------------------------------------------


def test_bounds_from_the_file_and_from_the_flag(tmp_path):
    path = write(
        tmp_path,
        "cluster_name: lab\nnode_groups:\n"
        "  worker: {type: c5.large, count: 2, min: 1, max: 8}\n"
        "  big: {type: m5.xlarge, count: 0, max: 3}\n"
        "  master: {type: t3.large, count: 1}\n",
    )
    spec = load_spec(path, profile_region="us-east-1")
    bounds = {g.name: (g.count, g.min, g.max, g.elastic) for g in spec.groups}
    assert bounds == {
        "worker": (2, 1, 8, True),
        "big": (0, 0, 3, True),  # bounds given: min defaults to 0
        "master": (1, None, None, False),
    }
    flagged = load_spec(path, {"workers": "0..20"}, profile_region="us-east-1").group("worker")
    assert (flagged.count, flagged.min, flagged.max) == (0, 0, 20)  # starts at MIN
    default_layout = load_spec(None, {"workers": "2..5"}, profile_region="us-east-1", default_name="a")
    worker = default_layout.group("worker")
    assert (worker.count, worker.min, worker.max) == (2, 2, 5)
    assert not default_layout.group("master").elastic
    plain = load_spec(None, {"workers": "4"}, profile_region="us-east-1", default_name="a").group("worker")
    assert (plain.count, plain.elastic) == (4, False)
    params = write(tmp_path, "cluster_name: a\nparameters: {worker_count: 3, worker_max: 6}\n")
    worker = load_spec(params, profile_region="us-east-1").group("worker")
    assert (worker.count, worker.min, worker.max) == (3, 0, 6)


@pytest.mark.parametrize(
    ("text", "flags", "field", "expected"),
    [
        (
            "node_groups: {w: {type: t3.large, count: 2, min: 5, max: 3}}",
            {},
            "node_groups.w.min",
            "at most max (3)",
        ),
        ("node_groups: {w: {type: t3.large, count: 9, min: 1, max: 3}}", {}, "node_groups.w.count", "(1..3)"),
        ("node_groups: {w: {type: t3.large, count: 2, min: 1}}", {}, "node_groups.w.max", "maximum"),
        (
            "node_groups: {w: {type: t3.large, count: 2, max: two}}",
            {},
            "node_groups.w.max",
            "non-negative integer",
        ),
        (
            "node_groups: {w: {type: t3.large, count: 2, max: 2.5}}",
            {},
            "node_groups.w.max",
            "non-negative integer",
        ),
        (
            "node_groups: {w: {type: t3.large, count: 2, min: -1, max: 3}}",
            {},
            "node_groups.w.min",
            "at most 1000",
        ),
        (
            "parameters: {worker_count: 1, worker_min: 2, worker_max: 4}",
            {},
            "parameters.worker_count",
            "(2..4)",
        ),
        ("parameters: {worker_min: 7, worker_max: 4}", {}, "parameters.worker_min", "at most max (4)"),
        ("controller_max: 3", {}, "controller_max", "no bounds on the controller"),
        (
            "node_groups: {controller: {type: t3.large, count: 1, min: 1, max: 2}}",
            {},
            "node_groups.controller.min",
            "no bounds on the controller",
        ),
        ("cluster_name: a", {"workers": "5..2"}, None, "MIN at most MAX"),
        ("cluster_name: a", {"workers": "1..x"}, None, "MIN..MAX"),
        ("cluster_name: a", {"workers": "0..5000"}, None, "at most 1000"),
    ],
)
def test_bad_bounds_name_the_field(tmp_path, cli, text, flags, field, expected):
    path = write(
        tmp_path, "cluster_name: a\nregion: us-east-1\n" + text.replace("cluster_name: a", "") + "\n"
    )
    with pytest.raises(BadInput) as err:
        load_spec(path, flags, profile_region="us-east-1")
    assert err.value.field == field and expected in str(err.value)
    if flags:
        assert err.value.source == "--workers"
    argv = ["up", str(path), "--dry-run", *(["--workers", flags["workers"]] if flags else [])]
    result = cli(argv)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (field or "--workers") in result.stderr
