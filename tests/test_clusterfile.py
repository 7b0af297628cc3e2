"""The cluster file model: Clusterous files load unchanged, flags override, every mistake is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterous_provisioner.clusterfile import DEFAULT_VOLUME_GIB, load_spec
from clusterous_provisioner.errors import BadInput

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
