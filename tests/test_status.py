"""status, clusters, workon, scale/add-nodes/rm-nodes against the moto server."""

from __future__ import annotations

import base64
import json

from clusterous_provisioner.bootstrap import AGENT_TOKEN_FILE, SERVER_TOKEN_FILE
from tests.provisioning import UP, make_profile, tag, tagged
from tests.test_bootstrap import written_files


def _workers(aws, cluster):
    return [i for i in tagged(aws, cluster)["instances"] if tag(i, "clusterous:group") == "worker"]


def _user_data_files(aws, instance_id) -> dict[str, str]:
    ud = aws.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return written_files(base64.b64decode(ud["UserData"]["Value"]).decode())


def test_status_clusters_and_workon(aws, cli):
    make_profile(cli)
    assert cli([*UP, "--name", "one", "--workers", "2"]).exit_code == 0
    assert cli([*UP, "--name", "two", "--workers", "0"]).exit_code == 0

    # `up` made "two" current; status reads it without a name.
    data = json.loads(cli(["status", "--json"]).stdout)
    assert data["cluster"] == "two" and data["groups"] == {"master": 1}
    table = cli(["status", "--name", "one"])
    assert table.exit_code == 0, table.output
    assert (
        table.stdout.count("worker") >= 2 and "controller:" in table.stdout and "cost so far" in table.stdout
    )
    one = json.loads(cli(["status", "--name", "one", "--json"]).stdout)
    controller = [i for i in one["instances"] if i["group"] == "controller"][0]
    assert one["controller_public_ip"] == controller["public_ip"] and controller["public_ip"]
    assert all(i["public_ip"] is None for i in one["instances"] if i["group"] != "controller")
    assert one["shared_volume"]["size_gib"] == 20 and one["cost_so_far_usd"] >= 0
    assert {i["group"] for i in one["instances"]} == {"controller", "master", "worker"}

    listed = json.loads(cli(["clusters", "--json"]).stdout)
    assert {(c["name"], c["nodes"], c["current"]) for c in listed} == {("one", 3, False), ("two", 1, True)}
    assert all(c["age_hours"] is not None for c in listed)
    assert "one" in cli(["clusters"]).stdout

    assert cli(["workon", "one"]).exit_code == 0
    assert json.loads(cli(["status", "--json"]).stdout)["cluster"] == "one"
    unknown = cli(["workon", "three"])
    assert unknown.exit_code == 2 and "three" in unknown.stderr and "one" in unknown.stderr


def test_status_of_a_missing_cluster_is_exit_1(aws, cli):
    make_profile(cli)
    result = cli(["status", "--name", "ghost"])
    assert result.exit_code == 1 and "ghost" in result.stderr


def test_scale_grows_with_one_call_and_shrinks_newest_first(aws, cli):
    make_profile(cli)
    assert cli([*UP, "--name", "sc", "--workers", "1"]).exit_code == 0
    first = _workers(aws, "sc")[0]["InstanceId"]

    aws.reset_calls()
    grown = cli(["scale", "worker", "4", "--yes", "--json"])
    assert grown.exit_code == 0, grown.output
    assert len(aws.calls("RunInstances")) == 1
    assert len(_workers(aws, "sc")) == 4 and len(json.loads(grown.stdout)["added"]) == 3
    new = _workers(aws, "sc")[-1]
    assert new["MetadataOptions"]["HttpTokens"] == "required" and not new.get("PublicIpAddress")
    # What scale launched holds the agent token from SSM and no server token (scale never has one).
    agent = aws.client("ssm").get_parameter(Name="/clusterous/sc/k3s-token", WithDecryption=True)
    files = _user_data_files(aws, new["InstanceId"])
    assert files[AGENT_TOKEN_FILE].strip() == agent["Parameter"]["Value"]
    assert SERVER_TOKEN_FILE not in files and not any("server-token" in path for path in files)
    # it joins with the agent token in k3s' secure form, built at boot from its CA-hash tag
    assert '--token-file "$JOIN_TOKEN_FILE"' in files["/usr/local/lib/clusterous/node.sh"]
    assert new["MetadataOptions"]["InstanceMetadataTags"] == "enabled"

    assert cli(["add-nodes", "1", "--yes"]).exit_code == 0
    assert len(_workers(aws, "sc")) == 5

    # `up --no-wait` learned no host key: no drain is possible, so terminating needs --force.
    refused = cli(["rm-nodes", "3", "--yes"])
    assert refused.exit_code == 1 and "--force" in refused.stderr and len(_workers(aws, "sc")) == 5
    shrunk = cli(["rm-nodes", "3", "--yes", "--json", "--force"])
    assert shrunk.exit_code == 0, shrunk.output
    removed = json.loads(shrunk.stdout)["removed"]
    remaining = [i["InstanceId"] for i in _workers(aws, "sc")]
    assert len(removed) == 3 and len(remaining) == 2 and first in remaining and first not in removed

    assert cli(["scale", "worker", "0", "--yes", "--force"]).exit_code == 0
    assert _workers(aws, "sc") == []
    regrow = cli(["scale", "worker", "1", "--yes"])  # no running worker to copy the type from
    assert regrow.exit_code == 2 and "--instance-type" in regrow.stderr
    assert cli(["scale", "worker", "1", "--yes", "--instance-type", "t3.small"]).exit_code == 0
    assert [i["InstanceType"] for i in _workers(aws, "sc")] == ["t3.small"]

    too_many = cli(["rm-nodes", "5", "--yes"])
    assert too_many.exit_code == 2 and "at most 1" in too_many.stderr
    assert cli(["down", "sc", "--yes", "--delete-shared-volume"]).exit_code == 0


def test_help_of_every_command_has_an_example(cli):
    for command in [
        "up",
        "down",
        "status",
        "clusters",
        "workon",
        "scale",
        "add-nodes",
        "rm-nodes",
        "volumes",
    ]:
        result = cli([command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.stdout, command


def test_status_without_a_pinned_host_key_never_imports_kubernetes(aws, cli, cli_subprocess):
    """`status` right after `up --no-wait`: the missing pin is reported before the (slow) import."""
    make_profile(cli)
    assert cli([*UP, "--name", "quick", "--workers", "0"]).exit_code == 0
    probe = (
        "import sys; from clusterous_cli.main import run; code = run(['status', '--name', 'quick', '--json']); "
        "print('kubernetes imported' if 'kubernetes' in sys.modules else 'kubernetes not imported', file=sys.stderr); "
        "sys.exit(code)"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kubernetes not imported" in proc.stderr
    assert "host key" in json.loads(proc.stdout)["applications_error"]


def test_the_region_list_is_read_from_botocore_once_and_cached(aws, cli, isolated_config, tmp_path):
    import botocore

    cache = tmp_path / "xdg-cache" / "clusterous-k8s" / f"regions-botocore-{botocore.__version__}.json"
    make_profile(cli)
    assert cli(["clusters"]).exit_code == 0
    regions = json.loads(cache.read_text())
    assert "us-east-1" in regions and "eu-west-1" in regions
    cache.write_text("not json")  # a damaged cache is read again from botocore
    assert cli(["clusters", "--region", "eu-west-1"]).exit_code == 0
    assert json.loads(cache.read_text()) == regions


def test_scale_with_a_misspelt_instance_type_is_bad_input(aws, cli):
    make_profile(cli)
    result = cli(["scale", "gpu", "1", "--instance-type", "g4dn.xlarg", "--name", "none", "--yes"])
    assert result.exit_code == 2, result.output
    assert "--instance-type" in result.stderr and "g4dn.xlarge" in result.stderr
    assert aws.calls("RunInstances") == []
