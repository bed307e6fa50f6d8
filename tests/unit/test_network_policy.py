"""The lab's expected network policy parses, names only inventory groups and the ports roles open."""

import pytest
import yaml

from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.status import netpolicy

LAB = ROOT / "inventories" / "lab"


@pytest.fixture(scope="module")
def lab():
    return inventory.load("lab")


@pytest.fixture(scope="module")
def policy():
    return netpolicy.load(LAB)


def test_the_lab_policy_names_only_inventory_groups(policy, lab):
    netpolicy.check_names(policy, lab)
    names = set(policy.allowed) | {d for dests in policy.allowed.values() for d in dests}
    assert names <= set(lab.groups) | {netpolicy.CONTROLLER}


def test_the_probed_ports_are_exactly_the_ports_roles_open(policy):
    firewall = yaml.safe_load((LAB / "group_vars" / "all" / "firewall.yml").read_text())
    opened = {22} | {service["port"] for service in firewall["common_firewall_services"]}
    assert set(policy.probe_ports) == opened
    assert policy.closed_port not in opened


def test_the_expected_matrix_of_the_lab(policy, lab):
    wanted = netpolicy.expected(policy, lab)
    hosts = list(lab.hosts)
    assert len(wanted) == (len(hosts) * (len(hosts) - 1) + len(hosts)) * len(policy.ports)
    assert all(not ok for (_s, _d, port), ok in wanted.items() if port == policy.closed_port)
    assert wanted[("controller", "db1", 22)] and not wanted[("stream1", "db1", 22)]
    assert wanted[("stream1", "db1", 5432)] and wanted[("db2", "db1", 5432)] and not wanted[("lb1", "db1", 5432)]
    assert wanted[("lb1", "stream2", 80)] and not wanted[("controller", "stream2", 80)]
    assert wanted[("cache1", "lb1", 80)] and wanted[("controller", "lb1", 8404)]
    assert not wanted[("stream1", "lb1", 8404)] and not wanted[("controller", "cache1", 6379)]
    assert not any(src == dst for src, dst, _port in wanted)


def test_mismatches_are_one_line_each():
    wanted = {("controller", "lb1", 80): True, ("stream1", "db1", 22): False, ("db2", "db1", 5432): True}
    got = {("controller", "lb1", 80): "open", ("stream1", "db1", 22): "open", ("db2", "db1", 5432): "timeout"}
    assert netpolicy.mismatches(wanted, got) == ["db2 -> db1:5432 expected open got timeout",
                                                 "stream1 -> db1:22 expected closed got open"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p["allowed"].update({"nosuchgroup": {"stream": [80]}}), "source 'nosuchgroup' is not a group"),
    (lambda p: p["allowed"]["stream"].update({"controller": [22]}), "destination 'controller'"),
    (lambda p: p["allowed"]["stream"].update({"cache": [7000]}), "port 7000 is not in probe_ports"),
    (lambda p: p["allowed"]["stream"].update({"cache": ["6379"]}), "'6379' is not a TCP port"),
    (lambda p: p.update({"closed_port": 22}), "closed_port 22 is also a probe port"),
    (lambda p: p.update({"probe_ports": [22, 70000]}), "70000 is not a TCP port"),
    (lambda p: p.pop("allowed"), "needs exactly the keys"),
])
def test_a_malformed_policy_fails_in_one_line(tmp_path, lab, change, message):
    data = yaml.safe_load((LAB / netpolicy.POLICY_FILE).read_text())
    change(data[netpolicy.POLICY_VAR])
    target = tmp_path / netpolicy.POLICY_FILE
    target.parent.mkdir(parents=True)
    target.write_text(yaml.safe_dump(data))
    with pytest.raises(RoadieError) as err:
        netpolicy.expected(netpolicy.load(tmp_path), lab)
    assert message in str(err.value) and "\n" not in str(err.value)
