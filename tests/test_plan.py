"""The plan and its price, offline: pure functions, and `up --dry-run` with no credentials at all."""

from __future__ import annotations

import json

import pytest

from clusterous_provisioner import pricing
from clusterous_provisioner.clusterfile import load_spec
from clusterous_provisioner.inventory import Inventory
from clusterous_provisioner.plan import CREATE, EXISTS, LAUNCH, make_plan


def spec(**flags):
    return load_spec(None, flags, profile_region="us-east-1", default_name="p")


def test_everything_is_created_on_an_empty_account():
    plan = make_plan(spec(workers=3), Inventory.offline("p", "us-east-1"))
    actions = {i.key: i.action for i in plan.items}
    assert actions["group:worker"] == LAUNCH and actions["vpc"] == CREATE
    assert set(actions.values()) <= {CREATE, LAUNCH}
    assert not plan.checked_aws


def test_cost_adds_up_from_the_table():
    s = spec(workers=4, worker_type="c5.xlarge", master_type="m5.large", controller_type="t3.medium")
    plan = make_plan(s, Inventory.offline("p", "us-east-1"))
    root = pricing.gp3_hourly(30, "us-east-1").hourly_usd
    expected = (
        pricing.instance_hourly("t3.medium", "us-east-1").hourly_usd
        + pricing.instance_hourly("m5.large", "us-east-1").hourly_usd
        + 4 * pricing.instance_hourly("c5.xlarge", "us-east-1").hourly_usd
        + 6 * root
        + pricing.nat_gateway_hourly("us-east-1").hourly_usd
        + 2 * pricing.PUBLIC_IPV4_HOURLY
        + pricing.gp3_hourly(20, "us-east-1").hourly_usd
    )
    assert plan.hourly_cost_usd == pytest.approx(expected, abs=1e-3)
    more = make_plan(
        spec(workers=8, worker_type="c5.xlarge", master_type="m5.large"), Inventory.offline("p", "us-east-1")
    )
    assert more.hourly_cost_usd > plan.hourly_cost_usd


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"])
@pytest.mark.parametrize("family", ["t3", "t3a", "m5", "m6i", "c5", "c6i", "r5"])
def test_table_covers_common_types_and_regions(region, family):
    price = pricing.instance_hourly(f"{family}.xlarge", region)
    assert price.hourly_usd and price.hourly_usd == pytest.approx(
        2 * pricing.instance_hourly(f"{family}.large", region).hourly_usd
    )
    assert pricing.nat_gateway_hourly(region).hourly_usd > 0 and pricing.gp3_hourly(20, region).hourly_usd > 0


def test_unknown_types_are_reported_not_guessed():
    plan = make_plan(spec(worker_type="x2iedn.32xlarge"), Inventory.offline("p", "us-east-1"))
    assert any("x2iedn.32xlarge" in line for line in plan.unpriced)
    assert pricing.instance_hourly("t3.large", "mars-1").hourly_usd is None


def test_existing_resources_and_partial_groups():
    inv = Inventory(cluster="p", region="us-east-1")
    inv.vpcs = [{"VpcId": "vpc-1", "Tags": [{"Key": "clusterous:key", "Value": "vpc"}]}]
    worker = {
        "InstanceId": "i-1",
        "Tags": [{"Key": "clusterous:role", "Value": "node"}, {"Key": "clusterous:group", "Value": "worker"}],
    }
    inv.instances = [worker, {**worker, "InstanceId": "i-2"}]
    plan = make_plan(spec(workers=5), inv)
    items = {i.key: i for i in plan.items}
    assert items["vpc"].action == EXISTS and items["subnet-public"].action == CREATE
    assert (items["group:worker"].action, items["group:worker"].existing, items["group:worker"].count) == (
        LAUNCH,
        2,
        5,
    )
    shrink = make_plan(spec(workers=1), inv)
    assert "scale" in " ".join(shrink.notes) and not [i for i in shrink.changes if i.key == "group:worker"]


def test_dry_run_offline_table(no_aws, cli):
    result = cli(["up", "--dry-run", "--region", "eu-central-1", "--workers", "3", "--cluster", "off"])
    assert result.exit_code == 0, result.output
    assert "NAT gateway" in result.stdout and "USD per hour" in result.stdout
    assert "no AWS credentials" in result.stdout


def test_dry_run_json_is_one_object_with_numeric_cost(no_aws, cli):
    result = cli(
        ["up", "--dry-run", "--json", "--region", "ap-southeast-2", "--cluster", "off", "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data["hourly_cost_usd"], float) and data["hourly_cost_usd"] > 0
    groups = {r["key"]: r for r in data["resources"]}
    assert groups["group:worker"]["count"] == 2 and groups["group:worker"]["action"] == "launch"
    more = json.loads(
        cli(
            ["up", "--dry-run", "--json", "--region", "ap-southeast-2", "--cluster", "off", "--workers", "6"]
        ).stdout
    )
    assert more["hourly_cost_usd"] > data["hourly_cost_usd"]


def test_dry_run_render_dir_writes_user_data_and_manifests(no_aws, cli, tmp_path):
    out = tmp_path / "render"
    result = cli(["up", "--dry-run", "--region", "us-east-1", "--cluster", "r", "--render-dir", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "user-data").iterdir())
    assert names == ["controller.user-data", "master.user-data", "worker.user-data"]
    assert list((out / "manifests").glob("*.yaml"))
    assert all(p.read_text().startswith("#cloud-config") for p in (out / "user-data").iterdir())


def test_dry_run_with_credentials_sees_what_exists_and_changes_nothing(aws, cli):
    assert cli(["setup", "--region", "us-east-1", "--yes"]).exit_code == 0
    aws.reset_calls()
    before = json.loads(cli(["up", "--dry-run", "--json", "--cluster", "seen"]).stdout)
    assert before["checked_existing_resources"] and before["changes"] == len(before["resources"])
    mutating = ("Create", "Run", "Allocate", "Put", "Attach", "Modify", "Authorize", "Associate")
    assert aws.calls() and not [op for _, op in aws.calls() if op.startswith(mutating)]


def test_newest_nodes_go_first_even_within_one_second():
    """LaunchTime has one-second resolution: our launch stamp and the launch index break ties."""
    from datetime import UTC, datetime

    from clusterous_provisioner import tags
    from clusterous_provisioner.scaling import pick_to_remove

    same_second = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def node(instance_id, stamp, index):
        return {
            "InstanceId": instance_id,
            "LaunchTime": same_second,
            "AmiLaunchIndex": index,
            "Tags": [{"Key": tags.LAUNCHED, "Value": stamp}],
        }

    first = node("i-fff", "2026-01-01T12:00:00.100000Z", 0)
    batch = [node("i-aaa", "2026-01-01T12:00:00.900000Z", 0), node("i-000", "2026-01-01T12:00:00.900000Z", 1)]
    assert [i["InstanceId"] for i in pick_to_remove([first, *batch], 2)] == ["i-000", "i-aaa"]
    assert [i["InstanceId"] for i in pick_to_remove([*batch, first], 3)] == ["i-000", "i-aaa", "i-fff"]


# --- honest cost and instance types (issue 14 items 10, 11) ----------------------------------------


def test_types_the_table_lacks_make_the_total_a_lower_bound(no_aws, cli):
    """Upstream files use t2/c4: the total says it leaves them out instead of looking cheap."""
    argv = ["up", "--dry-run", "--cluster", "old", "--region", "us-east-1"]
    result = cli([*argv, "--master-type", "c4.large", "--worker-type", "t2.large", "--workers", "19"])
    assert result.exit_code == 0, result.output
    assert "at least " in result.stdout and "USD/hour; 20 instances not priced" in result.stdout
    data = json.loads(cli([*argv, "--json", "--worker-type", "t2.large", "--workers", "3"]).stdout)
    assert data["hourly_cost_is_lower_bound"] and data["unpriced_instances"] == 3
    priced = json.loads(cli([*argv, "--json"]).stdout)
    assert not priced["hourly_cost_is_lower_bound"] and priced["unpriced_instances"] == 0


@pytest.mark.parametrize(
    ("argv", "named", "suggested"),
    [
        (["--worker-type", "t3.lareg"], "--worker-type", "t3.large"),
        (["--controller-type", "m5.xlarg"], "--controller-type", "m5.xlarge"),
    ],
)
def test_a_misspelt_instance_type_is_bad_input_with_close_matches(no_aws, cli, argv, named, suggested):
    result = cli(["up", "--dry-run", "--cluster", "typo", *argv])
    assert result.exit_code == 2, result.output
    assert named in result.stderr and suggested in result.stderr and "Traceback" not in result.output


def test_a_misspelt_type_in_a_cluster_file_names_the_file_and_field(no_aws, cli, tmp_path):
    path = tmp_path / "cluster.yml"
    path.write_text("cluster_name: f\nparameters:\n  worker_instance_type: c5.2xlarg\n")
    result = cli(["up", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and "parameters.worker_instance_type" in result.stderr
    assert "c5.2xlarge" in result.stderr


def test_every_type_botocore_knows_is_accepted_offline():
    known = pricing.ec2_instance_types()
    assert {"t2.micro", "c4.large", "m4.xlarge", "i2.xlarge", "m7g.large"} <= known
    for instance_type in ("t2.micro", "m7g.large"):
        assert pricing.check_instance_type(instance_type, "--worker-type") == instance_type


def test_an_arm_type_with_the_x86_image_is_refused_at_plan_time_offline(no_aws, cli):
    result = cli(["up", "--dry-run", "--cluster", "arm", "--worker-type", "m7g.large"])
    assert result.exit_code == 2, result.output
    assert "--worker-type" in result.stderr and "m7g.large" in result.stderr and "x86_64" in result.stderr
    assert [pricing.likely_architecture(t) for t in ("m6g.large", "c7gn.xlarge", "t4g.nano", "a1.large")] == [
        "arm64"
    ] * 4
    assert [
        pricing.likely_architecture(t) for t in ("g4dn.xlarge", "m5dn.large", "c6in.large", "t2.micro")
    ] == ["x86_64"] * 4


def test_ssh_cidr_that_is_not_a_network_is_bad_input(no_aws, cli):
    for bad in ("10.0.0.0/33", "example.org", "2001:db8::/32"):
        result = cli(["up", "--dry-run", "--cluster", "net", "--ssh-cidr", bad])
        assert result.exit_code == 2, result.output
        assert "--ssh-cidr" in result.stderr and "IPv4 address range" in result.stderr


class PriceList:
    """A loopback stand-in for the AWS Pricing API (moto has none): GetProducts answers in the
    shape AWS documents (PriceList: JSON documents as strings, terms.OnDemand...pricePerUnit.USD)
    for the types it knows, and records each request's filters."""

    def __init__(self, prices: dict[str, str]):
        import http.server
        import threading

        self.prices, self.requests = prices, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.headers.get("X-Amz-Target"), body))
                fields = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
                usd = outer.prices.get(fields.get("instanceType"))
                items = [] if usd is None else [json.dumps(outer.product(fields, usd))]
                payload = json.dumps({"FormatVersion": "aws_v1", "PriceList": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    @staticmethod
    def product(fields: dict, usd: str) -> dict:
        sku = "SKU" + fields["instanceType"].replace(".", "").upper()
        return {
            "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": dict(fields)},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": sku,
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {fields['instanceType']} Instance Hour",
                            }
                        },
                    }
                }
            },
        }


def test_with_credentials_the_pricing_api_prices_what_the_table_lacks_and_is_cached(
    aws, cli, monkeypatch, tmp_path
):
    api = PriceList({"t2.large": "0.0928", "c4.large": "0.1"})
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", api.url)
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert cli(["setup", "--region", "us-east-1", "--yes"]).exit_code == 0
    argv = ["up", "--dry-run", "--json", "--cluster", "old", "--master-type", "c4.large"]
    first = json.loads(cli([*argv, "--worker-type", "t2.large", "--workers", "2"]).stdout)
    assert not first["hourly_cost_is_lower_bound"], first["unpriced"]
    groups = {r["key"]: r for r in first["resources"]}
    root = pricing.gp3_hourly(30, "us-east-1").hourly_usd
    assert groups["group:worker"]["hourly_usd"] == pytest.approx(2 * (0.0928 + root))
    assert groups["group:worker"]["price_note"] == "AWS Pricing API"
    targets = {t for t, _ in api.requests}
    assert targets == {"AWSPriceListService.GetProducts"} and len(api.requests) == 2
    filters = {f["Field"]: f["Value"] for f in api.requests[0][1]["Filters"]}
    assert filters["regionCode"] == "us-east-1" and filters["operatingSystem"] == "Linux"
    stored = json.loads((cache / "clusterous-k8s" / "prices" / "us-east-1.json").read_text())
    assert set(stored["instances"]) == {"c4.large", "t2.large"}

    again = json.loads(cli([*argv, "--worker-type", "t2.large", "--workers", "2"]).stdout)
    assert again["hourly_cost_usd"] == first["hourly_cost_usd"] and len(api.requests) == 2  # cached

    # An entry older than 30 days is asked for again.
    stored["instances"]["t2.large"]["at"] -= pricing.CACHE_SECONDS + 1
    (cache / "clusterous-k8s" / "prices" / "us-east-1.json").write_text(json.dumps(stored))
    cli([*argv, "--worker-type", "t2.large", "--workers", "2"])
    assert len(api.requests) == 3

    # A type the API does not know stays unpriced, and the total says so.
    unknown = json.loads(cli([*argv, "--worker-type", "i2.xlarge", "--workers", "2"]).stdout)
    assert unknown["hourly_cost_is_lower_bound"] and unknown["unpriced_instances"] == 2
    api.server.shutdown()


def test_an_unreachable_pricing_api_leaves_types_unpriced_quickly(aws, cli, monkeypatch):
    import time

    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")  # nothing listens there
    assert cli(["setup", "--region", "us-east-1", "--yes"]).exit_code == 0
    start = time.monotonic()
    result = cli(["up", "--dry-run", "--cluster", "old", "--worker-type", "t2.large"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 30
    assert "Pricing API unavailable" in result.stderr and "2 instances not priced" in result.stdout
