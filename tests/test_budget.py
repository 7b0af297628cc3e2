"""The budget (issue 17 item 4): spending tracked in the cluster by the autoscaler, the gate in
autoscale.decide, `up --budget` / `budget:`, `clusterous-k8s budget`, the 80% warnings.

The rules alone first (decide, accrue, the inventory's prices), then a cluster `up` made: moto
behind the AWS realism layer, the Kubernetes API emulator with its scheduler and kubelets,
FakeK3s registering a 2-CPU Node per running instance (tests/test_up_ready.py); the test runs
the autoscaler's rounds (`run_once`, a fresh Record each time, as a restarted process reads it)
at chosen clock times and observes EC2, the ConfigMap and the commands' output.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from kubernetes import config as kube_config

from clusterous_provisioner import autoscale, autoscaler, layout, pricing, spending
from clusterous_provisioner.autoscale import Budget, GroupBounds, Memory, decide
from clusterous_provisioner.clients import Clients
from clusterous_provisioner.inventory import Inventory
from tests.test_autoscale import CPU_SHORT, T0, node, pod
from tests.test_autoscale_cluster import _app, _available, _unschedulable, _workers, autoscaler_once
from tests.test_up_ready import CLUSTER, UP, cluster_side  # noqa: F401 - a fixture

MINUTE, HOUR = 60.0, 3600.0
WORKER = GroupBounds("worker", "t3.large", 1, 5)


# --- the rules -------------------------------------------------------------------------------------


def test_at_the_budget_no_group_grows_idle_nodes_still_go_and_pending_pods_no_longer_hold_them():
    nodes = [node("w1", T0 - HOUR), node("w2", T0 - HOUR)]
    pending = [pod("p", why=CPU_SHORT)]
    under = Budget(spent=9.99, limit=10)
    (d,), _ = decide([WORKER], nodes, pending, {}, Memory(), T0, budget=under)
    assert (d.action, d.count) == ("grow", 1) and "budget" not in d.reason
    over = Budget(spent=10.0, limit=10)
    (d,), memory = decide([WORKER], nodes, pending, {}, Memory(), T0, budget=over)
    # Both nodes idle for an hour: without the budget the pending pod holds them...
    (held,), _ = decide([WORKER], nodes, pending, {}, Memory(), T0)
    assert held.action == "grow"
    # ...with it reached nothing grows, and the newest idle node goes down to min 1.
    assert (d.action, d.count, d.nodes) == ("shrink", 1, ("w2",))
    assert d.reason.startswith("budget reached ($10.00 of $10.00): 1 pod(s) pending, not grown for; ")
    assert memory.last_change == {"worker": T0}
    # A group at zero stays there; only `min` is kept.
    empty = GroupBounds("worker", "t3.large", 0, 5)
    (d,), _ = decide(
        [empty], [], pending, {}, Memory(), T0, budget=over, type_capacity={"worker": (2000, 8 << 30)}
    )
    assert d.action == "none" and "budget reached" in d.reason
    (d,), _ = decide([GroupBounds("worker", "t3.large", 2, 5)], [], [], {}, Memory(), T0, budget=over)
    assert (d.action, d.count) == ("grow", 2) and "below min 2" in d.reason  # never below min
    # No budget, or one not reached: as before.
    (d,), _ = decide([WORKER], nodes, pending, {}, Memory(), T0, budget=Budget(spent=50.0))
    assert d.action == "grow"


def _instance(itype: str, launched: float, state: str = "running", public: bool = False) -> dict:
    found = {
        "InstanceId": f"i-{itype}-{launched}",
        "InstanceType": itype,
        "State": {"Name": state},
        "LaunchTime": datetime.fromtimestamp(launched, UTC),
    }
    return {**found, "PublicIpAddress": "203.0.113.9"} if public else found


def test_spending_counts_from_launch_times_then_from_the_last_round_and_keeps_what_went():
    region = "eu-west-1"
    controller = _instance("t3.medium", T0 - 2 * HOUR, public=True)
    worker = _instance("c5.xlarge", T0 - HOUR)
    nat = {
        "NatGatewayId": "nat-1",
        "State": "available",
        "CreateTime": datetime.fromtimestamp(T0 - 2 * HOUR, UTC),
    }
    volume = {"VolumeId": "vol-1", "Size": 100, "CreateTime": datetime.fromtimestamp(T0 - 3 * HOUR, UTC),
              "Tags": [{"Key": "clusterous:role", "Value": "shared-volume"}], "State": "in-use"}  # fmt: skip
    inv = Inventory(CLUSTER, region, instances=[controller, worker], nat_gateways=[nat], volumes=[volume])
    root = pricing.gp3_hourly(layout.ROOT_VOLUME_GIB, region).hourly_usd
    ctrl_h = pricing.instance_hourly("t3.medium", region).hourly_usd + root + pricing.PUBLIC_IPV4_HOURLY
    worker_h = pricing.instance_hourly("c5.xlarge", region).hourly_usd + root
    nat_h = pricing.nat_gateway_hourly(region).hourly_usd + pricing.PUBLIC_IPV4_HOURLY
    vol_h = pricing.gp3_hourly(100, region).hourly_usd

    first = spending.spending_round(None, inv, T0)  # the first round: each from its own start
    assert first["usd"] == pytest.approx(2 * ctrl_h + worker_h + 2 * nat_h + 3 * vol_h, abs=1e-6)
    assert first["hourly_usd"] == pytest.approx(ctrl_h + worker_h + nat_h + vol_h, abs=1e-6)
    # The worker is terminated: what it cost stays; the next half hour counts what runs.
    inv.instances = [controller, {**worker, "State": {"Name": "terminated"}}]
    second = spending.spending_round(first, inv, T0 + HOUR / 2)
    assert second["usd"] == pytest.approx(first["usd"] + (ctrl_h + nat_h + vol_h) / 2, abs=1e-6)
    # Suspended for a day (instances stopped, NAT gateway deleted), resumed an hour ago: the stop
    # is not billed, the shared volume is; a clock that went back adds nothing.
    inv.instances = [{**controller, "LaunchTime": datetime.fromtimestamp(T0 + 24 * HOUR, UTC)}]
    inv.nat_gateways = [{**nat, "CreateTime": datetime.fromtimestamp(T0 + 24 * HOUR, UTC)}]  # made anew
    third = spending.spending_round(second, inv, T0 + 25 * HOUR)
    expected = second["usd"] + ctrl_h + nat_h + (24.5 * vol_h)
    assert third["usd"] == pytest.approx(expected, abs=1e-6)
    assert spending.spending_round(third, inv, T0)["usd"] == third["usd"]
    assert third["since"] == first["since"] == T0
    inv.instances = [_instance("x2iedn.32xlarge", T0)]  # no bundled price: said, counted as 0
    assert spending.spending_round(third, inv, T0 + 26 * HOUR)["unpriced"] == ["x2iedn.32xlarge"]


def test_warnings_start_at_80_percent_and_say_what_to_do():
    assert spending.warning(7.99, 10) is None and spending.warning(5, None) is None
    assert spending.warning(8.5, 10).startswith("warning: 85% of the budget spent (8.50 of 10.00 USD)")
    reached = spending.warning(10.2, 10)
    assert "budget reached (10.20 of 10.00 USD)" in reached
    for text in (spending.warning(8.5, 10), reached):
        assert "`clusterous-k8s budget N`" in text and "`clusterous-k8s down`" in text


@pytest.mark.parametrize(
    "argv, where",
    [
        (["budget", "abc"], "USD: expected a positive number of USD"),
        (["budget", "0"], "USD: expected a positive number of USD"),
        (["budget", "--", "-5"], "USD: expected a positive number of USD"),
        (
            ["up", "--dry-run", "--region", "eu-west-1", "--budget", "-1"],
            "--budget: expected a positive number",
        ),
    ],
)
def test_a_bad_budget_on_the_command_line_is_bad_input(no_aws, cli, argv, where):
    result = cli(argv)
    assert result.exit_code == 2, result.output
    assert where in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("value", ["-5", "0", "abc", "true", "'40'", ".nan"])
def test_a_bad_budget_in_the_cluster_file_is_bad_input_naming_file_and_field(no_aws, cli, tmp_path, value):
    path = tmp_path / "cluster.yml"
    path.write_text(f"cluster_name: lab\nregion: eu-west-1\nbudget: {value}\n")
    result = cli(["up", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"{path}: budget: expected a positive number of USD" in result.stderr


# --- on a cluster ----------------------------------------------------------------------------------


def _spending(k8s_api) -> dict:
    data = k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system")["data"]
    return json.loads(data["status"])["spending"]


@pytest.fixture
def budgeted(cluster_side, aws, k8s_api, cli):  # noqa: F811 - the imported fixture
    """A cluster with workers 1..4 and a budget of 100 USD, and a round at a chosen time."""
    result = cli([*UP, "--workers", "1..4", "--budget", "100", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "budget: 100.00 USD" in result.stderr
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))

    def round_at(now: float) -> autoscale.Decision:
        record = autoscaler.read_record(api)  # as a restarted autoscaler reads it
        drain = autoscaler.make_drain(api, 15, lambda line: None)
        (decision,) = autoscaler.run_once(api, Clients(aws.region), record, now, drain, lambda line: None)
        return decision

    return round_at


def test_the_budget_stops_growth_warns_at_80_percent_and_raising_it_resumes(
    budgeted, aws, k8s_api, cli, tmp_path
):
    round_at = budgeted
    assert k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system")["data"]["budget"] == "100.0"
    _app(k8s_api, 3)  # one fits the single worker, two are Unschedulable (Insufficient cpu)
    k8s_api.wait_for(lambda: len(_unschedulable(k8s_api)) == 2, 15, "two pods unschedulable for CPU")
    t0 = time.time()
    grow = round_at(t0)
    assert (grow.action, grow.count) == ("grow", 2)
    first = _spending(k8s_api)  # from the instances' launch times: seconds of uptime
    assert 0 < first["usd"] < first["hourly_usd"] * 5 * MINUTE / HOUR
    k8s_api.wait_for(lambda: _available(k8s_api) == 3, 15, "the app on the new nodes")
    k8s_api.patch("apps/v1/deployments", "sim", {"spec": {"replicas": 6}}, "default")
    k8s_api.wait_for(lambda: len(_unschedulable(k8s_api)) == 3, 15, "a second burst pending")

    calm = round_at(t0 + 2 * MINUTE)  # cooling down; spending goes on
    assert calm.action == "none"
    second = _spending(k8s_api)
    # two minutes at the rate before the grow, up to the rate after it (the new instances count
    # from their launch, seconds after t0)
    low, high = (
        first["usd"] + rate * 2 * MINUTE / HOUR for rate in (first["hourly_usd"], second["hourly_usd"])
    )
    assert low < second["usd"] <= high + 1e-6
    assert second["hourly_usd"] > first["hourly_usd"]  # two more workers

    # Lowered to put the spending at 85%: `budget`, `status` and `run` warn, one line each.
    limit = round(second["usd"] / 0.85, 6)
    lowered = cli(["budget", str(limit), "--cluster", CLUSTER])
    assert lowered.exit_code == 0, lowered.output
    assert f"budget of {CLUSTER}: {limit:.2f} USD" in lowered.stderr
    assert "85% of the budget spent" in lowered.stdout and "clusterous-k8s budget N" in lowered.stdout
    shown = cli(["budget", "--cluster", CLUSTER, "--json"])
    found = json.loads(shown.stdout)
    assert (found["budget_usd"], found["percent"]) == (pytest.approx(limit), pytest.approx(85.0, abs=0.1))
    table = cli(["status", "--cluster", CLUSTER])
    assert table.exit_code == 0, table.output
    assert "85% of the budget spent" in table.stdout
    assert (
        json.loads(cli(["status", "--cluster", CLUSTER, "--json"]).stdout)["budget"]["percent"]
        == found["percent"]
    )
    app = tmp_path / "probe.yaml"  # `run` warns before it applies anything
    app.write_text(json.dumps({"apiVersion": "clusterous.io/v1alpha1", "kind": "ClusterApp",
                               "metadata": {"name": "probe"}, "spec": {"components": [
                                   {"name": "p", "group": "worker", "image": "busybox:1.37", "cpu": "0.1"}]}}))  # fmt: skip
    ran = cli(["run", str(app), "--no-wait", "--cluster", CLUSTER])
    assert ran.exit_code == 0, ran.output
    assert ran.stderr.count("85% of the budget spent") == 1 and "clusterous-k8s budget N" in ran.stderr

    # After the cooldown the spending passes the budget: no growth, the reason says why.
    aws.reset_calls()
    stopped = round_at(t0 + 6 * MINUTE)
    assert stopped.action == "none" and not aws.calls("RunInstances")
    assert stopped.reason.startswith("budget reached ($") and f"of ${limit:.2f})" in stopped.reason
    assert (
        stopped.reason.split("): ", 1)[1] == "3 pod(s) pending, not grown for; 3 node(s), 3 running app pods"
    )
    assert "budget reached" in cli(["status", "--cluster", CLUSTER]).stdout
    assert len(_workers(aws)) == 3

    # Raised: the next round grows again (capped by max 4).
    raised = cli(["budget", "1000", "--cluster", CLUSTER])
    assert raised.exit_code == 0 and "warning" not in raised.stdout
    assert k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system")["data"]["budget"] == "1000.0"
    resumed = round_at(t0 + 7 * MINUTE)
    assert (resumed.action, resumed.count) == ("grow", 1) and "budget" not in resumed.reason
    assert len(aws.calls("RunInstances")) == 1 and len(_workers(aws)) == 4

    # At the budget again with the work gone: idle nodes drain and go down to min 1; never the rest.
    k8s_api.delete("apps/v1/deployments", "sim", "default")
    assert cli(["budget", "0.01", "--cluster", CLUSTER]).exit_code == 0
    shrink = round_at(t0 + 30 * MINUTE)
    assert (shrink.action, shrink.count) == ("shrink", 3) and shrink.reason.startswith("budget reached")
    assert len(_workers(aws)) == 1 and aws.calls("TerminateInstances")
    assert k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system") is not None
    off = cli(["budget", "off", "--cluster", CLUSTER, "--json"])
    assert json.loads(off.stdout)["budget_usd"] is None


def test_spending_goes_on_across_rounds_and_a_restarted_autoscaler_process(budgeted, aws, k8s_api):
    round_at = budgeted
    t0 = time.time()
    round_at(t0)
    first = _spending(k8s_api)
    round_at(t0 + HOUR)
    later = _spending(k8s_api)
    # Every resource ran before t0, so the hour counts in full at the rate that hour.
    assert later["usd"] == pytest.approx(first["usd"] + later["hourly_usd"], rel=1e-6)
    # The process, started afresh, continues from the recorded sum (its clock is behind the
    # test's: it adds nothing rather than starting again from the launch times).
    autoscaler_once(k8s_api)
    assert _spending(k8s_api)["usd"] == pytest.approx(later["usd"], rel=1e-9)
    assert _spending(k8s_api)["since"] == first["since"]


def test_a_budget_without_elastic_groups_is_still_counted_by_the_deployed_autoscaler(
    cluster_side,  # noqa: F811 - the imported fixture
    aws,
    k8s_api,
    cli,
):
    """Fixed groups and a budget: the autoscaler has nothing to scale but the spending to count
    (the process used to idle without elastic groups, so `budget` said nothing was spent)."""
    result = cli([*UP, "--workers", "1", "--budget", "100", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    autoscaler_once(k8s_api)
    assert _spending(k8s_api)["usd"] > 0
